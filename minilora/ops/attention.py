"""Causal multi-head self-attention core: softmax(Q K^T / √d_h + mask) V, per head."""

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


def _probs(qh, kh):
    """P = softmax(Q K^T/√d_h + causal mask): (B, H, T, d_h) twice -> (B, H, T, T)."""
    xp = array_module(qh)
    T, dh = qh.shape[-2:]
    s = (qh * (1.0 / math.sqrt(dh))) @ kh.transpose(0, 1, 3, 2)  # (B, H, T, T) scores
    s += causal_mask(T, s.dtype, xp)  # (B, H, T, T)
    s -= s.max(axis=-1, keepdims=True)  # the diagonal is always finite, so every row has a finite max
    p = xp.exp(s, out=s)
    p /= p.sum(axis=-1, keepdims=True)
    return p  # (B, H, T, T)


@primitive
def causal_attention(q, k, v, n_head):
    """q, k, v (B, T, d) with d = n_head · d_h -> (B, T, d)."""
    qh, kh, vh = (_split_heads(t, n_head) for t in (q, k, v))  # (B, H, T, d_h) each
    return _merge_heads(_probs(qh, kh) @ vh)  # (B, H, T, d_h) -> (B, T, d)


def _attention_vjp(argnums, out, args, kwargs):
    q, k, v, n_head = args
    c = 1.0 / math.sqrt(q.shape[-1] // n_head)

    def vjp(g):  # g (B, T, d)
        qh, kh, vh = (_split_heads(t, n_head) for t in (q, k, v))  # (B, H, T, d_h) each: views, no copies
        # P is recomputed here, in the backward pass, rather than kept from the forward (as FlashAttention does):
        # autograd builds this closure during the forward, so anything computed outside it would stay alive
        # through the whole forward. This way the (B, H, T, T) matrix exists only while its gradient is formed.
        p = _probs(qh, kh)  # (B, H, T, T)
        gh = _split_heads(g, n_head)  # (B, H, T, d_h)
        gs = None
        if 0 in argnums or 1 in argnums:  # dS = P ⊙ (dP - rowsum(dP ⊙ P)), dP = dO V^T
            gp = gh @ vh.transpose(0, 1, 3, 2)  # (B, H, T, T)
            gs = p * (gp - (gp * p).sum(axis=-1, keepdims=True))  # (B, H, T, T)
        grads = []
        for i in argnums:
            if i == 0:  # dQ = dS K / √d_h
                grads.append(_merge_heads((gs @ kh) * c))  # (B, T, d)
            elif i == 1:  # dK = dS^T Q / √d_h
                grads.append(_merge_heads((gs.transpose(0, 1, 3, 2) @ qh) * c))  # (B, T, d)
            elif i == 2:  # dV = P^T dO
                grads.append(_merge_heads(p.transpose(0, 1, 3, 2) @ gh))  # (B, T, d)
            else:
                raise NotImplementedError("causal_attention is not differentiable in n_head")
        return tuple(grads)

    return vjp


defvjp_argnums(causal_attention, _attention_vjp)
