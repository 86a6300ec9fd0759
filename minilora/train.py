"""One training loop for LoRA, full fine-tuning and every method of minilora.methods.

The difference between them is only which argument is differentiated:

    LoRA:    value_and_grad(lora_objective)(lora, params, ...)              -> gradients for A and B only
    full:    value_and_grad(full_objective)(params, None, ...)              -> gradients for every parameter
    methods: value_and_grad(method_objective)(setup.trainable, setup.frozen, ...)  -> gradients for the
             method's trainable tree only; its frozen tree (the base, LoRA-FA's A, ...) is never traced

lora_value_and_grad and full_value_and_grad compute the first two with value_and_grad_of_leaves: the same
gradients bit for bit, traced as a flat list of the trainable tree's leaves, which costs autograd less.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from autograd import value_and_grad

from .config import GPTConfig, check_fields, real_number, whole_number
from .lora import LoraConfig
from .model import forward, transformer
from .ops import cross_entropy
from .optim import AdamW, clip_by_global_norm, lr_at
from .progress import Progress
from .tree import flatten, from_leaves, leaves


class TrainingDiverged(RuntimeError):
    """The loss or the gradients stopped being finite, or the loss blew up (TrainConfig.blowup_factor), or the
    state stopped being finite; training stopped before applying the bad update or writing the bad state."""


def lora_objective(lora, params, batch, config, lora_config, rng):
    """Mean cross-entropy of the adapted model. Differentiated in its first argument only: the adapter."""
    logits = forward(params, batch.x, config, lora, lora_config, rng=rng)  # (B, T, V)
    return cross_entropy(logits, batch.y, batch.w)


def full_objective(params, _unused, batch, config, lora_config, rng):
    """Mean cross-entropy of the base model, differentiated in every parameter (full fine-tuning)."""
    return cross_entropy(forward(params, batch.x, config), batch.y, batch.w)


def method_objective(trainable, frozen, batch, config, setup, rng):
    """Mean cross-entropy of a method's model (minilora.methods: a Setup), differentiated in ``trainable``."""
    params, hooks = setup.method.apply(trainable, frozen, config, setup.options, batch, rng)
    return cross_entropy(transformer(params, batch.x, config, hooks), batch.y, batch.w)  # logits (B, T, V)


def value_and_grad_of_leaves(objective):
    """value_and_grad(objective), differentiated in its first argument, a tree, which is traced as the flat list
    of its leaves: returns a function of objective's arguments giving (value, gradients as a tree shaped like
    the first argument), the same values bit for bit as value_and_grad(objective) gives.

    Why not value_and_grad(objective) itself: autograd differentiates a nested dict level by level. Each
    params["blocks"], blocks[i], block["wq"], ... is a traced indexing, and the gradients arriving at a container
    are summed into a fresh zero copy of that whole container, so every parameter is zeroed and added once per
    level above it (up to 4: params, blocks, the block, the matrix's dict). Traced as one flat list there is a
    single level: for the bench config's full step 1.5 ms less CPU time with tune_malloc (as train() runs), 5 ms
    without, where every zero copy is fresh memory (benchmarks/README.md; about 0.5 ms for LoRA). The tree is
    rebuilt inside the trace, so the model still reads params["blocks"][i]["wq"]["W"]; the sums per leaf are the
    same, in the same order (tests/test_train.py checks the equality in float32 and float64)."""

    def of_leaves(values, tree, *rest, **kwargs):
        return objective(from_leaves(tree, values), *rest, **kwargs)  # ``tree`` (untraced): only the structure

    traced, traced_as_given = value_and_grad(of_leaves), value_and_grad(objective)

    def value_and_grad_fn(tree, *rest, **kwargs):
        values = leaves(tree)
        if not all(hasattr(v, "shape") for v in values):  # not a tree of arrays: the objective's own checks
            return traced_as_given(tree, *rest, **kwargs)   # (in forward) then say what is wrong, as before
        value, grads = traced(values, tree, *rest, **kwargs)
        return value, from_leaves(tree, grads)

    value_and_grad_fn.__signature__ = inspect.signature(objective)
    value_and_grad_fn.__doc__ = (f"(value, gradients) of {objective.__name__}, differentiated in its first "
                                 "argument (value_and_grad_of_leaves); the gradients are a tree shaped like it.")
    return value_and_grad_fn


# Built once, at import: autograd re-traces on every call, but the gradient functions themselves are fixed.
lora_value_and_grad = value_and_grad_of_leaves(lora_objective)
full_value_and_grad = value_and_grad_of_leaves(full_objective)
method_value_and_grad = value_and_grad(method_objective)


