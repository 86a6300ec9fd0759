"""Tokenizer, the offline corpus, and the two fine-tuning tasks built from it."""

from __future__ import annotations

import hashlib
import re
import sys

import numpy as np
import pytest
from conftest import TINY, tiny_params

from minilora import LoraConfig, delta_weight, init_lora
from minilora.data import corpus_info, pretraining_text, pretraining_tokens, sample_windows, split_tokens
from minilora.tasks import DOC_CHARS, PROMPT, DocModuleTask, RankShiftTask
from minilora.tokenizer import VOCAB_SIZE, decode, encode

# ---- tokenizer --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "def f(x):\n    return x + 1\n", "naïve café — 日本語 😀 \u0000\x7f",
                                  "".join(chr(i) for i in range(1, 0x3000, 7))])
def test_encode_decode_round_trip(text):
    ids = encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert len(ids) == len(text.encode("utf-8"))
    assert ids.min(initial=0) >= 0 and ids.max(initial=0) < VOCAB_SIZE
    assert decode(ids) == text
    if text:  # decode([]) is the bug of test_decode_empty_list
        assert decode(ids.tolist()) == text
    assert decode(ids.astype(np.uint8)) == text


def test_encode_is_utf8_bytes():
    np.testing.assert_array_equal(encode("aé"), [0x61, 0xC3, 0xA9])


def test_decode_of_a_cut_character_is_replacement():
    assert decode(encode("é")[:1]) == "\ufffd"


@pytest.mark.parametrize("ids", [[256], [-1], [0, 300], np.array([1, 2, 1000])])
def test_decode_rejects_out_of_range(ids):
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        decode(ids)


@pytest.mark.parametrize("ids", [[1.0, 2.0], np.array([65.5]), ["a"], [True, False]])
def test_decode_rejects_non_integers(ids):
    with pytest.raises(TypeError, match="integers"):
        decode(ids)


@pytest.mark.parametrize("text", [b"abc", 3, None, ["a"]])
def test_encode_rejects_non_str(text):
    with pytest.raises(TypeError, match="str"):
        encode(text)


def test_decode_empty_list():
    assert decode([]) == ""


# ---- corpus -----------------------------------------------------------------------------------------------

def test_corpus_info():
    info = corpus_info()
    assert info["n_bytes"] > 300_000
    assert re.fullmatch(r"[0-9a-f]{64}", info["sha256"])
    assert sys.version.startswith(info["python_version"] + " ") or sys.version.split()[0] == info["python_version"]
    assert isinstance(info["modules_without_text"], list)
    assert info["sha256"] == hashlib.sha256(pretraining_text().encode("utf-8")).hexdigest()
    assert info["n_bytes"] == len(pretraining_text().encode("utf-8"))


def test_pretraining_text_is_deterministic():
    from minilora import data

    first = hashlib.sha256(pretraining_text().encode("utf-8")).hexdigest()
    data._corpus.cache_clear()  # rebuild from scratch, not from the cache
    second = hashlib.sha256(pretraining_text().encode("utf-8")).hexdigest()
    assert first == second


