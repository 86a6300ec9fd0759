#!/usr/bin/env python
"""One prepared check of minilora on a GPU: minilora-on-CuPy against minilora-on-NumPy and the same model in PyTorch.

    python benchmarks/gpu_check.py                       # on a GPU machine: the whole check (a few minutes)
    python benchmarks/gpu_check.py --json out.json       # ... and the numbers, machine-readable
    python benchmarks/gpu_check.py --standin             # anywhere: the same code paths on tiny shapes, with the
                                                         # CPU stand-in for CuPy (tests/fake_gpu.py), torch on CPU
Without CuPy or without a visible GPU (and without --standin) it says so and exits 0.

1. environment   versions, the GPU, the machine load.
2. parity        loss and gradients of minilora-on-CuPy against minilora-on-NumPy, LoRA (every target, dropout on)
                 and full, float32 (max relative error <= 1e-4) and float64 (<= 1e-10); whether a second GPU run
                 is bit-identical to the first.
3. training      the real train() loop (AdamW, clipping, LoRA dropout, evaluation) for a few steps on both
                 backends: losses agree (float32, <= 1e-3 relative), the result stays on the GPU.
4. speed         GPT-2-small shapes (12 layers, d_model 768, 12 heads, vocabulary 50257, T 1024, batch 16): one
                 step = loss + gradients, minilora-on-CuPy against PyTorch CUDA eager (the same model,
                 benchmarks/torch_gpt.py, loaded with the same weights), LoRA (r 8 on wq, wv) and full; timed
                 interleaved after a warm-up, each step ending in a device synchronisation. Medians, p10/p90,
                 ratios (goal: minilora/torch <= 2), TFLOP/s from the matmul FLOP count of bench_step.step_flops,
                 peak memory; where the time goes: forward alone, the train() loop's seconds per step, and a
                 cProfile of one minilora full step (Python overhead against waiting for the GPU).

FP32 matrix products in both libraries by default (CuPy and PyTorch both leave TF32 off); --tf32 turns it on in
both. The check keeps to --budget-s (default 360 s, warm-up and kernel compilation included) and skips, saying
so, what would not fit. Exit status: 0 when every bound held (or there is no GPU), 1 when a bound failed or a
section broke, 2 when the setup is incomplete (autograd missing, CuPy too old); --check also fails on the 2x goal.

On the GPU machine (Python 3.12, numpy 2.5, CuPy 14, PyTorch 2.11 CUDA, no autograd, no network): carry the
autograd wheel (pure Python). Here, in the repository root:
    echo /.whl/ >> .git/info/exclude; mkdir -p .whl
    cp /opt/pypi/files/autograd-1.9.1-py3-none-any.whl .whl/  # or: pip download --no-deps autograd==1.9.1 -d .whl
and run there, with carry [".whl"] and a timeout of 540 s:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \
      && python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # bench_step.py (FLOP counts, statistics) and torch_gpt.py (the PyTorch twin)

F32_GRAD_TOL = 1e-4
F64_GRAD_TOL = 1e-10
TRAIN_LOSS_TOL = 1e-3  # float32 over AdamW steps: a noise-level gradient's sign moves its weight by 2·lr either way
GOAL_MINILORA_OVER_TORCH = 2.0
CARRY_AUTOGRAD = (
    "autograd (or something it imports) is not importable. autograd is pure Python: carry its wheel.\n"
    "In the repository root, on a machine where it is installed:\n"
    "  echo /.whl/ >> .git/info/exclude; mkdir -p .whl; cp /opt/pypi/files/autograd-1.9.1-py3-none-any.whl .whl/\n"
    "  (or: python3 -m pip download --no-deps autograd==1.9.1 -d .whl), then on this machine, with carry ['.whl']:\n"
    "  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD"
)


class Budget:
    def __init__(self, seconds):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


class Report:
    """Printed as it goes; collected for --json; remembers failed bounds and broken sections."""

    def __init__(self):
        self.data, self.failed, self.broken = {}, [], []

    def line(self, text=""):
        print(text, flush=True)

    def bound(self, name, value, limit):
        ok = bool(value <= limit)
        if not ok:
            self.failed.append(f"{name}: {value:.3g} > {limit:.3g}")
        return "PASS" if ok else "FAIL"


# ---- the machine ------------------------------------------------------------------------------------------------

def find_gpu(args):
    """(array module, torch device, description), or (None, None, why there is none)."""
    if args.standin:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import fake_gpu

        return fake_gpu, "cpu", "the CPU stand-in for CuPy (tests/fake_gpu.py); PyTorch on the CPU"
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"  # read by CuPy when its matrix products are first set up
    try:
        import cupy
    except ImportError as err:
        return None, None, f"CuPy is not installed ({err})"
    try:
        n_gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # no driver: CUDARuntimeError
        return None, None, f"CuPy {cupy.__version__} sees no CUDA GPU ({type(err).__name__}: {err})"
    if n_gpus < 1:
        return None, None, f"CuPy {cupy.__version__} sees no CUDA GPU"
    return cupy, "cuda", f"CuPy {cupy.__version__}, {n_gpus} GPU(s)"


def import_torch(device, args):
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    if device == "cpu":
        torch.set_num_threads(1)  # the dry run: tiny shapes, where threads only contend
    return torch


def sync(xp, torch=None, device="cpu"):
    """Wait until the device has finished everything queued (no-op for the stand-in and the CPU)."""
    if xp.__name__ == "cupy":
        xp.cuda.get_current_stream().synchronize()
    if torch is not None and device == "cuda":
        torch.cuda.synchronize()


def environment(xp, torch, device, report):
    from minilora import backend

    env = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
           "backend": backend.describe(xp), "load": os.getloadavg(), "tf32": os.environ.get("CUPY_TF32", "0")}
    import autograd  # noqa: F401 - checked before

    env["autograd"] = _dist_version("autograd")
    if torch is not None:
        env["torch"] = torch.__version__
        if device == "cuda":
            env["torch_device"] = torch.cuda.get_device_name(0)
            env["torch_tf32"] = torch.backends.cuda.matmul.allow_tf32
    if xp.__name__ == "cupy":
        env["cuda_runtime"] = xp.cuda.runtime.runtimeGetVersion()
    report.data["environment"] = env
    report.line("== 1. environment")
    for k, v in env.items():
        report.line(f"  {k}: {v}")


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


# ---- problems -----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def on_host():
    """Create with NumPy (init_params, init_lora follow the selected backend), whatever was selected."""
    from minilora import backend

    before = backend._xp
    backend.use("numpy")
    try:
        yield
    finally:
        backend._xp = before


def problem(cfg, lcfg, B, T, seed, dtype=np.float32):
    """Host params, an adapter whose B is nonzero (so the low-rank path counts) and one batch, all seeded."""
    from minilora import init_lora, init_params
    from minilora.tasks import Batch

    with on_host():
        params, lora = init_params(cfg, seed, dtype=dtype), init_lora(cfg, lcfg, seed + 1, dtype=dtype)
    rng = np.random.default_rng(seed + 2)
    for block in lora["blocks"]:
        for ab in block.values():
            ab["B"] = (rng.standard_normal(ab["B"].shape) * 0.05).astype(dtype)
    tokens = np.random.default_rng(seed + 3).integers(0, cfg.vocab_size, size=(B, T + 1)).astype(np.int32)
    return params, lora, Batch(tokens[:, :-1], tokens[:, 1:])


def grads(params, lora, batch, cfg, lcfg, modes=("lora", "full")):
    """{"lora": (loss, grads), "full": (loss, grads)}: the training loop's own gradient functions."""
    from minilora.train import full_value_and_grad, lora_value_and_grad

    out = {}
    if "lora" in modes:
        dropout_rng = np.random.default_rng(7) if lcfg.dropout else None  # fresh: the same masks on every call
        out["lora"] = lora_value_and_grad(lora, params, batch, cfg, lcfg, dropout_rng)
    if "full" in modes:
        out["full"] = full_value_and_grad(params, None, batch, cfg, lcfg, None)
    return out


