"""``minilora tour``: the paper's main claims, run end to end on the shipped base model in a few minutes.

1. LoRA at init changes nothing (B = 0): base and adapted logits are bitwise identical.
2. Parameter counts: this model and GPT-3 175B, by the paper's formula and by counting real arrays.
3. LoRA and full fine-tuning on the same downstream task, side by side.
4. The comparison: trainable parameters, checkpoint sizes, accuracy, and step times measured interleaved (the
   two steps alternate, the ratio is the median of per-pair ratios, with its spread and the machine's load).
5. Merge: W + s·B A gives the same outputs as the unmerged adapter, with no extra latency.
The printed report (report.txt), the plots, the adapter and summary.json are written to the output folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .backend import to_device, to_host

OUTPUTS = ("training_curves.png", "parameter_counts.png", "singular_values.png", "adapter.safetensors",
           "full_finetuned.safetensors", "summary.json", "report.txt")
"""What the tour writes into its output folder."""


class Report:
    """Lines printed as they come and kept, to be written to report.txt at the end."""

    def __init__(self):
        self.lines = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def rule(self, title: str) -> None:
        self.say(f"\n{'=' * 8} {title} {'=' * max(4, 92 - len(title))}")

    def table(self, rows, header) -> None:
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        line = "  ".join(f"{{:>{w}}}" if i else f"{{:<{w}}}" for i, w in enumerate(widths))
        self.say(line.format(*header))
        self.say(line.format(*("-" * w for w in widths)))
        for r in rows:
            self.say(line.format(*r))

    def text(self) -> str:
        return "\n".join(self.lines).lstrip("\n") + "\n"


def check_tour_args(out_dir, steps, seed, overwrite: bool, hint: str = "pass overwrite=True to replace it"):
    """Every argument checked before any work: steps >= 1, seed >= 0, and the output folder writable with
    none of OUTPUTS already there (unless ``overwrite``). Returns the steps to run."""
    from .config import whole_number
    from .paths import check_outputs

    if steps is not None:
        whole_number("", "steps", steps, at_least=1)
    whole_number("", "seed", seed)
    out = Path(out_dir)
    check_outputs({f"tour output {name}": out / name for name in OUTPUTS}, overwrite=overwrite, hint=hint)


def run_tour(out_dir="tour-output", steps: int | None = None, quick: bool = False, seed: int = 0, *,
             overwrite: bool = False, progress=True, timing_pairs: int | None = None) -> dict:
    """Run the tour; returns the summary (also written as summary.json). steps: fine-tuning steps per method
    (default 300, or 30 with ``quick``); timing_pairs: interleaved LoRA/full step pairs timed in section 4
    (default 15, or 3 with ``quick``; on a busy machine it stops after a minute, once 5 pairs are done). Existing
    outputs are refused unless ``overwrite``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: the tour never opens a window
    from .backend import tune_malloc
    from .checkpoint import atomic_write_bytes, atomic_write_json

    check_tour_args(out_dir, steps, seed, overwrite)
    tune_malloc()
    t_start = time.time()
    out = Path(out_dir)
    steps = steps if steps is not None else (30 if quick else 300)
    pairs = timing_pairs if timing_pairs is not None else (3 if quick else 15)
    rep = Report()
    params, config, task = _base_model(rep)
    lcfg, lora0, identical = _zero_init(rep, params, config, task, seed)
    _counts(rep, params, config)
    zero_shot, lora_res, full_res = _finetune(rep, params, config, task, lcfg, lora0, steps, seed, progress)
    summary = _compare(rep, out, params, config, task, lcfg, zero_shot, lora_res, full_res, seed, pairs)
    summary.update(_merge_check(rep, params, config, task, lcfg, lora_res, seed))
    _plots(rep, out, params, config, lcfg, lora_res, full_res)
    summary.update(zero_init_identical=identical, steps=steps, seconds=round(time.time() - t_start, 1))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load is not None:
        summary["load_average_at_end"] = list(load)
    atomic_write_json(out / "summary.json", summary)
    busy = "" if load is None else f" (load average {load[1]:.1f} over the last 5 min, on {os.cpu_count()} CPUs)"
    rep.say(f"\ndone in {summary['seconds']:.0f} s{busy}; everything is in {out.resolve()}/ (this report: "
            "report.txt)")
    atomic_write_bytes(out / "report.txt", rep.text().encode("utf-8"))
    return summary


