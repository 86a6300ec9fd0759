"""minilora.latency on the tiny config: the six inference models, merged == unmerged LoRA, the calls each method
adds (what its hooks imply), and the structure of a measurement with 2 repetitions. No timing is asserted."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from conftest import TINY, tiny_params

from minilora import latency
from minilora.checkpoint import atomic_write_json

matplotlib.use("Agg")

L = TINY.n_layer
OPTIONS = {"r": 2, "adapter_r": 3, "l_p": 2}


@pytest.fixture(scope="module")
def built():
    return latency.build_models(tiny_params(), TINY, **OPTIONS, seed=1)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 6))


def test_the_six_models_run_and_differ(built, tokens):
    models, config = built
    assert tuple(models) == latency.MODELS
    logits = {n: m.forward(tokens, config)() for n, m in models.items()}
    for name, out in logits.items():
        assert out.shape == (2, 6, TINY.vocab_size), name
    for name in ("lora_merged", "adapter_l", "adapter_h", "prelayer"):  # trained-looking values change the output
        assert np.max(np.abs(logits[name] - logits["base"])) > 1e-4, name
    np.testing.assert_allclose(logits["lora_merged"], logits["lora_unmerged"], rtol=1e-4, atol=1e-4)
    assert models["prelayer"].extra_positions == OPTIONS["l_p"]
    # merged LoRA has the base's shapes: the same computation, other numbers
    for b_merged, b_base in zip(models["lora_merged"].params["blocks"], models["base"].params["blocks"], strict=True):
        assert b_merged["wq"]["W"].shape == b_base["wq"]["W"].shape and b_merged["wk"]["W"] is b_base["wk"]["W"]


def test_lora_disagreement_checks_both_ways(built, tokens):
    models, config = built
    assert latency.lora_disagreement(models, tokens, config) < latency.AGREE_TOL
    with pytest.raises(ValueError, match="equals the base"):
        latency.lora_disagreement({**models, "lora_merged": models["base"], "lora_unmerged": models["base"]},
                                  tokens, config)
    with pytest.raises(ValueError, match="disagree"):
        latency.lora_disagreement({**models, "lora_unmerged": models["adapter_h"]}, tokens, config)


def test_trained_looking_leaves_no_zero():
    tree = {"B": np.zeros((3, 2), np.float32), "list": [np.ones(4, np.float64)]}
    out = latency.trained_looking(tree, np.random.default_rng(0))
    assert np.all(out["B"] != 0) and out["B"].dtype == np.float32 and out["list"][0].dtype == np.float64
    assert np.all(tree["B"] == 0)  # the input is left alone


def test_the_calls_each_method_adds(built, tokens):
    models, config = built
    ops = latency.model_ops(models, tokens, config)
    base = ops["base"]["ops"]
    assert base["linear"] == 6 * L + 1 and base["layer_norm"] == 2 * L + 1 and base["gelu"] == L  # + output layer
    assert ops["lora_merged"]["ops"] == base and ops["lora_merged"]["extra_python_calls"] == 0

    def added(name):
        return {k: v - base.get(k, 0) for k, v in ops[name]["ops"].items() if v != base.get(k, 0)}

    assert added("lora_unmerged") == {"lora_delta": 2 * L}                    # W_q and W_v of every block
    assert added("adapter_h") == {"linear": 2 * 2 * L, "gelu": 2 * L}          # 2 bottlenecks per block
    assert added("adapter_l") == {"linear": 2 * L, "gelu": L, "layer_norm": L}  # 1 bottleneck + its LayerNorm
    assert added("prelayer") == {} and ops["prelayer"]["extra_python_calls"] > 0  # indexing, not more ops
    assert ops["adapter_h"]["extra_op_calls"] == 6 * L


def test_hook_replay_records_only_what_the_method_changes(built, tokens):
    models, config = built
    _, calls = latency.record_hook_calls(models["adapter_h"], tokens, config)
    fields = [f for f, _ in calls]
    assert fields.count("after_attention") == L and fields.count("after_mlp") == L and fields.count("project") == 6 * L
    assert latency.hook_ms(models["base"], tokens, config, reps=2) == 0.0  # nothing changed, nothing replayed
    assert np.isfinite(latency.hook_ms(models["adapter_h"], tokens, config, reps=2))


def test_measure_returns_the_table_structure(built, tmp_path):
    models, config = built
    res = latency.measure(models, config, batches=(1, 2), T=6, reps=2, min_seconds=0.0, hook_reps=2,
                          settings={"note": "test"}, collect=False)
    assert res["settings"]["note"] == "test" and res["settings"]["T"] == 6 and res["base_1x1_ms"] > 0
    assert [b["batch"] for b in res["batches"]] == [1, 2]
    for b in res["batches"]:
        assert set(b["models"]) == set(latency.MODELS) | {"base_long"}  # base at T + l_p, PreLayer's length
        assert b["reps"] == 2 and b["calls_per_timing"] >= 1 and "others_cpus" in b["load"]
        for row in b["models"].values():
            assert set(row["ms"]) == {"median", "p10", "p90", "min"} and len(row["vs_base"]) == 3
            assert row["ms"]["p10"] <= row["ms"]["median"] <= row["ms"]["p90"]
            assert row["vs_base"][1] <= row["vs_base"][0] <= row["vs_base"][2]
        assert b["models"]["base"]["vs_base"] == (1.0, 1.0, 1.0) and b["models"]["base"]["cpu_vs_base_ci"] == (1.0, 1.0)
    path = tmp_path / "latency.json"
    atomic_write_json(path, res)  # sorted keys, tuples become lists: what load_results reads
    loaded = latency.load_results(path)
    text = latency.table(loaded)
    assert text.index("LoRA merged") < text.index("AdapterH") < text.index("base at T + l_p")  # MODELS' order
    assert "AdapterH" in latency.summary(loaded) and "paper" in latency.summary(loaded)
    md = latency.markdown(loaded)
    assert md.count("\n") == 1 + len(res["batches"]) * (len(latency.MODELS) + 1) and "| 2 | PreLayer |" in md
    latency.plot(loaded, tmp_path / "latency.png")
    assert (tmp_path / "latency.png").stat().st_size > 0


def test_median_ci_brackets_the_median():
    rng = np.random.default_rng(3)
    den = rng.uniform(1, 2, 200)
    num = den * rng.normal(1.05, 0.1, 200)
    lo, hi = latency.median_ci(num, den)
    assert lo < np.median(num / den) < hi and hi - lo < 0.06 and lo > 1.0


def test_bad_arguments_are_named(built, tmp_path):
    models, config = built
    with pytest.raises(FileNotFoundError, match="benchmarks/latency.py"):
        latency.load_results(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="give both"):
        latency.build_models(config=TINY)
    with pytest.raises(ValueError, match="batch"):
        latency.measure(models, config, batches=(0,), T=4, reps=2)


def test_the_benchmark_script_runs(monkeypatch):
    """benchmarks/latency.py's run() on the shipped base at a tiny size (its thread and malloc settings, which
    change the whole process, are left out: main() applies them)."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import latency as script  # benchmarks/latency.py

    args = script.parse_args(["--quick", "--batch", "1", "--T", "4", "--reps", "2", "--min-ms", "0"])
    args.blas_threads, args.tuned = None, False
    monkeypatch.setattr(sys, "argv", ["latency.py"])
    res = script.run(args)
    assert res["settings"]["adapter_r"] == 8 and res["settings"]["T"] == 4 and "uptime_after" in res
    assert [b["batch"] for b in res["batches"]] == [1] and res["batches"][0]["reps"] == 2
    assert args.json.endswith("latency_quick.json") and args.plot.endswith("latency_quick.png")
