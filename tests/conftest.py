"""Shared fixtures: the tiny config, scaled-up random parameters for it, and a tiny next-token task."""

from __future__ import annotations

import os

# The tests multiply tiny matrices, where BLAS threads only add overhead, and on a busy machine (2 cores shared with
# other jobs) multi-threaded OpenBLAS spin-waits: a base-model training step took 12-18 s instead of 0.4 s. Must be
# set before numpy loads OpenBLAS; set OPENBLAS_NUM_THREADS yourself to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest

import minilora.checkpoint
from minilora import GPTConfig, init_params
from minilora.tasks import Batch

TINY = GPTConfig.preset("tiny")


def tiny_params(seed: int = 0, dtype=np.float32) -> dict:
    """init_params(TINY) with wte ×25 and every block matrix ×10.

    At GPT-2's init scale (std 0.02) the logits of a 16-wide model stay within ±0.3 whatever the adapter does,
    so nothing measurable can be learned or shifted; at this scale the weights matter as after pretraining.
    """
    params = init_params(TINY, seed, dtype=dtype)
    params["wte"] = (params["wte"] * 25).astype(dtype)
    for block in params["blocks"]:
        for name in ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out"):
            block[name]["W"] = (block[name]["W"] * 10).astype(dtype)
    return params


class TinyLMTask:
    """Next-token prediction on a fixed random stream of 8 byte values (a..h): same interface as minilora.tasks."""

    name = "tinylm"

    def __init__(self, length: int = TINY.context, n_values: int = 8, seed: int = 0, n_eval: int = 8):
        rng = np.random.default_rng(seed)
        self.length = length
        self.stream = (97 + rng.integers(0, n_values, size=4096)).astype(np.int32)  # (4096,)
        self.eval_x, self.eval_y = self._windows(np.random.default_rng([seed, 99]), n_eval)

    def _windows(self, rng, n):
        starts = rng.integers(0, len(self.stream) - self.length - 1, size=n)
        w = self.stream[starts[:, None] + np.arange(self.length + 1)]  # (n, length + 1)
        return w[:, :-1], w[:, 1:]

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        x, y = self._windows(np.random.default_rng([seed, step]), batch_size)
        return Batch(x, y)

    def evaluate(self, params, config, lora=None, lora_config=None) -> dict:
        from minilora import forward
        from minilora.ops import cross_entropy

        return {"loss": float(cross_entropy(forward(params, self.eval_x, config, lora, lora_config), self.eval_y))}


@pytest.fixture
def tiny_task():
    return TinyLMTask()


@pytest.fixture
def shipped_base():
    """Path of the shipped base checkpoint; skips the test while it does not exist (it is made by pretraining)."""
    path = minilora.checkpoint.BASE_CHECKPOINT
    if not path.is_file():
        pytest.skip(f"the shipped base checkpoint {path} is missing (made by 'minilora pretrain')")
    return path

