"""The serving lab: the four strategies of forward_mixed agree with per-row forward; the workload generators."""

from __future__ import annotations

import numpy as np
import pytest
from test_backend_standin import standin  # noqa: F401  (the GPU stand-in fixture)
from test_mixed import CFG, PARAMS64, _per_row, _random_adapters

from minilora import GPTConfig, backend, forward, forward_mixed, init_params
from minilora.mixed import IMPLS, CheckedAdapters, MergedAdapters, merge_adapters, prepare_adapters, sort_segments
from minilora.serving import (
    assignments,
    max_disagreement,
    popularity_weights,
    random_adapters,
    strategies,
)
from minilora.tree import map_leaves


@pytest.mark.parametrize("popularity", ["uniform", "powerlaw"])
@pytest.mark.parametrize("seed", range(4))
def test_four_strategies_equal_each_row_alone_float64(seed, popularity):
    rng = np.random.default_rng(100 + seed)
    adapters = _random_adapters(rng, int(rng.integers(2, 7)), np.float64)  # random ranks, targets, layers, scales
    B = int(rng.integers(len(adapters), 13))
    which = assignments(B, int(rng.integers(1, len(adapters) + 1)), popularity, alpha=1.5, rng=rng)
    which[rng.random(B) < 0.2] = -1  # some rows on the base model
    tokens = rng.integers(0, CFG.vocab_size, (B, int(rng.integers(1, CFG.context + 1))))
    want = _per_row(PARAMS64, tokens, adapters, which)
    for impl in IMPLS:
        for given in (adapters, prepare_adapters(adapters, PARAMS64, impl)):
            got = forward_mixed(PARAMS64, tokens, CFG, given, which, impl=impl)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=impl)


def test_strategies_agree_on_the_labs_workload():
    rng = np.random.default_rng(0)
    adapters = random_adapters(CFG, 5, ranks=(1, 3, 5), targets=("wq", "wv", "mlp_out"), rng=rng, dtype=np.float64)
    which = assignments(12, 5, "powerlaw", rng=rng)
    tokens = rng.integers(0, CFG.vocab_size, (12, CFG.context))
    fns = strategies(PARAMS64, CFG, adapters)
    assert set(fns) == {"base", *IMPLS}
    outputs = {name: fn(tokens, which) for name, fn in fns.items()}
    assert max_disagreement(outputs) < 1e-12
    np.testing.assert_array_equal(outputs["base"], forward(PARAMS64, tokens, CFG))
    np.testing.assert_allclose(outputs["sgmv"], _per_row(PARAMS64, tokens, adapters, which), rtol=0, atol=1e-12)
    assert np.abs(outputs["loop"] - outputs["base"]).max(axis=(1, 2)).min() > 1e-3  # the adapters change every row
    assert sorted({lc.r for _, lc in adapters}) == [1, 3, 5]
    outputs["merged"] = outputs["merged"] + 1e-6
    assert max_disagreement(outputs) == pytest.approx(1e-6, rel=1e-3)  # a disagreement is seen


def test_sort_segments():
    order, segments = sort_segments(np.array([2, -1, 0, 2, 0, 5]))
    np.testing.assert_array_equal(order, [1, 2, 4, 0, 3, 5])  # stable, the base first
    assert segments == [(0, 1, 3), (2, 3, 5), (5, 5, 6)]
    assert sort_segments(np.array([-1, -1]))[1] == []


def test_prepared_adapters_are_tied_to_their_impl_and_base():
    adapters = _random_adapters(np.random.default_rng(3), 2, np.float64)
    merged = merge_adapters(adapters, PARAMS64)
    checked = prepare_adapters(adapters, PARAMS64, "sgmv")
    assert isinstance(merged, MergedAdapters) and merged.n_adapters == 2
    assert isinstance(checked, CheckedAdapters) and prepare_adapters(checked, PARAMS64, "loop") is checked
    tokens = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(TypeError, match="impl='merged' only"):
        forward_mixed(PARAMS64, tokens, CFG, merged, [0, 1], impl="sgmv")
    with pytest.raises(TypeError, match="impl='loop' or 'sgmv' only"):
        forward_mixed(PARAMS64, tokens, CFG, checked, [0, 1], impl="gather")
    with pytest.raises(ValueError, match=r"which\[1\] = 2"):
        forward_mixed(PARAMS64, tokens, CFG, merged, [0, 2], impl="merged")
    other = GPTConfig(vocab_size=31, context=9, d_model=16, n_layer=3, n_head=2, d_mlp=24)
    with pytest.raises(ValueError, match="CheckedAdapters were built for a base with other matrix shapes"):
        forward_mixed(init_params(other, 0, dtype=np.float64), tokens, other, checked, [0, 1], impl="loop")
    with pytest.raises(ValueError, match="impl must be one of"):
        prepare_adapters(adapters, PARAMS64, "bgmv")


