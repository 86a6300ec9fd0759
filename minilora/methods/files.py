"""Saved files for every fine-tuning method: what rebuilds the adapted model on top of the base, and nothing of it.

    path = save_method("adapter_h.safetensors", setup, result.trainable)
    setup, trainable = load_method(path, params)          # params: the base the run started from
    setup.logits(trainable, batch)                        # bit for bit what the saved run computed

One safetensors file per run (written atomically, like every minilora file): the trainable tree under its tree
paths ("blocks.2.wq.B", "virtual", ...), plus the frozen parts the method owns rather than the base
(``Method.owned_frozen``: LoRA-FA's fixed random A, under "lora_A.blocks.2.wq.A"). Its metadata records the kind
"method", the method's name and options, the GPTConfig, the base's fingerprint and the minilora version, so
loading rebuilds the method on the base with ``build`` and checks every tensor's name, shape and dtype against
that fresh build before replacing its values with the file's.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt  # its metadata checks, shared by every minilora file
from ..backend import to_device
from ..checkpoint import FORMAT, FORMAT_VERSION, MISMATCH_HINT, NONFINITE_HINT, write_safetensors
from ..config import GPTConfig
from ..provenance import check_base, fingerprint
from ..tree import flatten, plain
from ..validate import check_finite, check_flat, check_params
from .base import Setup

KIND = "method"
"""The ``kind`` a method file records in its minilora metadata (adapters: "adapter", params: "params")."""


def save_method(path, setup: Setup, trainable, *, allow_nonfinite: bool = False) -> Path:
    """Write ``trainable`` (the tree a run of ``setup`` trained: TrainResult.trainable) to one safetensors file.

    The file holds that tree and the frozen parts ``setup``'s method owns (``Method.owned_frozen``), never a
    tensor of the base, with the method's name, options, GPTConfig and the base's fingerprint in its metadata.
    ``trainable`` must have the names, shapes and dtype of ``setup.trainable``. NaN/inf values are refused
    (naming the tensor; nothing is written) unless ``allow_nonfinite``. The save is atomic: on any failure
    (a full disk: ``checkpoint.SaveError``) the file that was at ``path`` is left as it was."""
    if not isinstance(setup, Setup):
        raise TypeError(f"setup must be a minilora.methods Setup (METHODS[name].build(...)), "
                        f"got {type(setup).__name__}")
    flat = flatten(plain(trainable))
    check_flat(flat, _shapes(setup.trainable), f"trainable tree for {setup.method.name!r}")
    _check_dtypes(flat, setup.trainable, f"trainable tree for {setup.method.name!r}", TypeError)
    owned = _owned_flat(setup.method, setup.frozen)
    clash = sorted(set(owned) & set(flat))
    if clash:
        raise ValueError(f"method {setup.method.name!r}: its owned frozen tensors {clash} have trainable names")
    flat.update(owned)
    ckpt._check_finite_to_save(flat, f"method file {path}", allow_nonfinite)
    from .. import __version__

    info = {"kind": KIND, "version": FORMAT_VERSION, "method": setup.method.name, "options": setup.json_options(),
            "config": setup.config.to_dict(), "minilora_version": __version__,
            **ckpt._provenance(None if setup.base is None else fingerprint(setup.base))}
    return write_safetensors(path, flat, {FORMAT: json.dumps(info)})


def load_method(path, params, config: GPTConfig | None = None, *, allow_base_mismatch: bool = False,
                allow_nonfinite: bool = False) -> tuple[Setup, dict]:
    """(setup, trainable) of a file written by ``save_method``, rebuilt on the base parameters ``params``.

    Read without pickle. The file must be a minilora method file of a known method whose options that method
    accepts; with ``config`` given, the file's GPTConfig must equal it, and ``params`` must fit the file's config.
    Every tensor's name, shape and dtype is checked against a fresh ``build`` of the method on ``params``
    (missing, unexpected and wrong-shaped tensors are named), and its values must be finite unless
    ``allow_nonfinite``. A file that records another base raises ``provenance.BaseMismatch`` unless
    ``allow_base_mismatch``. Every problem with the file is a ValueError naming the file and the field or tensor.

    The returned setup holds the file's values: ``setup.trainable is trainable`` (so ``train(method=setup)``
    continues from them) and its frozen tree holds the file's owned frozen parts (LoRA-FA's A), so
    ``setup.logits(trainable, batch)`` equals the saved run's bit for bit."""
    from . import METHODS

    arrays, info = ckpt._read_minilora(path, KIND)
    method = _method_field(info, path, METHODS)
    options = ckpt._field(info, "options", path, dict)
    file_config = ckpt._config_field(info, "config", GPTConfig, path)
    if config is not None and config != file_config:
        raise ValueError(f"method file {path} was saved for {file_config}, which differs from the config given: "
                         f"{config}")
    try:
        check_params(params, file_config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"method file {path} was saved for a base with {file_config}; the params given do not "
                         f"fit it: {err}") from None
    check_base(ckpt._base_field(info, path), fingerprint(params), f"method file {path}", allow_base_mismatch,
               MISMATCH_HINT)
    try:
        fresh = method.build(params, file_config, seed=0, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: metadata field 'options' ({json.dumps(options)[:80]}): {err}") from None
    owned = {k: fresh.frozen[k] for k in method.owned_frozen}
    template = {**fresh.trainable, **owned}  # what the file must hold, as built on this base
    ckpt._check_file_arrays(arrays, _shapes(template), f"method file {path}")
    _check_dtypes(arrays, template, f"method file {path}", ValueError)
    if not allow_nonfinite:
        check_finite(arrays, f"method file {path}", NONFINITE_HINT)
    trainable = _filled(fresh.trainable, arrays, "")
    frozen = {**fresh.frozen, **{k: _filled(v, arrays, k) for k, v in owned.items()}} if owned else fresh.frozen
    return replace(fresh, trainable=trainable, frozen=frozen), trainable


def _method_field(info: dict, path, methods: dict):
    name = ckpt._field(info, "method", path, str)
    if name not in methods:
        raise ValueError(f"{path}: metadata field 'method' is {name!r}, which is not a minilora method; "
                         f"known methods: {sorted(methods)}")
    return methods[name]


def _owned_flat(method, frozen) -> dict:
    """{"lora_A.blocks.0.wq.A": array, ...}: the frozen parts the method owns, under their frozen-tree paths."""
    out = {}
    for key in method.owned_frozen:
        out.update(flatten(plain(frozen[key]), prefix=key))
    return out


def _shapes(tree) -> dict:
    return {k: tuple(np.shape(a)) for k, a in flatten(plain(tree)).items()}


def _check_dtypes(flat: dict, template, what: str, error) -> None:
    """Each array of ``flat`` must have the dtype of the template's leaf of the same name (the base's dtype)."""
    for key, a in flatten(plain(template)).items():
        if str(flat[key].dtype) != str(a.dtype):
            raise error(f"{what}: {key} has dtype {flat[key].dtype}, expected {a.dtype} (the method's, as built "
                        "on this base)")


def _filled(template, arrays: dict, path: str):
    """``template``'s structure (dicts, lists, empty blocks included) with the leaf at each path from ``arrays``."""
    if isinstance(template, dict):
        return {k: _filled(v, arrays, f"{path}.{k}" if path else k) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [_filled(v, arrays, f"{path}.{i}" if path else str(i)) for i, v in enumerate(template)]
    return to_device(arrays[path], like=template)