def max_rel_err(ref, other):
    """bench_step's measure (per leaf max|a-b| / max|a|, floored), on host copies of both trees."""
    from bench_step import _max_rel_err

    from minilora.backend import to_host

    return _max_rel_err(to_host(ref), to_host(other))


def small_configs(args):
    from minilora import GPTConfig, LoraConfig

    cfg = (GPTConfig(vocab_size=256, context=16, d_model=16, n_layer=2, n_head=2, d_mlp=24) if args.standin
           else GPTConfig.preset("bench"))
    every = LoraConfig(r=4, alpha=8.0, targets=("wq", "wk", "wv", "wo", "mlp_in", "mlp_out"), dropout=0.1)
    return cfg, every, (2, 16) if args.standin else (8, 64)


# ---- 2. parity ----------------------------------------------------------------------------------------------------

def parity(xp, report):
    from minilora.backend import to_device

    cfg, lcfg, (B, T) = small_configs(report.args)
    report.line(f"== 2. parity: minilora on {xp.__name__} vs on numpy ({cfg}, batch {B} x {T}, {lcfg})")
    out = {}
    for dtype, tol in ((np.float32, F32_GRAD_TOL), (np.float64, F64_GRAD_TOL)):
        params, lora, batch = problem(cfg, lcfg, B, T, seed=0, dtype=dtype)
        host = grads(params, lora, batch, cfg, lcfg)
        dev = to_device((params, lora, batch), like=xp.zeros(0))
        for mode in ("lora", "full"):
            name = f"{np.dtype(dtype).name} {mode}"
            try:  # one broken mode must not hide the others
                out[name] = parity_of(mode, host[mode], dev, cfg, lcfg, name, tol, report)
            except Exception:
                report.broken.append(f"parity {name}")
                report.line(f"  {name} BROKE:\n" + traceback.format_exc())
    report.data["parity"] = out


