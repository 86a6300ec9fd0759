"""The sweep runner (lr grid x seeds, selection, JSON resume), the class metrics and the linear probe."""

import json

import numpy as np
import pytest

import minilora.experiments as ex
from minilora import forward
from minilora.checkpoint import load_base
from minilora.probe import answer_features, cross_validated_l2, fit_logistic, linear_probe, predict_logistic
from minilora.tasks import PromptClassTask


class TinyClassTask(PromptClassTask):
    """Four short examples per split, two classes: enough to exercise training and scoring in a second."""

    name = "tinyclass"

    def __init__(self, context=32):
        self.context = context
        self.labels = ("alpha", "beta")
        self.train_examples = [("x = 1", "alpha"), ("y = 2", "beta"), ("z = 3", "alpha"), ("w = 4", "beta")]
        self.eval_examples = [("a = 5", "alpha"), ("b = 6", "beta"), ("c = 7", "alpha")]
        self._prepare()


@pytest.fixture
def tiny_sweep(monkeypatch, shipped_base):
    monkeypatch.setitem(ex.TASKS, "tiny", TinyClassTask)
    ex.get_task.cache_clear()
    ex._inner_task.cache_clear()
    yield ex.Sweep("tiny", "tiny", (ex.Setting("r=1", (1e-3, 3e-2), r=1), ex.Setting("r=4", (1e-2,), r=4)),
                   seeds=(0, 1), steps=3, batch_size=2, warmup=1, eval_every=3, tune_on_first_seed=False)
    ex.get_task.cache_clear()
    ex._inner_task.cache_clear()


def test_class_metrics_agree_with_evaluate(shipped_base):
    params, config = load_base()
    task = TinyClassTask(context=config.context)
    plain, cls = task.evaluate(params, config), task.evaluate_class(params, config)
    assert cls["accuracy"] == plain["accuracy"] and cls["loss"] == pytest.approx(plain["loss"])
    assert 0 < cls["class_nll"] <= cls["first_byte_nll"]  # renormalising over the candidates can only help
    x, _, _, at, true = task.split("eval")
    first = forward(params, x, config)[np.arange(len(x)), at].astype(np.float64)  # (n, V)
    top = first.max(1, keepdims=True)
    log_p = first - top - np.log(np.exp(first - top).sum(1, keepdims=True))
    assert cls["first_byte_nll"] == pytest.approx(-log_p[np.arange(len(x)), task.first_bytes[true]].mean(), rel=1e-5)


def test_trimmed_batches_change_nothing_but_the_width(shipped_base):
    from minilora.ops import cross_entropy

    params, config = load_base()
    inner = TinyClassTask(context=config.context)
    full, trimmed = inner.batch(0, 3, 0), ex.ClassMetricTask(inner).batch(0, 3, 0)
    assert trimmed.x.shape[1] < full.x.shape[1]
    a = float(cross_entropy(forward(params, full.x, config), full.y, full.w))
    b = float(cross_entropy(forward(params, trimmed.x, config), trimmed.y, trimmed.w))
    assert a == pytest.approx(b, rel=1e-5)


def test_sweep_selects_per_setting_and_resumes_from_its_file(tiny_sweep, tmp_path, monkeypatch):
    path = tmp_path / "tiny.json"
    data = ex.run_sweep(tiny_sweep, path)
    assert len(data["runs"]) == 6  # (2 + 1) learning rates x 2 seeds
    row = data["table"]["r=1"]
    means = {lr: v["selection"] for lr, v in row["by_lr"].items()}
    assert row["lr"] == float(min(means, key=means.get))  # the lr with the lowest mean class NLL
    assert row["accuracy"]["values"] == [data["runs"][f"r=1|{row['lr']:g}|{s}"]["final"]["accuracy"] for s in (0, 1)]
    assert row["class_nll"]["std"] >= 0 and row["edge_of_grid"]
    assert json.loads(path.read_text())["sweep"] == tiny_sweep.describe()

    tuned = ex.run_sweep(ex.replace(tiny_sweep, tune_on_first_seed=True, seeds=(0, 1, 2)))
    assert len(tuned["runs"]) == 2 + 2 + 1 + 2  # r=1: 2 lrs on seed 0, then seeds 1, 2; r=4: 1 lr, 3 seeds
    best = tuned["table"]["r=1"]["lr"]
    assert all(f"r=1|{best:g}|{s}" in tuned["runs"] for s in (0, 1, 2))
    assert best == min((1e-3, 3e-2), key=lambda lr: tuned["runs"][f"r=1|{lr:g}|0"]["final"]["class_nll"])
    calls = []
    monkeypatch.setattr(ex, "run_one", lambda *a: calls.append(a))
    again = ex.run_sweep(tiny_sweep, path)  # everything is on disk: nothing runs again
    assert calls == [] and again["table"]["r=1"]["lr"] == row["lr"]
    changed = ex.reduced(tiny_sweep, ("r=4",), seeds=(0, 1, 2))
    assert changed.describe() != tiny_sweep.describe()
    with pytest.raises(ValueError, match="unknown setting"):
        ex.reduced(tiny_sweep, ("r=99",))


