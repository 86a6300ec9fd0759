"""LoRA semantics: initialisation, merge/unmerge, parameter counts, configuration, dropout, input validation,
and the frozen base."""

from __future__ import annotations

import copy
import math

import autograd
import numpy as np
import pytest

from minilora import GPTConfig, LoraConfig, count_params, forward, init_lora, init_params, merge, unmerge
from minilora.lora import paper_param_count
from minilora.ops import cross_entropy
from minilora.tree import flatten, map_leaves

TINY = GPTConfig.preset("tiny")  # d_model 16, d_mlp 24, 2 layers, context 16
ALL = ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")


def _params(dtype=np.float32, seed=0):
    """Tiny parameters at a scale where the weights matter (GPT-2's 0.02 init gives near-constant logits)."""
    p = init_params(TINY, seed, dtype=dtype)
    p["wte"] = (p["wte"] * 25).astype(dtype)
    for block in p["blocks"]:
        for name in ALL:
            block[name]["W"] = (block[name]["W"] * 10).astype(dtype)
    return p


def _trained(lora, seed=0, scale=0.3):
    """An adapter with B != 0 (as after training); a new tree, dtype kept."""
    rng = np.random.default_rng(seed)

    def f(a):
        return (a + scale * rng.standard_normal(a.shape)).astype(a.dtype)

    return map_leaves(f, lora)


def _tokens(seed=0, shape=(2, 10)):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, size=shape)


def _copy(tree):
    return map_leaves(np.copy, tree)


def _assert_bitwise_equal(a, b):
    fa, fb = flatten(a), flatten(b)
    assert list(fa) == list(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


TOK = _tokens()
TGT = _tokens(1)


# ---- a fresh adapter is the base model -----------------------------------------------------------------------


@pytest.mark.parametrize("lora_config", [
    LoraConfig(r=4, targets=ALL),
    LoraConfig(r=2, targets=("wq", "wv"), init="kaiming"),
    LoraConfig(r=8, alpha=32, targets=("wo", "mlp_out"), use_rslora=True, layers=(1,)),
    LoraConfig(r=4, targets=ALL, dropout=0.5),
], ids=["all-gaussian", "qv-kaiming", "rslora-layer1", "dropout"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fresh_adapter_is_bitwise_the_base_model(lora_config, dtype):
    params = _params(dtype)
    lora = init_lora(TINY, lora_config, seed=3, dtype=dtype)
    base = forward(params, TOK, TINY)
    rng = np.random.default_rng(0) if lora_config.dropout else None
    adapted = forward(params, TOK, TINY, lora, lora_config, rng=rng)
    assert adapted.dtype == base.dtype == dtype
    assert np.array_equal(adapted, base)


def test_at_init_dA_is_exactly_zero_and_dB_is_not():
    params = _params()
    cfg = LoraConfig(r=4, targets=ALL)
    lora = init_lora(TINY, cfg, seed=0)
    grad = autograd.grad(lambda l: cross_entropy(forward(params, TOK, TINY, l, cfg), TGT))(lora)
    for i, block in enumerate(grad["blocks"]):
        assert set(block) == set(ALL)
        for t, g in block.items():
            assert g["A"].dtype == g["B"].dtype == np.float32
            assert np.all(g["A"] == 0), f"block {i} {t}: dL/dA must be exactly 0 while B = 0"
            assert np.any(g["B"] != 0), f"block {i} {t}: dL/dB must not be 0 (B could never move)"


# ---- merge / unmerge -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("lora_config", [
    LoraConfig(r=4, targets=ALL),
    LoraConfig(r=3, alpha=5, targets=("wq", "wv", "mlp_in"), use_rslora=True, layers=(0,)),
], ids=["all", "subset"])
def test_merged_forward_equals_unmerged(lora_config, dtype, tol):
    params = _params(dtype)
    lora = _trained(init_lora(TINY, lora_config, seed=1, dtype=dtype))
    unmerged = forward(params, TOK, TINY, lora, lora_config)
    merged_params = merge(params, lora, lora_config)
    merged = forward(merged_params, TOK, TINY)
    assert merged.dtype == unmerged.dtype == dtype
    assert np.max(np.abs(merged - forward(params, TOK, TINY))) > 1e-2  # the adapter matters
    assert np.max(np.abs(merged - unmerged)) <= tol
    # only the adapted matrices changed
    for i, (b0, b1) in enumerate(zip(params["blocks"], merged_params["blocks"])):
        for name in ALL:
            adapted = i in lora_config.adapted_layers(TINY) and name in lora_config.targets
            assert np.array_equal(b0[name]["W"], b1[name]["W"]) != adapted, (i, name)
            assert b1[name]["W"].dtype == dtype


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_unmerge_inverts_merge(dtype, tol):
    cfg = LoraConfig(r=4, targets=ALL)
    params = _params(dtype)
    lora = _trained(init_lora(TINY, cfg, seed=1, dtype=dtype))
    back = unmerge(merge(params, lora, cfg), lora, cfg)
    for key, a in flatten(params).items():
        b = flatten(back)[key]
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=tol, err_msg=key)


