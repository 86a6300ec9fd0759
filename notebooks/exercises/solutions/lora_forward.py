"""Solutions: exercise 01 (the LoRA forward, α/r and α/√r, and LoRA dropout)."""

import numpy as np


def lora_forward(x, W, b, A, B, alpha):
    r = A.shape[0]
    return x @ W.T + b + (alpha / r) * (x @ A.T) @ B.T  # (..., d_out): the bottleneck x Aᵀ is (..., r)


def lora_forward_rslora(x, W, b, A, B, alpha):
    r = A.shape[0]
    return x @ W.T + b + (alpha / np.sqrt(r)) * (x @ A.T) @ B.T


def lora_dropout(x, W, b, A, B, alpha, dropout, training):
    r = A.shape[0]
    xd = dropout(x) if training else x  # dropout acts on the adapter's input only, and only while training
    return x @ W.T + b + (alpha / r) * (xd @ A.T) @ B.T
