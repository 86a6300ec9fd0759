"""Checkpoints: arrays in safetensors, configs as JSON (in the file's metadata), written atomically.

Nothing here unpickles. A file is read as bytes and parsed by safetensors; a pickle, a torch ``.bin``/``.pt``
zip or an ``.npy`` file is recognised by its first bytes and refused with a message that says so. Loading
params and adapters validates keys, shapes, dtypes and finiteness against the config before anything is
returned; a training state is validated against the shapes and run identity its caller passes (``train()``
passes both). Every problem with a file's contents (its metadata included) is a ValueError naming the file and
the field or tensor.

Every write goes to a temporary file in the same folder (``.NAME.minilora-HOST-PID-XXXX.tmp``), is flushed to
disk, renamed over the target in one step, and the folder is flushed too, so a crash leaves either the old file
or the new one, never half of one, and a power loss right after "saved" cannot bring the old one back. A later
save of the same target removes temporaries whose writer process is gone (a save killed with SIGKILL).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import struct
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy

from .backend import to_device, to_numpy
from .config import GPTConfig
from .lora import LoraConfig
from .provenance import as_fingerprint, check_base, fingerprint
from .tree import flatten, unflatten
from .validate import check_finite, check_flat, expected_lora_shapes, expected_param_shapes

FORMAT = "minilora"
FORMAT_VERSION = 1
NONFINITE_HINT = "pass allow_nonfinite=True (command line: --allow-nonfinite) to load it anyway, e.g. to inspect it"
MISMATCH_HINT = "pass allow_base_mismatch=True (command line: --allow-base-mismatch) to use it anyway"


class SaveError(OSError):
    """A save failed (disk full, no permission, ...): the message names the file; the old file is unchanged.
    ``errno`` is the underlying error's."""


# ---- atomic writes -----------------------------------------------------------------------------------------

def atomic_write_bytes(path, data: bytes) -> Path:
    """Write bytes to path atomically: temp file in the same folder, fsync, rename over the target, fsync the
    folder. On any error the temporary file is removed and the previous file (if any) is left as it was."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory (a file name is needed here)")
    existed = path.exists()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0o600; a saved file gets the mode open() would give it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as err:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(err, OSError) and not isinstance(err, SaveError):
            kept = "the existing file is unchanged" if existed else "nothing was written"
            failure = SaveError(f"could not write {path}: {err.strerror or err}; {kept}")
            failure.errno = err.errno
            raise failure from err
        raise
    try:
        _fsync_folder(path.parent)
    except OSError as err:
        failure = SaveError(f"wrote {path} but could not flush its folder to disk: {err.strerror or err}")
        failure.errno = err.errno
        raise failure from err
    return path


def _host_tag() -> str:
    """8 hex digits of the host name: a temporary file's writer pid only means something on its own host."""
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.minilora-{_host_tag()}-{os.getpid()}-"


def _remove_stale_temporaries(path: Path) -> None:
    """Delete this target's temporary files left by writers (on this host) that no longer run."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.minilora-([0-9a-f]{{8}})-(\d+)-[A-Za-z0-9_]+\.tmp")
    host = _host_tag()
    for entry in os.scandir(path.parent):
        m = pattern.fullmatch(entry.name)
        if m and m.group(1) == host and not _process_alive(int(m.group(2))):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:  # another writer removed it first
                pass


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing the same target
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # it exists (someone else's), or we cannot tell: keep its file
    return True


def _fsync_folder(folder: Path) -> None:
    """Flush the folder's entry for the renamed file to disk (where the OS lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Windows and some file systems do not open folders; nothing more can be done there
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _file_mode(path: Path) -> int:
    """The existing file's mode when overwriting, else 0o666 minus the umask (what open(path, "wb") gives)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_json(path, obj) -> Path:
    """Write obj as indented, key-sorted JSON with atomic_write_bytes (the same guarantees)."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


# ---- safetensors without pickle ---------------------------------------------------------------------------

_PICKLE_SIGNS = {
    b"\x80": "a Python pickle",
    b"PK\x03\x04": "a zip archive (torch.save / pytorch_model.bin), which holds pickles",
    b"\x93NUMPY": "a NumPy .npy file",
}


# dtypes safetensors.numpy can hand back as numpy arrays; minilora's own files hold F16/F32/F64 only.
NUMPY_DTYPES = ("F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL")


