"""The paper's comparison of fine-tuning methods (Tables 1-4 analogs) on the shipped base: ``minilora compare``.

Every method of minilora.methods trains on a downstream task from the shipped base with the SAME budget (that of
the corpus4 sweep of minilora.sweeps: 250 steps of 8, 20 warm-up steps, an evaluation every 84 steps, seeds 0, 1,
2), its own small learning-rate grid tuned on seed 0 by the held-out class NLL (experiments.run_sweep), then seeds
1 and 2 at the chosen rate. LoRA r=8 on {W_q, W_v} and full fine-tuning run through the very code paths of the
corpus4 sweep (experiments.Setting with method "lora" / "full"), so their rows can be read next to Table 6's.

Measured per method, separately from training and on one batch of the task:

* trainable parameters, asserted equal to the paper's formula (Method.paper_count);
* the step time relative to LoRA: one training step = value_and_grad of the method's objective + gradient clip +
  AdamW update, the methods interleaved (timing.run_interleaved), the per-repetition ratio's median [p10, p90];
* the peak memory of one training step: tracemalloc's peak above what was allocated before the step. NumPy
  reports its array buffers to tracemalloc, so this counts every array the step creates (the activations kept
  for the backward pass, the gradients, the optimizer's new moments and parameters) and Python objects; not
  counted: the arrays that exist before the step (the base, the trainable tree, the optimizer state) and
  BLAS's own work buffers;
* the size of the method's saved file (methods.save_method: the trainable tree, and a frozen part the method
  owns, such as LoRA-FA's A; a file's size depends only on the shapes, so the starting tree is saved).

The LoRA and FT settings being the corpus4 sweep's own, their committed runs are reused (reuse_committed).
The committed run was made with OPENBLAS_NUM_THREADS=1 (recorded with the measurements: backend.THREAD_VARS).

Two sizes from the same code: ``comparison(task)`` (the full run, committed as minilora/results/compare-corpus4.*)
and ``comparison(task, quick=True)`` (a few steps, one learning rate, two seeds: what the test suite runs).
"""

from __future__ import annotations

import os
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .experiments import RESULTS_DIR, Setting, Sweep

LORA_OPTIONS = (("r", 8), ("alpha", 8.0), ("targets", ("wq", "wv")), ("init", "kaiming"))
"""LoRA's setting in the comparison: the paper's main one (r = 8 on W_q, W_v), α and init as in sweeps.py."""
PREFIX_OPTIONS = (("l_p", 8), ("l_i", 2))
"""Prefix tuning: 8 prefix + 2 infix virtual tokens. The longest corpus4 example is 114 tokens (docmodule:
115), so 10 more fit the context of 128 with room to spare. No infix (l_i = 0) and longer prefixes (12 + 2, and 32 + 2
with the real tokens at unshifted positions) were measured no better on corpus4 (benchmarks/prefix_diagnosis.py)."""


@dataclass(frozen=True)
class Entry:
    """One method of the comparison: its options and learning-rate grid, and why that grid."""

    name: str
    """A key of minilora.methods.METHODS."""
    options: tuple
    lrs: tuple[float, ...]
    why: str