def parity_of(mode, host, dev, cfg, lcfg, name, tol, report):
    first, second = (grads(*dev, cfg, lcfg, modes=(mode,))[mode] for _ in range(2))
    loss_err = abs(float(first[0]) - float(host[0])) / abs(float(host[0]))
    err = max_rel_err(host[1], first[1])
    repeat = max_rel_err(first[1], second[1])
    verdict = report.bound(f"parity {name}", max(err, loss_err), tol)
    report.line(f"  {name:12s} loss rel err {loss_err:.2e}  grads max rel err {err:.2e}  (<= {tol:g}: "
                f"{verdict})  second GPU run: {'bit-identical' if repeat == 0 else f'differs by {repeat:.1e}'}")
    promoted = sorted({f"{a.dtype}->{b.dtype}" for a, b in zip(_leaves(host[1]), _leaves(first[1]), strict=True)
                       if a.dtype != b.dtype})  # a type promotion that differs from NumPy's would show here
    if promoted:
        report.failed.append(f"parity {name}: gradient dtypes differ from NumPy's: {promoted}")
        report.line(f"  {name:12s} gradient dtypes differ from NumPy's: {promoted}")
    return {"loss_rel_err": loss_err, "grad_max_rel_err": err, "rerun_max_rel_diff": repeat}


# ---- 3. training --------------------------------------------------------------------------------------------------

def training(xp, report):
    from minilora import LoraConfig
    from minilora.backend import to_device
    from minilora.tasks import LanguageModelTask
    from minilora.train import TrainConfig, train

    cfg, _, (B, T) = small_configs(report.args)
    lcfg = LoraConfig(r=4, alpha=8.0, targets=("wq", "wv"), dropout=0.1)
    params, lora, _ = problem(cfg, lcfg, B, T, seed=10)
    task = LanguageModelTask(context=T, n_eval_windows=4)
    tc = TrainConfig(steps=5, batch_size=B, lr=3e-3, warmup=1, weight_decay=0.01, clip=1.0, eval_every=0, seed=0)
    report.line(f"== 3. training: train() for {tc.steps} steps on numpy and on {xp.__name__} (byte-level corpus task)")
    out = {}
    for method in ("lora", "full"):
        kw = {"lora": lora, "lora_config": lcfg} if method == "lora" else {}
        ref = train(task, params, cfg, tc, method=method, progress=False, **kw)
        d_kw = {k: to_device(v, like=xp.zeros(0)) if k == "lora" else v for k, v in kw.items()}
        run = train(task, to_device(params, like=xp.zeros(0)), cfg, tc, method=method, progress=False, **d_kw)
        losses = np.array([h["loss"] for h in ref.history]), np.array([h["loss"] for h in run.history])
        err = float(np.max(np.abs(losses[0] - losses[1]) / np.abs(losses[0])))
        stays = all(type(a) is xp.ndarray for a in _leaves(run.trainable))
        verdict = report.bound(f"training {method}", err, TRAIN_LOSS_TOL)
        report.line(f"  {method:4s} losses {np.round(losses[1], 4).tolist()}  max rel diff to numpy {err:.1e} "
                    f"(<= {TRAIN_LOSS_TOL:g}: {verdict})  eval loss {run.evals[-1]['loss']:.4f} vs "
                    f"{ref.evals[-1]['loss']:.4f}  result on the device: {stays}")
        if not stays:
            report.failed.append(f"training {method}: the trained arrays left the device")
        out[method] = {"loss_max_rel_diff": err, "losses": losses[1].tolist(), "on_device": stays}
    report.data["training"] = out


