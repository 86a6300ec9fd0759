"""Exercise: how many parameters does an adapter train?

    count_lora_params(config: GPTConfig, lora_config: LoraConfig) -> int

Each adapted (d_out, d_in) matrix adds A (r, d_in) and B (d_out, r): r·(d_in + d_out) parameters, for every
target in lora_config.targets and every block in lora_config.layers (None = all). For GPT-3 175B's square
W_q, W_v this is the paper's |Θ| = 2 × L̂ × d_model × r (Section 4.2): its 4.7M, 18.9M and 37.7M are cases.
Counting must not allocate anything (a GPT-3-sized adapter is 150 MB of float32).
"""

from __future__ import annotations

from ..casework import Case, run_cases
from ..config import GPTConfig
from ..lora import LoraConfig

GPT3 = GPTConfig.preset("gpt3-175b")
# (config, lora config, what the paper says or None): the GPT-3 rows are the paper's own numbers.
CASES = (
    (GPT3, LoraConfig(r=1, targets=("wq", "wv")), "the paper: 4.7M (W_q, W_v, r = 1)"),
    (GPT3, LoraConfig(r=4, targets=("wq", "wv")), "the paper: 18.9M (W_q, W_v, r = 4; 35 MB in fp16)"),
    (GPT3, LoraConfig(r=8, targets=("wq", "wv")), "the paper: 37.7M (W_q, W_v, r = 8)"),
    (GPT3, LoraConfig(r=4, targets=("wq", "wk", "wv", "wo")), "the paper: 37.7M (W_q, W_k, W_v, W_o, r = 4)"),
    (GPTConfig.preset("base"), LoraConfig(r=8, targets=("wq", "wv")), None),
    (GPTConfig.preset("base"), LoraConfig(r=2, targets=("wq", "mlp_in", "mlp_out"), layers=(0, 2)), None),
    (GPTConfig.preset("tiny"), LoraConfig(r=3, targets=("wv", "mlp_out"), layers=(1,)), None),
)
PAPER = (4_718_592, 18_874_368, 37_748_736, 37_748_736)


def count(config: GPTConfig, lc: LoraConfig, per_matrix=None, layers=None, targets=None) -> int:
    """Σ over adapted blocks and targets of per_matrix(d_out, d_in) (default r·(d_in + d_out))."""
    per_matrix = per_matrix or (lambda d_out, d_in: lc.r * (d_in + d_out))
    layers = lc.adapted_layers(config) if layers is None else layers
    targets = lc.targets if targets is None else targets
    return sum(per_matrix(*config.matrix_shape(t)) for _ in layers for t in targets)


def variants(config, lc):
    r, d = lc.r, config.d_model
    return [
        ("count_one_factor", count(config, lc, lambda o, i: r * i)),
        ("count_one_factor", count(config, lc, lambda o, i: r * o)),
        ("count_full_matrix", count(config, lc, lambda o, i: o * i)),
        ("count_one_layer", count(config, lc, layers=(0,))),
        ("count_layers_ignored", count(config, lc, layers=range(config.n_layer))),
        ("count_one_target", count(config, lc, targets=lc.targets[:1])),
        ("count_square_formula", count(config, lc, lambda o, i: 2 * d * r)),
    ]


def _label(config, lc, note):
    name = next((k for k, v in (("gpt3-175b", GPT3), *((n, GPTConfig.preset(n)) for n in ("base", "tiny")))
                 if v == config), "config")
    layers = "all blocks" if lc.layers is None else f"blocks {list(lc.layers)}"
    return f"{name}: r={lc.r} on {', '.join(lc.targets)}, {layers}" + (f" ({note})" if note else "")


def check_count_lora_params(fn):
    cases = [Case(_label(cfg, lc, note), (cfg, lc), ("config", "lora_config"), (count(cfg, lc),), ("count",), 0.0,
                  lambda cfg=cfg, lc=lc: [(k, (v,)) for k, v in variants(cfg, lc)])
             for cfg, lc, note in CASES]
    return run_cases("count_lora_params", fn, cases)
