"""The golden files: every case is re-derived here by paths that share no code with minilora's primitives.

1. Plain NumPy written in this file from the conventions in index.json (einsum, hand-derived VJPs; for the
   attention block and the model, a plain composition differentiated by autograd's own rules).
2. Finite differences of that plain forward (directional derivatives), for the float64 composite cases.
3. torch.autograd, when torch is installed.

A re-derivation must agree with the stored outputs to the rounding of the file's dtype (1e-7 relative for
float32 files, 1e-11 for float64), far tighter than the tolerance handed to users, so a wrong golden file cannot
pass. A test plants errors in a copy of the files and checks that the re-derivation catches every one.
"""

from __future__ import annotations

import json
import shutil

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, make_vjp

from minilora.golden import (
    ATTENTION_TARGETS,
    GOLDEN_CONFIG,
    add_golden_command,
    explicit_mask_hooks,
    golden_cases,
    main,
    npz_bytes,
    write_golden,
)
from minilora.lora import delta_weight, lora_linear
from minilora.model import attention, transformer
from minilora.tree import unflatten

try:
    from gradcheck import directional_check
except ImportError:  # pragma: no cover - run from the repository root
    from tests.gradcheck import directional_check

BOUND = {"float32": 1e-7, "float64": 1e-11}  # stored = exact rounded once to the dtype
OPS = ("lora_linear", "lora_linear_vjp", "merge", "attention_lora", "model_lora")


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    index_path = write_golden(out)
    return out, json.loads(index_path.read_text())


def load(folder, entry) -> dict:
    with np.load(folder / entry["file"], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


# ---- 1. plain NumPy, from the conventions ----------------------------------------------------------------

def np_adapted(x, W, b, A, B, s, mask=None):
    """x W^T + b + s ((x*mask) A^T) B^T, written with einsum (autograd.numpy, so it can be differentiated)."""
    xd = x if mask is None else x * mask
    u = anp.einsum("...i,ri->...r", xd, A)  # (..., r)
    return anp.einsum("...i,oi->...o", x, W) + b + s * anp.einsum("...r,or->...o", u, B)


def np_lora_linear(a):
    return {"h": np_adapted(a["x"], a["W"], a["b"], a["A"], a["B"], float(a["scale"]))}


def np_lora_linear_vjp(a):
    """By hand: dx = g W + s (g B) A, dA = s (g B)^T x, dB = s g^T (x A^T), summed over every leading dim."""
    s, x, g, W, A, B = float(a["scale"]), a["x"], a["g"], a["W"], a["A"], a["B"]
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])  # every leading dim is a row
    gB = np.einsum("no,or->nr", g2, B)
    return {"dx": (np.einsum("no,oi->ni", g2, W) + s * np.einsum("nr,ri->ni", gB, A)).reshape(x.shape),
            "dA": s * np.einsum("nr,ni->ri", gB, x2),
            "dB": s * np.einsum("no,nr->or", g2, np.einsum("ni,ri->nr", x2, A))}


def np_merge(a):
    return {"W_merged": a["W"] + float(a["scale"]) * np.einsum("or,ri->oi", a["B"], a["A"])}


def np_attention_core(q, k, v, n_head):
    Bsz, T, d = q.shape
    dh = d // n_head
    heads = lambda t: anp.transpose(anp.reshape(t, (Bsz, T, n_head, dh)), (0, 2, 1, 3))  # (B, H, T, dh)
    scores = anp.einsum("bhqd,bhkd->bhqk", heads(q), heads(k)) / np.sqrt(dh)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    e = anp.where(future, 0.0, anp.exp(anp.where(future, 0.0, scores)))  # exp(-inf) = 0 above the diagonal
    p = e / anp.sum(e, axis=-1, keepdims=True)
    o = anp.einsum("bhqk,bhkd->bhqd", p, heads(v))
    return anp.reshape(anp.transpose(o, (0, 2, 1, 3)), (Bsz, T, d))


