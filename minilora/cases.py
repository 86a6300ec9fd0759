"""The deterministic LoRA-layer cases that the golden files, ``minilora.verify`` and the exercises share.

Each case is one shape (leading dims of x, d_in, d_out, r, α, the scale rule) in one dtype. Its inputs are
drawn in float64 from ``np.random.default_rng([SEED, index])`` and rounded to the dtype, so the float32 and
float64 versions of a case hold the same numbers up to rounding, and a rerun draws exactly the same arrays.
Nobody is asked to reproduce a random stream: a checked function receives these arrays as arguments.

Why the tolerances are what they are. A case passes when max|got − want| ≤ tol · max|want| for every output,
``want`` being computed in float64 from the case's own (already rounded) inputs. One output entry is a sum of
d_in + r + 1 ≤ 10 products; in float32 (unit roundoff u = 2⁻²⁴ ≈ 6e-8) each partial sum adds at most u of
relative error, so a correct float32 implementation is off by about 10·u·(Σ|terms| / max|h|), a few times 1e-7
in practice (the tests measure the largest: below 1e-6 for every case). 1e-5 leaves a margin of 10 over that
and still lies four orders of magnitude below the smallest effect of a real mistake (a scale off by √2 moves h
by about 0.1 of its size). float64 (u ≈ 1.1e-16) gets 1e-12 for the same reasons.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

SEED = 20220125  # the LoRA paper's ICLR 2022 camera-ready month; any fixed number would do
DTYPES = ("float32", "float64")
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
RULES = ("alpha/r", "alpha/sqrt(r)")


@dataclass(frozen=True)
class LinearShape:
    lead: tuple[int, ...]
    """Leading dims of x: x is (*lead, d_in). (1,) is a batch of one; (2, 3) has two batch dims."""
    d_in: int
    d_out: int
    r: int
    alpha: float
    rule: str = "alpha/r"
    """"alpha/r" (LoRA, the paper) or "alpha/sqrt(r)" (rsLoRA)."""

    @property
    def scale(self) -> float:
        return self.alpha / (self.r if self.rule == "alpha/r" else math.sqrt(self.r))

    @property
    def tags(self) -> frozenset:
        """Which edge cases this shape is: used to say "every failure has a batch of one" and the like."""
        tags = {self.rule}
        if len(self.lead) > 1:
            tags.add("batch_dims")
        if self.lead == (1,):
            tags.add("batch_one")
        if self.r == 1:
            tags.add("r1")
        if self.r == min(self.d_in, self.d_out):
            tags.add("full_rank")
        if self.d_in == self.d_out:
            tags.add("square")
        return frozenset(tags)


# α is never r or 1 (s would be 1 and "scale forgotten" would be invisible), and the square shapes make a
# transposed W or swapped A, B computable, so those mistakes can be named rather than only crash.
LINEAR_SHAPES = (
    LinearShape((4,), 6, 5, 2, 3.0),
    LinearShape((4,), 6, 5, 2, 3.0, "alpha/sqrt(r)"),
    LinearShape((1,), 6, 5, 2, 3.0),                       # a batch of one
    LinearShape((2, 3), 6, 5, 3, 4.5),                     # two leading batch dims
    LinearShape((5,), 7, 4, 1, 2.5),                       # r = 1
    LinearShape((5,), 4, 7, 4, 6.0),                       # r = min(d_in, d_out) = d_in
    LinearShape((5,), 7, 4, 4, 6.0, "alpha/sqrt(r)"),      # r = min(d_in, d_out) = d_out, rsLoRA
    LinearShape((3,), 6, 6, 3, 4.5),                       # square
    LinearShape((2, 2), 5, 5, 5, 7.5, "alpha/sqrt(r)"),    # square, full rank, batch dims, rsLoRA
)


@dataclass(frozen=True)
class LinearCase:
    index: int
    dtype: str
    shape: LinearShape
    x: np.ndarray
    W: np.ndarray
    b: np.ndarray
    A: np.ndarray
    B: np.ndarray
    g: np.ndarray

    @property
    def scale(self) -> float:
        return self.shape.scale

    @property
    def tol(self) -> float:
        return TOLERANCE[self.dtype]

    @property
    def name(self) -> str:
        return f"{self.index:02d}_{self.dtype}"

    @property
    def tags(self) -> frozenset:
        return self.shape.tags | {self.dtype}

    @property
    def label(self) -> str:
        s = self.shape
        return (f"{self.dtype} x{tuple(self.x.shape)} W{tuple(self.W.shape)} r={s.r} α={s.alpha:g} "
                f"s={s.rule.replace('alpha', 'α').replace('sqrt(r)', '√r')}={s.scale:.4g}")


def linear_case(index: int, dtype: str, rule: str | None = None) -> LinearCase:
    """Case ``index`` of LINEAR_SHAPES in ``dtype`` (with the scale rule ``rule`` instead of the shape's own, when
    given). B is random (not zero) so that every gradient is non-zero and every term of h matters; the adapter's
    term is about as large as the frozen one."""
    shape = LINEAR_SHAPES[index] if rule is None else dataclasses.replace(LINEAR_SHAPES[index], rule=rule)
    rng = np.random.default_rng([SEED, index])
    d_in, d_out, r = shape.d_in, shape.d_out, shape.r
    draws = {
        "x": rng.standard_normal((*shape.lead, d_in)),
        "W": rng.standard_normal((d_out, d_in)) / math.sqrt(d_in),
        "b": 0.5 * rng.standard_normal(d_out),
        "A": rng.standard_normal((r, d_in)) / math.sqrt(d_in),
        "B": rng.standard_normal((d_out, r)) / (shape.scale * math.sqrt(r)),
        "g": rng.standard_normal((*shape.lead, d_out)),
    }
    return LinearCase(index, dtype, shape, **{k: v.astype(dtype) for k, v in draws.items()})


def linear_cases(dtypes=DTYPES, rule: str | None = None) -> list[LinearCase]:
    """Every shape in every dtype, in a fixed order; ``rule`` forces one scale rule on every shape."""
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"dtypes must be a subset of {DTYPES}, got {dtype!r}")
    if rule is not None and rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return [linear_case(i, dtype, rule) for i in range(len(LINEAR_SHAPES)) for dtype in dtypes]


def dropout_mask(rng, shape, p: float, dtype) -> np.ndarray:
    """An explicit dropout mask: 0 with probability p, else 1/(1 − p) (inverted dropout), in ``dtype``."""
    keep = rng.random(shape) >= p
    return (keep / (1.0 - p)).astype(dtype)
