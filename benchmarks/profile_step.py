#!/usr/bin/env python
"""Where one minilora training step spends its time: ms per primitive, forward and VJP.

    python benchmarks/profile_step.py                  # LoRA step, bench config, os.cpu_count() threads
    python benchmarks/profile_step.py --threads 1      # one BLAS thread, minilora's element-wise pool off
    python benchmarks/profile_step.py --mode full      # full fine-tuning
    python benchmarks/profile_step.py --reference ../minilora-old   # before/after, the two interleaved
    python benchmarks/profile_step.py --containers --clock cpu      # autograd's tree bookkeeping alone

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

from bench_step import make_problem, minilora_steps, reference_package, set_blas_threads  # noqa: E402


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


def cotangents_for(nodes, seed=0):
    """A random cotangent shaped like each node's output (the same draws for every version profiled)."""
    from autograd.core import vspace

    np.random.seed(seed)  # vspace.randn() draws from numpy's global generator: pin it
    return [vspace(v).randn() for *_, v, _ in nodes]


def replay_once(nodes, cotangents, clock):
    """One replay: the forwards in order, then the VJPs in reverse. Returns ({name: s}, {name: s})."""
    fw, bw = collections.Counter(), collections.Counter()
    for name, fun, fargs, kwargs, _, _ in nodes:
        t0 = clock()
        fun.fun(*fargs, **kwargs)
        fw[name] += clock() - t0
    for (name, *_, vjp), g in zip(reversed(nodes), reversed(cotangents), strict=True):
        t0 = clock()
        vjp(g)
        bw[name] += clock() - t0
    return fw, bw


def profile(versions, reps, clock):
    """versions: {label: (step, step_args)}. Steps and replays of all versions alternate within each repetition
    (the first version rotates), so load on the machine falls on all alike. Returns {label: (step ms,
    {name: (forward ms, VJP ms, calls)})}, medians over the repetitions."""
    labels = list(versions)
    for step, step_args in versions.values():
        for _ in range(3):
            step(*step_args)
    nodes = {k: record_nodes(step, *a) for k, (step, a) in versions.items()}
    cots = {k: cotangents_for(n) for k, n in nodes.items()}
    walls = {k: [] for k in labels}
    fw = {k: collections.defaultdict(list) for k in labels}
    bw = {k: collections.defaultdict(list) for k in labels}
    for rep in range(reps):
        for k in labels[rep % len(labels):] + labels[:rep % len(labels)]:
            step, step_args = versions[k]
            t0 = clock()
            step(*step_args)
            walls[k].append(clock() - t0)
            f, b = replay_once(nodes[k], cots[k], clock)
            for name in {n for n, *_ in nodes[k]}:
                fw[k][name].append(f[name])
                bw[k][name].append(b[name])
    out = {}
    for k in labels:
        calls = collections.Counter(n for n, *_ in nodes[k])
        out[k] = (float(np.median(walls[k])) * 1e3,
                  {n: (float(np.median(fw[k][n])) * 1e3, float(np.median(bw[k][n])) * 1e3, calls[n]) for n in calls})
    return out


def print_table(result):
    labels = list(result)
    first = result[labels[0]][1]
    names = sorted(set().union(*(r[1] for r in result.values())), key=lambda n: -sum(first.get(n, (0, 0, 0))[:2]))
    head = f"{'primitive':22s} {'calls':>5s}" + "".join(f" | {k[:14]:>14s}: fwd    VJP  total" for k in labels)
    print(head)
    totals = {k: [0.0, 0.0] for k in labels}
    for n in names:
        row = f"{n:22s} {first.get(n, (0, 0, 0))[2]:5d}"
        for k in labels:
            f, b, _ = result[k][1].get(n, (0.0, 0.0, 0))
            totals[k][0] += f
            totals[k][1] += b
            row += f" | {'':14s}  {f:6.2f} {b:6.2f} {f + b:6.2f}"
        print(row)
    for label, pick in (("sum of primitives", lambda k: totals[k]), ("step (median)", None),
                        ("autograd bookkeeping", "rest")):
        row = f"{label:22s} {'':5s}"
        for k in labels:
            f, b = totals[k]
            if pick is None:
                row += f" | {'':14s}  {'':6s} {'':6s} {result[k][0]:6.2f}"
            elif pick == "rest":
                row += f" | {'':14s}  {'':6s} {'':6s} {result[k][0] - f - b:6.2f}"
            else:
                row += f" | {'':14s}  {f:6.2f} {b:6.2f} {f + b:6.2f}"
        print(row)


