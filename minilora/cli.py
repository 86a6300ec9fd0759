"""The minilora command line: pretrain, finetune, eval, generate, merge and tour.

Each subcommand is one ``@subcommand`` registration (its flags and its run function); an option every
subcommand takes is one ``GlobalOption``. ``main`` turns every error a user can cause into one line on stderr
and an exit code from EXIT_CODES; ``--debug`` or MINILORA_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .backend import THREAD_VARS  # recorded with every run: a bit-exact rerun needs the same BLAS threads

EXIT_CODES = {
    0: "success",
    1: "internal error: a bug in minilora (rerun with --debug and report the traceback)",
    2: "bad arguments or input: a wrong flag value, a missing or malformed file, an output that exists, an "
       "adapter for another base",
    3: "training diverged: a non-finite or blown-up loss, or a non-finite state (nothing bad was written)",
    4: "a file could not be read or written: disk full, no permission (an existing file is left unchanged)",
    130: "interrupted (Ctrl-C)",
}


# ---- registration: a subcommand is a name, its flags and a run function --------------------------------------

@dataclass(frozen=True)
class Subcommand:
    name: str
    summary: str
    """One line, listed by ``minilora --help``."""
    description: str
    """What ``minilora NAME --help`` says above the flags."""
    arguments: Callable[[argparse.ArgumentParser], None]
    """Declares the subcommand's flags; every flag has a help text (its default is appended)."""
    run: Callable[[argparse.Namespace, "Console"], None]
    """Validates every argument and path first, then does the work; raises on errors (main reports them)."""


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(name: str, summary: str, description: str, arguments: Callable):
    """Decorator registering ``run(args, console)`` as ``minilora NAME``."""
    def register(run):
        SUBCOMMANDS[name] = Subcommand(name, summary, description, arguments, run)
        return run
    return register


@dataclass(frozen=True)
class GlobalOption:
    """An option of every subcommand, accepted before or after its name (``minilora --quiet eval`` and
    ``minilora eval --quiet``). ``apply(value)``, if given, runs before the subcommand."""
    flags: tuple
    options: dict
    apply: Callable | None = None

    @property
    def dest(self) -> str:
        return self.options.get("dest") or self.flags[0].lstrip("-").replace("-", "_")


def _select_backend(name) -> None:
    """--backend, else $MINILORA_BACKEND, else numpy. A backend that cannot be used (CuPy missing, no GPU) ends
    the program with one line on stderr and exit status 2 (backend.select_from_args)."""
    from .backend import select_from_args

    select_from_args(argparse.Namespace(backend=name))


GLOBAL_OPTIONS = [
    GlobalOption(("--debug",), {"action": "store_true",
                                "help": "show the Python traceback of an error (also: MINILORA_DEBUG=1)"}),
    GlobalOption(("--quiet", "-q"), {"action": "store_true",
                                     "help": "print results only: no progress and no notes on stderr"}),
    GlobalOption(("--no-progress",), {"action": "store_true",
                                      "help": "no progress bar or progress lines (without a terminal, progress "
                                              "is a plain line every tenth of a run)"}),
    GlobalOption(("--backend",), {"choices": ("numpy", "cupy"), "default": None,
                                  "help": "array backend: numpy (CPU) or cupy (NVIDIA GPU); default "
                                          "$MINILORA_BACKEND, else numpy"}, apply=_select_backend),
]


class Console:
    """Where a subcommand writes: results on stdout, notes on stderr (not with --quiet)."""

    def __init__(self, args):
        self.command = args.command
        self.quiet = args.quiet
        self.progress = not (args.quiet or args.no_progress)  # True: a bar on a terminal, plain lines elsewhere

    def out(self, text: str = "") -> None:
        print(text, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"minilora {self.command}: note: {text}", file=sys.stderr, flush=True)


# ---- shared flags --------------------------------------------------------------------------------------------

def _base_flag(p):
    p.add_argument("--base", metavar="PARAMS", default=None,
                   help="base parameters, a minilora params file (default: the shipped checkpoint "
                        "minilora/assets/base.safetensors)")


def _overwrite_flag(p):
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist (refused otherwise)")


def _inspect_flags(p, nonfinite: bool = True):
    p.add_argument("--allow-base-mismatch", action="store_true",
                   help="use an adapter (or method file) even if it records another base than the one given")
    if nonfinite:
        p.add_argument("--allow-nonfinite", action="store_true",
                       help="load files holding NaN/inf values (to inspect a broken file; refused otherwise)")


def _training_flags(p, *, steps, lr, warmup, every, weight_decay=0.0):
    """The TrainConfig flags, shared by pretrain and finetune (each with its own defaults)."""
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate (after warm-up, then cosine decay)")
    p.add_argument("--warmup", type=int, default=warmup, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW's decoupled weight decay")
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip; 0 turns clipping off")
    p.add_argument("--eval-every", type=int, default=every, help="evaluate every this many steps (0: at the end)")
    p.add_argument("--checkpoint-every", type=int, default=every,
                   help="write the training state every this many steps (0: at the end)")
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, batch order and dropout masks")
    p.add_argument("--blowup-factor", type=float, default=10.0,
                   help="stop when the loss exceeds this many times the mean loss of the first 5 steps; 0 = off")


def _train_config(args):
    from .train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                       weight_decay=args.weight_decay, clip=args.clip, eval_every=args.eval_every, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, blowup_factor=args.blowup_factor)


