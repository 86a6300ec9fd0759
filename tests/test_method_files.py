"""Saved files for every fine-tuning method (methods.files): a round trip per method whose logits are bit for bit
the saved run's, files that hold nothing of the base, LoRA-FA's frozen A kept, and every bad file refused with
a message naming the file and the field or tensor; a failed save leaves the old file as it was."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import struct

import numpy as np
import pytest
import safetensors.numpy
from conftest import TINY
from test_faults import FullDisk  # os.fdopen's stand-in whose write fails with ENOSPC

from minilora import LoraConfig, init_lora, init_params
from minilora.checkpoint import FORMAT, SaveError, save_adapter
from minilora.methods import METHODS, load_method, save_method
from minilora.provenance import BaseMismatch, fingerprint
from minilora.tasks import Batch
from minilora.tree import flatten, map_leaves

TINY3 = dataclasses.replace(TINY, n_layer=3)  # FT-top2 then saves 2 of 3 blocks
OPTIONS = {"preembed": {"l_p": 3, "l_i": 2}, "prelayer": {"l_p": 3, "l_i": 2}, "adapter_h": {"r": 4},
           "adapter_l": {"r": 4}, "lora": {"r": 4, "targets": ["wq", "wv", "mlp_in"]},
           "lora_plus": {"r": 4, "ratio": 8.0}, "lora_fa": {"r": 4, "layers": [0, 2]}}


def base_params(seed: int = 0) -> dict:
    params = init_params(TINY3, seed)
    params["wte"] = (params["wte"] * 25).astype(np.float32)  # logits that react to what the methods change
    return params


PARAMS = base_params()


def batch() -> Batch:
    """Prompt → answer rows (weights from position 4), so PreEmbed / PreLayer place an infix too."""
    x = (97 + np.random.default_rng(0).integers(0, 8, size=(3, 9))).astype(np.int32)
    w = np.zeros((3, 9), np.float32)
    w[:, 4:] = 1.0
    return Batch(x, np.roll(x, -1, axis=1), w)


def trained(setup, seed: int = 1) -> dict:
    """The setup's trainable tree moved away from its init, as training would (every leaf changed)."""
    rng = np.random.default_rng(seed)
    return map_leaves(lambda a: (a + 0.3 * rng.standard_normal(a.shape)).astype(a.dtype), setup.trainable)


def build(name: str, seed: int = 2):
    return METHODS[name].build(PARAMS, TINY3, seed=seed, **OPTIONS.get(name, {}))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{name: (setup, trainable, path)} for every method, saved once."""
    folder = tmp_path_factory.mktemp("methods")
    out = {}
    for name in METHODS:
        setup = build(name)
        trainable = trained(setup)
        out[name] = setup, trainable, save_method(folder / f"{name}.safetensors", setup, trainable)
    return out


def tensors(path) -> tuple[dict, dict]:
    """(arrays, minilora info) of a file, read directly with safetensors."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return safetensors.numpy.load(raw), json.loads(json.loads(raw[8:8 + n])["__metadata__"][FORMAT])


def rewrite(path, dest, edit_arrays=None, edit_info=None):
    """A copy of a method file with its arrays and/or minilora metadata edited."""
    arrays, info = tensors(path)
    arrays = edit_arrays(dict(arrays)) if edit_arrays else arrays
    info = edit_info(dict(info)) if edit_info else info
    dest.write_bytes(safetensors.numpy.save(arrays, metadata={FORMAT: json.dumps(info)}))
    return dest


def bytes_equal(a, b) -> bool:
    fa, fb = flatten(a), flatten(b)
    return sorted(fa) == sorted(fb) and all(fa[k].dtype == fb[k].dtype and fa[k].tobytes() == fb[k].tobytes()
                                            for k in fa)


# ---- round trips ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(METHODS))
def test_round_trip_gives_the_same_logits_bit_for_bit(saved, name):
    setup, trainable, path = saved[name]
    loaded, got = load_method(path, PARAMS, TINY3)
    assert loaded.method is METHODS[name] and loaded.trainable is got
    assert loaded.json_options() == setup.json_options()
    assert loaded.trainable_count() == setup.trainable_count() and loaded.config == TINY3
    assert bytes_equal(got, trainable)
    b = batch()
    assert setup.logits(trainable, b).tobytes() == loaded.logits(got, b).tobytes()
    assert not np.array_equal(setup.logits(setup.trainable, b), setup.logits(trainable, b))  # a change was kept


