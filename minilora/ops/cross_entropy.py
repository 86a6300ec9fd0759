"""Softmax cross-entropy of next-token logits, averaged over the positions that count.

Per position (a row of V logits z, shifted by its maximum m so that exp cannot overflow):

    -log softmax(z)[y] = log Σ_v exp(z_v - m) - (z_y - m)

The forward computes this row by row without forming log-softmax; the VJP forms softmax(z) - onehot(y) row
by row. Both are row kernels that backend.rowwise can run on several cores.
"""

from autograd.extend import defvjp_argnums, primitive

from ..backend import array_module, rowwise
from ._rows import row_dot, row_sum


def _weights(targets_shape, weights, dtype, xp):
    w = xp.ones(targets_shape, dtype=dtype) if weights is None else weights.astype(dtype, copy=False)
    total = w.sum()
    if not total > 0:
        raise ValueError("cross_entropy: 'weights' must have a positive sum (no position counts otherwise)")
    return w / total  # (B, T): each position's share of the mean


def _nll_rows(z, y, out):
    """out = -log softmax(z)[y] per row. z (n, V), y (n,) ints, out (n,)."""
    xp = array_module(z)
    zs = z - z.max(axis=-1, keepdims=True)  # (n, V): z - m
    zy = xp.take_along_axis(zs, y[:, None], axis=-1)[:, 0]  # (n,): z_y - m
    xp.exp(zs, out=zs)
    xp.log(row_sum(zs)[:, 0], out=out)
    out -= zy


def _nll_soft_rows(z, p, out):
    """out = -Σ_v p_v log softmax(z)_v = Σ_v p_v · log Σ_v exp(z_v - m) - Σ_v p_v (z_v - m) per row."""
    xp = array_module(z)
    zs = z - z.max(axis=-1, keepdims=True)  # (n, V): z - m
    pz = row_dot(p, zs)[:, 0]  # (n,)
    xp.exp(zs, out=zs)
    xp.multiply(xp.log(row_sum(zs)[:, 0]), row_sum(p)[:, 0], out=out)
    out -= pz


@primitive
def cross_entropy(logits, targets, weights=None):
    """Mean of -log p(target) over positions, weighted.

    logits (B, T, V); targets (B, T) integer token ids, or (B, T, V) probabilities (soft targets, as in
    distillation; each row must sum to 1, which the gradient softmax - targets assumes); weights (B, T) or
    None (every position counts). Returns a scalar of logits' dtype.
    """
    xp = array_module(logits)
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V): one row per position
    w = _weights(logits.shape[:-1], weights, logits.dtype, xp).reshape(-1)  # (N,)
    nll = xp.empty(z.shape[0], dtype=logits.dtype)  # (N,)
    if targets.ndim == logits.ndim:  # soft targets: -Σ_v p_v log q_v
        rowwise(_nll_soft_rows, z, targets.reshape(-1, V), out=nll)
    else:
        rowwise(_nll_rows, z, targets.reshape(-1), out=nll)
    return (w * nll).sum()  # 0-d


def _grad_rows(z, coef, p, out):
    """out = coef · (softmax(z) - p) per row, or coef · softmax(z) when p is None (the one-hot comes after).
    z (n, V), coef (n, 1), p (n, V) or None."""
    xp = array_module(z)
    xp.subtract(z, z.max(axis=-1, keepdims=True), out=out)
    xp.exp(out, out=out)
    out *= coef / row_sum(out)  # (n, V) · (n, 1): the softmax, already scaled
    if p is not None:
        out -= p * coef


def _cross_entropy_vjp(argnums, loss, args, kwargs):
    logits, targets = args[0], args[1]
    weights = args[2] if len(args) > 2 else kwargs.get("weights")
    if argnums != (0,):
        raise NotImplementedError("cross_entropy is differentiable in the logits only")
    xp = array_module(logits)

    def vjp(g):  # g: 0-d
        V = logits.shape[-1]
        z = logits.reshape(-1, V)  # (N, V)
        coef = (g * _weights(logits.shape[:-1], weights, logits.dtype, xp)).reshape(-1, 1)  # (N, 1): g w̃
        grad = xp.empty_like(z)  # (N, V)
        if targets.ndim == logits.ndim:  # dz = g w̃ (softmax(z) - p)
            rowwise(_grad_rows, z, coef, targets.reshape(-1, V), out=grad)
        else:  # dz = g w̃ (softmax(z) - onehot(y))
            rowwise(_grad_rows, z, coef, None, out=grad)
            grad[xp.arange(z.shape[0]), targets.reshape(-1)] -= coef[:, 0]
        return (grad.reshape(logits.shape),)  # (B, T, V)

    return vjp


defvjp_argnums(cross_entropy, _cross_entropy_vjp)
