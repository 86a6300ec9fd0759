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
from .config import GPTConfig, check_fields
from .ops import linear, lora_delta
from .tree import map_leaves

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
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive int, got {self.r!r}")
        if (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float, np.floating, np.integer))
                or not 0 < self.alpha < math.inf):
            raise ValueError(f"LoraConfig.alpha must be a positive finite number, got {self.alpha!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets:
            raise ValueError(f"LoraConfig.targets must name at least one of {TARGETS}")
        for t in targets:
            if t not in TARGETS:
                raise ValueError(f"LoraConfig.targets: unknown target {t!r}; choose from {TARGETS}")
        if len(set(targets)) != len(targets):
            raise ValueError(f"LoraConfig.targets: each target at most once, got {targets}")
        object.__setattr__(self, "r", int(self.r))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "targets", tuple(t for t in TARGETS if t in targets))  # canonical order
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise ValueError(f"LoraConfig.init must be one of {INITS}, got {self.init!r}")
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0
                                 for i in layers):
                raise ValueError(f"LoraConfig.layers must be None or non-negative block indices, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(sorted(set(int(i) for i in layers))))

    @property
    def scale(self) -> float:
        """s = α/r, or α/√r with use_rslora."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def adapted_layers(self, config: GPTConfig) -> tuple[int, ...]:
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
        data = check_fields(cls, data)
        if "targets" in data:
            data["targets"] = tuple(data["targets"])
        if data.get("layers") is not None:
            data["layers"] = tuple(data["layers"])
        return cls(**data)


def init_lora(config: GPTConfig, lora_config: LoraConfig, seed: int, dtype=np.float32) -> dict:
    """A fresh adapter: {"blocks": [{target: {"A": (r, d_in), "B": (d_out, r)}}, ...]}.

    Only A and B are allocated, so a GPT-3 175B-shaped config works. B = 0, so ΔW = 0 at init.
    Blocks that are not adapted hold an empty dict.

    All A are drawn in turn from one stream seeded by ``seed``. With the same seed, the first adapted matrix of
    two adapters of different rank is therefore nested at init (A of rank 8 equals the first 8 rows of A of
    rank 64, up to the "gaussian" scale 1/r); the others start at rank-dependent points of the stream.
    Comparing the subspaces learned at two ranks (Section 7.2) needs different seeds.
    Drawn on the host and moved to the selected backend: a seed gives the same adapter on every backend.
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
    return to_device({"blocks": blocks})


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
    total = 0
    for leaf in map_leaves(lambda a: a, tree, collect=True):
        total += int(np.prod(np.shape(leaf)))
    return total


def paper_param_count(n_adapted_matrices: int, d_model: int, r: int) -> int:
    """|Θ| = 2 × L̂_LoRA × d_model × r, the paper's formula for square adapted matrices (Section 4.2)."""
    return 2 * n_adapted_matrices * d_model * r


__all__ = [
    "TARGETS", "LoraConfig", "init_lora", "lora_linear", "delta_weight", "merge", "unmerge", "count_params",
    "paper_param_count",
]
