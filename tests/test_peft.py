"""minilora.interop.load_peft_adapter / save_peft_adapter without torch.

PEFT folders are written here by hand with PEFT's names and options (test_parity_torch.py checks the same rules
against PEFT itself): target matching, the fused c_attn both ways, patterns, every refusal, exact round trips.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import safetensors.numpy
from interop_helpers import assert_trees_bitwise_equal, randomize

from minilora import GPTConfig, LoraConfig, forward, init_lora, init_params, merge
from minilora.interop import load_peft_adapter, save_peft_adapter
from minilora.interop.peft import peft_config_for
from minilora.interop.peft_config import options_from_peft
from minilora.interop.safetensors_raw import read_tensors

CFG = GPTConfig(vocab_size=29, context=10, d_model=16, n_layer=3, n_head=4, d_mlp=24)
D, M = 16, 24
SHAPES = {"attn.c_attn": (3 * D, D), "attn.c_proj": (D, D), "mlp.c_fc": (M, D), "mlp.c_proj": (D, M)}
ALL = ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")


def _lora(lcfg, seed=0, dtype=np.float64):
    return randomize(init_lora(CFG, lcfg, seed, dtype=dtype), seed + 1)


def _params(dtype=np.float64):
    return randomize(init_params(CFG, 0, dtype=dtype), 5)


def peft_folder(path, modules: dict, root="transformer.", seed=0, dtype=np.float32, **options):
    """A PEFT-style adapter folder: modules {(block, suffix): r} get random lora_A (r, in), lora_B (out, r)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for (i, suffix), r in modules.items():
        d_out, d_in = SHAPES[suffix]
        key = f"base_model.model.{root}h.{i}.{suffix}"
        tensors[f"{key}.lora_A.weight"] = rng.standard_normal((r, d_in)).astype(dtype)
        tensors[f"{key}.lora_B.weight"] = rng.standard_normal((d_out, r)).astype(dtype)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
           "bias": "none", "fan_in_fan_out": True, "use_rslora": False, "modules_to_save": None,
           "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
           "use_dora": False, "lora_bias": False, "init_lora_weights": False, **options}
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    (path / "adapter_model.safetensors").write_bytes(safetensors.numpy.save(tensors, metadata={"format": "pt"}))
    return tensors


def _every(suffixes, r, layers=range(CFG.n_layer)):
    return {(i, s): r for i in layers for s in suffixes}


# ---- minilora -> PEFT -> minilora ------------------------------------------------------------------------

LCFGS = [
    LoraConfig(r=2, alpha=4, targets=("wq", "wv")),
    LoraConfig(r=3, alpha=3, targets=("wq",)),
    LoraConfig(r=1, alpha=2, targets=("wk",), layers=(2,)),
    LoraConfig(r=2, alpha=0.3, targets=("wq", "wk", "wv")),
    LoraConfig(r=2, alpha=5, targets=ALL, use_rslora=True),
    LoraConfig(r=4, alpha=8, targets=("wo", "mlp_in", "mlp_out"), layers=(0, 2)),
    LoraConfig(r=3, alpha=7, targets=("wq", "wv", "mlp_out"), use_rslora=True, dropout=0.1, init="kaiming"),
]