BLOWUP_REFERENCE_STEPS = 5
"""The blow-up guard's reference loss is the mean training loss of a run's first this-many steps."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    """Total optimizer steps; the learning-rate schedule is laid out over this many."""
    batch_size: int = 16
    lr: float = 1e-3
    """Peak learning rate (reached after warm-up)."""
    warmup: int = 20
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (matrices only)."""
    clip: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    eval_every: int = 50
    """Evaluate on the task's held-out split every this many steps (and at the end); 0 = only at the end."""
    checkpoint_every: int = 0
    """Save the training state every this many steps when a checkpoint path is given; 0 = only at the end."""
    seed: int = 0
    """Seeds batch order and dropout masks: step s always sees the same batch and the same mask."""
    blowup_factor: float = 10.0
    """Finite blow-up guard: stop with TrainingDiverged, before updating, at the first step whose training loss
    exceeds blowup_factor × the reference loss. The reference is the mean loss of the run's first
    BLOWUP_REFERENCE_STEPS (5) steps, taken over those done so far while fewer than 5 are (step 2 is compared
    with step 1, step 3 with the mean of steps 1-2, ...; from step 6 on with the mean of steps 1-5); a resumed
    run takes them from its saved history. 0 turns the guard off; otherwise it must be > 1. The default, 10,
    is far above batch-to-batch noise: over 120 batches of the docmodule task at batch size 1 the largest loss
    was 4.2x the smallest. It only decides when to stop, so a run may be resumed with another value."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "warmup", "eval_every", "checkpoint_every", "seed"):
            least = 1 if name in ("steps", "batch_size") else 0
            object.__setattr__(self, name, whole_number("TrainConfig", name, getattr(self, name), at_least=least))
        object.__setattr__(self, "lr", real_number("TrainConfig", "lr", self.lr, more_than=0))
        for name in ("weight_decay", "clip", "blowup_factor"):
            object.__setattr__(self, name, real_number("TrainConfig", name, getattr(self, name), at_least=0))
        if 0 < self.blowup_factor <= 1:
            raise ValueError(f"TrainConfig.blowup_factor must be 0 (off) or a finite number > 1, "
                             f"got {self.blowup_factor!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return cls(**check_fields(cls, data))


RESUMABLE_CHANGES = ("blowup_factor",)
"""TrainConfig fields a resumed run may change: they decide when to stop, not what a step computes."""


@dataclass
class TrainResult:
    trainable: dict
    """The trained adapter (LoRA), the trained parameters (full), or a method's trained tree (a Setup)."""
    opt_state: dict
    history: list = field(default_factory=list)
    """One dict per step: step, loss, lr, grad_norm, seconds."""
    evals: list = field(default_factory=list)
    """One dict per evaluation: step and the task's metrics."""

    @property
    def seconds_per_step(self) -> float:
        times = [h["seconds"] for h in self.history[1:]] or [h["seconds"] for h in self.history]
        return float(np.median(times)) if times else float("nan")


