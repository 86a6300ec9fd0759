"""minilora.combine: "cat" is exactly Σ wᵢ ΔWᵢ, "svd" its best rank-k approximation, "linear" is not Σ wᵢ ΔWᵢ
(and its deviation is exactly the cross terms); one adapter with weight 1 comes back unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from interop_helpers import assert_trees_bitwise_equal, randomize

from minilora import GPTConfig, LoraConfig, combine, delta_weight, forward, init_lora, init_params
from minilora.tree import flatten, map_leaves

CFG = GPTConfig(vocab_size=23, context=8, d_model=12, n_layer=3, n_head=2, d_mlp=20)
ALL = ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")


def _adapter(lcfg, seed, dtype=np.float64):
    return randomize(init_lora(CFG, lcfg, seed, dtype=dtype), seed + 100), lcfg


ADAPTERS = [
    _adapter(LoraConfig(r=2, alpha=4, targets=("wq", "wv")), 0),
    _adapter(LoraConfig(r=3, alpha=1.5, targets=("wv", "wo", "mlp_in"), layers=(1, 2), use_rslora=True), 1),
    _adapter(LoraConfig(r=1, alpha=7, targets=("mlp_out", "wq"), layers=(0,)), 2),
]
WEIGHTS = [0.5, -1.25, 2.0]


def _dw(lora, lcfg, i, t):
    ab = lora["blocks"][i].get(t)
    return 0.0 if ab is None else delta_weight(ab, lcfg.scale)  # (d_out, d_in)


def _weighted_sum(adapters, weights, i, t):
    return sum(w * _dw(lora, lc, i, t) for (lora, lc), w in zip(adapters, weights))


def test_cat_is_exactly_the_weighted_sum():
    lora, lcfg = combine(ADAPTERS, WEIGHTS, "cat")
    assert lcfg.r == 6 and lcfg.targets == ("wq", "wv", "wo", "mlp_in", "mlp_out") and lcfg.layers is None
    assert lcfg.scale == pytest.approx(ADAPTERS[0][1].scale, rel=1e-15)
    for i in range(CFG.n_layer):
        for t in lcfg.targets:
            np.testing.assert_allclose(_dw(lora, lcfg, i, t), _weighted_sum(ADAPTERS, WEIGHTS, i, t),
                                       rtol=0, atol=1e-14)


def test_cat_model_equals_the_base_plus_the_weighted_updates():
    params = randomize(init_params(CFG, 0, dtype=np.float64), 3)
    lora, lcfg = combine(ADAPTERS, WEIGHTS, "cat")
    summed = {**params, "blocks": [
        {**b, **{t: {**b[t], "W": b[t]["W"] + _weighted_sum(ADAPTERS, WEIGHTS, i, t)} for t in ALL}}
        for i, b in enumerate(params["blocks"])]}
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, CFG.context))
    np.testing.assert_allclose(forward(params, tokens, CFG, lora, lcfg), forward(summed, tokens, CFG),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_svd_is_the_best_rank_k_approximation(k):
    lora, lcfg = combine(ADAPTERS, WEIGHTS, "svd", rank=k)
    assert lcfg.r == k
    for i in range(CFG.n_layer):
        for t in lcfg.targets:
            want = _weighted_sum(ADAPTERS, WEIGHTS, i, t) + np.zeros(CFG.matrix_shape(t))
            s = np.linalg.svd(want, compute_uv=False)
            err = np.linalg.norm(_dw(lora, lcfg, i, t) - want)  # Frobenius
            assert err == pytest.approx(np.sqrt(np.sum(s[k:] ** 2)), abs=1e-12)  # Eckart–Young's optimum
            if k == 5:  # no matrix gets more than rank 2 + 3 (wv in blocks 1, 2): the sum itself, exactly
                assert err < 1e-12


def test_svd_default_rank_is_the_largest_input_rank():
    assert combine(ADAPTERS, WEIGHTS, "svd")[1].r == 3


def test_linear_is_not_the_weighted_sum_but_the_sum_plus_cross_terms():
    a1 = _adapter(LoraConfig(r=2, alpha=4, targets=("wq", "wv")), 5)
    a2 = _adapter(LoraConfig(r=2, alpha=3, targets=("wv",), use_rslora=True), 6)
    w = [0.7, -0.4]
    lora, lcfg = combine([a1, a2], w, "linear")
    s = lcfg.scale
    c = [wi * lc.scale / s for wi, (_, lc) in zip(w, (a1, a2))]
    A1, B1, A2, B2 = (a1[0]["blocks"][0]["wv"]["A"], a1[0]["blocks"][0]["wv"]["B"],
                      a2[0]["blocks"][0]["wv"]["A"], a2[0]["blocks"][0]["wv"]["B"])
    cross = s * (np.sqrt(abs(c[0] * c[1])) * (np.sign(c[1]) * B1 @ A2 + np.sign(c[0]) * B2 @ A1))
    got = _dw(lora, lcfg, 0, "wv")
    want = _weighted_sum([a1, a2], w, 0, "wv")
    assert np.abs(got - want).max() > 1e-2  # not the weighted sum
    np.testing.assert_allclose(got, want + cross, rtol=0, atol=1e-13)  # the weighted sum plus the cross terms
    np.testing.assert_allclose(_dw(lora, lcfg, 0, "wq"), w[0] * _dw(*a1, 0, "wq"), rtol=0, atol=1e-14)


@pytest.mark.parametrize("how", ["cat", "svd", "linear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_adapter_with_weight_one_comes_back_unchanged(how, dtype):
    lora, lcfg = _adapter(LoraConfig(r=2, alpha=3, targets=("wk", "mlp_out"), layers=(0, 2), use_rslora=True), 7,
                          dtype)
    got, got_cfg = combine([(lora, lcfg)], [1], how)
    assert got_cfg == lcfg
    assert_trees_bitwise_equal(got, lora)


def test_one_adapter_with_another_weight_scales_its_update():
    lora, lcfg = ADAPTERS[1]
    for how in ("cat", "linear", "svd"):
        out, out_cfg = combine([(lora, lcfg)], [-0.3], how)
        for i in lcfg.layers:
            for t in lcfg.targets:
                np.testing.assert_allclose(_dw(out, out_cfg, i, t), -0.3 * _dw(lora, lcfg, i, t), rtol=0, atol=1e-14)


def test_inputs_are_not_modified():
    before = [flatten(map_leaves(np.copy, lora)) for lora, _ in ADAPTERS]
    for how in ("cat", "svd"):
        combine(ADAPTERS, WEIGHTS, how)
    for b, (lora, _) in zip(before, ADAPTERS):
        assert all(np.array_equal(v, flatten(lora)[k]) for k, v in b.items())


@pytest.mark.parametrize("args, kwargs, err, match", [
    ((ADAPTERS, WEIGHTS, "ties"), {}, ValueError, "how must be one of"),
    ((ADAPTERS, WEIGHTS[:2], "cat"), {}, ValueError, "3 finite numbers"),
    ((ADAPTERS, [1.0, float("nan"), 1.0], "cat"), {}, ValueError, "finite numbers"),
    (([], [], "cat"), {}, TypeError, "non-empty list"),
    ((ADAPTERS, WEIGHTS, "cat"), {"rank": 2}, ValueError, "rank is the k of how='svd'"),
    ((ADAPTERS, WEIGHTS, "svd"), {"rank": 0}, ValueError, "rank is the k"),
    ((ADAPTERS, WEIGHTS, "linear"), {}, ValueError, r"need one r; got r = \[2, 3, 1\]"),
    ((ADAPTERS, WEIGHTS, "svd"), {"rank": 13}, ValueError, "more than a matrix it adapts can hold"),
    (([ADAPTERS[0], (ADAPTERS[1][0], ADAPTERS[0][1])], [1, 1], "cat"), {}, ValueError, r"adapters\[1\]"),
    (([ADAPTERS[0], (map_leaves(lambda a: a.astype(np.float32), ADAPTERS[1][0]), ADAPTERS[1][1])], [1, 1], "cat"),
     {}, TypeError, "different dtypes"),
    (([ADAPTERS[0], (ADAPTERS[1][0], "cfg")], [1, 1], "cat"), {}, TypeError, "LoraConfig"),
])
def test_bad_inputs_get_clear_messages(args, kwargs, err, match):
    with pytest.raises(err, match=match):
        combine(*args, **kwargs)


def test_cat_beyond_the_matrix_rank_points_to_svd():
    big = [_adapter(LoraConfig(r=8, alpha=8, targets=("wq",)), s) for s in range(2)]
    with pytest.raises(ValueError, match="'svd' with a smaller rank fits"):
        combine(big, [1, 1], "cat")
    assert combine(big, [1, 1], "svd", rank=12)[1].r == 12