def read_safetensors(path) -> tuple[dict, dict]:
    """(arrays by name, metadata) of a safetensors file, refusing anything that is not one."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"path {str(path)!r} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a file")
    raw = path.read_bytes()
    header = _header(raw, path)
    metadata = _metadata(header, path)
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) and name != "__metadata__" else None
        if isinstance(dtype, str) and dtype not in NUMPY_DTYPES:
            raise ValueError(f"{path}: dtype {dtype} is not supported by minilora checkpoints (tensor {name!r}; "
                             "they hold F16, F32 or F64 tensors: convert the file, e.g. to float32)")
    try:
        arrays = safetensors.numpy.load(raw)
    except Exception as err:  # safetensors reports a short data section, overlapping offsets, ...
        raise ValueError(f"{path} is truncated or corrupt: {err}") from None
    return arrays, metadata


def _header(raw: bytes, path: Path) -> dict:
    """The JSON header of a safetensors file's bytes, or a ValueError saying what the bytes are instead."""
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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is truncated or corrupt: its header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is corrupt: its header is a JSON {type(header).__name__}, not an object")
    return header


def _metadata(header: dict, path) -> dict:
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: the safetensors '__metadata__' must be an object, got {type(metadata).__name__}")
    return metadata


def write_safetensors(path, flat: dict, metadata: dict) -> Path:
    """Atomically write {name: array} with string metadata."""
    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in flat.items()}
    return atomic_write_bytes(path, safetensors.numpy.save(arrays, metadata={k: str(v) for k, v in metadata.items()}))


# ---- minilora metadata: every field checked, every problem a ValueError naming the file and the field -------

def _parse_info(metadata: dict, path, kind: str | None) -> dict:
    if FORMAT not in metadata:
        raise ValueError(
            f"{path} is a safetensors file but not a minilora {kind or 'file'} (no '{FORMAT}' metadata). "
            "PEFT adapters and transformers checkpoints have their own readers."
        )
    try:
        info = json.loads(metadata[FORMAT])
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: the '{FORMAT}' metadata is not valid JSON: {err}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: the '{FORMAT}' metadata must be a JSON object, got a {_json_type(info)}")
    version = info.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: metadata field 'version' must be an int >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer minilora (format version {version}; this one reads "
                         f"up to {FORMAT_VERSION}): upgrade minilora to read it")
    if kind is not None and info.get("kind") != kind:
        raise ValueError(f"{path} holds a minilora {info.get('kind')!r}, expected a {kind!r}")
    return info


def _read_minilora(path, kind: str) -> tuple[dict, dict]:
    arrays, metadata = read_safetensors(path)
    return arrays, _parse_info(metadata, path, kind)


def read_info(path, kind: str | None = None) -> dict:
    """The minilora metadata of a file (kind, configs, record, base_sha256, merged, ...), reading its header only.
    With ``kind`` the file must be of that kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a file")
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        raw = head + f.read(min(n, 100 << 20))  # the JSON header only (capped: a hostile length reads no more)
    return _parse_info(_metadata(_header(raw, path), path), path, kind)


_MISSING = object()
_JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _field(info: dict, key: str, path, types, default=_MISSING):
    """info[key], which must be of ``types`` (a bool is never an int here); ``default`` when it is absent."""
    if key not in info:
        if default is _MISSING:
            raise ValueError(f"{path}: the minilora metadata has no '{key}' field")
        return default
    value = info[key]
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        wanted = " or ".join(sorted({_JSON_TYPES.get(t, t.__name__) for t in types}))
        raise ValueError(f"{path}: metadata field '{key}' must be a JSON {wanted}, got a {_json_type(value)}"
                         f" ({json.dumps(value)[:60]})")
    return value


def _config_field(info: dict, key: str, cls, path):
    """A GPTConfig or LoraConfig from info[key]: every field type-checked by the config itself."""
    data = _field(info, key, path, dict)
    try:
        return cls.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: metadata field '{key}': {err}") from None


def _base_field(info: dict, path) -> str | None:
    """The recorded fingerprint of the base the file was made from; None for files that record none."""
    value = _field(info, "base_sha256", path, (str, type(None)), default=None)
    if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"{path}: metadata field 'base_sha256' must be 64 hex digits, got {value!r}")
    return value


def _check_file_arrays(arrays: dict, expected: dict, what: str) -> None:
    """check_flat for a file: every problem with a file's contents is a ValueError (a bad file, not a bad call)."""
    try:
        check_flat(arrays, expected, what)
    except TypeError as err:
        raise ValueError(str(err)) from None


