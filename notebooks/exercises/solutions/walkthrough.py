"""Solutions: the walkthrough (the LoRA term as an autograd primitive with its VJPs)."""

from autograd.extend import defvjp, primitive


@primitive
def lora_delta(x, A, B, scale):
    return scale * (x @ A.T) @ B.T  # (..., d_out)


def rows(t):
    return t.reshape(-1, t.shape[-1])


def vjp_x(ans, x, A, B, scale):
    return lambda g: scale * (g @ B) @ A  # (..., d_in)


def vjp_A(ans, x, A, B, scale):
    return lambda g: scale * (rows(g) @ B).T @ rows(x)  # (r, d_in): summed over every leading dim


def vjp_B(ans, x, A, B, scale):
    return lambda g: scale * rows(g).T @ (rows(x) @ A.T)  # (d_out, r)


defvjp(lora_delta, vjp_x, vjp_A, vjp_B)
