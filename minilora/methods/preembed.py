"""PreEmbed (prefix-embedding tuning, Section 5.1): l_p + l_i virtual tokens with trainable word embeddings.

The virtual tokens are inserted among the input tokens (layout in methods/virtual.py: prefix before the prompt,
infix between prompt and answer) and embedded like real tokens, position embedding included; nothing else
changes. |Θ| = d × (l_p + l_i). They start as the embeddings of l_p + l_i real tokens drawn from the seed.
"""

from __future__ import annotations

from ..backend import to_device, to_host
from ..model import Hooks
from ..ops import embedding
from .base import Method
from .virtual import check_lengths, layout, place, real_positions, seeded_tokens


def _init(params, config, seed, options):
    l_p, l_i = check_lengths("PreEmbed", options)
    ids = seeded_tokens(seed, l_p + l_i, config.vocab_size)[0]  # (l_p + l_i,)
    return {"virtual": to_device(to_host(params["wte"])[ids].copy())}, params  # (l_p + l_i, d)


def _apply(trainable, frozen, config, options, batch, rng):
    if batch is None:
        raise ValueError("PreEmbed needs the batch: the virtual tokens' layout depends on its length")
    l_p, l_i = check_lengths("PreEmbed", options)
    src, out = layout("PreEmbed", batch, l_p, l_i, config.context)

    def embed(tokens, params):
        x = place(embedding(tokens, params["wte"]), trainable["virtual"], src)  # (B, T', d)
        return x + params["wpe"][:src.shape[1]]  # (B, T', d)

    return frozen, Hooks(embed=embed, before_head=lambda x: real_positions(x, out))


PREEMBED = Method(
    name="preembed", label="PreEmbed", trains="the word embeddings of l_p prefix + l_i infix virtual tokens",
    formula="d × (l_p + l_i)", file_holds='{"virtual": (l_p + l_i, d)}: prefix rows first, then infix rows',
    defaults={"l_p": 8, "l_i": 0}, init=_init, apply=_apply,
    paper_count=lambda config, options: config.d_model * (options["l_p"] + options["l_i"]),
)
