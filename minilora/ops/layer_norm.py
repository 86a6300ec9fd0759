"""Layer normalisation over the last axis: y = γ (x - μ)/√(σ² + ε) + β."""

from autograd.extend import defvjp_argnums, primitive

from ..backend import array_module


def _normalise(x, eps):
    xp = array_module(x)
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu  # (..., d)
    rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    return xc * rstd, rstd  # x̂ (..., d), 1/σ (..., 1)


@primitive
def layer_norm(x, gamma, beta, eps=1e-5):
    """x (..., d), gamma (d,), beta (d,) -> (..., d)."""
    xhat, _ = _normalise(x, eps)
    return xhat * gamma + beta


def _layer_norm_vjp(argnums, y, args, kwargs):
    x, gamma = args[0], args[1]
    eps = args[3] if len(args) > 3 else kwargs.get("eps", 1e-5)
    d = x.shape[-1]

    def vjp(g):  # g (..., d)
        # x̂ and 1/σ are recomputed in the backward pass (autograd builds this closure during the forward, so
        # computing them out here would keep them alive through the rest of the forward).
        xhat, rstd = _normalise(x, eps)  # (..., d), (..., 1)
        lead = tuple(range(g.ndim - 1))
        grads = []
        for i in argnums:
            if i == 0:  # dx = (1/σ) (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)), ĝ = g γ
                gh = g * gamma  # (..., d)
                mean_g = gh.sum(axis=-1, keepdims=True) / d  # (..., 1)
                mean_gx = (gh * xhat).sum(axis=-1, keepdims=True) / d  # (..., 1)
                grads.append(rstd * (gh - mean_g - xhat * mean_gx))  # (..., d)
            elif i == 1:  # dγ = Σ g x̂
                grads.append((g * xhat).sum(axis=lead))  # (d,)
            elif i == 2:  # dβ = Σ g
                grads.append(g.sum(axis=lead))  # (d,)
            else:
                raise NotImplementedError("layer_norm is not differentiable in eps")
        return tuple(grads)

    return vjp


defvjp_argnums(layer_norm, _layer_norm_vjp)