# ---- loading what a command works on ---------------------------------------------------------------------------

@dataclass
class Loaded:
    """Parameters read from a file, with where they came from."""
    params: dict
    config: object
    label: str
    fingerprint: str
    merged: list


def _load_params(path, label: str, args) -> Loaded:
    from .checkpoint import load_params, params_provenance
    from .provenance import fingerprint, short

    params, config = load_params(path, allow_nonfinite=getattr(args, "allow_nonfinite", False))
    fp = fingerprint(params)
    return Loaded(params, config, f"{label} {path} [fingerprint {short(fp)}]", fp, params_provenance(path)["merged"])


def _load_base(args) -> Loaded:
    from .checkpoint import BASE_CHECKPOINT

    if args.base:
        return _load_params(args.base, "base", args)
    return _load_params(BASE_CHECKPOINT, "the shipped base", args)


def _load_adapter(path, onto: Loaded, args, console: Console):
    """(lora, lora_config) from ``path``, refused if it belongs to another base than ``onto`` or is already
    merged into it (unless --allow-base-mismatch)."""
    from .checkpoint import adapter_base, load_adapter
    from .provenance import check_base, fingerprint

    lora, lcfg = load_adapter(path, onto.config, allow_nonfinite=getattr(args, "allow_nonfinite", False))
    allow = args.allow_base_mismatch
    if not allow and any(m["adapter_sha256"] == fingerprint(lora) for m in onto.merged):
        raise ValueError(f"--adapter {path}: {onto.label} already contains this adapter (it was merged in); "
                         "applying it again would add s·B A twice. Use the merged file alone, or the adapter on "
                         "the base it was merged into")
    recorded = adapter_base(path)
    if recorded is None:
        console.note(f"adapter {path} records no base fingerprint (saved by an older minilora): "
                     "it cannot be checked against the base")
    check_base(recorded, onto.fingerprint, f"--adapter {path}", allow, "pass --allow-base-mismatch to use it anyway",
               given=onto.label)
    return lora, lcfg


def _model(args, console: Console):
    """(base, model, lora, lora_config): the base (--base or shipped), what is evaluated (--params or the base),
    and the adapter (--adapter) applied to it."""
    base = _load_base(args)
    model = _load_params(args.params, "--params", args) if args.params else base
    lora, lcfg = _load_adapter(args.adapter, model, args, console) if args.adapter else (None, None)
    return base, model, lora, lcfg


def _task(name, params, config, seed=0, room: int = 0):
    """The task; ``room``: positions of the context left free for a method's virtual tokens (prefix tuning)."""
    from .tasks import DocModuleTask, RankShiftTask

    if name == "docmodule":
        return DocModuleTask(context=config.context - room)
    if name == "rankshift":
        return RankShiftTask(params, config, seed=seed)
    raise ValueError(f"--task must be 'docmodule' or 'rankshift', got {name!r}")


def _describe_lora(lcfg) -> str:
    layers = "all blocks" if lcfg.layers is None else f"blocks {','.join(map(str, lcfg.layers))}"
    return (f"LoRA r={lcfg.r} alpha={lcfg.alpha:g}{' (rsLoRA)' if lcfg.use_rslora else ''} on "
            f"{','.join(lcfg.targets)} of {layers}")


def _scores(metrics: dict, base: dict | None, chance) -> str:
    """'accuracy 0.452 (base 0.122, chance 0.100), loss 1.234 (base 2.345)'."""
    parts = []
    for k, v in metrics.items():
        if k in ("step", "n"):
            continue
        extra = [f"base {base[k]:.3f}"] if base and k in base else []
        if k == "accuracy" and chance is not None:
            extra.append(f"chance {chance:.3f}")
        parts.append(f"{k} {v:.3f}" + (f" ({', '.join(extra)})" if extra else ""))
    return ", ".join(parts)


def _below_chance(metrics: dict, chance) -> str | None:
    if chance is not None and "accuracy" in metrics and metrics["accuracy"] < chance:
        return (f"below chance: accuracy {metrics['accuracy']:.3f} is under the {chance:.3f} of a uniform guess; "
                "the model is worse than guessing")
    return None


# ---- pretrain --------------------------------------------------------------------------------------------------

def _pretrain_flags(p):
    from .config import PRESETS

    p.add_argument("--preset", default="base", choices=[n for n in PRESETS if n != "gpt3-175b"],
                   help="model shape (see minilora.config.PRESETS)")
    _training_flags(p, steps=3000, lr=3e-3, warmup=100, every=250, weight_decay=0.01)
    p.add_argument("--out", default="base.safetensors",
                   help="where to write the parameters; the JSON record goes beside it, with the suffix .json")
    p.add_argument("--state", default=None, help="training-state file for periodic checkpoints (default: none)")
    p.add_argument("--resume", default=None, help="training-state file to resume from (default: start afresh)")
    _overwrite_flag(p)


