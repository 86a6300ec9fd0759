"""Where prefix tuning's virtual tokens sit in the sequence (PreEmbed and PreLayer share this layout).

The sequence the transformer runs is [l_p prefix positions][prompt][l_i infix positions][answer], T' = T +
l_p + l_i (Section 5.1: "prefixing" prepends to the prompt, "infixing" appends to it). The task decides where
the prompt ends: for a prompt → answer batch (tasks.Batch with weights w marking the positions that predict
the answer, as DocModuleTask's), the prompt ends at each row's first weighted position a (the token that
predicts the answer's first byte); the infix follows that token, and the answer's first byte is then predicted
from the last infix position. Plain language-model data (w = None) has no prompt/answer boundary: use the
prefix only (l_i = 0); an infix there is refused.

Real tokens take the positions (wpe) they have in the lengthened sequence; the output keeps one position per
real token, so logits are (B, T, V) and line up with the batch's targets.
"""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np

from ..backend import to_device, to_host
from ..config import whole_number
from ..tree import plain


def check_lengths(name: str, options) -> tuple[int, int]:
    l_p = whole_number(name, "l_p", options["l_p"])
    l_i = whole_number(name, "l_i", options["l_i"])
    if l_p + l_i == 0:
        raise ValueError(f"{name}: l_p + l_i must be at least 1 (no virtual tokens would be trained)")
    return l_p, l_i


def answer_starts(name: str, batch, l_i: int) -> np.ndarray | None:
    """Each row's first weighted position (B,), or None when there is no infix."""
    if l_i == 0:
        return None
    if batch.w is None:
        raise ValueError(f"{name}: l_i={l_i} infix tokens need a prompt → answer batch (weights w marking the "
                         "answer positions); plain language-model data has no prompt to append to: use l_i=0")
    w = to_host(batch.w) > 0  # (B, T)
    return np.where(w.any(axis=1), w.argmax(axis=1), w.shape[1] - 1)  # (B,)


def layout(name: str, batch, l_p: int, l_i: int, context: int):
    """(src (B, T'), out (B, T)) index arrays.

    src: column j of the lengthened sequence is column src[b, j] of [real (B, T) | virtual (l_p + l_i)], the
    virtual ones numbered T, T+1, ... (prefix first, then infix). out: real position t is read at column
    out[b, t] = l_p + t (+ l_i once t >= a, so t = a reads the last infix position)."""
    B, T = batch.x.shape
    if T + l_p + l_i > context:
        raise ValueError(f"{name}: {T} tokens + l_p={l_p} + l_i={l_i} virtual tokens exceed the context {context}; "
                         f"shorten the batch to at most {context - l_p - l_i} tokens")
    starts = answer_starts(name, batch, l_i)
    src = np.empty((B, T + l_p + l_i), np.int64)
    out = np.empty((B, T), np.int64)
    for b in range(B):
        a = T - 1 if starts is None else int(starts[b])  # the infix follows token a (none when l_i = 0)
        prefix, infix = T + np.arange(l_p), T + l_p + np.arange(l_i)
        src[b] = np.concatenate([prefix, np.arange(a + 1), infix, np.arange(a + 1, T)])
        t = np.arange(T)
        out[b] = l_p + t + np.where(t >= a, l_i, 0)
    return src, out


def place(x, virtual, src):
    """Columns of [x | virtual] picked by src. x (B, n, d), virtual (l, d), src (B, T') -> (B, T', d)."""
    B = x.shape[0]
    both = anp.concatenate([x, anp.broadcast_to(virtual[None], (B,) + virtual.shape)], axis=1)  # (B, n + l, d)
    return both[_on_device_of(x, np.arange(B)[:, None]), _on_device_of(x, src)]  # (B, T', d)


def replacing(src, T: int):
    """The src that keeps every real column of a lengthened x (B, T', d) and replaces the virtual ones."""
    Tp = src.shape[1]
    return np.where(src >= T, Tp + (src - T), np.arange(Tp))  # (B, T')


def real_positions(x, out):
    """The real tokens' columns. x (B, T', d), out (B, T) -> (B, T, d)."""
    return x[_on_device_of(x, np.arange(x.shape[0])[:, None]), _on_device_of(x, out)]  # (B, T, d)


def _on_device_of(x, index: np.ndarray):
    """A host index array moved to the device of x (which may be traced)."""
    return to_device(index, like=plain(x))


def seeded_tokens(seed, n: int, vocab_size: int) -> np.ndarray:
    """n token ids drawn from ``seed``: the real tokens whose embeddings/activations start the virtual ones."""
    return np.random.default_rng(whole_number("", "seed", seed)).integers(0, vocab_size, size=(1, n))  # (1, n)
