"""Check your own LoRA layer against minilora's reference: a report per function, the typical mistakes named.

    from minilora.verify import check_lora_linear, check_lora_linear_vjp

    report = check_lora_linear(fn)        # fn(x, W, b, A, B, scale) -> h
    report = check_lora_linear_vjp(fn)    # fn(x, W, b, A, B, scale, g) -> (dx, dA, dB)
    print(report); assert report.passed

Conventions: W (d_out, d_in) as in the paper and torch.nn.Linear, A (r, d_in), B (d_out, r), x (..., d_in),
h = x Wᵀ + b + scale·(x Aᵀ) Bᵀ, and for an upstream gradient g (..., d_out) the gradients of L = Σ g ⊙ h.
NumPy arrays go in (``scale`` is a Python float) and NumPy arrays come back. The cases (``minilora.cases``):
α/r and α/√r, r = 1 and r = min(d_in, d_out), a batch of one, two leading batch dims, square and non-square W,
float32 and float64; they are the golden files' ``lora_linear`` cases. The report has one line per case with
the largest absolute and relative error against the tolerance, and names a recognised mistake (the scale
missing, α/√r for α/r, A and B swapped or transposed, W transposed, the bias forgotten, the frozen or the
low-rank part of dx missing, an output transposed, a gradient for the frozen W returned, W merged in place,
dropout left on). A crash or a wrong shape inside fn is a failed case with its message.
"""

from __future__ import annotations

import numpy as np

from . import reference as ref
from .cases import DTYPES, LinearCase, linear_cases
from .casework import Case, Report, as_outputs, call, check_result, run_cases
from .diagnose import compare, forward_variants, layer_mistakes, vjp_variants

IN_PLACE = (("W", "merge_in_place"),)


def layer_case(c: LinearCase, vjp: bool, alpha_arg: bool = False) -> Case:
    """The forward case of ``c`` (output h), or with vjp=True its VJP case (g in, (dx, dA, dB) out).
    alpha_arg: the checked function gets α instead of the scale (the exercises)."""
    s = c.shape
    names = ("x", "W", "b", "A", "B", "alpha" if alpha_arg else "scale") + (("g",) if vjp else ())
    args = (c.x, c.W, c.b, c.A, c.B, s.alpha if alpha_arg else c.scale) + ((c.g,) if vjp else ())
    mistakes = lambda: layer_mistakes(c.W, c.b, c.scale, s.r, s.rule, s.alpha if alpha_arg else None)
    if vjp:
        return Case(c.label, args, names, ref.lora_linear_vjp(c.x, c.W, c.b, c.A, c.B, c.scale, c.g),
                    ("dx", "dA", "dB"), c.tol, lambda: vjp_variants(c.x, c.W, c.A, c.B, c.scale, c.g, mistakes()),
                    c.tags, IN_PLACE)
    return Case(c.label, args, names, (ref.lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale),), ("h",), c.tol,
                lambda: forward_variants(c.x, c.A, c.B, mistakes()), c.tags, IN_PLACE)


def check_lora_linear(fn, *, dtypes=DTYPES) -> Report:
    """Check fn(x, W, b, A, B, scale) -> h against the reference on every case (see the module docstring)."""
    cases = linear_cases(dtypes)
    report = run_cases("check_lora_linear", fn, [layer_case(c, vjp=False) for c in cases])
    report.results += determinism(fn, layer_case(_probe(cases), vjp=False), _probe(cases))
    return report


def check_lora_linear_vjp(fn, *, dtypes=DTYPES) -> Report:
    """Check fn(x, W, b, A, B, scale, g) -> (dx, dA, dB) against the reference on every case."""
    cases = linear_cases(dtypes)
    report = run_cases("check_lora_linear_vjp", fn, [layer_case(c, vjp=True) for c in cases])
    report.results += determinism(fn, layer_case(_probe(cases), vjp=True), None)
    return report


def _probe(cases) -> LinearCase:
    """The case the determinism check repeats: the first with r < d_out (the adapter's outputs span a proper
    subspace, so a change confined to the adapter's path can be told from any other change)."""
    return next(c for c in cases if c.shape.r < c.shape.d_out)


def determinism(fn, case: Case, linear: LinearCase | None) -> list:
    """Two calls on the same inputs must agree: a LoRA layer that differs from itself has dropout on.
    Returns [] when fn's results are not valid outputs (the case's own line already says why)."""
    label = "determinism: the first case twice"
    results = []
    for _ in range(2):
        got, err = call(fn, _copies(case.args))
        outs, problem = (None, True) if err is not None else as_outputs(got, case)
        if problem:
            return []
        results.append(outs)
    worst = max(compare(b, a)[1] for a, b in zip(*results, strict=True))
    if worst <= case.tol:
        return [check_result(label, True, "two calls on the same inputs agree")]
    in_adapter_path = linear is None or _in_range_of_B(results[0][0], results[1][0], linear)
    return [check_result(label, False, f"two calls on the same inputs differ (rel {worst:.3g})"
                         + ("" if in_adapter_path else ", and not only in the adapter's path"),
                         ["dropout_at_eval"] if in_adapter_path else [])]


def _in_range_of_B(h1, h2, c: LinearCase) -> bool:
    """Does h1 − h2 lie in the column space of B (the adapter's outputs), as a dropout mask on x makes it?"""
    dev = (np.asarray(h1, dtype=np.float64) - np.asarray(h2, dtype=np.float64)).reshape(-1, c.shape.d_out)
    Q, _ = np.linalg.qr(ref.f64(c.B))  # (d_out, r): an orthonormal basis of B's columns
    residual = dev - (dev @ Q) @ Q.T
    return float(np.abs(residual).max()) <= 1e-3 * float(np.abs(dev).max())


def _copies(args):
    return tuple(a.copy() if hasattr(a, "copy") else a for a in args)



__all__ = ["check_lora_linear", "check_lora_linear_vjp"]
