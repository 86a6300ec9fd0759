#!/usr/bin/env python
"""Inference latency, the paper's Table 1 analog (issue 10 §3): the forward pass of base, merged LoRA, unmerged
LoRA, AdapterL, AdapterH and PreLayer on one base, timed interleaved, as paired ratios to the base.

    python benchmarks/latency.py --quick                  # < 30 s: batch 1 and 8, T 32
    nice -n 10 python benchmarks/latency.py               # batch 1 and 32, T 64; JSON, plot: minilora/results/
    nice -n 10 python benchmarks/latency.py --threads 1 --clock cpu

What is timed (minilora/latency.py): the plain NumPy forward (model.transformer on untraced arrays) of each
model on the same (batch, T) tokens; each repetition runs every model once, the first one rotating, and each
timing runs enough forwards to last >= 20 ms. Before timing, merged and unmerged LoRA must agree (logits to
1e-4 relative). Ratios are medians of per-repetition ratios with their p10-p90, in wall time and in process
CPU time (with --threads 1 CPU time hardly sees other processes). Also printed: the primitive calls each
method adds per forward (the CPU's analogue of the paper's extra kernel launches) and the time of each method's
own additions alone, at the measured shape and on a 1 x 1 input (their fixed per-call cost).
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

from minilora import backend, latency  # noqa: E402
from minilora.checkpoint import atomic_write_json  # noqa: E402
from minilora.timing import load_warning  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 1 and 8, T 32, 15 repetitions (< 30 s)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 1 32)")
    p.add_argument("--T", type=int, help="tokens per row (default 64; at most the context minus --l-p)")
    p.add_argument("--reps", type=int, help="timed repetitions per batch size (default 400)")
    p.add_argument("--max-seconds", type=float,
                   help="per batch size: stop the repetitions after this long (after 5; default 120)")
    p.add_argument("--min-ms", type=float, default=4.0,
                   help="each timing runs enough forwards to last this many ms (default 4: about one forward at "
                        "batch 1; short timings are less often cut by the scheduler on a busy machine)")
    p.add_argument("--r", type=int, default=8, help="LoRA rank on W_q, W_v (default 8)")
    p.add_argument("--adapter-r", type=int, default=8, help="the adapters' bottleneck width (default 8)")
    p.add_argument("--l-p", type=int, default=8, help="PreLayer's prefix length (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="OpenBLAS threads and minilora's element-wise pool (default: os.cpu_count())")
    p.add_argument("--no-tune-malloc", action="store_true",
                   help="skip minilora.backend.tune_malloc() (then the page faults of fresh allocations, which differ "
                        "between the models, are timed too)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="which ratio the plot and the summary show (the table and the JSON hold both)")
    p.add_argument("--json", metavar="PATH",
                   help="where to write the results (default minilora/results/latency.json, the committed run "
                        "that notebook 09 reads; benchmarks/out/latency_quick.json with --quick)")
    p.add_argument("--plot", metavar="PATH", help="where to write the plot (default: the JSON's path, .png)")
    args = p.parse_args(argv)
    quick = args.quick
    args.batch = args.batch or ([1, 8] if quick else [1, 32])
    args.T = args.T or (32 if quick else 64)
    args.reps = args.reps or (15 if quick else 400)
    args.max_seconds = args.max_seconds or (6.0 if quick else 120.0)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    args.json = args.json or (os.path.join(out, "latency_quick.json") if quick else str(latency.DEFAULT_RESULTS))
    args.plot = args.plot or os.path.splitext(args.json)[0] + ".png"
    return args


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime not available"


def run(args) -> dict:
    settings = {"r": args.r, "adapter_r": args.adapter_r, "l_p": args.l_p, "targets": ["wq", "wv"],
                "threads": args.threads, "blas_threads": args.blas_threads, "tune_malloc": args.tuned,
                "pool_threads": backend.get_threads(),
                "python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(), "uptime_before": _uptime(),
                "command": " ".join(["python", "benchmarks/latency.py"] + sys.argv[1:])}
    print(f"BLAS threads {args.blas_threads}, minilora pool {settings['pool_threads']}, tune_malloc "
          f"{'on' if args.tuned else 'off'}; LoRA r={args.r} on wq, wv; "
          f"adapters r={args.adapter_r}; PreLayer l_p={args.l_p}; T={args.T}; batches {args.batch}")
    print(f"uptime before: {settings['uptime_before']}", flush=True)
    models, config = latency.build_models(r=args.r, adapter_r=args.adapter_r, l_p=args.l_p, seed=args.seed)
    results = latency.measure(models, config, batches=tuple(args.batch), T=args.T, reps=args.reps,
                              max_seconds=args.max_seconds, seed=args.seed, settings=settings,
                              min_seconds=args.min_ms / 1e3, hook_reps=10 if args.quick else 40)
    results["uptime_after"] = _uptime()
    return results


def main(argv=None):
    args = parse_args(argv)
    args.tuned = False if args.no_tune_malloc else backend.tune_malloc()
    args.blas_threads = set_blas_threads(args.threads)
    backend.set_threads(args.threads)
    start = time.perf_counter()
    results = run(args)
    print(f"merged vs unmerged LoRA logits: relative gap {results['lora_disagreement']:.1e} (checked before timing)")
    print(latency.table(results))
    print(latency.summary(results, key="cpu_vs_base" if args.clock == "cpu" else "vs_base"))
    for b in results["batches"]:
        warning = load_warning(b["load"])
        if warning:
            print(f"batch {b['batch']}: {warning}")
    print(f"uptime after: {results['uptime_after']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    atomic_write_json(args.json, results)
    latency.plot(results, args.plot, key="cpu_vs_base" if args.clock == "cpu" else "vs_base")
    print(f"wrote {args.json} and {args.plot} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