@pytest.mark.parametrize("fold", [merge, unmerge])
def test_merge_and_unmerge_leave_their_inputs_alone(fold):
    cfg = LoraConfig(r=4, targets=("wq", "wv", "mlp_out"))
    params = _params()
    lora = _trained(init_lora(TINY, cfg, seed=1))
    params_before, lora_before = _copy(params), _copy(lora)
    structure_before = copy.deepcopy(params), copy.deepcopy(lora)
    out = fold(params, lora, cfg)
    _assert_bitwise_equal(params, params_before)
    _assert_bitwise_equal(lora, lora_before)
    _assert_bitwise_equal(params, structure_before[0])
    # new containers: the input tree's dicts and lists are not the ones returned
    assert out is not params and out["blocks"] is not params["blocks"]
    for i, (b_in, b_out) in enumerate(zip(params["blocks"], out["blocks"])):
        assert b_out is not b_in
        for t in cfg.targets:
            assert b_out[t] is not b_in[t]
            assert b_out[t]["W"] is not b_in[t]["W"]
            assert not np.shares_memory(b_out[t]["W"], b_in[t]["W"])
    # writing into the result does not reach the input
    out["blocks"][0]["wq"]["W"][...] = 0.0
    _assert_bitwise_equal(params, params_before)


def test_merge_of_a_fresh_adapter_changes_nothing():
    cfg = LoraConfig(r=4, targets=ALL)
    params = _params()
    merged = merge(params, init_lora(TINY, cfg, seed=0), cfg)
    _assert_bitwise_equal(merged, params)


# ---- parameter counts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("r,targets", [(1, ("wq",)), (4, ("wq", "wv")), (8, ("wq", "wk", "wv", "wo"))])
def test_count_params_equals_paper_formula_on_tiny(r, targets):
    lora = init_lora(TINY, LoraConfig(r=r, targets=targets), seed=0)
    n_hat = TINY.n_layer * len(targets)
    assert count_params(lora) == paper_param_count(n_hat, TINY.d_model, r) == 2 * n_hat * TINY.d_model * r


def test_count_params_for_non_square_targets_and_some_layers():
    cfg = LoraConfig(r=4, targets=("wq", "mlp_in", "mlp_out"), layers=(1,))
    lora = init_lora(TINY, cfg, seed=0)
    assert lora["blocks"][0] == {}
    d, m = TINY.d_model, TINY.d_mlp
    assert count_params(lora) == 4 * ((d + d) + (d + m) + (m + d))


@pytest.mark.parametrize("r,targets,expected", [
    (1, ("wq", "wv"), 4_718_592),
    (8, ("wq", "wv"), 37_748_736),
    (4, ("wq", "wk", "wv", "wo"), 37_748_736),
    (4, ("wq", "wv"), 18_874_368),
])
def test_gpt3_175b_parameter_counts(r, targets, expected):
    config = GPTConfig.preset("gpt3-175b")
    lora = init_lora(config, LoraConfig(r=r, targets=targets), seed=0)
    assert len(lora["blocks"]) == 96
    assert count_params(lora) == expected
    assert paper_param_count(96 * len(targets), 12288, r) == expected
    assert lora["blocks"][0][targets[0]]["A"].shape == (r, 12288)
    assert lora["blocks"][95][targets[-1]]["B"].shape == (12288, r)


# ---- LoraConfig ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r,alpha", [(1, 1.0), (4, 16.0), (8, 8.0), (16, 3.0)])
def test_scale(r, alpha):
    assert LoraConfig(r=r, alpha=alpha).scale == pytest.approx(alpha / r, rel=1e-15)
    assert LoraConfig(r=r, alpha=alpha, use_rslora=True).scale == pytest.approx(alpha / math.sqrt(r), rel=1e-15)