@pytest.mark.parametrize("popularity", ["uniform", "powerlaw"])
def test_assignments_are_seeded_and_have_exactly_k_distinct(popularity):
    for K in (1, 3, 16, 64):
        which = assignments(64, K, popularity, rng=np.random.default_rng(7))
        assert which.dtype == np.int64 and which.shape == (64,)
        assert sorted(set(which.tolist())) == list(range(K))
        np.testing.assert_array_equal(which, assignments(64, K, popularity, rng=np.random.default_rng(7)))
    assert not np.array_equal(assignments(64, 8, popularity, rng=np.random.default_rng(1)),
                              assignments(64, 8, popularity, rng=np.random.default_rng(2)))


def test_powerlaw_is_skewed_and_uniform_is_not():
    np.testing.assert_allclose(popularity_weights(4), [0.25] * 4)
    p = popularity_weights(4, "powerlaw", alpha=1.0)
    np.testing.assert_allclose(p, np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))
    counts = {pop: np.bincount(assignments(20000, 16, pop, alpha=1.2, rng=np.random.default_rng(0)), minlength=16)
              for pop in ("uniform", "powerlaw")}
    assert counts["powerlaw"][0] > 5 * counts["powerlaw"][15]  # p_0 / p_15 = 16^1.2 ≈ 28
    assert counts["uniform"].max() < 1.2 * counts["uniform"].min()


@pytest.mark.parametrize("call, err, match", [
    (lambda: assignments(4, 5, rng=np.random.default_rng(0)), ValueError, "at least as many rows"),
    (lambda: assignments(0, 1, rng=np.random.default_rng(0)), ValueError, "n_rows must be an int >= 1"),
    (lambda: assignments(4, 0, rng=np.random.default_rng(0)), ValueError, "n_adapters must be an int >= 1"),
    (lambda: assignments(4, 2, "zipf", rng=np.random.default_rng(0)), ValueError, "popularity must be one of"),
    (lambda: assignments(4, 2, "powerlaw", alpha=0, rng=np.random.default_rng(0)), ValueError, "alpha must be"),
    (lambda: assignments(4, 2, rng=0), TypeError, "rng must be a numpy Generator"),
    (lambda: assignments(4.0, 2, rng=np.random.default_rng(0)), ValueError, "n_rows must be an int"),
    (lambda: random_adapters(CFG, 2, ranks=(), rng=np.random.default_rng(0)), ValueError, "ranks must be"),
    (lambda: random_adapters(CFG, 2, ranks=(0,), rng=np.random.default_rng(0)), ValueError, r"ranks\[\]"),
    (lambda: random_adapters(CFG, 2, rng=None), TypeError, "rng must be a numpy Generator"),
])
def test_bad_generator_inputs(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_random_adapters_are_seeded_with_mixed_ranks():
    a = random_adapters(CFG, 5, rng=np.random.default_rng(4))
    b = random_adapters(CFG, 5, rng=np.random.default_rng(4))
    assert [lc.r for _, lc in a] == [2, 4, 8, 16, 2]
    for (la, _), (lb, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(la["blocks"][0]["wq"]["B"], lb["blocks"][0]["wq"]["B"])
        assert np.abs(la["blocks"][0]["wq"]["B"]).max() > 0


def test_the_lab_script_runs_and_asserts_agreement(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import serving_lab

    args = serving_lab.parse_args(["--quick", "--distinct", "1", "3", "--rows", "4", "--seq", "3", "--reps", "1",
                                   "--out", str(tmp_path)])
    args.blas_threads = None  # not set_blas_threads: that would change this test process's BLAS threads
    monkeypatch.setattr(sys, "argv", ["serving_lab.py"])
    results = serving_lab.run(args)
    assert [(c["popularity"], c["distinct"]) for c in results["cells"]] == [
        ("uniform", 1), ("uniform", 3), ("powerlaw", 1), ("powerlaw", 3)]
    for cell in results["cells"]:
        assert cell["max_disagreement"] <= serving_lab.AGREE_TOL["float32"]
        assert set(cell["strategies"]) == {"base", *IMPLS} and cell["best"] in IMPLS
        assert cell["strategies"][cell["best"]]["vs_best"][0] == 1.0
    serving_lab.plot(results, tmp_path / "lab.png")
    assert (tmp_path / "lab.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        serving_lab.parse_args(["--distinct", "8", "--rows", "4"])


def test_the_four_strategies_on_the_gpu_stand_in(standin):  # noqa: F811
    """On the device the four strategies copy nothing to the host and give NumPy's logits bit for bit."""
    rng = np.random.default_rng(11)
    adapters = _random_adapters(rng, 4, np.float32)
    params = map_leaves(lambda a: a.astype(np.float32), PARAMS64)
    which = assignments(7, 4, "powerlaw", rng=rng)
    tokens = rng.integers(0, CFG.vocab_size, (7, 5))
    want = {impl: forward_mixed(params, tokens, CFG, adapters, which, impl=impl) for impl in IMPLS}
    backend.use(standin)
    on_params, on_adapters = backend.to_device(params), [(backend.to_device(a), lc) for a, lc in adapters]
    for impl in IMPLS:
        with standin.no_host_copies():
            got = forward_mixed(on_params, tokens, CFG, on_adapters, which, impl=impl)
        assert type(got) is standin.ndarray
        np.testing.assert_array_equal(backend.to_host(got), want[impl], err_msg=impl)