@pytest.mark.parametrize("lcfg", LCFGS, ids=lambda c: f"r{c.r}-{'-'.join(c.targets)}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bitwise(tmp_path, lcfg, dtype):
    lora = _lora(lcfg, dtype=dtype)
    save_peft_adapter(tmp_path, lora, lcfg, CFG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    got, got_cfg = load_peft_adapter(tmp_path, CFG)
    assert got_cfg == lcfg
    assert_trees_bitwise_equal(got, lora)


@pytest.mark.parametrize("lcfg", LCFGS, ids=lambda c: f"r{c.r}-{'-'.join(c.targets)}")
def test_the_file_read_as_peft_reads_it_is_the_same_function(tmp_path, lcfg):
    """Without minilora's metadata the file is PEFT's shared-A c_attn adapter of rank n·r: another tree,
    the same logits and the same merged weights."""
    params, lora = _params(), _lora(lcfg)
    save_peft_adapter(tmp_path, lora, lcfg, CFG)
    n = sum(t in lcfg.targets for t in ("wq", "wk", "wv"))
    opts = options_from_peft(json.loads((tmp_path / "adapter_config.json").read_text()))
    if opts.scale("transformer.h.0.attn.c_attn") != lcfg.scale:  # c_attn's scale is one ulp off (rare)
        with pytest.raises(ValueError, match=r"rank_pattern.*different scales.*one r and one alpha"):
            load_peft_adapter(tmp_path, CFG, minilora_metadata=False)
        return
    plain, plain_cfg = load_peft_adapter(tmp_path, CFG, minilora_metadata=False)
    assert plain_cfg.scale == lcfg.scale and plain_cfg.r == max(n, 1) * lcfg.r  # others zero-padded to rank n·r
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, CFG.context))
    want = forward(params, tokens, CFG, lora, lcfg)
    np.testing.assert_allclose(forward(params, tokens, CFG, plain, plain_cfg), want, rtol=0, atol=1e-12)
    m1, m2 = merge(params, lora, lcfg), merge(params, plain, plain_cfg)
    for i, t in itertools.product(range(CFG.n_layer), ALL):
        np.testing.assert_allclose(m2["blocks"][i][t]["W"], m1["blocks"][i][t]["W"], rtol=0, atol=1e-14)
    if n > 1:
        assert {"wq", "wk", "wv"} <= set(plain_cfg.targets)


def test_saved_files_use_peft_names_and_layout(tmp_path):
    lcfg = LoraConfig(r=2, alpha=4, targets=("wq", "wv", "wo"), layers=(1,))
    lora = _lora(lcfg, dtype=np.float32)
    save_peft_adapter(tmp_path, lora, lcfg, CFG)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == ("LORA", 2, 4,
                                                                                      ["c_attn", "attn.c_proj"])
    assert (cfg["rank_pattern"], cfg["alpha_pattern"], cfg["layers_to_transform"]) == ({"c_attn": 4},
                                                                                       {"c_attn": 8}, [1])
    t = safetensors.numpy.load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(t) == [f"base_model.model.transformer.h.1.{m}.lora_{f}.weight"
                         for m in ("attn.c_attn", "attn.c_proj") for f in "AB"]
    A, B = t["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"], \
        t["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"]
    q, v = lora["blocks"][1]["wq"], lora["blocks"][1]["wv"]
    np.testing.assert_array_equal(A, np.concatenate([q["A"], v["A"]]))  # (2r, d): A stacked
    want_B = np.zeros((3 * D, 4), np.float32)  # [[B_q, 0], [0, 0], [0, B_v]]
    want_B[:D, :2], want_B[2 * D:, 2:] = q["B"], v["B"]
    np.testing.assert_array_equal(B, want_B)


@pytest.mark.parametrize("rslora", [False, True])
def test_c_attn_scale_equals_minilora_scale(rslora):
    """PEFT's scale of the rank-n·r c_attn is minilora's to within one ulp, and bit for bit in most cases
    (not always possible: fl(α'/(n r)) can skip the float s)."""
    exact = total = 0
    for alpha, r, n in itertools.product([0.1, 0.3, 1 / 3, 1.0, 7.0, 16.0, 1e-3], [1, 2, 3, 5], ["wq wv", "wq wk wv"]):
        targets = tuple(n.split())
        lcfg = LoraConfig(r=r, alpha=alpha, targets=targets + ("wo",), use_rslora=rslora)
        opts = options_from_peft(peft_config_for(lcfg, CFG))
        s = opts.scale("transformer.h.0.attn.c_attn")
        assert abs(s - lcfg.scale) <= np.spacing(lcfg.scale), (alpha, r, n)
        exact, total = exact + (s == lcfg.scale), total + 1
        assert opts.rank_alpha("transformer.h.0.attn.c_attn")[0] == len(targets) * r
        assert opts.scale("transformer.h.0.attn.c_proj") == lcfg.scale
    assert exact >= 0.8 * total, (exact, total)


# ---- PEFT's files -> minilora ------------------------------------------------------------------------------

