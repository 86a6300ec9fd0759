"""Training tasks. Each yields deterministic batches (a function of seed and step) and evaluates a model.

* ``LanguageModelTask``: next-byte prediction on the pretraining corpus (held-out loss as the metric).
* ``DocModuleTask``: a real downstream task. Read a paragraph of a standard-library docstring and name the
  module it comes from (asyncio, codecs, difflib, ...). Framed as generation: ``"<paragraph>\\nmodule: json\\n"``,
  loss on the answer bytes only. The module names have distinct first letters, so the first answer byte
  identifies the class: accuracy = argmax of p(first byte) over the candidates' first bytes.
* ``RankShiftTask``: a synthetic task whose true shift has a known rank k. The teacher is the base model plus a
  random rank-k update of W_q and W_v in every block; the student learns the teacher's next-token
  distributions (soft targets). A LoRA of rank r >= k can represent the shift exactly; r < k cannot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .backend import to_device, to_host
from .data import docstring_paragraphs, pretraining_tokens, sample_windows
from .lora import LoraConfig, delta_weight, init_lora, merge
from .model import forward
from .ops import cross_entropy
from .tokenizer import encode

# Downstream-task modules: pure-Python, present on 3.10-3.12, and with distinct first letters.
DOC_MODULES = ("asyncio", "codecs", "difflib", "inspect", "json", "logging", "pdb", "statistics", "typing",
               "unittest")
DOC_CHARS = 96  # characters of the paragraph shown to the model
MAX_PER_MODULE = 150  # cap per class, so the largest modules do not swamp the rest
PROMPT = "\nmodule: "


@dataclass
class Batch:
    x: np.ndarray  # (B, T) input token ids
    y: np.ndarray  # (B, T) target ids, or (B, T, V) target probabilities
    w: np.ndarray | None = None  # (B, T) weights of the positions that count; None = all


def _split_bucket(text: str) -> int:
    """0..99 from a hash of the text: a split that never depends on order, seed or Python version."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100


def shown_text(paragraph: str) -> str:
    """What the model reads of a paragraph: its first DOC_CHARS characters. Splits and de-duplication use this,
    since two paragraphs that start alike are the same example to the model."""
    return paragraph[:DOC_CHARS]


