"""FT and FT-top2: fine-tune every parameter, or only the last two blocks (Section 5.1, after Li & Liang, 2021).

FT trains the whole tree; its frozen part is empty. FT-top2 trains blocks L-2 and L-1 (their four matrices,
biases and two LayerNorms) and freezes the embeddings, the other blocks and the final LayerNorm ln_f.
"""

from __future__ import annotations

from ..model import BASE_HOOKS
from .base import Method, join, split


def block_count(config) -> int:
    """Parameters of one block: 4 d² + 2 d d_mlp (matrices) + 4 d + d_mlp + d (biases) + 4 d (two LayerNorms)."""
    d, m = config.d_model, config.d_mlp
    return 4 * d * d + 2 * d * m + 9 * d + m


def _ft_init(params, config, seed, options):
    return params, {}


def _ft_apply(trainable, frozen, config, options, batch, rng):
    return trainable, BASE_HOOKS


def _ft_count(config, options) -> int:
    """|Φ| = V d + context d + L (4 d² + 2 d d_mlp + 9 d + d_mlp) + 2 d (ln_f); wte is tied to the output."""
    d = config.d_model
    return config.vocab_size * d + config.context * d + config.n_layer * block_count(config) + 2 * d


FT = Method(
    name="ft", label="FT", trains="every parameter of the model", formula="|Φ| (the whole model)",
    file_holds="the whole fine-tuned parameter tree", defaults={},
    init=_ft_init, apply=_ft_apply, paper_count=_ft_count,
    task_model=lambda trainable, frozen, options: (trainable, None, None),
)


def _top_blocks(config) -> range:
    if config.n_layer < 2:
        raise ValueError(f"FT-top2 needs a model of at least 2 blocks, got n_layer={config.n_layer}")
    return range(config.n_layer - 2, config.n_layer)


def _top2_init(params, config, seed, options):
    top = set(_top_blocks(config))
    return split(params, lambda path: path[0] == "blocks" and path[1] in top)  # (last two blocks, the rest)


def _top2_apply(trainable, frozen, config, options, batch, rng):
    return join(trainable, frozen), BASE_HOOKS


FT_TOP2 = Method(
    name="ft_top2", label="FT-top2", trains="blocks L-2 and L-1 (matrices, biases, LayerNorms)",
    formula="2 × (4 d² + 2 d d_mlp + 9 d + d_mlp)  (= 2 × (12 d² + 13 d) when d_mlp = 4 d)",
    file_holds="the last two blocks' parameters (the other blocks are empty dicts)", defaults={},
    init=_top2_init, apply=_top2_apply,
    paper_count=lambda config, options: len(_top_blocks(config)) * block_count(config),
    task_model=lambda trainable, frozen, options: (join(trainable, frozen), None, None),
)
