"""Training tasks. Each yields deterministic batches (a function of seed and step) and evaluates a model.

* ``LanguageModelTask``: next-byte prediction on the pretraining corpus (held-out loss as the metric).
* ``DocModuleTask``: a real downstream task. Read a paragraph of a standard-library docstring and name the
  module it comes from (asyncio, codecs, difflib, ...). Framed as generation: ``"<paragraph>\\nmodule: json\\n"``,
  loss on the answer bytes only. The module names have distinct first letters, so the first answer byte
  identifies the class: accuracy = argmax of p(first byte) over the candidates' first bytes.
* ``CorpusModuleTask``: the same question on docstring paragraphs the base model HAS read in pretraining (never
  with their labels): a task from its own pretraining domain. Both derive from ``PromptClassTask``, whose
  ``evaluate_class`` scores the class alone (first-byte accuracy, class NLL, first-byte NLL).
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


@lru_cache(maxsize=None)
def _module_examples(modules: tuple[str, ...], cap: int, in_text: str | None = None,
                     chars: int = DOC_CHARS) -> tuple[tuple[str, str], ...]:
    """(shown text, module) pairs: unique shown texts of one module only (ambiguous ones are dropped), at most
    ``cap`` per module in a hash order. in_text: keep only shown texts that occur in this text."""
    modules_of: dict[str, set[str]] = {}
    for name in modules:
        for para in docstring_paragraphs(name):
            modules_of.setdefault(para[:chars], set()).add(name)
    examples = []
    for name in modules:
        texts = sorted((t for t, mods in modules_of.items() if mods == {name} and (in_text is None or t in in_text)),
                       key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
        examples.extend((t, name) for t in texts[:cap])
    return tuple(examples)


def _doc_examples() -> tuple[tuple[str, str], ...]:
    """The DocModuleTask examples: paragraphs of DOC_MODULES, none of which is in the pretraining corpus."""
    return _module_examples(DOC_MODULES, MAX_PER_MODULE)


def doc_task_paragraphs() -> list[str]:
    """Every paragraph of the task's modules (used or not): none of it may reach the pretraining corpus."""
    return [p for name in DOC_MODULES for p in docstring_paragraphs(name)]


