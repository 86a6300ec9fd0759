"""Text generation from the model, greedy or sampled (a seeded Generator: the same seed, the same text)."""

from __future__ import annotations

import numpy as np

from .backend import to_host
from .model import forward
from .tokenizer import decode, encode


def generate(params, config, prompt: str, max_new: int = 80, *, lora=None, lora_config=None,
             temperature: float = 0.0, seed: int = 0, stop: str | None = None) -> str:
    """Continue ``prompt`` by ``max_new`` bytes. temperature 0 = greedy. Returns the continuation only."""
    if not isinstance(max_new, int) or max_new < 0:
        raise ValueError(f"max_new must be an int >= 0, got {max_new!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    rng = np.random.default_rng(seed)
    ids = list(encode(prompt))
    if not ids:
        raise ValueError("prompt must not be empty")
    out = []
    for _ in range(max_new):
        window = np.array([ids[-config.context:]], dtype=np.int32)  # (1, T)
        logits = to_host(forward(params, window, config, lora, lora_config)[0, -1]).astype(np.float64)  # (V,)
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            p = np.exp((logits - logits.max()) / temperature)
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        ids.append(nxt)
        out.append(nxt)
        if stop is not None and decode(out).endswith(stop):
            break
    return decode(np.array(out, dtype=np.int32))
