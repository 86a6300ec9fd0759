"""minilora.verify: right implementations pass (NumPy, torch), each typical mistake fails with its own hint,
and nothing a checked function does (crash, wrong shape, NaN, torch tensors, in-place writes) escapes as a
traceback."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minilora.cases import linear_cases
from minilora.diagnose import MISTAKES
from minilora.verify import check_lora_linear, check_lora_linear_vjp

N_CASES = len(linear_cases())


def rows(a):
    return a.reshape(-1, a.shape[-1])


def lora(x, W, b, A, B, s):
    return x @ W.T + b + s * (x @ A.T) @ B.T


def lora_vjp(x, W, b, A, B, s, g):
    gB = rows(g) @ B  # (N, r)
    return g @ W + s * (g @ B) @ A, s * gB.T @ rows(x), s * rows(g).T @ (rows(x) @ A.T)


# ---- forward: one planted implementation per mistake -------------------------------------------------------

_noise = np.random.default_rng(0)

FORWARD_MISTAKES = {
    "scale_missing": lambda x, W, b, A, B, s: lora(x, W, b, A, B, 1.0),
    # the user's layer is rsLoRA but the wrapper passes alpha = s*r: it computes alpha/sqrt(r) = s*sqrt(r)
    "rslora_for_lora": lambda x, W, b, A, B, s: lora(x, W, b, A, B, s * A.shape[0] / math.sqrt(A.shape[0])),
    # the user's layer is plain LoRA but the wrapper passes alpha = s*sqrt(r): it computes s/sqrt(r)
    "lora_for_rslora": lambda x, W, b, A, B, s: lora(x, W, b, A, B, s * math.sqrt(A.shape[0]) / A.shape[0]),
    "ab_swapped": lambda x, W, b, A, B, s: x @ W.T + b + s * (x @ B) @ A,
    "w_transposed": lambda x, W, b, A, B, s: x @ W + b + s * (x @ A.T) @ B.T,
    "bias_missing": lambda x, W, b, A, B, s: lora(x, W, 0.0, A, B, s),
    "dropout_at_eval": lambda x, W, b, A, B, s: lora(x, W, b, A, B, s) - lora(x, W, b, A, B, s)
    + x @ W.T + b + s * ((x * (_noise.random(x.shape) >= 0.2) / 0.8) @ A.T) @ B.T,
}


def merge_in_place(x, W, b, A, B, s):
    W += s * B @ A  # "merge for speed": the caller's W is now W + ΔW
    return x @ W.T + b


FORWARD_MISTAKES["merge_in_place"] = merge_in_place


def test_numpy_reference_passes():
    report = check_lora_linear(lora)
    assert report.passed, str(report)
    assert len(report.lines) == N_CASES + 1  # one per case, and the determinism check
    assert all(line.startswith("ok") for line in report.lines)
    assert "max abs err" in report.lines[0] and "tol 1e-05" in report.lines[0]
    assert report.mistakes == []


@pytest.mark.parametrize("key", sorted(FORWARD_MISTAKES))
def test_each_forward_mistake_fails_with_its_hint(key):
    report = check_lora_linear(FORWARD_MISTAKES[key])
    assert not report.passed
    assert key in report.mistakes, (key, report.mistakes, str(report))
    text = str(report)
    assert MISTAKES[key].title in text and MISTAKES[key].hint in text


def test_a_mistake_is_named_on_the_cases_that_can_tell_it_and_only_there():
    """W transposed crashes on non-square W (a failed case with the message) and is named on the square ones."""
    report = check_lora_linear(FORWARD_MISTAKES["w_transposed"])
    crashed = [r for r in report.results if "raised ValueError" in r.detail]
    named = [r for r in report.results if "w_transposed" in r.keys]
    assert crashed and named and not set(map(id, crashed)) & set(map(id, named))
    assert all("square" in r.tags for r in named)
    assert "inputs: x" in crashed[0].detail  # the shapes it was called with


def test_the_right_answer_with_r1_cannot_be_called_a_rslora_mistake():
    """At r = 1, α/r = α/√r: a function that uses α/√r everywhere is wrong only where r > 1."""
    report = check_lora_linear(FORWARD_MISTAKES["rslora_for_lora"])
    for r in report.results:
        if "r1" in r.tags:
            assert r.ok, r.line


# ---- VJP ---------------------------------------------------------------------------------------------------

def _vjp_with(change):
    def fn(x, W, b, A, B, s, g):
        return change(lora_vjp(x, W, b, A, B, s, g), x, W, A, B, s, g)
    return fn


VJP_MISTAKES = {
    "scale_missing": lambda x, W, b, A, B, s, g: lora_vjp(x, W, b, A, B, 1.0, g),
    "rslora_for_lora": lambda x, W, b, A, B, s, g: lora_vjp(x, W, b, A, B, s * math.sqrt(A.shape[0]), g),
    "w_transposed": _vjp_with(lambda d, x, W, A, B, s, g: (g @ W.T + s * (g @ B) @ A, d[1], d[2])),
    "dx_frozen_missing": _vjp_with(lambda d, x, W, A, B, s, g: (s * (g @ B) @ A, d[1], d[2])),
    "dx_lora_missing": _vjp_with(lambda d, x, W, A, B, s, g: (g @ W, d[1], d[2])),
    "output_transposed": _vjp_with(lambda d, x, W, A, B, s, g: (d[0], d[1].T, d[2])),
    "outputs_order": _vjp_with(lambda d, x, W, A, B, s, g: (d[0], d[2], d[1])),
    "frozen_w_grad": _vjp_with(lambda d, x, W, A, B, s, g: (d[0], rows(g).T @ rows(x), d[1], d[2])),
    "ab_swapped": lambda x, W, b, A, B, s, g: (  # the VJP of x W^T + b + s x B A, A and B exchanged
        g @ W + s * (g @ A.T) @ B.T, s * (rows(x) @ B).T @ rows(g), s * rows(x).T @ (rows(g) @ A.T)),
}


def test_numpy_vjp_passes():
    report = check_lora_linear_vjp(lora_vjp)
    assert report.passed, str(report)
    assert len(report.lines) == N_CASES + 1


@pytest.mark.parametrize("key", sorted(VJP_MISTAKES))
def test_each_vjp_mistake_fails_with_its_hint(key):
    report = check_lora_linear_vjp(VJP_MISTAKES[key])
    assert not report.passed
    assert key in report.mistakes, (key, report.mistakes, str(report))
    assert MISTAKES[key].hint in str(report)


def test_vjp_report_says_which_output_is_wrong():
    report = check_lora_linear_vjp(_vjp_with(lambda d, x, W, A, B, s, g: (d[0], d[1], d[2] / s)))
    line = next(r.line for r in report.results if not r.ok)
    assert "dx ok" in line and "dA ok" in line and "dB rel" in line and "dB: the scale forgotten" in line


def test_dropout_left_on_in_the_vjp():
    rng = np.random.default_rng(1)

    def fn(x, W, b, A, B, s, g):
        m = (rng.random(x.shape) >= 0.2) / 0.8
        dx, dA, dB = lora_vjp(x * m, W, b, A, B, s, g)
        return g @ W + (dx - g @ W) * m, dA, dB

    report = check_lora_linear_vjp(fn)
    assert not report.passed and "dropout_at_eval" in report.mistakes


# ---- what the checked function may do, and the report says -------------------------------------------------

def test_a_crash_is_a_failed_case_with_its_message():
    def fn(x, W, b, A, B, s):
        raise RuntimeError("CUDA out of memory (pretend)")

    report = check_lora_linear(fn)
    assert not report.passed
    assert all("raised RuntimeError: CUDA out of memory (pretend)" in r.detail for r in report.results)
    assert "test_verify.py line" in report.results[0].detail


def test_wrong_shapes_none_nan_and_tuples_are_failed_cases():
    shapes = check_lora_linear(lambda x, W, b, A, B, s: lora(x, W, b, A, B, s)[..., :-1])
    assert not shapes.passed and "has shape" in shapes.results[0].detail
    none = check_lora_linear(lambda *args: None)
    assert not none.passed and "could not read NoneType" in none.results[0].detail
    nan = check_lora_linear(lambda x, W, b, A, B, s: lora(x, W, b, A, B, s) * np.nan)
    assert not nan.passed and "NaN" in nan.results[0].detail
    tup = check_lora_linear(lambda *args: (lora(*args), 1))
    assert not tup.passed and "expected one h" in tup.results[0].detail
    short = check_lora_linear_vjp(lambda *args: lora_vjp(*args)[:2])
    assert not short.passed and "returned 2 values, expected 3" in short.results[0].detail
    single = check_lora_linear_vjp(lambda *args: lora_vjp(*args)[0])
    assert not single.passed and "expected a tuple (dx, dA, dB)" in single.results[0].detail


def test_a_bug_on_one_kind_of_case_is_pointed_at():
    def squeezes(x, W, b, A, B, s):
        return np.squeeze(lora(x, W, b, A, B, s))  # a batch of one loses its leading dim

    report = check_lora_linear(squeezes)
    assert not report.passed
    assert all("batch_one" in r.tags for r in report.results if not r.ok)
    assert "a batch of one" in str(report)

    def flattens(x, W, b, A, B, s):
        return lora(rows(x), W, b, A, B, s)  # leading dims lost

    assert "more than one leading dim" in str(check_lora_linear(flattens))


def test_float32_results_may_come_back_in_float64_but_not_float32_for_float64():
    up = check_lora_linear(lambda *a: lora(*(v.astype(np.float64) if hasattr(v, "astype") else v for v in a)))
    assert up.passed
    down = check_lora_linear(lambda *a: lora(*(v.astype(np.float32) if hasattr(v, "astype") else v for v in a)))
    assert not down.passed and all(("float64" in r.tags) for r in down.results if not r.ok)


def test_dtypes_argument():
    report = check_lora_linear(lora, dtypes=("float64",))
    assert report.passed and len(report.results) == N_CASES // 2 + 1
    with pytest.raises(ValueError, match="dtypes"):
        check_lora_linear(lora, dtypes=("float16",))
    with pytest.raises(TypeError, match="expected a function"):
        check_lora_linear("not a function")


def test_report_text_and_repr():
    report = check_lora_linear(FORWARD_MISTAKES["scale_missing"])
    text = str(report)
    assert text.startswith("check_lora_linear: FAILED")
    assert "What went wrong:" in text and "<- the scale forgotten" in text
    assert "FAILED" in repr(report)
    assert str(check_lora_linear(lora)).startswith(f"check_lora_linear: passed, {N_CASES + 1} of {N_CASES + 1}")


# ---- torch ---------------------------------------------------------------------------------------------------

def test_a_torch_layer_passes_and_its_tensors_are_read():
    torch = pytest.importorskip("torch", reason="torch is not installed (the 'parity' extra)")

    def fn(x, W, b, A, B, s):
        t = {k: torch.from_numpy(v) for k, v in dict(x=x, W=W, b=b, A=A, B=B).items()}
        return torch.nn.functional.linear(t["x"], t["W"], t["b"]) + s * (t["x"] @ t["A"].T) @ t["B"].T

    assert check_lora_linear(fn).passed  # a CPU tensor without grad converts like an array

    def vjp(x, W, b, A, B, s, g):
        xt, At, Bt = (torch.from_numpy(v).requires_grad_(True) for v in (x, A, B))
        h = torch.nn.functional.linear(xt, torch.from_numpy(W), torch.from_numpy(b)) + s * (xt @ At.T) @ Bt.T
        h.backward(torch.from_numpy(g))
        return xt.grad, At.grad, Bt.grad

    assert check_lora_linear_vjp(vjp).passed

    def needs_detach(x, W, b, A, B, s):
        return fn(x, W, b, torch.from_numpy(A).requires_grad_(True).detach().numpy(), B, s).requires_grad_(True)

    report = check_lora_linear(needs_detach)
    assert not report.passed and "detach" in report.results[0].detail
