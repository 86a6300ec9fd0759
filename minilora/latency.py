"""Inference latency of the adaptation methods, the paper's Table 1 measured on this CPU (issue 10 §3).

Six models are built from one base, with trained-looking (nonzero) adapter values drawn from a seed:

    base            the base model                              transformer(params, x, config)
    lora_merged     W ← W + s·B A (lora.merge): the base's shapes and computation, nothing added
    lora_unmerged   the adapter path at inference: W x + b + s·B(A x) in every adapted matrix
    adapter_l       AdapterL: one bottleneck (with its own LayerNorm) after every block's MLP
    adapter_h       AdapterH: two bottlenecks per block, after attention and after the MLP
    prelayer        PreLayer: l_p virtual positions, so every block runs on T + l_p positions

Inference is the plain NumPy forward (``model.transformer`` on untraced arrays: no autograd graph is built).
``measure`` first checks that merged and unmerged LoRA give the same logits, then times all of them
interleaved (``timing.run_interleaved``) at each batch size and reports per-model medians with p10/p90 and
the paired ratio to the base with its p10/p90, in wall time and in process CPU time.

To explain the overhead with measurements rather than words, it also reports per method
* ``count_ops``: the primitive calls (the CPU's analogue of the paper's kernel launches) and Python-level
  calls of one forward, and
* ``hook_ms``: the time of the method's own additions alone (its hooks, replayed on the inputs they got
  during a forward, minus the base's hooks on the same inputs; process CPU time), at the measured shape and on
  a (1, 1) input, where nothing but the fixed per-call cost remains.

    models, config = build_models()                 # the shipped base, r = 8, l_p = 8
    results = measure(models, config, batches=(1, 32), T=64)
    print(table(results))
    results = quick()                               # a reduced setting for a notebook (< 30 s)
    results = load_results()                        # the committed full run (minilora/results/latency.json)
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import ops
from .backend import to_device, to_host
from .config import GPTConfig, whole_number
from .lora import merge
from .methods import METHODS
from .methods.lora import lora_config_of
from .model import BASE_HOOKS, Hooks, transformer
from .tasks import Batch
from .timing import CpuMonitor, paired_ratio, run_interleaved, stats_ms
from .tree import map_leaves

MODELS = ("base", "lora_merged", "lora_unmerged", "adapter_l", "adapter_h", "prelayer")
LABELS = {"base": "base", "lora_merged": "LoRA merged", "lora_unmerged": "LoRA unmerged", "adapter_l": "AdapterL",
          "adapter_h": "AdapterH", "prelayer": "PreLayer", "base_long": "base at T + l_p"}

PAPER_TABLE1 = {
    "source": "Hu et al. 2022, Table 1: GPT-2 medium forward pass, ms, NVIDIA Quadro RTX8000, 100 trials",
    "settings": [{"batch": 32, "seq": 512, "params": "0.5M", "ft_lora_ms": 1449.4, "adapter_l": 1.022,
                  "adapter_h": 1.030},
                 {"batch": 16, "seq": 256, "params": "11M", "ft_lora_ms": 338.0, "adapter_l": 1.050,
                  "adapter_h": 1.084},
                 {"batch": 1, "seq": 128, "params": "11M", "ft_lora_ms": 19.8, "adapter_l": 1.207,
                  "adapter_h": 1.303}],
}
"""The paper's ratios to FT/LoRA (merged LoRA = FT: no added latency)."""

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "latency.json"
"""The committed full run: package data (minilora/results/), so notebooks find it from a checkout and when installed."""
AGREE_TOL = 1e-4
"""Merged vs unmerged LoRA logits: max |difference| / max(1, max |logits|) allowed (float32 rounding)."""


@dataclass(frozen=True)
class InferenceModel:
    """One model to time: its parameter tree, and its Hooks for a given (B, T) token array."""

    name: str
    params: dict
    hooks_for: Callable
    """hooks_for(tokens (B, T)) -> Hooks; built once per shape, as a server would (PreLayer's layout)."""
    extra_positions: int = 0
    """Positions the method adds to the sequence (PreLayer's l_p)."""

    def forward(self, tokens, config):
        """A no-argument function running this model's forward on ``tokens``: logits (B, T, V)."""
        hooks = self.hooks_for(tokens)
        return lambda: transformer(self.params, tokens, config, hooks)


# ---- the six models --------------------------------------------------------------------------------------------

