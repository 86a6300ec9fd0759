"""Whole-model gradients in float64 on the tiny preset.

* The loss gradient w.r.t. an adapter on all six matrices (B made nonzero, so dA and dB both matter) and the
  gradient w.r.t. every base parameter (full fine-tuning) match central finite differences along random
  directions, over the whole tree and leaf by leaf.
* A plain reference model written here with autograd.numpy ops, from the same parameter tree, gives the same
  logits (1e-12) and, differentiated by autograd, the same gradients (1e-9).
"""

from __future__ import annotations

import math

import autograd
import autograd.numpy as anp
import numpy as np

from minilora import GPTConfig, LoraConfig, forward, init_lora, init_params
from minilora.ops import cross_entropy
from minilora.tree import flatten, map_leaves

try:
    from gradcheck import directional_check
except ImportError:  # tests/ imported as a package
    from tests.gradcheck import directional_check

CFG = GPTConfig.preset("tiny")
ALL = ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")
LORA_CFG = LoraConfig(r=4, alpha=8.0, targets=ALL)  # scale 2


def _params():
    """float64 tiny parameters with every leaf nontrivial: matrices ×10 (GPT-2's 0.02 init leaves the
    nonlinearities almost linear), nonzero biases, LayerNorm γ ≠ 1 and β ≠ 0."""
    rng = np.random.default_rng(0)
    p = map_leaves(lambda a: a.astype(np.float64), init_params(CFG, 0))
    p["wte"] = p["wte"] * 25
    p["wpe"] = p["wpe"] * 20
    for block in p["blocks"]:
        for name in ALL:
            block[name]["W"] = block[name]["W"] * 10
            block[name]["b"] = 0.1 * rng.standard_normal(block[name]["b"].shape)
        for ln in ("ln1", "ln2"):
            block[ln]["g"] = 1 + 0.2 * rng.standard_normal(CFG.d_model)
            block[ln]["b"] = 0.1 * rng.standard_normal(CFG.d_model)
    p["ln_f"]["g"] = 1 + 0.2 * rng.standard_normal(CFG.d_model)
    p["ln_f"]["b"] = 0.1 * rng.standard_normal(CFG.d_model)
    return p


def _lora():
    rng = np.random.default_rng(1)
    lora = init_lora(CFG, LORA_CFG, seed=1, dtype=np.float64)
    for block in lora["blocks"]:
        for ab in block.values():
            ab["B"] = 0.3 * rng.standard_normal(ab["B"].shape)  # trained-like: B != 0
    return lora


PARAMS = _params()
LORA = _lora()
_rng = np.random.default_rng(2)
TOKENS = _rng.integers(0, CFG.vocab_size, size=(2, 9))
TARGETS = _rng.integers(0, CFG.vocab_size, size=(2, 9))


def loss_lora(lora, params=PARAMS, rng_seed=None, lora_config=LORA_CFG):
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    return cross_entropy(forward(params, TOKENS, CFG, lora, lora_config, rng=rng), TARGETS)


def loss_params(params):
    return cross_entropy(forward(params, TOKENS, CFG), TARGETS)


# ---- a plain reference model ---------------------------------------------------------------------------------


def _ln(x, p, eps):
    mu = anp.mean(x, axis=-1, keepdims=True)
    var = anp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / anp.sqrt(var + eps) * p["g"] + p["b"]


def _gelu(x):
    return 0.5 * x * (1.0 + anp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _attention(q, k, v, n_head):
    b, t, d = q.shape
    dh = d // n_head

    def split(a):
        return anp.transpose(anp.reshape(a, (b, t, n_head, dh)), (0, 2, 1, 3))

    s = anp.matmul(split(q), anp.transpose(split(k), (0, 1, 3, 2))) / math.sqrt(dh)
    s = anp.where(np.tril(np.ones((t, t), dtype=bool)), s, -anp.inf)
    e = anp.exp(s - anp.max(s, axis=-1, keepdims=True))
    p = e / anp.sum(e, axis=-1, keepdims=True)
    return anp.reshape(anp.transpose(anp.matmul(p, split(v)), (0, 2, 1, 3)), (b, t, d))


def ref_forward(params, tokens, cfg, lora=None, scale=0.0):
    t = tokens.shape[1]
    x = params["wte"][tokens] + params["wpe"][:t]
    for i in range(cfg.n_layer):
        blk = params["blocks"][i]
        ad = lora["blocks"][i] if lora is not None else {}

        def proj(h, name):
            y = anp.matmul(h, anp.transpose(blk[name]["W"])) + blk[name]["b"]
            if name in ad:
                y = y + scale * anp.matmul(anp.matmul(h, anp.transpose(ad[name]["A"])), anp.transpose(ad[name]["B"]))
            return y

        h = _ln(x, blk["ln1"], cfg.ln_eps)
        x = x + proj(_attention(proj(h, "wq"), proj(h, "wk"), proj(h, "wv"), cfg.n_head), "wo")
        h = _ln(x, blk["ln2"], cfg.ln_eps)
        x = x + proj(_gelu(proj(h, "mlp_in")), "mlp_out")
    x = _ln(x, params["ln_f"], cfg.ln_eps)
    return anp.matmul(x, anp.transpose(params["wte"]))


def ref_loss(logits, targets):
    m = anp.max(logits, axis=-1, keepdims=True)
    logp = logits - m - anp.log(anp.sum(anp.exp(logits - m), axis=-1, keepdims=True))
    onehot = np.eye(logits.shape[-1])[targets]
    return -anp.mean(anp.sum(onehot * logp, axis=-1))


def ref_loss_lora(lora):
    return ref_loss(ref_forward(PARAMS, TOKENS, CFG, lora, LORA_CFG.scale), TARGETS)


def ref_loss_params(params):
    return ref_loss(ref_forward(params, TOKENS, CFG), TARGETS)


def _assert_trees_close(got, want, rtol=1e-9):
    fg, fw = flatten(got), flatten(want)
    assert list(fg) == list(fw)
    for key in fw:
        g, w = np.asarray(fg[key]), np.asarray(fw[key])
        assert g.shape == w.shape and g.dtype == np.float64, key
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * max(np.max(np.abs(w)), 1e-3), err_msg=key)


