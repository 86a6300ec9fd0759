"""Run someone's function on prepared cases and write a report: one line per case, the mistakes named.

A crash, a wrong shape, a non-array result, a NaN or a changed input inside the checked function becomes a
failed case with its message, never a traceback out of the checker. ``minilora.verify`` and
``minilora.exercises`` build their cases and hand them to ``run_cases``; the report is the same for both.
"""

from __future__ import annotations

import collections
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .diagnose import MISTAKES, close, compare, identify


@dataclass(frozen=True)
class Case:
    label: str
    args: tuple
    """Passed to the checked function (arrays are copied for every call)."""
    arg_names: tuple[str, ...]
    want: tuple
    """The right outputs, one per name in out_names (arrays or numbers)."""
    out_names: tuple[str, ...]
    tol: float
    """Relative to max|want| per output (see diagnose.compare); 0 asks for exact equality."""
    variants: Callable | None = None
    """() -> [(mistake key, outputs under that mistake)]: evaluated only when the case fails."""
    tags: frozenset = frozenset()
    in_place: tuple = ()
    """(argument name, mistake key) pairs: which mistake it is when fn changes that argument."""
    floor: float = 0.0
    """Errors are relative to max(max|want|, floor): 1 for results in [0, 1] that may be 0."""


@dataclass(frozen=True)
class CaseResult:
    label: str
    ok: bool
    detail: str
    mistakes: tuple = ()
    """Keys into diagnose.MISTAKES, or (output name, key) pairs for a per-output diagnosis."""
    tags: frozenset = frozenset()
    not_implemented: bool = False

    @property
    def keys(self) -> list[str]:
        return [m[1] if isinstance(m, tuple) else m for m in self.mistakes]

    @property
    def line(self) -> str:
        named = ", ".join(f"{m[0]}: {MISTAKES[m[1]].title}" if isinstance(m, tuple) else MISTAKES[m].title
                          for m in self.mistakes)
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.label}: {self.detail}" + (f"  <- {named}" if named else "")


TAG_TEXT = {
    "batch_dims": "an x with more than one leading dim, (2, 3, d_in) say: work on the last axis, "
                  "whatever the leading dims (x.reshape(-1, d_in), or x @ W.T, which broadcasts)",
    "batch_one": "a batch of one: nothing may squeeze the leading dim away",
    "r1": "r = 1: keep A (1, d_in) and B (d_out, 1) two-dimensional",
    "full_rank": "r = min(d_in, d_out)",
    "float32": "float32 inputs: compute in the inputs' dtype or higher, and return float arrays",
    "float64": "float64 inputs: float64 must be kept (a cast to float32 loses 9 digits)",
    "alpha/r": "s = α/r",
    "alpha/sqrt(r)": "s = α/√r (rsLoRA)",
    "square": "d_in = d_out",
    "training": "training=True",
    "eval": "training=False (evaluation)",
}


@dataclass
class Report:
    """What a checker found: ``passed``, one line per case (``lines``), the mistakes it recognised (``mistakes``,
    most frequent first) and a readable text (``str(report)``)."""

    title: str
    results: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def lines(self) -> list[str]:
        return [r.line for r in self.results]

    @property
    def mistakes(self) -> list[str]:
        counts = collections.Counter(k for r in self.results if not r.ok for k in dict.fromkeys(r.keys))
        return [k for k, _ in counts.most_common()]

    def __str__(self) -> str:
        failed = [r for r in self.results if not r.ok]
        if failed and all(r.not_implemented for r in self.results):
            return (f"{self.title}: not implemented yet. Replace the `raise NotImplementedError` with your code "
                    "and run the check again.")
        head = (f"{self.title}: passed, {len(self.results)} of {len(self.results)} checks" if self.passed else
                f"{self.title}: FAILED, {len(failed)} of {len(self.results)} checks wrong")
        out = [head] + ["  " + line for line in self.lines]
        counts = collections.Counter(k for r in failed for k in dict.fromkeys(r.keys))
        if counts:
            out.append("What went wrong:")
            out += [f"  * {MISTAKES[k].title} (named in {n} of the {len(failed)} failed checks): {MISTAKES[k].hint}"
                    for k, n in counts.most_common()]
        pattern = failure_pattern(self.results)
        if pattern:
            out.append(f"The failures are exactly the checks with {pattern}")
        if failed and not counts and not pattern:
            out.append("No typical mistake matches: compare your formula with the one stated, term by term.")
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"<Report {self.title!r}: {'passed' if self.passed else 'FAILED'}, {len(self.results)} checks>"


