"""Causal multi-head self-attention core, as the two equations it is made of, one primitive each:

    P = softmax(Q Kᵀ / √d_h + M)      attention_probs(q, k, n_head)   M: the causal mask (-inf above the diagonal)
    O = P V                           attend(p, v)

P is the output of the first primitive, so its VJP receives P itself (autograd hands a VJP maker its
primitive's output): the backward pass needs P and never recomputes it. ``causal_attention`` composes the two.
"""

import math

from autograd.extend import defvjp_argnums, primitive

from ..backend import array_module, rowwise
from ._rows import row_dot, row_sum, stacked_matmul

_MASKS = {}


def causal_mask(T, dtype, xp):
    """(T, T) additive mask: 0 where key j <= query i, -inf where j > i (a query never sees the future).

    Built once per (T, dtype, backend) and kept: a read-only constant, added by broadcasting.
    """
    key = (T, str(dtype), xp.__name__)
    if key not in _MASKS:
        mask = xp.triu(xp.full((T, T), -xp.inf, dtype=dtype), k=1)  # (T, T)
        if hasattr(mask, "flags") and hasattr(mask.flags, "writeable"):
            mask.flags.writeable = False  # shared by every call: nobody may change it
        _MASKS[key] = mask
    return _MASKS[key]


def _heads(t, n_head, keys_last=False, scale=1.0):
    """scale · t as a stack of heads: (B, T, d) -> (B·H, T, d_h), or (B·H, d_h, T) with keys_last. Always a new
    contiguous array (a reshape alone would be a view of t when B = 1), so that the pool can cut the stack into
    blocks whatever B is; a stacked product runs at half speed with a transposed view on its right (NumPy +
    OpenBLAS), hence keys_last for Kᵀ and Vᵀ."""
    xp = array_module(t)
    B, T, d = t.shape
    dh = d // n_head
    heads = t.reshape(B, T, n_head, dh).transpose(0, 2, 1, 3)  # (B, H, T, d_h) view
    if keys_last:
        heads = heads.transpose(0, 1, 3, 2)  # (B, H, d_h, T) view
    out = xp.empty(heads.shape, dtype=t.dtype)
    xp.multiply(heads, scale, out=out)  # the copy (and the scale) in one pass
    return out.reshape(B * n_head, *heads.shape[2:])  # (B·H, T, d_h) or (B·H, d_h, T)


def _merge_heads(t, B):
    """(B·H, T, d_h) -> (B, T, d): the inverse of _heads (a view of t when H = 1)."""
    BH, T, dh = t.shape
    return t.reshape(B, BH // B, T, dh).transpose(0, 2, 1, 3).reshape(B, T, BH // B * dh)  # (B, T, d)


def _probs_rows(qh, kh_t, mask, out):
    """out = softmax(qh kh_t + M) per matrix of the stack: qh = Q/√d_h (n, T, d_h), kh_t = Kᵀ (n, d_h, T)."""
    xp = array_module(qh)
    xp.matmul(qh, kh_t, out=out)  # (n, T, T) scores
    out += mask
    out -= out.max(axis=-1, keepdims=True)  # the diagonal is always finite, so every row has a finite max
    xp.exp(out, out=out)
    out *= 1.0 / row_sum(out)


@primitive
def attention_probs(q, k, n_head):
    """P = softmax(Q Kᵀ/√d_h + M) per head. q, k (B, T, d) -> P (B, H, T, T)."""
    xp = array_module(q)
    B, T, d = q.shape
    qh = _heads(q, n_head, scale=1.0 / math.sqrt(d // n_head))  # (B·H, T, d_h), scaled by 1/√d_h
    kh_t = _heads(k, n_head, keys_last=True)  # (B·H, d_h, T)
    p = xp.empty((B * n_head, T, T), dtype=q.dtype)  # (B·H, T, T)
    rowwise(_probs_rows, qh, kh_t, causal_mask(T, p.dtype, xp), out=p)
    return p.reshape(B, n_head, T, T)  # (B, H, T, T)


def _softmax_grad_rows(p, g, out):
    """out = P ⊙ (dP - rowsum(dP ⊙ P)): the softmax Jacobian applied row by row; masked entries have P = 0."""
    array_module(p).subtract(g, row_dot(g, p), out=out)
    out *= p


def _attention_probs_vjp(argnums, p, args, kwargs):
    q, k, n_head = args
    c = 1.0 / math.sqrt(q.shape[-1] // n_head)
    if any(i not in (0, 1) for i in argnums):
        raise NotImplementedError("attention_probs is not differentiable in n_head")

    def vjp(g):  # g = dL/dP (B, H, T, T)
        B, H, T, _ = p.shape
        p3, g3 = p.reshape(B * H, T, T), g.reshape(B * H, T, T)  # (B·H, T, T)
        gs = rowwise(_softmax_grad_rows, p3, g3, out=array_module(p).empty_like(p3))  # dS (B·H, T, T)
        grads = []
        for i in argnums:
            if i == 0:  # dQ = c · dS K
                dh = stacked_matmul(gs, _heads(k, n_head))  # (B·H, T, d_h)
            else:  # dK = c · dSᵀ Q
                dh = stacked_matmul(gs.transpose(0, 2, 1), _heads(q, n_head))  # (B·H, T, d_h)
            grad = _merge_heads(dh, B)  # (B, T, d)
            grad *= c  # in place on dh's memory (our own) or a copy of it
            grads.append(grad)
        return tuple(grads)

    return vjp


defvjp_argnums(attention_probs, _attention_probs_vjp)


@primitive
def attend(p, v):
    """O = P V per head, heads merged back. p (B, H, T, T), v (B, T, d) -> (B, T, d)."""
    B, H, T, _ = p.shape
    return _merge_heads(stacked_matmul(p.reshape(B * H, T, T), _heads(v, H)), B)  # (B·H, T, d_h) -> (B, T, d)


def _attend_vjp(argnums, out, args, kwargs):
    p, v = args

    def vjp(g):  # g (B, T, d)
        B, H, T, _ = p.shape
        gh, p3 = _heads(g, H), p.reshape(B * H, T, T)  # (B·H, T, d_h), (B·H, T, T)
        grads = []
        for i in argnums:
            if i == 0:  # dP = dO Vᵀ
                grads.append(stacked_matmul(gh, _heads(v, H, keys_last=True)).reshape(p.shape))  # (B, H, T, T)
            else:  # dV = Pᵀ dO
                grads.append(_merge_heads(stacked_matmul(p3.transpose(0, 2, 1), gh), B))  # (B, T, d)
        return tuple(grads)

    return vjp


defvjp_argnums(attend, _attend_vjp)


def causal_attention(q, k, v, n_head):
    """softmax(Q Kᵀ/√d_h + M) V over heads. q, k, v (B, T, d) with d = n_head · d_h -> (B, T, d)."""
    return attend(attention_probs(q, k, n_head), v)  # (B, H, T, T) -> (B, T, d)
