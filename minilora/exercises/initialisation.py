"""Exercise: initialise an adapter, and see why one factor (and only one) starts at zero.

    lora_init(d_in, d_out, r, rng) -> (A, B)      A (r, d_in) random (drawn from rng), B (d_out, r) zero

Checked per shape, then in a model: the student's init is used for W_q and W_v of every block of a small
GPT, and the checker asks the two questions the choice answers. Does the adapted model equal the base model at
init (bit for bit)? Does the first gradient reach B and not A (∂L/∂A = s·(G B)ᵀ X = 0 exactly while B = 0)?
Any distribution for A is accepted: only "random, full rank, from the generator given" is required.
"""

from __future__ import annotations

import numpy as np

from ..casework import CaseResult, Report, call, check_result, describe
from ..config import GPTConfig
from ..lora import LoraConfig
from ..model import forward, init_params

SHAPES = ((6, 5, 2), (7, 4, 1), (4, 7, 4), (16, 16, 8))  # (d_in, d_out, r): r = 1, r = min(d_in, d_out)
MODEL = GPTConfig(vocab_size=32, context=8, d_model=16, n_layer=2, n_head=2, d_mlp=24)
LCFG = LoraConfig(r=4, alpha=8.0, targets=("wq", "wv"))


def classify(A, B) -> str | None:
    """The init mistake (A, B) makes, or None for the paper's init (B = 0, A non-zero)."""
    a, b = bool(np.any(A)), bool(np.any(B))
    return {(False, False): "both_zero_init", (False, True): "zero_factor_swapped",
            (True, True): "both_random_init"}.get((a, b))


def _factors(fn, d_in, d_out, r, seed):
    """((A, B), None) or (None, CaseResult of the failure)."""
    label = f"lora_init(d_in={d_in}, d_out={d_out}, r={r})"
    got, err = call(fn, (d_in, d_out, r, np.random.default_rng(seed)))
    if err is not None:
        ni = isinstance(err, NotImplementedError)
        return None, CaseResult(label, False, "not implemented" if ni else describe(err), not_implemented=ni)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return None, check_result(label, False, f"returned {type(got).__name__}, expected a tuple (A, B)")
    A, B = (np.asarray(v) for v in got)
    want = ((r, d_in), (d_out, r))
    if (A.shape, B.shape) == want[::-1] and want[0] != want[1]:
        return None, check_result(label, False, f"returned shapes {A.shape}, {B.shape}: (B, A), expected (A, B)",
                                  ["outputs_order"])
    if (A.shape, B.shape) != want:
        transposed = A.shape == want[0][::-1] or B.shape == want[1][::-1]
        return None, check_result(label, False, f"returned shapes {A.shape}, {B.shape}, expected A {want[0]}, "
                                  f"B {want[1]}", ["output_transposed"] if transposed else [])
    if A.dtype.kind != "f" or B.dtype.kind != "f":
        return None, check_result(label, False, f"A and B must be float arrays, got {A.dtype} and {B.dtype}")
    return (A, B), None


def shape_check(fn, d_in, d_out, r) -> CaseResult:
    label = f"lora_init(d_in={d_in}, d_out={d_out}, r={r})"
    factors, failure = _factors(fn, d_in, d_out, r, seed=d_in * 100 + r)
    if failure:
        return failure
    A, B = factors
    mistake = classify(A, B)
    if mistake:
        return check_result(label, False, f"max|A| = {np.abs(A).max():.3g}, max|B| = {np.abs(B).max():.3g}", [mistake])
    rank = int(np.linalg.matrix_rank(A.astype(np.float64)))
    if rank < r:
        return check_result(label, False, f"A has rank {rank} < r = {r}: draw every entry at random")
    again, failure = _factors(fn, d_in, d_out, r, seed=d_in * 100 + r + 1)
    if failure:
        return failure
    if np.array_equal(again[0], A):
        return check_result(label, False, "A is the same for two different generators: draw it from rng")
    return check_result(label, True, f"B = 0, A random of rank {r} (std {A.std():.3g})")


def model_checks(fn) -> list[CaseResult]:
    """The student's init in a small GPT: is the adapted model the base, and does the first gradient reach B only?"""
    from ..tasks import Batch
    from ..train import lora_value_and_grad

    params = init_params(MODEL, 0)
    for block in params["blocks"]:
        for t in ("wq", "wv"):
            block[t]["W"] = (10 * block[t]["W"]).astype(np.float32)  # weights that matter (GPT-2's 0.02 is tiny)
    blocks = []
    for i in range(MODEL.n_layer):
        block = {}
        for t in LCFG.targets:
            d_out, d_in = MODEL.matrix_shape(t)
            factors, failure = _factors(fn, d_in, d_out, LCFG.r, seed=1000 + i)
            if failure:
                return []  # the shape checks already report it
            block[t] = {"A": factors[0].astype(np.float32), "B": factors[1].astype(np.float32)}
        blocks.append(block)
    lora = {"blocks": blocks}
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, MODEL.vocab_size, size=(2, MODEL.context))
    mistake = classify(blocks[0]["wq"]["A"], blocks[0]["wq"]["B"])
    base, adapted = forward(params, tokens, MODEL), forward(params, tokens, MODEL, lora, LCFG)
    diff = float(np.abs(base - adapted).max())
    same = check_result("the adapted model equals the base model at init", diff == 0.0,
                        "bit for bit" if diff == 0 else f"logits differ by up to {diff:.3g}",
                        [] if diff == 0 else [mistake or "both_random_init"])

    _, g = lora_value_and_grad(lora, params, Batch(tokens, np.roll(tokens, -1, axis=1)), MODEL, LCFG, None)
    dA = max(float(np.abs(ab["A"]).max()) for blk in g["blocks"] for ab in blk.values())
    dB = min(float(np.abs(ab["B"]).max()) for blk in g["blocks"] for ab in blk.values())
    ok = dA == 0.0 and dB > 0.0
    first = check_result("the first gradient reaches B and not A", ok,
                         f"max|dL/dA| = {dA:.3g}{' (exactly 0)' if dA == 0 else ''}, "
                         f"smallest max|dL/dB| per matrix = {dB:.3g}", [] if ok else [mistake] if mistake else [])
    return [same, first]


def check_lora_init(fn):
    if not callable(fn):
        raise TypeError(f"lora_init: expected a function, got {type(fn).__name__}")
    return Report("lora_init", [shape_check(fn, *s) for s in SHAPES] + model_checks(fn))
