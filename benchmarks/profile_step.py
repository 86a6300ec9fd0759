#!/usr/bin/env python
"""Where one minilora training step spends its time: ms per primitive, forward and VJP.

    python benchmarks/profile_step.py                  # LoRA step, bench config, os.cpu_count() threads
    python benchmarks/profile_step.py --threads 1      # one BLAS thread, minilora's element-wise pool off
    python benchmarks/profile_step.py --mode full      # full fine-tuning

How: one step is traced once with autograd, and every node autograd records (the function, its arguments, its
VJP closure) is kept. Each repetition then replays the recorded forwards in their original order and the VJP
closures in reverse order (as the backward pass runs them), timing every call; a primitive's time is the median
over repetitions of the sum over its calls. "autograd bookkeeping" is the full step's median wall time minus
the replayed total: boxing, node creation, summing gradients that meet (add_outgrads) and the model's Python.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_step import make_problem, minilora_steps, set_blas_threads  # noqa: E402


def record_nodes(step, *args):
    """Run step(*args) once and return [(name, fun, argvals, kwargs, value, vjp)] in forward order."""
    import autograd.core as core

    nodes = []
    init = core.VJPNode.__init__

    def recording_init(self, value, fun, fargs, kwargs, argnums, parents):
        init(self, value, fun, fargs, kwargs, argnums, parents)
        name = getattr(fun, "__name__", str(fun))
        nodes.append((name, fun, fargs, kwargs, value, self.vjp))

    core.VJPNode.__init__ = recording_init
    try:
        step(*args)
    finally:
        core.VJPNode.__init__ = init
    return nodes


def replay(nodes, reps, seed=0, clock=time.perf_counter):
    """{name: (forward ms, vjp ms, calls)} medians over reps of each name's summed time."""
    from autograd.core import vspace

    np.random.seed(seed)  # vspace.randn() draws from numpy's global generator: pin it
    cotangents = [vspace(v).randn() for *_, v, _ in nodes]  # a random cotangent shaped like each output
    fw = collections.defaultdict(list)
    bw = collections.defaultdict(list)
    for _ in range(reps):
        f_sum = collections.Counter()
        b_sum = collections.Counter()
        for name, fun, fargs, kwargs, _, _ in nodes:
            t0 = clock()
            fun.fun(*fargs, **kwargs)
            f_sum[name] += clock() - t0
        for (name, *_, vjp), g in zip(reversed(nodes), reversed(cotangents), strict=True):
            t0 = clock()
            vjp(g)
            b_sum[name] += clock() - t0
        for name in {n for n, *_ in nodes}:
            fw[name].append(f_sum[name])
            bw[name].append(b_sum[name])
    calls = collections.Counter(n for n, *_ in nodes)
    return {n: (float(np.median(fw[n])) * 1e3, float(np.median(bw[n])) * 1e3, calls[n]) for n in calls}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--preset", default="bench")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--targets", nargs="+", default=["wq", "wv"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="OpenBLAS threads and minilora's element-wise pool (default: os.cpu_count())")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: time.perf_counter; cpu: time.process_time (CPU time of all threads: nearly immune "
                        "to other processes with --threads 1, but it counts spinning BLAS threads)")
    args = p.parse_args(argv)

    from minilora import backend

    backend.tune_malloc()
    set_blas_threads(args.threads)
    if hasattr(backend, "set_threads"):  # absent before issue 12: the profile also runs on older checkouts
        backend.set_threads(args.threads)
    cfg, lcfg, params, lora, batch = make_problem(args)
    ml_lora, ml_full = minilora_steps(cfg, lcfg)
    step, step_args = (ml_lora, (lora, params, batch)) if args.mode == "lora" else (ml_full, (params, batch))

    for _ in range(3):
        step(*step_args)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    walls = []
    for _ in range(args.reps):
        t0 = clock()
        step(*step_args)
        walls.append(clock() - t0)
    wall = float(np.median(walls)) * 1e3
    nodes = record_nodes(step, *step_args)
    prof = replay(nodes, args.reps, args.seed, clock)

    load = os.getloadavg()
    pool = backend.get_threads() if hasattr(backend, "get_threads") else "none"
    print(f"profile of one {args.mode} step: preset {args.preset!r}, batch {args.batch} x T {args.T}; "
          f"BLAS threads {args.threads}, element-wise pool {pool}; {args.clock} clock; "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'primitive':24s} {'calls':>5s} {'forward ms':>10s} {'VJP ms':>8s} {'total':>8s}")
    rows = sorted(prof.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
    tot_f = tot_b = 0.0
    for name, (f, b, n) in rows:
        tot_f, tot_b = tot_f + f, tot_b + b
        print(f"{name:24s} {n:5d} {f:10.2f} {b:8.2f} {f + b:8.2f}")
    print(f"{'sum of primitives':24s} {len(nodes):5d} {tot_f:10.2f} {tot_b:8.2f} {tot_f + tot_b:8.2f}")
    print(f"{'step (median)':24s} {'':5s} {'':10s} {'':8s} {wall:8.2f}")
    print(f"{'autograd bookkeeping':24s} {'':5s} {'':10s} {'':8s} {wall - tot_f - tot_b:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