def test_c_attn_is_three_adapters_sharing_a(tmp_path):
    t = peft_folder(tmp_path, _every(["attn.c_attn"], 2), r=2, lora_alpha=3, target_modules=["c_attn"],
                    lora_dropout=0.05, fan_in_fan_out=False)  # PEFT forces True for Conv1D; shapes are the same
    lora, lcfg = load_peft_adapter(tmp_path, CFG)
    assert lcfg == LoraConfig(r=2, alpha=3, targets=("wq", "wk", "wv"), dropout=0.05)
    A = t["base_model.model.transformer.h.2.attn.c_attn.lora_A.weight"]
    B = t["base_model.model.transformer.h.2.attn.c_attn.lora_B.weight"]
    for k, name in enumerate(("wq", "wk", "wv")):
        np.testing.assert_array_equal(lora["blocks"][2][name]["A"], A)
        np.testing.assert_array_equal(lora["blocks"][2][name]["B"], B[k * D:(k + 1) * D])
    assert lora["blocks"][2]["wq"]["A"] is not lora["blocks"][2]["wk"]["A"]  # copies, not one shared array


@pytest.mark.parametrize("options, modules, targets, layers", [
    ({"target_modules": ["c_proj"]}, _every(["attn.c_proj", "mlp.c_proj"], 8), ("wo", "mlp_out"), None),
    ({"target_modules": ["attn.c_proj"]}, _every(["attn.c_proj"], 8), ("wo",), None),
    ({"target_modules": ["mlp.c_proj", "c_fc"]}, _every(["mlp.c_proj", "mlp.c_fc"], 8), ("mlp_in", "mlp_out"), None),
    ({"target_modules": ["c_proj"], "exclude_modules": ["mlp.c_proj"]}, _every(["attn.c_proj"], 8), ("wo",), None),
    ({"target_modules": "all-linear"}, _every(SHAPES, 8), ALL, None),
    ({"target_modules": r".*\.h\.[02]\.mlp\.c_fc"}, _every(["mlp.c_fc"], 8, [0, 2]), ("mlp_in",), (0, 2)),
    ({"target_modules": ["c_attn"], "layers_to_transform": 1}, _every(["attn.c_attn"], 8, [1]), ("wq", "wk", "wv"),
     (1,)),
    ({"target_modules": ["c_fc"], "layers_to_transform": [0, 2], "layers_pattern": "h"},
     _every(["mlp.c_fc"], 8, [0, 2]), ("mlp_in",), (0, 2)),
    ({"target_modules": ["c_fc"], "layers_to_transform": []}, _every(["mlp.c_fc"], 8), ("mlp_in",), None),
    ({"target_modules": ["transformer.h.1.attn.c_proj"]}, _every(["attn.c_proj"], 8, [1]), ("wo",), (1,)),
    ({"target_modules": ["c_attn"], "rank_pattern": {"c_attn": 2}, "alpha_pattern": {"c_attn": 4}},
     _every(["attn.c_attn"], 2), ("wq", "wk", "wv"), None),
    # the first pattern that matches wins, so block 0 also gets rank 2 here
    ({"target_modules": ["c_attn"], "r": 2, "rank_pattern": {"c_attn": 2, "h.0.attn.c_attn": 3}},
     _every(["attn.c_attn"], 2), ("wq", "wk", "wv"), None),
])
def test_peft_target_matching(tmp_path, options, modules, targets, layers):
    peft_folder(tmp_path, modules, **options)
    lora, lcfg = load_peft_adapter(tmp_path, CFG)
    assert (lcfg.targets, lcfg.layers) == (targets, layers)
    assert lcfg.r == next(iter(modules.values()))


def test_different_ranks_with_one_scale_are_zero_padded(tmp_path):
    t = peft_folder(tmp_path, {**_every(["attn.c_attn"], 2), **_every(["mlp.c_fc"], 4)}, r=2, lora_alpha=3,
                    target_modules=["c_attn", "c_fc"], rank_pattern={"c_fc": 4}, alpha_pattern={"c_fc": 6})
    lora, lcfg = load_peft_adapter(tmp_path, CFG)
    assert (lcfg.r, lcfg.scale) == (4, 1.5)
    q, fc = lora["blocks"][1]["wq"], lora["blocks"][1]["mlp_in"]
    np.testing.assert_array_equal(q["A"][:2], t["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"])
    assert not q["A"][2:].any() and not q["B"][:, 2:].any()  # padding: ΔW unchanged
    np.testing.assert_array_equal(fc["B"], t["base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"])


