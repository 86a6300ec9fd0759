"""Fair sweeps: every setting gets its own learning-rate grid, every (setting, lr) runs on several seeds, the
metric is the class (not the answer's formatting bytes), and the results are saved as JSON.

A sweep is a ``Sweep`` (a task, settings, a grid of learning rates per setting, seeds, a training budget). It
has two sizes built by the SAME code: ``"full"`` (what the committed results in ``minilora/results/`` come from) and
``"reduced"`` (what the test suite runs: about a minute per notebook). The mode is read from
the environment variable MINILORA_MODE (default "reduced"); ``python -m minilora.experiments NAME --mode full``
regenerates a committed result file.

For each setting the learning rate is chosen by the selection metric at the end of training (class NLL on the
held-out split, else KL, else the loss): on the first seed (``tune_on_first_seed``, the default; the other seeds
then run at the chosen lr) or by the mean over all seeds. The table reports mean ± standard deviation over the
seeds at the chosen learning rate. As in the paper's GLUE experiments, the lr is chosen on the split that is
reported (the task has no third split); every setting gets the same grid, so the selection favours none.

Every run records its evaluation curve, so a plateau can be checked. A result file holds the sweep's full
description; it is reused only if that description is unchanged, and it is written after every run, so an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

MODES = ("full", "reduced")
RESULTS_DIR = Path(__file__).resolve().parent / "results"  # package data: found from a checkout and when installed


def mode() -> str:
    """"full" or "reduced", from MINILORA_MODE (default "reduced")."""
    value = os.environ.get("MINILORA_MODE", "reduced")
    if value not in MODES:
        raise ValueError(f"MINILORA_MODE must be one of {MODES}, got {value!r}")
    return value


# ---- what a sweep is -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One row of a table: a LoRA configuration (or full fine-tuning, or any method of minilora.methods) and
    its learning-rate grid."""

    label: str
    lrs: tuple[float, ...]
    targets: tuple[str, ...] = ("wq", "wv")
    """Adapted matrices; empty for full fine-tuning."""
    r: int = 8
    alpha: float = 8.0
    init: str = "kaiming"
    use_rslora: bool = False
    method: str = "lora"
    """"lora" (this Setting's targets, r, alpha, init, use_rslora), "full" (every parameter), or another name
    of minilora.methods.METHODS, built with ``options`` (its targets, r, alpha, ... fields are then unused)."""
    options: tuple = ()
    """The METHODS method's options as (key, value) pairs (hashable: tuples for sequences); () for its defaults.
    Left out of ``Sweep.describe`` when empty, so the descriptions of existing result files are unchanged."""

    def method_options(self) -> dict:
        return dict(self.options)


