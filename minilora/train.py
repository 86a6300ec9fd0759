"""One training loop for LoRA and full fine-tuning.

The difference between the two is only which argument is differentiated:

    LoRA:  value_and_grad(lora_objective)(lora, params, ...)   -> gradients for A and B; params never traced
    full:  value_and_grad(full_objective)(params, None, ...)   -> gradients for every base parameter
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from autograd import value_and_grad
from tqdm import tqdm  # plain text bars: no widget dependency in notebooks

from .config import GPTConfig
from .lora import LoraConfig
from .model import forward
from .ops import cross_entropy
from .optim import AdamW, clip_by_global_norm, lr_at
from .tree import map_leaves


class TrainingDiverged(RuntimeError):
    """The loss or the gradients stopped being finite; training stopped before applying the bad update."""


def lora_objective(lora, params, batch, config, lora_config, rng):
    """Mean cross-entropy of the adapted model. Differentiated in its first argument only: the adapter."""
    logits = forward(params, batch.x, config, lora, lora_config, rng=rng)  # (B, T, V)
    return cross_entropy(logits, batch.y, batch.w)


def full_objective(params, _unused, batch, config, lora_config, rng):
    """Mean cross-entropy of the base model, differentiated in every parameter (full fine-tuning)."""
    return cross_entropy(forward(params, batch.x, config), batch.y, batch.w)


# Built once, at import: autograd re-traces on every call, but the gradient functions themselves are fixed.
lora_value_and_grad = value_and_grad(lora_objective)
full_value_and_grad = value_and_grad(full_objective)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    """Total optimizer steps; the learning-rate schedule is laid out over this many."""
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 20
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.0
    clip: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    eval_every: int = 50
    """Evaluate on the task's held-out split every this many steps (and at the end); 0 = only at the end."""
    checkpoint_every: int = 0
    """Save the training state every this many steps when a checkpoint path is given; 0 = only at the end."""
    seed: int = 0
    """Seeds batch order and dropout masks: step s always sees the same batch and the same mask."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "warmup", "eval_every", "checkpoint_every", "seed"):
            v = getattr(self, name)
            least = 1 if name in ("steps", "batch_size") else 0
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
                raise ValueError(f"TrainConfig.{name} must be an int >= {least}, got {v!r}")
            object.__setattr__(self, name, int(v))  # numpy ints become ints: the config is saved as JSON
        for name in ("lr", "weight_decay", "clip"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0 or self.clip < 0:
            raise ValueError("TrainConfig.weight_decay and clip must be >= 0")


@dataclass
class TrainResult:
    trainable: dict
    """The trained adapter (LoRA) or the trained parameters (full)."""
    opt_state: dict
    history: list = field(default_factory=list)
    """One dict per step: step, loss, lr, grad_norm, seconds."""
    evals: list = field(default_factory=list)
    """One dict per evaluation: step and the task's metrics."""

    @property
    def seconds_per_step(self) -> float:
        times = [h["seconds"] for h in self.history[1:]] or [h["seconds"] for h in self.history]
        return float(np.median(times)) if times else float("nan")


def _finite(tree) -> bool:
    return all(bool(np.isfinite(a).all()) for a in map_leaves(lambda a: a, tree, collect=True))


def train(task, params, config: GPTConfig, train_config: TrainConfig, *, method: str = "lora",
          lora=None, lora_config: LoraConfig | None = None, checkpoint=None, resume=None,
          stop_after: int | None = None, progress: bool = True, desc: str | None = None) -> TrainResult:
    """Fine-tune on ``task``. method="lora" trains ``lora`` (params frozen); method="full" trains params.

    checkpoint: path of the training state, saved atomically every ``checkpoint_every`` steps and at the end.
    resume: path of a training state to continue from; the run then ends exactly where an uninterrupted run
    would. stop_after: stop once this many steps are done (the schedule still spans train_config.steps).
    """
    from .backend import to_device, tune_malloc
    from .checkpoint import load_train_state, save_train_state
    from .validate import expected_lora_shapes, expected_param_shapes

    tune_malloc()
    if method not in ("lora", "full"):
        raise ValueError(f"method must be 'lora' or 'full', got {method!r}")
    if method == "lora":
        if lora is None or lora_config is None:
            raise TypeError("train(method='lora') needs 'lora' (from init_lora) and 'lora_config'")
        trainable, frozen, grad_fn = lora, params, lora_value_and_grad
    else:
        trainable, frozen, grad_fn = params, None, full_value_and_grad
    optimizer = AdamW(lr=train_config.lr, weight_decay=train_config.weight_decay)
    opt_state = optimizer.init(trainable)
    history, evals = [], []
    meta = {"method": method, "train_config": asdict(train_config), "config": config.to_dict(),
            "lora_config": lora_config.to_dict() if lora_config else None, "task": getattr(task, "name", "?")}
    if resume is not None:
        expected = expected_lora_shapes(config, lora_config) if method == "lora" else expected_param_shapes(config)
        trainable, opt_state, saved = load_train_state(resume, n_blocks=config.n_layer, expected=expected,
                                                       same_run=meta)
        history, evals = saved.get("history", []), saved.get("evals", [])

    saved_at = [opt_state["step"]] if resume is not None else []  # steps whose state is on disk

    def save(step_done):
        if checkpoint is not None:
            save_train_state(checkpoint, trainable, opt_state, {**meta, "history": history, "evals": evals})
            saved_at.append(step_done)

    start = opt_state["step"]
    end = train_config.steps if stop_after is None else min(train_config.steps, stop_after)
    dropout_on = method == "lora" and lora_config.dropout > 0
    bar = tqdm(range(start, end), desc=desc or f"{method} fine-tuning", disable=not progress, leave=True,
               dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        batch = to_device(task.batch(step, train_config.batch_size, train_config.seed), like=params["wte"])
        rng = np.random.default_rng([train_config.seed, step, 1]) if dropout_on else None
        loss, grads = grad_fn(trainable, frozen, batch, config, lora_config, rng)
        loss = float(loss)
        grads, norm = clip_by_global_norm(grads, train_config.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            where = (f"; the last good state (after step {saved_at[-1]}) is in {checkpoint}"
                     if checkpoint is not None and saved_at else "; no checkpoint was saved")
            raise TrainingDiverged(
                f"step {step}: the loss is {loss} and the gradient norm {norm}; stopped before updating{where}. "
                "Lower the learning rate or check the data."
            )
        lr = lr_at(step, train_config.lr, train_config.warmup, train_config.steps)
        trainable, opt_state = optimizer.update(trainable, grads, opt_state, lr)
        history.append({"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm,
                        "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{loss:.4f}")
        done = step + 1
        if (train_config.eval_every and done % train_config.eval_every == 0) or done == train_config.steps:
            evals.append({"step": done, **_evaluate(task, params, config, method, trainable, lora_config)})
            bar.set_postfix(loss=f"{loss:.4f}", **{f"eval_{k}": f"{v:.3f}" for k, v in evals[-1].items()
                                                   if k not in ("step", "n")})
        if train_config.checkpoint_every and done % train_config.checkpoint_every == 0:
            save(done)
    bar.close()
    if not _finite(trainable):
        raise TrainingDiverged("the trained parameters are not finite")
    if not saved_at or saved_at[-1] != end:  # the loop may have just saved this very state
        save(end)
    return TrainResult(trainable, opt_state, history, evals)


def _evaluate(task, params, config, method, trainable, lora_config):
    if method == "lora":
        return task.evaluate(params, config, trainable, lora_config)
    return task.evaluate(trainable, config)
