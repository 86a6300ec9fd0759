"""Why prefix tuning stays near chance in ``minilora compare`` (issue 10): train/held-out class metrics of
PreEmbed and PreLayer runs under variations of the comparison's setting.

Each run is the comparison's budget (corpus4, 250 steps of 8, 20 warm-up steps, clip 1.0) unless told
otherwise, and is scored by the task's own class metric (tasks.PromptClassTask.evaluate_class) on BOTH splits:
the training split tells fitting apart from generalising. Variants:

* l_p, l_i: prefix and infix lengths (l_i = 0: the class is read at the prompt's last real token);
* --kept-positions: real tokens keep the positions (wpe) they have without the prefix (the virtual tokens get
  no position embedding: a PreEmbed row absorbs it, a PreLayer row is replaced anyway), so l_p + l_i is no
  longer bounded by the context minus the longest example (114 of 128 tokens: at most 14 virtual tokens);
* --steps: a longer budget (the schedule spans it);
* --mlp: Li & Liang's reparametrisation (an MLP over a smaller embedding, see ``reparametrised``);
* --fit N: train on N training examples only and score how well they are fitted (with ``lora`` as reference).

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=$PWD python3 benchmarks/prefix_diagnosis.py prelayer --l_p 8 --l_i 0 \
        --lr 0.3 --seed 0 --out /tmp/run.json

Without --lr it only scores the untrained start (and the base model), which shows what the virtual tokens and
the shifted positions do to the base before any training.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np


def kept_positions(method):
    """The method with real tokens at their unshifted positions: wpe[t] for real token t, none for virtual ones."""
    from minilora.methods.virtual import check_lengths, layout, place, real_positions, replacing
    from minilora.model import Hooks, base_embed

    def apply(trainable, frozen, config, options, batch, rng):
        l_p, l_i = check_lengths(method.label, options)
        # only the T real tokens read wpe, so the virtual ones do not count against the context
        src, out = layout(method.label, batch, l_p, l_i, config.context + l_p + l_i)
        virtual = trainable["virtual"]
        first = virtual if virtual.ndim == 2 else virtual[0]  # (l_p + l_i, d)

        def embed(tokens, params):
            return place(base_embed(tokens, params), first, src)  # (B, T', d): real rows as in the base

        if virtual.ndim == 2:  # PreEmbed
            return frozen, Hooks(embed=embed, before_head=lambda x: real_positions(x, out))
        keep = replacing(src, batch.x.shape[1])
        return frozen, Hooks(embed=embed, enter_block=lambda i, x: place(x, virtual[i], keep),
                             before_head=lambda x: real_positions(x, out))

    return replace(method, name=method.name + "_kept", apply=apply)


def reparametrised(method, k: int = 64, hidden: int = 256):
    """Li & Liang (2021)'s reparametrisation: virtual = MLP(P'), P' (l, k) and a tanh MLP k -> hidden -> the
    virtual tensor's row size, trained instead of the virtual tensor (which it collapses to after training). The
    output bias starts at the method's own start (real tokens' embeddings/activations), W2 small, so the run
    starts near the plain method's start."""
    import autograd.numpy as anp

    def init(params, config, seed, options):
        start, frozen = method.init(params, config, seed, options)
        v = np.asarray(start["virtual"])  # (l, d) or (L, l, d)
        n = v.shape[-2]
        rows = np.moveaxis(v, -2, 0).reshape(n, -1)  # (n, [L *] d), n = l_p + l_i
        rng = np.random.default_rng([seed, 7])
        f32 = v.dtype
        return {"small": rng.standard_normal((n, k)).astype(f32),
                "W1": (rng.standard_normal((hidden, k)) / np.sqrt(k)).astype(f32), "b1": np.zeros(hidden, f32),
                "W2": (rng.standard_normal((rows.shape[1], hidden)) * 0.02 / np.sqrt(hidden)).astype(f32),
                "b2": rows.astype(f32)}, frozen

    def apply(trainable, frozen, config, options, batch, rng):
        h = anp.tanh(trainable["small"] @ trainable["W1"].T + trainable["b1"])  # (n, hidden)
        rows = h @ trainable["W2"].T + trainable["b2"]  # (n, [L *] d)
        n, d = rows.shape[0], config.d_model
        virtual = rows if rows.shape[1] == d else anp.transpose(anp.reshape(rows, (n, -1, d)), (1, 0, 2))
        return method.apply({"virtual": virtual}, frozen, config, options, batch, rng)

    return replace(method, name=method.name + "_mlp", init=init, apply=apply)


