"""The adapter layer both AdapterH and AdapterL insert: a bottleneck with biases, a nonlinearity and a residual.

    adapter(h) = h + W_up f(W_down h + b_down) + b_up       W_down (r, d), W_up (d, r), f = GELU

2 d r + r + d parameters. W_up and b_up start at zero, so adapter(h) = h at init: the adapted model begins
exactly at the base model, as LoRA's B = 0 does. W_down starts N(0, 1/d) (unit-scale bottleneck activations),
so W_up's first gradients are not zero. (Houlsby and Lin use GELU / ReLU; GELU is the package's nonlinearity.)
"""

from __future__ import annotations

import math

import numpy as np

from ..config import whole_number
from ..ops import gelu, linear


def init_bottleneck(rng: np.random.Generator, d: int, r: int, dtype=np.float32) -> dict:
    """{"down": {"W": (r, d), "b": (r,)}, "up": {"W": (d, r), "b": (d,)}}; up = 0."""
    down = (rng.standard_normal((r, d)) / math.sqrt(d)).astype(dtype)  # (r, d)
    return {"down": {"W": down, "b": np.zeros(r, dtype)},
            "up": {"W": np.zeros((d, r), dtype), "b": np.zeros(d, dtype)}}


def bottleneck(h, p: dict, x=None):
    """h + W_up GELU(W_down x + b_down) + b_up, with x = h unless given (AdapterL feeds LN(h)). (..., d)."""
    z = gelu(linear(h if x is None else x, p["down"]["W"], p["down"]["b"]))  # (..., r)
    return h + linear(z, p["up"]["W"], p["up"]["b"])  # (..., d)


def bottleneck_count(d: int, r: int) -> int:
    return 2 * d * r + r + d


def check_rank(name: str, r, config) -> int:
    r = whole_number(name, "r", r, at_least=1)
    if r > config.d_model:
        raise ValueError(f"{name}.r={r} exceeds d_model={config.d_model}: the bottleneck would not be one")
    return r


def seeded(seed) -> np.random.Generator:
    return np.random.default_rng(whole_number("", "seed", seed))