def test_a_diverged_learning_rate_is_ruled_out(tiny_sweep):
    data = {"sweep": tiny_sweep.describe(), "runs": {}}  # every lr on every seed (tune_on_first_seed=False)
    for s in tiny_sweep.settings:
        for lr in s.lrs:
            for seed in tiny_sweep.seeds:
                final = None if lr == 1e-3 and seed == 1 else {"accuracy": 0.5, "class_nll": 0.1 if lr == 1e-3 else 0.7}
                data["runs"][f"{s.label}|{lr:g}|{seed}"] = {"final": final, "curve": []}
    table = ex.summarize(tiny_sweep, data)["table"]
    assert table["r=1"]["lr"] == 3e-2 and table["r=1"]["by_lr"]["0.001"]["diverged"] == 1


def test_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MINILORA_MODE", raising=False)
    assert ex.mode() == "reduced"
    monkeypatch.setenv("MINILORA_MODE", "full")
    assert ex.mode() == "full"
    monkeypatch.setenv("MINILORA_MODE", "fast")
    with pytest.raises(ValueError, match="MINILORA_MODE"):
        ex.mode()


# ---- linear probe --------------------------------------------------------------------------------------

def test_logistic_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 5)) * 4
    y = rng.integers(0, 3, 300)
    X = centers[y] + rng.standard_normal((300, 5))
    model = fit_logistic(X, y, 3, l2=1e-3)
    assert (predict_logistic(model, X) == y).mean() > 0.97
    assert cross_validated_l2(X, y, 3, folds=3) in (1e-4, 1e-3, 1e-2, 1e-1)
    noise = rng.standard_normal((300, 5))  # no signal: a probe must not find one on held-out data
    m2 = fit_logistic(noise[:200], y[:200], 3, l2=1e-2)
    assert (predict_logistic(m2, noise[200:]) == y[200:]).mean() < 0.5


def test_probe_features_are_the_models_own_activations(shipped_base):
    from minilora.ops import layer_norm

    params, config = load_base()
    task = TinyClassTask(context=config.context)
    x, _, _, at, _ = task.split("train")
    feats = answer_features(params, config, x, at, pooled=True)
    logits = forward(params, x, config)
    rows = np.arange(len(x))
    np.testing.assert_allclose(feats["logits"], logits[rows, at], rtol=1e-5, atol=1e-5)
    emb = params["wte"][x] + params["wpe"][: x.shape[1]]
    ln = layer_norm(emb, params["blocks"][0]["ln1"]["g"], params["blocks"][0]["ln1"]["b"], config.ln_eps)
    np.testing.assert_allclose(feats["block 0"], ln[rows, at], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats["block 0 mean"][0], ln[0, : at[0] + 1].mean(0), rtol=1e-5, atol=1e-5)
    out = linear_probe(task, params, config)
    assert out["chance"] == 0.5 and set(out) == {"chance", "block 0", "block 1", "block 2", "block 3", "logits"}
    assert all(0 <= v["accuracy"] <= 1 for k, v in out.items() if k != "chance")


def test_full_results_are_read_in_reduced_mode_and_checked(tiny_sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "RESULTS_DIR", tmp_path)
    monkeypatch.setenv("MINILORA_MODE", "reduced")
    with pytest.raises(FileNotFoundError, match="python -m minilora.experiments tiny --mode full"):
        ex.full_results(tiny_sweep)
    monkeypatch.setenv("MINILORA_MODE", "full")
    made = ex.full_results(tiny_sweep)  # full mode runs it and writes results/tiny.json
    monkeypatch.setenv("MINILORA_MODE", "reduced")
    assert ex.full_results(tiny_sweep)["table"] == made["table"]
    data = json.loads((tmp_path / "tiny.json").read_text())
    data["runs"].pop("r=4|0.01|1")
    with pytest.raises(ValueError, match="incomplete"):
        ex.summarize(tiny_sweep, data)


def test_compare_gives_the_difference_and_its_standard_error():
    a = {"class_nll": {"mean": 1.0, "std": 0.3, "values": [0.7, 1.0, 1.3]}}
    b = {"class_nll": {"mean": 0.5, "std": 0.0, "values": [0.5, 0.5, 0.5]}}
    diff, se = ex.compare(a, b)
    assert diff == pytest.approx(0.5) and se == pytest.approx(0.3 / np.sqrt(3))
