"""minilora compare: every method evaluated on the task, experiments.Setting for any method (old result files
still matched), and ``minilora compare --quick`` end to end through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from minilora.checkpoint import atomic_write_json, load_params
from minilora.cli import main
from minilora.compare import ENTRIES, comparison, rows
from minilora.experiments import Setting, Sweep, _load, get_task, results_path, summarize
from minilora.methods import METHODS
from minilora.train import TrainConfig, train


@pytest.fixture(scope="module")
def base():
    from minilora.checkpoint import BASE_CHECKPOINT

    if not BASE_CHECKPOINT.is_file():
        pytest.skip("the shipped base checkpoint is missing")
    return load_params(BASE_CHECKPOINT)


# ---- experiments.Setting with a method and its options --------------------------------------------------

def test_settings_without_options_are_described_as_before_and_committed_results_load():
    from minilora.sweeps import FULL

    assert "options" not in Sweep("s", "corpus4", (Setting("a", (1e-2,)),)).describe()["settings"][0]
    for name, sweep in FULL.items():  # the committed files are matched by their description
        assert _load(results_path(name), sweep) is not None, name


def test_a_setting_with_options_round_trips_through_its_result_file(tmp_path):
    opts = (("l_p", 8), ("l_i", 2))
    setting = Setting("PreLayer", (1e-2,), targets=(), method="prelayer", options=opts)
    assert hash(setting) and setting.method_options() == {"l_p": 8, "l_i": 2}
    sweep = Sweep("s", "corpus4", (setting,), seeds=(0,), steps=2)
    assert sweep.describe()["settings"][0]["options"] == [["l_p", 8], ["l_i", 2]]
    path = tmp_path / "s.json"
    atomic_write_json(path, {"sweep": sweep.describe(), "runs": {"PreLayer|0.01|0": {"seconds": 1.0}}})
    assert _load(path, sweep)["runs"] == {"PreLayer|0.01|0": {"seconds": 1.0}}  # resumed: the same sweep
    other = Sweep("s", "corpus4", (Setting("PreLayer", (1e-2,), targets=(), method="prelayer",
                                           options=(("l_p", 4), ("l_i", 2))),), seeds=(0,), steps=2)
    assert _load(path, other)["runs"] == {}  # other options: that setting's runs are not reused
    wider = Sweep("s", "corpus4", (Setting("PreLayer", (3e-3, 1e-2, 3e-2), targets=(), method="prelayer",
                                           options=opts),), seeds=(0,), steps=2)
    assert _load(path, wider)["runs"] == {"PreLayer|0.01|0": {"seconds": 1.0}}  # a grid extended: its runs kept
    narrower = Sweep("s", "corpus4", (Setting("PreLayer", (3e-2,), targets=(), method="prelayer", options=opts),),
                     seeds=(0,), steps=2)
    assert _load(path, narrower)["runs"] == {}  # an lr no longer in the grid: its runs dropped


# ---- every method gets evaluations ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["adapter_h", "prelayer"])
def test_adapter_and_prefix_runs_are_evaluated(base, name):
    params, config = base
    setup = METHODS[name].build(params, config, seed=0)
    res = train(get_task("corpus4"), params, config, TrainConfig(steps=2, batch_size=4, warmup=0, eval_every=2),
                method=setup, progress=False)
    assert [e["step"] for e in res.evals] == [2]
    assert res.evals[0]["n"] == len(get_task("corpus4").inner.eval_examples)
    assert all(math.isfinite(res.evals[0][k]) for k in ("accuracy", "class_nll", "loss"))


def test_evaluating_through_model_equals_the_params_and_lora_path(base):
    params, config = base
    setup = METHODS["lora"].build(params, config, seed=0, r=4)
    lora = setup.trainable
    for block in lora["blocks"]:  # B = 0 would make the adapter invisible
        for ab in block.values():
            ab["B"] = np.random.default_rng(1).standard_normal(ab["B"].shape).astype(np.float32) * 0.05
    task = get_task("corpus4").inner
    lc = METHODS["lora"].task_model(lora, setup.frozen, setup.options)[2]
    direct = task.evaluate_class(params, config, lora, lc)
    hooked = task.evaluate_class(params, config, model=lambda b: setup.logits(lora, b))
    assert direct["n"] == hooked["n"] and direct["accuracy"] == hooked["accuracy"]
    for k in ("class_nll", "first_byte_nll", "loss"):
        assert hooked[k] == pytest.approx(direct[k], rel=1e-6), k
    assert direct["class_nll"] != task.evaluate_class(params, config)["class_nll"]  # the adapter did something


# The paper's formulas on the shipped base (d = 128, L = 4, d_mlp = 512), with the comparison's options.
COUNTS = {"ft": 842_496, "ft_top2": 396_544, "bitfit": 5_760, "preembed": 128 * 10, "prelayer": 4 * 128 * 10,
          "adapter_h": 2 * 4 * (2 * 128 * 8 + 8 + 128), "adapter_l": 4 * (2 * 128 * 8 + 8 + 128) + 2 * 4 * 128,
          "lora": 2 * 8 * 128 * 8, "lora_plus": 2 * 8 * 128 * 8, "lora_fa": 8 * 128 * 8}


# ---- minilora compare --quick, end to end ------------------------------------------------------------------

def test_compare_quick_writes_a_complete_table(base, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--quick", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    sweep = comparison("corpus4", quick=True)
    names = {p.name for p in out.iterdir()}
    assert names == {f"{sweep.name}.{s}" for s in ("json", "md", "png")}  # and no temporary file left behind
    data = summarize(sweep, json.loads((out / f"{sweep.name}.json").read_text()))
    table = {r["name"]: r for r in rows(sweep, data)}
    assert sorted(table) == sorted(e.name for e in ENTRIES)
    for name, r in table.items():
        assert r["trainable"] == r["paper_count"] == COUNTS[name], name
        assert all(math.isfinite(x) for x in r["accuracy"]["values"] + r["class_nll"]["values"]), name
        assert len(r["accuracy"]["values"]) == 2 and r["plateau"]["steps"] == [3, 6], name
        assert r["file_bytes"] >= 4 * r["trainable"] and r["peak_bytes"] > 0, name  # float32: 4 bytes each
        assert 0 < r["step_vs_lora"]["median"] < math.inf, name
        assert f"| {r['label']} |" in printed
    assert table["lora"]["step_vs_lora"] == {"median": 1.0, "p10": 1.0, "p90": 1.0}
    assert table["ft"]["trainable"] > 50 * table["lora"]["trainable"]
    md = (out / f"{sweep.name}.md").read_text()
    assert md in printed
    # Written files are not replaced silently; with --overwrite the saved runs and measurements are reused.
    assert main(["compare", "--quick", "--quiet", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    before = (out / f"{sweep.name}.json").read_text()
    assert main(["compare", "--quick", "--quiet", "--overwrite", "--out", str(out)]) == 0
    assert (out / f"{sweep.name}.json").read_text() == before


def test_compare_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    assert main(["compare", "--quick", "--workers", "0", "--out", str(tmp_path)]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["compare", "--quick", "--seeds", "1", "1", "--out", str(tmp_path)]) == 2
    assert "seeds" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["compare", "--quick", "--out", str(tmp_path / "file")]) == 2
    assert not list(tmp_path.glob("compare-*"))


def test_committed_runs_of_identical_settings_are_reused_and_only_those():
    from minilora.compare import reuse_committed

    full, data = comparison("corpus4"), {"runs": {}}
    assert reuse_committed(full, data) == 10  # LoRA r=8 {W_q, W_v} and FT: 3 lrs on seed 0 + 2 seeds each
    committed = json.loads(results_path("corpus4-wq,wv").read_text())["runs"]
    assert {k: v for k, v in data["runs"]["LoRA|0.01|2"].items() if k != "reused_from"} == committed["wq,wv r=8|0.01|2"]
    assert {k.split("|")[0] for k in data["runs"]} == {"LoRA", "FT"}
    assert reuse_committed(comparison("corpus4", quick=True), {"runs": {}}) == 0  # another budget
    assert reuse_committed(full, data) == 0  # nothing copied twice


def test_the_committed_full_comparison_is_complete_and_reads_without_running():
    from minilora.compare import committed_comparison

    sweep, data = comparison("corpus4"), committed_comparison("corpus4")
    table = {r["name"]: r for r in rows(sweep, data)}
    assert sorted(table) == sorted(e.name for e in ENTRIES)
    for name, r in table.items():
        assert r["trainable"] == r["paper_count"] == COUNTS[name], name
        assert len(r["accuracy"]["values"]) == 3 and not r["edge_of_grid"], name  # every grid extended past its pick
    assert table["lora"]["step_vs_lora"]["median"] == 1.0
