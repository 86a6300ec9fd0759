"""Checkpoints: exact round trips, atomic writes, and refusal of anything that is not a matching minilora file."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from conftest import TINY, tiny_params

import minilora.checkpoint as ckpt
from minilora import GPTConfig, LoraConfig, init_lora
from minilora.checkpoint import (
    load_adapter,
    load_params,
    load_train_state,
    save_adapter,
    save_params,
    save_train_state,
    write_safetensors,
)
from minilora.optim import AdamW
from minilora.tree import flatten, map_leaves


def assert_trees_bitwise_equal(a, b):
    fa, fb = flatten(a), flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        assert fa[k].shape == fb[k].shape, k
        assert fa[k].tobytes() == fb[k].tobytes(), f"{k} differs"


def trained_lora(lcfg, seed=0):
    """An adapter with non-zero B, so a round trip that lost B would show."""
    lora = init_lora(TINY, lcfg, seed)
    rng = np.random.default_rng(seed)
    for block in lora["blocks"]:
        for ab in block.values():
            ab["B"] = rng.standard_normal(ab["B"].shape).astype(np.float32)
    return lora


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---- round trips -------------------------------------------------------------------------------------------

def test_params_round_trip_is_bitwise(tmp_path):
    params = tiny_params(3)
    path = save_params(tmp_path / "p.safetensors", params, TINY, {"note": "x"})
    loaded, config = load_params(path)
    assert config == TINY and isinstance(config, GPTConfig)
    assert_trees_bitwise_equal(params, loaded)
    assert isinstance(loaded["blocks"], list) and len(loaded["blocks"]) == TINY.n_layer
    assert ckpt.read_record(path) == {"note": "x"}
    # with the config given, it must match
    load_params(path, TINY)
    with pytest.raises(ValueError, match="differs from the config given"):
        load_params(path, GPTConfig.preset("base"))


def test_params_round_trip_float64(tmp_path):
    params = tiny_params(0, dtype=np.float64)
    loaded, _ = load_params(save_params(tmp_path / "p.safetensors", params, TINY))
    assert_trees_bitwise_equal(params, loaded)


@pytest.mark.parametrize("layers", [None, (1,)])
def test_adapter_round_trip(tmp_path, layers):
    lcfg = LoraConfig(r=2, alpha=4.0, targets=("wq", "wv", "mlp_in"), layers=layers, dropout=0.1,
                      use_rslora=True, init="kaiming")
    lora = trained_lora(lcfg)
    path = save_adapter(tmp_path / "a.safetensors", lora, lcfg, TINY)
    loaded, loaded_cfg = load_adapter(path, TINY)
    assert loaded_cfg == lcfg
    assert_trees_bitwise_equal(lora, loaded)
    assert len(loaded["blocks"]) == TINY.n_layer
    if layers == (1,):
        assert loaded["blocks"][0] == {}
        assert sorted(loaded["blocks"][1]) == ["mlp_in", "wq", "wv"]
    # the loaded adapter is usable as is
    from minilora import forward

    x = np.arange(8, dtype=np.int32)[None]
    np.testing.assert_array_equal(forward(tiny_params(3), x, TINY, lora, lcfg),
                                  forward(tiny_params(3), x, TINY, loaded, loaded_cfg))


def test_train_state_round_trip(tmp_path):
    lcfg = LoraConfig(r=2, layers=(1,))
    lora = trained_lora(lcfg)
    opt = AdamW(lr=1e-2)
    state = opt.init(lora)
    grads = map_leaves(lambda a: np.full_like(a, 0.5), lora)
    lora, state = opt.update(lora, grads, state, 1e-2)
    lora, state = opt.update(lora, grads, state, 1e-2)
    meta = {"method": "lora", "history": [{"step": 1, "loss": 1.2345678901234567}], "anything": [1, None, "x"]}
    path = save_train_state(tmp_path / "s.safetensors", lora, state, meta)
    trainable, opt_state, info = load_train_state(path, n_blocks=TINY.n_layer)
    assert opt_state["step"] == 2 and isinstance(opt_state["step"], int)
    assert_trees_bitwise_equal(lora, trainable)
    assert_trees_bitwise_equal(state["m"], opt_state["m"])
    assert_trees_bitwise_equal(state["v"], opt_state["v"])
    assert trainable["blocks"][0] == {} and opt_state["m"]["blocks"][0] == {}
    for key, value in meta.items():
        assert info[key] == value
    assert info["kind"] == "train_state"


def test_full_train_state_round_trip(tmp_path):
    params = tiny_params(1)
    state = AdamW().init(params)
    state["step"] = 7
    trainable, opt_state, _ = load_train_state(save_train_state(tmp_path / "s.safetensors", params, state, {}),
                                               n_blocks=TINY.n_layer)
    assert_trees_bitwise_equal(params, trainable)
    assert opt_state["step"] == 7


def test_adapter_file_is_much_smaller_than_params(tmp_path):
    lcfg = LoraConfig(r=2)
    p = save_params(tmp_path / "p.safetensors", tiny_params(), TINY)
    a = save_adapter(tmp_path / "a.safetensors", trained_lora(lcfg), lcfg, TINY)
    p_bytes, a_bytes = p.stat().st_size, a.stat().st_size
    assert a_bytes * 5 < p_bytes, f"adapter {a_bytes} bytes vs params {p_bytes} bytes"


# ---- atomic writes ----------------------------------------------------------------------------------------

def test_save_leaves_no_temp_file(tmp_path):
    save_params(tmp_path / "p.safetensors", tiny_params(), TINY)
    save_params(tmp_path / "p.safetensors", tiny_params(1), TINY)  # overwrite too
    lcfg = LoraConfig(r=2)
    save_adapter(tmp_path / "a.safetensors", trained_lora(lcfg), lcfg, TINY)
    ckpt.atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "p.safetensors", "r.json"]


@pytest.mark.parametrize("where", ["os.replace", "os.fsync", "safetensors.numpy.save"])
def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, where):
    path = tmp_path / "p.safetensors"
    save_params(path, tiny_params(0), TINY)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    if where == "safetensors.numpy.save":
        monkeypatch.setattr(safetensors.numpy, "save", boom)
    else:
        monkeypatch.setattr(os, where.split(".")[1], boom)
    with pytest.raises(OSError, match="simulated"):
        save_params(path, tiny_params(1), TINY)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert_trees_bitwise_equal(load_params(path)[0], tiny_params(0))


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    """KeyboardInterrupt (a BaseException) in the middle of a write is cleaned up the same way."""
    path = tmp_path / "a.json"
    ckpt.atomic_write_json(path, {"v": 1})

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write_json(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert leftovers(tmp_path) == []


def test_saved_file_has_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    saved = ckpt.atomic_write_bytes(tmp_path / "saved", b"x")
    assert stat.S_IMODE(saved.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


# ---- refusals ----------------------------------------------------------------------------------------------

@pytest.fixture
def params_file(tmp_path):
    return save_params(tmp_path / "p.safetensors", tiny_params(), TINY)


@pytest.fixture
def adapter_file(tmp_path):
    lcfg = LoraConfig(r=2)
    return save_adapter(tmp_path / "a.safetensors", trained_lora(lcfg), lcfg, TINY)


def test_refuses_truncated_file(tmp_path, params_file):
    raw = params_file.read_bytes()
    bad = tmp_path / "half.safetensors"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_params(bad)
    bad.write_bytes(raw[:20])  # cut inside the header
    with pytest.raises(ValueError, match="truncated"):
        load_params(bad)
    bad.write_bytes(raw[:5])  # shorter than the length prefix
    with pytest.raises(ValueError, match="truncated"):
        load_params(bad)
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="truncated"):
        load_params(bad)


def test_refuses_corrupt_header(tmp_path, params_file):
    raw = bytearray(params_file.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n]
    i = header.index(b'"wte"')
    header[i:i + 5] = b'"wte}'  # invalid JSON, same length
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(bytes(raw[:8] + header + raw[8 + n:]))
    with pytest.raises(ValueError, match="corrupt|not a safetensors"):
        load_params(bad)
    # a header length that points past the end of the file
    bad.write_bytes(struct.pack("<Q", 10**9) + bytes(raw[8:]))
    with pytest.raises(ValueError, match="truncated or not a safetensors"):
        load_params(bad)
    # valid JSON, but offsets that do not fit the data
    fixed = bytes(header).replace(b'"wte}', b'"wte"')
    fixed = re.sub(rb'"data_offsets":\[0,', b'"data_offsets":[1,', fixed, count=1)
    bad.write_bytes(bytes(raw[:8]) + fixed + bytes(raw[8 + n:]))
    with pytest.raises(ValueError, match="corrupt"):
        load_params(bad)


def _params_file_with_header_length(tmp_path, low_byte: int):
    """A valid minilora params file whose 8-byte header-length prefix starts with ``low_byte``.

    safetensors pads its JSON header to a multiple of 8, so the first byte of a file takes 32 values; the record's
    length moves it."""
    path = tmp_path / "p.safetensors"
    for n in range(300):
        save_params(path, tiny_params(), TINY, {"pad": "x" * n})
        if path.read_bytes()[0] == low_byte:
            return path
    raise AssertionError("no padding gave that header length")


@pytest.mark.parametrize("low_byte", [0x78, 0x88])
def test_loads_files_of_any_header_length(tmp_path, low_byte):
    loaded, _ = load_params(_params_file_with_header_length(tmp_path, low_byte))
    assert_trees_bitwise_equal(loaded, tiny_params())


def test_loads_a_valid_file_whose_first_byte_is_0x80(tmp_path):
    loaded, _ = load_params(_params_file_with_header_length(tmp_path, 0x80))
    assert_trees_bitwise_equal(loaded, tiny_params())


def test_refuses_random_bytes(tmp_path):
    bad = tmp_path / "random.safetensors"
    bad.write_bytes(np.random.default_rng(0).integers(1, 128, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_params(bad)


def test_refuses_pickle_without_loading_it(tmp_path, monkeypatch):
    bad = tmp_path / "model.pkl"
    bad.write_bytes(pickle.dumps({"wte": np.zeros(3)}))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the loader unpickled")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    with pytest.raises(ValueError, match="pickle"):
        load_params(bad)
    with pytest.raises(ValueError, match="pickle"):
        load_adapter(bad, TINY)
    # protocol 0 has no \x80 marker: still refused, never unpickled
    bad.write_bytes(pickle.dumps({"wte": 1}, protocol=0))
    with pytest.raises(ValueError):
        load_params(bad)


def test_refuses_zip_archive(tmp_path):
    bad = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(bad, "w") as z:  # torch.save's layout: archive/data.pkl inside a zip
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
        z.writestr("archive/version", "3\n")
    with pytest.raises(ValueError, match="zip"):
        load_params(bad)


def test_refuses_npy(tmp_path):
    bad = tmp_path / "wte.npy"
    np.save(bad, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"\.npy"):
        load_params(bad)


def test_refuses_foreign_safetensors(tmp_path):
    bad = tmp_path / "adapter_model.safetensors"
    safetensors.numpy.save_file({"base_model.model.x.lora_A.weight": np.zeros((2, 4), np.float32)}, str(bad))
    with pytest.raises(ValueError, match="not a minilora"):
        load_adapter(bad, TINY)
    with pytest.raises(ValueError, match="not a minilora"):
        load_params(bad)


def test_refuses_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path)  # a folder


def test_refuses_adapter_for_another_base(tmp_path, adapter_file):
    other = GPTConfig(vocab_size=256, context=16, d_model=16, n_layer=3, n_head=2, d_mlp=24)
    with pytest.raises(ValueError, match="was trained for"):
        load_adapter(adapter_file, other)
    with pytest.raises(ValueError, match="was trained for"):
        load_adapter(adapter_file, GPTConfig.preset("base"))


def test_refuses_params_whose_shapes_do_not_match_their_config(tmp_path):
    bad = tmp_path / "p.safetensors"
    info = {"kind": "params", "version": 1, "config": {**TINY.to_dict(), "context": 32}, "record": {}}
    write_safetensors(bad, flatten(tiny_params()), {"minilora": json.dumps(info)})
    with pytest.raises(ValueError, match=r"wpe has shape \(16, 16\), expected \(32, 16\)"):
        load_params(bad)
    info["config"] = {**TINY.to_dict(), "n_layer": 3}
    write_safetensors(bad, flatten(tiny_params()), {"minilora": json.dumps(info)})
    with pytest.raises(ValueError, match="missing.*blocks.2"):
        load_params(bad)


def test_refuses_invalid_metadata(tmp_path):
    bad = tmp_path / "p.safetensors"
    write_safetensors(bad, flatten(tiny_params()), {"minilora": "{not json"})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_params(bad)


def test_refuses_adapter_with_a_missing_key(tmp_path, adapter_file):
    arrays, meta = ckpt.read_safetensors(adapter_file)
    del arrays["blocks.1.wv.B"]
    bad = tmp_path / "missing.safetensors"
    write_safetensors(bad, arrays, meta)
    with pytest.raises(ValueError, match=r"missing \['blocks\.1\.wv\.B'\]"):
        load_adapter(bad, TINY)


def test_refuses_adapter_with_an_extra_key(tmp_path, adapter_file):
    arrays, meta = ckpt.read_safetensors(adapter_file)
    arrays["blocks.0.wk.A"] = arrays["blocks.0.wq.A"]
    bad = tmp_path / "extra.safetensors"
    write_safetensors(bad, arrays, meta)
    with pytest.raises(ValueError, match=r"unexpected \['blocks\.0\.wk\.A'\]"):
        load_adapter(bad, TINY)


def test_refuses_kind_mismatch(params_file, adapter_file, tmp_path):
    with pytest.raises(ValueError, match="holds a minilora 'params', expected a 'adapter'"):
        load_adapter(params_file, TINY)
    with pytest.raises(ValueError, match="holds a minilora 'adapter', expected a 'params'"):
        load_params(adapter_file)
    with pytest.raises(ValueError, match="expected a 'train_state'"):
        load_train_state(params_file, n_blocks=TINY.n_layer)


def _int32_params_file(tmp_path):
    flat = flatten(tiny_params())
    flat["ln_f.g"] = np.ones(TINY.d_model, np.int32)
    info = {"kind": "params", "version": 1, "config": TINY.to_dict(), "record": {}}
    bad = tmp_path / "int.safetensors"
    write_safetensors(bad, flat, {"minilora": json.dumps(info)})
    return bad


def test_refuses_wrong_dtype(tmp_path):
    with pytest.raises((ValueError, TypeError), match="ln_f.g has dtype int32"):
        load_params(_int32_params_file(tmp_path))


def test_wrong_dtype_is_a_value_error_like_other_bad_files(tmp_path):
    with pytest.raises(ValueError, match="dtype int32"):
        load_params(_int32_params_file(tmp_path))


def test_refuses_to_save_params_that_do_not_match_the_config(tmp_path):
    with pytest.raises(ValueError, match="wpe"):
        save_params(tmp_path / "p.safetensors", tiny_params(), GPTConfig(context=8, d_model=16, n_layer=2,
                                                                         n_head=2, d_mlp=24))
    assert not (tmp_path / "p.safetensors").exists()
    assert leftovers(tmp_path) == []


# ---- the shipped base model -------------------------------------------------------------------------------

def test_load_base(shipped_base):
    params, config = ckpt.load_base()
    assert config == GPTConfig.preset("base")
    from minilora import count_params

    assert 0.8e6 < count_params(params) < 0.9e6
    assert all(np.isfinite(a).all() for a in flatten(params).values())
    assert shipped_base.stat().st_size <= 5 * 2**20, f"{shipped_base.stat().st_size} bytes"


def test_base_record(shipped_base):
    record_path = ckpt.BASE_RECORD
    assert record_path.is_file(), f"{record_path} is missing next to {shipped_base}"
    record = json.loads(record_path.read_text())
    for key in ("command", "config", "data", "steps", "final_train_loss", "held_out_loss"):
        assert key in record, f"base.json lacks {key!r}"
    assert record["command"].startswith("minilora pretrain")
    assert GPTConfig.from_dict(record["config"]) == GPTConfig.preset("base")
    assert re.fullmatch(r"[0-9a-f]{64}", record["data"]["sha256"])
    assert record["data"]["n_bytes"] > 300_000
    assert isinstance(record["steps"], int) and record["steps"] > 0
    assert np.isfinite(record["final_train_loss"]) and np.isfinite(record["held_out_loss"])
    assert record["held_out_loss"] < np.log(256), "the base model is no better than uniform"
    # the record inside the checkpoint is the same one
    inner = ckpt.read_record(shipped_base)
    assert inner["data"]["sha256"] == record["data"]["sha256"]


def test_base_record_matches_the_corpus_this_code_builds(shipped_base):
    from minilora.data import corpus_info

    record = json.loads(ckpt.BASE_RECORD.read_text())
    info = corpus_info()
    if record["data"]["python_version"] != info["python_version"]:
        pytest.skip(f"the base was pretrained on Python {record['data']['python_version']}, this is "
                    f"{info['python_version']}: the corpus differs a little between versions")
    assert (record["data"]["sha256"], record["data"]["n_bytes"]) == (info["sha256"], info["n_bytes"])


# ---- provenance: fingerprints ------------------------------------------------------------------------------

def test_fingerprint_sees_every_value_name_dtype_and_shape_but_not_insertion_order():
    from minilora.provenance import fingerprint

    params = tiny_params()
    fp = fingerprint(params)
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    reordered = {k: params[k] for k in reversed(list(params))}
    reordered["blocks"] = [{k: b[k] for k in reversed(list(b))} for b in params["blocks"]]
    assert fingerprint(reordered) == fp
    flipped = copy_tree(params)
    flipped["blocks"][1]["mlp_out"]["W"].view(np.uint32)[3, 4] ^= 1  # one bit of one value
    assert fingerprint(flipped) != fp
    assert fingerprint(map_leaves(lambda a: a.astype(np.float64), params)) != fp
    renamed = copy_tree(params)
    renamed["ln_f"] = {"g": params["ln_f"]["b"], "b": params["ln_f"]["g"]}  # same bytes under other names
    assert fingerprint(renamed) != fp
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert fingerprint(a) != fingerprint({"x": a["x"].reshape(3, 2)})  # same bytes, another shape
    assert fingerprint(load_params(save_params_tmp(params))[0]) == fp  # survives a round trip


def copy_tree(tree):
    return map_leaves(lambda a: a.copy(), tree)


def save_params_tmp(params):
    import tempfile

    return save_params(Path(tempfile.mkdtemp()) / "p.safetensors", params, TINY)


def test_saves_record_their_base_only_when_given(tmp_path):
    from minilora.provenance import fingerprint

    lcfg = LoraConfig(r=2)
    plain = save_adapter(tmp_path / "plain.safetensors", trained_lora(lcfg), lcfg, TINY)
    assert "base_sha256" not in ckpt.read_info(plain)  # byte for byte what earlier versions wrote
    base = tiny_params()
    recorded = save_adapter(tmp_path / "rec.safetensors", trained_lora(lcfg), lcfg, TINY, base=base)
    assert ckpt.read_info(recorded, "adapter")["base_sha256"] == fingerprint(base) == ckpt.adapter_base(recorded)
    by_string = save_adapter(tmp_path / "s.safetensors", trained_lora(lcfg), lcfg, TINY, base=fingerprint(base))
    assert ckpt.adapter_base(by_string) == fingerprint(base)
    load_adapter(recorded, TINY, base=base)
    with pytest.raises(ValueError, match="expected a 'params'"):
        ckpt.read_info(recorded, "params")


# ---- atomic writes: names, the folder's fsync, stale temporaries ------------------------------------------

def test_temporary_names_are_unmistakable_and_carry_the_pid(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: seen.append(Path(src).name) or real(src, dst))
    ckpt.atomic_write_bytes(tmp_path / "a.safetensors", b"x")
    (name,) = seen
    assert re.fullmatch(rf"\.a\.safetensors\.minilora-[0-9a-f]{{8}}-{os.getpid()}-\w+\.tmp", name), name


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(
        "fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("rename") or real_replace(a, b))
    ckpt.atomic_write_bytes(tmp_path / "a", b"x")
    assert events == ["fsync file", "rename", "fsync folder"]


def test_stale_temporaries_of_dead_writers_are_removed_and_no_others(tmp_path):
    host = ckpt._host_tag()
    dead = subprocess_pid_that_exited()
    names = {
        "dead": f".p.safetensors.minilora-{host}-{dead}-abc123.tmp",
        "live": f".p.safetensors.minilora-{host}-{os.getppid()}-abc123.tmp",
        "own": f".p.safetensors.minilora-{host}-{os.getpid()}-abc123.tmp",
        "other host": f".p.safetensors.minilora-00000000-{dead}-abc123.tmp" if host != "00000000" else "x.tmp",
        "other target": f".q.safetensors.minilora-{host}-{dead}-abc123.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    save_params(tmp_path / "p.safetensors", tiny_params(), TINY)
    left = {p.name for p in tmp_path.iterdir()}
    assert names["dead"] not in left
    assert {names[k] for k in ("live", "own", "other host", "other target")} <= left


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_save_refuses_non_finite_values_unless_asked(tmp_path):
    params = tiny_params()
    params["wte"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"wte has 1 non-finite values .*nothing was written"):
        save_params(tmp_path / "p.safetensors", params, TINY)
    assert not (tmp_path / "p.safetensors").exists()
    path = save_params(tmp_path / "p.safetensors", params, TINY, allow_nonfinite=True)
    with pytest.raises(ValueError, match="allow_nonfinite"):
        load_params(path)
    assert np.isnan(load_params(path, allow_nonfinite=True)[0]["wte"][0, 0])