def test_scale_is_used_in_the_forward():
    """Doubling alpha doubles the adapter's contribution to every projection: check on merged weights."""
    params = _params(np.float64)
    for use_rslora in (False, True):
        c1 = LoraConfig(r=4, alpha=3.0, targets=("wq",), use_rslora=use_rslora)
        c2 = LoraConfig(r=4, alpha=6.0, targets=("wq",), use_rslora=use_rslora)
        lora = _trained(init_lora(TINY, c1, seed=0, dtype=np.float64))
        W = params["blocks"][0]["wq"]["W"]
        ab = lora["blocks"][0]["wq"]
        d1 = merge(params, lora, c1)["blocks"][0]["wq"]["W"] - W
        np.testing.assert_allclose(d1, c1.scale * ab["B"] @ ab["A"], rtol=1e-12, atol=1e-15)
        d2 = merge(params, lora, c2)["blocks"][0]["wq"]["W"] - W
        np.testing.assert_allclose(d2, 2 * d1, rtol=1e-12, atol=1e-15)
        # and the unmerged forward uses the same scale
        np.testing.assert_allclose(forward(params, TOK, TINY, lora, c2),
                                   forward(merge(params, lora, c2), TOK, TINY), rtol=0, atol=1e-12)


def test_kaiming_init_is_uniform_within_one_over_sqrt_d_in():
    config = GPTConfig(vocab_size=8, context=4, d_model=64, n_layer=2, n_head=2, d_mlp=96)
    lora = init_lora(config, LoraConfig(r=8, targets=ALL, init="kaiming"), seed=0)
    for block in lora["blocks"]:
        for t, ab in block.items():
            d_in = config.matrix_shape(t)[1]
            bound = 1 / math.sqrt(d_in)
            A = ab["A"]
            assert np.all(np.abs(A) <= bound), t
            assert np.max(np.abs(A)) > 0.9 * bound, t  # uses the whole range
            assert abs(np.std(A) - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3), t  # uniform's std
            assert np.all(ab["B"] == 0)


@pytest.mark.parametrize("r", [2, 8])
def test_gaussian_init_has_std_one_over_r(r):
    config = GPTConfig(vocab_size=8, context=4, d_model=512, n_layer=2, n_head=2)
    lora = init_lora(config, LoraConfig(r=r, targets=ALL), seed=0)
    A = np.concatenate([ab["A"].ravel() for block in lora["blocks"] for ab in block.values()])
    assert A.size >= 10_000
    assert abs(np.std(A) * r - 1) < 0.03
    assert abs(np.mean(A)) < 0.03 / r
    assert all(np.all(ab["B"] == 0) for block in lora["blocks"] for ab in block.values())