class PromptClassTask:
    """Name the class of a text, framed as generation: ``"<text>\\nmodule: <label>\\n"``, loss on the answer
    bytes only. The labels have distinct first bytes, so the first answer byte identifies the class.

    Subclasses set ``labels`` and ``train_examples`` / ``eval_examples`` ((shown text, label) pairs) and call
    ``_prepare()``. ``evaluate`` keeps the answer-byte loss the CLI and tour report; ``evaluate_class`` scores the
    class itself (the first answer byte), which is what an accuracy claim is about.
    """

    metric = "accuracy"  # the headline metric of evaluate(); higher is better
    eval_split = "held-out split"

    name = "promptclass"

    def _prepare(self):
        self.first_bytes = np.array([encode(label)[0] for label in self.labels])  # (n_labels,)
        if len(set(self.first_bytes.tolist())) != len(self.labels):
            raise AssertionError(f"{type(self).__name__} labels must have distinct first bytes")
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

    def split(self, split: str = "eval"):
        """(x, y, w, answer_at, true class indices) of the "train" or "eval" split."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        x, y, w, answer_at = self._eval if split == "eval" else self._train
        examples = self.eval_examples if split == "eval" else self.train_examples
        true = np.array([self.labels.index(lab) for _, lab in examples])  # (n,)
        return x, y, w, answer_at, true

    def _scored_batches(self, params, config, lora, lora_config, split, batch_size, model=None):
        """For each evaluation batch: (logits (b, T, V), its y, w, answer_at, true), padding trimmed. model: a
        callable Batch -> logits (b, T, V) used instead of params and lora (a method with hooks)."""
        x, y, w, answer_at, true = self.split(split)
        for s in range(0, len(x), batch_size):
            sl = slice(s, s + batch_size)
            T = int(w[sl].nonzero()[1].max()) + 1  # trim trailing padding: attention is causal, nothing changes
            if model is None:
                logits = forward(params, x[sl, :T], config, lora, lora_config)  # (b, T, V)
            else:
                logits = model(Batch(x[sl, :T], y[sl, :T], w[sl, :T]))  # (b, T, V)
            yield logits, y[sl, :T], w[sl, :T], answer_at[sl], true[sl]

    def evaluate(self, params, config, lora=None, lora_config=None, split: str = "eval", batch_size: int = 64,
                 model=None):
        """{"accuracy": ..., "loss": answer-token loss, "n": examples}. model: a callable Batch -> logits
        (b, T, V) evaluated instead of params and lora (see _scored_batches)."""
        correct, loss_sum, weight_sum, n = 0, 0.0, 0.0, 0
        for logits, y, w, answer_at, true in self._scored_batches(params, config, lora, lora_config, split,
                                                                  batch_size, model):
            rows, at, cand, yb, wb, label = to_device((np.arange(logits.shape[0]), answer_at, self.first_bytes, y, w,
                                                       true), like=logits)  # on the logits' device
            pred = logits[rows, at][:, cand].argmax(axis=-1)  # (b,): the class of the first answer byte
            correct += int((pred == label).sum())
            ws = float(w.sum())
            loss_sum += float(cross_entropy(logits, yb, wb)) * ws
            weight_sum += ws
            n += len(true)
        return {"accuracy": correct / n, "loss": loss_sum / weight_sum, "n": n}

    def evaluate_class(self, params, config, lora=None, lora_config=None, split: str = "eval",
                       batch_size: int = 64, model=None):
        """Metrics of the class alone, read from the first answer byte.

        accuracy: argmax over the candidates' first bytes; class_nll: -log p(true class) with p renormalised over
        the candidates (chance: ln n_labels); first_byte_nll: -log p(true first byte) over all 256 bytes (mass
        on bytes that start no label counts against it); loss: the answer-byte loss of ``evaluate``. model: as
        in ``evaluate``.
        """
        correct, class_nll, byte_nll, loss_sum, weight_sum, n = 0, 0.0, 0.0, 0.0, 0.0, 0
        for logits, y, w, answer_at, true in self._scored_batches(params, config, lora, lora_config, split,
                                                                  batch_size, model):
            on_device = to_device((np.arange(logits.shape[0]), answer_at, y, w), like=logits)
            first = to_host(logits[on_device[0], on_device[1]]).astype(np.float64)  # (b, V), scored on the host
            yb, wb = on_device[2:]
            log_p = first - _logsumexp(first)  # (b, V) log-probabilities of the first answer byte
            cand = first[:, self.first_bytes]  # (b, n_labels)
            log_q = cand - _logsumexp(cand)  # (b, n_labels) renormalised over the candidates
            rows = np.arange(len(true))
            correct += int((cand.argmax(axis=-1) == true).sum())
            class_nll -= float(log_q[rows, true].sum())
            byte_nll -= float(log_p[rows, self.first_bytes[true]].sum())
            ws = float(w.sum())
            loss_sum += float(cross_entropy(logits, yb, wb)) * ws
            weight_sum += ws
            n += len(true)
        return {"accuracy": correct / n, "class_nll": class_nll / n, "first_byte_nll": byte_nll / n,
                "loss": loss_sum / weight_sum, "n": n}


def _logsumexp(a):
    m = a.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(a - m).sum(axis=-1, keepdims=True))


class DocModuleTask(PromptClassTask):
    """Name the standard-library module a docstring paragraph comes from. 80/20 train/eval split by a hash of
    the text the model is shown, so no input is in both splits. None of these texts is in the pretraining
    corpus."""

    name = "docmodule"
    description = "name the standard-library module a docstring paragraph comes from"

    def __init__(self, context: int = 128, eval_fraction: float = 0.2):
        self.context = context
        self.labels = DOC_MODULES
        cut = int(round(eval_fraction * 100))
        examples = _doc_examples()
        self.train_examples = [e for e in examples if _split_bucket(e[0]) >= cut]
        self.eval_examples = [e for e in examples if _split_bucket(e[0]) < cut]
        self._prepare()


# Modules whose docstrings ARE in the pretraining corpus (its first 95%, the part the base was trained on), with
# distinct first letters and at least 59 paragraphs each.
CORPUS_CLASSES = ("configparser", "datetime", "email", "http", "ipaddress", "mailbox", "pathlib", "smtplib",
                  "threading", "urllib")
CORPUS_PER_MODULE = 100


class CorpusModuleTask(PromptClassTask):
    """DocModuleTask's question on text the base model has read: name the module of a docstring paragraph from
    the pretraining corpus (seen in pretraining, but never with its label).

    Same framing, shown length and 80/20 hash split as DocModuleTask; only paragraphs that occur in the corpus's
    training part are used, at most CORPUS_PER_MODULE per module. The task tests whether an adapter can read out
    a class the pretrained model may already represent (the paper's setting: GPT-3 has read about WikiSQL's and
    MNLI's kind of text, never their labels).
    """

    name = "corpusmodule"
    description = "name the module of a docstring paragraph the base has read in pretraining (never with its label)"

    def __init__(self, context: int = 128, eval_fraction: float = 0.2, modules: tuple[str, ...] = CORPUS_CLASSES,
                 per_module: int = CORPUS_PER_MODULE, shown_chars: int = DOC_CHARS):
        from .tokenizer import decode

        self.context = context
        self.labels = tuple(modules)
        cut = int(round(eval_fraction * 100))
        seen = decode(pretraining_tokens()[0])  # the text the base was trained on
        examples = _module_examples(self.labels, per_module, seen, shown_chars)
        self.train_examples = [e for e in examples if _split_bucket(e[0]) >= cut]
        self.eval_examples = [e for e in examples if _split_bucket(e[0]) < cut]
        self._prepare()


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

    def evaluate(self, params, config, lora=None, lora_config=None, batch_size: int = 32, model=None):
        """{"loss": held-out loss}. model: a callable Batch -> logits (b, T, V) used instead of params and lora."""
        losses = []
        for s in range(0, len(self.eval_x), batch_size):
            sl = slice(s, s + batch_size)
            logits = (forward(params, self.eval_x[sl], config, lora, lora_config) if model is None
                      else model(Batch(self.eval_x[sl], self.eval_y[sl])))  # (b, T, V)
            losses.append(float(cross_entropy(logits, to_device(self.eval_y[sl], like=logits))))
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

    def evaluate(self, params, config, lora=None, lora_config=None, model=None):
        """{"kl", "loss"}. model: a callable Batch -> logits (b, T, V) used instead of params and lora."""
        logits = (forward(params, self.eval_x, config, lora, lora_config) if model is None
                  else model(Batch(self.eval_x, self.eval_p)))  # (n_eval, T, V)
        ce = float(cross_entropy(logits, to_device(self.eval_p, like=logits)))
        return {"kl": ce - self.eval_entropy, "loss": ce}


def _softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(logits.dtype)