def np_attention_block(x, a, lora, s, prefix, masks):
    """The attention sublayer with the matrices under ``prefix`` (params.wq.W, ...) and adapters lora[name]."""
    def proj(t, inp):
        A, B = lora[t]
        return np_adapted(inp, a[f"params.{prefix}{t}.W"], a[f"params.{prefix}{t}.b"], A, B, s, masks.get(t))

    o = np_attention_core(proj("wq", x), proj("wk", x), proj("wv", x), int(GOLDEN_CONFIG.n_head))
    return proj("wo", o)


def np_attention(a):
    s, targets = float(a["scale"]), ("wq", "wk", "wv", "wo")
    masks = {t: a[f"mask.{t}"] for t in targets if f"mask.{t}" in a}
    assert int(a["n_head"]) == GOLDEN_CONFIG.n_head

    def y_of(x, factors):
        return np_attention_block(x, a, dict(zip(targets, factors)), s, "", masks)

    factors = [(a[f"lora.{t}.A"], a[f"lora.{t}.B"]) for t in targets]
    dx, dfac = grad(lambda x, f: anp.sum(a["g"] * y_of(x, f)), argnum=(0, 1))(a["x"], factors)
    out = {"y": y_of(a["x"], factors), "dx": dx}
    for t, (dA, dB) in zip(targets, dfac):
        out[f"grad.{t}.A"], out[f"grad.{t}.B"] = dA, dB
    return out


def np_layer_norm(x, g, b, eps):
    mu = anp.mean(x, axis=-1, keepdims=True)
    var = anp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return g * (x - mu) / anp.sqrt(var + eps) + b