def _leaves(tree):
    from minilora.tree import flatten

    return list(flatten(tree).values())


# ---- 4. speed -----------------------------------------------------------------------------------------------------

def speed_problem(report):
    from minilora import GPTConfig, LoraConfig

    args = report.args
    if args.standin:
        cfg = GPTConfig(vocab_size=256, context=32, d_model=32, n_layer=2, n_head=2)
        return cfg, LoraConfig(r=8, alpha=16.0, targets=("wq", "wv")), 2, 32
    cfg = GPTConfig.preset("gpt2")  # 12 layers, d_model 768, 12 heads, vocabulary 50257, context 1024
    return cfg, LoraConfig(r=8, alpha=16.0, targets=("wq", "wv")), args.batch, args.seq


def minilora_steps(xp, cfg, lcfg, params, lora, batch):
    """{name: step()} for minilora on the device: loss + gradients, then a synchronisation."""
    from minilora.backend import to_device
    from minilora.train import full_value_and_grad, lora_value_and_grad

    d_params, d_lora, d_batch = to_device((params, lora, batch), like=xp.zeros(0))

    def lora_step():
        loss, g = lora_value_and_grad(d_lora, d_params, d_batch, cfg, lcfg, None)
        sync(xp)
        return loss, g

    def full_step():
        loss, g = full_value_and_grad(d_params, None, d_batch, cfg, lcfg, None)
        sync(xp)
        return loss, g

    return {"minilora lora": lora_step, "minilora full": full_step}, (d_params, d_lora, d_batch)


def torch_steps(torch, device, cfg, lcfg, params, lora, batch):
    """{name: step()} for the PyTorch twin on ``device``: zero grads, loss, backward, synchronise."""
    from torch_gpt import from_minilora

    models = {"torch lora": from_minilora(params, cfg, lora, lcfg).to(device),
              "torch full": from_minilora(params, cfg).to(device)}
    x, y = (torch.from_numpy(a.astype(np.int64)).to(device) for a in (batch.x, batch.y))

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            loss = model.loss(x, y)
            loss.backward()
            if device == "cuda":
                torch.cuda.synchronize()
            return loss

        return run

    return {name: step(m) for name, m in models.items()}, models


def torch_parity(steps, models, ml_steps, lcfg, cfg, report):
    """The two libraries compute the same model: losses and gradients at the timed shapes (float32)."""
    from torch_gpt import full_grads_as_tree, lora_grads_as_tree

    out = {}
    for mode, as_tree in (("lora", lambda m: lora_grads_as_tree(m, lcfg, cfg)), ("full", full_grads_as_tree)):
        loss_ml, g_ml = ml_steps[f"minilora {mode}"]()
        loss_t = float(steps[f"torch {mode}"]().detach())
        err = max_rel_err(as_tree(_on_cpu(models[f"torch {mode}"])), g_ml)
        out[mode] = {"loss_minilora": float(loss_ml), "loss_torch": loss_t, "grad_max_rel_err": err}
        report.line(f"  same model: {mode:4s} loss minilora {float(loss_ml):.6f}  torch {loss_t:.6f}  "
                    f"grads max rel err {err:.1e}")
        del g_ml
    return out