def failure_pattern(results) -> str | None:
    """The tag that exactly the failed cases carry, when some cases pass: "a batch of one", say."""
    tagged = [r for r in results if r.tags]  # the input→output cases (extra checks carry no tags)
    failed = {i for i, r in enumerate(tagged) if not r.ok}
    if not failed or len(failed) == len(tagged) or any(not r.ok for r in results if not r.tags):
        return None
    for tag, text in TAG_TEXT.items():
        if {i for i, r in enumerate(tagged) if tag in r.tags} == failed:
            return text
    return None


def run_cases(title: str, fn, cases) -> Report:
    """Run fn on every case; the report's results can be extended with checks of other kinds (check_result)."""
    if not callable(fn):
        raise TypeError(f"{title}: expected a function, got {type(fn).__name__}")
    return Report(title, [run_case(fn, case) for case in cases])


def call(fn, args):
    """(result, None), or (None, the exception fn raised): a checked function may raise anything."""
    try:
        return fn(*args), None
    except Exception as err:
        return None, err


def describe(err: Exception) -> str:
    """"raised ValueError: ... (at file.py line 12)", naming the innermost line outside libraries."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)[1:]
              if "site-packages" not in f.filename and "/lib/python" not in f.filename]
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]} line {frames[-1].lineno})" if frames else ""
    return f"raised {type(err).__name__}: {err}{where}"


def shapes_of(names, args) -> str:
    """"x (4, 8), A (2, 8)": the shapes of the array arguments, for a report line."""
    return ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(names, args, strict=False) if isinstance(a, np.ndarray))


def run_case(fn, case: Case) -> CaseResult:
    """Call fn on copies of the case's arguments (a student's function cannot change them for the next case) and
    compare with the expected result; an exception becomes the result's message, not a traceback."""
    args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in case.args)
    got, err = call(fn, args)
    fail = lambda detail, mistakes=(): CaseResult(case.label, False, detail, tuple(mistakes), case.tags)
    if isinstance(err, NotImplementedError):
        return CaseResult(case.label, False, f"not implemented ({err})", (), case.tags, not_implemented=True)
    if err is not None:
        return fail(f"{describe(err)}; inputs: {shapes_of(case.arg_names, case.args)}")
    changed = changed_inputs(case, args)
    if changed:
        mistakes = [dict(case.in_place).get(n, "input_in_place") for n in changed]
        return fail(f"changed its argument {', '.join(changed)} in place", mistakes)
    outs, problem = as_outputs(got, case)
    if problem:
        return fail(*problem)
    errors = [compare(o, w, case.floor) for o, w in zip(outs, case.want, strict=True)]
    worst = max(errors, key=lambda e: e[1])
    detail = f"max abs err {worst[0]:.3g}, rel {worst[1]:.3g}"
    ok_each = [rel <= case.tol for _, rel in errors]
    if all(ok_each):
        return CaseResult(case.label, True, f"{detail} <= tol {case.tol:g}", (), case.tags)
    if len(outs) > 1:
        detail += " (" + ", ".join(f"{n} {'ok' if ok else f'rel {e[1]:.2g}'}"
                                   for n, ok, e in zip(case.out_names, ok_each, errors, strict=True)) + ")"
    return fail(f"{detail} > tol {case.tol:g}", diagnose_outputs(case, outs, ok_each))


def changed_inputs(case: Case, args) -> list[str]:
    """Names of the array arguments fn modified (beyond a few ulps: a restored x + ε − ε may round)."""
    changed = []
    for name, before, after in zip(case.arg_names, case.args, args, strict=True):
        if isinstance(before, np.ndarray) and before.dtype.kind == "f":
            ulps = 8 * np.finfo(before.dtype).eps * max(float(np.max(np.abs(before), initial=0.0)), 1e-30)
            if after.shape != before.shape or float(np.max(np.abs(after - before), initial=0.0)) > ulps:
                changed.append(name)
    return changed