def test_gpt2_model_root_without_the_transformer_prefix(tmp_path):
    peft_folder(tmp_path, _every(["mlp.c_fc"], 8, [1]), root="", target_modules=["c_fc"], layers_to_transform=[1],
                layers_pattern="h")
    assert load_peft_adapter(tmp_path, CFG)[1].layers == (1,)


def test_rslora_alpha_and_f16(tmp_path):
    t = peft_folder(tmp_path, _every(["attn.c_proj"], 4), dtype=np.float16, target_modules=["attn.c_proj"], r=4,
                    lora_alpha=6, use_rslora=True)
    lora, lcfg = load_peft_adapter(tmp_path, CFG)
    assert lcfg.scale == 6 / 2.0 and lora["blocks"][0]["wo"]["A"].dtype == np.float32
    np.testing.assert_array_equal(lora["blocks"][0]["wo"]["A"],
                                  t["base_model.model.transformer.h.0.attn.c_proj.lora_A.weight"].astype(np.float32))


@pytest.mark.parametrize("options, modules, match", [
    ({"use_dora": True}, None, "use_dora=True is not supported"),
    ({"lora_bias": True}, None, "lora_bias=True"),
    ({"bias": "all"}, None, "bias='all'"),
    ({"bias": "lora_only"}, None, "bias='lora_only'"),
    ({"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
    ({"layer_replication": [[0, 2]]}, None, "layer_replication"),
    ({"trainable_token_indices": [1, 2]}, None, "trainable_token_indices"),
    ({"some_new_option": 1}, None, r"unknown option\(s\) \['some_new_option'\]"),
    ({"peft_type": "IA3"}, None, "peft_type is 'IA3'"),
    ({"task_type": "SEQ_CLS"}, None, "task_type='SEQ_CLS'"),
    ({"init_lora_weights": "pissa_niter_4"}, None, "changes the base weights"),
    ({"init_lora_weights": "olora"}, None, "changes the base weights"),
    ({"target_modules": ["wte"]}, {}, "matches module 'transformer.wte'"),
    ({"target_modules": ["lm_head"]}, {}, "matches module 'lm_head'"),
    ({"target_modules": r"transformer\.h\.0\.attn"}, {}, "matches module 'transformer.h.0.attn'"),
    ({"target_modules": ["q_proj"]}, {}, "matches no module"),
    ({"target_modules": None}, {}, "target_modules is empty"),
    ({"target_modules": ".*c_fc", "layers_to_transform": [0]}, {}, "cannot be used with a regex"),
    ({"layers_pattern": "h"}, None, "layers_pattern needs layers_to_transform"),
    ({"target_modules": ["c_attn"], "rank_pattern": {"h.1.attn.c_attn": 4}},
     {(0, "attn.c_attn"): 8, (1, "attn.c_attn"): 4, (2, "attn.c_attn"): 8},
     r"\{'rank_pattern': \{'h.1.attn.c_attn': 4\}\} give .*one r and one alpha"),
    ({"target_modules": ["c_attn", "c_fc"], "alpha_pattern": {"c_fc": 3}},
     _every(["attn.c_attn", "mlp.c_fc"], 8), r"alpha_pattern.*one r and one alpha"),
    ({"target_modules": r"transformer\.h\.0\.attn\.c_attn|transformer\.h\.1\.mlp\.c_fc"},
     {(0, "attn.c_attn"): 8, (1, "mlp.c_fc"): 8}, "block 0 does not adapt mlp.c_fc"),
    ({"target_modules": ["transformer.h.0.attn.c_attn", "c_fc"], "layers_to_transform": [1]},
     {(0, "attn.c_attn"): 8, (1, "mlp.c_fc"): 8}, "block 0 does not adapt mlp.c_fc"),  # exact names ignore layers
    ({"target_modules": ["c_proj"], "r": 20}, _every(["attn.c_proj", "mlp.c_proj"], 20), r"r=20 exceeds"),
    ({"lora_dropout": 1.0}, None, "lora_dropout must be in"),
    ({"r": 0}, None, "r must be a positive int"),
])
def test_refuses_what_minilora_cannot_represent_naming_it(tmp_path, options, modules, match):
    options = {"target_modules": ["c_attn"], **options}
    peft_folder(tmp_path, _every(["attn.c_attn"], 8) if modules is None else modules, **options)
    with pytest.raises(ValueError, match=match):
        load_peft_adapter(tmp_path, CFG)


@pytest.mark.parametrize("edit, match", [
    (lambda t: {**t, "base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector": np.ones(48, np.float32)},
     "lora_magnitude_vector .DoRA"),
    (lambda t: {**t, "base_model.model.transformer.h.0.attn.c_attn.lora_B.bias": np.ones(48, np.float32)},
     "lora_B.bias .lora_bias"),
    (lambda t: {**t, "base_model.model.lm_head.modules_to_save.default.weight": np.ones((29, 16), np.float32)},
     "modules_to_save"),
    (lambda t: {k: v for k, v in t.items() if "h.1.attn.c_attn.lora_B" not in k},
     "tensor base_model.model.transformer.h.1.attn.c_attn.lora_B.weight is missing"),
    (lambda t: {**t, "base_model.model.transformer.h.2.attn.c_attn.lora_A.weight": np.ones((8, 15), np.float32)},
     r"h.2.attn.c_attn.lora_A.weight has shape \(8, 15\), expected \(8, 16\)"),
    (lambda t: {**t, "transformer.h.0.attn.c_attn.lora_A.weight": np.ones((8, 16), np.float32)},
     "does not start with 'base_model.model.'"),
])
def test_refuses_unknown_or_mismatched_tensors_naming_them(tmp_path, edit, match):
    t = peft_folder(tmp_path, _every(["attn.c_attn"], 8), target_modules=["c_attn"])
    (tmp_path / "adapter_model.safetensors").write_bytes(safetensors.numpy.save(edit(t)))
    with pytest.raises(ValueError, match=match):
        load_peft_adapter(tmp_path, CFG)


def test_refuses_nonfinite_unless_allowed(tmp_path):
    t = peft_folder(tmp_path, _every(["mlp.c_fc"], 8), target_modules=["c_fc"])
    t["base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"][3, 1] = np.nan
    (tmp_path / "adapter_model.safetensors").write_bytes(safetensors.numpy.save(t))
    with pytest.raises(ValueError, match=r"h.1.mlp.c_fc.lora_B.weight has 1 non-finite.*allow_nonfinite"):
        load_peft_adapter(tmp_path, CFG)
    lora, _ = load_peft_adapter(tmp_path, CFG, allow_nonfinite=True)
    assert np.isnan(lora["blocks"][1]["mlp_in"]["B"][3, 1])


def test_refuses_pickles_and_missing_files(tmp_path):
    (tmp_path / "adapter_model.bin").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="adapter_model.bin, a pickle"):
        load_peft_adapter(tmp_path, CFG)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft_adapter(tmp_path / "none", CFG)


def test_edited_minilora_file_is_refused_with_a_way_out(tmp_path):
    lcfg = LoraConfig(r=2, alpha=4, targets=("wq", "wv"))
    save_peft_adapter(tmp_path, _lora(lcfg, dtype=np.float32), lcfg, CFG)
    name = "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"
    path = tmp_path / "adapter_model.safetensors"
    t = safetensors.numpy.load_file(path)
    metadata = read_tensors(path)[2]  # keeps minilora's record
    t[name][D + 3, 0] = 1.0  # a value in wk's rows, which minilora wrote as zeros (PEFT training fills them)
    path.write_bytes(safetensors.numpy.save(t, metadata=metadata))
    with pytest.raises(ValueError, match=r"nonzero values .*rows of wk.*minilora_metadata=False"):
        load_peft_adapter(tmp_path, CFG)
    lora, got = load_peft_adapter(tmp_path, CFG, minilora_metadata=False)
    assert got.targets == ("wq", "wk", "wv") and got.r == 4
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 5}))
    with pytest.raises(ValueError, match="no longer matches the minilora LoraConfig"):
        load_peft_adapter(tmp_path, CFG)


def test_save_refuses_an_adapter_that_does_not_fit(tmp_path):
    lcfg = LoraConfig(r=2, targets=("wq",))
    with pytest.raises(ValueError, match="lora"):
        save_peft_adapter(tmp_path, _lora(LoraConfig(r=3, targets=("wq",))), lcfg, CFG)
    with pytest.raises(TypeError, match="LoraConfig"):
        save_peft_adapter(tmp_path, _lora(lcfg), {"r": 2}, CFG)
    assert not list(tmp_path.iterdir())