def trained_looking(tree, rng: np.random.Generator, std: float = 0.02):
    """Every leaf plus N(0, std²) noise drawn from ``rng``: no zero (untrained) B or W_up is left that would make
    a path vanish from the logits or the agreement check."""
    def noisy(a):
        host = to_host(a)
        return to_device((host + rng.standard_normal(host.shape) * std).astype(host.dtype), like=a)

    return map_leaves(noisy, tree)


def build_models(params=None, config: GPTConfig | None = None, *, r: int = 8, adapter_r: int = 8, l_p: int = 8,
                 targets=("wq", "wv"), seed: int = 0) -> tuple[dict, GPTConfig]:
    """({name: InferenceModel} in MODELS' order, config), all on the same base.

    params/config: the base (default: the shipped one, checkpoint.load_base()). r: LoRA's rank on ``targets``
    (the paper's W_q, W_v); adapter_r: the adapters' bottleneck width; l_p: PreLayer's prefix length.
    """
    if params is None:
        from .checkpoint import load_base

        if config is not None:
            raise ValueError("build_models: give both params and config, or neither (the shipped base)")
        params, config = load_base()
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    seed = whole_number("", "seed", seed)
    rng = np.random.default_rng(seed)
    lora = METHODS["lora"].build(params, config, seed, r=r, alpha=float(2 * r), targets=tuple(targets))
    lora_trained = trained_looking(lora.trainable, rng)
    models = {"base": InferenceModel("base", params, lambda tokens: BASE_HOOKS),
              "lora_merged": InferenceModel("lora_merged", merge(params, lora_trained, lora_config_of(lora.options)),
                                            lambda tokens: BASE_HOOKS),
              "lora_unmerged": _method_model("lora_unmerged", lora, lora_trained)}
    for name, options in (("adapter_l", {"r": adapter_r}), ("adapter_h", {"r": adapter_r}), ("prelayer", {"l_p": l_p})):
        setup = METHODS[name].build(params, config, seed, **options)
        models[name] = _method_model(name, setup, trained_looking(setup.trainable, rng),
                                     l_p if name == "prelayer" else 0)
    return models, config


def _method_model(name, setup, trainable, extra_positions=0) -> InferenceModel:
    params, _ = setup.model(trainable, Batch(x=np.zeros((1, 1), np.int64), y=None))

    def hooks_for(tokens):
        return setup.model(trainable, Batch(x=to_host(tokens), y=None))[1]

    return InferenceModel(name, params, hooks_for, extra_positions)


def lora_disagreement(models: dict, tokens, config) -> float:
    """max |merged - unmerged LoRA logits| / max(1, max |logits|); raises ValueError above AGREE_TOL, so a
    comparison of the two is never one of two different computations."""
    merged = to_host(models["lora_merged"].forward(tokens, config)())
    unmerged = to_host(models["lora_unmerged"].forward(tokens, config)())
    base = to_host(models["base"].forward(tokens, config)())
    gap = float(np.max(np.abs(merged - unmerged)) / max(1.0, float(np.max(np.abs(unmerged)))))
    if not gap <= AGREE_TOL:
        raise ValueError(f"merged and unmerged LoRA disagree: relative gap {gap:.2e} > {AGREE_TOL:g}")
    if np.array_equal(merged, base):
        raise ValueError("the merged LoRA model equals the base: the adapter is zero, nothing would be compared")
    return gap


# ---- what each method adds: calls, and the time of its own additions ------------------------------------------

def _op_codes() -> dict:
    """{code object: op name} of the ops in minilora.ops (a primitive's own function, under autograd's wrapper)."""
    return {getattr(getattr(ops, n), "fun", getattr(ops, n)).__code__: n for n in ops.__all__}


def count_ops(fn) -> dict:
    """Calls made by one run of ``fn()`` (sys.setprofile, this thread):
    {"ops": {op name: calls of that minilora.ops function}, "op_calls": their total, "python_calls": Python
    function calls, "c_calls": calls of C functions (numpy's among them; operators such as + on arrays are
    not calls and are not counted)}."""
    codes, seen = _op_codes(), Counter()

    def profile(frame, event, arg):
        if event == "call":
            seen["python"] += 1
            name = codes.get(frame.f_code)
            if name is not None:
                seen["op:" + name] += 1
        elif event == "c_call":
            seen["c"] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(previous if callable(previous) else None)  # a C-level profiler cannot be restored
    op_counts = {k[3:]: v for k, v in sorted(seen.items()) if k.startswith("op:")}
    return {"ops": op_counts, "op_calls": sum(op_counts.values()), "python_calls": seen["python"],
            "c_calls": seen["c"]}


