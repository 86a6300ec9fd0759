"""The ``minilora`` command: pretrain, finetune, eval, generate, merge, and tour (the main job)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

# Thread counts change the order of BLAS reductions, so a bit-exact rerun needs the same settings.
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _base(args):
    from .checkpoint import load_base, load_params

    return load_params(args.base) if getattr(args, "base", None) else load_base()


def _task(name, params, config, seed=0):
    from .tasks import DocModuleTask, RankShiftTask

    if name == "docmodule":
        return DocModuleTask(context=config.context)
    if name == "rankshift":
        return RankShiftTask(params, config, seed=seed)
    raise ValueError(f"--task must be 'docmodule' or 'rankshift', got {name!r}")


def _add_training_args(p, *, steps, lr, warmup, every, weight_decay=0.0):
    """The TrainConfig flags, shared by pretrain and finetune (each with its own defaults)."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--eval-every", type=int, default=every)
    p.add_argument("--checkpoint-every", type=int, default=every)
    p.add_argument("--seed", type=int, default=0)


def _train_config(args):
    from .train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                       weight_decay=args.weight_decay, eval_every=args.eval_every, seed=args.seed,
                       checkpoint_every=args.checkpoint_every)


def cmd_pretrain(args):
    from . import __version__
    from .checkpoint import atomic_write_json, save_params
    from .config import GPTConfig
    from .data import corpus_info
    from .model import init_params
    from .tasks import LanguageModelTask
    from .train import train

    config = GPTConfig.preset(args.preset)
    task = LanguageModelTask(context=config.context)
    params = init_params(config, args.seed)
    tc = _train_config(args)
    t0 = time.time()
    result = train(task, params, config, tc, method="full", checkpoint=args.state, resume=args.resume,
                   desc="pretraining")
    record = {
        "command": "minilora " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "config": config.to_dict(),
        "train_config": tc.__dict__,
        "data": corpus_info(),
        "steps": tc.steps,
        "final_train_loss": float(np.mean([h["loss"] for h in result.history[-50:]])),
        "held_out_loss": result.evals[-1]["loss"],
        "eval_curve": result.evals,
        "seconds": round(time.time() - t0, 1),
        "minilora_version": __version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "environment": {k: os.environ[k] for k in THREAD_VARS if k in os.environ},
    }
    out = save_params(args.out, result.trainable, config, record)
    atomic_write_json(Path(args.out).with_suffix(".json"), record)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB); held-out loss {record['held_out_loss']:.4f} "
          f"nats/byte, train loss {record['final_train_loss']:.4f}")


def _lora_config(args):
    from .lora import LoraConfig

    return LoraConfig(r=args.r, alpha=args.alpha, targets=tuple(args.targets.split(",")), dropout=args.dropout,
                      use_rslora=args.rslora, init=args.init)


def cmd_finetune(args):
    from .checkpoint import atomic_write_json, save_adapter, save_params
    from .lora import count_params, init_lora
    from .train import train

    params, config = _base(args)
    task = _task(args.task, params, config, args.seed)
    tc = _train_config(args)
    out = Path(args.out)
    state = out / "train_state.safetensors"
    if args.method == "lora":
        lcfg = _lora_config(args)
        lora = init_lora(config, lcfg, args.seed)
        result = train(task, params, config, tc, method="lora", lora=lora, lora_config=lcfg, checkpoint=state,
                       resume=args.resume)
        path = save_adapter(out / "adapter.safetensors", result.trainable, lcfg, config)
    else:
        result = train(task, params, config, tc, method="full", checkpoint=state, resume=args.resume)
        path = save_params(out / "params.safetensors", result.trainable, config, {"finetuned_on": args.task})
    summary = {"method": args.method, "task": args.task, "trainable_params": count_params(result.trainable),
               "file": str(path), "file_bytes": path.stat().st_size, "final": result.evals[-1],
               "seconds_per_step": result.seconds_per_step}
    atomic_write_json(out / "metrics.json", {**summary, "history": result.history, "evals": result.evals})
    print(json.dumps(summary, indent=2))