@pytest.mark.parametrize("init", ["gaussian", "kaiming"])
def test_same_seed_same_adapter(init):
    cfg = LoraConfig(r=4, targets=ALL, init=init)
    _assert_bitwise_equal(init_lora(TINY, cfg, seed=7), init_lora(TINY, cfg, seed=7))
    a, b = init_lora(TINY, cfg, seed=7), init_lora(TINY, cfg, seed=8)
    assert not np.array_equal(a["blocks"][0]["wq"]["A"], b["blocks"][0]["wq"]["A"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_lora_dtype(dtype):
    lora = init_lora(TINY, LoraConfig(r=2, targets=ALL), seed=0, dtype=dtype)
    assert {str(a.dtype) for a in flatten(lora).values()} == {np.dtype(dtype).name}


def test_layers_adapts_only_those_blocks():
    cfg = LoraConfig(r=4, targets=ALL, layers=(0,))
    lora = init_lora(TINY, cfg, seed=0)
    assert set(lora["blocks"][0]) == set(ALL)
    assert lora["blocks"][1] == {}
    params = _params(np.float64)
    lora = _trained(init_lora(TINY, cfg, seed=0, dtype=np.float64))
    merged = merge(params, lora, cfg)
    for name in ALL:
        assert not np.array_equal(merged["blocks"][0][name]["W"], params["blocks"][0][name]["W"])
        assert np.array_equal(merged["blocks"][1][name]["W"], params["blocks"][1][name]["W"])
    grad = autograd.grad(lambda l: cross_entropy(forward(params, TOK, TINY, l, cfg), TGT))(lora)
    assert grad["blocks"][1] == {} and set(grad["blocks"][0]) == set(ALL)


def test_config_canonicalises_targets_and_layers():
    cfg = LoraConfig(targets=("wv", "wq"), layers=(1, 0, 1))
    assert cfg.targets == ("wq", "wv") and cfg.layers == (0, 1)
    assert LoraConfig(targets="wq").targets == ("wq",)


# ---- dropout -------------------------------------------------------------------------------------------------


def test_dropout_off_without_rng():
    params = _params()
    lora = _trained(init_lora(TINY, LoraConfig(r=4, targets=ALL), seed=0))
    no_dropout = forward(params, TOK, TINY, lora, LoraConfig(r=4, targets=ALL))
    cfg = LoraConfig(r=4, targets=ALL, dropout=0.5)
    a = forward(params, TOK, TINY, lora, cfg)
    b = forward(params, TOK, TINY, lora, cfg, rng=None)
    assert np.array_equal(a, no_dropout) and np.array_equal(b, no_dropout)


def test_dropout_with_rng_is_random_but_seeded():
    params = _params()
    cfg = LoraConfig(r=4, targets=ALL, dropout=0.5)
    lora = _trained(init_lora(TINY, cfg, seed=0))
    no_dropout = forward(params, TOK, TINY, lora, LoraConfig(r=4, targets=ALL))
    a = forward(params, TOK, TINY, lora, cfg, rng=np.random.default_rng(0))
    b = forward(params, TOK, TINY, lora, cfg, rng=np.random.default_rng(0))
    c = forward(params, TOK, TINY, lora, cfg, rng=np.random.default_rng(1))
    assert a.dtype == np.float32
    assert np.max(np.abs(a - no_dropout)) > 1e-3
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # the base path is never dropped: with B = 0 dropout changes nothing at all
    fresh = init_lora(TINY, cfg, seed=0)
    assert np.array_equal(forward(params, TOK, TINY, fresh, cfg, rng=np.random.default_rng(0)),
                          forward(params, TOK, TINY))


def test_dropout_rng_without_dropout_changes_nothing():
    params = _params()
    cfg = LoraConfig(r=4, targets=ALL)
    lora = _trained(init_lora(TINY, cfg, seed=0))
    assert np.array_equal(forward(params, TOK, TINY, lora, cfg, rng=np.random.default_rng(0)),
                          forward(params, TOK, TINY, lora, cfg))


# ---- bad inputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"r": 0}, r"LoraConfig\.r"),
    ({"r": -3}, r"LoraConfig\.r"),
    ({"r": 2.5}, r"LoraConfig\.r"),
    ({"alpha": 0}, r"LoraConfig\.alpha"),
    ({"alpha": -1.0}, r"LoraConfig\.alpha"),
    ({"targets": ("wq", "wx")}, r"LoraConfig\.targets.*'wx'"),
    ({"targets": ()}, r"LoraConfig\.targets"),
    ({"dropout": 1.0}, r"LoraConfig\.dropout"),
    ({"dropout": -0.1}, r"LoraConfig\.dropout"),
    ({"dropout": 1.5}, r"LoraConfig\.dropout"),
    ({"init": "xavier"}, r"LoraConfig\.init"),
    ({"layers": (-1,)}, r"LoraConfig\.layers"),
])
def test_bad_lora_config_raises_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**kwargs)


@pytest.mark.parametrize("r,targets", [(17, ("wq",)), (17, ("mlp_in",)), (17, ("mlp_out",)), (20, ALL)])
def test_rank_larger_than_the_matrix_raises(r, targets):
    with pytest.raises(ValueError, match=rf"LoraConfig\.r={r}.*min\(d_in, d_out\)=16"):
        init_lora(TINY, LoraConfig(r=r, targets=targets), seed=0)


def test_rank_equal_to_the_smaller_side_is_allowed():
    lora = init_lora(TINY, LoraConfig(r=16, targets=ALL), seed=0)  # min(16, 24) = 16 for the MLP matrices too
    assert lora["blocks"][0]["mlp_in"]["A"].shape == (16, 16)
    assert lora["blocks"][0]["mlp_out"]["A"].shape == (16, 24)


def test_layers_out_of_range_raise_in_init_lora():
    with pytest.raises(ValueError, match=r"LoraConfig\.layers"):
        init_lora(TINY, LoraConfig(layers=(0, 2)), seed=0)