ENTRIES = (
    Entry("ft", (), (1e-4, 3e-4, 1e-3), "full fine-tuning's grid of sweeps.py (FULL_LRS): Adam on pretrained "
          "weights wants ~1e-4..1e-3; the corpus4 sweep chose 3e-4"),
    Entry("ft_top2", (), (1e-4, 3e-4, 1e-3, 3e-3), "the same kind of parameters as FT (pretrained weights), so "
          "FT's grid; the full run chose 1e-3, its edge, so the grid was extended to 3e-3"),
    Entry("bitfit", (), (3e-3, 1e-2, 3e-2, 1e-1, 3e-1), "biases are few and start small: BitFit (Ben Zaken et "
          "al.) tunes 1e-4..1e-3 on BERT at far more steps; a 100-step probe here still improved at 3e-2, so up to "
          "1e-1; the full run chose 1e-1, its edge, so the grid was extended to 3e-1"),
    Entry("preembed", PREFIX_OPTIONS, (3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0),
          "virtual embeddings without Li & Liang's MLP reparametrisation are a small free tensor; Adam moves each "
          "entry by ~lr per step and the embeddings' entries are ~0.1-1; a 100-step probe on seed 0 had class NLL "
          "1.58 at 1e-3 and 1.51 at 1e-2, so upwards; the full run chose 1e-1, then 3e-1 (by 3e-4 nats: flat), "
          "then 1.0, each its grid's edge, so up to 3.0. Its class NLL equals the label prior's on both splits (1.355 "
          "held-out): no bug, and no variant leaves the prior (l_i=0, unshifted positions, l_p up to 32, 500 steps, "
          "an MLP reparametrisation): benchmarks/prefix_diagnosis.py, docs/results.md"),
    Entry("prelayer", PREFIX_OPTIONS, (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0),
          "as PreEmbed, but free activations at every block's input; a 6-step run at 1e-2 already put 8 nats on the "
          "first answer byte, so one step lower; extended to 1e-1 when PreEmbed's full run chose its grid's top, "
          "then to 3e-1 and 1.0 as PreLayer's chose each top; at the label prior like PreEmbed (see there)"),
    Entry("adapter_h", (("r", 8),), (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "bottleneck adapters start at the base (zero "
          "up-projection) like LoRA; Houlsby et al. use 1e-4..1e-3 on BERT-sized models; ours is small, so up to "
          "LoRA's 1e-2; the full run chose 1e-2, then 3e-2, each its grid's edge, so up to 1e-1"),
    Entry("adapter_l", (("r", 8),), (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "as AdapterH (extended with it)"),
    Entry("lora", LORA_OPTIONS, (3e-3, 1e-2, 3e-2), "LoRA's grid of sweeps.py (LORA_LRS), so this row is the corpus4 "
          "sweep's 'wq,wv r=8'"),
    Entry("lora_plus", LORA_OPTIONS + (("ratio", 16.0),), (1e-3, 3e-3, 1e-2), "the lr is A's; B learns 16x faster "
          "(LoRA+'s recommended ratio), so B's rate spans 1.6e-2..1.6e-1 around LoRA's optimum 1e-2"),
    Entry("lora_fa", LORA_OPTIONS, (3e-3, 1e-2, 3e-2, 1e-1), "LoRA-FA trains LoRA's B at LoRA's rates (Zhang et "
          "al.); the full run chose 3e-2, its edge, so the grid was extended to 1e-1"),
)
ENTRY = {e.name: e for e in ENTRIES}
BUDGET = {"steps": 250, "batch_size": 8, "warmup": 20, "eval_every": 84, "seeds": (0, 1, 2)}
"""The full run's budget: the corpus4 sweep's (sweeps._group)."""
QUICK = {"steps": 6, "batch_size": 8, "warmup": 2, "eval_every": 3, "seeds": (0, 1)}
"""The quick run: a few steps at the middle of each grid, two seeds (a smoke test of the whole pipeline)."""
# The BLAS thread settings (backend.THREAD_VARS) are recorded with the measurements: on the loaded 2-core machine
# OPENBLAS_NUM_THREADS=1 made a LoRA training step about 4x faster in wall time (268 ms against 1116 ms at load
# ~8: BLAS threads spin against other processes), so the full run was made with it.
TIMING = {"full": {"reps": 20, "max_seconds": 90.0}, "quick": {"reps": 3, "max_seconds": 10.0}}


def label_of(name: str) -> str:
    """The paper's name of a method (Method.label): "LoRA", "AdapterH", ..."""
    from .methods import get_method

    return get_method(name).label


def setting_of(entry: Entry, quick: bool = False) -> Setting:
    """The experiments.Setting of a method: LoRA and FT as the corpus4 sweep runs them, the others by name."""
    lrs = (entry.lrs[len(entry.lrs) // 2],) if quick else entry.lrs
    label = label_of(entry.name)
    if entry.name == "ft":
        return Setting(label, lrs, targets=(), method="full")
    if entry.name == "lora":
        o = dict(entry.options)
        return Setting(label, lrs, targets=o["targets"], r=o["r"], alpha=o["alpha"], init=o["init"])
    return Setting(label, lrs, targets=(), method=entry.name, options=entry.options)


def comparison(task: str = "corpus4", quick: bool = False, methods=None, seeds=None) -> Sweep:
    """The comparison sweep on ``task`` (a key of experiments.TASKS): every method of ENTRIES (or ``methods``,
    names of METHODS, in the paper's order), the full budget or the quick one, seeds as given or the budget's."""
    from .experiments import TASKS

    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    names = [e.name for e in ENTRIES] if methods is None else list(methods)
    unknown = sorted(set(names) - set(ENTRY))
    if unknown or not names:
        raise ValueError(f"methods must be names among {[e.name for e in ENTRIES]}, got {unknown or 'none'}")
    budget = QUICK if quick else BUDGET
    seeds = tuple(budget["seeds"] if seeds is None else seeds)
    if len(seeds) < 1 or len(set(seeds)) != len(seeds) or any(int(s) != s or s < 0 for s in seeds):
        raise ValueError(f"seeds must be distinct whole numbers >= 0, got {list(seeds)}")
    settings = tuple(setting_of(e, quick) for e in ENTRIES if e.name in names)
    return Sweep(sweep_name(task, quick), task, settings, seeds=seeds, steps=budget["steps"],
                 batch_size=budget["batch_size"], warmup=budget["warmup"], eval_every=budget["eval_every"])


# The plateau check: the methods whose held-out accuracy still rose between the last two evaluations of the
# 250-step run, trained twice as long (500 steps of 8, schedule over 500) on the same 3 seeds at the lr the
# 250-step run chose for them (as sweeps.CORPUS4_LONG does for LoRA r = 1 and r = 64).
LONG_LRS = {"bitfit": 1e-1, "prelayer": 3e-1, "adapter_h": 3e-2, "adapter_l": 3e-2, "lora": 1e-2}


def plateau_check(task: str = "corpus4") -> Sweep:
    """The comparison's long run (see LONG_LRS): every lr fixed, so no tuning; evaluations every 100 steps."""
    settings = tuple(replace(setting_of(ENTRY[n]), lrs=(lr,)) for n, lr in LONG_LRS.items())
    return Sweep(f"{sweep_name(task)}-long", task, settings, seeds=BUDGET["seeds"], steps=2 * BUDGET["steps"],
                 batch_size=BUDGET["batch_size"], warmup=BUDGET["warmup"], eval_every=100, tune_on_first_seed=False)


def sweep_name(task: str, quick: bool = False) -> str:
    """compare-TASK (the full run) or compare-TASK-quick: the stem of its .json, .md and .png files."""
    return f"compare-{task}" + ("-quick" if quick else "")


# ---- measurements of one training step ---------------------------------------------------------------------

def _setup(name: str, params, config):
    from .methods import get_method

    setup = get_method(name).build(params, config, seed=0, **dict(ENTRY[name].options))
    if setup.trainable_count() != setup.paper_count():
        raise AssertionError(f"{name}: {setup.trainable_count()} trainable parameters, but the paper's formula "
                             f"({setup.method.formula}) gives {setup.paper_count()}")
    return setup


def _step_fn(setup, batch):
    """One training step from the setup's starting point: value_and_grad of the objective, clip, AdamW."""
    from .optim import AdamW, clip_by_global_norm
    from .train import method_value_and_grad

    opt = AdamW(lr=1e-3)
    state = opt.init(setup.trainable)
    scale = setup.lr_scale(setup.trainable)

    def step():
        _, grads = method_value_and_grad(setup.trainable, setup.frozen, batch, setup.config, setup, None)
        grads, _ = clip_by_global_norm(grads, 1.0)
        return opt.update(setup.trainable, grads, state, 1e-3, scale)

    return step


def peak_step_bytes(step) -> int:
    """tracemalloc's peak during one call of ``step`` above what was allocated before it (see the module doc)."""
    step()  # warm: first-call allocations (caches, lazily built tables) are not the step's
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        if not was_tracing:
            tracemalloc.stop()


def file_bytes(setup) -> int:
    """Bytes of the method's saved file (methods.save_method) of its trainable tree."""
    from .methods import save_method

    with tempfile.TemporaryDirectory() as folder:
        return save_method(Path(folder) / f"{setup.method.name}.safetensors", setup, setup.trainable).stat().st_size


def measure(task: str, names, quick: bool = False, log=None) -> dict:
    """{"methods": {name: {trainable, paper_count, step_ms, step_vs_lora, peak_bytes, file_bytes}}, "load": ...}
    on one batch of ``task`` (seed 0, step 0). LoRA is always timed: it is the reference of the ratios."""
    from .backend import THREAD_VARS
    from .experiments import _base, get_task
    from .timing import CpuMonitor, paired_ratio, run_interleaved, stats_ms

    params, config = _base()
    budget = QUICK if quick else BUDGET
    batch = get_task(task).batch(0, budget["batch_size"], 0)
    names = list(dict.fromkeys(["lora", *names]))
    setups = {n: _setup(n, params, config) for n in names}
    steps = {n: _step_fn(s, batch) for n, s in setups.items()}
    out = {n: {"trainable": s.trainable_count(), "paper_count": s.paper_count(), "file_bytes": file_bytes(s),
               "peak_bytes": peak_step_bytes(steps[n])} for n, s in setups.items()}
    monitor = CpuMonitor().start()
    times = run_interleaved(list(steps.items()), warmup=1, **TIMING["quick" if quick else "full"])
    usage = monitor.stop()
    for n in names:
        ratio = paired_ratio(times[n]["t"], times["lora"]["t"])
        out[n].update(step_ms=stats_ms(times[n]["t"]), reps=len(times[n]["t"]),
                      step_vs_lora=dict(zip(("median", "p10", "p90"), ratio, strict=True)))
        if log is not None:
            log(f"{n:<10} step {out[n]['step_ms']['median']:.1f} ms ({ratio[0]:.2f}x LoRA), peak "
                f"{out[n]['peak_bytes'] / 2**20:.1f} MiB, file {out[n]['file_bytes']:,} B")
    return {"methods": out, "usage": usage, "batch_shape": list(batch.x.shape), "loadavg": list(os.getloadavg()),
            "threads": {var: os.environ.get(var) for var in THREAD_VARS}}


# ---- running and reading ------------------------------------------------------------------------------------

def reuse_committed(sweep: Sweep, data: dict) -> int:
    """Copy into data["runs"] the committed corpus4 sweep's runs (minilora/results) of every setting of
    ``sweep`` that is one of that sweep's settings up to its label (LoRA r=8 on {W_q, W_v}, full fine-tuning),
    when the budgets are equal: the same code path, seeds and budget compute the same run, so it is not run
    twice (the comparison's own reruns of FT at lr 1e-4 and 3e-4, seed 0, reproduced the committed metrics to
    every printed digit). A copied run records where it came from ("reused_from"). Returns how many were copied."""
    from dataclasses import replace

    from .experiments import _key, _load, results_path
    from .sweeps import CORPUS4_GROUPS

    def budget(sw):
        return {k: v for k, v in sw.describe().items() if k not in ("settings", "name")}

    copied = 0
    for group in CORPUS4_GROUPS:
        committed = _load(results_path(group.name), group) if budget(group) == budget(sweep) else None
        for s in sweep.settings:
            for g in (g for g in group.settings if committed is not None and replace(g, label=s.label) == s):
                for lr in s.lrs:
                    for seed in sweep.seeds:
                        run = committed["runs"].get(_key(g, lr, seed))
                        if run is not None and _key(s, lr, seed) not in data["runs"]:
                            data["runs"][_key(s, lr, seed)] = {**run, "reused_from": f"{group.name}.json"}
                            copied += 1
    return copied


def run(sweep: Sweep, path, workers: int = 1, log=None) -> dict:
    """Run (or resume) ``sweep`` into the JSON file ``path`` (first reusing the committed runs of identical
    settings: reuse_committed), then measure its methods (once: the measurements are kept in the file, under
    "measurements"). Returns the summarised data (experiments.summarize)."""
    from .checkpoint import atomic_write_json
    from .experiments import _load, run_sweep

    path = Path(path)
    t0 = time.time()
    data = _load(path, sweep) if path.is_file() else None
    data = data or {"sweep": sweep.describe(), "runs": {}}
    copied = reuse_committed(sweep, data)
    if copied:
        if log is not None:
            log(f"{copied} runs of identical settings reused from the committed corpus4 sweep (minilora/results)")
        atomic_write_json(path, data)
    data = run_sweep(sweep, path, workers=workers, log=log)
    names = [_name_of(s) for s in sweep.settings]
    if data.get("measurements", {}).get("names") != names:
        data["measurements"] = {"names": names, **measure(sweep.task, names, quick=sweep.name.endswith("-quick"),
                                                          log=log)}
        data["measure_seconds"] = time.time() - t0
        atomic_write_json(path, {k: v for k, v in data.items() if k != "table"})
    return data


def _name_of(setting: Setting) -> str:
    return {"full": "ft", "lora": "lora"}.get(setting.method, setting.method)


def committed_comparison(task: str = "corpus4") -> dict:
    """The full comparison as committed in minilora/results/compare-TASK.json; never runs anything."""
    from .experiments import _load, summarize

    sweep = comparison(task)
    path = RESULTS_DIR / f"{sweep.name}.json"
    data = _load(path, sweep)
    if data is None or "measurements" not in data:
        raise FileNotFoundError(f"{path} is missing or describes another comparison: regenerate it with "
                                f"'minilora compare --task {task} --workers 2 --out minilora/results'")
    return summarize(sweep, data)


def rows(sweep: Sweep, data: dict) -> list[dict]:
    """One dict per method: the table's values (see markdown)."""
    out = []
    measured = data["measurements"]["methods"]
    for s in sweep.settings:
        name, row = _name_of(s), data["table"][s.label]
        curve = _plateau(data, s.label)
        out.append({"name": name, "label": s.label, "options": dict(ENTRY[name].options), **measured[name],
                    "lr": row["lr"], "edge_of_grid": row["edge_of_grid"], "lrs": list(s.lrs),
                    "accuracy": row.get("accuracy"), "class_nll": row.get("class_nll"),
                    "diverged": row.get("diverged", 0), "plateau": curve})
    return out


def _plateau(data, label) -> dict | None:
    """Mean accuracy over the seeds at the last two evaluations of the chosen lr: (step, value) each."""
    from .experiments import curves

    runs = [c for c in curves(data, label).values() if len(c[0]) >= 2]
    if not runs:
        return None
    return {"steps": [runs[0][0][-2], runs[0][0][-1]],
            "accuracy": [float(np.mean([c[1][-2] for c in runs])), float(np.mean([c[1][-1] for c in runs]))]}


def _options_text(options: dict) -> str:
    return ", ".join(f"{k}={','.join(v) if isinstance(v, (list, tuple)) else f'{v:g}' if isinstance(v, float) else v}"
                     for k, v in options.items()) or "-"


def _pm(stat) -> str:
    return "diverged" if stat is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown(sweep: Sweep, data: dict) -> str:
    """The comparison as a Markdown table, with what each column measures and the conditions it was measured in."""
    m = data["measurements"]
    reused = sum("reused_from" in run for run in data["runs"].values())
    lines = [f"Methods on {sweep.task} from the shipped base: {sweep.steps} steps of {sweep.batch_size}, "
             f"{len(sweep.seeds)} seeds {list(sweep.seeds)}; mean ± std over the seeds at the lr chosen on seed "
             f"{sweep.seeds[0]} by class NLL (* : at the edge of the grid).", "",
             "| method | options | trainable params (= formula) | class accuracy | class NLL | lr (grid) | "
             "step time vs LoRA, median [p10, p90] | step ms | peak step memory MiB | file bytes | "
             "accuracy, last two evals |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows(sweep, data):
        ratio = r["step_vs_lora"]
        grid = "/".join(f"{lr:g}" for lr in r["lrs"])
        p = r["plateau"]
        plateau = "-" if p is None else (f"{p['accuracy'][0]:.3f} → {p['accuracy'][1]:.3f} "
                                         f"(steps {p['steps'][0]}, {p['steps'][1]})")
        lines.append(f"| {r['label']} | {_options_text(r['options'])} | {r['trainable']:,} | {_pm(r['accuracy'])} | "
                     f"{_pm(r['class_nll'])} | {r['lr']:g}{'*' if r['edge_of_grid'] else ''} ({grid}) | "
                     f"{ratio['median']:.2f} [{ratio['p10']:.2f}, {ratio['p90']:.2f}] | "
                     f"{r['step_ms']['median']:.0f} | {r['peak_bytes'] / 2**20:.1f} | {r['file_bytes']:,} | "
                     f"{plateau} |")
    usage = m["usage"]
    lines += ["", f"Step times: one training step (value_and_grad + clip + AdamW) on one batch {m['batch_shape']}, "
              f"the methods interleaved, {m['methods']['lora']['reps']} repetitions; other processes used "
              f"{usage['others_cpus']:.2f} of {usage['cpus']} CPUs meanwhile, load average "
              f"{', '.join(f'{x:.2f}' for x in m['loadavg'])}; BLAS threads "
              f"{', '.join(f'{k}={v}' for k, v in m.get('threads', {}).items() if v) or 'as the library chose'}. "
              "Peak memory: tracemalloc's peak during one step "
              "above what existed before it (arrays the step creates: kept activations, gradients, new moments; "
              "not the base, the trainable tree or BLAS's buffers). File: methods.save_method (the trainable "
              "tree, and a frozen part the method owns: LoRA-FA's A). "
              f"Training: {data.get('wall_seconds', 0) / 60:.0f} min wall for {len(data['runs']) - reused} runs "
              f"(and {reused} reused from the committed corpus4 sweep: LoRA, FT), "
              f"load average at the end {', '.join(f'{x:.2f}' for x in data.get('load_average') or [])}."]
    if not sweep.name.endswith("-quick") and (RESULTS_DIR / f"{sweep.name}-long.json").is_file():
        try:
            lines += ["", *plateau_lines(sweep.task)]
        except (ValueError, FileNotFoundError) as err:  # the committed check is incomplete or out of date
            lines += ["", f"Plateau check: not shown ({err})."]
    return "\n".join(lines) + "\n"


def plateau_lines(task: str = "corpus4") -> list[str]:
    """The committed plateau check (plateau_check) as Markdown: mean held-out accuracy at every evaluation, and
    the final metrics, next to the 250-step run's."""
    from .experiments import committed_results, curves

    long = plateau_check(task)
    data, short = committed_results(long), committed_comparison(task)["table"]
    steps = list(range(long.eval_every, long.steps + 1, long.eval_every))
    out = [f"Plateau check: {long.steps} steps (schedule over {long.steps}) at the lr chosen above, the same 3 seeds "
           f"(`python -m minilora.compare --plateau`):", "",
           "| method | lr | accuracy at steps " + ", ".join(map(str, steps)) + " (mean) | accuracy | class NLL | "
           "250 steps: accuracy | class NLL |", "|---|---|---|---:|---:|---:|---:|"]
    for s in long.settings:
        row, seen = data["table"][s.label], curves(data, s.label).values()
        means = [float(np.mean([c[1][k] for c in seen])) for k in range(len(steps))]
        before = short[s.label]
        out.append(f"| {s.label} | {s.lrs[0]:g} | {' → '.join(f'{m:.3f}' for m in means)} | {_pm(row['accuracy'])} | "
                   f"{_pm(row['class_nll'])} | {_pm(before['accuracy'])} | {_pm(before['class_nll'])} |")
    return out


def main(argv=None) -> int:
    """python -m minilora.compare --plateau [--task T] [--workers N]: run (or resume) the plateau check into
    minilora/results/compare-TASK-long.json (the full comparison itself is ``minilora compare``)."""
    import argparse

    from .experiments import results_path, run_sweep

    p = argparse.ArgumentParser(prog="python -m minilora.compare", description=main.__doc__)
    p.add_argument("--plateau", action="store_true", required=True, help="run the plateau check")
    p.add_argument("--task", choices=["corpus4", "docmodule"], default="corpus4")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    sweep = plateau_check(args.task)
    run_sweep(sweep, results_path(sweep.name), workers=args.workers, log=lambda m: print(m, flush=True))
    print("\n".join(plateau_lines(args.task)))
    return 0


def plot(sweep: Sweep, data: dict, path=None):
    """Class accuracy and class NLL (mean ± std over seeds) against trainable parameters on a log axis, one
    labelled point per method (as the paper's Figure 2 / Table 4 plots). With ``path``: written there (atomically)
    and the path returned; without: the figure returned, for a notebook to show."""
    import matplotlib.pyplot as plt

    from .experiments import get_task
    from .plots import _save

    table = [r for r in rows(sweep, data) if r["accuracy"] is not None]
    inner = get_task(sweep.task).inner
    chance = {"accuracy": inner.chance, "class_nll": float(np.log(len(inner.labels)))}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, better in zip(axes, ("accuracy", "class_nll"), ("higher", "lower"), strict=True):
        ax.axhline(chance[metric], color="gray", ls="--", lw=1, label=f"chance ({chance[metric]:.3g})")
        ax.legend(loc="center right", fontsize=8)
        for r in table:
            ax.errorbar(r["trainable"], r[metric]["mean"], yerr=r[metric]["std"], fmt="o", capsize=3)
            ax.annotate(r["label"], (r["trainable"], r[metric]["mean"]), xytext=(5, 4), textcoords="offset points",
                        fontsize=8)
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set(xlabel="trainable parameters (log scale)", ylabel=f"held-out class {metric.replace('class_', '')}",
               title=f"{metric} ({better} is better), {len(sweep.seeds)} seeds")
    fig.suptitle(f"Fine-tuning methods on {sweep.task}: {sweep.steps} steps, lr tuned per method")
    fig.tight_layout()
    if path is None:
        return fig  # a notebook shows it
    _save(fig, path)
    plt.close(fig)
    return path


def write_outputs(sweep: Sweep, data: dict, folder) -> dict:
    """Writes FOLDER/NAME.md and NAME.png (atomically; the .json is the sweep's own file). Returns their paths."""
    from .checkpoint import atomic_write_bytes

    folder = Path(folder)
    md = atomic_write_bytes(folder / f"{sweep.name}.md", markdown(sweep, data).encode("utf-8"))
    png = plot(sweep, data, folder / f"{sweep.name}.png")
    return {"md": md, "png": png, "json": folder / f"{sweep.name}.json"}


if __name__ == "__main__":
    raise SystemExit(main())
