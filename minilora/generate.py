"""Text generation from the model: greedy, or sampled with a temperature and optionally from the top k tokens
only (a seeded Generator: the same seed, the same text)."""

from __future__ import annotations

import numpy as np

from .backend import to_host
from .config import real_number, whole_number
from .model import forward
from .tokenizer import decode, encode


def check_sampling(max_new, temperature, top_k, seed) -> None:
    """ValueError naming the first bad argument: max_new, top_k, seed ints >= 0; temperature finite >= 0."""
    whole_number("", "max_new", max_new)
    real_number("", "temperature", temperature, at_least=0)
    whole_number("", "top_k", top_k)
    whole_number("", "seed", seed)


def generate(params, config, prompt: str, max_new: int = 80, *, lora=None, lora_config=None,
             temperature: float = 0.0, top_k: int = 0, seed: int = 0, stop: str | None = None) -> str:
    """Continue ``prompt`` by ``max_new`` bytes and return the continuation only.

    temperature 0 = greedy (the most likely byte each time). Otherwise sample from softmax(logits / temperature),
    restricted to the ``top_k`` most likely bytes when top_k > 0 (0 = all of them)."""
    check_sampling(max_new, temperature, top_k, seed)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    ids = list(encode(prompt))
    if not ids:
        raise ValueError("prompt must not be empty")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(max_new):
        window = np.array([ids[-config.context:]], dtype=np.int32)  # (1, T)
        logits = to_host(forward(params, window, config, lora, lora_config)[0, -1]).astype(np.float64)  # (V,)
        nxt = int(logits.argmax()) if temperature == 0 else _sample(logits, temperature, top_k, rng)
        ids.append(nxt)
        out.append(nxt)
        if stop is not None and decode(out).endswith(stop):
            break
    return decode(np.array(out, dtype=np.int32))


def _sample(logits, temperature: float, top_k: int, rng) -> int:
    """One token id from softmax(logits / temperature) over the top_k largest logits (all when top_k is 0)."""
    if not np.isfinite(logits).all():
        raise ValueError("the model's logits are not finite: the parameters or the adapter hold NaN/inf values")
    candidates = np.arange(len(logits))  # (V,)
    if 0 < top_k < len(logits):
        candidates = np.argpartition(logits, -top_k)[-top_k:]  # (k,) the k largest, in no particular order
        candidates.sort()  # a fixed order, so the same seed draws the same token
    z = logits[candidates] / temperature
    p = np.exp(z - z.max())
    return int(candidates[rng.choice(len(candidates), p=p / p.sum())])