def np_gelu(x):
    return 0.5 * x * (1.0 + anp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_model_logits(a, factors, cfg=GOLDEN_CONFIG):
    """The conventions' GPT-2 forward. factors: {(i, name): (A, B)}."""
    s, T = float(a["scale"]), a["tokens"].shape[1]
    x = a["params.wte"][a["tokens"]] + a["params.wpe"][:T]
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        lora = {t: factors[(i, t)] for t in ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")}
        masks = {t: a[f"mask.{p}{t}"] for t in lora if f"mask.{p}{t}" in a}
        h = np_layer_norm(x, a[f"params.{p}ln1.g"], a[f"params.{p}ln1.b"], cfg.ln_eps)
        x = x + np_attention_block(h, a, lora, s, p, masks)
        h = np_layer_norm(x, a[f"params.{p}ln2.g"], a[f"params.{p}ln2.b"], cfg.ln_eps)

        def proj(t, inp):
            return np_adapted(inp, a[f"params.{p}{t}.W"], a[f"params.{p}{t}.b"], *lora[t], s, masks.get(t))

        x = x + proj("mlp_out", np_gelu(proj("mlp_in", h)))
    x = np_layer_norm(x, a["params.ln_f.g"], a["params.ln_f.b"], cfg.ln_eps)
    return anp.einsum("btd,vd->btv", x, a["params.wte"])


def model_factors(a, cfg=GOLDEN_CONFIG):
    return {(i, t): (a[f"lora.blocks.{i}.{t}.A"], a[f"lora.blocks.{i}.{t}.B"])
            for i in range(cfg.n_layer) for t in ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")}


def np_model(a):
    factors = model_factors(a)
    keys = list(factors)
    flat = [factors[k] for k in keys]
    dflat = grad(lambda f: anp.sum(a["g"] * np_model_logits(a, dict(zip(keys, f)))))(flat)
    out = {"logits": np_model_logits(a, factors)}
    for (i, t), (dA, dB) in zip(keys, dflat):
        out[f"grad.blocks.{i}.{t}.A"], out[f"grad.blocks.{i}.{t}.B"] = dA, dB
    return out


PLAIN = {"lora_linear": np_lora_linear, "lora_linear_vjp": np_lora_linear_vjp, "merge": np_merge,
         "attention_lora": np_attention, "model_lora": np_model}


def as_f64(arrays):
    return {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in arrays.items()}


def rederive_problems(folder, index, derive, bound=BOUND) -> list[str]:
    """Every (case, output) whose stored value differs from derive(inputs) by more than the rounding bound."""
    problems = []
    for entry in index["cases"]:
        arrays = load(folder, entry)
        assert sorted(arrays) == sorted(entry["inputs"] + entry["outputs"]), entry["name"]
        got = derive[entry["op"]](as_f64({k: arrays[k] for k in entry["inputs"]}))
        assert sorted(got) == sorted(entry["outputs"]), entry["name"]
        for name in entry["outputs"]:
            err = rel_err(got[name], arrays[name])
            if not err <= bound[entry["dtype"]]:
                problems.append(f"{entry['name']}:{name} rel {err:.3g}")
    return problems


def test_every_case_rederived_in_plain_numpy(golden):
    folder, index = golden
    assert rederive_problems(folder, index, PLAIN) == []


def test_planted_errors_in_a_golden_file_are_caught(golden, tmp_path):
    """One wrong number in any output of any op, or a wrong stored scale, fails the re-derivation."""
    folder, index = golden
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    planted = []
    for op in OPS:
        entry = next(e for e in index["cases"] if e["op"] == op and e["dtype"] == "float32")
        arrays = load(bad, entry)
        name = entry["outputs"][-1]
        flat = arrays[name].reshape(-1)
        flat[np.argmax(np.abs(flat))] *= 1 + 1e-5  # 1e-5: above float32 rounding, below a user's tolerance
        planted.append(f"{entry['name']}:{name}")
        if op == "lora_linear":
            arrays["scale"] = arrays["scale"] * (1 + 1e-6)
        (bad / entry["file"]).write_bytes(npz_bytes(arrays))
    problems = rederive_problems(bad, index, PLAIN)
    for p in planted:
        assert any(q.startswith(p) for q in problems), (p, problems)
    lin = next(e for e in index["cases"] if e["op"] == "lora_linear" and e["dtype"] == "float32")["name"]
    assert f"{lin}:h" in {q.split(" ")[0] for q in problems}


def test_composite_gradients_match_finite_differences(golden):
    """A third path with no autodiff at all: directional derivatives of the plain forward, float64 cases."""
    folder, index = golden
    rng = np.random.default_rng(0)
    for entry in index["cases"]:
        if entry["dtype"] != "float64" or entry["op"] not in ("attention_lora", "model_lora"):
            continue
        a = as_f64(load(folder, entry))
        if entry["op"] == "model_lora":
            keys = list(model_factors(a))
            x0 = [model_factors(a)[k] for k in keys]
            f = lambda fac: float(np.sum(a["g"] * np_model_logits(a, dict(zip(keys, fac)))))
            g0 = [(a[f"grad.blocks.{i}.{t}.A"], a[f"grad.blocks.{i}.{t}.B"]) for i, t in keys]
        else:
            targets = ("wq", "wk", "wv", "wo")
            masks = {t: a[f"mask.{t}"] for t in targets if f"mask.{t}" in a}
            x0 = [a["x"], [(a[f"lora.{t}.A"], a[f"lora.{t}.B"]) for t in targets]]
            f = lambda v: float(np.sum(a["g"] * np_attention_block(v[0], a, dict(zip(targets, v[1])),
                                                                    float(a["scale"]), "", masks)))
            g0 = [a["dx"], [(a[f"grad.{t}.A"], a[f"grad.{t}.B"]) for t in targets]]
        directional_check(f, x0, g0, rng, n_dirs=3, eps=1e-6, rtol=1e-6, atol=1e-8)


# ---- minilora's own float32 path: how much room the tolerances leave ---------------------------------------

def _sub(a, prefix):
    return {k[len(prefix) + 1:]: v for k, v in a.items() if k.startswith(prefix + ".")}


def minilora_float32(op, a) -> dict:
    """The case computed by minilora in the file's dtype (float32), as a user of the package would."""
    s = float(a["scale"])
    if op == "lora_linear":
        return {"h": lora_linear(a["x"], {"W": a["W"], "b": a["b"]}, {"A": a["A"], "B": a["B"]}, s)}
    if op == "lora_linear_vjp":
        f = lambda x, A, B: lora_linear(x, {"W": a["W"], "b": a["b"]}, {"A": A, "B": B}, s)
        vjp, _ = make_vjp(f, argnum=(0, 1, 2))(a["x"], a["A"], a["B"])
        return dict(zip(("dx", "dA", "dB"), vjp(a["g"])))
    if op == "merge":
        return {"W_merged": a["W"] + delta_weight({"A": a["A"], "B": a["B"]}, s).astype(a["W"].dtype)}
    params, lora = unflatten(_sub(a, "params")), unflatten(_sub(a, "lora"))
    if op == "attention_lora":
        masks = {(0, t): m for t, m in _sub(a, "mask").items()}
        y_of = lambda x, lora: attention(x, 0, params, explicit_mask_hooks([lora], s, masks), GOLDEN_CONFIG)
        dx, dlora = grad(lambda x, lora: anp.sum(a["g"] * y_of(x, lora)), argnum=(0, 1))(a["x"], lora)
        out = {"y": y_of(a["x"], lora), "dx": dx}
        out.update({f"grad.{t}.{n}": dlora[t][n] for t in ATTENTION_TARGETS for n in "AB"})
        return out
    masks = {(int(k.split(".")[1]), k.split(".")[2]): m for k, m in _sub(a, "mask").items()}
    logits_of = lambda lora: transformer(params, a["tokens"], GOLDEN_CONFIG,
                                         explicit_mask_hooks(lora["blocks"], s, masks))
    dlora = grad(lambda lora: anp.sum(a["g"] * logits_of(lora)))(lora)
    out = {"logits": logits_of(lora)}
    out.update({f"grad.blocks.{i}.{t}.{n}": ab[n] for i, blk in enumerate(dlora["blocks"])
                for t, ab in blk.items() for n in "AB"})
    return out


def test_minilora_float32_within_a_tenth_of_the_tolerance(golden):
    """minilora's own float32 computation, against the files: the tolerances leave a margin of 10 at least."""
    folder, index = golden
    for entry in index["cases"]:
        if entry["dtype"] != "float32":
            continue
        arrays = load(folder, entry)
        got = minilora_float32(entry["op"], {k: arrays[k] for k in entry["inputs"]})
        for name in entry["outputs"]:
            assert got[name].dtype == np.float32, (entry["name"], name)
            assert rel_err(got[name], arrays[name]) <= entry["tolerance"] / 10, (entry["name"], name)


# ---- 3. torch ----------------------------------------------------------------------------------------------

def test_every_case_rederived_with_torch(golden):
    pytest.importorskip("torch", reason="torch is not installed (the 'parity' extra)")
    from torch_golden import TORCH

    folder, index = golden
    assert rederive_problems(folder, index, TORCH) == []


def test_torch_float32_passes_the_users_tolerance(golden):
    """What a PyTorch user computes in float32 passes the tolerance index.json hands out."""
    torch = pytest.importorskip("torch", reason="torch is not installed (the 'parity' extra)")
    from torch_golden import TORCH

    folder, index = golden
    for entry in index["cases"]:
        if entry["dtype"] != "float32":
            continue
        arrays = load(folder, entry)
        got = TORCH[entry["op"]]({k: v for k, v in arrays.items() if k in entry["inputs"]}, dtype=torch.float32)
        for name in entry["outputs"]:
            assert rel_err(got[name], arrays[name]) <= entry["tolerance"], (entry["name"], name)


# ---- the files themselves ----------------------------------------------------------------------------------

def test_rerun_writes_bit_identical_files(golden, tmp_path):
    folder, _ = golden
    again = tmp_path / "again"
    write_golden(again)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (folder / name).read_bytes() == (again / name).read_bytes(), name


def test_index_conventions_and_cases(golden):
    folder, index = golden
    assert index["format"] == "minilora-golden" and index["version"] == 1
    for key in ("layout", "A", "B", "scale", "dropout", "dtype", "gradients", "comparison", "attention", "model"):
        assert index["conventions"][key], key
    entries = index["cases"]
    assert len({e["name"] for e in entries}) == len(entries)
    assert {e["op"] for e in entries} == set(OPS)
    assert {e["file"] for e in entries} | {"index.json"} == {p.name for p in folder.iterdir()}
    for e in entries:
        assert e["dtype"] in ("float32", "float64") and 0 < e["tolerance"] < 1e-3
        assert e["scale_rule"] in ("alpha/r", "alpha/sqrt(r)")
        arrays = load(folder, e)
        assert all(arrays[k].dtype == e["dtype"] for k in e["outputs"])
        assert arrays["scale"].shape == () and arrays["scale"].dtype == np.float64
    lin = [e for e in entries if e["op"] == "lora_linear"]
    assert {e["dtype"] for e in lin} == {"float32", "float64"}
    assert {e["scale_rule"] for e in lin} == {"alpha/r", "alpha/sqrt(r)"}
    assert any(e["r"] == 1 for e in lin) and any(e["r"] == min(e["d_in"], e["d_out"]) for e in lin)
    assert any(e["x_shape"][:-1] == [1] for e in lin) and any(len(e["x_shape"]) == 3 for e in lin)
    for op in ("attention_lora", "model_lora"):
        cases = [e for e in entries if e["op"] == op]
        assert any(e["dropout_p"] > 0 for e in cases) and any(e["dropout_p"] == 0 for e in cases)
        with_masks = [e for e in cases if e["dropout_p"] > 0]
        assert all(any(k.startswith("mask.") for k in e["inputs"]) for e in with_masks)


def test_masks_hold_zero_or_the_inverse_keep_probability(golden):
    folder, index = golden
    for e in index["cases"]:
        if e.get("dropout_p", 0) > 0:
            arrays = load(folder, e)
            masks = [arrays[k] for k in e["inputs"] if k.startswith("mask.")]
            values = np.unique(np.concatenate([m.ravel() for m in masks]))
            assert values.tolist() == [0.0, 1.0 / (1.0 - e["dropout_p"])], e["name"]


def test_layer_cases_are_the_ones_verify_checks(golden):
    """A function that answers from the golden files passes verify: the two hold the same cases."""
    from minilora.verify import check_lora_linear

    folder, index = golden
    table = []
    for e in index["cases"]:
        if e["op"] == "lora_linear":
            a = load(folder, e)
            table.append((a, a["h"]))

    def from_files(x, W, b, A, B, scale):
        for a, h in table:
            if a["x"].dtype == x.dtype and a["x"].shape == x.shape and np.array_equal(a["x"], x) \
                    and np.array_equal(a["B"], B) and float(a["scale"]) == scale:
                return h
        raise KeyError("no golden case has these inputs")

    report = check_lora_linear(from_files)
    assert report.passed, str(report)


def test_golden_cases_built_in_memory_match_the_files(golden):
    folder, index = golden
    cases = golden_cases()
    assert [c.name for c in cases] == [e["name"] for e in index["cases"]]


def test_command_main_and_registration(tmp_path, capsys):
    import argparse

    assert main([str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "golden cases" in out and (tmp_path / "g" / "index.json").is_file()
    parser = argparse.ArgumentParser()
    add_golden_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["golden", "somewhere"])
    assert args.out_dir == "somewhere" and callable(args.func)
    (tmp_path / "file").write_text("x")
    assert main([str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err