def _base_model(rep: Report):
    from .checkpoint import BASE_CHECKPOINT, load_base, read_record
    from .lora import count_params
    from .tasks import DocModuleTask

    rep.rule("0. The base model")
    params, config = load_base()
    record = read_record(BASE_CHECKPOINT)
    rep.say(f"shipped checkpoint {BASE_CHECKPOINT.name}: {count_params(params):,} parameters, {config}")
    if record:
        rep.say(f"pretrained with `{record.get('command')}` for {record.get('steps')} steps on "
                f"{record['data']['n_bytes']:,} bytes of Python's own documentation; held-out loss "
                f"{record.get('held_out_loss', float('nan')):.3f} nats/byte")
    task = DocModuleTask(context=config.context)
    rep.say(f"downstream task: {task.description} ({len(task.labels)} modules; {len(task.train_examples)} train / "
            f"{len(task.eval_examples)} held-out)")
    return params, config, task


def _zero_init(rep: Report, params, config, task, seed):
    from .lora import LoraConfig, init_lora
    from .model import forward
    from .train import lora_value_and_grad

    rep.rule("1. LoRA starts exactly at the base model (B = 0)")
    lcfg = LoraConfig(r=8, alpha=16.0, targets=("wq", "wv"))
    lora0 = init_lora(config, lcfg, seed)
    batch = to_device(task.batch(0, 8, seed), like=params["wte"])
    identical = bool(np.array_equal(forward(params, batch.x, config), forward(params, batch.x, config, lora0, lcfg)))
    _, g = lora_value_and_grad(lora0, params, batch, config, lcfg, None)
    gA = max(float(np.abs(b[t]["A"]).max()) for b in g["blocks"] for t in b)
    gB = max(float(np.abs(b[t]["B"]).max()) for b in g["blocks"] for t in b)
    rep.say(f"logits of base vs LoRA at init, bitwise identical: {identical}")
    rep.say(f"at init: max |dL/dA| = {gA:g} (exactly zero: dL/dA = s·Bᵀ(...) and B = 0), max |dL/dB| = {gB:.3g}")
    if not identical or gA != 0.0 or gB == 0.0:
        raise AssertionError("zero-init claim failed")
    return lcfg, lora0, identical


def _counts(rep: Report, params, config):
    from .config import GPTConfig
    from .lora import LoraConfig, count_params, init_lora, paper_param_count

    rep.rule("2. Parameter counts: |Θ| = 2 × L̂ × d_model × r")
    rows = []
    total = count_params(params)
    for targets in (("wq",), ("wq", "wv"), ("wq", "wk", "wv", "wo")):
        for r in (1, 8):
            n = count_params(init_lora(config, LoraConfig(r=r, alpha=r, targets=targets), 0))
            formula = paper_param_count(len(targets) * config.n_layer, config.d_model, r)
            rows.append((f"this model  {'+'.join(targets)}", r, f"{n:,}", f"{formula:,}", f"{100 * n / total:.3f}%"))
    gpt3 = GPTConfig.preset("gpt3-175b")
    gpt3_total = 175_000_000_000
    for targets, r in ((("wq", "wv"), 1), (("wq", "wv"), 4), (("wq", "wv"), 8), (("wq", "wk", "wv", "wo"), 4)):
        formula = paper_param_count(len(targets) * gpt3.n_layer, gpt3.d_model, r)
        n = count_params(init_lora(gpt3, LoraConfig(r=r, alpha=r, targets=targets), 0)) if r <= 4 else formula
        rows.append((f"GPT-3 175B  {'+'.join(targets)}", r, f"{n:,}", f"{formula:,}",
                     f"{100 * n / gpt3_total:.4f}%"))
    rep.table(rows, ("model / adapted", "r", "counted", "formula", "of all"))
    rep.say(f"(this model has {total:,} parameters; GPT-3 175B counts come from real A, B arrays for r <= 4)")
    rep.say(f"GPT-3 r=4 on q,v in fp16: {paper_param_count(2 * 96, 12288, 4) * 2 / 2**20:.1f} MiB "
            "(the paper's '35MB' checkpoint, vs 350 GB for the full model)")