def _check_finite_to_save(flat: dict, what: str, allow_nonfinite: bool) -> None:
    if not allow_nonfinite:
        check_finite(flat, what, "nothing was written (pass allow_nonfinite=True to save it anyway)")


def _provenance(base=None, merged=None) -> dict:
    """The metadata keys that say where a file comes from; absent (not null) when unknown, so a file saved
    without them is byte for byte what earlier versions wrote."""
    out = {}
    fp = as_fingerprint(base)
    if fp is not None:
        out["base_sha256"] = fp
    if merged:
        out["merged"] = list(merged)
    return out


# ---- base parameters ------------------------------------------------------------------------------------

def save_params(path, params, config: GPTConfig, record: dict | None = None, *, base=None, merged=None,
                allow_nonfinite: bool = False) -> Path:
    """Write a parameter tree. ``base``: the parameters (or their fingerprint) these were fine-tuned or merged
    from; ``merged``: what was merged in (see merge_entry). Non-finite values are refused unless allowed."""
    flat = flatten(params)
    check_flat(flat, expected_param_shapes(config), "params")
    _check_finite_to_save(flat, f"params for {path}", allow_nonfinite)
    info = {"kind": "params", "version": FORMAT_VERSION, "config": config.to_dict(), "record": record or {},
            **_provenance(base, merged)}
    return write_safetensors(path, flat, {FORMAT: json.dumps(info)})


def merge_entry(lora, lora_config: LoraConfig, base, source=None) -> dict:
    """What a merged params file records of one adapter merged into ``base``: the adapter's own fingerprint,
    the base's, its LoraConfig and (optionally) the file it came from."""
    entry = {"adapter_sha256": fingerprint(lora), "base_sha256": as_fingerprint(base),
             "lora_config": lora_config.to_dict()}
    if source is not None:
        entry["file"] = str(source)
    return entry


def load_params(path, config: GPTConfig | None = None, *, allow_nonfinite: bool = False) -> tuple[dict, GPTConfig]:
    """(params, config). With ``config`` given, the file's must equal it. NaN/inf values are refused (naming the
    tensor and how many) unless ``allow_nonfinite``."""
    arrays, info = _read_minilora(path, "params")
    file_config = _config_field(info, "config", GPTConfig, path)
    if config is not None and config != file_config:
        raise ValueError(f"{path} was saved with {file_config}, which differs from the config given: {config}")
    _check_file_arrays(arrays, expected_param_shapes(file_config), f"params in {path}")
    if not allow_nonfinite:
        check_finite(arrays, f"params in {path}", NONFINITE_HINT)
    _base_field(info, path)
    _merged_field(info, path)
    return to_device(unflatten(arrays)), file_config  # read on the host, placed on the selected backend


def _merged_field(info: dict, path) -> list:
    merged = _field(info, "merged", path, list, default=[])
    for i, entry in enumerate(merged):
        if not isinstance(entry, dict) or not isinstance(entry.get("adapter_sha256"), str):
            raise ValueError(f"{path}: metadata field 'merged' entry {i} must be an object with an "
                             f"'adapter_sha256' string, got {json.dumps(entry)[:60]}")
    return merged


def read_record(path) -> dict:
    """The "record" dict a params file was saved with (what made it: command, task, steps...); {} if none."""
    return _field(_read_minilora(path, "params")[1], "record", path, dict, default={})


def params_provenance(path) -> dict:
    """{"base_sha256": ... or None, "merged": [...]} of a params file (header only)."""
    info = read_info(path, "params")
    return {"base_sha256": _base_field(info, path), "merged": _merged_field(info, path)}


# ---- adapters -------------------------------------------------------------------------------------------

def save_adapter(path, lora, lora_config: LoraConfig, config: GPTConfig, *, base=None,
                 allow_nonfinite: bool = False) -> Path:
    """Adapter only: A and B for each adapted matrix, with the LoraConfig and the base's GPTConfig. ``base``: the
    base parameters it was trained on (or their fingerprint), recorded so that loading can check it."""
    flat = flatten(lora)
    check_flat(flat, expected_lora_shapes(config, lora_config), "lora")
    _check_finite_to_save(flat, f"adapter for {path}", allow_nonfinite)
    info = {"kind": "adapter", "version": FORMAT_VERSION, "lora_config": lora_config.to_dict(),
            "config": config.to_dict(), **_provenance(base)}
    return write_safetensors(path, flat, {FORMAT: json.dumps(info)})