@subcommand("pretrain", "train the base model on the offline corpus (how the shipped checkpoint was made)",
            "Train a model of --preset from a random initialisation on the pretraining corpus (the paragraphs of "
            "Python's own documentation, nothing downloaded), with full fine-tuning of every parameter. Writes "
            "the parameters (--out) and a JSON record of the run beside them.", _pretrain_flags)
def cmd_pretrain(args, console):
    from . import __version__
    from .checkpoint import atomic_write_json, save_params
    from .config import GPTConfig
    from .data import corpus_info
    from .model import init_params
    from .paths import check_inputs, check_outputs
    from .tasks import LanguageModelTask
    from .train import train

    config = GPTConfig.preset(args.preset)
    tc = _train_config(args)
    out, record_path = Path(args.out), Path(args.out).with_suffix(".json")
    check_inputs({"--resume": args.resume})
    check_outputs({"--out (the parameters)": out, "the JSON record (--out with the suffix .json)": record_path,
                   **({"--state (the training state)": args.state} if args.state else {})},
                  {"--resume (the state resumed from)": args.resume}, overwrite=args.overwrite,
                  may_exist=[args.state] if args.state and args.resume else [])
    task = LanguageModelTask(context=config.context)
    t0 = time.time()
    result = train(task, init_params(config, args.seed), config, tc, method="full", checkpoint=args.state,
                   resume=args.resume, desc="pretraining", progress=console.progress)
    record = {
        "command": "minilora " + " ".join(shlex.quote(a) for a in args.argv),
        "config": config.to_dict(), "train_config": tc.to_dict(), "data": corpus_info(), "steps": tc.steps,
        "final_train_loss": float(np.mean([h["loss"] for h in result.history[-50:]])),
        "held_out_loss": result.evals[-1]["loss"], "eval_curve": result.evals, "seconds": round(time.time() - t0, 1),
        "minilora_version": __version__, "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "environment": {k: os.environ[k] for k in THREAD_VARS if k in os.environ},
    }
    saved = save_params(out, result.trainable, config, record)
    atomic_write_json(record_path, record)
    console.out(f"saved {saved} ({saved.stat().st_size / 1e6:.2f} MB) and its record {record_path}; held-out loss "
                f"{record['held_out_loss']:.4f} nats/byte, train loss {record['final_train_loss']:.4f}")


# ---- finetune --------------------------------------------------------------------------------------------------

FINETUNE_METHODS = ["lora", "full", "ft", "ft_top2", "bitfit", "preembed", "prelayer", "adapter_h", "adapter_l",
                    "lora_plus", "lora_fa"]
"""finetune --method: lora and full as always, and every other method of minilora.methods.METHODS by name."""

METHOD_FLAGS = {
    "--l-p": ("l_p", int, "prefix virtual tokens of preembed, prelayer (default: 8)"),
    "--l-i": ("l_i", int, "infix virtual tokens of preembed, prelayer (default: 0)"),
    "--ratio": ("ratio", float, "lora_plus: B's learning rate over A's (default: 16.0)"),
}
"""finetune flags that only some methods take: {flag: (option, type, help)}; refused by the others."""


