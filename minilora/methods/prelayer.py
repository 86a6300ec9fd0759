"""PreLayer (prefix-layer tuning, Section 5.1): trainable activations for the virtual positions at every layer.

Same positions as PreEmbed (methods/virtual.py), but instead of only their embeddings, the input of every
block i = 0..L-1 at those positions is replaced by a trainable vector ("the activations computed from previous
layers are simply replaced by trainable ones"). Block 0's input is the embedding layer's output, so PreLayer
contains PreEmbed. |Θ| = L × d × (l_p + l_i). They start as the base model's activations for l_p + l_i real
tokens drawn from the seed.
"""

from __future__ import annotations

import numpy as np

from ..backend import to_device, to_host
from ..model import Hooks, transformer
from ..ops import embedding
from .base import Method
from .virtual import check_lengths, layout, place, real_positions, replacing, seeded_tokens


def _base_activations(params, config, tokens) -> np.ndarray:
    """The input of every block for ``tokens`` (1, n): (L, n, d)."""
    seen = []

    def record(i, x):
        seen.append(to_host(x)[0])
        return x

    transformer(params, to_device(tokens, like=params["wte"]), config, Hooks(enter_block=record))
    return np.stack(seen)  # (L, n, d)


def _init(params, config, seed, options):
    l_p, l_i = check_lengths("PreLayer", options)
    acts = _base_activations(params, config, seeded_tokens(seed, l_p + l_i, config.vocab_size))
    return {"virtual": to_device(acts.astype(params["wte"].dtype))}, params  # (L, l_p + l_i, d)


def _apply(trainable, frozen, config, options, batch, rng):
    if batch is None:
        raise ValueError("PreLayer needs the batch: the virtual tokens' layout depends on its length")
    l_p, l_i = check_lengths("PreLayer", options)
    src, out = layout("PreLayer", batch, l_p, l_i, config.context)
    keep = replacing(src, batch.x.shape[1])  # (B, T')
    virtual = trainable["virtual"]  # (L, l_p + l_i, d)

    def embed(tokens, params):
        x = place(embedding(tokens, params["wte"]), virtual[0], src)  # (B, T', d)
        return x + params["wpe"][:src.shape[1]]  # (B, T', d); the virtual columns are replaced next

    return frozen, Hooks(embed=embed, enter_block=lambda i, x: place(x, virtual[i], keep),
                         before_head=lambda x: real_positions(x, out))


PRELAYER = Method(
    name="prelayer", label="PreLayer", trains="the activations of l_p + l_i virtual positions at every block's input",
    formula="L × d × (l_p + l_i)", file_holds='{"virtual": (L, l_p + l_i, d)}: per block, prefix rows then infix',
    defaults={"l_p": 8, "l_i": 0}, init=_init, apply=_apply,
    paper_count=lambda config, options: config.n_layer * config.d_model * (options["l_p"] + options["l_i"]),
)