@pytest.mark.parametrize("name", list(METHODS))
def test_the_file_holds_the_trained_tensors_and_nothing_of_the_base(saved, name):
    setup, trainable, path = saved[name]
    arrays, info = tensors(path)
    owned = {k: setup.frozen[k] for k in METHODS[name].owned_frozen}
    assert sorted(arrays) == sorted(flatten(trainable)) + sorted(flatten(owned))  # tree paths, trainable first
    untrained_base = set(flatten(PARAMS)) - set(flatten(trainable))
    assert not untrained_base & set(arrays)
    header = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    held = sum(a.nbytes for a in flatten(trainable).values()) + sum(a.nbytes for a in flatten(owned).values())
    assert path.stat().st_size == header + held  # the data section is exactly those tensors
    assert info["kind"] == "method" and info["method"] == name and info["config"] == TINY3.to_dict()
    assert info["options"] == setup.json_options() and info["base_sha256"] == fingerprint(PARAMS)
    assert info["minilora_version"] and info["version"] == 1


def test_a_small_method_file_is_a_small_fraction_of_the_model(saved):
    full = saved["ft"][2].stat().st_size
    for name in ("bitfit", "preembed", "prelayer", "adapter_h", "adapter_l", "lora", "lora_fa"):
        assert saved[name][2].stat().st_size < full / 4, name


def test_lora_fa_keeps_its_frozen_random_A(saved):
    setup, trainable, path = saved["lora_fa"]  # built with seed 2; load builds with seed 0, then reads A
    loaded, _ = load_method(path, PARAMS)
    assert bytes_equal(loaded.frozen["lora_A"], setup.frozen["lora_A"])
    assert not bytes_equal(build("lora_fa", seed=0).frozen["lora_A"], setup.frozen["lora_A"])
    assert "lora_A.blocks.2.wq.A" in tensors(path)[0] and "blocks.1.wq.B" not in tensors(path)[0]
    assert loaded.frozen["params"] is PARAMS


def test_ft_top2_keeps_the_tree_structure_of_the_untrained_blocks(saved):
    """Block 0 holds no tensor (so none is saved), but its (empty) dicts come back, as split() made them."""
    setup, _, path = saved["ft_top2"]
    _, got = load_method(path, PARAMS)
    assert flatten(got["blocks"][0]) == {} and len(got["blocks"]) == TINY3.n_layer
    assert map_leaves(lambda a: a.shape, got) == map_leaves(lambda a: a.shape, setup.trainable)


def test_a_float64_run_round_trips_as_float64(tmp_path):
    params = map_leaves(lambda a: a.astype(np.float64), PARAMS)
    setup = METHODS["adapter_l"].build(params, TINY3, seed=0, r=2)
    path = save_method(tmp_path / "m.safetensors", setup, trained(setup))
    _, got = load_method(path, params)
    assert {a.dtype for a in flatten(got).values()} == {np.dtype(np.float64)}
    with pytest.raises(ValueError, match=r"m\.safetensors: .*dtype float64, expected float32"):
        load_method(path, PARAMS, allow_base_mismatch=True)  # a float32 base: the file's tensors do not fit it


# ---- bad files: each refused, naming the file and the field or tensor ---------------------------------------

def test_another_base_is_a_base_mismatch(saved):
    path = saved["adapter_h"][2]
    with pytest.raises(BaseMismatch, match=rf"method file {path} was made from base parameters with fingerprint "
                                           r"[0-9a-f]{12}, but the base given .*allow_base_mismatch"):
        load_method(path, base_params(1))
    loaded, got = load_method(path, base_params(1), allow_base_mismatch=True)
    assert bytes_equal(got, saved["adapter_h"][1])


