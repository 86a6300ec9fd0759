"""AdapterH (Houlsby et al., 2019): an adapter layer after the attention module and after the MLP of every block,
between the module's output and the residual connection (Section 5.1):

    x ← x + adapter(attention(LN1(x)))        x ← x + adapter(MLP(LN2(x)))

Trainable: the adapters only; L̂_Adpt = 2 L adapter layers and L̂_LN = 0 trainable LayerNorms, so
|Θ| = 2 L (2 d r + r + d). (Houlsby et al. also tune the block LayerNorms; here, as in the paper's formula
for AdapterH, they stay frozen.)
"""

from __future__ import annotations

from ..backend import to_device
from ..model import Hooks
from .base import Method
from .bottleneck import bottleneck, bottleneck_count, check_rank, init_bottleneck, seeded


def _init(params, config, seed, options):
    r, rng = check_rank("AdapterH", options["r"], config), seeded(seed)
    d, dtype = config.d_model, params["wte"].dtype
    blocks = [{"attn": init_bottleneck(rng, d, r, dtype), "mlp": init_bottleneck(rng, d, r, dtype)}
              for _ in range(config.n_layer)]
    return to_device({"blocks": blocks}, like=params["wte"]), params


def _apply(trainable, frozen, config, options, batch, rng):
    blocks = trainable["blocks"]
    return frozen, Hooks(after_attention=lambda i, h: bottleneck(h, blocks[i]["attn"]),
                         after_mlp=lambda i, h: bottleneck(h, blocks[i]["mlp"]))


ADAPTER_H = Method(
    name="adapter_h", label="AdapterH", trains="two bottleneck adapters per block (after attention, after the MLP)",
    formula="L̂_Adpt (2 d r + r + d) + 2 L̂_LN d with L̂_Adpt = 2 L, L̂_LN = 0",
    file_holds='{"blocks": [{"attn"|"mlp": {"down": {"W", "b"}, "up": {"W", "b"}}}, ...]}', defaults={"r": 8},
    init=_init, apply=_apply,
    paper_count=lambda config, options: 2 * config.n_layer * bottleneck_count(config.d_model, options["r"]),
)