class FixedSubset:
    """The task's training split cut to n examples (drawn with ``seed``): batches from them only, scored on them
    (a memorisation test: can the method fit n examples at all?)."""

    name = "fixed-subset"

    def __init__(self, task, n: int, seed: int = 0):
        self.task = task
        x, y, w, at, true = task.inner.split("train")
        self.idx = np.random.default_rng(seed).choice(len(x), n, replace=False)
        self.x, self.y, self.w, self.at, self.true = x, y, w, at, true

    def _batch(self, rows):
        from minilora.tasks import Batch

        T = int(self.w[rows].nonzero()[1].max()) + 1  # trailing padding trimmed
        return Batch(self.x[rows, :T], self.y[rows, :T], self.w[rows, :T])

    def batch(self, step, batch_size, seed):
        return self._batch(self.idx[np.random.default_rng([seed, step]).integers(0, len(self.idx), batch_size)])

    def evaluate(self, *args, **kwargs):
        return {}

    def fit(self, logits_of) -> dict:
        """Class accuracy and class NLL on the n examples; logits_of: Batch -> logits (b, T, V)."""
        first = self.task.inner.first_bytes
        cand = np.concatenate([np.asarray(logits_of(self._batch(self.idx[s:s + 32])), np.float64)[
            np.arange(len(self.idx[s:s + 32])), self.at[self.idx[s:s + 32]]][:, first]
            for s in range(0, len(self.idx), 32)])  # (n, n_labels)
        log_q = cand - cand.max(1, keepdims=True)
        log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
        true = self.true[self.idx]
        return {"accuracy": float((cand.argmax(1) == true).mean()),
                "class_nll": float(-log_q[np.arange(len(true)), true].mean()), "n": len(true)}


def answer_attention(task, config, run, columns, n_rows: int = 64) -> list:
    """Each block's attention of the answer position over the prompt's real tokens, renormalised over them, on
    the first n_rows held-out examples: a list over blocks of (n, H, T) arrays (zero beyond each row's answer
    position a). run(batch, record) runs the model with Hooks.project wrapped by ``record`` (which keeps the
    projections' outputs); columns(batch) -> (B, T): the column of each real token in the sequence run."""
    from minilora.tasks import Batch

    x, y, w, at, _ = task.inner.split("eval")
    x, y, w, at = x[:n_rows], y[:n_rows], w[:n_rows], at[:n_rows]
    T = int(w.nonzero()[1].max()) + 1
    batch = Batch(x[:, :T], y[:, :T], w[:, :T])
    seen = {}

    def record(inner):
        def project(i, name, h, layer):
            out = inner(i, name, h, layer)
            if name in ("wq", "wk"):
                seen[(i, name)] = np.asarray(out, np.float64)  # (B, T', d)
            return out
        return project

    run(batch, record)
    cols, B = columns(batch), len(x)
    out = []
    for i in range(config.n_layer):
        q = seen[(i, "wq")][np.arange(B), cols[np.arange(B), at]].reshape(B, config.n_head, -1)  # (B, H, dh)
        k = seen[(i, "wk")][np.arange(B)[:, None], cols].reshape(B, T, config.n_head, -1)  # (B, T, H, dh)
        scores = np.einsum("bhe,bthe->bht", q, k) / np.sqrt(q.shape[-1])  # (B, H, T)
        scores = np.where(np.arange(T)[None, None] <= at[:, None, None], scores, -np.inf)  # the prompt only
        p = np.exp(scores - scores.max(-1, keepdims=True))
        out.append(p / p.sum(-1, keepdims=True))
    return out


def attention_change(task, params, config, setup, trainable) -> list:
    """Per block: the mean (over heads and 64 held-out rows) total-variation distance between the base's and the
    adapted model's attention of the answer position over the prompt's real tokens, renormalised over them
    (0: the same pattern, 1: disjoint). Prefix tuning: with l_i = 0 only, so that the answer position is the
    prompt's last real token, as in the base."""
    from dataclasses import replace as with_field

    from minilora.methods.virtual import layout
    from minilora.model import Hooks, frozen_project, transformer

    def base_run(batch, record):
        transformer(params, batch.x, config, Hooks(project=record(frozen_project)))

    def adapted_run(batch, record):
        run_params, hooks = setup.model(trainable, batch)
        transformer(run_params, batch.x, config, with_field(hooks, project=record(hooks.project)))

    def base_columns(batch):
        return np.broadcast_to(np.arange(batch.x.shape[1]), batch.x.shape)

    def adapted_columns(batch):
        if "l_p" not in setup.options:
            return base_columns(batch)
        src, _ = layout("", batch, setup.options["l_p"], 0, 10**9)
        return np.stack([np.argsort(s)[:batch.x.shape[1]] for s in src])  # (B, T): where each real token sits

    if setup.options.get("l_i", 0):
        raise ValueError("--attention: measured with l_i = 0 (the class read at the prompt's last real token)")

    base = answer_attention(task, config, base_run, base_columns)
    adapted = answer_attention(task, config, adapted_run, adapted_columns)
    return [float(0.5 * np.abs(a - b).sum(-1).mean()) for a, b in zip(base, adapted, strict=True)]