@pytest.mark.parametrize("edit, match", [
    (lambda i: {**i, "method": "lorax"}, r"metadata field 'method' is 'lorax', which is not a minilora method; "
                                         r"known methods: \['adapter_h', 'adapter_l', 'bitfit'"),
    (lambda i: {**i, "method": 3}, r"metadata field 'method' must be a JSON string"),
    (lambda i: {k: v for k, v in i.items() if k != "method"}, r"no 'method' field"),
    (lambda i: {**i, "options": {"r": 4, "rank": 2}}, r"metadata field 'options'.*unknown option\(s\) \['rank'\]"),
    (lambda i: {**i, "options": {"r": 0}}, r"metadata field 'options'.*AdapterH.r"),
    (lambda i: {**i, "options": [4]}, r"metadata field 'options' must be a JSON object"),
    (lambda i: {**i, "config": {**i["config"], "n_layer": "3"}}, r"metadata field 'config'"),
    (lambda i: {**i, "kind": "adapter"}, r"holds a minilora 'adapter', expected a 'method'"),
])
def test_bad_metadata(saved, tmp_path, edit, match):
    bad = rewrite(saved["adapter_h"][2], tmp_path / "bad.safetensors", edit_info=edit)
    with pytest.raises(ValueError, match=rf"{bad}.*{match}|{match}.*{bad}"):
        load_method(bad, PARAMS)


def _tampered(arrays, name, value):
    arrays[name] = value
    return arrays


@pytest.mark.parametrize("edit, match", [
    (lambda a: _tampered(a, "blocks.1.mlp.up.W", np.zeros((3, 3), np.float32)),
     r"blocks\.1\.mlp\.up\.W has shape \(3, 3\), expected \(16, 4\)"),
    (lambda a: {k: v for k, v in a.items() if k != "blocks.0.attn.down.b"}, r"missing \['blocks\.0\.attn\.down\.b'\]"),
    (lambda a: _tampered(a, "wte", np.zeros((2, 2), np.float32)), r"unexpected \['wte'\]"),
    (lambda a: _tampered(a, "blocks.0.attn.up.b", a["blocks.0.attn.up.b"].astype(np.float64)), r"mixed dtypes"),
    (lambda a: _tampered(a, "blocks.2.mlp.down.W", np.full_like(a["blocks.2.mlp.down.W"], np.nan)),
     r"blocks\.2\.mlp\.down\.W.*NaN.*allow_nonfinite"),
])
def test_bad_tensors_are_named(saved, tmp_path, edit, match):
    bad = rewrite(saved["adapter_h"][2], tmp_path / "bad.safetensors", edit_arrays=edit)
    with pytest.raises(ValueError, match=rf"method file {bad}: .*{match}"):
        load_method(bad, PARAMS)


def test_nonfinite_values_load_with_the_opt_out(saved, tmp_path):
    bad = rewrite(saved["lora"][2], tmp_path / "nan.safetensors",
                  edit_arrays=lambda a: _tampered(a, "blocks.0.wq.B", np.full_like(a["blocks.0.wq.B"], np.inf)))
    _, got = load_method(bad, PARAMS, allow_nonfinite=True)
    assert np.isinf(got["blocks"][0]["wq"]["B"]).all()


