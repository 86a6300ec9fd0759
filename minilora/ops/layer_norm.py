"""Layer normalisation over the last axis: y = γ (x - μ)/√(σ² + ε) + β.

Each row (one position) is normalised on its own, so the forward and the dx of the VJP are row kernels that
backend.rowwise can run on several cores; dγ and dβ sum over the rows and stay in one call.
"""

from autograd.extend import defvjp_argnums, primitive

from ..backend import array_module, rowwise
from ._rows import row_dot, row_sum


def _normalise_rows(x, eps, out):
    """out = (x̂, ρ): x̂ = (x - μ) ρ (n, d) and ρ = 1/√(σ² + ε) (n, 1), per row of x (n, d)."""
    xhat, rstd = out
    xp = array_module(x)
    d = x.shape[-1]
    xp.subtract(x, row_sum(x) / d, out=xhat)  # x - μ
    xp.sqrt(row_dot(xhat, xhat) / d + eps, out=rstd)  # σ, ε included
    xp.divide(1.0, rstd, out=rstd)
    xhat *= rstd


def _layer_norm_rows(x, gamma, beta, eps, out):
    rstd = array_module(x).empty((x.shape[0], 1), dtype=x.dtype)  # (n, 1)
    _normalise_rows(x, eps, out=(out, rstd))
    out *= gamma
    out += beta


def _layer_norm_dx_rows(g, xhat, rstd, gamma, out):
    """out = ρ (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)), ĝ = g γ, per row."""
    d = g.shape[-1]
    array_module(g).multiply(g, gamma, out=out)  # ĝ
    mean_gx = row_dot(out, xhat) / d  # (n, 1)
    out -= row_sum(out) / d
    out -= xhat * mean_gx
    out *= rstd


@primitive
def layer_norm(x, gamma, beta, eps=1e-5):
    """x (..., d), gamma (d,), beta (d,) -> (..., d)."""
    x2 = x.reshape(-1, x.shape[-1])  # (N, d): one row per position
    y = rowwise(_layer_norm_rows, x2, gamma, beta, eps, out=array_module(x).empty_like(x2))
    return y.reshape(x.shape)


def _layer_norm_vjp(argnums, y, args, kwargs):
    x, gamma = args[0], args[1]
    eps = args[3] if len(args) > 3 else kwargs.get("eps", 1e-5)
    if any(i not in (0, 1, 2) for i in argnums):
        raise NotImplementedError("layer_norm is not differentiable in eps")

    def vjp(g):  # g (..., d)
        # x̂ and 1/σ are recomputed in the backward pass (autograd builds this closure during the forward, so
        # computing them out here would keep them alive through the rest of the forward).
        xp = array_module(x)
        x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, x.shape[-1])  # (N, d)
        if 0 in argnums or 1 in argnums:
            xhat, rstd = xp.empty_like(x2), xp.empty((x2.shape[0], 1), dtype=x2.dtype)  # (N, d), (N, 1)
            rowwise(_normalise_rows, x2, eps, out=(xhat, rstd))
        grads = []
        for i in argnums:
            if i == 0:  # dx = (1/σ) (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)), ĝ = g γ
                dx = rowwise(_layer_norm_dx_rows, g2, xhat, rstd, gamma, out=xp.empty_like(g2))
                grads.append(dx.reshape(x.shape))  # (..., d)
            elif i == 1:  # dγ = Σ g x̂ over every position
                grads.append(xp.einsum("nd,nd->d", g2, xhat))  # (d,)
            else:  # dβ = Σ g over every position
                grads.append(g2.sum(axis=0))  # (d,)
        return tuple(grads)

    return vjp


defvjp_argnums(layer_norm, _layer_norm_vjp)
