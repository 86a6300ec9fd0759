"""Per-row adapters in one batch: row b of the batch runs with adapter ``which[b]`` (or the base model for -1).

The paper's "Limitations" note: merging removes LoRA's latency but fixes one adapter per forward pass; serving
many adapters at once needs them kept apart from W. Every matrix then computes, row by row,

    h_b = W x_b + b + s_k B_k A_k x_b,   k = which[b]   (no LoRA term where k = -1 or adapter k skips the matrix)

Four ways to compute the same thing, chosen with ``impl`` (the serving strategies that benchmarks/serving_lab.py
times against each other):

- "loop": for each distinct adapter present, select its rows, apply its low-rank path, add it back
  (PEFT's mixed-batch forward: one pair of small GEMMs per adapter and matrix).
- "gather": the A's and B's of all adapters are stacked once, zero-padded to the largest rank
  (A (K+1, R, d_in), B (K+1, d_out, R), slot K all zero for the base), each row gathers its own A and B and
  all rows are multiplied together (Punica / S-LoRA's BGMV). Zero padding changes nothing: the padded
  columns of x Aᵀ are exact zeros and multiply the zero columns of B.
- "sgmv": the rows are sorted by adapter once, before the first layer (the rows of a transformer never mix), so
  each adapter's rows form one contiguous segment; every matrix then applies each segment's own unpadded A and B
  to a slice of x, with no gather or scatter (Punica's SGMV, a segmented GEMM); the logits are unsorted at the end.
- "merged": one merged weight copy per adapter (W + s·B A, ``lora.merge``), built once with ``merge_adapters``;
  the batch is split by adapter and each group runs through the plain transformer on its own copy (the base
  rows on the base). No LoRA term at all, at the price of K copies of every adapted matrix.

All four equal running each row alone with its own adapter (``forward(params, tokens[b:b+1], config, lora_k,
lora_config_k)``). This is the serving path: no dropout, not differentiated. Adapters may differ in rank,
targets, layers and scale (α/r or α/√r); each must fit the base and have its dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import array_module, to_device, to_numpy
from .config import GPTConfig
from .lora import LoraConfig, merge
from .model import BLOCK_MATRICES, Hooks, transformer
from .ops import linear, lora_delta
from .tree import plain

IMPLS = ("loop", "gather", "sgmv", "merged")


@dataclass(frozen=True)
class CheckedAdapters:
    """Adapters checked once against a base, for impl="loop" or "sgmv" (build with ``prepare_adapters``):
    forward_mixed then skips re-checking every adapter of a large pool on every batch."""

    pairs: tuple  # ((lora, lora_config), ...)
    n_adapters: int
    shapes: dict  # {(block, matrix): (d_out, d_in)} of the base the adapters were checked against


@dataclass(frozen=True)
class StackedAdapters:
    """Adapters stacked for the gather implementation (build once with ``stack_adapters``, reuse per batch).

    stacks: {(block, matrix): (A (K+1, R, d_in), B (K+1, d_out, R), s (K+1,))} for every matrix some adapter
    adapts; slot k is adapter k zero-padded to rank R, slot K (and any adapter skipping the matrix) is zero.
    """

    stacks: dict
    n_adapters: int
    shapes: dict  # {(block, matrix): (d_out, d_in)} of the base the adapters were checked against


@dataclass(frozen=True)
class MergedAdapters:
    """One merged parameter tree per adapter for the merged implementation (build once with ``merge_adapters``).

    trees: (K,) parameter trees, tree k = the base with s_k·B_k A_k folded into every matrix adapter k adapts
    (untouched leaves are shared with the base, not copied). They hold the base they were merged into: use them
    with that base only (the base rows, which = -1, run on the params passed to forward_mixed).
    """

    trees: tuple
    n_adapters: int
    shapes: dict  # {(block, matrix): (d_out, d_in)} of the base the adapters were merged into


def check_adapters(adapters, params) -> list:
    """The list of (lora, lora_config) pairs, each checked against the base (shapes, targets, dtype)."""
    from .validate import check_lora

    if not isinstance(adapters, (list, tuple)):
        raise TypeError(f"adapters must be a list of (lora, lora_config) pairs, got {type(adapters).__name__}")
    out = []
    for k, pair in enumerate(adapters):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[1], LoraConfig):
            raise TypeError(f"adapters[{k}] must be a (lora, lora_config) pair with a LoraConfig, "
                            f"got {type(pair).__name__}")
        try:
            check_lora(plain(pair[0]), pair[1], plain(params))
        except (TypeError, ValueError) as err:
            raise type(err)(f"adapters[{k}]: {err}") from None
        out.append((pair[0], pair[1]))
    return out


def check_which(which, n_rows: int, n_adapters: int) -> np.ndarray:
    """which as a (B,) int64 NumPy array with -1 <= which[b] < n_adapters."""
    if isinstance(which, (list, tuple)):
        which = np.asarray(which)
    if not hasattr(which, "dtype") or not hasattr(which, "shape"):
        raise TypeError(f"which must be a (B,) integer array (one adapter index per row), got {type(which).__name__}")
    if which.dtype.kind not in "iu":
        raise TypeError(f"which must have an integer dtype (adapter indices, -1 for the base), got {which.dtype}")
    if tuple(which.shape) != (n_rows,):
        raise ValueError(f"which must have shape ({n_rows},), one entry per row of tokens, got {tuple(which.shape)}")
    which = to_numpy(which).astype(np.int64)
    bad = np.flatnonzero((which < -1) | (which >= n_adapters))
    if bad.size:
        raise ValueError(f"which[{bad[0]}] = {which[bad[0]]}: must be -1 (the base model) or an index into the "
                         f"{n_adapters} adapter(s)")
    return which


def _base_shapes(params) -> dict:
    return {(i, t): tuple(block[t]["W"].shape) for i, block in enumerate(plain(params)["blocks"])
            for t in BLOCK_MATRICES}


def stack_adapters(adapters, params) -> StackedAdapters:
    """Stack checked adapters per matrix, zero-padded to the largest rank, for ``impl="gather"``."""
    adapters = check_adapters(adapters, params)
    shapes = _base_shapes(params)
    dtype = plain(params)["blocks"][0]["wq"]["W"].dtype
    K, stacks = len(adapters), {}
    for (i, t), (d_out, d_in) in shapes.items():
        present = [(k, lora["blocks"][i][t], lc.scale) for k, (lora, lc) in enumerate(adapters)
                   if t in lora["blocks"][i]]
        if not present:
            continue
        R = max(ab["A"].shape[0] for _, ab, _ in present)
        xp = array_module(present[0][1]["A"])
        A = xp.zeros((K + 1, R, d_in), dtype=dtype)  # (K+1, R, d_in)
        B = xp.zeros((K + 1, d_out, R), dtype=dtype)  # (K+1, d_out, R)
        s = xp.zeros(K + 1, dtype=dtype)  # (K+1,)
        for k, ab, scale in present:
            r = ab["A"].shape[0]
            A[k, :r], B[k, :, :r], s[k] = ab["A"], ab["B"], scale
        stacks[(i, t)] = (A, B, s)
    return StackedAdapters(stacks, K, shapes)


def merge_adapters(adapters, params) -> MergedAdapters:
    """One merged copy of the base per checked adapter (``lora.merge``), for ``impl="merged"``."""
    adapters = check_adapters(adapters, params)
    base = plain(params)
    trees = tuple(merge(base, plain(lora), lora_config) for lora, lora_config in adapters)
    return MergedAdapters(trees, len(trees), _base_shapes(params))


def loop_hooks(adapters: list, which: np.ndarray) -> Hooks:
    """PEFT's way: for each distinct adapter present, its rows get its low-rank term."""
    groups = [(int(k), np.flatnonzero(which == k)) for k in np.unique(which) if k >= 0]  # [(k, row indices)]

    def project(i, name, x, layer):
        h = linear(x, layer["W"], layer["b"])  # (B, T, d_out): the base path for every row
        xp = array_module(x)
        for k, rows in groups:
            rows = xp.asarray(rows)
            lora, lora_config = adapters[k]
            ab = lora["blocks"][i].get(name)
            if ab is not None:
                h[rows] += lora_delta(x[rows], ab["A"], ab["B"], lora_config.scale)  # (n_k, T, d_out)
        return h

    return Hooks(project=project)


