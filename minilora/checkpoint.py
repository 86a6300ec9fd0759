"""Checkpoints: arrays in safetensors, configs as JSON (in the file's metadata), written atomically.

Nothing here unpickles. A file is read as bytes and parsed by safetensors; a pickle, a torch ``.bin``/``.pt``
zip or an ``.npy`` file is recognised by its first bytes and refused with a message that says so. Loading
params and adapters validates keys, shapes and dtypes against the config before anything is returned; a
training state is validated against the shapes and run identity its caller passes (``train()`` passes both).
Every write goes to a temporary file in the same folder, is flushed to disk, and is renamed over the target in
one step, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy

from .backend import to_device, to_numpy
from .config import GPTConfig
from .lora import LoraConfig
from .tree import flatten, unflatten
from .validate import check_flat, expected_lora_shapes, expected_param_shapes

FORMAT = "minilora"
FORMAT_VERSION = 1


# ---- atomic writes -----------------------------------------------------------------------------------------

def atomic_write_bytes(path, data: bytes) -> Path:
    """Write bytes to path atomically: temp file in the same folder, fsync, rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0o600; a saved file gets the mode open() would give it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _file_mode(path: Path) -> int:
    """The existing file's mode when overwriting, else 0o666 minus the umask (what open(path, "wb") gives)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_json(path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


# ---- safetensors without pickle ---------------------------------------------------------------------------

_PICKLE_SIGNS = {
    b"\x80": "a Python pickle",
    b"PK\x03\x04": "a zip archive (torch.save / pytorch_model.bin), which holds pickles",
    b"\x93NUMPY": "a NumPy .npy file",
}


def read_safetensors(path) -> tuple[dict, dict]:
    """(arrays by name, metadata) of a safetensors file, refusing anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a file")
    raw = path.read_bytes()
    # A safetensors file starts with its header's length (u64, little-endian) and then the JSON header. Only a
    # file that is not shaped like that is examined for what else it might be (a pickle's first byte, 0x80,
    # is also a legal first byte of a header length).
    header_len = struct.unpack("<Q", raw[:8])[0] if len(raw) >= 8 else None
    if header_len is None or header_len > len(raw) - 8 or raw[8:9] != b"{":
        for sign, what in _PICKLE_SIGNS.items():
            if raw.startswith(sign):
                raise ValueError(
                    f"{path} is {what}; loading it would need pickle, which minilora never uses. "
                    "Convert it to safetensors first (safetensors.torch.save_file)."
                )
        raise ValueError(f"{path} is truncated or not a safetensors file (no valid header in {len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + header_len])
        arrays = safetensors.numpy.load(raw)
    except Exception as err:  # safetensors reports a short data section, overlapping offsets, bad JSON, ...
        raise ValueError(f"{path} is truncated or corrupt: {err}") from None
    metadata = header.get("__metadata__") or {}
    return arrays, metadata


def write_safetensors(path, flat: dict, metadata: dict) -> Path:
    """Atomically write {name: array} with string metadata."""
    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in flat.items()}
    return atomic_write_bytes(path, safetensors.numpy.save(arrays, metadata={k: str(v) for k, v in metadata.items()}))


def _read_minilora(path, kind: str) -> tuple[dict, dict]:
    arrays, metadata = read_safetensors(path)
    if FORMAT not in metadata:
        raise ValueError(
            f"{path} is a safetensors file but not a minilora {kind} (no '{FORMAT}' metadata). "
            "PEFT adapters and transformers checkpoints have their own readers."
        )
    try:
        info = json.loads(metadata[FORMAT])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the '{FORMAT}' metadata is not valid JSON: {err}") from None
    if info.get("kind") != kind:
        raise ValueError(f"{path} holds a minilora {info.get('kind')!r}, expected a {kind!r}")
    return arrays, info


def _check_file_arrays(arrays: dict, expected: dict, what: str) -> None:
    """check_flat for a file: every problem with a file's contents is a ValueError (a bad file, not a bad call)."""
    try:
        check_flat(arrays, expected, what)
    except TypeError as err:
        raise ValueError(str(err)) from None


# ---- base parameters ------------------------------------------------------------------------------------

def save_params(path, params, config: GPTConfig, record: dict | None = None) -> Path:
    flat = flatten(params)
    check_flat(flat, expected_param_shapes(config), "params")
    info = {"kind": "params", "version": FORMAT_VERSION, "config": config.to_dict(), "record": record or {}}
    return write_safetensors(path, flat, {FORMAT: json.dumps(info)})