def as_outputs(got, case: Case):
    """(outputs as a tuple of float64 arrays, None) or (None, (detail, mistakes)) when the structure is wrong."""
    n = len(case.want)
    if n > 1:
        if not isinstance(got, (tuple, list)):
            return None, (f"returned {type(got).__name__}, expected a tuple ({', '.join(case.out_names)})",)
        if len(got) != n:
            return None, (f"returned {len(got)} values, expected {n} ({', '.join(case.out_names)})",
                          extra_outputs(got, case))
    else:
        if isinstance(got, (tuple, list)) and not isinstance(case.want[0], (tuple, list)):
            return None, (f"returned a {type(got).__name__} of {len(got)}, expected one {case.out_names[0]}",)
        got = (got,)
    outs = []
    for name, value in zip(case.out_names, got, strict=True):
        try:
            raw = np.asarray(value)
            if raw.dtype.kind not in "biuf":
                raise TypeError(f"it holds {raw.dtype} values")
        except Exception as err:
            return None, (f"{name}: could not read {type(value).__name__} as a numeric NumPy array ({err})",)
        value = raw.astype(np.float64)
        if not np.all(np.isfinite(value)):
            return None, (f"{name} holds NaN or inf",)
        outs.append(value)
    shape_problem = check_shapes(outs, case)
    return (None, shape_problem) if shape_problem else (tuple(outs), None)


def extra_outputs(got, case: Case):
    """A W-shaped array among too many outputs is a gradient for the frozen W."""
    shapes = [np.shape(a) for n, a in zip(case.arg_names, case.args, strict=True) if n == "W"]
    return ["frozen_w_grad"] if shapes and any(np.shape(v) == shapes[0] for v in got) else []


def check_shapes(outs, case: Case):
    """None, or (detail, mistakes) naming a transposed output or outputs in the wrong order."""
    bad = [i for i, (o, w) in enumerate(zip(outs, case.want, strict=True)) if o.shape != np.shape(w)]
    if not bad:
        return None
    details, mistakes = [], []
    for i in bad:
        o, w, name = outs[i], case.want[i], case.out_names[i]
        details.append(f"{name} has shape {o.shape}, expected {np.shape(w)}")
        if o.ndim == 2 and o.T.shape == np.shape(w) and close(o.T, w, case.tol):
            mistakes.append((name, "output_transposed"))
        elif any(j != i and o.shape == np.shape(v) and close(o, v, case.tol) for j, v in enumerate(case.want)):
            mistakes.append((name, "outputs_order"))
    return "; ".join(details), mistakes


def diagnose_outputs(case: Case, outs, ok_each) -> list:
    """The mistake each wrong output matches, as keys (one output) or (name, key) pairs (several)."""
    try:
        variants = list(case.variants()) if case.variants is not None else []
    except Exception:  # a diagnosis that cannot be computed is no diagnosis, never a traceback
        variants = []
    found = []
    for i, ok in enumerate(ok_each):
        if ok:
            continue
        w = case.want[i]
        if np.ndim(w) == 2 and np.shape(w)[0] == np.shape(w)[1] and close(outs[i].T, w, case.tol):
            key = "output_transposed"  # square, so the shape could not tell
        else:
            key = identify(outs[i], w, [(k, None if v is None else _nth(v, i)) for k, v in variants], case.tol,
                           case.floor)
        if key:
            found.append(key if len(outs) == 1 else (case.out_names[i], key))
    return found


def _nth(v, i):
    """Output i of a variant's value: a tuple of outputs, or (for one output) the array itself."""
    return v[i] if isinstance(v, tuple) else v


def check_result(label: str, ok: bool, detail: str, mistakes=(), tags=frozenset()) -> CaseResult:
    """A CaseResult for a check that is not one input→output case (a property, a round trip)."""
    return CaseResult(label, ok, detail, tuple(mistakes), frozenset(tags))