def _on_cpu(model):
    """A CPU copy of a model, gradients included (torch_gpt's *_grads_as_tree read .grad.numpy())."""
    import copy

    cpu_model = copy.deepcopy(model).cpu()  # deepcopy leaves a Parameter's .grad behind: copy them over
    for p, q in zip(model.parameters(), cpu_model.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.detach().cpu()
    return cpu_model


def probe(steps, report):
    """The steps that run: each is called once; one that raises is reported (the section counts as broken) and
    left out of the timing, so the others are still measured."""
    kept = {}
    for name, step in steps.items():
        try:
            out = step()
            del out
            kept[name] = step
        except Exception as err:
            if "OutOfMemory" in type(err).__name__:
                raise
            report.broken.append(f"speed {name}")
            report.line(f"  {name} BROKE, left out of the timing:\n" + traceback.format_exc())
    return kept


def time_interleaved(steps, warmup, reps, budget, reserve):
    """{name: [seconds]}: warm-up repetitions, then timed ones; each repetition runs every step once, in an order
    that rotates. gc.collect() runs outside the timer. Stops after at least 3 timed repetitions once less than
    ``reserve`` seconds of the budget are left."""
    names = list(steps)
    times = {name: [] for name in names}
    for rep in range(warmup + reps):
        if rep >= warmup + 3 and budget.left() < reserve:
            break
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            gc.collect()
            t0 = time.perf_counter()
            out = steps[name]()
            elapsed = time.perf_counter() - t0
            del out
            if rep >= warmup:
                times[name].append(elapsed)
    return times


def speed_table(times, cfg, lcfg, B, T, report):
    from bench_step import paired_ratio, stats_ms, step_flops

    flops = {"lora": step_flops(cfg, B, T, lcfg, "lora")["total"], "full": step_flops(cfg, B, T, None, "full")["total"]}
    rows = {}
    for name, ts in times.items():
        st = stats_ms(ts)
        st["tflops"] = flops[name.split()[1]] / (st["median"] / 1e3) / 1e12
        rows[name] = st
        report.line(f"  {name:14s} {st['median']:9.1f} ms  [{st['p10']:.1f}, {st['p90']:.1f}]  "
                    f"{st['tflops']:6.2f} TFLOP/s   ({len(ts)} timed)")
    ratios = {}
    for mode in ("lora", "full"):
        if f"torch {mode}" in times and f"minilora {mode}" in times:
            r = paired_ratio(times[f"minilora {mode}"], times[f"torch {mode}"])
            verdict = "PASS" if r[0] <= GOAL_MINILORA_OVER_TORCH else "FAIL"
            if report.args.check and verdict == "FAIL":
                report.failed.append(f"minilora/torch {mode} {r[0]:.2f} > {GOAL_MINILORA_OVER_TORCH}")
            ratios[f"minilora/torch {mode}"] = r
            report.line(f"  minilora/torch {mode}: {r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]  "
                        f"(goal <= {GOAL_MINILORA_OVER_TORCH:g}: {verdict})")
    for lib in ("minilora", "torch"):
        if f"{lib} full" in times and f"{lib} lora" in times:
            r = paired_ratio(times[f"{lib} full"], times[f"{lib} lora"])
            ratios[f"{lib} full/lora"] = r
            report.line(f"  {lib} full/LoRA: {r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]")
    return {"steps": rows, "ratios": ratios, "matmul_flops": flops}


def memory_line(xp, torch, device, report):
    out = {}
    if xp.__name__ == "cupy":
        out["cupy_pool_gib"] = xp.get_default_memory_pool().total_bytes() / 2**30
    if torch is not None and device == "cuda":
        out["torch_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if out:
        report.line("  memory: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()))
    return out


def forward_only(xp, torch, device, cfg, lcfg, dev, models, batch, report):
    """Median ms of the forward pass alone (no gradients), minilora against torch, LoRA model."""
    from minilora import forward

    d_params, d_lora, d_batch = dev

    def ml():
        out = forward(d_params, d_batch.x, cfg, d_lora, lcfg)
        sync(xp)
        return out

    steps = {"minilora forward": ml}
    if torch is not None:
        x = torch.from_numpy(batch.x.astype(np.int64)).to(device)

        def tf():
            with torch.no_grad():
                out = models["torch lora"](x)
            sync(xp, torch, device)
            return out

        steps["torch forward"] = tf
    times = time_interleaved(steps, warmup=1, reps=3, budget=Budget(1e9), reserve=0)
    out = {name: float(np.median(ts) * 1e3) for name, ts in times.items()}
    report.line("  forward only (LoRA model): " + ", ".join(f"{k} {v:.1f} ms" for k, v in out.items()))
    return out


def profile_step(step, report, top=12):
    """cProfile of one step: where the host's time goes (Python and launches against waiting on the device)."""
    prof = cProfile.Profile()
    prof.enable()
    out = step()
    prof.disable()
    del out
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    report.line("  cProfile of one minilora full step (top by own time):")
    for ln in lines[start:start + top + 1]:
        report.line("    " + ln)
    return lines[start:start + top + 1]


def train_loop_seconds(xp, cfg, lcfg, params, lora, B, T, report):
    """The real train() at the timed shapes: median seconds per step (AdamW, clipping, the batch's copy)."""
    from minilora.backend import to_device
    from minilora.tasks import LanguageModelTask
    from minilora.train import TrainConfig, train

    task = LanguageModelTask(context=T, n_eval_windows=1)
    tc = TrainConfig(steps=3, batch_size=B, lr=1e-4, warmup=1, eval_every=0, seed=0)
    d_params, d_lora = to_device((params, lora), like=xp.zeros(0))
    out = {}
    for method in ("lora", "full"):
        kw = {"lora": d_lora, "lora_config": lcfg} if method == "lora" else {}
        res = train(task, d_params, cfg, tc, method=method, progress=False, **kw)
        out[method] = res.seconds_per_step * 1e3
    report.line("  train() median step: " + ", ".join(f"{k} {v:.1f} ms" for k, v in out.items()))
    return out


def standin_transfers(ml_steps, report):
    """Stand-in only: what one step moves between host and 'device' (the same code runs on CuPy)."""
    import fake_gpu

    out = {}
    for name, step in ml_steps.items():
        fake_gpu.transfers.reset()
        with fake_gpu.no_host_copies():
            step()
        t = fake_gpu.transfers
        out[name] = {"scalar_reads": t.scalar_reads, "to_host": t.to_host, "to_device": t.to_device}
        report.line(f"  {name}: {t.scalar_reads} one-element reads (synchronisations), {t.to_host} array copies to "
                    f"the host, {t.to_device} to the device")
    return out


def speed(xp, torch, device, report, budget):
    cfg, lcfg, B, T = speed_problem(report)
    for attempt in range(2):
        try:
            return speed_at(xp, torch, device, cfg, lcfg, B, T, report, budget)
        except Exception as err:
            if "OutOfMemory" not in type(err).__name__ or attempt or B < 2:
                raise
            report.line(f"  out of memory at batch {B} ({err}); freeing and retrying at batch {B // 2}")
            free_memory(xp, torch, device)
            B //= 2


def free_memory(xp, torch, device):
    gc.collect()
    if xp.__name__ == "cupy":
        xp.get_default_memory_pool().free_all_blocks()
    if torch is not None and device == "cuda":
        torch.cuda.empty_cache()


def speed_at(xp, torch, device, cfg, lcfg, B, T, report, budget):
    args = report.args
    report.line(f"== 4. speed: loss + gradients at {cfg}, batch {B} x T {T}, {lcfg}")
    params, lora, batch = problem(cfg, lcfg, B, T, seed=20)
    ml_steps, dev = minilora_steps(xp, cfg, lcfg, params, lora, batch)
    steps, models, out = dict(ml_steps), {}, {"batch": B, "T": T}
    if torch is not None:
        t_steps, models = torch_steps(torch, device, cfg, lcfg, params, lora, batch)
        steps.update(t_steps)
    else:
        report.line("  (PyTorch not available: minilora only)")
    steps = probe(steps, report)  # each step once (the first warm-up); a broken one is dropped, not fatal
    if len(steps) == 4:
        out["same_model"] = torch_parity(steps, models, steps, lcfg, cfg, report)
    if torch is not None and device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reps, warmup = (2, 1) if args.standin else (args.reps, 2)
    times = time_interleaved(steps, warmup, reps, budget, reserve=60)
    out.update(speed_table(times, cfg, lcfg, B, T, report))
    out["memory"] = memory_line(xp, torch, device, report)
    report.line("  where the time goes:")
    out["forward_ms"] = forward_only(xp, torch, device, cfg, lcfg, dev, models, batch, report)
    if "minilora full" in steps:
        out["profile_full_step"] = profile_step(steps["minilora full"], report)
    if budget.left() > 30:
        out["train_loop_ms"] = train_loop_seconds(xp, cfg, lcfg, params, lora, B, T, report)
    if args.standin:
        out["transfers_per_step"] = standin_transfers({k: v for k, v in steps.items() if k in ml_steps}, report)
    return out


# ---- the run ------------------------------------------------------------------------------------------------------

def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--standin", action="store_true", help="tiny shapes on the CPU stand-in for CuPy (a dry run)")
    p.add_argument("--batch", type=int, default=16, help="speed section: sequences per step (default 16)")
    p.add_argument("--seq", type=int, default=1024, help="speed section: tokens per sequence, <= 1024")
    p.add_argument("--reps", type=int, default=10, help="speed section: timed repetitions at most (default 10)")
    p.add_argument("--budget-s", type=float, default=360.0, help="time budget of the whole check (default 360 s)")
    p.add_argument("--tf32", action="store_true", help="let both libraries use TF32 for float32 matrix products")
    p.add_argument("--check", action="store_true", help="also exit 1 when minilora/torch misses the 2x goal")
    p.add_argument("--json", default=None, help="write the numbers to this file")
    args = p.parse_args(argv)
    if not 1 <= args.seq <= 1024 or args.batch < 1:
        p.error("--seq must be in [1, 1024] and --batch >= 1")
    return args


def run_sections(xp, torch, device, report, budget):
    sections = (("parity", lambda: parity(xp, report), 40), ("training", lambda: training(xp, report), 40),
                ("speed", lambda: speed(xp, torch, device, report, budget), 90))
    for name, section, needs in sections:
        if budget.left() < needs:
            report.line(f"== {name}: skipped, {budget.left():.0f} s of the budget left (needs ~{needs} s)")
            report.data[name] = "skipped"
            continue
        t0 = time.perf_counter()
        try:
            result = section()
            if result is not None:
                report.data[name] = result
        except Exception:
            report.broken.append(name)
            report.line(f"  {name} BROKE:\n" + traceback.format_exc())
        report.line(f"  ({name}: {time.perf_counter() - t0:.1f} s)")


def summary(report):
    """The figures a closing note quotes, in a few lines."""
    d = report.data
    report.line("== summary")
    if isinstance(d.get("parity"), dict):
        report.line("  parity (max rel err, grads): " + ", ".join(f"{k} {v['grad_max_rel_err']:.1e}"
                                                                  for k, v in d["parity"].items()))
    if isinstance(d.get("training"), dict):
        report.line("  train() loss max rel diff: " + ", ".join(f"{k} {v['loss_max_rel_diff']:.1e}"
                                                                for k, v in d["training"].items()))
    speed = d.get("speed")
    if isinstance(speed, dict) and "steps" in speed:
        report.line(f"  step (loss + gradients), batch {speed['batch']} x T {speed['T']}: " + ", ".join(
            f"{k} {v['median']:.1f} ms ({v['tflops']:.1f} TFLOP/s)" for k, v in speed["steps"].items()))
        report.line("  ratios: " + ", ".join(f"{k} {v[0]:.2f}" for k, v in speed["ratios"].items()))
        if "train_loop_ms" in speed:
            report.line("  train() ms/step: " + ", ".join(f"{k} {v:.1f}" for k, v in speed["train_loop_ms"].items()))


def main(argv=None) -> int:
    args = parse(argv)
    report = Report()
    report.args = args
    xp, device, what = find_gpu(args)
    if xp is None:
        report.line(f"gpu_check: no GPU here: {what}. Nothing to check (run it on a GPU machine, or with --standin).")
        return 0
    try:
        import autograd  # noqa: F401
    except ImportError as err:
        report.line(f"gpu_check: {type(err).__name__}: {err}\n{CARRY_AUTOGRAD}")
        return 2
    from minilora import backend

    before = backend._xp
    try:
        backend.use(xp)  # CuPy: checks the version (>= 13) once more
    except (ImportError, RuntimeError) as err:
        report.line(f"gpu_check: {err}")
        return 2
    t_start, budget = time.perf_counter(), Budget(args.budget_s)
    torch = import_torch(device, args)
    try:
        environment(xp, torch, device, report)
        run_sections(xp, torch, device, report, budget)
    finally:
        backend._xp = before
    report.data.update(seconds=time.perf_counter() - t_start, failed=report.failed, broken=report.broken,
                       standin=args.standin, what=what)
    summary(report)
    report.line(f"== done in {report.data['seconds']:.0f} s: " + ("all bounds held" if not report.failed
                else "FAILED " + "; ".join(report.failed)) + (f"; broken: {report.broken}" if report.broken else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.data, f, indent=2, default=str)
    return 1 if report.failed or report.broken else 0


if __name__ == "__main__":
    sys.exit(main())
