"""The LoRA term s · B A x, computed as s · (x A^T) B^T so that no (d_out, d_in) matrix is ever formed."""

from autograd.extend import defvjp_argnums, primitive


@primitive
def lora_delta(x, A, B, scale, keep=None):
    """x (..., d_in), A (r, d_in), B (d_out, r), scale s = α/r (or α/√r) -> (..., d_out).

    ``keep`` is the dropout mask on x (LoRA dropout acts on the adapter's input only): an array shaped like x
    holding 0 or 1/(1-p), or None when dropout is off.
    """
    r, d_in = A.shape
    d_out = B.shape[0]
    xd = x if keep is None else x * keep  # (..., d_in)
    u = scale * (xd.reshape(-1, d_in) @ A.T)  # (N, r): s·A x, the rank-r bottleneck
    return (u @ B.T).reshape(*x.shape[:-1], d_out)  # (..., d_out)


def _lora_delta_vjp(argnums, y, args, kwargs):
    x, A, B, scale = args[:4]
    keep = args[4] if len(args) > 4 else kwargs.get("keep")
    r, d_in = A.shape
    d_out = B.shape[0]

    def vjp(g):  # g (..., d_out)
        xd = (x if keep is None else x * keep).reshape(-1, d_in)  # (N, d_in), formed in the backward pass
        g2 = g.reshape(-1, d_out)  # (N, d_out)
        gu = None if argnums == (2,) else scale * (g2 @ B)  # (N, r): gradient at the bottleneck, times s
        grads = []
        for i in argnums:
            if i == 0:  # dx = s (g B) A, masked like the forward
                gx = (gu @ A).reshape(x.shape)  # (..., d_in)
                grads.append(gx if keep is None else gx * keep)
            elif i == 1:  # dA = s B^T g^T x
                grads.append(gu.T @ xd)  # (r, d_in)
            elif i == 2:  # dB = s g^T (x A^T)
                grads.append(g2.T @ (scale * (xd @ A.T)))  # (d_out, r)
            else:
                raise NotImplementedError("lora_delta is differentiable in x, A and B only")
        return tuple(grads)

    return vjp


defvjp_argnums(lora_delta, _lora_delta_vjp)
