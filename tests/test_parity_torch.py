"""Parity with PyTorch + transformers + PEFT (issue 7 §5): the files go both ways and compute the same logits.

Every model is built here at random (tiny GPT-2 configs, all weights N(0, 0.3²), LayerNorms too, PEFT's
init_lora_weights=False so that B != 0); nothing is downloaded. Tolerances on max |Δlogit|: 1e-5 in float32,
1e-12 in float64 (measured: ~2e-6 and ~4e-15). Skipped, with the reason, where torch/transformers/peft are
not installed (pip install 'minilora[parity]').
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

REASON = "parity tests need torch, transformers and peft: pip install 'minilora[parity]'"
torch = pytest.importorskip("torch", reason=REASON)
transformers = pytest.importorskip("transformers", reason=REASON)
peft = pytest.importorskip("peft", reason=REASON)

from interop_helpers import randomize  # noqa: E402

from minilora import LoraConfig, forward, init_lora, init_params, merge  # noqa: E402
from minilora.interop import load_hf_gpt2, load_peft_adapter, save_hf_gpt2, save_peft_adapter  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-12}
TORCH = {np.float32: torch.float32, np.float64: torch.float64}
DTYPES = [np.float32, np.float64]


def hf_gpt2(dtype, seed=0, lm_head=True, **overrides):
    """A random transformers GPT-2 (eval mode) whose weights all matter."""
    config = transformers.GPT2Config(
        vocab_size=53, n_positions=16, n_embd=16, n_layer=3, n_head=4, n_inner=40, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, **overrides)
    torch.manual_seed(seed)
    cls = transformers.GPT2LMHeadModel if lm_head else transformers.GPT2Model
    model = cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.to(TORCH[dtype]).eval()


def tokens(config, seed=0, shape=(3, 16)):
    return np.random.default_rng(seed).integers(0, config.vocab_size, shape)


def torch_logits(model, toks) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(toks)).logits.numpy()


def max_diff(a, b) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return float(np.abs(a - b).max())


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT: "fan_in_fan_out is set to False but the target module is Conv1D"
        transformers.logging.set_verbosity_error()
        yield


# ---- transformers' GPT-2 <-> minilora ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_hf_model_loads_and_computes_the_same(tmp_path, dtype):
    model = hf_gpt2(dtype, layer_norm_epsilon=1e-4, activation_function="gelu_pytorch_tanh")
    model.save_pretrained(tmp_path)
    params, config = load_hf_gpt2(tmp_path)
    assert (config.d_mlp, config.ln_eps, params["wte"].dtype) == (40, 1e-4, dtype)
    toks = tokens(config)
    assert max_diff(forward(params, toks, config), torch_logits(model, toks)) < TOL[dtype]


def test_gpt2model_files_have_no_prefix_and_load(tmp_path):
    lm = hf_gpt2(np.float32)
    lm.transformer.save_pretrained(tmp_path)  # GPT2Model: names without "transformer."
    params, config = load_hf_gpt2(tmp_path)
    toks = tokens(config)
    assert max_diff(forward(params, toks, config), torch_logits(lm, toks)) < 1e-5


def test_bf16_and_f16_checkpoints_widen_exactly(tmp_path):
    for tdt in (torch.bfloat16, torch.float16):
        model = hf_gpt2(np.float32).to(tdt)
        model.save_pretrained(tmp_path / str(tdt))
        params, _ = load_hf_gpt2(tmp_path / str(tdt))
        w = model.transformer.h[1].attn.c_attn.weight.detach().float().numpy()  # (d, 3d) Conv1D
        assert params["blocks"][1]["wv"]["W"].dtype == np.float32
        np.testing.assert_array_equal(params["blocks"][1]["wv"]["W"], w[:, 32:].T)
        np.testing.assert_array_equal(params["wte"], model.transformer.wte.weight.detach().float().numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_saved_minilora_model_loads_into_transformers(tmp_path, dtype):
    params, config = load_hf_gpt2(_saved_hf(tmp_path, dtype))
    save_hf_gpt2(tmp_path / "mine", params, config)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "mine", dtype=TORCH[dtype]).eval()
    toks = tokens(config, 1)
    assert max_diff(forward(params, toks, config), torch_logits(model, toks)) < TOL[dtype]


def _saved_hf(tmp_path, dtype):
    hf_gpt2(dtype, seed=3).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


# ---- PEFT -> minilora ------------------------------------------------------------------------------------

PEFT_CONFIGS = {
    "c_attn": dict(r=4, lora_alpha=8, target_modules=["c_attn"]),
    "c_attn-c_proj-c_fc-rslora": dict(r=2, lora_alpha=3, target_modules=["c_attn", "c_proj", "c_fc"],
                                      use_rslora=True),
    "c_proj-layers": dict(r=3, lora_alpha=5, target_modules=["c_proj"], layers_to_transform=[0, 2]),
    "regex": dict(r=2, lora_alpha=2, target_modules=r".*\.h\.[12]\.mlp\.c_fc"),
    "all-linear": dict(r=3, lora_alpha=6, target_modules="all-linear", lora_dropout=0.1),
    "exclude": dict(r=2, lora_alpha=4, target_modules=["c_proj", "c_attn"], exclude_modules=["mlp.c_proj"]),
    "uniform-patterns": dict(r=2, lora_alpha=7, target_modules=["c_attn", "c_fc"], rank_pattern={"c_attn": 2},
                             alpha_pattern={"c_fc": 7}),
    "ranks-differ-scale-same": dict(r=2, lora_alpha=3, target_modules=["c_attn", "c_proj"],
                                    rank_pattern={"c_proj": 4}, alpha_pattern={"c_proj": 6}),
    "layer-int-pattern": dict(r=1, lora_alpha=0.5, target_modules=["c_attn"], layers_to_transform=1,
                              layers_pattern="h"),
}


@pytest.mark.parametrize("name", PEFT_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_peft_adapter_loads_and_computes_the_same(tmp_path, name, dtype):
    model = hf_gpt2(dtype, seed=1)
    model.save_pretrained(tmp_path / "base")
    peft_model = peft.get_peft_model(model, peft.LoraConfig(init_lora_weights=False, **PEFT_CONFIGS[name])).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    params, config = load_hf_gpt2(tmp_path / "base")
    lora, lora_config = load_peft_adapter(tmp_path / "adapter", config)
    toks = tokens(config, 2)
    want = torch_logits(peft_model, toks)
    assert max_diff(forward(params, toks, config, lora, lora_config), want) < TOL[dtype]
    with peft_model.disable_adapter():  # the adapter does change the logits
        assert max_diff(forward(params, toks, config), torch_logits(peft_model, toks)) < TOL[dtype]
    assert max_diff(forward(params, toks, config), want) > 1e-2
    merged_model = peft_model.merge_and_unload()
    assert max_diff(forward(merge(params, lora, lora_config), toks, config), torch_logits(merged_model, toks)) \
        < TOL[dtype]


def test_peft_rank_pattern_that_minilora_cannot_represent_is_refused(tmp_path):
    model = hf_gpt2(np.float32, seed=1)
    cfg = peft.LoraConfig(r=2, target_modules=["c_attn", "c_fc"], rank_pattern={"h.1.mlp.c_fc": 3},
                          init_lora_weights=False)
    peft.get_peft_model(model, cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"rank_pattern.*h.1.mlp.c_fc.*one r and one alpha"):
        load_peft_adapter(tmp_path, load_hf_gpt2(_saved_hf(tmp_path, np.float32))[1])


@pytest.mark.parametrize("options, match", [
    ({"use_dora": True}, "use_dora=True"),
    ({"lora_bias": True}, "lora_bias=True"),
    ({"bias": "lora_only"}, "bias='lora_only'"),
    ({"modules_to_save": ["ln_f"]}, "modules_to_save"),
    ({"target_modules": ["c_attn", "wte"]}, "matches module 'transformer.wte'"),
])
def test_peft_features_minilora_lacks_are_refused_by_name(tmp_path, options, match):
    model = hf_gpt2(np.float32, seed=1)
    cfg = peft.LoraConfig(**{"r": 2, "target_modules": ["c_attn"], "init_lora_weights": False, **options})
    peft.get_peft_model(model, cfg).save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match=match):
        load_peft_adapter(tmp_path / "adapter", load_hf_gpt2(_saved_hf(tmp_path, np.float32))[1])


# ---- minilora -> PEFT ------------------------------------------------------------------------------------

MINILORA_CONFIGS = [
    LoraConfig(r=2, alpha=4, targets=("wq", "wv")),
    LoraConfig(r=3, alpha=0.7, targets=("wk",), layers=(1,)),
    LoraConfig(r=2, alpha=5, targets=("wq", "wk", "wv", "wo", "mlp_in", "mlp_out"), use_rslora=True),
    LoraConfig(r=2, alpha=3, targets=("wq", "wv", "mlp_out"), layers=(0, 2), use_rslora=True),
    LoraConfig(r=4, alpha=8, targets=("wo", "mlp_in")),
]


@pytest.mark.parametrize("lora_config", MINILORA_CONFIGS, ids=lambda c: "-".join(c.targets) + f"-r{c.r}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_minilora_adapter_loads_into_peft_and_computes_the_same(tmp_path, lora_config, dtype):
    params, config = load_hf_gpt2(_saved_hf(tmp_path, dtype))
    lora = randomize(init_lora(config, lora_config, 0, dtype=dtype), 4)
    save_peft_adapter(tmp_path / "adapter", lora, lora_config, config)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", dtype=TORCH[dtype])
    peft_model = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    toks = tokens(config, 3)
    assert max_diff(forward(params, toks, config, lora, lora_config), torch_logits(peft_model, toks)) < TOL[dtype]
    merged = peft_model.merge_and_unload()
    assert max_diff(forward(merge(params, lora, lora_config), toks, config), torch_logits(merged, toks)) < TOL[dtype]


def test_minilora_base_and_adapter_both_saved_by_minilora(tmp_path):
    from minilora import GPTConfig

    config = GPTConfig(vocab_size=41, context=8, d_model=8, n_layer=2, n_head=2, d_mlp=12, ln_eps=1e-6)
    params = randomize(init_params(config, 0), 7)
    lora_config = LoraConfig(r=2, alpha=2, targets=("wq", "wv", "wo"))
    lora = randomize(init_lora(config, lora_config, 0), 8)
    save_hf_gpt2(tmp_path / "base", params, config)
    save_peft_adapter(tmp_path / "adapter", lora, lora_config, config)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    peft_model = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    toks = tokens(config, 4, (2, 8))
    assert max_diff(forward(params, toks, config, lora, lora_config), torch_logits(peft_model, toks)) < 1e-5
