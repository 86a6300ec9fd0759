"""LoRA: a frozen W plus a trainable low-rank update, h = W x + (α/r) B A x (Hu et al., 2022: eq. 3 with the
scale α/r of Section 4.1).

A is (r, d_in) and starts random; B is (d_out, r) and starts at zero, so ΔW = B A = 0 and the adapted model
begins exactly at the base model. merge() folds s·B A into W for inference with no extra latency; unmerge()
takes it out again. Both return new trees: nothing here changes an array in place.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .backend import to_device
from .config import GPTConfig, boolean, check_fields, choice, real_number, whole_number
from .ops import linear, lora_delta
from .tree import leaves

TARGETS = ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")
INITS = ("gaussian", "kaiming")


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    """Rank of ΔW = B A. The paper finds r = 1 already works on W_q, W_v (Table 6)."""
    alpha: float = 8.0
    """Numerator of the scale s = α/r. The paper sets α to the first r it tries and does not tune it: tuning α
    is roughly tuning the learning rate, and α/r reduces the need to retune when r changes (Section 4.1)."""
    targets: tuple[str, ...] = ("wq", "wv")
    """Which matrices of each block get an adapter: the paper's main experiments adapt W_q and W_v."""
    dropout: float = 0.0
    """Dropout on the adapter's input x, while training only (PEFT's lora_dropout)."""
    use_rslora: bool = False
    """Rank-stabilised scale s = α/√r (Kalajdzievski, 2023) instead of α/r."""
    init: str = "gaussian"
    """Initialisation of A: "gaussian" (the paper; N(0, 1/r²) as PEFT's "gaussian") or "kaiming"
    (loralib and PEFT's default: uniform with bound 1/√d_in). B always starts at 0.
    With "gaussian" the size of A shrinks as 1/r, so at a fixed α the early updates of ΔW shrink quickly with r
    (a rank sweep then also sweeps the effective learning rate); "kaiming" keeps A's size independent of r."""
    layers: tuple[int, ...] | None = None
    """Indices of the blocks to adapt; None adapts every block."""

    def __post_init__(self):
        for name, value in _checked_fields(self).items():
            object.__setattr__(self, name, value)

    @property
    def scale(self) -> float:
        """s = α/r, or α/√r with use_rslora."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def adapted_layers(self, config: GPTConfig) -> tuple[int, ...]:
        """The block indices that get adapters under ``config`` (every block when ``layers`` is None)."""
        return self._layers_of(config.n_layer)

    def _layers_of(self, n_layer: int) -> tuple[int, ...]:
        if self.layers is None:
            return tuple(range(n_layer))
        bad = [i for i in self.layers if i >= n_layer]
        if bad:
            raise ValueError(f"LoraConfig.layers {bad} out of range for a model with n_layer={n_layer}")
        return self.layers

    def check_against(self, config: GPTConfig) -> None:
        """Raise if this adapter cannot exist on that model (r too large, layers out of range)."""
        self.check_fit(config.n_layer, config.matrix_shape)

    def check_fit(self, n_layer: int, matrix_shape) -> tuple[int, ...]:
        """Raise unless this adapter can exist on a model of ``n_layer`` blocks whose matrix ``t`` has shape
        ``matrix_shape(t)`` = (d_out, d_in): every layer in range, r <= min(d_in, d_out) for every target.
        Returns the indices of the adapted blocks."""
        layers = self._layers_of(n_layer)
        for t in self.targets:
            d_out, d_in = matrix_shape(t)
            if self.r > min(d_in, d_out):
                raise ValueError(
                    f"LoraConfig.r={self.r} exceeds min(d_in, d_out)={min(d_in, d_out)} of {t} {(d_out, d_in)}: "
                    "a rank-r update of that matrix cannot exist"
                )
        return layers

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "LoraConfig":
        return cls(**check_fields(cls, data))  # lists from JSON become tuples in __post_init__


# ---- LoraConfig's field checks (each names the field, what it must be and what it got) ----------------------

_SEQUENCES = (list, tuple, range, set, frozenset, np.ndarray)


def _checked_fields(cfg: LoraConfig) -> dict:
    """The fields of ``cfg`` in canonical form (int r, float alpha, sorted tuples), or ValueError."""
    return {
        "r": whole_number("LoraConfig", "r", cfg.r, at_least=1),
        "alpha": real_number("LoraConfig", "alpha", cfg.alpha, more_than=0),
        "targets": _targets_field(cfg.targets),
        "dropout": real_number("LoraConfig", "dropout", cfg.dropout, at_least=0, less_than=1),
        "use_rslora": boolean("LoraConfig", "use_rslora", cfg.use_rslora),
        "init": choice("LoraConfig", "init", cfg.init, INITS),
        "layers": _layers_field(cfg.layers),
    }


def _targets_field(value) -> tuple[str, ...]:
    """One target name or a sequence of them, each at most once; returned in TARGETS' order."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, _SEQUENCES):
        raise ValueError(f"LoraConfig.targets must be a name or a list of names from {TARGETS}, got {value!r}")
    targets = tuple(value)
    if not targets:
        raise ValueError(f"LoraConfig.targets must name at least one of {TARGETS}")
    for t in targets:
        if not isinstance(t, str) or t not in TARGETS:
            raise ValueError(f"LoraConfig.targets: unknown target {t!r}; choose from {TARGETS}")
    if len(set(targets)) != len(targets):
        raise ValueError(f"LoraConfig.targets: each target at most once, got {targets}")
    return tuple(t for t in TARGETS if t in targets)  # canonical order