@pytest.mark.parametrize("tokens,exc,match", [
    (np.array([[1, 2, 256]]), ValueError, r"tokens must be in \[0, 256\)"),
    (np.array([[1, -1, 2]]), ValueError, r"tokens must be in \[0, 256\)"),
    (np.zeros((1, 17), dtype=np.int64), ValueError, r"tokens are 17 long.*context is 16"),
    (np.zeros((1, 3)), TypeError, r"tokens must have an integer dtype"),
    (np.zeros((1, 3), dtype=bool), TypeError, r"tokens must have an integer dtype"),
    (np.zeros(3, dtype=np.int64), ValueError, r"tokens must have shape \(B, T\)"),
    (np.zeros((1, 2, 3), dtype=np.int64), ValueError, r"tokens must have shape \(B, T\)"),
    (np.zeros((1, 0), dtype=np.int64), ValueError, r"tokens must be non-empty"),
    ("abc", TypeError, r"tokens must be an integer array"),
])
def test_bad_tokens_raise(tokens, exc, match):
    with pytest.raises(exc, match=match):
        forward(_params(), tokens, TINY)


def test_tokens_at_the_edges_are_accepted():
    params = _params()
    assert forward(params, np.full((1, 16), 255, dtype=np.uint8), TINY).shape == (1, 16, 256)
    assert forward(params, [[0, 1, 2]], TINY).shape == (1, 3, 256)


def test_params_with_a_wrong_shape_raise():
    params = _params()
    params["blocks"][1]["mlp_in"]["W"] = params["blocks"][1]["mlp_in"]["W"].T.copy()  # (16, 24) for (24, 16)
    with pytest.raises(ValueError, match=r"params: blocks\.1\.mlp_in\.W has shape \(16, 24\), expected \(24, 16\)"):
        forward(params, TOK, TINY)
    params = _params()
    params["wpe"] = params["wpe"][:8]
    with pytest.raises(ValueError, match=r"params: wpe has shape"):
        forward(params, TOK, TINY)
    params = _params()
    del params["blocks"][0]["ln2"]
    with pytest.raises(ValueError, match=r"params: keys do not match.*blocks\.0\.ln2"):
        forward(params, TOK, TINY)


def test_params_with_mixed_or_bad_dtypes_raise():
    params = _params()
    params["ln_f"]["g"] = params["ln_f"]["g"].astype(np.float64)
    with pytest.raises(TypeError, match=r"params: mixed dtypes"):
        forward(params, TOK, TINY)
    params = map_leaves(lambda a: a.astype(np.int32), _params())
    with pytest.raises(TypeError, match=r"params: wte has dtype int32"):
        forward(params, TOK, TINY)
    with pytest.raises(TypeError, match=r"params must be a dict"):
        forward([1, 2], TOK, TINY)


@pytest.mark.parametrize("fn", ["forward", "merge", "unmerge"])
def test_adapter_that_does_not_fit_the_base_raises(fn):
    params = _params()
    cfg4 = LoraConfig(r=4, targets=ALL)
    other = GPTConfig(vocab_size=256, context=16, d_model=32, n_layer=2, n_head=2, d_mlp=24)
    call = {
        "forward": lambda lora, cfg: forward(params, TOK, TINY, lora, cfg),
        "merge": lambda lora, cfg: merge(params, lora, cfg),
        "unmerge": lambda lora, cfg: unmerge(params, lora, cfg),
    }[fn]
    # r mismatch between the adapter and its config
    with pytest.raises(ValueError, match=r"lora blocks\.0\.wq\.A has shape \(4, 16\).*r=2"):
        call(init_lora(TINY, cfg4, seed=0), LoraConfig(r=2, targets=ALL))
    # an adapter made for a model with another d_model
    with pytest.raises(ValueError, match=r"lora blocks\.0\.wq\.A has shape \(4, 32\)"):
        call(init_lora(other, cfg4, seed=0), cfg4)
    # targets that the config does not name
    with pytest.raises(ValueError, match=r"lora block 0 adapts"):
        call(init_lora(TINY, cfg4, seed=0), LoraConfig(r=4, targets=("wq", "wv")))
    # an adapter for a deeper model
    deeper = GPTConfig(vocab_size=256, context=16, d_model=16, n_layer=3, n_head=2, d_mlp=24)
    with pytest.raises(ValueError, match=r"lora has 3 blocks"):
        call(init_lora(deeper, cfg4, seed=0), cfg4)
    # another dtype than the base
    with pytest.raises(TypeError, match=r"lora blocks\.0\.wq\.A has dtype float64"):
        call(init_lora(TINY, cfg4, seed=0, dtype=np.float64), cfg4)
    # not an adapter at all
    with pytest.raises(TypeError, match=r"lora must be a dict"):
        call({"A": np.zeros(3)}, cfg4)
    with pytest.raises(TypeError, match=r"lora_config must be a LoraConfig"):
        call(init_lora(TINY, cfg4, seed=0), {"r": 4})