@dataclass(frozen=True)
class Sweep:
    name: str
    task: str
    """A key of TASKS."""
    settings: tuple[Setting, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    """Each seed sets both the adapter's initialisation and the batch order."""
    tune_on_first_seed: bool = True
    """True: the lr grid runs on the first seed only and the other seeds run at the lr it chose (5 runs per
    setting for 3 lrs and 3 seeds, instead of 9). False: every lr on every seed, chosen by the mean."""
    steps: int = 200
    batch_size: int = 16
    warmup: int = 20
    eval_every: int = 50
    """Evaluate on the held-out split every this many steps and at the end; 0: never (runs that only measure
    the adapter itself, such as the size of ΔW, skip the held-out pass)."""

    def describe(self) -> dict:
        out = asdict(self)
        for setting in out["settings"]:
            if not setting["options"]:
                del setting["options"]  # a setting without options is described as before they existed
        return json.loads(json.dumps(out))  # tuples become lists, as in the saved file


# ---- tasks, built once per process -----------------------------------------------------------------------

CORPUS4 = ("email", "http", "ipaddress", "threading")


def _corpus4():
    from .tasks import CorpusModuleTask

    return CorpusModuleTask(modules=CORPUS4, per_module=150, eval_fraction=0.3)


def _docmodule():
    from .tasks import DocModuleTask

    return DocModuleTask()


TASKS = {"corpus4": _corpus4, "docmodule": _docmodule}


@lru_cache(maxsize=None)
def get_task(name: str, held_out: bool = True):
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return ClassMetricTask(_inner_task(name), held_out=held_out)


@lru_cache(maxsize=None)
def _inner_task(name: str):
    return TASKS[name]()


class ClassMetricTask:
    """A PromptClassTask seen by train(): batches trimmed of trailing padding (causal attention: nothing changes
    but the cost) and evaluation by the class metrics of ``evaluate_class`` (held_out=False: no evaluation, {})."""

    def __init__(self, inner, held_out: bool = True):
        self.inner = inner
        self.held_out = held_out
        self.name = f"{inner.name}-class"

    def batch(self, step, batch_size, seed):
        b = self.inner.batch(step, batch_size, seed)
        T = int(b.w.nonzero()[1].max()) + 1
        return type(b)(b.x[:, :T], b.y[:, :T], b.w[:, :T])

    def evaluate(self, params, config, lora=None, lora_config=None, model=None):
        return self.inner.evaluate_class(params, config, lora, lora_config, model=model) if self.held_out else {}


# ---- running ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _base():
    from .checkpoint import load_base

    return load_base()


def run_one(sweep: Sweep, setting: Setting, lr: float, seed: int) -> dict:
    """Train one (setting, lr, seed) and return its final metrics, evaluation curve and time."""
    from .lora import LoraConfig, init_lora
    from .train import TrainConfig, TrainingDiverged, train

    params, config = _base()
    task = get_task(sweep.task, held_out=sweep.eval_every > 0)
    tc = TrainConfig(steps=sweep.steps, batch_size=sweep.batch_size, lr=lr, warmup=sweep.warmup,
                     eval_every=sweep.eval_every, seed=seed)
    t0 = time.perf_counter()
    try:
        if setting.method == "full":
            res = train(task, params, config, tc, method="full", progress=False)
        elif setting.method != "lora":
            from .methods import get_method

            setup = get_method(setting.method).build(params, config, seed=seed, **setting.method_options())
            res = train(task, params, config, tc, method=setup, progress=False)
        else:
            lc = LoraConfig(r=setting.r, alpha=setting.alpha, targets=setting.targets, init=setting.init,
                            use_rslora=setting.use_rslora)
            res = train(task, params, config, tc, method="lora", lora=init_lora(config, lc, seed=seed),
                        lora_config=lc, progress=False)
    except TrainingDiverged as e:  # too large a learning rate: a result of the grid, not a crash of the sweep
        return {"lr": lr, "seed": seed, "diverged": str(e), "final": None, "curve": [],
                "seconds": time.perf_counter() - t0}
    loss = [h["loss"] for h in res.history]
    k = max(1, len(loss) // 10)
    final = {**res.evals[-1], "train_loss": float(np.mean(loss[-k:]))}  # training loss: mean of the last 10%
    if setting.method == "lora":
        final.update(_delta_sizes(params, res.trainable, lc.scale))
    return {"lr": lr, "seed": seed, "final": final, "curve": res.evals if sweep.eval_every else [],
            "seconds": time.perf_counter() - t0}


def _delta_sizes(params, lora, scale) -> dict:
    """Mean over the adapted matrices of ‖ΔW‖_F and of ‖ΔW‖_F / ‖W‖_F, ΔW = s·B A."""
    from .lora import delta_weight

    norms, rel = [], []
    for block, adapters in zip(params["blocks"], lora["blocks"], strict=True):
        for t, ab in adapters.items():
            n = float(np.linalg.norm(delta_weight(ab, scale)))
            norms.append(n)
            rel.append(n / float(np.linalg.norm(block[t]["W"])))
    return {"delta_norm": float(np.mean(norms)), "delta_rel": float(np.mean(rel))}


def _load(path: Path, sweep: Sweep) -> dict | None:
    """The saved results of ``sweep``, or None. A file made for the same budget and task but other settings is
    reused for the settings the two share, unchanged but for their learning-rate grid (so a setting can be
    added or dropped, or its grid extended, without re-running the others): its runs of other settings, and of
    learning rates no longer in a setting's grid, are dropped."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    old, new = data.get("sweep", {}), sweep.describe()
    if old == new:
        return data
    same_budget = {k: v for k, v in old.items() if k not in ("settings", "name")} == \
        {k: v for k, v in new.items() if k not in ("settings", "name")}
    if not same_budget:
        return None
    old_s = {s["label"]: s for s in old.get("settings", [])}
    new_s = {s["label"]: s for s in new["settings"]}

    def but_grid(s):
        return {k: v for k, v in s.items() if k != "lrs"}

    kept = {label: {f"{lr:g}" for lr in new_s[label]["lrs"]} for label in old_s.keys() & new_s.keys()
            if but_grid(old_s[label]) == but_grid(new_s[label])}  # {label: the lrs of its new grid, as keys}
    runs = {k: v for k, v in data["runs"].items() if k.split("|")[1] in kept.get(k.split("|")[0], ())}
    return {"sweep": new, "runs": runs, "seconds": sum(r["seconds"] for r in runs.values()),
            "wall_seconds": data.get("wall_seconds", 0.0), "load_average": data.get("load_average")}


def _key(setting: Setting, lr: float, seed: int) -> str:
    return f"{setting.label}|{lr:g}|{seed}"


def run_sweep(sweep: Sweep, path=None, workers: int = 1, log=None) -> dict:
    """Run (or resume, or load) a sweep; returns its result dict (see summarize). path: the JSON file, written
    after every run; None keeps everything in memory. workers > 1 runs in parallel processes."""
    path = Path(path) if path is not None else None
    data = (_load(path, sweep) if path is not None else None) or {"sweep": sweep.describe(), "runs": {}}
    first = sweep.seeds[:1] if sweep.tune_on_first_seed else sweep.seeds
    _run_all(sweep, data, [(s, lr, seed) for s in sweep.settings for lr in s.lrs for seed in first], path,
             workers, log)
    if sweep.tune_on_first_seed:
        rest = []
        for s in sweep.settings:
            lr = _best_lr(s, [data["runs"][_key(s, lr, sweep.seeds[0])]["final"] for lr in s.lrs])
            rest.extend((s, lr, seed) for seed in sweep.seeds[1:])
        _run_all(sweep, data, rest, path, workers, log)
    return summarize(sweep, data)


def _run_all(sweep, data, jobs, path, workers, log):
    from .checkpoint import atomic_write_json

    todo = [job for job in jobs if _key(*job) not in data["runs"]]
    started = [time.time()]

    def record(s, lr, seed, out):
        data["runs"][_key(s, lr, seed)] = out
        data["seconds"] = data.get("seconds", 0.0) + out["seconds"]
        if log is not None:
            shown = "diverged" if out["final"] is None else ", ".join(
                f"{k} {v:.4f}" for k, v in out["final"].items() if k not in ("step", "n"))
            log(f"{s.label:<28} lr {lr:<8g} seed {seed}: {shown} ({out['seconds']:.0f} s)")
        if path is not None:
            data["load_average"] = os.getloadavg()
            data["wall_seconds"] = data.get("wall_seconds", 0.0) + (time.time() - started[0])
            started[0] = time.time()
            atomic_write_json(path, data)

    if workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(run_one, sweep, *job): job for job in todo}
            for fut, job in futures.items():
                record(*job, fut.result())
    else:
        for job in todo:
            record(*job, run_one(sweep, *job))


def _best_lr(setting: Setting, finals: list) -> float:
    """The lr whose run(s) scored the lowest selection metric; finals[k] belongs to setting.lrs[k] (None:
    diverged)."""
    scores = [float("inf") if f is None else selection_metric(f)[1] for f in finals]
    return setting.lrs[int(np.argmin(scores))]


def selection_metric(final: dict) -> tuple[str, float]:
    """(name, value) of the metric the learning rate is chosen by: lower is better."""
    for name in ("class_nll", "kl", "loss", "train_loss"):
        if name in final:
            return name, final[name]
    raise KeyError("no selection metric in the evaluation")


def summarize(sweep: Sweep, data: dict) -> dict:
    """Adds data["table"]: {label: {"lr": chosen lr, "edge_of_grid": bool, metric: {"mean", "std", "values"}
    over the seeds at that lr, "by_lr": {lr: the tuning runs' metrics, or "diverged"}}}."""
    table = {}
    tune_seeds = sweep.seeds[:1] if sweep.tune_on_first_seed else sweep.seeds
    missing = [_key(s, lr, seed) for s in sweep.settings for lr in s.lrs for seed in tune_seeds
               if _key(s, lr, seed) not in data["runs"]]
    if missing:
        raise ValueError(f"sweep {sweep.name!r} is incomplete: {len(missing)} tuning runs missing "
                         f"(first: {missing[0]}); run it again to resume")
    for s in sweep.settings:
        by_lr = {}
        for lr in s.lrs:
            finals = [data["runs"][_key(s, lr, seed)]["final"] for seed in tune_seeds]
            if any(f is None for f in finals):  # a diverged seed rules the learning rate out
                by_lr[f"{lr:g}"] = {"diverged": sum(f is None for f in finals), "selection": float("inf")}
                continue
            by_lr[f"{lr:g}"] = {k: _stats([f[k] for f in finals]) for k in finals[0] if k not in ("step", "n")}
            by_lr[f"{lr:g}"]["selection"] = float(np.mean([selection_metric(f)[1] for f in finals]))
        best = min(s.lrs, key=lambda lr: by_lr[f"{lr:g}"]["selection"])
        if any(_key(s, best, seed) not in data["runs"] for seed in sweep.seeds):
            raise ValueError(f"sweep {sweep.name!r} is incomplete: {s.label} lacks seeds at lr {best:g}")
        finals = [data["runs"][_key(s, best, seed)]["final"] for seed in sweep.seeds]
        row = {"diverged": sum(f is None for f in finals)} if any(f is None for f in finals) else {
            k: _stats([f[k] for f in finals]) for k in finals[0] if k not in ("step", "n")}
        table[s.label] = {"lr": best, "edge_of_grid": len(s.lrs) > 1 and best in (s.lrs[0], s.lrs[-1]),
                          **row, "by_lr": by_lr}
    data["table"] = table
    return data


def _stats(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "values": [float(x) for x in v]}


def compare(row_a: dict, row_b: dict, metric: str = "class_nll") -> tuple[float, float]:
    """(mean_a - mean_b, its standard error) of two table rows over their seeds (unpaired: the seeds of two
    settings are different runs). A difference of more than 2-3 standard errors is one the seeds do not explain."""
    a, b = row_a[metric], row_b[metric]
    na, nb = len(a["values"]), len(b["values"])
    return a["mean"] - b["mean"], float(np.sqrt(a["std"] ** 2 / na + b["std"] ** 2 / nb))


def curves(data: dict, setting_label: str, metric: str = "accuracy") -> dict:
    """{seed: (steps, values)} of one setting at its chosen learning rate: to check training reached a plateau."""
    lr = data["table"][setting_label]["lr"]
    out = {}
    for key, run in data["runs"].items():
        label, lr_s, seed = key.split("|")
        if label == setting_label and float(lr_s) == lr:
            out[int(seed)] = ([e["step"] for e in run["curve"]], [e[metric] for e in run["curve"]])
    return out


def reduced(sweep: Sweep, keep: tuple[str, ...], steps: int | None = None, lrs: dict | None = None,
            seeds: tuple[int, ...] | None = None) -> Sweep:
    """The reduced mode of a sweep: the same code on a subset of its settings (by label), optionally with fewer
    steps, other learning-rate grids ({label: lrs}) or fewer seeds."""
    settings = tuple(replace(s, lrs=tuple((lrs or {}).get(s.label, s.lrs))) for s in sweep.settings
                     if s.label in keep)
    missing = set(keep) - {s.label for s in settings}
    if missing:
        raise ValueError(f"reduced: unknown setting labels {sorted(missing)}")
    return replace(sweep, name=f"{sweep.name}-reduced", settings=settings, steps=steps or sweep.steps,
                   seeds=seeds or sweep.seeds, eval_every=min(sweep.eval_every, steps or sweep.steps))


def results_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def full_results(sweep: Sweep, log=None) -> dict:
    """The full sweep's results, which notebooks show in both modes: in full mode run (or resumed, or loaded) into
    minilora/results/NAME.json; in reduced mode read from that committed file, which must exist and match the sweep."""
    if mode() == "full":
        return run_sweep(sweep, results_path(sweep.name), log=log)
    return committed_results(sweep)


def committed_results(sweep: Sweep) -> dict:
    """The results of a full sweep as committed in minilora/results/NAME.json; never runs anything."""
    path = results_path(sweep.name)
    data = _load(path, sweep)
    if data is None:
        raise FileNotFoundError(f"{path} is missing or describes another sweep: regenerate it with "
                                f"'python -m minilora.experiments {sweep.name} --mode full --workers 2'")
    return summarize(sweep, data)


def main(argv=None) -> int:
    """python -m minilora.experiments NAME... [--mode full|reduced] [--workers N]: run sweeps of minilora.sweeps
    and save them (full mode: minilora/results/NAME.json)."""
    import argparse

    from .sweeps import FULL, GROUPS, REDUCED

    p = argparse.ArgumentParser(prog="python -m minilora.experiments", description=main.__doc__)
    p.add_argument("names", nargs="+", choices=sorted(FULL) + sorted(GROUPS), metavar="NAME",
                   help=f"one or more of {sorted(FULL) + sorted(GROUPS)}")
    p.add_argument("--mode", choices=MODES, default="full")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    sweeps = tuple(s for name in args.names for s in GROUPS.get(name, (FULL.get(name),)))
    if args.mode == "reduced":
        sweeps = tuple(REDUCED[s.name] for s in sweeps if s.name in REDUCED)
    for sweep in sweeps:
        t0 = time.time()
        data = run_sweep(sweep, results_path(sweep.name), workers=args.workers, log=lambda m: print(m, flush=True))
        print(f"{sweep.name}: {len(data['runs'])} runs, {time.time() - t0:.0f} s wall this call, "
              f"load average {os.getloadavg()}", flush=True)
        for label, row in data["table"].items():
            print(f"{label:<28} lr {row['lr']:<8g} " + "  ".join(
                f"{k} {row[k]['mean']:.3f}±{row[k]['std']:.3f}" for k in ("accuracy", "class_nll", "kl") if k in row),
                flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
