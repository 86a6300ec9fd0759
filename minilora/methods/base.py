"""What every fine-tuning method is: a uniform object the training loop, ``minilora compare`` and the notebooks use.

A method splits the base parameters into a trainable tree and a frozen tree once, at ``init``. Training
differentiates only the trainable tree; the frozen tree is passed to the objective untraced (that is what
"frozen" means here: no gradient is ever formed for it, and no mask hides one). ``apply`` turns the two trees
back into a model the transformer runs: a parameter tree and a ``Hooks`` value.

    setup = METHODS["adapter_h"].build(params, config, seed=0, r=8)
    params_to_run, hooks = setup.model(setup.trainable, batch)    # transformer(params_to_run, x, config, hooks)
    setup.trainable_count() == setup.paper_count()                # the paper's formula for |Θ|
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from autograd.tracer import getval

from ..lora import count_params


@dataclass(frozen=True)
class Method:
    """One fine-tuning method, described once; ``build`` makes a run of it on a given base model."""

    name: str
    """Registry key and file name: "ft", "ft_top2", "bitfit", "preembed", "prelayer", "adapter_h",
    "adapter_l", "lora", "lora_plus", "lora_fa"."""
    label: str
    """The paper's name (Section 5.1): FT, FT-top2, BitFit, PreEmbed, PreLayer, AdapterH, AdapterL, LoRA, ..."""
    trains: str
    """Which parameters it trains, in words."""
    formula: str
    """The paper's trainable-parameter count |Θ|, as text (L̂ and the like defined for this method)."""
    file_holds: str
    """What a saved file of this method holds (methods.files.save_method: the trainable tree, and the frozen
    parts named in ``owned_frozen``; the base is never saved again)."""
    defaults: dict
    """Its options and their defaults; ``build`` accepts exactly these keyword arguments."""
    init: Callable
    """init(params, config, seed, options) -> (trainable, frozen): the split, fresh trainable values drawn
    from ``seed``. Neither tree shares a changed array with ``params``; ``params`` is never modified."""
    apply: Callable
    """apply(trainable, frozen, config, options, batch, rng) -> (params, Hooks): the model to run.
    ``batch`` (a tasks.Batch, or None) is read only by methods whose layout depends on it (the infix of
    PreEmbed / PreLayer); ``rng`` switches LoRA dropout on (None: off)."""
    paper_count: Callable
    """paper_count(config, options) -> int: |Θ| by the paper's formula."""
    lr_scale: Callable | None = None
    """lr_scale(trainable, options) -> tree of per-leaf learning-rate multipliers (LoRA+), or None."""
    task_model: Callable | None = None
    """task_model(trainable, frozen, options) -> (params, lora, lora_config) for ``task.evaluate``, when the
    method can be written as base parameters (and a LoRA adapter); None for methods that need hooks the
    tasks' evaluate does not take (adapters, prefix tuning)."""
    owned_frozen: tuple = ()
    """Keys of the frozen tree that the method owns rather than the base (drawn at ``init``, never trained):
    a saved file (methods.files.save_method) holds them beside the trainable tree, under their frozen-tree
    paths, so loading does not depend on drawing them again. LoRA-FA: ("lora_A",). Empty for every method
    whose frozen tree is (a part of) the base."""

    def options(self, **given) -> dict:
        """The defaults updated with ``given``; an unknown option is an error that lists the known ones."""
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown option(s) {unknown}; its options are "
                             f"{sorted(self.defaults) or 'none'}")
        return {**self.defaults, **given}

    def build(self, params, config, seed: int = 0, **options) -> "Setup":
        from ..config import GPTConfig
        from ..validate import check_params

        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        check_params(params, config)  # the base must have this config's shapes
        opts = self.options(**options)
        trainable, frozen = self.init(params, config, seed, opts)
        return Setup(self, config, opts, trainable, frozen, params)


@dataclass(frozen=True, eq=False)
class Setup:
    """A method built on one base model: its options, its trainable tree (the starting point) and frozen tree.
    (Compared by identity: its trees hold arrays.)"""

    method: Method
    config: object
    options: dict
    trainable: dict
    frozen: dict = field(repr=False)
    base: dict = field(repr=False, default=None)
    """The parameter tree it was built on (train() checks that it is given the same one)."""

    def model(self, trainable, batch=None, rng=None):
        """(params, Hooks) of the adapted model with ``trainable`` in place of the starting values."""
        return self.method.apply(trainable, self.frozen, self.config, self.options, batch, rng)

    def logits(self, trainable, batch, rng=None):
        """The adapted model's next-token logits for batch.x (B, T) -> (B, T, V)."""
        from ..model import transformer

        params, hooks = self.model(trainable, batch, rng)
        return transformer(params, batch.x, self.config, hooks)

    def trainable_count(self) -> int:
        return count_params(self.trainable)

    def paper_count(self) -> int:
        return self.method.paper_count(self.config, self.options)

    def lr_scale(self, trainable):
        return None if self.method.lr_scale is None else self.method.lr_scale(trainable, self.options)

    def json_options(self) -> dict:
        """The options as JSON gives them back (tuples become lists): what a checkpoint records."""
        return json.loads(json.dumps(self.options))


# ---- splitting a parameter tree in two, and joining the halves -----------------------------------------------

def split(tree, chosen: Callable, path: tuple = ()):
    """(the leaves for which chosen(path) is true, the others), both with ``tree``'s structure.

    ``path`` is the tuple of keys and list indices from the root ("blocks", 2, "wq", "b"). Lists keep their
    length (an unchosen block becomes an empty dict), so the two halves zip back together with ``join``."""
    if isinstance(tree, dict):
        halves = {k: split(v, chosen, path + (k,)) for k, v in tree.items()}
        return ({k: a for k, (a, _) in halves.items() if a is not None},
                {k: b for k, (_, b) in halves.items() if b is not None})
    if isinstance(tree, list):
        halves = [split(v, chosen, path + (i,)) for i, v in enumerate(tree)]
        return [{} if a is None else a for a, _ in halves], [{} if b is None else b for _, b in halves]
    return (tree, None) if chosen(path) else (None, tree)


def join(a, b):
    """The tree holding the leaves of both ``a`` and ``b`` (disjoint halves from ``split``).

    ``a`` may be traced: autograd boxes a dict or list argument as a whole, so the structure is read from the
    values under the boxes and the elements are taken from ``a`` itself (keeping them traced)."""
    va, vb = getval(a), getval(b)
    if isinstance(va, dict) and isinstance(vb, dict):
        keys = list(vb) + [k for k in va if k not in vb]
        return {k: join(a[k], b[k]) if k in va and k in vb else (a[k] if k in va else b[k]) for k in keys}
    if isinstance(va, list) and isinstance(vb, list):
        if len(va) != len(vb):
            raise ValueError(f"join: lists of different lengths {len(va)} and {len(vb)}")
        return [join(a[i], b[i]) for i in range(len(va))]
    raise ValueError("join: the two trees share a leaf; they must be the halves of one split")