def _finetune(rep: Report, params, config, task, lcfg, lora0, steps, seed, progress):
    from .train import TrainConfig, train

    rep.rule(f"3. Fine-tuning on the downstream task: LoRA vs full ({steps} steps each)")
    zero_shot = task.evaluate(params, config)
    rep.say(f"base model before fine-tuning: accuracy {zero_shot['accuracy']:.3f} "
            f"(chance {task.chance:.3f}), answer loss {zero_shot['loss']:.3f}")
    common = {"steps": steps, "batch_size": 16, "warmup": max(1, steps // 15), "eval_every": max(1, steps // 6),
              "seed": seed}
    lora_res = train(task, params, config, TrainConfig(lr=1e-2, **common), method="lora", lora=lora0,
                     lora_config=lcfg, desc=f"LoRA r={lcfg.r} on wq,wv", progress=progress)
    full_res = train(task, params, config, TrainConfig(lr=1e-3, **common), method="full",
                     desc="full fine-tuning", progress=progress)
    return zero_shot, lora_res, full_res


def paired_step_times(params, config, task, lcfg, lora, full_params, seed, pairs: int,
                      max_seconds: float = 60.0) -> dict:
    """One LoRA and one full training step (loss, gradients, clipping, AdamW) on the same batch, alternated
    ``pairs`` times after 2 warm-up pairs (1 when pairs < 5), or fewer (at least 5, or ``pairs`` if smaller)
    once ``max_seconds`` have passed: a busy machine does not stretch the tour; with the CPU use of other
    processes meanwhile."""
    from .optim import AdamW, clip_by_global_norm
    from .timing import CpuMonitor, paired_ratio, run_interleaved, stats_ms
    from .train import full_value_and_grad, lora_value_and_grad

    batch = to_device(task.batch(0, 16, seed), like=params["wte"])
    opt = AdamW(lr=1e-3)
    lora_state, full_state = opt.init(lora), opt.init(full_params)

    def step(grad_fn, trainable, frozen, state):
        _, grads = grad_fn(trainable, frozen, batch, config, lcfg, None)
        opt.update(trainable, clip_by_global_norm(grads, 1.0)[0], state, 1e-3)

    monitor = CpuMonitor().start()
    res = run_interleaved([("lora", lambda: step(lora_value_and_grad, lora, params, lora_state)),
                           ("full", lambda: step(full_value_and_grad, full_params, None, full_state))],
                          reps=pairs, warmup=2 if pairs >= 5 else 1, max_seconds=max_seconds,
                          min_reps=min(5, pairs))
    usage = monitor.stop()
    return {"lora_ms": stats_ms(res["lora"]["t"]), "full_ms": stats_ms(res["full"]["t"]),
            "ratio": paired_ratio(res["full"]["t"], res["lora"]["t"]), "pairs": len(res["lora"]["t"]),
            "usage": usage}


def _compare(rep: Report, out, params, config, task, lcfg, zero_shot, lora_res, full_res, seed, pairs) -> dict:
    from .checkpoint import save_adapter, save_params
    from .lora import count_params
    from .provenance import fingerprint
    from .timing import load_warning

    rep.rule("4. Comparison")
    base_fp = fingerprint(params)
    adapter_path = save_adapter(out / "adapter.safetensors", lora_res.trainable, lcfg, config, base=base_fp)
    full_path = save_params(out / "full_finetuned.safetensors", full_res.trainable, config, {"tour": True},
                            base=base_fp)
    lora_final, full_final = lora_res.evals[-1], full_res.evals[-1]
    timing = paired_step_times(params, config, task, lcfg, lora_res.trainable, full_res.trainable, seed, pairs)
    (ratio, r10, r90), lms, fms, pairs = timing["ratio"], timing["lora_ms"], timing["full_ms"], timing["pairs"]
    n_lora, n_full = count_params(lora_res.trainable), count_params(full_res.trainable)
    a_bytes, f_bytes = adapter_path.stat().st_size, full_path.stat().st_size
    rep.table([
        ("trainable parameters", f"{n_lora:,}", f"{n_full:,}", f"{n_full / n_lora:.0f}x fewer"),
        ("checkpoint on disk", f"{a_bytes / 1e3:.1f} kB", f"{f_bytes / 1e3:.1f} kB",
         f"{f_bytes / a_bytes:.0f}x smaller"),
        ("optimizer state (m, v)", f"{2 * n_lora * 4 / 1e3:.1f} kB", f"{2 * n_full * 4 / 1e3:.1f} kB", ""),
        ("step time (median [p10, p90])", f"{lms['median']:.0f} ms [{lms['p10']:.0f}, {lms['p90']:.0f}]",
         f"{fms['median']:.0f} ms [{fms['p10']:.0f}, {fms['p90']:.0f}]",
         f"full/LoRA = {ratio:.2f} [{r10:.2f}, {r90:.2f}]"),
        ("held-out accuracy", f"{lora_final['accuracy']:.3f}", f"{full_final['accuracy']:.3f}",
         f"base {zero_shot['accuracy']:.3f}"),
        ("held-out answer loss", f"{lora_final['loss']:.3f}", f"{full_final['loss']:.3f}",
         f"base {zero_shot['loss']:.3f}"),
    ], ("", "LoRA", "full FT", ""))
    usage = timing["usage"]
    others = "unknown" if usage["others_cpus"] is None else f"{usage['others_cpus']:.2f}"
    rep.say(f"step times: {pairs} LoRA/full pairs run alternately on one batch of 16; full/LoRA is the median of "
            f"the per-pair ratios [p10, p90]. Other processes used {others} of {usage['cpus']} CPUs meanwhile.")
    warning = load_warning(usage)
    if warning:
        rep.say(warning)
    return {"lora_params": n_lora, "full_params": n_full, "adapter_bytes": a_bytes,
            "full_bytes": f_bytes, "step_time_ratio_full_over_lora": ratio, "step_time_ratio_p10_p90": [r10, r90],
            "step_ms_lora": lms, "step_ms_full": fms, "timing_pairs": pairs,
            "timing_others_cpus": usage["others_cpus"],
            "lora_accuracy": lora_final["accuracy"], "full_accuracy": full_final["accuracy"],
            "base_accuracy": zero_shot["accuracy"]}


def _merge_check(rep: Report, params, config, task, lcfg, lora_res, seed) -> dict:
    from .lora import merge
    from .model import forward
    from .timing import run_interleaved, stats_ms

    rep.rule("5. Merge: W' = W + s·B A, no extra latency")
    merged = merge(params, lora_res.trainable, lcfg)
    x = task.batch(1, 16, seed).x
    diff = float(np.abs(forward(merged, x, config) - forward(params, x, config, lora_res.trainable, lcfg)).max())
    merged_acc = task.evaluate(merged, config)["accuracy"]
    rep.say(f"max |merged - unmerged| logits (float32): {diff:.2e}; merged accuracy {merged_acc:.3f} "
            f"(unmerged {lora_res.evals[-1]['accuracy']:.3f})")
    times = run_interleaved([("base", lambda: forward(params, x, config)),
                             ("merged", lambda: forward(merged, x, config)),
                             ("unmerged", lambda: forward(params, x, config, lora_res.trainable, lcfg))],
                            reps=5, warmup=1, collect=False)
    rep.say("forward latency (median of 5, interleaved, batch 16): " + ", ".join(
        f"{k} {stats_ms(v['t'])['median']:.1f} ms" for k, v in times.items()))
    if diff > 1e-4:
        raise AssertionError(f"merged and unmerged logits differ by {diff}")
    return {"merge_max_abs_diff": diff}


def _plots(rep: Report, out, params, config, lcfg, lora_res, full_res):
    import matplotlib.pyplot as plt

    from .lora import LoraConfig, count_params, delta_weight, init_lora
    from .plots import param_bars, singular_values, training_curves

    rep.rule("6. Plots")
    training_curves({f"LoRA r={lcfg.r} (wq,wv)": lora_res, "full fine-tuning": full_res}, "accuracy",
                    out / "training_curves.png")
    param_bars([("full fine-tuning (this model)", count_params(full_res.trainable))] + [
        (f"LoRA r={r} wq,wv (this model)", count_params(init_lora(config, LoraConfig(r=r, alpha=r), 0)))
        for r in (64, 8, 1)], out / "parameter_counts.png")
    ab = lora_res.trainable["blocks"][0]["wq"]
    dw_s = to_host(np.linalg.svd(delta_weight(ab, lcfg.scale), compute_uv=False))  # matplotlib reads host arrays
    w_s = to_host(np.linalg.svd(params["blocks"][0]["wq"]["W"], compute_uv=False))
    singular_values({"ΔW_q (block 0)": dw_s[:32], "W_q (block 0)": w_s[:32]},
                    out / "singular_values.png", "ΔW = s·B A has rank ≤ r; W does not")
    plt.close("all")
    for name in ("training_curves.png", "parameter_counts.png", "singular_values.png"):
        rep.say(f"wrote {out / name}")
