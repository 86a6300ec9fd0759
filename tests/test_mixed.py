"""minilora.forward_mixed: a different adapter per row, two implementations, both equal to per-row runs."""

from __future__ import annotations

import numpy as np
import pytest
from interop_helpers import randomize

from minilora import GPTConfig, LoraConfig, forward, forward_mixed, init_lora, init_params
from minilora.mixed import stack_adapters
from minilora.tree import flatten, map_leaves

CFG = GPTConfig(vocab_size=31, context=9, d_model=16, n_layer=3, n_head=2, d_mlp=20)
ALL = ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")
IMPLS = ("loop", "gather", "sgmv", "merged")


def _random_adapters(rng, n, dtype):
    """n adapters of random rank, targets, layers, scale and scaling rule, with B != 0."""
    out = []
    for k in range(n):
        targets = tuple(t for t in ALL if rng.random() < 0.5) or ("wv",)
        layers = None if rng.random() < 0.4 else tuple(sorted(rng.choice(CFG.n_layer, rng.integers(1, 3), False)))
        lcfg = LoraConfig(r=int(rng.integers(1, 6)), alpha=float(rng.uniform(0.5, 8)), targets=targets,
                          layers=layers, use_rslora=bool(rng.random() < 0.5))
        out.append((randomize(init_lora(CFG, lcfg, k, dtype=dtype), int(rng.integers(1 << 30))), lcfg))
    return out


def _per_row(params, tokens, adapters, which):
    rows = [forward(params, tokens[b:b + 1], CFG, *((None, None) if which[b] < 0 else adapters[which[b]]))
            for b in range(len(which))]
    return np.concatenate(rows)  # (B, T, V)


PARAMS64 = randomize(init_params(CFG, 0, dtype=np.float64), 1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("impl", IMPLS)
def test_mixed_batch_equals_each_row_alone_float64(seed, impl):
    rng = np.random.default_rng(seed)
    adapters = _random_adapters(rng, int(rng.integers(1, 5)), np.float64)
    B = int(rng.integers(1, 9))
    which = rng.integers(-1, len(adapters), B)
    tokens = rng.integers(0, CFG.vocab_size, (B, int(rng.integers(1, CFG.context + 1))))
    got = forward_mixed(PARAMS64, tokens, CFG, adapters, which, impl=impl)
    np.testing.assert_allclose(got, _per_row(PARAMS64, tokens, adapters, which), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_and_the_edge_assignments(impl):
    params = randomize(init_params(CFG, 0), 2)
    adapters = _random_adapters(np.random.default_rng(9), 3, np.float32)
    tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, (5, CFG.context))
    which = np.array([2, 0, -1, 2, 1], dtype=np.int32)
    got = forward_mixed(params, tokens, CFG, adapters, which, impl=impl)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _per_row(params, tokens, adapters, which), rtol=0, atol=1e-5)
    base = forward_mixed(params, tokens, CFG, adapters, np.full(5, -1), impl=impl)
    np.testing.assert_allclose(base, forward(params, tokens, CFG), rtol=0, atol=1e-5)  # all rows on the base
    one = forward_mixed(params, tokens, CFG, adapters, [1] * 5, impl=impl)
    np.testing.assert_allclose(one, forward(params, tokens, CFG, *adapters[1]), rtol=0, atol=1e-5)
    assert np.abs(got - base).max() > 1e-2  # the adapters do something


def test_stacked_adapters_are_reusable_and_tied_to_their_base():
    adapters = _random_adapters(np.random.default_rng(3), 3, np.float64)
    stacked = stack_adapters(adapters, PARAMS64)
    tokens = np.random.default_rng(2).integers(0, CFG.vocab_size, (4, 5))
    for which in ([0, 1, 2, -1], [2, 2, -1, 0]):
        np.testing.assert_array_equal(forward_mixed(PARAMS64, tokens, CFG, stacked, which, impl="gather"),
                                      forward_mixed(PARAMS64, tokens, CFG, adapters, which, impl="gather"))
    with pytest.raises(TypeError, match="impl='gather' only"):
        forward_mixed(PARAMS64, tokens, CFG, stacked, [0, 0, 0, 0], impl="loop")
    other = GPTConfig(vocab_size=31, context=9, d_model=16, n_layer=3, n_head=2, d_mlp=24)
    with pytest.raises(ValueError, match="other matrix shapes"):
        forward_mixed(init_params(other, 0, dtype=np.float64), tokens, other, stacked, [0] * 4, impl="gather")


def test_inputs_are_not_modified():
    adapters = _random_adapters(np.random.default_rng(4), 2, np.float64)
    before = [flatten(map_leaves(np.copy, PARAMS64))] + [flatten(map_leaves(np.copy, a)) for a, _ in adapters]
    tokens = np.random.default_rng(2).integers(0, CFG.vocab_size, (3, 4))
    for impl in IMPLS:
        forward_mixed(PARAMS64, tokens, CFG, adapters, [1, 0, 1], impl=impl)
    after = [flatten(PARAMS64)] + [flatten(a) for a, _ in adapters]
    for b, a in zip(before, after):
        assert all(np.array_equal(b[k], a[k]) for k in b)


def _bad_adapter():
    lcfg = LoraConfig(r=2, targets=("wq",))
    lora = init_lora(CFG, lcfg, 0, dtype=np.float64)
    lora["blocks"][1]["wq"]["A"] = np.zeros((2, 15))
    return lora, lcfg


@pytest.mark.parametrize("adapters, which, err, match", [
    ("ok", np.array([0.0, 1.0]), TypeError, "integer dtype"),
    ("ok", np.array([True, False]), TypeError, "integer dtype"),
    ("ok", np.array([[0, 1]]), ValueError, r"shape \(2,\)"),
    ("ok", np.array([0, 1, 1]), ValueError, r"shape \(2,\)"),
    ("ok", np.array([0, 2]), ValueError, r"which\[1\] = 2"),
    ("ok", np.array([-2, 0]), ValueError, r"which\[0\] = -2"),
    ("ok", "01", TypeError, "integer array"),
    ((), np.array([0, -1]), ValueError, "0 adapter"),
    ({"a": 1}, np.array([0, 0]), TypeError, "list of .lora, lora_config. pairs"),
    ([("lora", "config")], np.array([0, 0]), TypeError, r"adapters\[0\] must be a \(lora, lora_config\) pair"),
    ("bad", np.array([0, 0]), ValueError, r"adapters\[1\]: lora blocks.1.wq.A has shape \(2, 15\)"),
    ("f32", np.array([0, 0]), TypeError, r"adapters\[0\]: .*dtype float32 but the base is float64"),
])
def test_bad_inputs_get_clear_messages(adapters, which, err, match):
    good = _random_adapters(np.random.default_rng(5), 2, np.float64)
    adapters = {"ok": good, "bad": [good[0], _bad_adapter()],
                "f32": [(map_leaves(lambda a: a.astype(np.float32), good[0][0]), good[0][1])]}.get(
        adapters if isinstance(adapters, str) else "", adapters)
    tokens = np.zeros((2, 3), dtype=np.int64)
    for impl in IMPLS:
        with pytest.raises(err, match=match):
            forward_mixed(PARAMS64, tokens, CFG, adapters, which, impl=impl)


def test_unknown_impl():
    with pytest.raises(ValueError, match="impl must be one of"):
        forward_mixed(PARAMS64, np.zeros((1, 2), np.int64), CFG, [], [-1], impl="bgmv")