def train(task, params, config: GPTConfig, train_config: TrainConfig, *, method: str = "lora",
          lora=None, lora_config: LoraConfig | None = None, checkpoint=None, resume=None,
          stop_after: int | None = None, progress=True, desc: str | None = None) -> TrainResult:
    """Fine-tune on ``task``. method="lora" trains ``lora`` (params frozen); method="full" trains params;
    method=a minilora.methods Setup (METHODS[name].build(params, config, seed, **options)) trains
    setup.trainable with setup.frozen passed untraced, and learning-rate multipliers where the method has them
    (LoRA+). A Setup's run is evaluated on the task through the task's evaluate: with base parameters and a
    LoRA adapter when the method can be written so (Method.task_model), else (adapters, prefix tuning) with
    ``model=`` a callable Batch -> logits that runs setup.logits; a task whose evaluate takes no ``model``
    leaves such a run's ``evals`` empty.

    checkpoint: path of the training state, saved atomically every ``checkpoint_every`` steps and at the end,
    and only when every value of the parameters, m and v is finite (a good state is never replaced by a bad
    one). The state records the fingerprint of ``params`` (the frozen base, or the starting point of full
    fine-tuning). resume: path of a training state to continue from; it must come from the same run (method,
    configs, task, base); the run then ends exactly where an uninterrupted run would. stop_after: stop once this
    many steps are done (the schedule still spans train_config.steps). progress: True (a bar on a terminal or
    in Jupyter, plain lines elsewhere), False, or one of "bar", "lines", "none".
    Raises TrainingDiverged on a non-finite loss, gradient or state, or a blown-up loss (see TrainConfig);
    its message counts steps from 1, as the history does, and names the last state written.
    """
    from .backend import to_device, tune_malloc

    tune_malloc()
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    trainable, frozen, grad_fn, spec, expected = _what_to_train(method, params, config, lora, lora_config)
    name = method if isinstance(method, str) else method.method.name
    optimizer = AdamW(lr=train_config.lr, weight_decay=train_config.weight_decay)
    opt_state = optimizer.init(trainable)
    history, evals = [], []
    meta = {"method": name, "train_config": train_config.to_dict(), "config": config.to_dict(),
            "lora_config": lora_config.to_dict() if lora_config else None, "task": getattr(task, "name", "?")}
    if not isinstance(method, str):
        meta["options"] = method.json_options()
    states = _States(checkpoint, meta, expected, params)
    if resume is not None:
        trainable, opt_state, history, evals = states.resume(resume, config, train_config)

    lr_scale = None if isinstance(method, str) else method.lr_scale(trainable)
    start = opt_state["step"]
    end = train_config.steps if stop_after is None else min(train_config.steps, stop_after)
    dropout_on = (lora_config.dropout > 0 if method == "lora"
                  else not isinstance(method, str) and method.options.get("dropout", 0) > 0)
    bar = Progress(desc or f"{name} fine-tuning", start, end, progress)
    try:
        for step in range(start, end):
            t0 = time.perf_counter()
            batch = to_device(task.batch(step, train_config.batch_size, train_config.seed), like=params["wte"])
            rng = np.random.default_rng([train_config.seed, step, 1]) if dropout_on else None
            loss, grads = grad_fn(trainable, frozen, batch, config, spec, rng)
            loss = float(loss)
            grads, norm = clip_by_global_norm(grads, train_config.clip)
            if not (math.isfinite(loss) and math.isfinite(norm)):
                raise TrainingDiverged(f"step {step + 1}: the loss is {loss} and the gradient norm {norm}; stopped "
                                       f"before updating{states.where()}. Lower the learning rate or check the data.")
            _check_blowup(step, loss, history, train_config.blowup_factor, states.where(step))
            lr = lr_at(step, train_config.lr, train_config.warmup, train_config.steps)
            trainable, opt_state = optimizer.update(trainable, grads, opt_state, lr, lr_scale)
            history.append({"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm,
                            "seconds": time.perf_counter() - t0})
            done = step + 1
            if (train_config.eval_every and done % train_config.eval_every == 0) or done == train_config.steps:
                result = _evaluate(task, params, config, method, trainable, lora_config)
                if result is not None:
                    evals.append({"step": done, **result})
            bar.step(done, loss, evals[-1] if evals and evals[-1]["step"] == done else None)
            if train_config.checkpoint_every and done % train_config.checkpoint_every == 0:
                states.save(done, trainable, opt_state, history, evals)
    finally:
        bar.close()
    bad = _nonfinite(trainable, opt_state)
    if bad:
        raise TrainingDiverged(f"the trained parameters are not finite: the state holds {bad}{states.where()}")
    if states.written is None or states.written[0] != end:  # the loop may have just saved this very state
        states.save(end, trainable, opt_state, history, evals)
    return TrainResult(trainable, opt_state, history, evals)


def _what_to_train(method, params, config, lora, lora_config):
    """(trainable, frozen, gradient function, what the objective needs, {path: shape} of the trainable tree)."""
    from .methods import Setup
    from .validate import expected_lora_shapes, expected_param_shapes

    if method == "lora":
        if lora is None or lora_config is None:
            raise TypeError("train(method='lora') needs 'lora' (from init_lora) and 'lora_config'")
        return lora, params, lora_value_and_grad, lora_config, expected_lora_shapes(config, lora_config)
    if method == "full":
        return params, None, full_value_and_grad, None, expected_param_shapes(config)
    if isinstance(method, Setup):
        if lora is not None or lora_config is not None:
            raise TypeError("train(method=<Setup>): the method's options go to build(), not 'lora'/'lora_config'")
        if method.config != config:
            raise ValueError("train(method=<Setup>): the setup was built for another config than 'config'")
        if method.base is not params:
            raise ValueError("train(method=<Setup>): 'params' must be the very tree the setup was built on "
                             "(METHODS[name].build(params, ...)); its frozen part comes from that tree")
        expected = {k: tuple(np.shape(a)) for k, a in flatten(method.trainable).items()}
        return method.trainable, method.frozen, method_value_and_grad, method, expected
    raise ValueError(f"method must be 'lora', 'full' or a minilora.methods Setup "
                     f"(METHODS[name].build(params, config, seed, **options)), got {method!r}")


