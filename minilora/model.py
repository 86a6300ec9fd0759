"""A GPT-2-style transformer as pure functions of a parameter tree (W stored (d_out, d_in)).

``forward`` is the public entry point: it validates its inputs and runs ``transformer`` with LoRA's hooks (or
none). ``transformer`` is the computation itself, with one place where an adaptation method enters it: a
``Hooks`` value. LoRA, a batch of per-row adapters (``minilora.mixed``) and the other fine-tuning methods each
supply hooks; none of them copies the transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .backend import to_device
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

    Drawn on the host and moved to the selected backend (backend.to_device): a seed gives the same model on
    every backend.
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
    return to_device({
        "wte": normal((config.vocab_size, d), 0.02),
        "wpe": normal((config.context, d), 0.01),
        "blocks": blocks,
        "ln_f": ln(),
    })


# ---- where an adaptation enters the transformer ----------------------------------------------------------

def frozen_project(i: int, name: str, x, layer: dict):
    """The base model's matrix ``name`` of block ``i``: W x + b. x (..., d_in) -> (..., d_out)."""
    return linear(x, layer["W"], layer["b"])


def base_embed(tokens, params):
    """The base model's input: token plus position embeddings. tokens (B, T) -> (B, T, d)."""
    return embedding(tokens, params["wte"]) + params["wpe"][:tokens.shape[1]]  # (B, T, d)


def unchanged(i: int, h):
    """The identity: the default of every hook that may change an activation (block i's h)."""
    return h


def keep_all(x):
    """The default ``before_head``: every position goes on to the output layer."""
    return x


@dataclass(frozen=True)
class Hooks:
    """The points where a fine-tuning method changes the transformer; the defaults are the base model.

    project(i, name, x, layer) -> h: block i's matrix ``name`` ("wq", ..., "mlp_out") applied to x, where
        ``layer`` is {"W": (d_out, d_in), "b": (d_out,)}. LoRA returns W x + b + s·B A x here.
    Called in a fixed order: for each block, wq, wk, wv, wo, mlp_in, mlp_out (random draws inside a hook,
    such as dropout masks, are therefore reproducible). A method that needs another entry point adds a field
    here with a default that leaves the base model unchanged.
    embed(tokens, params) -> x (B, T', d): the input of block 0. Prefix tuning inserts its virtual tokens here
        (T' = T + l_p + l_i); the default is token + position embeddings, T' = T.
    enter_block(i, x) -> x: the input of block i, (B, T', d). PreLayer replaces its positions' activations.
    after_attention(i, h) -> h, after_mlp(i, h) -> h: block i's attention / MLP output (B, T', d) before it is
        added to the residual stream. Adapters (Houlsby; Lin) go here.
    before_head(x) -> x (B, T, d): the final activations, after ln_f, before the output layer; prefix tuning
        drops its virtual positions here so the logits line up with the targets again.
    """

    project: Callable = frozen_project
    embed: Callable = base_embed
    enter_block: Callable = unchanged
    after_attention: Callable = unchanged
    after_mlp: Callable = unchanged
    before_head: Callable = keep_all


BASE_HOOKS = Hooks()


def lora_hooks(lora_blocks, scale: float, dropout=None) -> Hooks:
    """LoRA's hook: every adapted matrix computes W x + b + s·B A dropout(x).

    lora_blocks: lora["blocks"], one {target: {"A", "B"}} dict per block. dropout: None or (rng, keep_p).
    The masks are drawn on the host from ``rng`` and moved to x's device: the same masks on every backend.
    """

    def project(i, name, x, layer):
        ab = lora_blocks[i].get(name)
        keep = None
        if ab is not None and dropout is not None:
            rng, keep_p = dropout
            drawn = rng.random(x.shape, dtype=np.float32) < keep_p  # (..., d_in) bool, on the host
            keep = (to_device(drawn, like=plain(x)) * (1.0 / keep_p)).astype(x.dtype)  # (..., d_in)
        return lora_linear(x, layer, ab, scale, keep)

    return Hooks(project=project)


# ---- the model ------------------------------------------------------------------------------------------

def forward(params, tokens, config: GPTConfig, lora=None, lora_config: LoraConfig | None = None, *, rng=None):
    """Next-token logits. tokens (B, T) ints -> logits (B, T, vocab_size).

    With ``lora`` every adapted matrix computes W x + b + s·B A x. ``rng`` (a numpy Generator) switches LoRA
    dropout on; without it dropout is off, as at evaluation.
    """
    from .validate import check_lora, check_params, check_tokens

    weights = plain(params)  # the arrays under autograd's boxes, when traced
    check_params(weights, config)
    tokens = to_device(check_tokens(tokens, config), like=weights["wte"])  # checked on the host, moved to the weights
    if lora is None:
        return transformer(params, tokens, config)
    if lora_config is None:
        raise TypeError("forward: 'lora_config' is required when 'lora' is given (it holds r, alpha, targets)")
    check_lora(plain(lora), lora_config, weights)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)) or None, "
                        f"got {type(rng).__name__}")
    keep_p = 1.0 - lora_config.dropout
    dropout = None if rng is None or keep_p == 1.0 else (rng, keep_p)
    return transformer(params, tokens, config, lora_hooks(lora["blocks"], lora_config.scale, dropout))


def transformer(params, tokens, config: GPTConfig, hooks: Hooks = BASE_HOOKS):
    """The computation behind ``forward``, inputs already validated. tokens (B, T) -> logits (B, T, V)."""
    x = hooks.embed(tokens, params)  # (B, T', d); T' = T unless a method adds positions
    for i, block in enumerate(params["blocks"]):
        x = hooks.enter_block(i, x)  # (B, T', d)
        a = attention(layer_norm(x, block["ln1"]["g"], block["ln1"]["b"], config.ln_eps), i, block, hooks, config)
        x = x + hooks.after_attention(i, a)  # (B, T', d)
        m = mlp(layer_norm(x, block["ln2"]["g"], block["ln2"]["b"], config.ln_eps), i, block, hooks)
        x = x + hooks.after_mlp(i, m)  # (B, T', d)
    x = hooks.before_head(layer_norm(x, params["ln_f"]["g"], params["ln_f"]["b"], config.ln_eps))  # (B, T, d)
    return linear(x, params["wte"])  # (B, T, V): output layer tied to the token embedding


def attention(x, i, block, hooks, config):
    """Causal self-attention: softmax(Q K^T/√d_h + mask) V W_o^T. x (B, T, d) -> (B, T, d)."""
    q = hooks.project(i, "wq", x, block["wq"])  # (B, T, d)
    k = hooks.project(i, "wk", x, block["wk"])  # (B, T, d)
    v = hooks.project(i, "wv", x, block["wv"])  # (B, T, d)
    o = causal_attention(q, k, v, config.n_head)  # (B, T, d)
    return hooks.project(i, "wo", o, block["wo"])  # (B, T, d)


def mlp(x, i, block, hooks):
    """Position-wise MLP: W_out GELU(W_in x). x (B, T, d) -> (B, T, d)."""
    h = gelu(hooks.project(i, "mlp_in", x, block["mlp_in"]))  # (B, T, d_mlp)
    return hooks.project(i, "mlp_out", h, block["mlp_out"])  # (B, T, d)