def test_a_truncated_file(saved, tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(saved["prelayer"][2].read_bytes()[:-12])
    with pytest.raises(ValueError, match=rf"{bad} is truncated or corrupt"):
        load_method(bad, PARAMS)


def test_an_adapter_file_is_not_a_method_file(tmp_path):
    lcfg = LoraConfig(r=2)
    path = save_adapter(tmp_path / "adapter.safetensors", init_lora(TINY3, lcfg, 0), lcfg, TINY3, base=PARAMS)
    with pytest.raises(ValueError, match=rf"{path} holds a minilora 'adapter', expected a 'method'"):
        load_method(path, PARAMS)


def test_a_plain_safetensors_file_is_not_a_method_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    path.write_bytes(safetensors.numpy.save({"x": np.zeros(2, np.float32)}))
    with pytest.raises(ValueError, match=rf"{path} is a safetensors file but not a minilora method"):
        load_method(path, PARAMS)


def test_config_mismatch_and_params_that_do_not_fit(saved):
    path = saved["bitfit"][2]
    with pytest.raises(ValueError, match=rf"method file {path} was saved for GPTConfig.*differs from the config "
                                         "given"):
        load_method(path, PARAMS, TINY)
    with pytest.raises(ValueError, match=rf"method file {path} was saved for a base with .*do not fit it"):
        load_method(path, init_params(TINY, 0))


# ---- saving ----------------------------------------------------------------------------------------------

def test_save_refuses_nonfinite_values_and_writes_nothing(tmp_path):
    setup = build("preembed")
    bad = {"virtual": np.full_like(setup.trainable["virtual"], np.nan)}
    with pytest.raises(ValueError, match=r"method file .*m\.safetensors.*virtual.*NaN.*nothing was written"):
        save_method(tmp_path / "m.safetensors", setup, bad)
    assert list(tmp_path.iterdir()) == []
    save_method(tmp_path / "m.safetensors", setup, bad, allow_nonfinite=True)
    assert np.isnan(load_method(tmp_path / "m.safetensors", PARAMS, allow_nonfinite=True)[1]["virtual"]).all()


def test_save_refuses_a_tree_that_is_not_the_setups(tmp_path):
    setup = build("lora_plus")  # r = 4 on wq, wv
    wrong = init_lora(TINY3, LoraConfig(r=2), 0)
    with pytest.raises(ValueError, match=r"trainable tree for 'lora_plus'.*blocks\.0\.wq\.A has shape \(2, 16\), "
                                         r"expected \(4, 16\)"):
        save_method(tmp_path / "m.safetensors", setup, wrong)
    with pytest.raises(TypeError, match=r"setup must be a minilora.methods Setup"):
        save_method(tmp_path / "m.safetensors", setup.trainable, setup.trainable)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_old_file(saved, tmp_path, monkeypatch):
    setup, trainable, _ = saved["adapter_l"]
    path = save_method(tmp_path / "m.safetensors", setup, trainable)
    before = path.read_bytes()
    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(SaveError, match=r"could not write .*m\.safetensors: No space left on device; the existing "
                                        r"file is unchanged") as err:
        save_method(path, setup, trained(setup, seed=9))
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert bytes_equal(load_method(path, PARAMS)[1], trainable)


# ---- what a loaded setup is good for -------------------------------------------------------------------------

def test_a_loaded_setup_trains_on_from_the_files_values(saved):
    from conftest import TinyLMTask

    from minilora.train import TrainConfig, train

    setup, trainable, path = saved["lora_fa"]
    loaded, got = load_method(path, PARAMS)
    result = train(TinyLMTask(length=16), PARAMS, TINY3, TrainConfig(steps=2, batch_size=2, lr=1e-2, warmup=0,
                                                                       eval_every=0, checkpoint_every=0),
                   method=loaded, progress=False)
    assert result.opt_state["step"] == 2
    assert bytes_equal(loaded.frozen["lora_A"], setup.frozen["lora_A"])  # A stayed frozen at the file's values
    moved = flatten(result.trainable)
    assert all(not np.array_equal(moved[k], v) for k, v in flatten(got).items())  # B went on from the file's


def test_on_a_device_the_file_is_the_same_and_loads_onto_the_device(saved, tmp_path):
    import fake_gpu

    from minilora import backend

    setup, trainable, path = saved["adapter_l"]
    before = backend._xp
    backend.register(fake_gpu)
    try:
        backend.use(fake_gpu)
        d_params, d_trainable = backend.to_device((PARAMS, trainable))
        d_setup = METHODS["adapter_l"].build(d_params, TINY3, seed=2, **OPTIONS["adapter_l"])
        d_path = save_method(tmp_path / "dev.safetensors", d_setup, d_trainable)
        assert d_path.read_bytes() == path.read_bytes()  # through to_host: the same bytes as on NumPy
        loaded, got = load_method(d_path, d_params)
        assert all(type(a) is fake_gpu.ndarray for a in flatten(got).values())
        logits = backend.to_host(loaded.logits(got, backend.to_device(batch())))
    finally:
        backend._xp = before
    assert logits.tobytes() == setup.logits(trainable, batch()).tobytes()