def cmd_eval(args):
    from .checkpoint import load_adapter, load_params

    params, config = _base(args)
    lora = lcfg = None
    if args.params:
        params, config = load_params(args.params)
    if args.adapter:
        lora, lcfg = load_adapter(args.adapter, config)
    task = _task(args.task, params, config, args.seed)
    print(json.dumps(task.evaluate(params, config, lora, lcfg), indent=2))


def cmd_generate(args):
    from .checkpoint import load_adapter, load_params
    from .generate import generate

    params, config = _base(args)
    if args.params:
        params, config = load_params(args.params)
    lora = lcfg = None
    if args.adapter:
        lora, lcfg = load_adapter(args.adapter, config)
    print(generate(params, config, args.prompt, args.max_new, lora=lora, lora_config=lcfg,
                   temperature=args.temperature, seed=args.seed))


def cmd_merge(args):
    from .checkpoint import load_adapter, save_params
    from .lora import merge

    params, config = _base(args)
    lora, lcfg = load_adapter(args.adapter, config)
    out = save_params(args.out, merge(params, lora, lcfg), config, {"merged_adapter": str(args.adapter)})
    print(f"saved merged parameters to {out}")


def cmd_tour(args):
    from .tour import run_tour

    run_tour(out_dir=args.out, steps=args.steps, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    from .backend import add_backend_argument

    parser = argparse.ArgumentParser(prog="minilora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train the base model on the offline corpus (makes the shipped checkpoint)")
    p.add_argument("--preset", default="base")
    _add_training_args(p, steps=3000, lr=3e-3, warmup=100, every=250, weight_decay=0.01)
    p.add_argument("--out", default="base.safetensors", help="where to write the parameters (+ .json record)")
    p.add_argument("--state", default=None, help="training-state file for periodic checkpoints")
    p.add_argument("--resume", default=None, help="training-state file to resume from")
    add_backend_argument(p)
    p.set_defaults(func=cmd_pretrain)

    def base_arg(p):
        p.add_argument("--base", default=None, help="base parameters (default: the shipped checkpoint)")

    p = sub.add_parser("finetune", help="fine-tune the base model with LoRA or fully")
    base_arg(p)
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--task", choices=["docmodule", "rankshift"], default="docmodule")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", default="wq,wv", help="comma-separated subset of wq,wk,wv,wo,mlp_in,mlp_out")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    p.add_argument("--init", choices=["gaussian", "kaiming"], default="gaussian")
    _add_training_args(p, steps=300, lr=2e-3, warmup=20, every=100)
    p.add_argument("--resume", default=None, help="a train_state.safetensors to continue from")
    p.add_argument("--out", default="runs/finetune", help="output folder")
    add_backend_argument(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval", help="evaluate the base model, an adapter, or fine-tuned parameters on a task")
    base_arg(p)
    p.add_argument("--adapter", default=None)
    p.add_argument("--params", default=None)
    p.add_argument("--task", choices=["docmodule", "rankshift"], default="docmodule")
    p.add_argument("--seed", type=int, default=0)
    add_backend_argument(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from the base model (optionally with an adapter)")
    base_arg(p)
    p.add_argument("prompt")
    p.add_argument("--adapter", default=None)
    p.add_argument("--params", default=None)
    p.add_argument("--max-new", type=int, default=80)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    add_backend_argument(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("merge", help="fold an adapter into the base weights and save the merged parameters")
    base_arg(p)
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    add_backend_argument(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("tour", help="the main job: the paper's claims, run end to end in a few minutes")
    p.add_argument("--out", default="tour-output", help="folder for the plots, adapter and summary")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps per method")
    p.add_argument("--quick", action="store_true", help="a short run (for tests)")
    add_backend_argument(p)
    p.set_defaults(func=cmd_tour)
    return parser


def main(argv=None) -> int:
    from .backend import select_from_args, tune_malloc

    args = build_parser().parse_args(argv)
    select_from_args(args)  # --backend / MINILORA_BACKEND; one line and exit status 2 when unusable
    tune_malloc()
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"minilora {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
