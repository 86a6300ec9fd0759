"""A GPT-2-style transformer as pure functions of a parameter tree (W stored (d_out, d_in))."""

from __future__ import annotations

import math

import numpy as np

from .config import GPTConfig
from .lora import LoraConfig, lora_linear
from .ops import causal_attention, embedding, gelu, layer_norm, linear
from .tree import plain

BLOCK_MATRICES = ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")


def init_params(config: GPTConfig, seed: int, dtype=np.float32) -> dict:
    """GPT-2 initialisation: N(0, 0.02) weights, N(0, 0.02/√(2L)) for the two residual projections (wo,
    mlp_out), N(0, 0.01) positions, zero biases, LayerNorm γ = 1, β = 0.

    {"wte": (V, d), "wpe": (context, d),
     "blocks": [{"ln1": {"g", "b"}, "wq"|"wk"|"wv"|"wo"|"mlp_in"|"mlp_out": {"W": (d_out, d_in), "b": (d_out,)},
                 "ln2": {"g", "b"}}, ...],
     "ln_f": {"g", "b"}}
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    d = config.d_model

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(dtype)

    def ln():
        return {"g": np.ones(d, dtype), "b": np.zeros(d, dtype)}

    resid_std = 0.02 / math.sqrt(2 * config.n_layer)
    blocks = []
    for _ in range(config.n_layer):
        block = {"ln1": ln(), "ln2": ln()}
        for name in BLOCK_MATRICES:
            d_out, d_in = config.matrix_shape(name)
            std = resid_std if name in ("wo", "mlp_out") else 0.02
            block[name] = {"W": normal((d_out, d_in), std), "b": np.zeros(d_out, dtype)}
        blocks.append(block)
    return {
        "wte": normal((config.vocab_size, d), 0.02),
        "wpe": normal((config.context, d), 0.01),
        "blocks": blocks,
        "ln_f": ln(),
    }


def forward(params, tokens, config: GPTConfig, lora=None, lora_config: LoraConfig | None = None, *, rng=None):
    """Next-token logits. tokens (B, T) ints -> logits (B, T, vocab_size).

    With ``lora`` every adapted matrix computes W x + b + s·B A x. ``rng`` (a numpy Generator) switches LoRA
    dropout on; without it dropout is off, as at evaluation.
    """
    from .validate import check_lora, check_params, check_tokens

    check_params(plain(params), config)  # plain(): the arrays under autograd's boxes, when traced
    tokens = check_tokens(tokens, config)
    adapters = [{}] * config.n_layer
    scale = 0.0
    keep_p = 1.0
    if lora is not None:
        if lora_config is None:
            raise TypeError("forward: 'lora_config' is required when 'lora' is given (it holds r, alpha, targets)")
        check_lora(plain(lora), lora_config, plain(params))
        adapters, scale = lora["blocks"], lora_config.scale
        keep_p = 1.0 - lora_config.dropout
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)) or None, "
                        f"got {type(rng).__name__}")
    dropout = None if rng is None or keep_p == 1.0 else (rng, keep_p)

    B, T = tokens.shape
    x = embedding(tokens, params["wte"]) + params["wpe"][:T]  # (B, T, d)
    for block, adapter in zip(params["blocks"], adapters, strict=True):
        x = x + attention(layer_norm(x, block["ln1"]["g"], block["ln1"]["b"], config.ln_eps),
                          block, adapter, scale, dropout, config)  # (B, T, d)
        x = x + mlp(layer_norm(x, block["ln2"]["g"], block["ln2"]["b"], config.ln_eps),
                    block, adapter, scale, dropout)  # (B, T, d)
    x = layer_norm(x, params["ln_f"]["g"], params["ln_f"]["b"], config.ln_eps)  # (B, T, d)
    return linear(x, params["wte"])  # (B, T, V): output layer tied to the token embedding


def _project(x, block, adapter, name, scale, dropout):
    """One (possibly adapted) matrix of a block: W x + b [+ s·B A dropout(x)]."""
    lora_ab = adapter[name] if name in adapter else None
    keep = None
    if lora_ab is not None and dropout is not None:
        rng, keep_p = dropout
        keep = ((rng.random(x.shape, dtype=np.float32) < keep_p) * (1.0 / keep_p)).astype(x.dtype)  # (..., d_in)
    return lora_linear(x, block[name], lora_ab, scale, keep)


def attention(x, block, adapter, scale, dropout, config):
    """Causal self-attention: softmax(Q K^T/√d_h + mask) V W_o^T. x (B, T, d) -> (B, T, d)."""
    q = _project(x, block, adapter, "wq", scale, dropout)  # (B, T, d)
    k = _project(x, block, adapter, "wk", scale, dropout)  # (B, T, d)
    v = _project(x, block, adapter, "wv", scale, dropout)  # (B, T, d)
    o = causal_attention(q, k, v, config.n_head)  # (B, T, d)
    return _project(o, block, adapter, "wo", scale, dropout)  # (B, T, d)


def mlp(x, block, adapter, scale, dropout):
    """Position-wise MLP: W_out GELU(W_in x). x (B, T, d) -> (B, T, d)."""
    h = gelu(_project(x, block, adapter, "mlp_in", scale, dropout))  # (B, T, d_mlp)
    return _project(h, block, adapter, "mlp_out", scale, dropout)  # (B, T, d)
