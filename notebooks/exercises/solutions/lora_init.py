"""Solutions: exercise 04 (initialisation)."""

import numpy as np


def lora_init(d_in, d_out, r, rng):
    A = rng.standard_normal((r, d_in)) / r  # random: the paper's Gaussian (std 1/r as PEFT's "gaussian")
    B = np.zeros((d_out, r))  # zero: ΔW = B A = 0, so the adapted model starts as the base model
    return A, B