def model_ops(models: dict, tokens, config) -> dict:
    """count_ops of every model's forward on ``tokens``, with "extra_op_calls" and "extra_python_calls" over
    the base's."""
    counts = {name: count_ops(m.forward(tokens, config)) for name, m in models.items()}
    for c in counts.values():
        c["extra_op_calls"] = c["op_calls"] - counts["base"]["op_calls"]
        c["extra_python_calls"] = c["python_calls"] - counts["base"]["python_calls"]
    return counts


HOOK_FIELDS = tuple(f.name for f in dataclasses.fields(Hooks))


def record_hook_calls(model: InferenceModel, tokens, config) -> tuple[Hooks, list]:
    """(the model's hooks, [(field, args), ...] of every hook call of one forward on ``tokens``)."""
    hooks, calls = model.hooks_for(tokens), []

    def recording(field):
        original = getattr(hooks, field)

        def call(*args):
            calls.append((field, args))
            return original(*args)

        return call

    transformer(model.params, tokens, config, Hooks(**{f: recording(f) for f in HOOK_FIELDS}))
    return hooks, calls


def hook_ms(model: InferenceModel, tokens, config, reps: int = 20, clock: str = "cpu") -> float:
    """ms per forward that the model's hooks take beyond the base's hooks on the same inputs: the time of the
    method's own additions, without the rest of the forward. Only the hooks the method changes are replayed,
    its own and the base's interleaved; the result is the median of the per-repetition differences (paired,
    so the common part, such as the frozen W x inside LoRA's projection, cancels). clock: "cpu" (process CPU
    time) or "wall"."""
    hooks, calls = record_hook_calls(model, tokens, config)
    calls = [(f, args) for f, args in calls if getattr(hooks, f) is not getattr(BASE_HOOKS, f)]  # the changed ones
    if not calls:
        return 0.0

    def replay(h):
        return lambda: [getattr(h, field)(*args) for field, args in calls]

    times = run_interleaved([("method", replay(hooks)), ("base", replay(BASE_HOOKS))], reps, warmup=2,
                            collect=False)  # a garbage collection inside a replay only slows one of many
    key = "cpu" if clock == "cpu" else "t"
    return 1e3 * float(np.median(np.subtract(times["method"][key], times["base"][key])))


# ---- timing -------------------------------------------------------------------------------------------------

def _repeated(fn, k: int):
    def run():
        for _ in range(k):
            fn()
    return run


def calls_per_timing(fn, min_seconds: float) -> int:
    """How many calls of fn one timing makes so that it lasts at least ``min_seconds`` (timer resolution and
    the per-timing gc.collect then weigh little)."""
    fn()
    t = min(_seconds(fn) for _ in range(3))
    return max(1, math.ceil(min_seconds / max(t, 1e-6)))