class _States:
    """The training states of one run on disk: resume from one, write one (only when finite), say which."""

    def __init__(self, checkpoint, meta: dict, expected: dict, params):
        self.checkpoint, self.meta, self.expected, self.params = checkpoint, meta, expected, params
        self.written = None  # (steps done, path) of the last state on disk, all of it finite
        self._base_sha256 = None

    def base_sha256(self) -> str:
        """The fingerprint of the base, computed when a state is first written or read (a device base is copied
        to the host for it, so a run without checkpoints never copies it)."""
        from .provenance import fingerprint

        if self._base_sha256 is None:
            self._base_sha256 = fingerprint(self.params)
        return self._base_sha256

    def resume(self, path, config, train_config):
        """(trainable, opt_state, history, evals) of a state saved by this same run (method, configs, base)."""
        from .checkpoint import load_train_state

        identity = {k: v for k, v in self.meta.items() if k != "train_config"}
        trainable, opt_state, saved = load_train_state(path, n_blocks=config.n_layer, expected=self.expected,
                                                       same_run=identity, base=self.base_sha256())
        _check_same_train_config(saved.get("train_config"), train_config, path)
        self.written = (opt_state["step"], path)
        return trainable, opt_state, _saved_history(saved, path), saved.get("evals", [])

    def where(self, step=None) -> str:
        """The end of a divergence message: the last state written, or that none was."""
        if self.written is None:
            return "; no training state was written" + ("" if self.checkpoint is not None else " (no checkpoint path)")
        own = "; it is the state that gave this loss" if self.written[0] == step else ""
        done, path = self.written
        return f"; the last state written (after step {done}, all values finite) is {path}{own}"

    def save(self, done, trainable, opt_state, history, evals):
        from .checkpoint import save_train_state

        if self.checkpoint is None:
            return
        bad = _nonfinite(trainable, opt_state)
        if bad:
            raise TrainingDiverged(f"after step {done}: the training state holds {bad}; it was not written"
                                   f"{self.where()}. Lower the learning rate or check the data.")
        meta = {**self.meta, "base_sha256": self.base_sha256(), "history": history, "evals": evals}
        save_train_state(self.checkpoint, trainable, opt_state, meta)
        self.written = (done, self.checkpoint)


def _check_blowup(step: int, loss: float, history: list, factor: float, where: str) -> None:
    """TrainingDiverged when ``loss`` exceeds factor × the mean loss of the run's first steps (TrainConfig)."""
    first = [h["loss"] for h in history[:BLOWUP_REFERENCE_STEPS]]
    if not factor or not first:
        return
    reference = float(np.mean(first))
    if reference > 0 and loss > factor * reference:
        steps = "step 1" if len(first) == 1 else f"steps 1-{len(first)}"
        raise TrainingDiverged(
            f"step {step + 1}: the loss {loss:.4g} is more than blowup_factor={factor:g} times the reference loss "
            f"{reference:.4g} (the mean of {steps}); stopped before updating{where}. Lower the learning rate, or "
            "change blowup_factor (0 turns this guard off)."
        )


def _nonfinite(trainable, opt_state) -> str:
    """'' when the parameters, m and v are all finite, else how many values of each are not."""
    from .validate import count_nonfinite

    counts = {}
    for name, tree in (("params", trainable), ("m", opt_state["m"]), ("v", opt_state["v"])):
        counts[name] = sum(sum(count_nonfinite(a)) for a in flatten(tree).values())
    if not any(counts.values()):
        return ""
    return f"{sum(counts.values())} non-finite values ({', '.join(f'{k} {v}' for k, v in counts.items())})"


def _check_same_train_config(saved, train_config: TrainConfig, path) -> None:
    """A resumed run must have the TrainConfig it was saved with (except RESUMABLE_CHANGES)."""
    try:
        saved = TrainConfig.from_dict(saved)  # fields added since the state was saved take their defaults
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: metadata field 'train_config': {err}") from None
    differ = [f"{f.name} ({getattr(saved, f.name)!r} there, {getattr(train_config, f.name)!r} here)"
              for f in fields(TrainConfig)
              if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(train_config, f.name)]
    if differ:
        raise ValueError(f"resume: {path} was saved by a different run: train_config differs in "
                         f"{', '.join(differ)} (a resumed run must continue the same configuration)")


def _saved_history(saved: dict, path) -> list:
    history = saved.get("history", [])
    for h in history:
        loss = h.get("loss")
        if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise ValueError(f"{path}: metadata field 'history' holds an entry whose 'loss' is not a finite "
                             f"number: {h!r}"[:300])
    return history


def _evaluate(task, params, config, method, trainable, lora_config):
    """The task's metrics for the trained state; None for a method the task cannot run (see train)."""
    from .backend import to_device

    if method == "lora":
        return task.evaluate(params, config, trainable, lora_config)
    if method == "full":
        return task.evaluate(trainable, config)
    if method.method.task_model is None:
        if "model" not in inspect.signature(task.evaluate).parameters:
            return None
        return task.evaluate(params, config, model=lambda b: method.logits(trainable, to_device(b, like=params["wte"])))
    base, lora, lcfg = method.method.task_model(trainable, method.frozen, method.options)
    return task.evaluate(base, config, lora, lcfg) if lora is not None else task.evaluate(base, config)
