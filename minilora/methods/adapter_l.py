"""AdapterL (Lin et al., 2020): one adapter layer per block, after the MLP module and after a LayerNorm
(Section 5.1). Its input is a new, trainable LayerNorm of the MLP's output; its residual is that output:

    m = MLP(LN2(x));    x ← x + m + W_up GELU(W_down LN_a(m) + b_down) + b_up

Trainable: the adapters and their LayerNorms; L̂_Adpt = L adapter layers and L̂_LN = L trainable LayerNorms
(γ = 1, β = 0 at init), so |Θ| = L (2 d r + r + d) + 2 L d.
"""

from __future__ import annotations

import numpy as np

from ..backend import to_device
from ..model import Hooks
from ..ops import layer_norm
from .base import Method
from .bottleneck import bottleneck, bottleneck_count, check_rank, init_bottleneck, seeded


def _init(params, config, seed, options):
    r, rng = check_rank("AdapterL", options["r"], config), seeded(seed)
    d, dtype = config.d_model, params["wte"].dtype
    blocks = [{**init_bottleneck(rng, d, r, dtype), "ln": {"g": np.ones(d, dtype), "b": np.zeros(d, dtype)}}
              for _ in range(config.n_layer)]
    return to_device({"blocks": blocks}, like=params["wte"]), params


def _apply(trainable, frozen, config, options, batch, rng):
    blocks = trainable["blocks"]

    def after_mlp(i, m):
        a = blocks[i]
        return bottleneck(m, a, layer_norm(m, a["ln"]["g"], a["ln"]["b"], config.ln_eps))  # (B, T, d)

    return frozen, Hooks(after_mlp=after_mlp)


ADAPTER_L = Method(
    name="adapter_l", label="AdapterL", trains="one adapter per block after the MLP, with its own LayerNorm",
    formula="L̂_Adpt (2 d r + r + d) + 2 L̂_LN d with L̂_Adpt = L, L̂_LN = L",
    file_holds='{"blocks": [{"down": {"W", "b"}, "up": {"W", "b"}, "ln": {"g", "b"}}, ...]}', defaults={"r": 8},
    init=_init, apply=_apply,
    paper_count=lambda config, options: (config.n_layer * bottleneck_count(config.d_model, options["r"])
                                         + 2 * config.n_layer * config.d_model),
)
