"""``minilora tour``: the paper's main claims, run end to end on the shipped base model in a few minutes.

1. LoRA at init changes nothing (B = 0): base and adapted logits are bitwise identical.
2. Parameter counts: this model and GPT-3 175B, by the paper's formula and by counting real arrays.
3. LoRA and full fine-tuning on the same downstream task, side by side, with progress bars.
4. The comparison: trainable parameters, checkpoint sizes, step times, final accuracy.
5. Merge: W + s·B A gives the same outputs as the unmerged adapter, with no extra latency.
Plots and the adapter are written to the output folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _rule(title):
    print(f"\n{'=' * 8} {title} {'=' * max(4, 92 - len(title))}")


def _table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(f"{{:>{w}}}" if i else f"{{:<{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))


def run_tour(out_dir="tour-output", steps: int | None = None, quick: bool = False, seed: int = 0) -> dict:
    import matplotlib

    matplotlib.use("Agg")  # files only: the tour never opens a window
    from .backend import to_device, to_host, tune_malloc
    from .checkpoint import BASE_CHECKPOINT, atomic_write_json, load_base, read_record, save_adapter, save_params
    from .config import GPTConfig
    from .lora import LoraConfig, count_params, delta_weight, init_lora, merge, paper_param_count
    from .model import forward
    from .plots import param_bars, singular_values, training_curves
    from .tasks import DocModuleTask
    from .train import TrainConfig, lora_value_and_grad, train

    tune_malloc()
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps if steps is not None else (30 if quick else 300)

    _rule("0. The base model")
    params, config = load_base()
    record = read_record(BASE_CHECKPOINT)
    print(f"shipped checkpoint {BASE_CHECKPOINT.name}: {count_params(params):,} parameters, {config}")
    if record:
        print(f"pretrained with `{record.get('command')}` for {record.get('steps')} steps on "
              f"{record['data']['n_bytes']:,} bytes of Python's own documentation; held-out loss "
              f"{record.get('held_out_loss', float('nan')):.3f} nats/byte")
    task = DocModuleTask(context=config.context)
    print(f"downstream task: name the standard-library module a docstring paragraph comes from "
          f"({len(task.labels)} modules; {len(task.train_examples)} train / {len(task.eval_examples)} held-out)")

    _rule("1. LoRA starts exactly at the base model (B = 0)")
    lcfg = LoraConfig(r=8, alpha=16.0, targets=("wq", "wv"))
    lora0 = init_lora(config, lcfg, seed)
    batch = to_device(task.batch(0, 8, seed), like=params["wte"])
    base_logits = forward(params, batch.x, config)
    lora_logits = forward(params, batch.x, config, lora0, lcfg)
    identical = bool(np.array_equal(base_logits, lora_logits))
    _, g = lora_value_and_grad(lora0, params, batch, config, lcfg, None)
    gA = max(float(np.abs(b[t]["A"]).max()) for b in g["blocks"] for t in b)
    gB = max(float(np.abs(b[t]["B"]).max()) for b in g["blocks"] for t in b)
    print(f"logits of base vs LoRA at init, bitwise identical: {identical}")
    print(f"at init: max |dL/dA| = {gA:g} (exactly zero: dL/dA = s·Bᵀ(...) and B = 0), max |dL/dB| = {gB:.3g}")
    if not identical or gA != 0.0 or gB == 0.0:
        raise AssertionError("zero-init claim failed")

    _rule("2. Parameter counts: |Θ| = 2 × L̂ × d_model × r")
    rows = []
    total = count_params(params)
    for targets in (("wq",), ("wq", "wv"), ("wq", "wk", "wv", "wo")):
        for r in (1, 8):
            lc = LoraConfig(r=r, alpha=r, targets=targets)
            n = count_params(init_lora(config, lc, 0))
            formula = paper_param_count(len(targets) * config.n_layer, config.d_model, r)
            rows.append((f"this model  {'+'.join(targets)}", r, f"{n:,}", f"{formula:,}", f"{100 * n / total:.3f}%"))
    gpt3 = GPTConfig.preset("gpt3-175b")
    gpt3_total = 175_000_000_000
    for targets, r in ((("wq", "wv"), 1), (("wq", "wv"), 4), (("wq", "wv"), 8), (("wq", "wk", "wv", "wo"), 4)):
        formula = paper_param_count(len(targets) * gpt3.n_layer, gpt3.d_model, r)
        n = count_params(init_lora(gpt3, LoraConfig(r=r, alpha=r, targets=targets), 0)) if r <= 4 else formula
        rows.append((f"GPT-3 175B  {'+'.join(targets)}", r, f"{n:,}", f"{formula:,}",
                     f"{100 * n / gpt3_total:.4f}%"))
    _table(rows, ("model / adapted", "r", "counted", "formula", "of all"))
    print(f"(this model has {total:,} parameters; GPT-3 175B counts come from real A, B arrays for r <= 4)")
    print(f"GPT-3 r=4 on q,v in fp16: {paper_param_count(2 * 96, 12288, 4) * 2 / 2**20:.1f} MiB "
          "(the paper's '35MB' checkpoint, vs 350 GB for the full model)")

    _rule(f"3. Fine-tuning on the downstream task: LoRA vs full ({steps} steps each)")
    zero_shot = task.evaluate(params, config)
    print(f"base model before fine-tuning: accuracy {zero_shot['accuracy']:.3f} "
          f"(chance {1 / len(task.labels):.3f}), answer loss {zero_shot['loss']:.3f}")
    eval_every = max(1, steps // 6)
    lora_tc = TrainConfig(steps=steps, batch_size=16, lr=1e-2, warmup=max(1, steps // 15), eval_every=eval_every,
                          seed=seed)
    full_tc = TrainConfig(steps=steps, batch_size=16, lr=1e-3, warmup=max(1, steps // 15), eval_every=eval_every,
                          seed=seed)
    lora_res = train(task, params, config, lora_tc, method="lora", lora=lora0, lora_config=lcfg,
                     desc=f"LoRA r={lcfg.r} on wq,wv")
    full_res = train(task, params, config, full_tc, method="full", desc="full fine-tuning")

    _rule("4. Comparison")
    adapter_path = save_adapter(out / "adapter.safetensors", lora_res.trainable, lcfg, config)
    full_path = save_params(out / "full_finetuned.safetensors", full_res.trainable, config, {"tour": True})
    lora_final, full_final = lora_res.evals[-1], full_res.evals[-1]
    ratio = full_res.seconds_per_step / lora_res.seconds_per_step
    n_lora, n_full = count_params(lora_res.trainable), count_params(full_res.trainable)
    rows = [
        ("trainable parameters", f"{n_lora:,}", f"{n_full:,}", f"{n_full / n_lora:.0f}x fewer"),
        ("checkpoint on disk", f"{adapter_path.stat().st_size / 1e3:.1f} kB",
         f"{full_path.stat().st_size / 1e3:.1f} kB",
         f"{full_path.stat().st_size / adapter_path.stat().st_size:.0f}x smaller"),
        ("optimizer state (m, v)", f"{2 * n_lora * 4 / 1e3:.1f} kB", f"{2 * n_full * 4 / 1e3:.1f} kB", ""),
        ("median step time", f"{1e3 * lora_res.seconds_per_step:.1f} ms", f"{1e3 * full_res.seconds_per_step:.1f} ms",
         f"full/LoRA = {ratio:.2f}"),
        ("held-out accuracy", f"{lora_final['accuracy']:.3f}", f"{full_final['accuracy']:.3f}",
         f"base {zero_shot['accuracy']:.3f}"),
        ("held-out answer loss", f"{lora_final['loss']:.3f}", f"{full_final['loss']:.3f}",
         f"base {zero_shot['loss']:.3f}"),
    ]
    _table(rows, ("", "LoRA", "full FT", ""))

    _rule("5. Merge: W' = W + s·B A, no extra latency")
    merged = merge(params, lora_res.trainable, lcfg)
    x = task.batch(1, 16, seed).x
    unmerged_logits = forward(params, x, config, lora_res.trainable, lcfg)
    merged_logits = forward(merged, x, config)
    diff = float(np.abs(merged_logits - unmerged_logits).max())
    merged_acc = task.evaluate(merged, config)["accuracy"]
    print(f"max |merged - unmerged| logits (float32): {diff:.2e}; merged accuracy {merged_acc:.3f} "
          f"(unmerged {lora_final['accuracy']:.3f})")
    times = {"base": [], "merged": [], "unmerged": []}
    for _ in range(5):
        for name, fn in (("base", lambda: forward(params, x, config)), ("merged", lambda: forward(merged, x, config)),
                         ("unmerged", lambda: forward(params, x, config, lora_res.trainable, lcfg))):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print("forward latency (median of 5, batch 16): " + ", ".join(
        f"{k} {1e3 * np.median(v):.1f} ms" for k, v in times.items()))
    if diff > 1e-4:
        raise AssertionError(f"merged and unmerged logits differ by {diff}")

    _rule("6. Plots")
    (
        training_curves({f"LoRA r={lcfg.r} (wq,wv)": lora_res, "full fine-tuning": full_res}, "accuracy",
                        out / "training_curves.png"),
        param_bars([("full fine-tuning (this model)", n_full)] + [
            (f"LoRA r={r} wq,wv (this model)", count_params(init_lora(config, LoraConfig(r=r, alpha=r), 0)))
            for r in (64, 8, 1)], out / "parameter_counts.png"),
    )
    ab = lora_res.trainable["blocks"][0]["wq"]
    dw_s = to_host(np.linalg.svd(delta_weight(ab, lcfg.scale), compute_uv=False))
    w_s = to_host(np.linalg.svd(params["blocks"][0]["wq"]["W"], compute_uv=False))
    singular_values({"ΔW_q (block 0)": dw_s[:32], "W_q (block 0)": w_s[:32]},
                    out / "singular_values.png", "ΔW = s·B A has rank ≤ r; W does not")
    import matplotlib.pyplot as plt

    plt.close("all")
    png = [out / "training_curves.png", out / "parameter_counts.png", out / "singular_values.png"]
    for p in png:
        print(f"wrote {p}")
    summary = {
        "zero_init_identical": identical, "lora_params": n_lora, "full_params": n_full,
        "adapter_bytes": adapter_path.stat().st_size, "full_bytes": full_path.stat().st_size,
        "step_time_ratio_full_over_lora": ratio, "lora_accuracy": lora_final["accuracy"],
        "full_accuracy": full_final["accuracy"], "base_accuracy": zero_shot["accuracy"],
        "merge_max_abs_diff": diff, "steps": steps, "seconds": round(time.time() - t_start, 1),
    }
    atomic_write_json(out / "summary.json", summary)
    print(f"\ndone in {summary['seconds']:.0f} s; everything is in {out.resolve()}/")
    return summary
