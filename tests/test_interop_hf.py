"""minilora.interop.load_hf_gpt2 / save_hf_gpt2 without torch: layouts, round trips, and every refusal.

The files are built here by save_hf_gpt2 and then edited the way other writers differ (no prefix, old buffers,
a stored lm_head, F16/BF16, shards). test_parity_torch.py checks the same files against transformers itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy
from interop_helpers import assert_trees_bitwise_equal, bf16_bytes, randomize, write_raw_safetensors

from minilora import GPTConfig, forward, init_params
from minilora.interop import load_hf_gpt2, save_hf_gpt2
from minilora.interop.hf_gpt2 import gpt_config_from_hf
from minilora.tree import map_leaves

CFG = GPTConfig(vocab_size=37, context=12, d_model=16, n_layer=2, n_head=4, d_mlp=24, ln_eps=1e-6)


def _params(dtype=np.float32, seed=0, config=CFG):
    return randomize(init_params(config, 0, dtype=dtype), seed)


def _saved(tmp_path, dtype=np.float32, name="hf"):
    params = _params(dtype)
    save_hf_gpt2(tmp_path / name, params, CFG)
    return tmp_path / name, params


def _edit(folder, fn):
    """Rewrite model.safetensors as fn(dict of arrays) returns it."""
    arrays = safetensors.numpy.load_file(folder / "model.safetensors")
    (folder / "model.safetensors").write_bytes(safetensors.numpy.save(fn(arrays), metadata={"format": "pt"}))


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    for k in [k for k, v in changes.items() if v is ...]:
        del cfg[k]
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bitwise(tmp_path, dtype):
    folder, params = _saved(tmp_path, dtype)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    loaded, config = load_hf_gpt2(folder)
    assert config == CFG
    assert_trees_bitwise_equal(loaded, params)


def test_file_layout_is_transformers(tmp_path):
    folder, p = _saved(tmp_path)
    a = safetensors.numpy.load_file(folder / "model.safetensors")
    b = p["blocks"][1]
    np.testing.assert_array_equal(a["transformer.h.1.attn.c_attn.weight"],
                                  np.concatenate([b["wq"]["W"], b["wk"]["W"], b["wv"]["W"]]).T)  # Conv1D (in, out)
    np.testing.assert_array_equal(a["transformer.h.1.attn.c_attn.bias"],
                                  np.concatenate([b["wq"]["b"], b["wk"]["b"], b["wv"]["b"]]))
    np.testing.assert_array_equal(a["transformer.h.1.mlp.c_fc.weight"], b["mlp_in"]["W"].T)  # (d, m)
    np.testing.assert_array_equal(a["transformer.h.1.mlp.c_proj.weight"], b["mlp_out"]["W"].T)  # (m, d)
    np.testing.assert_array_equal(a["transformer.h.1.ln_2.weight"], b["ln2"]["g"])
    assert "lm_head.weight" not in a  # tied
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["n_inner"], cfg["layer_norm_epsilon"], cfg["n_positions"], cfg["vocab_size"]) == (24, 1e-6, 12, 37)
    assert cfg["activation_function"] == "gelu_new" and cfg["tie_word_embeddings"] is True


def test_default_mlp_width_is_written_as_null(tmp_path):
    config = GPTConfig(vocab_size=11, context=4, d_model=8, n_layer=1, n_head=2)
    save_hf_gpt2(tmp_path, _params(config=config), config)
    assert json.loads((tmp_path / "config.json").read_text())["n_inner"] is None
    assert load_hf_gpt2(tmp_path)[1] == config


def test_old_files_without_prefix_with_buffers_and_a_stored_head(tmp_path):
    folder, params = _saved(tmp_path)

    def old(arrays):
        out = {k.removeprefix("transformer."): v for k, v in arrays.items()}
        for i in range(CFG.n_layer):
            out[f"h.{i}.attn.bias"] = np.tril(np.ones((20, 20), np.float32))[None, None]  # (1, 1, n_ctx, n_ctx)
            out[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
        out["lm_head.weight"] = out["wte.weight"].copy()
        return out

    _edit(folder, old)
    loaded, _ = load_hf_gpt2(folder)
    assert_trees_bitwise_equal(loaded, params)


@pytest.mark.parametrize("edit, match", [
    (lambda a: {**a, "lm_head.weight": a["transformer.wte.weight"] + 1}, "lm_head.weight differs"),
    (lambda a: {**a, "transformer.h.0.attn.bias": np.ones((1, 1, 12, 12), np.float32)},
     "transformer.h.0.attn.bias .* not GPT-2's causal mask"),
    (lambda a: {**a, "transformer.h.1.attn.masked_bias": np.array(0.0, np.float32)},
     "transformer.h.1.attn.masked_bias must be one number <= -1e4"),
    (lambda a: {**a, "transformer.h.0.attn.c_attn.lora_A": np.ones(2, np.float32)},
     r"unexpected tensor\(s\) \['transformer.h.0.attn.c_attn.lora_A'\]"),
    (lambda a: {k: v for k, v in a.items() if k != "transformer.h.1.mlp.c_fc.bias"},
     "tensor transformer.h.1.mlp.c_fc.bias is missing"),
    (lambda a: {**a, "transformer.h.0.mlp.c_proj.weight": a["transformer.h.0.mlp.c_proj.weight"].T.copy()},
     r"transformer.h.0.mlp.c_proj.weight has shape \(16, 24\), expected \(24, 16\)"),
    (lambda a: {**a, "transformer.wte.weight": np.zeros((36, 16), np.float32)},
     r"transformer.wte.weight has shape \(36, 16\), expected \(37, 16\)"),
    (lambda a: {**{k.removeprefix("transformer.") if "h.0" in k else k: v for k, v in a.items()}},
     "lacks the 'transformer.' prefix"),
    (lambda a: {**a, "transformer.ln_f.bias": np.arange(16)}, "ln_f.bias has dtype int64, expected a float"),
])
def test_refuses_what_it_cannot_load_naming_the_tensor(tmp_path, edit, match):
    folder, _ = _saved(tmp_path)
    _edit(folder, edit)
    with pytest.raises(ValueError, match=match):
        load_hf_gpt2(folder)


def test_refuses_nonfinite_naming_the_tensor_unless_allowed(tmp_path):
    folder, params = _saved(tmp_path)

    def poison(a):
        a["transformer.h.1.attn.c_proj.weight"][2, 3] = np.nan
        a["transformer.h.1.attn.c_proj.weight"][0, 0] = np.inf
        return a

    _edit(folder, poison)
    with pytest.raises(ValueError, match=r"transformer.h.1.attn.c_proj.weight has 2 non-finite .*allow_nonfinite"):
        load_hf_gpt2(folder)
    loaded, _ = load_hf_gpt2(folder, allow_nonfinite=True)
    assert np.isnan(loaded["blocks"][1]["wo"]["W"][3, 2]) and np.isinf(loaded["blocks"][1]["wo"]["W"][0, 0])


def test_f16_and_bf16_widen_exactly_to_float32(tmp_path):
    half = _params(np.float16)
    save_hf_gpt2(tmp_path / "f16", half, CFG)
    loaded, _ = load_hf_gpt2(tmp_path / "f16")
    assert_trees_bitwise_equal(loaded, map_leaves(lambda a: a.astype(np.float32), half))
    # BF16: values that are BF16 numbers (float32 with the low 16 bits cleared), written as BF16 bytes
    folder, _ = _saved(tmp_path, name="bf")
    arrays = safetensors.numpy.load_file(folder / "model.safetensors")
    trunc = {k: (v.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32) for k, v in arrays.items()}
    write_raw_safetensors(folder / "model.safetensors",
                          {k: ("BF16", v.shape, bf16_bytes(v)) for k, v in trunc.items()}, {"format": "pt"})
    loaded, _ = load_hf_gpt2(folder)
    assert loaded["blocks"][0]["wq"]["W"].dtype == np.float32
    np.testing.assert_array_equal(loaded["blocks"][0]["wk"]["W"],
                                  trunc["transformer.h.0.attn.c_attn.weight"][:, 16:32].T)
    np.testing.assert_array_equal(loaded["wte"], trunc["transformer.wte.weight"])


def test_sharded_checkpoint(tmp_path):
    folder, params = _saved(tmp_path)
    arrays = safetensors.numpy.load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(arrays)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        (folder / shard).write_bytes(safetensors.numpy.save({k: arrays[k] for k in keys}, metadata={"format": "pt"}))
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_trees_bitwise_equal(load_hf_gpt2(folder)[0], params)
    index["weight_map"][names[0]] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not listed for this shard"):
        load_hf_gpt2(folder)


def test_refuses_pickles_and_missing_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="pytorch_model.bin, a pickle"):
        load_hf_gpt2(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_gpt2(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_hf_gpt2(tmp_path / "absent")


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


BASE_HF = {"model_type": "gpt2", "vocab_size": 37, "n_positions": 12, "n_embd": 16, "n_layer": 2, "n_head": 4}


@pytest.mark.parametrize("change, match", [
    ({"activation_function": "gelu"}, "activation_function='gelu' is the exact erf GELU"),
    ({"activation_function": "relu"}, "activation_function='relu'"),
    ({"activation_function": "gelu_fast"}, "constant rounded"),
    ({"scale_attn_weights": False}, "scale_attn_weights=False"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn=True"),
    ({"add_cross_attention": True}, "add_cross_attention=True"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings=False"),
    ({"model_type": "gpt_neo"}, "model_type is 'gpt_neo'"),
    ({"pruned_heads": {"0": [1]}}, "pruned_heads"),
    ({"n_inner": 0}, "n_inner must be null"),
    ({"layer_norm_epsilon": float("inf")}, "layer_norm_epsilon"),
    ({"n_embd": 15}, "n_embd=15 is not divisible by n_head=4"),
    ({"n_layer": True}, "n_layer must be a positive int"),
    ({"hidden_size": 32}, "hidden_size=32 contradicts n_embd=16"),
])
def test_refuses_configs_it_cannot_compute_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        gpt_config_from_hf({**BASE_HF, **change})


def test_config_fields_carried_and_aliases_and_defaults():
    assert gpt_config_from_hf({**BASE_HF, "n_inner": 40, "layer_norm_epsilon": 1e-3,
                               "activation_function": "gelu_pytorch_tanh", "resid_pdrop": 0.1}) == \
        GPTConfig(vocab_size=37, context=12, d_model=16, n_layer=2, n_head=4, d_mlp=40, ln_eps=1e-3)
    alias = {"model_type": "gpt2", "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1,
             "max_position_embeddings": 8, "vocab_size": 5}
    assert gpt_config_from_hf(alias) == GPTConfig(vocab_size=5, context=8, d_model=16, n_layer=1, n_head=2)
    assert gpt_config_from_hf({"model_type": "gpt2"}) == GPTConfig.preset("gpt2")  # transformers' defaults


def test_loaded_model_runs(tmp_path):
    folder, params = _saved(tmp_path)
    loaded, config = load_hf_gpt2(folder)
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, CFG.context))
    np.testing.assert_array_equal(forward(loaded, tokens, config), forward(params, tokens, CFG))


def test_save_refuses_params_that_do_not_fit(tmp_path):
    params = _params()
    with pytest.raises(ValueError, match="wte"):
        save_hf_gpt2(tmp_path, params, GPTConfig(vocab_size=38, context=12, d_model=16, n_layer=2, n_head=4,
                                                 d_mlp=24))
    assert not (tmp_path / "model.safetensors").exists()
