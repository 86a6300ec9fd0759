#!/usr/bin/env python
"""How the cost of one training step grows: minilora and PyTorch against d_model, T and batch, LoRA and full.

    python benchmarks/sweep.py                                  # every point (a few minutes on 2 cores)
    python benchmarks/sweep.py --quick                          # fewer points and repetitions (~1 minute)
    python benchmarks/sweep.py --json sweep.json --plot sweep.png

From the benchmark's configuration (bench_step.py: 4 layers, d_model 128 with d_h = 32, d_mlp = 4 d, vocab 256,
batch 16 x T 64, LoRA r = 8 on wq, wv), one size changes at a time:

  d_model  64 -> 512   (n_head = d_model / 32: the head width stays 32, as in a family of GPT-2 models)
  T        32 -> 512   (context = T; attention grows as T², the rest as T)
  batch    1 -> 64

At each point the four steps (minilora LoRA/full, torch LoRA/full) are timed interleaved, as in bench_step.py,
after the same parity check (torch computes minilora's loss and gradients). Ratios are medians of
per-repetition ratios. "Fixed cost" is the fastest step of the same 4-layer graph on arrays so small that the
arithmetic is negligible (d_model 32, one head, batch 1 x T 4): what autograd and Python (or torch's dispatcher)
spend per step whatever the sizes. Its share of a step, fixed / step, shows where that per-primitive overhead
stops mattering.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_step import (  # noqa: E402
    check_parity,
    make_problem,
    minilora_steps,
    paired_ratio,
    run_interleaved,
    set_blas_threads,
    step_flops,
    torch_steps,
)

BASE = {"d_model": 128, "T": 64, "batch": 16}
AXES = {"d_model": (64, 128, 256, 512), "T": (32, 64, 128, 256, 512), "batch": (1, 2, 4, 8, 16, 32, 64)}
QUICK_AXES = {"d_model": (64, 128, 256, 512), "T": (32, 128, 512), "batch": (1, 4, 16, 64)}
D_HEAD = 32
CONTENDERS = ("minilora lora", "minilora full", "torch lora", "torch full")


def config_for(d_model, T):
    import minilora

    return minilora.GPTConfig(vocab_size=256, context=T, d_model=d_model, n_layer=4, n_head=max(1, d_model // D_HEAD))


def problem_args(args, T, batch):
    return argparse.Namespace(preset=None, T=T, batch=batch, r=args.r, alpha=args.alpha, targets=args.targets,
                              seed=args.seed)


def contenders_at(args, d_model, T, batch, parity=True):
    """[(name, step)] for the four contenders at one size, after the parity check."""
    cfg = config_for(d_model, T)
    cfg, lcfg, params, lora, batch_xy = make_problem(problem_args(args, T, batch), cfg)
    ml_lora, ml_full = minilora_steps(cfg, lcfg)
    t_lora, t_full, m_lora, m_full = torch_steps(cfg, lcfg, params, lora, batch_xy)
    if parity:
        check_parity(cfg, lcfg, ml_lora, ml_full, t_lora, t_full, m_lora, m_full, params, lora, batch_xy)
    steps = {"minilora lora": lambda: ml_lora(lora, params, batch_xy),
             "minilora full": lambda: ml_full(params, batch_xy), "torch lora": t_lora, "torch full": t_full}
    return cfg, lcfg, [(name, steps[name]) for name in CONTENDERS]


def time_point(args, d_model, T, batch, reps, max_seconds, parity=True):
    cfg, lcfg, contenders = contenders_at(args, d_model, T, batch, parity)
    res = run_interleaved(contenders, reps, args.warmup, max_seconds=max_seconds, min_reps=3)
    ms = {name: float(np.median(r["t"]) * 1e3) for name, r in res.items()}
    spread = {name: [float(np.percentile(r["t"], q) * 1e3) for q in (10, 90)] for name, r in res.items()}
    ratio = {mode: paired_ratio(res[f"minilora {mode}"]["t"], res[f"torch {mode}"]["t"]) for mode in ("lora", "full")}
    full_over_lora = {lib: paired_ratio(res[f"{lib} full"]["t"], res[f"{lib} lora"]["t"])
                      for lib in ("minilora", "torch")}
    flops = {"lora": step_flops(cfg, batch, T, lcfg, "lora")["total"],
             "full": step_flops(cfg, batch, T, None, "full")["total"]}
    return {"d_model": d_model, "T": T, "batch": batch, "n_head": cfg.n_head, "reps": len(res[CONTENDERS[0]]["t"]),
            "ms": ms, "p10_p90_ms": spread, "minilora_over_torch": ratio, "full_over_lora": full_over_lora,
            "gflops": {name: flops[name.split()[1]] / (ms[name] * 1e-3) / 1e9 for name in ms}}


def fixed_cost(args, reps=40):
    """Fastest ms of each contender on the same 4-layer graph with negligible arithmetic: the least a step
    costs whatever its sizes (the minimum, since noise only adds)."""
    _, _, contenders = contenders_at(args, D_HEAD, 4, 1, parity=False)
    res = run_interleaved(contenders, reps, warmup=10, min_reps=reps)
    return {name: float(np.min(r["t"]) * 1e3) for name, r in res.items()}


def print_point(pt, fixed):
    ms, r = pt["ms"], pt["minilora_over_torch"]
    share = {name: fixed[name] / ms[name] for name in ms}
    print(f"  d={pt['d_model']:4d} H={pt['n_head']:2d} T={pt['T']:4d} B={pt['batch']:3d} ({pt['reps']:2d} reps) | "
          f"ms: ml lora {ms['minilora lora']:8.2f} full {ms['minilora full']:8.2f}  torch lora "
          f"{ms['torch lora']:8.2f} full {ms['torch full']:8.2f} | ml/torch lora {r['lora'][0]:.2f} "
          f"[{r['lora'][1]:.2f},{r['lora'][2]:.2f}] full {r['full'][0]:.2f} [{r['full'][1]:.2f},{r['full'][2]:.2f}] | "
          f"full/lora ml {pt['full_over_lora']['minilora'][0]:.2f} torch {pt['full_over_lora']['torch'][0]:.2f} | "
          f"GFLOP/s ml lora {pt['gflops']['minilora lora']:5.1f} | fixed share ml {share['minilora lora']:.2f} "
          f"torch {share['torch lora']:.2f}", flush=True)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = list(result["axes"])
    fig, ax = plt.subplots(3, len(axes_names), figsize=(5 * len(axes_names), 11), squeeze=False)
    styles = {"minilora lora": ("C0", "-"), "minilora full": ("C0", "--"), "torch lora": ("C3", "-"),
              "torch full": ("C3", "--")}
    fixed = result["fixed_ms"]
    for j, axis in enumerate(axes_names):
        pts = [p for p in result["points"] if p["axis"] == axis]
        xs = [p[axis] for p in pts]
        for name, (color, ls) in styles.items():
            ax[0, j].plot(xs, [p["ms"][name] for p in pts], color=color, ls=ls, marker="o", label=name)
        ax[0, j].set(xscale="log", yscale="log", ylabel="step time (ms)", title=f"varying {axis}")
        for mode, ls in (("lora", "-"), ("full", "--")):
            ax[1, j].plot(xs, [p["minilora_over_torch"][mode][0] for p in pts], color="k", ls=ls, marker="o",
                          label=f"minilora/torch, {mode}")
            ax[1, j].fill_between(xs, [p["minilora_over_torch"][mode][1] for p in pts],
                                  [p["minilora_over_torch"][mode][2] for p in pts], color="k", alpha=0.1)
        ax[1, j].axhline(1.0, color="grey", lw=0.8)
        ax[1, j].set(xscale="log", ylabel="minilora / torch (p10-p90 shaded)")
        for name, (color, ls) in styles.items():
            ax[2, j].plot(xs, [fixed[name] / p["ms"][name] for p in pts], color=color, ls=ls, marker="o", label=name)
        ax[2, j].set(xscale="log", yscale="log", xlabel=axis, ylabel="fixed cost / step time")
        for row in ax[:, j]:
            row.set_xticks(xs, [str(x) for x in xs])
            row.minorticks_off()
    ax[0, 0].legend(fontsize=8, handlelength=3)
    ax[1, 0].legend(fontsize=8, handlelength=3)
    load = result["load_before"]
    fig.suptitle(f"one training step, minilora vs PyTorch ({result['threads']} threads; others fixed at d_model 128, "
                 f"T 64, batch 16; load before {load[0]:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"plot written to {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer points and repetitions")
    p.add_argument("--axes", nargs="+", choices=tuple(AXES), default=list(AXES), help="which sizes to vary")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per point (default 10, --quick 4)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=None,
                   help="per point: stop after at least 3 repetitions once this many seconds have passed "
                        "(default 20, --quick 6)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="OpenBLAS, minilora's element-wise pool and torch (default: os.cpu_count())")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--targets", nargs="+", default=["wq", "wv"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-parity", action="store_true", help="skip the torch-vs-minilora check at each point")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--plot", metavar="PATH", help="write the figure (PNG) here")
    args = p.parse_args(argv)
    reps = args.reps or (4 if args.quick else 10)
    max_seconds = args.max_seconds or (6.0 if args.quick else 20.0)

    import torch

    from minilora import backend

    backend.tune_malloc()
    set_blas_threads(args.threads)
    backend.set_threads(args.threads)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"scaling sweep: {args.threads} threads (OpenBLAS, minilora pool, torch); load before "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cpus; base point {BASE}")
    if load[0] >= 0.5:
        print("  WARNING: other processes are using the CPUs; every number below carries their noise")
    t_start = time.perf_counter()
    fixed = fixed_cost(args)
    print("  fixed cost per step (4 layers, arithmetic negligible), ms: "
          + ", ".join(f"{k} {v:.2f}" for k, v in fixed.items()))
    points = []
    axes = QUICK_AXES if args.quick else AXES
    for axis in args.axes:
        print(f"varying {axis}:")
        for value in axes[axis]:
            size = {**BASE, axis: value}
            pt = time_point(args, size["d_model"], size["T"], size["batch"], reps, max_seconds, not args.no_parity)
            pt["axis"] = axis
            points.append(pt)
            print_point(pt, fixed)
    load_after = os.getloadavg()
    print(f"done in {time.perf_counter() - t_start:.0f} s; load after {load_after[0]:.2f} {load_after[1]:.2f} "
          f"{load_after[2]:.2f}")
    result = {"threads": args.threads, "load_before": load, "load_after": load_after, "base": BASE,
              "axes": {a: list(axes[a]) for a in args.axes}, "fixed_ms": fixed, "points": points, "args": vars(args)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