def test_pretraining_tokens_and_windows():
    train, held = pretraining_tokens()
    tokens = encode(pretraining_text())
    assert len(train) + len(held) == len(tokens)
    np.testing.assert_array_equal(np.concatenate([train, held]), tokens)
    assert 0.04 < len(held) / len(tokens) < 0.06
    a, b = split_tokens(np.arange(10), 0.2)
    np.testing.assert_array_equal(a, np.arange(8))
    np.testing.assert_array_equal(b, [8, 9])
    x, y = sample_windows(train, 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    x2, _ = sample_windows(train, 4, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(ValueError, match="shorter"):
        sample_windows(np.arange(5), 1, 5, np.random.default_rng(0))


# ---- DocModuleTask ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def doc_task():
    return DocModuleTask(context=128)


def test_doc_task_splits_are_disjoint(doc_task):
    train = {t for t, _ in doc_task.train_examples}
    held = {t for t, _ in doc_task.eval_examples}
    assert train and held
    assert not train & held
    assert len(train) == len(doc_task.train_examples) and len(held) == len(doc_task.eval_examples)
    n = len(train) + len(held)
    assert 0.1 < len(held) / n < 0.3
    assert {lab for _, lab in doc_task.eval_examples} == set(doc_task.labels)


def test_doc_task_eval_inputs_are_not_training_inputs(doc_task):
    truncated = {t[:DOC_CHARS] for t, _ in doc_task.train_examples}
    leaked = [t[:DOC_CHARS] for t, _ in doc_task.eval_examples if t[:DOC_CHARS] in truncated]
    assert leaked == [], f"{len(leaked)} held-out inputs are also training inputs, e.g. {leaked[:2]}"


def test_doc_task_paragraphs_are_not_in_the_pretraining_corpus(doc_task):
    text = pretraining_text()
    leaked = [(label, para[:80]) for para, label in doc_task.train_examples + doc_task.eval_examples
              if para in text]
    assert leaked == [], f"{len(leaked)} task paragraphs appear verbatim in the pretraining corpus: {leaked[:3]}"


def test_doc_task_eval_inputs_are_not_in_the_pretraining_corpus(doc_task):
    text = pretraining_text()
    leaked = [para[:DOC_CHARS] for para, _ in doc_task.eval_examples if para[:DOC_CHARS] in text]
    assert leaked == [], f"{len(leaked)} held-out model inputs appear in the pretraining corpus: {leaked[:2]}"


def test_doc_task_labels_have_distinct_first_bytes(doc_task):
    firsts = [encode(label)[0] for label in doc_task.labels]
    assert len(set(firsts)) == len(doc_task.labels) == 10
    np.testing.assert_array_equal(doc_task.first_bytes, firsts)


def test_doc_task_examples_fit_the_context(doc_task):
    for text, label in doc_task.train_examples + doc_task.eval_examples:
        seq = encode(text[:DOC_CHARS] + PROMPT + label + "\n")
        assert len(seq) - 1 <= doc_task.context, (label, text[:60])
    for x, y, w, _ in (doc_task._train, doc_task._eval):
        assert x.shape[1] == y.shape[1] == w.shape[1] == 128


def test_doc_task_batches_are_deterministic(doc_task):
    a, b, c = doc_task.batch(5, 8, 0), doc_task.batch(5, 8, 0), doc_task.batch(6, 8, 0)
    d = doc_task.batch(5, 8, 1)
    for f in ("x", "y", "w"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.x, c.x) and not np.array_equal(a.x, d.x)
    assert a.x.shape == a.y.shape == a.w.shape == (8, 128)
    assert a.x.dtype.kind == "i" and a.y.dtype.kind == "i"


def test_doc_task_weights_cover_exactly_the_answer(doc_task):
    x_all, y_all, w_all, answer_at = doc_task._train
    for i in range(0, len(doc_task.train_examples), 37):
        text, label = doc_task.train_examples[i]
        x, y, w = x_all[i], y_all[i], w_all[i]
        pos = np.nonzero(w)[0]
        assert set(np.unique(w[pos])) == {1.0}
        assert decode(y[pos]) == label + "\n"
        assert np.array_equal(pos, np.arange(pos[0], pos[-1] + 1)), "answer positions are contiguous"
        assert pos[0] == answer_at[i]
        # the input up to the first answer position is the prompt; the targets are the inputs shifted by one
        assert decode(x[: pos[0] + 1]) == text[:DOC_CHARS] + PROMPT
        np.testing.assert_array_equal(x[1: pos[-1] + 1], y[: pos[-1]])
    batch = doc_task.batch(0, 16, 0)
    for x, y, w in zip(batch.x, batch.y, batch.w):
        assert decode(y[w > 0]).rstrip("\n") in doc_task.labels


def test_doc_task_evaluate_shape():
    """evaluate() on a random model: accuracy in [0, 1], a finite loss, and n = number of held-out examples."""
    from minilora import GPTConfig, init_params

    task = DocModuleTask(context=128)
    config = GPTConfig(context=128, d_model=16, n_layer=1, n_head=2, d_mlp=16)
    result = task.evaluate(init_params(config, 0), config)
    assert result["n"] == len(task.eval_examples)
    assert 0.0 <= result["accuracy"] <= 1.0 and np.isfinite(result["loss"])


def test_doc_task_rejects_a_context_too_small():
    with pytest.raises(ValueError, match="does not fit the context"):
        DocModuleTask(context=TINY.context)


# ---- RankShiftTask ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rank_setup():
    params = tiny_params(0)
    return params, RankShiftTask(params, TINY, k=2, length=16, n_train=32, n_eval=16, seed=0)


def test_rank_shift_teacher_has_exact_rank_k(rank_setup):
    params, task = rank_setup
    assert task.teacher_config.r == 2
    adapted = 0
    for i, block in enumerate(task.teacher_lora["blocks"]):
        assert sorted(block) == ["wq", "wv"]
        for t, ab in block.items():
            dw = delta_weight(ab, task.teacher_config.scale)
            assert np.linalg.matrix_rank(dw) == 2, f"block {i} {t}"
            rel = np.linalg.norm(dw) / np.linalg.norm(params["blocks"][i][t]["W"])
            assert rel == pytest.approx(0.5, rel=1e-4)
            adapted += 1
    assert adapted == 2 * TINY.n_layer


def test_rank_shift_kl(rank_setup):
    params, task = rank_setup
    base = task.evaluate(params, TINY)
    assert base["kl"] > 1e-3, base
    exact = task.evaluate(params, TINY, task.teacher_lora, task.teacher_config)
    assert abs(exact["kl"]) < 1e-5, exact
    # a rank-k LoRA of our own, set to the teacher's A and B, recovers the shift too
    lcfg = LoraConfig(r=2, alpha=2.0, targets=("wq", "wv"))
    lora = init_lora(TINY, lcfg, 7)
    for mine, theirs in zip(lora["blocks"], task.teacher_lora["blocks"]):
        for t in mine:
            mine[t] = {"A": theirs[t]["A"].copy(), "B": theirs[t]["B"].copy()}
    assert abs(task.evaluate(params, TINY, lora, lcfg)["kl"]) < 1e-5
    # and at init (B = 0) it is exactly the base model
    assert task.evaluate(params, TINY, init_lora(TINY, lcfg, 0), lcfg)["kl"] == base["kl"]


def test_rank_shift_batches(rank_setup):
    _, task = rank_setup
    a, b = task.batch(3, 4, 0), task.batch(3, 4, 0)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.x.shape == (4, 16) and a.y.shape == (4, 16, TINY.vocab_size)
    np.testing.assert_allclose(a.y.sum(-1), 1.0, rtol=1e-5)
    assert not np.array_equal(task.batch(4, 4, 0).x, a.x)


def test_docstrings_are_read_from_source_without_importing():
    """The corpus and the task depend only on the Python version, never on what the process has imported."""
    import subprocess
    import sys

    code = ("import sys; from minilora.data import docstring_paragraphs; "
            "n = len(docstring_paragraphs('pdb')) + len(docstring_paragraphs('codecs')); "
            "assert n > 50, n; assert 'pdb' not in sys.modules, 'pdb was imported'; print(n)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
