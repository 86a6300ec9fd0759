"""BitFit (Ben Zaken et al., 2021): train the bias vectors only.

The biases are the leaves named "b" of the parameter tree (init_params' layout): the bias of each of the six
matrices of a block, the β of its two LayerNorms, and the β of ln_f. Everything else (the matrices, the
LayerNorm gains, the embeddings) is frozen.
"""

from __future__ import annotations

from ..model import BASE_HOOKS
from .base import Method, join, split


def _is_bias(path: tuple) -> bool:
    """A bias vector: {"W", "b"} of a matrix or {"g", "b"} of a LayerNorm (init_params' tree)."""
    return path[-1] == "b"


def _init(params, config, seed, options):
    return split(params, _is_bias)  # (biases, the rest)


def _apply(trainable, frozen, config, options, batch, rng):
    return join(trainable, frozen), BASE_HOOKS


def _count(config, options) -> int:
    """L × (4 d + d_mlp + d + 2 d) + d: per block wq, wk, wv, wo (d each), mlp_in (d_mlp), mlp_out (d), two
    LayerNorm β (d each); plus ln_f's β."""
    d = config.d_model
    return config.n_layer * (7 * d + config.d_mlp) + d


BITFIT = Method(
    name="bitfit", label="BitFit", trains="every bias vector (matrix biases and LayerNorm β)",
    formula="L × (7 d + d_mlp) + d", file_holds="the bias vectors, in the parameter tree's layout", defaults={},
    init=_init, apply=_apply, paper_count=_count,
    task_model=lambda trainable, frozen, options: (join(trainable, frozen), None, None),
)
