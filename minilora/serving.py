"""The serving lab's workload: which adapter each request asks for, random adapters of mixed ranks, and the four
ways ``forward_mixed`` serves one batch of them (benchmarks/serving_lab.py times these against each other).

``assignments`` draws a batch with exactly ``n_adapters`` distinct adapters present: each appears at least once
(so the count of distinct adapters is the one asked for), and the remaining rows follow the popularity law,

    uniform:   p_k = 1 / K
    powerlaw:  p_k ∝ (k + 1)^(-alpha)   (Zipf; a few adapters take most requests, a long tail takes one row each)

then the rows are shuffled: requests arrive in no particular order.
"""

from __future__ import annotations

import numpy as np

from .backend import to_device
from .config import GPTConfig
from .lora import LoraConfig, init_lora
from .mixed import IMPLS, forward_mixed, prepare_adapters
from .model import forward

POPULARITIES = ("uniform", "powerlaw")


def _generator(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def _count(name: str, value, at_least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < at_least:
        raise ValueError(f"{name} must be an int >= {at_least}, got {value!r}")
    return int(value)


def popularity_weights(n_adapters: int, popularity: str = "uniform", alpha: float = 1.0) -> np.ndarray:
    """(K,) probabilities of each adapter being requested, summing to 1 (see the module docstring)."""
    K = _count("n_adapters", n_adapters, 1)
    if popularity not in POPULARITIES:
        raise ValueError(f"popularity must be one of {POPULARITIES}, got {popularity!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not alpha > 0:
        raise ValueError(f"alpha must be a number > 0 (the power law's exponent), got {alpha!r}")
    w = np.ones(K) if popularity == "uniform" else np.arange(1, K + 1, dtype=np.float64) ** -float(alpha)  # (K,)
    return w / w.sum()


def assignments(n_rows: int, n_adapters: int, popularity: str = "uniform", alpha: float = 1.0, *,
                rng: np.random.Generator) -> np.ndarray:
    """which (n_rows,) int64: the adapter of each row, every one of the n_adapters present at least once."""
    B, K = _count("n_rows", n_rows, 1), _count("n_adapters", n_adapters, 1)
    if K > B:
        raise ValueError(f"n_adapters={K} distinct adapters need at least as many rows, got n_rows={B}")
    p = popularity_weights(K, popularity, alpha)
    rng = _generator(rng)
    which = np.concatenate([np.arange(K), rng.choice(K, size=B - K, p=p)])  # (B,): each once, the rest by p
    return rng.permutation(which).astype(np.int64)


def random_adapters(config: GPTConfig, n_adapters: int, ranks=(2, 4, 8, 16), targets=("wq", "wv"), *,
                    rng: np.random.Generator, dtype=np.float32) -> list:
    """n (lora, lora_config) pairs, adapter k of rank ranks[k % len(ranks)] (mixed ranks), with B != 0."""
    K = _count("n_adapters", n_adapters, 1)
    rng = _generator(rng)
    if not isinstance(ranks, (list, tuple)) or not ranks:
        raise ValueError(f"ranks must be a non-empty list of ints >= 1, got {ranks!r}")
    out = []
    for k in range(K):
        lora_config = LoraConfig(r=_count("ranks[]", ranks[k % len(ranks)], 1), alpha=8.0, targets=targets)
        lora = init_lora(config, lora_config, int(rng.integers(1 << 31)), dtype=dtype)
        for block in lora["blocks"]:
            for ab in block.values():  # a trained-looking B: the low-rank path must change the logits
                B = (rng.standard_normal(ab["B"].shape) * 0.05).astype(dtype)  # (d_out, r), drawn on the host
                ab["B"] = to_device(B, like=ab["A"])
        out.append((lora, lora_config))
    return out


def strategies(params, config: GPTConfig, adapters: list) -> dict:
    """{name: fn(tokens, which) -> logits} for "base" (no adapters) and every impl of forward_mixed, with the
    checks, the stacking (gather) and the merged copies (merged) done once here, as a server keeps them."""
    out = {"base": lambda tokens, which: forward(params, tokens, config)}
    for impl in IMPLS:
        out[impl] = _served(params, config, prepare_adapters(adapters, params, impl), impl)
    return out


def _served(params, config, adapters, impl):
    return lambda tokens, which: forward_mixed(params, tokens, config, adapters, which, impl=impl)


def max_disagreement(outputs: dict) -> float:
    """The largest |difference| between any strategy's logits and the first one's (base excluded)."""
    served = [v for k, v in outputs.items() if k != "base"]
    return max(float(abs(v - served[0]).max()) for v in served)  # abs(): on the arrays' own device
