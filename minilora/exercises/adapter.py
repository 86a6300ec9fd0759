"""Exercise (a baseline the paper compares against): the adapter layer of Houlsby et al. (2019).

    adapter_layer(h, W_down, b_down, W_up, b_up) -> h + f(h W_downᵀ + b_down) W_upᵀ + b_up,   f = ReLU

W_down (m, d) projects the d-wide hidden state down to a bottleneck of m, W_up (d, m) back up (stored
(d_out, d_in), like every matrix here); the residual connection adds the input back. Unlike LoRA's B A, the
nonlinearity f keeps it from being folded into a neighbouring weight, which is the inference latency the
paper's Table 1 measures. ``houlsby_adapter`` is the reference the checker uses: a small exercise-only function
(the fine-tuning-method modules of the package are separate).
"""

from __future__ import annotations

import math

import numpy as np

from ..cases import SEED, TOLERANCE
from ..casework import Case, run_cases


def relu(z):
    return np.maximum(z, 0.0)


def houlsby_adapter(h, W_down, b_down, W_up, b_up, f=relu):
    """h + f(h W_downᵀ + b_down) W_upᵀ + b_up, in float64. h (..., d) -> (..., d)."""
    h, W_down, b_down, W_up, b_up = (np.asarray(a, dtype=np.float64) for a in (h, W_down, b_down, W_up, b_up))
    z = f(h @ W_down.T + b_down)  # (..., m): the bottleneck
    return h + z @ W_up.T + b_up  # (..., d)


# (leading dims of h, d, m): a plain batch, two batch dims, a batch of one, m = 1, m = d (shows a transpose)
SHAPES = (((4,), 8, 3), ((2, 3), 8, 2), ((1,), 6, 1), ((5,), 5, 5))


def _variants(h, Wd, bd, Wu, bu):
    out = [("adapter_no_residual", houlsby_adapter(h, Wd, bd, Wu, bu) - np.asarray(h, dtype=np.float64)),
           ("adapter_no_nonlinearity", houlsby_adapter(h, Wd, bd, Wu, bu, f=lambda z: z)),
           ("adapter_nonlinearity_misplaced", np.asarray(h, np.float64) + relu(houlsby_adapter(
               h, Wd, bd, Wu, bu, f=lambda z: z) - np.asarray(h, np.float64))),
           ("adapter_bias_missing", houlsby_adapter(h, Wd, 0 * bd, Wu, bu)),
           ("adapter_bias_missing", houlsby_adapter(h, Wd, bd, Wu, 0 * bu))]
    if Wd.shape[0] == Wd.shape[1]:
        out.append(("w_transposed", houlsby_adapter(h, Wd.T, bd, Wu.T, bu)))
    return [(k, (v,)) for k, v in out]


def _case(index, dtype):
    lead, d, m = SHAPES[index]
    rng = np.random.default_rng([SEED, 300 + index])
    arrays = [rng.standard_normal((*lead, d)), rng.standard_normal((m, d)) / math.sqrt(d), 0.3 * rng.standard_normal(m),
              rng.standard_normal((d, m)) / math.sqrt(m), 0.3 * rng.standard_normal(d)]
    h, Wd, bd, Wu, bu = (a.astype(dtype) for a in arrays)
    tags = {dtype} | ({"batch_dims"} if len(lead) > 1 else set()) | ({"batch_one"} if lead == (1,) else set())
    return Case(f"{dtype} h{h.shape} W_down{Wd.shape} W_up{Wu.shape}", (h, Wd, bd, Wu, bu),
                ("h", "W_down", "b_down", "W_up", "b_up"), (houlsby_adapter(h, Wd, bd, Wu, bu),), ("out",),
                TOLERANCE[dtype], lambda: _variants(h, Wd, bd, Wu, bu), frozenset(tags))


def check_adapter_layer(fn):
    return run_cases("adapter_layer", fn, [_case(i, dt) for i in range(len(SHAPES)) for dt in ("float32", "float64")])