def _finetune_flags(p):
    from .lora import INITS

    _base_flag(p)
    p.add_argument("--method", choices=FINETUNE_METHODS, default="lora",
                   help="lora: train an adapter (adapter.safetensors); full: every weight (params.safetensors); "
                        "any other name: that method of minilora.methods (the paper's comparison), saved as "
                        "method.safetensors")
    p.add_argument("--task", choices=["docmodule", "rankshift"], default="docmodule", help="the downstream task")
    p.add_argument("--r", type=int, default=8, help="LoRA rank (and the bottleneck of adapter_h, adapter_l)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha: the update is scaled by alpha/r")
    p.add_argument("--targets", default="wq,wv", help="comma-separated subset of wq,wk,wv,wo,mlp_in,mlp_out")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on the adapter's input, while training")
    p.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    p.add_argument("--init", choices=list(INITS), default="gaussian", help="initialisation of A (B starts at 0)")
    for flag, (key, kind, text) in METHOD_FLAGS.items():
        p.add_argument(flag, dest=key, type=kind, default=None, help=text)
    _training_flags(p, steps=300, lr=2e-3, warmup=20, every=100)
    p.add_argument("--resume", default=None, help="a train_state.safetensors to continue from (default: start afresh)")
    p.add_argument("--out", default="runs/finetune",
                   help="output folder: adapter.safetensors, params.safetensors or method.safetensors, "
                        "train_state.safetensors, metrics.json")
    _overwrite_flag(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")


def _lora_config(args):
    from .lora import LoraConfig

    return LoraConfig(r=args.r, alpha=args.alpha, targets=tuple(t.strip() for t in args.targets.split(",")),
                      dropout=args.dropout, use_rslora=args.rslora, init=args.init)


@subcommand("finetune", "fine-tune the base model with LoRA, fully, or by another method on a downstream task",
            "Fine-tune --base (default: the shipped base) on --task, with a LoRA adapter (--method lora: only A "
            "and B are trained, the base stays frozen), every weight (--method full), or any other method of the "
            "paper's comparison (--method ft, ft_top2, bitfit, preembed, prelayer, adapter_h, adapter_l, "
            "lora_plus, lora_fa: a method file holding what it trained, read by 'eval --method-file'). Every "
            "output path is checked before the first step; existing outputs need --overwrite. Prints a summary.",
            _finetune_flags)
def cmd_finetune(args, console):
    from .checkpoint import atomic_write_json
    from .lora import init_lora
    from .paths import check_inputs, check_outputs
    from .train import train

    if args.method not in ("lora", "full"):
        return _finetune_method(args, console)
    _refuse_method_flags(args, "--method lora (r, alpha, targets, ...)" if args.method == "lora" else
                         "--method full", {})
    tc = _train_config(args)
    lcfg = _lora_config(args) if args.method == "lora" else None
    out = Path(args.out)
    trained_file = out / ("adapter.safetensors" if lcfg else "params.safetensors")
    state = out / "train_state.safetensors"
    check_inputs({"--base": args.base, "--resume": args.resume})
    check_outputs({f"the {'adapter' if lcfg else 'parameters'} (in --out)": trained_file,
                   "the training state (in --out)": state, "the metrics (in --out)": out / "metrics.json"},
                  {"--base": args.base, "--resume (the state resumed from)": args.resume},
                  overwrite=args.overwrite, may_exist=[args.resume])
    base = _load_base(args)
    lora = init_lora(base.config, lcfg, args.seed) if lcfg else None  # checks that the adapter fits this base
    task = _task(args.task, base.params, base.config, args.seed)
    t0 = time.time()
    result = train(task, base.params, base.config, tc, method=args.method, lora=lora, lora_config=lcfg,
                   checkpoint=state, resume=args.resume, progress=console.progress)
    seconds = time.time() - t0
    path = _save_finetuned(trained_file, result.trainable, lcfg, base, args.task)
    base_metrics = task.evaluate(base.params, base.config)
    summary = _finetune_summary(args, result, path, state, base_metrics, getattr(task, "chance", None), seconds)
    atomic_write_json(out / "metrics.json", {**summary, "history": result.history, "evals": result.evals})
    what = _describe_lora(lcfg) if lcfg else "full fine-tuning of every weight"
    console.out(json.dumps(summary, indent=2) if args.json else _finetune_text(summary, what, base))


def _refuse_method_flags(args, what: str, accepted) -> None:
    """A METHOD_FLAGS flag given to a method whose options do not include it is an error, not ignored."""
    from .methods import METHODS

    for flag, (key, _, _) in METHOD_FLAGS.items():
        if getattr(args, key) is not None and key not in accepted:
            takers = ", ".join(name for name, m in METHODS.items() if key in m.defaults)
            raise ValueError(f"{flag} is not an option of {what}; it is for --method {takers}")


def _method_options(args, method) -> dict:
    """The options of ``method`` that the flags give (the others keep the method's defaults)."""
    _refuse_method_flags(args, f"--method {method.name} (its options: {sorted(method.defaults) or 'none'})",
                         method.defaults)
    given = {"r": args.r, "alpha": args.alpha, "targets": [t.strip() for t in args.targets.split(",")],
             "dropout": args.dropout, "use_rslora": args.rslora, "init": args.init,
             **{key: getattr(args, key) for key, _, _ in METHOD_FLAGS.values()}}
    return {k: v for k, v in given.items() if k in method.defaults and v is not None}


def _finetune_method(args, console):
    """finetune --method NAME for a method of minilora.methods: trains setup.trainable, writes a method file."""
    from .checkpoint import atomic_write_json
    from .methods import METHODS, save_method
    from .paths import check_inputs, check_outputs
    from .train import train

    method = METHODS[args.method]
    tc = _train_config(args)
    options = _method_options(args, method)
    out = Path(args.out)
    trained_file, state = out / "method.safetensors", out / "train_state.safetensors"
    check_inputs({"--base": args.base, "--resume": args.resume})
    check_outputs({"the method file (in --out)": trained_file, "the training state (in --out)": state,
                   "the metrics (in --out)": out / "metrics.json"},
                  {"--base": args.base, "--resume (the state resumed from)": args.resume},
                  overwrite=args.overwrite, may_exist=[args.resume])
    base = _load_base(args)
    setup = method.build(base.params, base.config, seed=args.seed, **options)  # checks the options on this base
    task = _task(args.task, base.params, base.config, args.seed, _virtual_room(setup))
    t0 = time.time()
    result = train(task, base.params, base.config, tc, method=setup, checkpoint=state, resume=args.resume,
                   progress=console.progress)
    seconds = time.time() - t0
    path = save_method(trained_file, setup, result.trainable)
    base_metrics = task.evaluate(base.params, base.config)
    summary = {**_finetune_summary(args, result, path, state, base_metrics, getattr(task, "chance", None), seconds),
               "options": setup.json_options(), "paper_count": setup.paper_count()}
    atomic_write_json(out / "metrics.json", {**summary, "history": result.history, "evals": result.evals})
    console.out(json.dumps(summary, indent=2) if args.json else _finetune_text(summary, _describe_method(setup), base))


def _virtual_room(setup) -> int:
    """l_p + l_i for prefix tuning (its virtual tokens lengthen every sequence), else 0."""
    return int(setup.options.get("l_p", 0)) + int(setup.options.get("l_i", 0))


def _describe_method(setup) -> str:
    options = ", ".join(f"{k}={v}" for k, v in setup.json_options().items())
    return f"{setup.method.label} ({setup.method.trains}{'; ' + options if options else ''})"


def _save_finetuned(path, trainable, lcfg, base: Loaded, task_name):
    from .checkpoint import save_adapter, save_params

    if lcfg is not None:
        return save_adapter(path, trainable, lcfg, base.config, base=base.fingerprint)
    return save_params(path, trainable, base.config, {"finetuned_on": task_name}, base=base.fingerprint)


def _finetune_summary(args, result, path, state, base_metrics, chance, seconds) -> dict:
    from .lora import count_params

    losses = [h["loss"] for h in result.history]
    return {"method": args.method, "task": args.task, "trainable_params": count_params(result.trainable),
            "file": str(path), "file_bytes": path.stat().st_size, "train_state": str(state),
            "final": result.evals[-1] if result.evals else None, "base": base_metrics, "chance": chance,
            "train_loss_first_last": [float(np.mean(losses[:10])), float(np.mean(losses[-10:]))],
            "steps": result.opt_state["step"], "seconds": round(seconds, 1),
            "seconds_per_step": result.seconds_per_step}


def _finetune_text(s: dict, what: str, base: Loaded) -> str:
    from .lora import count_params

    total = count_params(base.params)
    first, last = s["train_loss_first_last"]
    lines = [
        f"fine-tuned  {what} of {base.label}",
        f"trained     {s['trainable_params']:,} parameters ({100 * s['trainable_params'] / total:.2f}% of "
        f"{total:,}) for {s['steps']} steps on {s['task']}; train loss {first:.3f} -> {last:.3f} "
        "(mean of the first / last 10 steps)",
        f"held out    {_scores(s['final'], s['base'], s['chance'])}" if s["final"] is not None else
        f"held out    not evaluated: this task's evaluate cannot run {s['method']} (it needs the method's hooks)",
        f"time        {s['seconds']:.1f} s, {1e3 * s['seconds_per_step']:.0f} ms per step (median)",
        f"wrote       {s['file']} ({s['file_bytes'] / 1e3:.1f} kB), {s['train_state']}, "
        f"{Path(s['file']).parent / 'metrics.json'}",
    ]
    below = s["final"] is not None and _below_chance(s["final"], s["chance"])
    return "\n".join(lines + ([below] if below else []))


# ---- eval ------------------------------------------------------------------------------------------------------

def _eval_flags(p):
    _base_flag(p)
    p.add_argument("--adapter", default=None, help="a minilora adapter to apply (default: none)")
    p.add_argument("--params", default=None,
                   help="fine-tuned or merged parameters to evaluate instead of the base (default: the base)")
    p.add_argument("--method-file", default=None,
                   help="a method file (finetune --method NAME: method.safetensors) to evaluate on --base "
                        "(default: none; not with --adapter or --params)")
    p.add_argument("--task", choices=["docmodule", "rankshift"], default="docmodule", help="the task to evaluate on")
    p.add_argument("--seed", type=int, default=0, help="seed of the rankshift task's teacher")
    _inspect_flags(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")


@subcommand("eval", "evaluate the base model, an adapter, fine-tuned parameters or a method file on a task",
            "Evaluate --params (default: the base) with --adapter (default: none), or a --method-file on the "
            "base, on the held-out split of --task, and print what was evaluated (files and fingerprints), the "
            "score beside the base model's and chance. An adapter or method file made for another base, or an "
            "adapter already merged into --params, is refused.",
            _eval_flags)
def cmd_eval(args, console):
    from .config import whole_number
    from .paths import check_inputs

    check_inputs({"--base": args.base, "--params": args.params, "--adapter": args.adapter,
                  "--method-file": args.method_file})
    whole_number("", "--seed", args.seed)
    if args.method_file:
        return _eval_method_file(args, console)
    base, model, lora, lcfg = _model(args, console)
    task = _task(args.task, base.params, base.config, args.seed)
    metrics = task.evaluate(model.params, model.config, lora, lcfg)
    same = model is base and lora is None
    base_metrics = metrics if same else None
    if not same and base.config == model.config:  # a --params of another shape has no base to compare with
        base_metrics = task.evaluate(base.params, base.config)
    chance = getattr(task, "chance", None)
    report = {"task": args.task, "description": task.description, "split": task.eval_split,
              "n": metrics.get("n"), "base": {"file": base.label, "sha256": base.fingerprint},
              "params": None if model is base else {"file": model.label, "sha256": model.fingerprint},
              "adapter": None if lora is None else {"file": str(args.adapter), "lora_config": lcfg.to_dict()},
              "method_file": None, "metrics": metrics, "base_metrics": base_metrics, "chance": chance,
              "below_chance": _below_chance(metrics, chance) is not None}
    console.out(json.dumps(report, indent=2) if args.json else _eval_text(report, model, lcfg, same))


def _eval_method_file(args, console):
    """eval --method-file PATH: the method file rebuilt on --base (methods.load_method), scored beside the base."""
    from .methods import load_method
    from .train import _evaluate

    given = [flag for flag, value in (("--adapter", args.adapter), ("--params", args.params)) if value]
    if given:
        raise ValueError(f"--method-file cannot be combined with {' or '.join(given)}: a method file is "
                         "evaluated on the base it was trained on (--base)")
    base = _load_base(args)
    setup, trainable = load_method(args.method_file, base.params, base.config,
                                   allow_base_mismatch=args.allow_base_mismatch, allow_nonfinite=args.allow_nonfinite)
    task = _task(args.task, base.params, base.config, args.seed, _virtual_room(setup))
    metrics = _evaluate(task, base.params, base.config, setup, trainable, None)
    if metrics is None:
        raise ValueError(f"--method-file {args.method_file}: the {args.task} task's evaluate cannot run "
                         f"{setup.method.label} (it needs the method's hooks)")
    chance = getattr(task, "chance", None)
    report = {"task": args.task, "description": task.description, "split": task.eval_split,
              "n": metrics.get("n"), "base": {"file": base.label, "sha256": base.fingerprint}, "params": None,
              "adapter": None, "method_file": {"file": str(args.method_file), "method": setup.method.name,
                                               "options": setup.json_options()},
              "metrics": metrics, "base_metrics": task.evaluate(base.params, base.config), "chance": chance,
              "below_chance": _below_chance(metrics, chance) is not None}
    what = f"method file {args.method_file} ({_describe_method(setup)}) on {base.label}"
    console.out(json.dumps(report, indent=2) if args.json else _eval_text(report, base, None, False, what))


def _eval_text(r: dict, model: Loaded, lcfg, same: bool, what: str | None = None) -> str:
    if what is None:
        what = (model.label if lcfg is None else
                f"adapter {r['adapter']['file']} ({_describe_lora(lcfg)}) on {model.label}")
    n = f", n = {r['n']}" if r["n"] is not None else ""
    lines = [f"evaluated  {what}", f"task       {r['task']}: {r['description']}; {r['split']}{n}"]
    keys = [k for k in r["metrics"] if k != "n"]
    rows = [("this model" if not same else "base model", r["metrics"])]
    if not same and r["base_metrics"] is not None:
        rows.append(("base model", r["base_metrics"]))
    if r["chance"] is not None:
        rows.append(("chance", {"accuracy": r["chance"]}))
    lines.append(f"{'':12}" + "".join(f"{k:>10}" for k in keys))
    for name, m in rows:
        lines.append((f"{name:12}" + "".join(f"{m[k]:>10.4f}" if k in m else f"{'':>10}" for k in keys)).rstrip())
    below = _below_chance(r["metrics"], r["chance"])
    return "\n".join(lines + ([below] if below else []))


# ---- generate --------------------------------------------------------------------------------------------------

def _generate_flags(p):
    _base_flag(p)
    p.add_argument("prompt", help="the text to continue (bytes: one token per UTF-8 byte)")
    p.add_argument("--adapter", default=None, help="a minilora adapter to apply (default: none)")
    p.add_argument("--params", default=None, help="fine-tuned or merged parameters to use instead of the base")
    p.add_argument("--max-new", type=int, default=80, help="bytes to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely bytes only; 0 = all")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler: the same seed gives the same text")
    p.add_argument("--echo", action="store_true", help="print the prompt followed by its continuation")
    _inspect_flags(p)


@subcommand("generate", "continue a prompt with the base model (optionally with an adapter)",
            "Continue PROMPT by --max-new bytes with --params (default: the base) and --adapter (default: none), "
            "greedily or sampled (--temperature, --top-k, --seed). Prints the continuation, or with --echo the "
            "prompt followed by it.", _generate_flags)
def cmd_generate(args, console):
    from .generate import check_sampling, generate
    from .paths import check_inputs

    check_sampling(args.max_new, args.temperature, args.top_k, args.seed)
    if not args.prompt:
        raise ValueError("prompt must not be empty")
    check_inputs({"--base": args.base, "--params": args.params, "--adapter": args.adapter})
    _, model, lora, lcfg = _model(args, console)
    text = generate(model.params, model.config, args.prompt, args.max_new, lora=lora, lora_config=lcfg,
                    temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    console.out(args.prompt + text if args.echo else text)


# ---- merge -----------------------------------------------------------------------------------------------------

def _merge_flags(p):
    _base_flag(p)
    p.add_argument("--adapter", required=True, help="the minilora adapter to fold into the base (required)")
    p.add_argument("--out", required=True, help="where to write the merged parameters (required)")
    _overwrite_flag(p)
    _inspect_flags(p, nonfinite=False)


@subcommand("merge", "fold an adapter into the base weights and save the merged parameters",
            "Write W + s·B A for every adapted matrix as a params file (--out) that runs with no extra latency. "
            "The file records the base's fingerprint and the adapter it contains, so that eval and generate "
            "refuse to apply that adapter to it a second time.", _merge_flags)
def cmd_merge(args, console):
    from .checkpoint import merge_entry, save_params
    from .lora import merge
    from .paths import check_inputs, check_outputs

    check_inputs({"--base": args.base, "--adapter": args.adapter})
    check_outputs({"--out (the merged parameters)": args.out}, {"--base": args.base, "--adapter": args.adapter},
                  overwrite=args.overwrite)
    base = _load_base(args)
    lora, lcfg = _load_adapter(args.adapter, base, args, console)
    merged = base.merged + [merge_entry(lora, lcfg, base.fingerprint, source=args.adapter)]
    out = save_params(args.out, merge(base.params, lora, lcfg), base.config, {"merged_adapter": str(args.adapter)},
                      base=base.fingerprint, merged=merged)
    console.out(f"saved merged parameters to {out}: {_describe_lora(lcfg)} folded into {base.label}")


# ---- golden --------------------------------------------------------------------------------------------------

def _golden_flags(p):
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for index.json and one .npz per case (created if "
                                                      "missing)")
    _overwrite_flag(p)


@subcommand("golden", "write framework-neutral LoRA test vectors: index.json + one .npz per case",
            "Write the golden cases (lora_linear and its VJP, merge, an attention block and the whole model with "
            "LoRA, float32 and float64) into OUT_DIR: index.json states the conventions (weight layout, which "
            "factor is A and which B, the scale, where dropout acts) and each case's op, dtype, tolerance and "
            "file; each .npz opens with numpy.load(allow_pickle=False). Existing golden files need --overwrite.",
            _golden_flags)
def cmd_golden(args, console):
    from .golden import write_golden
    from .paths import check_outputs

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"OUT_DIR: {out} exists and is not a folder")
    check_outputs({"OUT_DIR/index.json": out / "index.json"}, overwrite=args.overwrite)
    cases = json.loads(write_golden(out).read_text())["cases"]
    ops = ", ".join(sorted({c["op"] for c in cases}))
    console.out(f"wrote {len(cases)} golden cases ({ops}) to {out}; conventions and tolerances in {out / 'index.json'}")


# ---- tour ------------------------------------------------------------------------------------------------------

def _tour_flags(p):
    p.add_argument("--out", default="tour-output", help="folder for the report, plots, adapter and summary.json")
    p.add_argument("--steps", type=int, default=None,
                   help="fine-tuning steps per method (default: 300, or 30 with --quick)")
    p.add_argument("--quick", action="store_true", help="a short run (30 steps, 3 timing pairs): for a first look")
    _overwrite_flag(p)


@subcommand("tour", "the main job: the paper's claims, run end to end in a few minutes",
            "Run the paper's main claims on the shipped base: zero init, parameter counts, LoRA vs full "
            "fine-tuning (accuracy, file sizes, interleaved step times), merge. Writes report.txt (what is "
            "printed), three plots, the adapter and summary.json into --out.", _tour_flags)
def cmd_tour(args, console):
    from .tour import check_tour_args, run_tour

    check_tour_args(args.out, args.steps, 0, args.overwrite, hint="pass --overwrite to replace it")
    run_tour(out_dir=args.out, steps=args.steps, quick=args.quick, overwrite=args.overwrite,
             progress=console.progress)


# ---- compare ---------------------------------------------------------------------------------------------------

def _compare_flags(p):
    from .compare import ENTRIES

    p.add_argument("--task", choices=["corpus4", "docmodule"], default="corpus4",
                   help="the downstream task (experiments.TASKS): corpus4 is the corpus sweep's task")
    p.add_argument("--quick", action="store_true",
                   help="a check that everything runs: 6 steps, the middle lr of each grid, seeds 0 1 (a minute "
                        "or two)")
    p.add_argument("--methods", nargs="+", choices=[e.name for e in ENTRIES], default=None, metavar="METHOD",
                   help=f"the methods to compare, among {' '.join(e.name for e in ENTRIES)} (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="seeds; the lr is tuned on the first (default: 0 1 2, or 0 1 with --quick)")
    p.add_argument("--workers", type=int, default=1, help="training runs in this many parallel processes")
    p.add_argument("--out", default="compare-output",
                   help="folder for compare-TASK.md, .png and .json (-quick appended with --quick); the .json keeps "
                        "every run and is continued when the same comparison is started again")
    _overwrite_flag(p)


@subcommand("compare", "train every fine-tuning method with the same budget and compare them (Tables 1-4 analog)",
            "Train every method of minilora.methods (FT, FT-top2, BitFit, PreEmbed, PreLayer, AdapterH, AdapterL, "
            "LoRA, LoRA+, LoRA-FA) on the task from the shipped base with the same budget, a learning-rate grid per "
            "method tuned on the first seed by class NLL, then the other seeds at the chosen lr; then measure each "
            "method's training step (time relative to LoRA, interleaved; peak memory) and file size. Writes a "
            "Markdown table, a plot and the JSON of every run into --out and prints the table. An interrupted "
            "comparison resumes from its .json.", _compare_flags)
def cmd_compare(args, console):
    from .compare import comparison, markdown, run, write_outputs
    from .experiments import _load
    from .paths import check_outputs

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    sweep = comparison(args.task, quick=args.quick, methods=args.methods, seeds=args.seeds)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out: {out} exists and is not a folder")
    paths = {f"--out ({suffix})": out / f"{sweep.name}.{suffix}" for suffix in ("json", "md", "png")}
    resumable = paths["--out (json)"].is_file() and _load(paths["--out (json)"], sweep) is not None
    check_outputs(paths, overwrite=args.overwrite, may_exist=[paths["--out (json)"]] if resumable else (),
                  hint="pass --overwrite to replace it (a .json of the same comparison is continued without it)")
    if resumable:
        console.note(f"continuing the runs saved in {paths['--out (json)']}")
    out.mkdir(parents=True, exist_ok=True)
    data = run(sweep, paths["--out (json)"], workers=args.workers, log=console.note if console.progress else None)
    written = write_outputs(sweep, data, out)
    console.out(markdown(sweep, data))
    console.out(f"wrote {written['md']}, {written['png']} and {written['json']}")


# ---- the parser and main -------------------------------------------------------------------------------------

class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to a flag's help when it has a meaningful default (not None or False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "default" in text or hidden or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


DESCRIPTION = """\
minilora: LoRA (Hu et al., ICLR 2022) on a small GPT-2-style transformer, in NumPy + autograd.

Start with 'minilora tour' (a few minutes on a laptop CPU, offline). 'minilora COMMAND --help' describes each
command and its flags."""


def _epilog() -> str:
    codes = "\n".join(textwrap.fill(text, 100, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
                      for code, text in EXIT_CODES.items())
    return (f"exit codes:\n{codes}\n\nerrors are one line on stderr; --debug or MINILORA_DEBUG=1 shows the "
            "traceback.\nexamples:\n  minilora tour --quick\n  minilora finetune --r 8 --targets wq,wv --out runs/r8\n"
            "  minilora eval --adapter runs/r8/adapter.safetensors\n  minilora generate 'def ' --echo")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        autograd_version = version("autograd")
    except PackageNotFoundError:  # pragma: no cover - autograd imported from a source tree
        autograd_version = "unknown"
    return (f"minilora {__version__} (numpy {np.__version__}, autograd {autograd_version}, "
            f"Python {platform.python_version()})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minilora", description=DESCRIPTION, epilog=_epilog(),
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=_version(), help="print the version and exit")
    for option in GLOBAL_OPTIONS:
        parser.add_argument(*option.flags, **option.options)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for cmd in SUBCOMMANDS.values():
        description = textwrap.fill(cmd.description, 100, break_on_hyphens=False)
        p = sub.add_parser(cmd.name, help=cmd.summary, description=description, formatter_class=_HelpFormatter)
        cmd.arguments(p)
        group = p.add_argument_group("options of every command")
        for option in GLOBAL_OPTIONS:  # SUPPRESS: a value given before the command name is not reset here
            group.add_argument(*option.flags, **{**option.options, "default": argparse.SUPPRESS})
    return parser


def _exit_code(err: BaseException) -> int:
    from .train import TrainingDiverged

    if isinstance(err, TrainingDiverged):
        return 3
    if isinstance(err, (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError,
                        NotADirectoryError)):
        return 2
    if isinstance(err, OSError):
        return 4
    return 1


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if _exit_code(err) == 1:
        return (f"internal error (a bug in minilora): {type(err).__name__}: {text}; rerun with --debug for the "
                "traceback and report it")
    return f"{'training diverged' if _exit_code(err) == 3 else 'error'}: {text}"


def main(argv=None) -> int:
    from .backend import tune_malloc

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # argparse reports its own errors and exits with 2
    args.argv = argv
    debug = args.debug or os.environ.get("MINILORA_DEBUG", "").strip() not in ("", "0")
    console = Console(args)
    tune_malloc()
    # numpy's overflow/invalid-value warnings are not a user's business: every NaN or blow-up they hint at is
    # caught and reported by minilora's own checks. Other warnings become one-line notes. --debug shows all.
    with warnings.catch_warnings(), np.errstate(**({} if debug else {"all": "ignore"})):
        warnings.showwarning = lambda message, category, *rest: console.note(f"{category.__name__}: {message}")
        try:
            for option in GLOBAL_OPTIONS:
                if option.apply is not None:
                    option.apply(getattr(args, option.dest))
            SUBCOMMANDS[args.command].run(args, console)
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"minilora {args.command}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader of stdout went away (| head): not an error of ours
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush quiet
            return 141
        except Exception as err:
            if debug:
                raise
            print(f"minilora {args.command}: {_one_line(err)}", file=sys.stderr)
            return _exit_code(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