def load_adapter(path, config: GPTConfig, *, base=None, allow_base_mismatch: bool = False,
                 allow_nonfinite: bool = False) -> tuple[dict, LoraConfig]:
    """(lora, lora_config), checked against the base model's config.

    base: the parameters (or their fingerprint) the adapter will be used with. When given, an adapter that
    records another base raises ``provenance.BaseMismatch`` (a ValueError) unless ``allow_base_mismatch``;
    adapters saved without a fingerprint (older files) are not checked. NaN/inf values are refused unless
    ``allow_nonfinite``."""
    arrays, info = _read_minilora(path, "adapter")
    lora_config = _config_field(info, "lora_config", LoraConfig, path)
    saved_for = _config_field(info, "config", GPTConfig, path)
    if saved_for != config:
        raise ValueError(f"adapter {path} was trained for {saved_for}, not for this base model {config}")
    _check_file_arrays(arrays, expected_lora_shapes(config, lora_config), f"adapter {path}")
    if not allow_nonfinite:
        check_finite(arrays, f"adapter {path}", NONFINITE_HINT)
    check_base(_base_field(info, path), as_fingerprint(base), f"adapter {path}", allow_base_mismatch, MISMATCH_HINT)
    return to_device(unflatten(arrays, n_blocks=config.n_layer)), lora_config


def adapter_base(path) -> str | None:
    """The fingerprint of the base an adapter file records (header only); None for older files."""
    return _base_field(read_info(path, "adapter"), path)


# ---- training state (resume) ----------------------------------------------------------------------------

def save_train_state(path, trainable, opt_state: dict, meta: dict, *, allow_nonfinite: bool = False) -> Path:
    """The trainable tree, AdamW's m and v, and everything needed to resume (step, configs, history).
    A state holding NaN/inf (in the parameters, m or v) is refused, so it never replaces a good one."""
    flat = {}
    for prefix, tree in (("params", trainable), ("m", opt_state["m"]), ("v", opt_state["v"])):
        flat.update({f"{prefix}.{k}": v for k, v in flatten(tree).items()})
    _check_finite_to_save(flat, f"training state for {path}", allow_nonfinite)
    info = {"kind": "train_state", "version": FORMAT_VERSION, "step": opt_state["step"], **meta}
    return write_safetensors(path, flat, {FORMAT: json.dumps(info)})


def load_train_state(path, n_blocks: int, expected: dict | None = None, same_run: dict | None = None, *,
                     base=None, allow_nonfinite: bool = False) -> tuple[dict, dict, dict]:
    """(trainable, opt_state, meta) as saved by save_train_state.

    same_run: metadata the state must have been saved with (method, configs, task); checked first.
    expected: {path: shape} of the trainable tree (validate.expected_lora_shapes or expected_param_shapes); when
    given, the parameters and AdamW's m and v are each checked against it, like any other file.
    base: the base parameters (or fingerprint) of the run being resumed; a state that records another base
    raises ``provenance.BaseMismatch`` (states saved without a fingerprint are not checked).
    """
    arrays, info = _read_minilora(path, "train_state")
    step = _field(info, "step", path, int)
    if step < 0:
        raise ValueError(f"{path}: metadata field 'step' must be >= 0, got {step}")
    for key in ("history", "evals"):
        entries = _field(info, key, path, list, default=[])
        if not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"{path}: metadata field '{key}' must be a list of objects")
    differ = [k for k in (same_run or {}) if info.get(k) != same_run[k]]
    if differ:
        raise ValueError(f"resume: {path} was saved by a different run: {', '.join(differ)} differ "
                         "(a resumed run must continue the same configuration)")
    check_base(_base_field(info, path), as_fingerprint(base), f"resume: training state {path}",
               hint="resume with the base parameters the run started from")
    parts = {"params": {}, "m": {}, "v": {}}
    for key, value in arrays.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise ValueError(f"{path}: unexpected array {key!r} in a training state")
        parts[prefix][rest] = value
    if expected is not None:
        for prefix, flat in parts.items():
            _check_file_arrays(flat, expected, f"{prefix} in training state {path}")
    if not allow_nonfinite:
        check_finite(arrays, f"training state {path}", NONFINITE_HINT)
    trees = {p: to_device(unflatten(flat, n_blocks=n_blocks)) for p, flat in parts.items()}
    return trees["params"], {"step": step, "m": trees["m"], "v": trees["v"]}, info


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