# ---- reference agreement -------------------------------------------------------------------------------------


def test_logits_match_reference_model():
    got = forward(PARAMS, TOKENS, CFG)
    want = ref_forward(PARAMS, TOKENS, CFG)
    assert got.dtype == np.float64 and got.shape == (2, 9, CFG.vocab_size)
    assert np.max(np.abs(got - want)) <= 1e-12
    assert np.std(got) > 0.5  # the logits are not trivially small: the check means something
    got = forward(PARAMS, TOKENS, CFG, LORA, LORA_CFG)
    want = ref_forward(PARAMS, TOKENS, CFG, LORA, LORA_CFG.scale)
    assert np.max(np.abs(got - want)) <= 1e-12
    assert np.max(np.abs(got - forward(PARAMS, TOKENS, CFG))) > 1e-2  # the adapter does change the output
    assert abs(float(loss_lora(LORA)) - float(ref_loss_lora(LORA))) <= 1e-12


def test_lora_gradient_matches_reference_model():
    got = autograd.grad(loss_lora)(LORA)
    want = autograd.grad(ref_loss_lora)(LORA)
    _assert_trees_close(got, want)


def test_full_gradient_matches_reference_model():
    got = autograd.grad(loss_params)(PARAMS)
    want = autograd.grad(ref_loss_params)(PARAMS)
    _assert_trees_close(got, want)


# ---- finite differences --------------------------------------------------------------------------------------


def _replace(tree, path, value):
    """A copy of the containers along ``path`` (a dotted key of flatten) with the leaf replaced."""
    head, _, rest = path.partition(".")
    if isinstance(tree, list):
        out = list(tree)
        out[int(head)] = value if not rest else _replace(tree[int(head)], rest, value)
        return out
    out = dict(tree)
    out[head] = value if not rest else _replace(tree[head], rest, value)
    return out


def test_lora_gradient_matches_finite_differences():
    grad = autograd.grad(loss_lora)(LORA)
    flat = flatten(grad)
    assert len(flat) == CFG.n_layer * len(ALL) * 2  # (A, B) for six matrices in both blocks
    for key, g in flat.items():
        assert g.dtype == np.float64
        assert np.max(np.abs(g)) > 1e-6, f"{key}: gradient is (nearly) zero, the check would be vacuous"
    directional_check(loss_lora, LORA, grad, np.random.default_rng(10), n_dirs=4, rtol=1e-6, atol=1e-9)
    rng = np.random.default_rng(11)
    for key, g in flat.items():  # leaf by leaf: an error in one small leaf cannot hide in the whole
        directional_check(lambda a, key=key: loss_lora(_replace(LORA, key, a)), flatten(LORA)[key], g, rng,
                          n_dirs=1, rtol=1e-6, atol=1e-10)


def test_lora_gradient_with_dropout_matches_finite_differences():
    """With a seeded rng the dropout masks are a fixed function of the seed: the loss is a smooth function
    of the adapter and its gradient must use the same masks as the forward."""
    cfg = LoraConfig(r=4, alpha=8.0, targets=ALL, dropout=0.3)

    def f(lora):
        return loss_lora(lora, rng_seed=7, lora_config=cfg)

    grad = autograd.grad(f)(LORA)
    assert abs(float(f(LORA)) - float(loss_lora(LORA))) > 1e-6  # dropout is on
    directional_check(f, LORA, grad, np.random.default_rng(12), n_dirs=4, rtol=1e-6, atol=1e-9)


def test_full_gradient_matches_finite_differences():
    grad = autograd.grad(loss_params)(PARAMS)
    flat = flatten(grad)
    assert set(flat) == set(flatten(PARAMS))
    directional_check(loss_params, PARAMS, grad, np.random.default_rng(20), n_dirs=4, rtol=1e-6, atol=1e-9)
    rng = np.random.default_rng(21)
    for key, g in flat.items():
        assert g.dtype == np.float64
        directional_check(lambda a, key=key: loss_params(_replace(PARAMS, key, a)), flatten(PARAMS)[key], g,
                          rng, n_dirs=1, rtol=1e-6, atol=1e-10)


# ---- differentiating a part of the tree ----------------------------------------------------------------------


def test_gradient_wrt_the_blocks_subtree_only():
    frozen = {k: v for k, v in PARAMS.items() if k != "blocks"}

    def f(blocks):
        return cross_entropy(forward({**frozen, "blocks": blocks}, TOKENS, CFG), TARGETS)

    got = autograd.grad(f)(PARAMS["blocks"])
    want = autograd.grad(loss_params)(PARAMS)["blocks"]
    _assert_trees_close(got, want, rtol=1e-12)


def test_gradient_wrt_the_adapter_block_list_only():
    def f(blocks):
        return loss_lora({"blocks": blocks})

    got = autograd.grad(f)(LORA["blocks"])
    want = autograd.grad(loss_lora)(LORA)["blocks"]
    _assert_trees_close(got, want, rtol=1e-12)