def test_lora_without_lora_config_raises():
    cfg = LoraConfig(r=4)
    with pytest.raises(TypeError, match=r"lora_config"):
        forward(_params(), TOK, TINY, init_lora(TINY, cfg, seed=0))


@pytest.mark.parametrize("kwargs,match", [
    ({"d_model": 10, "n_head": 3}, r"d_model \(10\) must be divisible by n_head \(3\)"),
    ({"n_layer": 0}, r"GPTConfig\.n_layer"),
    ({"vocab_size": -1}, r"GPTConfig\.vocab_size"),
    ({"d_mlp": -1}, r"GPTConfig\.d_mlp"),
    ({"ln_eps": 0.0}, r"GPTConfig\.ln_eps"),
])
def test_bad_gpt_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_bad_init_arguments_raise():
    with pytest.raises(TypeError, match=r"seed"):
        init_lora(TINY, LoraConfig(), seed=-1)
    with pytest.raises(TypeError, match=r"config must be a GPTConfig"):
        init_lora({"d_model": 16}, LoraConfig(), seed=0)
    with pytest.raises(TypeError, match=r"lora_config must be a LoraConfig"):
        init_lora(TINY, {"r": 4}, seed=0)


def test_lora_config_with_layers_out_of_range_raises_in_forward_and_merge():
    params = _params()
    cfg = LoraConfig(r=4, targets=("wq",), layers=(5,))
    empty = {"blocks": [{}, {}]}
    with pytest.raises(ValueError, match=r"LoraConfig\.layers"):
        forward(params, TOK, TINY, empty, cfg)
    with pytest.raises(ValueError, match=r"LoraConfig\.layers"):
        merge(params, empty, cfg)


def test_rank_larger_than_the_matrix_raises_in_forward():
    params = _params()
    cfg = LoraConfig(r=17, targets=("wq",))
    ab = {"A": np.zeros((17, 16), np.float32), "B": np.zeros((16, 17), np.float32)}
    with pytest.raises(ValueError, match=r"LoraConfig\.r=17"):
        forward(params, TOK, TINY, {"blocks": [{"wq": ab}, {"wq": ab}]}, cfg)


def test_rng_that_is_not_a_generator_raises_naming_it():
    cfg = LoraConfig(r=4, dropout=0.5)
    with pytest.raises(TypeError, match=r"rng"):
        forward(_params(), TOK, TINY, init_lora(TINY, cfg, seed=0), cfg, rng=0)


def test_infinite_alpha_is_rejected():
    with pytest.raises(ValueError, match=r"LoraConfig\.alpha"):
        LoraConfig(alpha=float("inf"))


# ---- the base is never touched -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_base_is_bit_identical_after_lora_training_steps(dtype):
    params = _params(dtype)
    before = _copy(params)
    for a in flatten(params).values():
        a.setflags(write=False)  # any in-place write into the base raises
    cfg = LoraConfig(r=4, targets=ALL, dropout=0.1)
    lora = init_lora(TINY, cfg, seed=0, dtype=dtype)
    rng = np.random.default_rng(0)

    def loss(l):
        return cross_entropy(forward(params, TOK, TINY, l, cfg, rng=rng), TGT)

    losses = []
    for _ in range(4):
        value, grad = autograd.value_and_grad(loss)(lora)
        losses.append(float(value))
        assert {str(g.dtype) for g in flatten(grad).values()} == {np.dtype(dtype).name}
        assert set(flatten(grad)) == set(flatten(lora))  # gradients for the adapter only
        lora = map_leaves(lambda a, g: (a - 0.5 * g).astype(dtype), lora, grad)
    _assert_bitwise_equal(params, before)
    assert any(np.any(ab["B"] != 0) for block in lora["blocks"] for ab in block.values())  # B did move
    np.testing.assert_array_equal(forward(params, TOK, TINY), forward(before, TOK, TINY))