@lru_cache(maxsize=1)
def _doc_examples() -> tuple[tuple[str, str], ...]:
    """(shown text, module) pairs: unique shown texts of one module only (ambiguous ones are dropped)."""
    modules_of: dict[str, set[str]] = {}
    for name in DOC_MODULES:
        for para in docstring_paragraphs(name):
            modules_of.setdefault(shown_text(para), set()).add(name)
    examples = []
    for name in DOC_MODULES:
        texts = sorted((t for t, mods in modules_of.items() if mods == {name}),
                       key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
        examples.extend((t, name) for t in texts[:MAX_PER_MODULE])
    return tuple(examples)


def doc_task_paragraphs() -> list[str]:
    """Every paragraph of the task's modules (used or not): none of it may reach the pretraining corpus."""
    return [p for name in DOC_MODULES for p in docstring_paragraphs(name)]


class DocModuleTask:
    """Name the standard-library module a docstring paragraph comes from. 80/20 train/eval split by a hash of
    the text the model is shown, so no input is in both splits."""

    name = "docmodule"
    description = "name the standard-library module a docstring paragraph comes from"
    metric = "accuracy"  # the headline metric of evaluate(); higher is better
    eval_split = "held-out split"

    def __init__(self, context: int = 128, eval_fraction: float = 0.2):
        self.context = context
        self.labels = DOC_MODULES
        cut = int(round(eval_fraction * 100))
        examples = _doc_examples()
        self.train_examples = [e for e in examples if _split_bucket(e[0]) >= cut]
        self.eval_examples = [e for e in examples if _split_bucket(e[0]) < cut]
        self.first_bytes = np.array([encode(label)[0] for label in self.labels])  # (n_labels,)
        if len(set(self.first_bytes.tolist())) != len(self.labels):
            raise AssertionError("DocModuleTask labels must have distinct first bytes")
        self._train = self._encode(self.train_examples)
        self._eval = self._encode(self.eval_examples)
        self.chance = 1.0 / len(self.labels)  # accuracy of a uniform guess among the modules

    def _encode(self, examples):
        """x, y, w arrays (n, T) and the position of the first answer byte's prediction (n,)."""
        n, T = len(examples), self.context
        x = np.zeros((n, T), np.int32)
        y = np.zeros((n, T), np.int32)
        w = np.zeros((n, T), np.float32)
        answer_at = np.zeros(n, np.int64)
        for i, (text, label) in enumerate(examples):
            prompt = encode(text + PROMPT)
            answer = encode(label + "\n")
            seq = np.concatenate([prompt, answer])  # (L,)
            if len(seq) > T + 1:
                raise ValueError(f"an example of {len(seq)} bytes does not fit the context {T}")
            L = len(seq) - 1
            x[i, :L] = seq[:-1]
            y[i, :L] = seq[1:]
            w[i, len(prompt) - 1: L] = 1.0  # the positions that predict the answer bytes
            answer_at[i] = len(prompt) - 1
        return x, y, w, answer_at

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        rng = np.random.default_rng([seed, step])
        x, y, w, _ = self._train
        idx = rng.integers(0, len(x), size=batch_size)
        return Batch(x[idx], y[idx], w[idx])

    def evaluate(self, params, config, lora=None, lora_config=None, split: str = "eval", batch_size: int = 64):
        """{"accuracy": ..., "loss": answer-token loss, "n": examples}."""
        x, y, w, answer_at = self._eval if split == "eval" else self._train
        true = np.array([self.labels.index(lab) for _, lab in
                         (self.eval_examples if split == "eval" else self.train_examples)])
        correct, loss_sum, weight_sum = 0, 0.0, 0.0
        for s in range(0, len(x), batch_size):
            sl = slice(s, s + batch_size)
            T = int(w[sl].nonzero()[1].max()) + 1  # trim trailing padding: attention is causal, nothing changes
            logits = forward(params, x[sl, :T], config, lora, lora_config)  # (b, T, V), on the weights' device
            rows, at, cand, yb, wb, label = to_device((np.arange(logits.shape[0]), answer_at[sl], self.first_bytes,
                                                       y[sl, :T], w[sl, :T], true[sl]), like=logits)
            pred = logits[rows, at][:, cand].argmax(axis=-1)  # (b,): the class of the first answer byte
            correct += int((pred == label).sum())
            ws = float(w[sl, :T].sum())
            loss_sum += float(cross_entropy(logits, yb, wb)) * ws
            weight_sum += ws
        return {"accuracy": correct / len(x), "loss": loss_sum / weight_sum, "n": len(x)}


class LanguageModelTask:
    """Next-byte prediction on the pretraining corpus; evaluation on fixed held-out windows."""

    name = "lm"
    description = "next-byte prediction on the pretraining corpus"
    metric = "loss"  # lower is better
    eval_split = "held-out windows"
    chance = None

    def __init__(self, context: int = 128, n_eval_windows: int = 64, eval_seed: int = 1234):
        self.context = context
        self.train_tokens, self.held_out_tokens = pretraining_tokens()
        self.eval_x, self.eval_y = sample_windows(self.held_out_tokens, n_eval_windows, context,
                                                  np.random.default_rng(eval_seed))

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        x, y = sample_windows(self.train_tokens, batch_size, self.context, np.random.default_rng([seed, step]))
        return Batch(x, y)

    def evaluate(self, params, config, lora=None, lora_config=None, batch_size: int = 32):
        losses = []
        for s in range(0, len(self.eval_x), batch_size):
            logits = forward(params, self.eval_x[s:s + batch_size], config, lora, lora_config)
            losses.append(float(cross_entropy(logits, to_device(self.eval_y[s:s + batch_size], like=logits))))
        return {"loss": float(np.mean(losses))}


def random_rank_adapter(config, lora_config, seed: int, relative_norm: float, params) -> dict:
    """An adapter of exact rank lora_config.r with ||s·B A||_F = relative_norm · ||W||_F for every matrix."""
    lora = to_host(init_lora(config, lora_config, seed))  # drawn and scaled on the host, moved at the end
    rng = np.random.default_rng([seed, 1])
    for i, block in enumerate(lora["blocks"]):
        for t, ab in block.items():
            ab["B"] = rng.standard_normal(ab["B"].shape).astype(ab["B"].dtype)  # (d_out, r)
            ab["A"] = rng.standard_normal(ab["A"].shape).astype(ab["A"].dtype)  # (r, d_in)
            ratio = relative_norm * np.linalg.norm(to_host(params["blocks"][i][t]["W"])) / np.linalg.norm(
                delta_weight(ab, lora_config.scale))
            ab["B"] = (ab["B"] * ratio).astype(ab["B"].dtype)
    return to_device(lora, like=params["wte"])


class RankShiftTask:
    """Match a teacher that is the base model plus a random rank-k ΔW on ``targets`` (soft targets).

    Metric: KL(teacher || student) in nats per token, on held-out windows; 0 means the shift was recovered.
    """

    name = "rankshift"
    description = "match a teacher that is the base plus a random rank-k update of W_q and W_v"
    metric = "kl"  # KL(teacher || student), lower is better; 0 = the shift recovered
    eval_split = "held-out windows"
    chance = None

    def __init__(self, params, config, k: int = 2, targets=("wq", "wv"), relative_norm: float = 0.5,
                 seed: int = 0, n_train: int = 256, n_eval: int = 32, length: int = 32):

        self.k = k
        self.teacher_config = LoraConfig(r=k, alpha=float(k), targets=tuple(targets))
        self.teacher_lora = random_rank_adapter(config, self.teacher_config, seed, relative_norm, params)
        teacher = merge(params, self.teacher_lora, self.teacher_config)
        train_tokens, held_out = pretraining_tokens()
        self.x, _ = sample_windows(train_tokens, n_train, length, np.random.default_rng([seed, 2]))
        self.eval_x, _ = sample_windows(held_out, n_eval, length, np.random.default_rng([seed, 3]))
        self.p = to_host(_softmax(forward(teacher, self.x, config)))  # (n_train, T, V), on the host like the tokens
        self.eval_p = to_host(_softmax(forward(teacher, self.eval_x, config)))  # (n_eval, T, V)
        self.eval_entropy = float(-(self.eval_p * np.log(np.maximum(self.eval_p, 1e-30))).sum(-1).mean())

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        idx = np.random.default_rng([seed, step]).integers(0, len(self.x), size=batch_size)
        return Batch(self.x[idx], self.p[idx])

    def evaluate(self, params, config, lora=None, lora_config=None):
        logits = forward(params, self.eval_x, config, lora, lora_config)
        ce = float(cross_entropy(logits, to_device(self.eval_p, like=logits)))
        return {"kl": ce - self.eval_entropy, "loss": ce}


def _softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(logits.dtype)