def _layers_field(value) -> tuple[int, ...] | None:
    """None (every block) or a non-empty sequence of block indices; returned sorted, without repeats."""
    if value is None:
        return None
    try:
        layers = (tuple(sorted({whole_number("LoraConfig", "layers", i) for i in value}))
                  if isinstance(value, _SEQUENCES) else ())
    except (ValueError, TypeError):  # a non-int index, or a 0-d array
        layers = ()
    if not layers:
        raise ValueError(f"LoraConfig.layers must be None or a non-empty list of block indices (ints >= 0), "
                         f"got {value!r}")
    return layers


def init_lora(config: GPTConfig, lora_config: LoraConfig, seed: int, dtype=np.float32) -> dict:
    """A fresh adapter: {"blocks": [{target: {"A": (r, d_in), "B": (d_out, r)}}, ...]}.

    Only A and B are allocated, so a GPT-3 175B-shaped config works. B = 0, so ΔW = 0 at init.
    Blocks that are not adapted hold an empty dict.

    All A are drawn in turn from one stream seeded by ``seed``. With the same seed, the first adapted matrix of
    two adapters of different rank is therefore nested at init (A of rank 8 equals the first 8 rows of A of
    rank 64, up to the "gaussian" scale 1/r); the others start at rank-dependent points of the stream.
    Comparing the subspaces learned at two ranks (Section 7.2) needs different seeds.
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    if not isinstance(lora_config, LoraConfig):
        raise TypeError(f"lora_config must be a LoraConfig, got {type(lora_config).__name__}")
    lora_config.check_against(config)
    rng = np.random.default_rng(_check_seed(seed))
    r = lora_config.r
    layers = set(lora_config.adapted_layers(config))
    blocks = []
    for i in range(config.n_layer):
        block = {}
        if i in layers:
            for t in lora_config.targets:
                d_out, d_in = config.matrix_shape(t)
                if lora_config.init == "gaussian":
                    A = rng.standard_normal((r, d_in), dtype=np.float64) * (1.0 / r)  # (r, d_in)
                else:  # kaiming-uniform with a = √5, as torch's nn.Linear: bound = 1/√d_in
                    bound = 1.0 / math.sqrt(d_in)
                    A = rng.uniform(-bound, bound, size=(r, d_in))  # (r, d_in)
                block[t] = {"A": A.astype(dtype), "B": np.zeros((d_out, r), dtype=dtype)}  # B (d_out, r)
        blocks.append(block)
    return to_device({"blocks": blocks})  # drawn on the host, placed on the selected backend


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def lora_linear(x, layer: dict, adapter: dict | None, scale: float, keep=None):
    """h = W x + b + s · B A x: the paper's eq. (3), scaled as in Section 4.1. x (..., d_in) -> (..., d_out)."""
    h = linear(x, layer["W"], layer["b"])  # (..., d_out): the frozen path
    if adapter is not None:
        h = h + lora_delta(x, adapter["A"], adapter["B"], scale, keep)  # (..., d_out): the low-rank path
    return h


def delta_weight(adapter: dict, scale: float):
    """ΔW = s · B A, (d_out, d_in). Formed only for merging and analysis, never in the forward."""
    return scale * (adapter["B"] @ adapter["A"])  # (d_out, r) @ (r, d_in) -> (d_out, d_in)


def _fold(params: dict, lora: dict, lora_config: LoraConfig, sign: float) -> dict:
    from .validate import check_lora

    check_lora(lora, lora_config, params)
    s = sign * lora_config.scale
    blocks = []
    for block, adapters in zip(params["blocks"], lora["blocks"], strict=True):
        new_block = dict(block)  # a new dict; untouched leaves are shared, never modified
        for t, adapter in adapters.items():
            W = block[t]["W"]
            new_block[t] = {**block[t], "W": W + delta_weight(adapter, s).astype(W.dtype)}
        blocks.append(new_block)
    return {**params, "blocks": blocks}


def merge(params: dict, lora: dict, lora_config: LoraConfig) -> dict:
    """A new parameter tree with W ← W + s·B A for every adapted matrix. The inputs are left untouched."""
    return _fold(params, lora, lora_config, +1.0)


def unmerge(params: dict, lora: dict, lora_config: LoraConfig) -> dict:
    """A new parameter tree with W ← W - s·B A: the inverse of merge, exact up to rounding."""
    return _fold(params, lora, lora_config, -1.0)


def count_params(tree) -> int:
    """Number of scalars in a tree of arrays (dicts, lists, tuples)."""
    return sum(int(np.prod(np.shape(leaf))) for leaf in leaves(tree))


def paper_param_count(n_adapted_matrices: int, d_model: int, r: int) -> int:
    """|Θ| = 2 × L̂_LoRA × d_model × r, the paper's formula for square adapted matrices (Section 4.2)."""
    return 2 * n_adapted_matrices * d_model * r


__all__ = [
    "TARGETS", "LoraConfig", "init_lora", "lora_linear", "delta_weight", "merge", "unmerge", "count_params",
    "paper_param_count",
]