def container_costs(trees, reps, clock):
    """autograd's bookkeeping of a parameter tree alone: value_and_grad of an objective that only reads every
    leaf through its path (as the model does) and sums it, traced as the nested tree and as the flat list of
    leaves (train.value_and_grad_of_leaves). Returns {name: (leaves, tree ms, flat ms)}, medians, interleaved."""
    import autograd.numpy as anp
    from autograd import value_and_grad

    from minilora.train import value_and_grad_of_leaves
    from minilora.tree import leaves

    def read_all(node):  # every leaf through its path; works on autograd's boxes of dicts and lists too
        if hasattr(node, "keys"):
            return sum(read_all(node[k]) for k in node.keys())
        if isinstance(node, (list, tuple)) or type(node).__name__ == "SequenceBox":
            return sum(read_all(node[i]) for i in range(len(node)))
        return anp.sum(node)

    out = {}
    for name, tree in trees.items():
        ways = {"tree": value_and_grad(read_all), "flat": value_and_grad_of_leaves(read_all)}
        times = {k: [] for k in ways}
        for rep in range(reps):
            for k in (("tree", "flat") if rep % 2 else ("flat", "tree")):
                t0 = clock()
                ways[k](tree)
                times[k].append(clock() - t0)
        out[name] = (len(leaves(tree)), *(float(np.median(times[k])) * 1e3 for k in ("tree", "flat")))
    return out


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
    p.add_argument("--reference", metavar="PATH",
                   help="also profile another checkout's minilora (PATH/minilora), interleaved: before/after")
    p.add_argument("--containers", action="store_true",
                   help="instead: autograd's bookkeeping of the parameter trees alone, traced as the nested tree "
                        "and as the flat list of leaves (train.value_and_grad_of_leaves)")
    args = p.parse_args(argv)

    from minilora import backend

    backend.tune_malloc()
    set_blas_threads(args.threads)
    backend.set_threads(args.threads)
    cfg, lcfg, params, lora, batch = make_problem(args)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.containers:
        load = os.getloadavg()
        print(f"autograd's bookkeeping of the trees alone ({args.clock} ms, median of {args.reps * 4}, interleaved; "
              f"load {load[0]:.2f}):")
        for name, (n, tree_ms, flat_ms) in container_costs({"params (full)": params, "adapter (LoRA)": lora},
                                                           args.reps * 4, clock).items():
            print(f"  {name:15s} {n:3d} leaves: traced as the tree {tree_ms:6.2f}, as the flat list {flat_ms:6.2f}, "
                  f"difference {tree_ms - flat_ms:5.2f}")
        return 0
    packages = {"this checkout": None}
    if args.reference:
        packages["reference"] = reference_package(args.reference)
    versions = {}
    for label, package in packages.items():
        if package is not None and hasattr(package.backend, "set_threads"):
            package.backend.set_threads(args.threads)
        ml_lora, ml_full = minilora_steps(cfg, lcfg, package)
        versions[label] = (ml_lora, (lora, params, batch)) if args.mode == "lora" else (ml_full, (params, batch))
    result = profile(versions, args.reps, clock)

    load = os.getloadavg()
    print(f"profile of one {args.mode} step (ms): preset {args.preset!r}, batch {args.batch} x T {args.T}; "
          f"BLAS threads {args.threads}, element-wise pool {backend.get_threads()}; {args.clock} clock; "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
