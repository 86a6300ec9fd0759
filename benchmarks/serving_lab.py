#!/usr/bin/env python
"""The serving lab: tokens/s of one batch of requests for many adapters, against the number of distinct adapters
in the batch, for the four strategies of ``minilora.forward_mixed`` and the base model without adapters.

    python benchmarks/serving_lab.py --quick            # < 1 minute: a small model, 3 adapter counts
    nice -n 10 python benchmarks/serving_lab.py         # the full table, plot and JSON: minilora/results/

Strategies (minilora/mixed.py): loop (PEFT: gather each adapter's rows, its two small GEMMs, scatter back),
gather (Punica/S-LoRA BGMV: every row gathers its rank-padded A and B from one stack), sgmv (rows sorted by
adapter once, each contiguous segment its own unpadded GEMMs on slices), merged (one merged weight copy per
adapter, the batch split into one plain forward per adapter). The server holds a pool of adapters of mixed
ranks; a batch asks for K distinct ones of them (each at least once, the rest by uniform or power-law
popularity; minilora.serving.assignments). Every cell first asserts that the four strategies give the same
logits, then times base and the four interleaved (each repetition runs every contender once, the first one
rotating); ratios are medians of per-repetition ratios with their p10-p90.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_step.py sits beside this file
from bench_step import set_blas_threads  # noqa: E402

from minilora import GPTConfig, forward, init_params
from minilora.checkpoint import atomic_write_json
from minilora.mixed import IMPLS
from minilora.serving import assignments, max_disagreement, random_adapters, strategies
from minilora.timing import CpuMonitor, load_warning, paired_ratio, run_interleaved

AGREE_TOL = {"float32": 1e-4, "float64": 1e-10}  # times max(1, max |logits|)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small model, K in 1 8 64, 3 repetitions (< 1 minute)")
    p.add_argument("--distinct", type=int, nargs="+", help="numbers of distinct adapters per batch")
    p.add_argument("--rows", type=int, default=64, help="requests (rows) per batch")
    p.add_argument("--seq", type=int, help="tokens per request")
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8, 16], help="the pool's ranks, in turn")
    p.add_argument("--targets", nargs="+", default=["wq", "wv"], help="adapted matrices of every adapter")
    p.add_argument("--alpha", type=float, default=1.2, help="power-law exponent of the skewed popularity")
    p.add_argument("--reps", type=int, help="timed repetitions per cell")
    p.add_argument("--max-seconds", type=float, help="per cell: stop after this long (after 3 repetitions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="OpenBLAS threads (default 1: on a shared, oversubscribed machine threaded GEMMs stall "
                        "erratically, and one thread makes process CPU time a load-proof clock)")
    p.add_argument("--clock", choices=("cpu", "wall"),
                   help="what the table times: process CPU time (default with --threads 1) or wall time; the "
                        "JSON holds both")
    p.add_argument("--out", help="folder for serving_lab.json, .png and .txt (default: minilora/results/, the "
                               "committed run that notebook 09 reads; benchmarks/out/ with --quick)")
    args = p.parse_args(argv)
    quick = {"distinct": [1, 8, 64], "seq": 16, "reps": 3, "max_seconds": 4.0}
    full = {"distinct": [1, 2, 4, 8, 16, 32, 64], "seq": 32, "reps": 15, "max_seconds": 20.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.clock is None:
        args.clock = "cpu" if args.threads == 1 else "wall"
    if args.out is None:
        from minilora.experiments import RESULTS_DIR

        here = os.path.dirname(os.path.abspath(__file__))
        args.out = os.path.join(here, "out") if args.quick else str(RESULTS_DIR)
    if max(args.distinct) > args.rows:
        p.error(f"--distinct {max(args.distinct)} needs at least that many --rows, got {args.rows}")
    return args


def model_config(quick: bool) -> GPTConfig:
    if quick:
        return GPTConfig(vocab_size=256, context=32, d_model=64, n_layer=2, n_head=2)
    return GPTConfig.preset("bench")  # 4 layers, d_model 128, d_mlp 512, vocab 256


def header(args, config) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return [f"serving lab: {' '.join(sys.argv[1:]) or '(defaults)'}",
            f"CPU: {cpu} x {os.cpu_count()}; numpy {np.__version__}; python {platform.python_version()}",
            f"uptime: {uptime}",
            f"BLAS threads: {args.blas_threads}; the table's clock: {args.clock} time "
            f"({'process CPU' if args.clock == 'cpu' else 'perf_counter'})",
            f"model: d_model={config.d_model} n_layer={config.n_layer} d_mlp={config.d_mlp} "
            f"vocab={config.vocab_size}, float32; batch {args.rows} rows x {args.seq} tokens",
            f"pool: {max(args.distinct)} adapters, ranks {args.ranks} in turn, targets {args.targets}; "
            f"power law alpha={args.alpha}"]


def measure_cell(fns, tokens, which, args) -> dict:
    """Assert the four strategies agree on this batch, then time base and the four interleaved."""
    outputs = {name: fn(tokens, which) for name, fn in fns.items()}
    gap = max_disagreement(outputs)
    tol = AGREE_TOL[str(outputs["base"].dtype)] * max(1.0, float(np.abs(outputs["loop"]).max()))  # rounding scales
    assert gap <= tol, f"the serving strategies disagree by {gap:.3g} > {tol:.3g}"
    times = run_interleaved([(name, lambda fn=fn: fn(tokens, which)) for name, fn in fns.items()],
                            reps=args.reps, warmup=1, max_seconds=args.max_seconds, min_reps=3)
    cell = {"max_disagreement": gap, "reps": len(times["base"]["t"]), "clock": args.clock}
    for clock, key in (("wall", "t"), ("cpu", "cpu")):
        series = {name: times[name][key] for name in fns}
        cell[clock] = throughput(series, tokens.size)
    cell.update(cell[args.clock])
    return cell


def throughput(series: dict, n_tokens: int) -> dict:
    """tokens/s (median, p10-p90) and paired ratios to the base and to the best strategy, from one clock."""
    best = min(IMPLS, key=lambda s: np.median(series[s]))
    out = {}
    for name, t in series.items():
        t = np.maximum(np.asarray(t), 1e-9)
        out[name] = {
            "tokens_per_s": float(n_tokens / np.median(t)),
            "tokens_per_s_p10_p90": [float(n_tokens / np.percentile(t, 90)), float(n_tokens / np.percentile(t, 10))],
            "vs_base": paired_ratio(series["base"], t),  # throughput / base throughput, per repetition
            "vs_best": paired_ratio(series[best], t),  # throughput / the best strategy's
        }
    return {"strategies": out, "best": best}


def chunk_profile(params, config, args) -> dict:
    """Base-model tokens/s for the batch run whole or in row chunks, interleaved: on a CPU a smaller batch can
    be faster per token (its activations stay in cache), which the split strategies (merged) profit from."""
    tokens = np.random.default_rng(args.seed + 1).integers(0, config.vocab_size, (args.rows, args.seq))
    chunks = sorted({c for c in (1, 4, 16, args.rows // 2, args.rows) if c >= 1})

    def chunked(c):
        return lambda: [forward(params, tokens[s:s + c], config) for s in range(0, args.rows, c)]

    times = run_interleaved([(c, chunked(c)) for c in chunks], reps=max(3, args.reps // 3), warmup=1,
                            max_seconds=args.max_seconds, min_reps=3)
    key = "cpu" if args.clock == "cpu" else "t"
    return {str(c): float(tokens.size / np.median(times[c][key])) for c in chunks}


def run(args) -> dict:
    config = model_config(args.quick)
    rng = np.random.default_rng(args.seed)
    params = init_params(config, args.seed)
    pool = random_adapters(config, max(args.distinct), ranks=tuple(args.ranks), targets=tuple(args.targets), rng=rng)
    fns = strategies(params, config, pool)  # stacking and merged copies built once, as a server keeps them
    results = {"header": header(args, config), "cells": []}
    print("\n".join(results["header"]), flush=True)
    monitor = CpuMonitor().start()
    results["base_by_chunk"] = chunk_profile(params, config, args)
    print("base model alone, the batch in row chunks of " + ", ".join(
        f"{c}: {v / 1e3:.1f}" for c, v in results["base_by_chunk"].items()) + " ktok/s\n" + table_head(), flush=True)
    for popularity in ("uniform", "powerlaw"):
        for K in args.distinct:
            chosen = rng.permutation(len(pool))[:K]  # which K adapters of the pool this batch asks for
            which = chosen[assignments(args.rows, K, popularity, args.alpha, rng=rng)]  # (rows,)
            tokens = rng.integers(0, config.vocab_size, (args.rows, args.seq))
            cell = measure_cell(fns, tokens, which, args)
            cell.update(popularity=popularity, distinct=K, rows_per_adapter_max=int(np.bincount(which).max()))
            results["cells"].append(cell)
            print_cell(cell)
    results["load"] = monitor.stop()
    results["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return results


def _fmt(ratio) -> str:
    return f"{ratio[0]:.2f}[{ratio[1]:.2f},{ratio[2]:.2f}]"


def table_head() -> str:
    cols = "".join(f" | {s:^27}" for s in IMPLS)
    return f"{'popularity':10} {'K':>3} {'max/ad':>6} {'base':>7}{cols} | best\n" + \
        f"{'':10} {'':>3} {'rows':>6} {'ktok/s':>7}" + " | ktok/s  x base[p10,p90] x best" * len(IMPLS) + " |"


def print_cell(cell):
    s = cell["strategies"]
    parts = "".join(f" | {s[k]['tokens_per_s'] / 1e3:6.1f} {_fmt(s[k]['vs_base'])} {s[k]['vs_best'][0]:4.2f}"
                    for k in IMPLS)
    print(f"{cell['popularity']:10} {cell['distinct']:>3} {cell['rows_per_adapter_max']:>6} "
          f"{s['base']['tokens_per_s'] / 1e3:7.1f}{parts} | {cell['best']}", flush=True)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minilora.plots import _save

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, popularity in zip(axes, ("uniform", "powerlaw"), strict=True):
        cells = [c for c in results["cells"] if c["popularity"] == popularity]
        ks = [c["distinct"] for c in cells]
        for name in ("base",) + IMPLS:
            tps = np.array([c["strategies"][name]["tokens_per_s"] for c in cells]) / 1e3
            lo, hi = (np.array([c["strategies"][name]["tokens_per_s_p10_p90"][j] for c in cells]) / 1e3
                      for j in (0, 1))
            style = {"ls": "--", "color": "k"} if name == "base" else {"marker": "o"}
            ax.errorbar(ks, tps, yerr=[tps - lo, hi - tps], label=name, capsize=2, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distinct adapters in the batch")
        ax.set_title(f"{popularity} popularity")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("thousand tokens / s (p10-p90)")
    axes[0].legend()
    fig.suptitle("\n".join(line for line in results["header"] if line.startswith(("model:", "pool:", "BLAS"))),
                 fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    args.blas_threads = set_blas_threads(args.threads)
    start = time.perf_counter()
    results = run(args)
    os.makedirs(args.out, exist_ok=True)
    stem = "serving_lab_quick" if args.quick else "serving_lab"
    atomic_write_json(os.path.join(args.out, f"{stem}.json"), results)
    plot(results, os.path.join(args.out, f"{stem}.png"))
    load = results["load"]
    print(f"load: other processes used {load['others_cpus']:.2f} of {load['cpus']} CPUs ({load['source']}); "
          f"uptime after: {results['uptime_after']}")
    warning = load_warning(load)
    if warning:
        print(warning)
    print(f"wrote {args.out}/{stem}.json and {stem}.png in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
