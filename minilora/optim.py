"""AdamW over parameter trees, a warm-up + cosine learning-rate schedule, and global-norm gradient clipping.

State is a plain tree too ({"step", "m", "v"}), so it is saved and resumed like any other checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import real_number
from .tree import leaves, map_leaves


@dataclass(frozen=True)
class AdamW:
    lr: float = 1e-3
    """Peak learning rate (reached after warm-up)."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    """Decoupled weight decay (Loshchilov & Hutter), applied to matrices only: never to biases or LayerNorm."""

    def __post_init__(self):
        object.__setattr__(self, "lr", real_number("AdamW", "lr", self.lr, more_than=0))
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"AdamW.betas must be a pair (beta1, beta2), got {betas!r}")
        object.__setattr__(self, "betas", tuple(real_number("AdamW", f"betas[{i}]", b, at_least=0, less_than=1)
                                                for i, b in enumerate(betas)))
        object.__setattr__(self, "eps", real_number("AdamW", "eps", self.eps, more_than=0))
        object.__setattr__(self, "weight_decay", real_number("AdamW", "weight_decay", self.weight_decay, at_least=0))

    def init(self, params) -> dict:
        """The optimizer state for ``params``: step 0 and zero first and second moments of their shapes."""
        zeros = lambda a: np.zeros_like(a)  # noqa: E731
        return {"step": 0, "m": map_leaves(zeros, params), "v": map_leaves(zeros, params)}

    def update(self, params, grads, state, lr: float, lr_scale=None):
        """One step: returns (new params, new state). Nothing is modified in place.

        lr_scale: None, or a tree of the params' structure holding one positive float per leaf: that leaf
        steps with lr × its multiplier (LoRA+ trains B at 16 × the rate of A). m and v are unaffected."""
        step = state["step"] + 1
        b1, b2 = self.betas
        c1, c2 = 1.0 - b1**step, 1.0 - b2**step

        def one(p, g, m, v, scale=1.0):
            m = b1 * m + (1.0 - b1) * g
            v = b2 * v + (1.0 - b2) * (g * g)
            update = (m / c1) / (np.sqrt(v / c2) + self.eps)
            if self.weight_decay and p.ndim >= 2:
                update = update + self.weight_decay * p
            return (p - (lr * scale) * update).astype(p.dtype), m, v

        others = (grads, state["m"], state["v"]) + (() if lr_scale is None else (lr_scale,))
        triples = map_leaves(one, params, *others)
        return _pick(triples, 0), {"step": step, "m": _pick(triples, 1), "v": _pick(triples, 2)}


def _pick(tree, i):
    """From a tree whose leaves are tuples, the tree of their i-th elements."""
    if isinstance(tree, dict):
        return {k: _pick(v, i) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_pick(v, i) for v in tree]
    return tree[i]


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``min_ratio · peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def global_norm(grads) -> float:
    """The L2 norm of every gradient leaf together, sqrt(Σ ‖g‖²), as a Python float."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in leaves(grads)))


def clip_by_global_norm(grads, max_norm: float):
    """Scale all gradients together so their global L2 norm is at most max_norm (0 = no clipping).
    Returns (grads, norm before clipping)."""
    max_norm = real_number("", "max_norm", max_norm, at_least=0)
    norm = global_norm(grads)
    if max_norm and norm > max_norm:
        factor = max_norm / (norm + 1e-12)
        grads = map_leaves(lambda g: (g * factor).astype(g.dtype), grads)
    return grads, norm
