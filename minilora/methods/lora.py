"""LoRA (Hu et al., 2022) and LoRA+ (Hayou et al., 2024) in the methods' interface: the package's own LoRA
(minilora.lora, minilora.model.lora_hooks), unchanged.

Options are LoraConfig's fields (r, alpha, targets, dropout, use_rslora, init, layers). |Θ| = 2 L̂ d r with
L̂ the number of adapted matrices (len(layers) × len(targets)); the formula holds for square matrices
(wq, wk, wv, wo), and for others the count is Σ r (d_in + d_out).

LoRA+ trains the same A and B, but B's learning rate is ``ratio`` × A's (default 16, the LoRA+ paper's
recommendation for its setting): a per-leaf multiplier the optimizer applies (AdamW.update's lr_scale).
"""

from __future__ import annotations

import dataclasses

from ..config import real_number
from ..lora import LoraConfig, init_lora
from ..model import lora_hooks
from .base import Method

LORA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LoraConfig)}


def lora_config_of(options) -> LoraConfig:
    return LoraConfig(**{k: options[k] for k in LORA_DEFAULTS})


def dropout_of(lora_config: LoraConfig, rng):
    """lora_hooks' dropout argument: None when off (no rng, or dropout 0), else (rng, keep probability)."""
    keep_p = 1.0 - lora_config.dropout
    return None if rng is None or keep_p == 1.0 else (rng, keep_p)


def _init(params, config, seed, options):
    return init_lora(config, lora_config_of(options), seed, dtype=params["wte"].dtype), params


def _apply(trainable, frozen, config, options, batch, rng):
    lc = lora_config_of(options)
    return frozen, lora_hooks(trainable["blocks"], lc.scale, dropout_of(lc, rng))


def paper_count(config, options) -> int:
    """2 L̂ d r."""
    lc = lora_config_of(options)
    return 2 * len(lc.adapted_layers(config)) * len(lc.targets) * config.d_model * lc.r


def _task_model(trainable, frozen, options):
    return frozen, trainable, lora_config_of(options)


LORA = Method(
    name="lora", label="LoRA", trains="A and B of every adapted matrix",
    formula="2 L̂ d r, L̂ = adapted matrices (layers × targets)",
    file_holds='{"blocks": [{target: {"A": (r, d_in), "B": (d_out, r)}}, ...]} (minilora.lora\'s adapter)',
    defaults=dict(LORA_DEFAULTS), init=_init, apply=_apply, paper_count=paper_count, task_model=_task_model,
)


def _plus_lr_scale(trainable, options):
    """1 for every A, ``ratio`` for every B."""
    ratio = real_number("LoRA+", "ratio", options["ratio"], more_than=0)
    return {"blocks": [{t: {"A": 1.0, "B": ratio} for t in block} for block in trainable["blocks"]]}


def _plus_init(params, config, seed, options):
    real_number("LoRA+", "ratio", options["ratio"], more_than=0)  # a bad ratio fails here, before training
    return _init(params, config, seed, options)


LORA_PLUS = dataclasses.replace(
    LORA, name="lora_plus", label="LoRA+", trains="A and B of every adapted matrix; B at ratio × A's rate",
    defaults={**LORA_DEFAULTS, "ratio": 16.0}, init=_plus_init, lr_scale=_plus_lr_scale,
)
