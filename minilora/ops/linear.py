"""Linear map y = x W^T + b, with W stored (d_out, d_in) as in the paper and torch.nn.Linear."""

from autograd.extend import defvjp_argnums, primitive

from ..backend import array_module


@primitive
def linear(x, W, b=None):
    """x (..., d_in), W (d_out, d_in), b (d_out,) or None -> (..., d_out)."""
    d_out, d_in = W.shape
    y = x.reshape(-1, d_in) @ W.T  # (N, d_out), N = prod(leading dims): one GEMM, not a batch of small ones
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], d_out)  # (..., d_out)


def _linear_vjp(argnums, y, args, kwargs):
    x, W, b = (list(args) + [kwargs.get("b")])[:3]
    d_out, d_in = W.shape

    def vjp(g):  # g (..., d_out)
        g2 = g.reshape(-1, d_out)  # (N, d_out)
        grads = []
        for i in argnums:
            if i == 0:  # dx = g W
                grads.append((g2 @ W).reshape(x.shape))  # (..., d_in)
            elif i == 1:  # dW = g^T x, summed over every position
                grads.append(g2.T @ x.reshape(-1, d_in))  # (d_out, d_in)
            else:  # db = sum of g over every position
                grads.append(array_module(g2).sum(g2, axis=0))  # (d_out,)
        return tuple(grads)

    return vjp


defvjp_argnums(linear, _linear_vjp)