def gather_hooks(stacked: StackedAdapters, which: np.ndarray) -> Hooks:
    """BGMV: each row gathers its adapter's (padded) A and B; one batched product for all rows."""
    slot = np.where(which < 0, stacked.n_adapters, which)  # (B,): -1 -> the all-zero slot K

    def project(i, name, x, layer):
        h = linear(x, layer["W"], layer["b"])  # (B, T, d_out)
        stack = stacked.stacks.get((i, name))
        if stack is None:
            return h
        A, B, s = stack
        at = array_module(x).asarray(slot)  # (B,) on the arrays' device
        u = (x @ A[at].transpose(0, 2, 1)) * s[at][:, None, None]  # (B, T, R): s_k · x A_kᵀ per row
        return h + u @ B[at].transpose(0, 2, 1)  # (B, T, d_out)

    return Hooks(project=project)


def sort_segments(which: np.ndarray) -> tuple[np.ndarray, list]:
    """(order, segments): ``which[order]`` is sorted by adapter (stable, base rows first) and segments lists
    (k, start, stop) for every adapter k >= 0 present, rows start:stop of the sorted batch."""
    order = np.argsort(which, kind="stable")  # (B,)
    ks = which[order]  # (B,) sorted adapter indices
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])  # first row of each run of one adapter
    stops = np.r_[starts[1:], len(ks)]
    return order, [(int(ks[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True) if ks[a] >= 0]


def sgmv_hooks(adapters: list, segments: list) -> Hooks:
    """SGMV on a batch already sorted by adapter: each segment's slice of x gets its adapter's low-rank term."""

    def project(i, name, x, layer):
        h = linear(x, layer["W"], layer["b"])  # (B, T, d_out): the base path for every row
        for k, start, stop in segments:
            lora, lora_config = adapters[k]
            ab = lora["blocks"][i].get(name)
            if ab is not None:  # slices are views: no gather of x, no scatter into h
                h[start:stop] += lora_delta(x[start:stop], ab["A"], ab["B"], lora_config.scale)  # (n_k, T, d_out)
        return h

    return Hooks(project=project)


def _run_sgmv(params, tokens, config, checked: CheckedAdapters, which):
    order, segments = sort_segments(which)
    tokens = tokens[array_module(tokens).asarray(order)]  # (B, T): rows sorted by adapter
    logits = transformer(params, tokens, config, sgmv_hooks(checked.pairs, segments))  # (B, T, V), sorted rows
    return logits[array_module(logits).asarray(np.argsort(order))]  # (B, T, V) in the caller's row order


def _run_merged(params, tokens, config, merged: MergedAdapters, which):
    out = None
    for k in np.unique(which):
        rows = np.flatnonzero(which == k)  # (n_k,)
        logits = transformer(params if k < 0 else merged.trees[k], tokens[array_module(tokens).asarray(rows)],
                             config)  # (n_k, T, V)
        xp = array_module(logits)
        if out is None:
            out = xp.empty((tokens.shape[0],) + logits.shape[1:], dtype=logits.dtype)  # (B, T, V)
        out[xp.asarray(rows)] = logits
    return out


def _run_loop(params, tokens, config, checked: CheckedAdapters, which):
    return transformer(params, tokens, config, loop_hooks(checked.pairs, which))


def _run_gather(params, tokens, config, stacked, which):
    return transformer(params, tokens, config, gather_hooks(stacked, which))


def check_adapters_once(adapters, params) -> CheckedAdapters:
    """The checked adapters, for impl="loop" or "sgmv" (see CheckedAdapters)."""
    pairs = tuple(check_adapters(adapters, params))
    return CheckedAdapters(pairs, len(pairs), _base_shapes(params))


_RUN = {"loop": _run_loop, "gather": _run_gather, "sgmv": _run_sgmv, "merged": _run_merged}
_KIND = {"loop": CheckedAdapters, "sgmv": CheckedAdapters, "gather": StackedAdapters, "merged": MergedAdapters}
_BUILD = {CheckedAdapters: check_adapters_once, StackedAdapters: stack_adapters, MergedAdapters: merge_adapters}


def prepare_adapters(adapters, params, impl: str):
    """What ``impl`` runs on, built once for many batches: a CheckedAdapters (loop, sgmv), StackedAdapters
    (gather) or MergedAdapters (merged). One already prepared is checked to fit ``impl`` and the base's shapes."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(adapters, tuple(_BUILD)):
        return _BUILD[_KIND[impl]](adapters, params)
    if not isinstance(adapters, _KIND[impl]):
        fits = " or ".join(repr(k) for k, cls in _KIND.items() if isinstance(adapters, cls))
        raise TypeError(f"a {type(adapters).__name__} works with impl={fits} only; pass the list of adapters "
                        f"for {impl!r}")
    if adapters.shapes != _base_shapes(params):
        raise ValueError(f"these {type(adapters).__name__} were built for a base with other matrix shapes")
    return adapters


def forward_mixed(params, tokens, config: GPTConfig, adapters, which, *, impl: str = "loop"):
    """Logits (B, T, V) where row b uses adapter ``which[b]`` of ``adapters`` (-1: the base model).

    adapters: a list of (lora, lora_config) pairs; or, prepared once for many batches with
    ``prepare_adapters(adapters, params, impl)``, the CheckedAdapters (loop, sgmv), StackedAdapters (gather,
    also from ``stack_adapters``) or MergedAdapters (merged, also from ``merge_adapters``) it returns.
    impl: "loop", "gather", "sgmv" or "merged" (see the module's docstring); all four give the same logits.
    """
    from .validate import check_params, check_tokens

    check_params(plain(params), config)
    tokens = to_device(check_tokens(tokens, config), like=plain(params)["wte"])  # on the weights' device, as forward
    prepared = prepare_adapters(adapters, params, impl)
    which = check_which(which, tokens.shape[0], prepared.n_adapters)
    return _RUN[impl](params, tokens, config, prepared, which)
