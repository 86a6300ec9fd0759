"""LoRA-FA (Zhang et al., 2023): LoRA with A frozen at its random init; only B is trained.

A moves to the frozen side, so it is never traced and no gradient for it is formed (the memory saving the
method is for: the input activations of A need not be kept). |Θ| = L̂ d r (B only) for square matrices.
Options: LoraConfig's fields, as for LoRA.
"""

from __future__ import annotations

from ..model import lora_hooks
from .base import Method, join, split
from .lora import LORA_DEFAULTS, _init, dropout_of, lora_config_of


def _fa_init(params, config, seed, options):
    lora, _ = _init(params, config, seed, options)
    b, a = split(lora, lambda path: path[-1] == "B")  # ({"blocks": [{t: {"B"}}]}, {"blocks": [{t: {"A"}}]})
    return b, {"params": params, "lora_A": a}


def _fa_lora(trainable, frozen):
    return join(trainable, frozen["lora_A"])  # the whole adapter: traced B, untraced A


def _fa_apply(trainable, frozen, config, options, batch, rng):
    lc = lora_config_of(options)
    return frozen["params"], lora_hooks(_fa_lora(trainable, frozen)["blocks"], lc.scale, dropout_of(lc, rng))


def _fa_count(config, options) -> int:
    """L̂ d r."""
    lc = lora_config_of(options)
    return len(lc.adapted_layers(config)) * len(lc.targets) * config.d_model * lc.r


LORA_FA = Method(
    name="lora_fa", label="LoRA-FA", trains="B of every adapted matrix (A frozen at init)",
    formula="L̂ d r, L̂ = adapted matrices (layers × targets)",
    file_holds='{"blocks": [{target: {"B": (d_out, r)}}, ...]}, and the frozen random A beside it '
               '("lora_A.blocks.i.target.A": it is not part of the base)',
    defaults=dict(LORA_DEFAULTS), init=_fa_init, apply=_fa_apply, paper_count=_fa_count, owned_frozen=("lora_A",),
    task_model=lambda trainable, frozen, options: (frozen["params"], _fa_lora(trainable, frozen),
                                                   lora_config_of(options)),
)
