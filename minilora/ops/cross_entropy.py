"""Softmax cross-entropy of next-token logits, averaged over the positions that count."""

from autograd.extend import defvjp_argnums, primitive

from ..backend import array_module


def _log_softmax(logits):
    xp = array_module(logits)
    z = logits - logits.max(axis=-1, keepdims=True)  # (..., V)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))  # (..., V)


def _weights(targets_shape, weights, dtype, xp):
    w = xp.ones(targets_shape, dtype=dtype) if weights is None else weights.astype(dtype, copy=False)
    total = w.sum()
    if not total > 0:
        raise ValueError("cross_entropy: 'weights' must have a positive sum (no position counts otherwise)")
    return w / total  # (B, T): each position's share of the mean


@primitive
def cross_entropy(logits, targets, weights=None):
    """Mean of -log p(target) over positions, weighted.

    logits (B, T, V); targets (B, T) integer token ids, or (B, T, V) probabilities (soft targets, as in
    distillation; each row must sum to 1, which the gradient softmax - targets assumes); weights (B, T) or
    None (every position counts). Returns a scalar of logits' dtype.
    """
    xp = array_module(logits)
    logp = _log_softmax(logits)  # (B, T, V)
    w = _weights(logits.shape[:-1], weights, logits.dtype, xp)  # (B, T)
    if targets.ndim == logits.ndim:  # soft targets: -Σ_v p_v log q_v
        nll = -(targets * logp).sum(axis=-1)  # (B, T)
    else:
        nll = -xp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    return (w * nll).sum()  # 0-d


def _cross_entropy_vjp(argnums, loss, args, kwargs):
    logits, targets = args[0], args[1]
    weights = args[2] if len(args) > 2 else kwargs.get("weights")
    if argnums != (0,):
        raise NotImplementedError("cross_entropy is differentiable in the logits only")
    xp = array_module(logits)

    def vjp(g):  # g: 0-d
        w = _weights(logits.shape[:-1], weights, logits.dtype, xp)  # (B, T)
        grad = xp.exp(_log_softmax(logits))  # (B, T, V): softmax
        if targets.ndim == logits.ndim:
            grad -= targets
        else:
            V = logits.shape[-1]
            flat = grad.reshape(-1, V)  # (B·T, V) view
            flat[xp.arange(flat.shape[0]), targets.reshape(-1)] -= 1.0
        grad *= (g * w)[..., None]  # (B, T, V)
        return (grad,)

    return vjp


defvjp_argnums(cross_entropy, _cross_entropy_vjp)
