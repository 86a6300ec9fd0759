"""Solutions: exercise 02 (the VJP of the LoRA layer, and a finite-difference gradient to check it with)."""

import numpy as np


def lora_vjp(x, W, b, A, B, alpha, g):
    s = alpha / A.shape[0]
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])  # (N, d_in), (N, d_out)
    gB = g2 @ B  # (N, r): the gradient at the bottleneck, before the scale
    dx = (g2 @ W + s * gB @ A).reshape(x.shape)  # frozen path + low-rank path
    dA = s * gB.T @ x2  # (r, d_in)
    dB = s * g2.T @ (x2 @ A.T)  # (d_out, r)
    return dx, dA, dB  # and never gᵀ x: W is frozen


def numerical_gradient(f, x, eps):
    x = np.array(x, dtype=np.float64)  # a copy: the caller's x is never touched
    grad = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        old = x[k]
        x[k] = old + eps
        up = f(x)
        x[k] = old - eps
        down = f(x)
        x[k] = old
        grad[k] = (up - down) / (2 * eps)
    return grad
