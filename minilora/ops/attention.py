"""Causal multi-head self-attention core, as the two equations it is made of, one primitive each:

    P = softmax(Q Kᵀ / √d_h + M)      attention_probs(q, k, n_head)   M: the causal mask (-inf above the diagonal)
    O = P V                           attend(p, v)

P is the output of the first primitive, so its VJP receives P itself (autograd hands a VJP maker its
primitive's output): the backward pass needs P and never recomputes it. ``causal_attention`` composes the two.
"""

import math

from autograd.extend import defvjp_argnums, primitive

from ..backend import array_module


def _split_heads(t, n_head):
    B, T, d = t.shape
    return t.reshape(B, T, n_head, d // n_head).transpose(0, 2, 1, 3)  # (B, H, T, d_h)


def _merge_heads(t):
    B, H, T, dh = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, T, H * dh)  # (B, T, d)


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


@primitive
def attention_probs(q, k, n_head):
    """P = softmax(Q Kᵀ/√d_h + M) per head. q, k (B, T, d) -> P (B, H, T, T)."""
    xp = array_module(q)
    qh, kh = _split_heads(q, n_head), _split_heads(k, n_head)  # (B, H, T, d_h) each
    T, dh = qh.shape[-2:]
    s = (qh * (1.0 / math.sqrt(dh))) @ kh.transpose(0, 1, 3, 2)  # (B, H, T, T) scores
    s += causal_mask(T, s.dtype, xp)  # (B, H, T, T)
    s -= s.max(axis=-1, keepdims=True)  # the diagonal is always finite, so every row has a finite max
    p = xp.exp(s, out=s)
    p /= p.sum(axis=-1, keepdims=True)
    return p  # (B, H, T, T)


def _attention_probs_vjp(argnums, p, args, kwargs):
    q, k, n_head = args
    c = 1.0 / math.sqrt(q.shape[-1] // n_head)

    def vjp(g):  # g = dL/dP (B, H, T, T)
        # dS = P ⊙ (dP - rowsum(dP ⊙ P)): the softmax Jacobian applied row by row; masked entries have P = 0
        gs = p * (g - (g * p).sum(axis=-1, keepdims=True))  # (B, H, T, T)
        grads = []
        for i in argnums:
            if i == 0:  # dQ = c · dS K
                grads.append(_merge_heads((gs @ _split_heads(k, n_head)) * c))  # (B, T, d)
            elif i == 1:  # dK = c · dSᵀ Q
                grads.append(_merge_heads((gs.transpose(0, 1, 3, 2) @ _split_heads(q, n_head)) * c))  # (B, T, d)
            else:
                raise NotImplementedError("attention_probs is not differentiable in n_head")
        return tuple(grads)

    return vjp


defvjp_argnums(attention_probs, _attention_probs_vjp)


@primitive
def attend(p, v):
    """O = P V per head, heads merged back. p (B, H, T, T), v (B, T, d) -> (B, T, d)."""
    return _merge_heads(p @ _split_heads(v, p.shape[1]))  # (B, H, T, d_h) -> (B, T, d)


def _attend_vjp(argnums, out, args, kwargs):
    p, v = args

    def vjp(g):  # g (B, T, d)
        gh = _split_heads(g, p.shape[1])  # (B, H, T, d_h)
        grads = []
        for i in argnums:
            if i == 0:  # dP = dO Vᵀ
                grads.append(gh @ _split_heads(v, p.shape[1]).transpose(0, 1, 3, 2))  # (B, H, T, T)
            else:  # dV = Pᵀ dO
                grads.append(_merge_heads(p.transpose(0, 1, 3, 2) @ gh))  # (B, T, d)
        return tuple(grads)

    return vjp


defvjp_argnums(attend, _attend_vjp)


def causal_attention(q, k, v, n_head):
    """softmax(Q Kᵀ/√d_h + M) V over heads. q, k, v (B, T, d) with d = n_head · d_h -> (B, T, d)."""
    return attend(attention_probs(q, k, n_head), v)  # (B, H, T, T) -> (B, T, d)