def scores(task, params, config, setup, trainable):
    """{"eval": class metrics, "train": class metrics} of the adapted model (setup None: the base model)."""
    from minilora.tasks import Batch  # noqa: F401  (the model callable receives tasks.Batch values)

    model = None if setup is None else (lambda b: setup.logits(trainable, b))
    return {split: task.inner.evaluate_class(params, config, split=split, model=model) for split in ("eval", "train")}


def _options(args) -> dict:
    """The method's options: the comparison's for LoRA, l_p and l_i for prefix tuning."""
    from minilora.compare import LORA_OPTIONS

    return dict(LORA_OPTIONS) if args.method == "lora" else {"l_p": args.l_p, "l_i": args.l_i}


def main(argv=None):
    from minilora.experiments import _base, get_task
    from minilora.methods import METHODS
    from minilora.train import TrainConfig, train

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("method", choices=["preembed", "prelayer", "base", "lora"],
                   help="lora: the comparison's LoRA (r=8 on W_q, W_v), a reference for --fit")
    p.add_argument("--l_p", type=int, default=8)
    p.add_argument("--l_i", type=int, default=2)
    p.add_argument("--lr", type=float, default=None, help="train at this peak lr (else: score the start only)")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kept-positions", action="store_true")
    p.add_argument("--mlp", action="store_true", help="Li & Liang's MLP reparametrisation")
    p.add_argument("--fit", type=int, default=0, help="train on this many training examples only (drawn with "
                   "seed 0) and report how well they are fitted: a memorisation test")
    p.add_argument("--attention", action="store_true", help="after training (l_i = 0), how far each block's "
                   "attention of the answer position over the prompt moved from the base's (total variation)")
    p.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    args = p.parse_args(argv)

    params, config = _base()
    task = get_task("corpus4")
    t0 = time.time()
    if args.fit:
        subset = FixedSubset(task, args.fit)
        setup = METHODS[args.method].build(params, config, seed=args.seed, **_options(args))
        tc = TrainConfig(steps=args.steps, batch_size=8, lr=args.lr, warmup=20, eval_every=0, seed=args.seed)
        res = train(subset, params, config, tc, method=setup, progress=False)
        result = {"what": f"fit {args.fit}", "method": args.method, "lr": args.lr, "steps": args.steps,
                  "seed": args.seed, **({} if args.method == "lora" else {"l_p": args.l_p, "l_i": args.l_i}),
                  "fit": subset.fit(lambda b: setup.logits(res.trainable, b))}
    elif args.method == "base":
        result = {"what": "base", **scores(task, params, config, None, None)}
    else:
        method = METHODS[args.method]
        if args.kept_positions:
            method = kept_positions(method)
        if args.mlp:
            method = reparametrised(method)
        setup = method.build(params, config, seed=args.seed, **_options(args))
        trainable = setup.trainable
        if args.lr is not None:
            tc = TrainConfig(steps=args.steps, batch_size=8, lr=args.lr, warmup=20, eval_every=0, seed=args.seed)
            res = train(task, params, config, tc, method=setup, progress=False)
            trainable = res.trainable
            loss = [h["loss"] for h in res.history]
        result = {"what": args.method, "l_p": args.l_p, "l_i": args.l_i, "lr": args.lr, "steps": args.steps,
                  "seed": args.seed, "kept_positions": args.kept_positions, "mlp": args.mlp,
                  "first_train_loss": float(np.mean(loss[:10])) if args.lr else None,
                  "last_train_loss": float(np.mean(loss[-25:])) if args.lr else None,
                  **scores(task, params, config, setup, trainable)}
        if args.attention:
            result["attention_tv"] = attention_change(task, params, config, setup, trainable)
    result.update(seconds=time.time() - t0, loadavg=list(os.getloadavg()))
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
