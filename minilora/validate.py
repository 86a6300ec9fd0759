"""Input checks with messages that name the argument and what was expected.

They run at the public entry points (forward, merge, checkpoint loading), before any arithmetic, so a bad
input never surfaces as a deep numpy traceback or as a silently wrong result.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import GPTConfig

FLOAT_DTYPES = ("float16", "float32", "float64")


def expected_param_shapes(config: GPTConfig) -> dict:
    """{"wte": (V, d), "blocks.0.wq.W": (d, d), ...}: every key of a parameter tree and its shape."""
    d = config.d_model
    shapes = {"wte": (config.vocab_size, d), "wpe": (config.context, d)}
    for i in range(config.n_layer):
        for ln in ("ln1", "ln2"):
            shapes[f"blocks.{i}.{ln}.g"] = (d,)
            shapes[f"blocks.{i}.{ln}.b"] = (d,)
        for name in ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out"):
            d_out, d_in = config.matrix_shape(name)
            shapes[f"blocks.{i}.{name}.W"] = (d_out, d_in)
            shapes[f"blocks.{i}.{name}.b"] = (d_out,)
    shapes["ln_f.g"] = (d,)
    shapes["ln_f.b"] = (d,)
    return shapes


def expected_lora_shapes(config: GPTConfig, lora_config) -> dict:
    """{"blocks.0.wq.A": (r, d_in), "blocks.0.wq.B": (d_out, r), ...} for an adapter."""
    lora_config.check_against(config)
    shapes = {}
    for i in lora_config.adapted_layers(config):
        for t in lora_config.targets:
            d_out, d_in = config.matrix_shape(t)
            shapes[f"blocks.{i}.{t}.A"] = (lora_config.r, d_in)
            shapes[f"blocks.{i}.{t}.B"] = (d_out, lora_config.r)
    return shapes


def check_flat(flat: dict, expected: dict, what: str) -> None:
    """Compare {path: array} with {path: shape}: same keys, same shapes, one floating dtype."""
    missing = [k for k in expected if k not in flat]
    extra = [k for k in flat if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        raise ValueError(f"{what}: keys do not match the config: {'; '.join(parts)}")
    dtypes = set()
    for key, shape in expected.items():
        a = flat[key]
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{what}: {key} must be an array, got {type(a).__name__}")
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{what}: {key} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        if str(a.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{what}: {key} has dtype {a.dtype}, expected one of {FLOAT_DTYPES}")
        dtypes.add(str(a.dtype))
    if len(dtypes) > 1:
        raise TypeError(f"{what}: mixed dtypes {sorted(dtypes)}; cast the whole tree to one dtype")


def count_nonfinite(a) -> tuple[int, int]:
    """(number of NaN, number of ±inf) in an array of any backend."""
    from .backend import array_module

    xp = array_module(a)
    return int(xp.isnan(a).sum()), int(xp.isinf(a).sum())


def check_finite(flat: dict, what: str, hint: str = "") -> None:
    """Raise ValueError naming the first tensor of {path: array} that holds NaN or ±inf, and how many.

    Used on everything read from a file (parameters, adapters, training states, foreign checkpoints): a
    non-finite weight would only surface later as all-NaN logits. ``hint`` ends the message (how to opt out).
    """
    bad = []
    for key, a in flat.items():
        if getattr(getattr(a, "dtype", None), "kind", None) != "f":
            continue
        n_nan, n_inf = count_nonfinite(a)
        if n_nan or n_inf:
            bad.append(f"{key} has {n_nan + n_inf} non-finite values of {a.size} ({n_nan} NaN, {n_inf} inf)")
    if bad:
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise ValueError(f"{what}: {bad[0]}{more}{'; ' + hint if hint else ''}")


def check_params(params, config: GPTConfig) -> None:
    """Raise a clear error unless ``params`` is a parameter tree of ``config``'s shapes (every missing, extra or
    misshapen tensor named); returns None when it is."""
    from .tree import flatten

    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    if not isinstance(params, dict):
        raise TypeError("params must be a dict of arrays (from init_params or load_params), "
                        f"got {type(params).__name__}")
    check_flat(flatten(params), _cached_param_shapes(config), "params")


@lru_cache(maxsize=16)
def _cached_param_shapes(config):
    return expected_param_shapes(config)  # GPTConfig is frozen and hashable: one dict per config


def check_lora(lora, lora_config, params) -> None:
    """The adapter must have exactly the A and B that lora_config implies for this base, in the base's dtype."""
    from .lora import LoraConfig

    if not isinstance(lora_config, LoraConfig):
        raise TypeError(f"lora_config must be a LoraConfig, got {type(lora_config).__name__}")
    if not isinstance(lora, dict) or not isinstance(lora.get("blocks"), (list, tuple)):
        raise TypeError("lora must be a dict {'blocks': [...]} as returned by init_lora or load_adapter")
    blocks = params["blocks"]
    if len(lora["blocks"]) != len(blocks):
        raise ValueError(f"lora has {len(lora['blocks'])} blocks but the base model has {len(blocks)}")
    layers = set(lora_config.check_fit(len(blocks), lambda t: tuple(blocks[0][t]["W"].shape)))
    r = lora_config.r
    base_dtype = blocks[0]["wq"]["W"].dtype
    for i, (adapters, block) in enumerate(zip(lora["blocks"], blocks, strict=True)):
        if not isinstance(adapters, dict):
            raise TypeError(f"lora block {i} must be a dict of adapters, got {type(adapters).__name__}")
        want = set(lora_config.targets) if i in layers else set()
        if set(adapters) != want:
            raise ValueError(
                f"lora block {i} adapts {sorted(adapters)} but lora_config says {sorted(want)} "
                f"(targets={list(lora_config.targets)}, layers={lora_config.layers})"
            )
        for t, ab in adapters.items():
            if not isinstance(ab, dict) or set(ab) != {"A", "B"}:
                raise ValueError(f"lora block {i} {t} must be a dict with exactly 'A' and 'B'")
            d_out, d_in = block[t]["W"].shape
            for name, shape in (("A", (r, d_in)), ("B", (d_out, r))):
                a = ab[name]
                if not hasattr(a, "shape"):
                    raise TypeError(f"lora blocks.{i}.{t}.{name} must be an array, got {type(a).__name__}")
                if tuple(a.shape) != shape:
                    raise ValueError(
                        f"lora blocks.{i}.{t}.{name} has shape {tuple(a.shape)} but the base's {t} "
                        f"{(d_out, d_in)} with r={r} needs {shape}"
                    )
                if a.dtype != base_dtype:
                    raise TypeError(
                        f"lora blocks.{i}.{t}.{name} has dtype {a.dtype} but the base is {base_dtype}; "
                        "cast one to match"
                    )


def check_tokens(tokens, config: GPTConfig):
    """tokens must be a (B, T) integer array with 0 <= id < vocab_size and 1 <= T <= context."""
    if isinstance(tokens, (list, tuple)):
        tokens = np.asarray(tokens)
    if not hasattr(tokens, "dtype") or not hasattr(tokens, "ndim"):
        raise TypeError(f"tokens must be an integer array of shape (B, T), got {type(tokens).__name__}")
    if tokens.dtype.kind not in "iu":
        raise TypeError(f"tokens must have an integer dtype, got {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (B, T), got shape {tuple(tokens.shape)}")
    B, T = tokens.shape
    if B == 0 or T == 0:
        raise ValueError(f"tokens must be non-empty, got shape {tuple(tokens.shape)}")
    if T > config.context:
        raise ValueError(f"tokens are {T} long but the model's context is {config.context}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(f"tokens must be in [0, {config.vocab_size}), got values in [{lo}, {hi}]")
    return tokens