def load_params(path, config: GPTConfig | None = None) -> tuple[dict, GPTConfig]:
    """(params, config). With ``config`` given, the file's must equal it."""
    arrays, info = _read_minilora(path, "params")
    file_config = GPTConfig.from_dict(info["config"])
    if config is not None and config != file_config:
        raise ValueError(f"{path} was saved with {file_config}, which differs from the config given: {config}")
    _check_file_arrays(arrays, expected_param_shapes(file_config), f"params in {path}")
    return to_device(unflatten(arrays)), file_config  # read on the host, placed on the selected backend


def read_record(path) -> dict:
    return _read_minilora(path, "params")[1].get("record", {})


# ---- adapters -------------------------------------------------------------------------------------------

def save_adapter(path, lora, lora_config: LoraConfig, config: GPTConfig) -> Path:
    """Adapter only: A and B for each adapted matrix, with the LoraConfig and the base's GPTConfig."""
    flat = flatten(lora)
    check_flat(flat, expected_lora_shapes(config, lora_config), "lora")
    info = {"kind": "adapter", "version": FORMAT_VERSION, "lora_config": lora_config.to_dict(),
            "config": config.to_dict()}
    return write_safetensors(path, flat, {FORMAT: json.dumps(info)})


def load_adapter(path, config: GPTConfig) -> tuple[dict, LoraConfig]:
    """(lora, lora_config), checked against the base model's config."""
    arrays, info = _read_minilora(path, "adapter")
    lora_config = LoraConfig.from_dict(info["lora_config"])
    saved_for = GPTConfig.from_dict(info["config"])
    if saved_for != config:
        raise ValueError(f"adapter {path} was trained for {saved_for}, not for this base model {config}")
    _check_file_arrays(arrays, expected_lora_shapes(config, lora_config), f"adapter {path}")
    return to_device(unflatten(arrays, n_blocks=config.n_layer)), lora_config


# ---- training state (resume) ----------------------------------------------------------------------------

def save_train_state(path, trainable, opt_state: dict, meta: dict) -> Path:
    """The trainable tree, AdamW's m and v, and everything needed to resume (step, configs, history)."""
    flat = {}
    for prefix, tree in (("params", trainable), ("m", opt_state["m"]), ("v", opt_state["v"])):
        flat.update({f"{prefix}.{k}": v for k, v in flatten(tree).items()})
    info = {"kind": "train_state", "version": FORMAT_VERSION, "step": opt_state["step"], **meta}
    return write_safetensors(path, flat, {FORMAT: json.dumps(info)})


def load_train_state(path, n_blocks: int, expected: dict | None = None,
                     same_run: dict | None = None) -> tuple[dict, dict, dict]:
    """(trainable, opt_state, meta) as saved by save_train_state.

    same_run: metadata the state must have been saved with (method, configs, task); checked first.
    expected: {path: shape} of the trainable tree (validate.expected_lora_shapes or expected_param_shapes); when
    given, the parameters and AdamW's m and v are each checked against it, like any other file.
    """
    arrays, info = _read_minilora(path, "train_state")
    differ = [k for k in (same_run or {}) if info.get(k) != same_run[k]]
    if differ:
        raise ValueError(f"resume: {path} was saved by a different run: {', '.join(differ)} differ "
                         "(a resumed run must continue the same configuration)")
    parts = {"params": {}, "m": {}, "v": {}}
    for key, value in arrays.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise ValueError(f"{path}: unexpected array {key!r} in a training state")
        parts[prefix][rest] = value
    if expected is not None:
        for prefix, flat in parts.items():
            _check_file_arrays(flat, expected, f"{prefix} in training state {path}")
    trees = {p: to_device(unflatten(flat, n_blocks=n_blocks)) for p, flat in parts.items()}
    return trees["params"], {"step": int(info["step"]), "m": trees["m"], "v": trees["v"]}, info


# ---- the shipped base checkpoint ------------------------------------------------------------------------

ASSETS = Path(__file__).parent / "assets"
BASE_CHECKPOINT = ASSETS / "base.safetensors"
BASE_RECORD = ASSETS / "base.json"


def load_base() -> tuple[dict, GPTConfig]:
    """The base model that ships inside the package (made by ``minilora pretrain``; see assets/base.json)."""
    if not BASE_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"the shipped base checkpoint {BASE_CHECKPOINT} is missing; recreate it with 'minilora pretrain'"
        )
    return load_params(BASE_CHECKPOINT)