def fastest_ms(fn, reps: int) -> float:
    """The fastest of ``reps`` calls of fn, in ms: its cost with the least disturbance (on a (1, 1) input, the
    fixed cost of a forward: every call made, almost nothing computed)."""
    fn()
    return 1e3 * min(_seconds(fn) for _ in range(reps))


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ci(num, den, level: float = 0.95, resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap confidence interval of the median per-repetition ratio num[i] / den[i] (fixed seed): how
    precisely the median ratio is known, where p10-p90 says how much single repetitions scatter."""
    n = min(len(num), len(den))
    r = np.asarray(num[:n], dtype=np.float64) / np.asarray(den[:n], dtype=np.float64)  # (n,)
    picks = np.random.default_rng(0).integers(0, n, (resamples, n))  # (resamples, n)
    medians = np.median(r[picks], axis=1)  # (resamples,)
    return float(np.quantile(medians, (1 - level) / 2)), float(np.quantile(medians, (1 + level) / 2))


def measure_batch(models: dict, config, batch: int, T: int, *, reps: int = 30, max_seconds: float | None = None,
                  min_seconds: float = 0.02, rng: np.random.Generator, hook_reps: int = 20,
                  collect: bool = True) -> dict:
    """Every model's forward latency on one (batch, T) token array, interleaved; see the module docstring.
    collect: a garbage collection before each timed call, outside the timer (run_interleaved's)."""
    tokens = to_device(rng.integers(0, config.vocab_size, (batch, T)), like=models["base"].params["wte"])
    fns = {name: m.forward(tokens, config) for name, m in models.items()}
    longest = max(m.extra_positions for m in models.values())
    if longest and T + longest <= config.context:  # the base on the lengthened sequence: PreLayer's main cost
        longer = to_device(rng.integers(0, config.vocab_size, (batch, T + longest)), like=tokens)  # (B, T + l_p)
        fns["base_long"] = models["base"].forward(longer, config)
    k = calls_per_timing(fns["base"], min_seconds)
    monitor = CpuMonitor().start()
    times = run_interleaved([(n, _repeated(f, k)) for n, f in fns.items()], reps, warmup=2, collect=collect,
                            max_seconds=max_seconds, min_reps=min(5, reps))
    load = monitor.stop()
    per_call = {n: {key: [v / k for v in times[n][key]] for key in ("t", "cpu", "faults")} for n in fns}
    rows = {}
    for name in fns:
        t, cpu, base = per_call[name]["t"], per_call[name]["cpu"], per_call["base"]
        rows[name] = {"ms": stats_ms(t), "cpu_ms": stats_ms(cpu),
                      "vs_base": paired_ratio(t, base["t"]), "cpu_vs_base": paired_ratio(cpu, base["cpu"]),
                      "vs_base_ci": median_ci(t, base["t"]), "cpu_vs_base_ci": median_ci(cpu, base["cpu"]),
                      "min_vs_base": min(t) / min(base["t"]), "cpu_min_vs_base": min(cpu) / min(base["cpu"]),
                      "faults": float(np.median(per_call[name]["faults"]))}
    tiny = tokens[:1, :1]
    for name, m in models.items():
        rows[name]["hook_ms"] = hook_ms(m, tokens, config, hook_reps)
        rows[name]["hook_ms_1x1"] = hook_ms(m, tiny, config, hook_reps)
    return {"batch": batch, "T": T, "calls_per_timing": k, "reps": len(times["base"]["t"]), "models": rows,
            "load": load}


def measure(models: dict, config, batches=(1, 32), T: int = 64, *, reps: int = 30, max_seconds: float | None = None,
            min_seconds: float = 0.02, seed: int = 0, hook_reps: int = 20, settings: dict | None = None,
            collect: bool = True) -> dict:
    """The whole measurement: the LoRA agreement check, the call counts (on a (1, T) input) and
    ``measure_batch`` at each batch size. Returns a JSON-ready dict (``table``, ``plot`` and ``load_results``
    read it). max_seconds bounds each batch size's interleaved loop (after at least 5 repetitions)."""
    T = whole_number("", "T", T, at_least=1)
    rng = np.random.default_rng(whole_number("", "seed", seed))
    like = models["base"].params["wte"]
    probe = to_device(rng.integers(0, config.vocab_size, (1, T)), like=like)
    out = {"settings": {**(settings or {}), "T": T, "batches": list(batches), "reps": reps, "seed": seed},
           "config": config.to_dict(), "lora_disagreement": lora_disagreement(models, probe, config),
           "ops": model_ops(models, probe, config), "paper": PAPER_TABLE1, "batches": [],
           "base_1x1_ms": fastest_ms(models["base"].forward(probe[:, :1], config), 5 * hook_reps)}
    for batch in batches:
        out["batches"].append(measure_batch(models, config, whole_number("", "batch", batch, at_least=1), T,
                                            reps=reps, max_seconds=max_seconds, min_seconds=min_seconds, rng=rng,
                                            hook_reps=hook_reps, collect=collect))
    return out


def quick(seed: int = 0) -> dict:
    """A reduced run for a notebook (about 10-20 s): the shipped base, batch 1 and 8, T = 32, 15 repetitions.

    Its ratios are rough (15 repetitions; ``load_results()`` holds the full run). On a shared machine set
    OPENBLAS_NUM_THREADS=1 before numpy is imported and call ``backend.tune_malloc()`` first: threaded BLAS
    stalls and the page faults of fresh allocations otherwise dominate the times (benchmarks/README.md)."""
    models, config = build_models(seed=seed)
    return measure(models, config, batches=(1, 8), T=32, reps=15, max_seconds=6.0, min_seconds=0.01, seed=seed,
                   hook_reps=10, settings={"r": 8, "adapter_r": 8, "l_p": 8, "targets": ["wq", "wv"]})


def load_results(path=None) -> dict:
    """The committed full run (minilora/results/latency.json, written by benchmarks/latency.py), or ``path``."""
    path = Path(DEFAULT_RESULTS if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(f"no latency results at {path}; run `python benchmarks/latency.py` to make them")
    with open(path) as f:
        return json.load(f)


# ---- presenting --------------------------------------------------------------------------------------------

def _ordered(rows: dict) -> list:
    """The models of a result in MODELS' order (a JSON file written with sorted keys loses it)."""
    return [n for n in MODELS + ("base_long",) if n in rows] + sorted(set(rows) - set(MODELS) - {"base_long"})


def _ratio(r) -> str:
    return f"{r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]"


def table(results: dict) -> str:
    """The measured table as text: per batch size and model, median ms [p10, p90], wall and CPU-time ratio to
    the base [p10, p90], the ratio of the fastest CPU times (min/min), the hooks' own ms (at the shape, and on
    a 1 x 1 input), the extra calls, and the median minor page faults per forward (0 after
    backend.tune_malloc(): fresh memory is not what is being timed)."""
    ops_ = results["ops"]
    lines = [f"{'batch':>5} {'model':15} {'ms':>8} {'p10-p90 ms':>15} {'x base (wall) [p10, p90]':>25} "
             f"{'x base (cpu) [p10, p90]':>25} {'min/min':>7} {'hooks ms':>9} {'1x1 ms':>7} {'+ops':>5} "
             f"{'+py calls':>9} {'faults':>6}"]
    for b in results["batches"]:
        for name in _ordered(b["models"]):
            row = b["models"][name]
            ms, extra = row["ms"], ops_.get(name, {})
            lines.append(f"{b['batch']:>5} {LABELS.get(name, name):15} {ms['median']:8.3f} "
                         f"{ms['p10']:7.3f}-{ms['p90']:<7.3f} {_ratio(row['vs_base']):>25} "
                         f"{_ratio(row['cpu_vs_base']):>25} {row['cpu_min_vs_base']:7.3f} "
                         f"{row.get('hook_ms', 0.0):9.3f} {row.get('hook_ms_1x1', 0.0):7.3f} "
                         f"{extra.get('extra_op_calls', ''):>5} {extra.get('extra_python_calls', ''):>9} "
                         f"{row['faults']:6.0f}")
        load = b["load"]
        lines.append(f"      (T = {b['T']}, {b['reps']} repetitions of {b['calls_per_timing']} forward(s); other "
                     f"processes used {load['others_cpus']:.2f} of {load['cpus']} CPUs)")
    return "\n".join(lines)


def markdown(results: dict, clock: str = "cpu") -> str:
    """The table as Markdown, for docs: per batch size and model, median ms [p10, p90], the paired ratio to the
    base [p10, p90] with the 95% interval of its median, the ratio of minima, the hooks' own ms (at the shape;
    on 1 x 1) and the added op calls. clock: "cpu" (process CPU time) or "wall"."""
    ms_key, key = ("cpu_ms", "cpu_vs_base") if clock == "cpu" else ("ms", "vs_base")
    lines = [f"| batch | model | {clock} ms median [p10, p90] | x base [p10, p90] | 95% CI of the median | "
             "min / min | hooks ms | hooks ms, 1 x 1 | + op calls |", "|---|---|---|---|---|---|---|---|---|"]
    for b in results["batches"]:
        for name in _ordered(b["models"]):
            row, ms = b["models"][name], b["models"][name][ms_key]
            lo, hi = row[key + "_ci"]
            lines.append(f"| {b['batch']} | {LABELS.get(name, name)} | {ms['median']:.2f} [{ms['p10']:.2f}, "
                         f"{ms['p90']:.2f}] | **{row[key][0]:.3f}** [{row[key][1]:.3f}, {row[key][2]:.3f}] | "
                         f"[{lo:.3f}, {hi:.3f}] | {row[('cpu_' if clock == 'cpu' else '') + 'min_vs_base']:.3f} | "
                         f"{row.get('hook_ms', 0.0):.3f} | {row.get('hook_ms_1x1', 0.0):.3f} | "
                         f"{results['ops'].get(name, {}).get('extra_op_calls', '')} |")
    return "\n".join(lines)


def summary(results: dict, key: str = "vs_base") -> str:
    """A few lines: every method against the base per batch size (key: "vs_base", wall time, or "cpu_vs_base"),
    the paper's ratio beside, and the fixed per-call cost and the hooks' own time that explain the batch-1
    overhead."""
    paper = {s["batch"]: s for s in PAPER_TABLE1["settings"]}
    lines = []
    for b in results["batches"]:
        m = b["models"]
        near = paper[min(paper, key=lambda k: abs(k - b["batch"]))]
        parts = [f"{LABELS[n]} {_pct(m[n][key])}" + (f" (paper, batch {near['batch']}: "
                                                          f"{100 * (near[n] - 1):+.1f}%)" if n in near else "")
                 for n in MODELS[1:]]
        clock = "CPU time" if key.startswith("cpu") else "wall"
        lines.append(f"batch {b['batch']} x T {b['T']} (base {m['base']['ms']['median']:.2f} ms, ratios in {clock}): "
                     + "; ".join(parts))
    for b in results["batches"]:
        lo, hi = b["models"]["lora_merged"][key + "_ci"]
        lines.append(f"batch {b['batch']}: merged LoRA / base = {b['models']['lora_merged'][key][0]:.3f}, 95% "
                     f"confidence interval of that median [{lo:.3f}, {hi:.3f}] ({b['reps']} repetitions)")
    b1, ops_ = results["batches"][0], results["ops"]
    base_cpu = b1["models"]["base"]["cpu_ms"]["median"]  # the hooks' times are medians of CPU time, too
    for n in ("lora_unmerged", "adapter_l", "adapter_h"):
        extra, fixed, at_shape = ops_[n]["extra_op_calls"], b1["models"][n]["hook_ms_1x1"], b1["models"][n]["hook_ms"]
        lines.append(f"{LABELS[n]}: +{extra} op calls per forward; on a 1 x 1 input its additions take "
                     f"{fixed:.3f} ms ({1e3 * fixed / max(extra, 1):.1f} us per call); at batch {b1['batch']} x T "
                     f"{b1['T']} {at_shape:.3f} ms = {100 * at_shape / base_cpu:+.1f}% of the base's {base_cpu:.2f} "
                     f"ms (measured: {_pct(b1['models'][n]['cpu_vs_base'])} CPU time)")
    one, fastest = results["base_1x1_ms"], b1["models"]["base"]["ms"]["min"]
    lines.append(f"the base's forward on one token takes {one:.2f} ms = {100 * one / fastest:.0f}% of its fastest "
                 f"batch-{b1['batch']} x T {b1['T']} forward ({fastest:.2f} ms): the share of that forward which is "
                 "fixed per-call cost rather than arithmetic")
    return "\n".join(lines)


def _pct(r) -> str:
    return f"{100 * (r[0] - 1):+.1f}% [{100 * (r[1] - 1):+.1f}, {100 * (r[2] - 1):+.1f}]"


def plot(results: dict, path=None, key: str = "vs_base"):
    """Bars of each method's ratio to the base (p10-p90 whiskers) per batch size, the paper's adapters beside.
    key: "vs_base" (wall time) or "cpu_vs_base" (process CPU time). Saved as PNG when given a path."""
    import matplotlib.pyplot as plt

    from .plots import _save

    names = [n for n in _ordered(results["batches"][0]["models"]) if n != "base"
             and all(n in b["models"] for b in results["batches"])]  # base at T + l_p too, where measured
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(results["batches"])
    for j, b in enumerate(results["batches"]):
        r = np.array([b["models"][n][key] for n in names])  # (methods, 3): median, p10, p90
        x = np.arange(len(names)) + (j - (len(results["batches"]) - 1) / 2) * width
        ax.bar(x, r[:, 0] - 1, width, bottom=1, yerr=[r[:, 0] - r[:, 1], r[:, 2] - r[:, 0]], capsize=3,
               label=f"this CPU, batch {b['batch']} x T {b['T']}")
    for s, marker in zip(PAPER_TABLE1["settings"], ("v", "s", "^"), strict=True):
        ax.scatter([names.index("adapter_l"), names.index("adapter_h")], [s["adapter_l"], s["adapter_h"]],
                   marker=marker, color="k", zorder=3, label=f"paper GPU, batch {s['batch']} x {s['seq']}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(names)), [LABELS[n] for n in names])
    ax.set_ylabel(f"forward time / base ({'CPU time' if key.startswith('cpu') else 'wall'})")
    ax.set_title("Inference latency relative to the base model (median, p10-p90)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, path)
    return fig


__all__ = ["MODELS", "LABELS", "PAPER_TABLE1", "InferenceModel", "trained_looking", "build_models",
           "lora_disagreement", "count_ops", "model_ops", "record_hook_calls", "hook_ms", "calls_per_timing",
           "fastest_ms", "median_ci", "measure_batch", "measure", "quick", "load_results", "table", "markdown",
           "summary", "plot"]
