"""Every primitive of minilora.ops against a plain autograd.numpy composition, finite differences, and itself.

For each primitive (and variant) the checks are:
  * forward == the straightforward autograd.numpy reference (float64);
  * the hand-derived VJP == autograd's differentiation of the reference, for every subset of the
    differentiable arguments (each alone, each pair, all together), with a random cotangent;
  * the VJP == central finite differences along random directions (float64);
  * the VJP maker, asked for some arguments, returns exactly that many gradients, equal to the ones it gives
    when asked for all; asked for a non-differentiable argument, it raises NotImplementedError;
  * float32 in -> float32 out and float32 gradients;
  * inputs (and the cotangent) are never written to: every array is made read-only first.

Shapes are small and pairwise distinct so that a transposed matrix cannot pass: B=2, T=5, d_in=6, d_out=7, r=3,
attention width 8 with 2 heads, vocabulary 11, embedding table 13 rows.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd.core import primitive_vjps

from minilora.ops import (
    attend,
    attention_probs,
    causal_attention,
    cross_entropy,
    embedding,
    gelu,
    layer_norm,
    linear,
    lora_delta,
)

try:
    from gradcheck import directional_check
except ImportError:  # tests/ imported as a package
    from tests.gradcheck import directional_check

B, T, D_IN, D_OUT, R, D_ATT, N_HEAD, V, N_EMB = 2, 5, 6, 7, 3, 8, 2, 11, 13
SCALE = 0.7
EPS_LN = 1e-5


# ---- plain autograd.numpy references -----------------------------------------------------------------------


def ref_linear(x, W, b=None):
    y = anp.matmul(x, anp.transpose(W))
    return y if b is None else y + b


def ref_lora_delta(x, A, Bm, scale, keep=None):
    xd = x if keep is None else x * keep
    return scale * anp.matmul(anp.matmul(xd, anp.transpose(A)), anp.transpose(Bm))


def _ref_split(a, n_head):
    b, t, d = a.shape
    return anp.transpose(anp.reshape(a, (b, t, n_head, d // n_head)), (0, 2, 1, 3))


def ref_attention_probs(q, k, n_head):
    t, dh = q.shape[1], q.shape[2] // n_head
    s = anp.matmul(_ref_split(q, n_head), anp.transpose(_ref_split(k, n_head), (0, 1, 3, 2))) / math.sqrt(dh)
    allowed = np.tril(np.ones((t, t), dtype=bool))
    s = anp.where(allowed, s, -anp.inf)
    s = s - anp.max(s, axis=-1, keepdims=True)
    e = anp.exp(s)
    return e / anp.sum(e, axis=-1, keepdims=True)


def ref_attend(p, v):
    b, h, t, _ = p.shape
    o = anp.matmul(p, _ref_split(v, h))
    return anp.reshape(anp.transpose(o, (0, 2, 1, 3)), (b, t, v.shape[2]))


def ref_causal_attention(q, k, v, n_head):
    return ref_attend(ref_attention_probs(q, k, n_head), v)


def ref_layer_norm(x, gamma, beta, eps=1e-5):
    mu = anp.mean(x, axis=-1, keepdims=True)
    var = anp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / anp.sqrt(var + eps) * gamma + beta


def ref_gelu(x):
    return 0.5 * x * (1.0 + anp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def ref_embedding(ids, table):
    return table[ids]


def ref_log_softmax(z):
    m = anp.max(z, axis=-1, keepdims=True)
    return z - m - anp.log(anp.sum(anp.exp(z - m), axis=-1, keepdims=True))


def ref_cross_entropy(logits, targets, weights=None):
    logp = ref_log_softmax(logits)
    if targets.ndim == logits.ndim:
        nll = -anp.sum(targets * logp, axis=-1)
    else:
        onehot = np.eye(logits.shape[-1])[targets]
        nll = -anp.sum(onehot * logp, axis=-1)
    if weights is None:
        return anp.mean(nll)
    return anp.sum(weights * nll) / anp.sum(weights)


# ---- the cases ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    prim: object
    ref: object
    make: object  # rng -> tuple of positional args (float64 arrays, ints, Python scalars)
    diff: tuple  # differentiable positions
    nondiff: tuple = field(default_factory=tuple)  # positions whose VJP must raise NotImplementedError


def _x(rng, *shape):
    return rng.standard_normal(shape)


def _keep(rng):
    p = 0.4
    return (rng.random((B, T, D_IN)) >= p) / (1.0 - p)


def _probs(rng):
    z = rng.standard_normal((B, T, V))
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _causal_probs(rng):
    """A (B, H, T, T) batch of causal attention matrices: rows sum to 1, zero above the diagonal."""
    e = np.exp(rng.standard_normal((B, N_HEAD, T, T))) * np.tril(np.ones((T, T)))
    return e / e.sum(axis=-1, keepdims=True)


def _weights(rng):
    w = rng.random((B, T))
    w[0, 1] = 0.0  # a position that does not count
    w[1, 4] = 0.0
    return w


CASES = [
    Case("linear_bias", linear, ref_linear,
         lambda rng: (_x(rng, B, T, D_IN), _x(rng, D_OUT, D_IN), _x(rng, D_OUT)), (0, 1, 2)),
    Case("linear_nobias", linear, ref_linear,
         lambda rng: (_x(rng, B, T, D_IN), _x(rng, D_OUT, D_IN)), (0, 1)),
    Case("lora_delta", lora_delta, ref_lora_delta,
         lambda rng: (_x(rng, B, T, D_IN), _x(rng, R, D_IN), _x(rng, D_OUT, R), SCALE), (0, 1, 2), (3,)),
    Case("lora_delta_keep", lora_delta, ref_lora_delta,
         lambda rng: (_x(rng, B, T, D_IN), _x(rng, R, D_IN), _x(rng, D_OUT, R), SCALE, _keep(rng)),
         (0, 1, 2), (3, 4)),
    Case("attention_probs", attention_probs, ref_attention_probs,
         lambda rng: (_x(rng, B, T, D_ATT), _x(rng, B, T, D_ATT), N_HEAD), (0, 1), (2,)),
    Case("attend", attend, ref_attend,
         lambda rng: (_causal_probs(rng), _x(rng, B, T, D_ATT)), (0, 1)),
    # B = 1 and a single head: reshapes there are views of the input, not copies (an in-place scale on one
    # once wrote into q)
    Case("attention_probs_batch1", attention_probs, ref_attention_probs,
         lambda rng: (_x(rng, 1, T, D_ATT), _x(rng, 1, T, D_ATT), N_HEAD), (0, 1), (2,)),
    Case("attention_probs_one_head", attention_probs, ref_attention_probs,
         lambda rng: (_x(rng, 1, T, D_ATT), _x(rng, 1, T, D_ATT), 1), (0, 1), (2,)),
    Case("attend_batch1_one_head", attend, ref_attend,
         lambda rng: (_causal_probs(rng)[:1, :1], _x(rng, 1, T, D_ATT)), (0, 1)),
    Case("layer_norm", layer_norm, ref_layer_norm,
         lambda rng: (_x(rng, B, T, D_IN) * 3 + 1, 1 + 0.5 * _x(rng, D_IN), _x(rng, D_IN), EPS_LN), (0, 1, 2), (3,)),
    Case("gelu", gelu, ref_gelu, lambda rng: (2 * _x(rng, B, T, D_IN),), (0,)),
    Case("embedding", embedding, ref_embedding,
         lambda rng: (rng.integers(0, 4, size=(B, T)), _x(rng, N_EMB, D_IN)), (1,), (0,)),  # ids repeat
    Case("cross_entropy_int", cross_entropy, ref_cross_entropy,
         lambda rng: (2 * _x(rng, B, T, V), rng.integers(0, V, size=(B, T))), (0,), (1,)),
    Case("cross_entropy_weights", cross_entropy, ref_cross_entropy,
         lambda rng: (2 * _x(rng, B, T, V), rng.integers(0, V, size=(B, T)), _weights(rng)), (0,), (1, 2)),
    Case("cross_entropy_soft", cross_entropy, ref_cross_entropy,
         lambda rng: (2 * _x(rng, B, T, V), _probs(rng)), (0,), (1,)),
]
CASE_IDS = [c.name for c in CASES]


def _readonly(args):
    for a in args:
        if isinstance(a, np.ndarray):
            a.setflags(write=False)
    return args


def _args(case, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    args = case.make(rng)
    args = tuple(a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args)
    return _readonly(args)


def _cotangent(out, seed=1):
    R_ = np.random.default_rng(seed).standard_normal(np.shape(out)).astype(np.asarray(out).dtype)
    R_.setflags(write=False)
    return R_


def _subsets(diff):
    return [s for k in range(1, len(diff) + 1) for s in itertools.combinations(diff, k)]


def _loss_fn(fn, R_):
    return lambda *args: anp.sum(fn(*args) * R_)


# ---- forward ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_matches_reference(case):
    args = _args(case)
    out, ref = case.prim(*args), case.ref(*args)
    assert np.shape(out) == np.shape(ref)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)


# ---- VJP vs autograd on the reference ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vjp_matches_autograd_of_reference(case):
    args = _args(case)
    R_ = _cotangent(case.ref(*args))
    for argnums in _subsets(case.diff):
        got = autograd.grad(_loss_fn(case.prim, R_), argnum=argnums)(*args)
        want = autograd.grad(_loss_fn(case.ref, R_), argnum=argnums)(*args)
        assert len(got) == len(argnums)
        for i, g, w in zip(argnums, got, want):
            assert np.shape(g) == np.shape(args[i]), (argnums, i)
            scale = np.max(np.abs(w))
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12 * scale, err_msg=f"argnums={argnums} arg {i}")


# ---- VJP vs finite differences -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vjp_matches_finite_differences(case):
    args = _args(case)
    R_ = _cotangent(case.prim(*args))
    loss = _loss_fn(case.prim, R_)
    diff = case.diff
    grads = autograd.grad(loss, argnum=diff)(*args)

    def f(xs):
        full = list(args)
        for i, xi in zip(diff, xs):
            full[i] = xi
        return loss(*full)

    directional_check(f, tuple(args[i] for i in diff), tuple(grads), np.random.default_rng(2), n_dirs=3,
                      eps=1e-6, rtol=1e-6, atol=1e-9)
    # and one argument at a time (a wrong gradient for one argument cannot hide behind a right one for another)
    rng = np.random.default_rng(3)
    for j, i in enumerate(diff):
        def f1(xi, i=i):
            full = list(args)
            full[i] = xi
            return loss(*full)

        directional_check(f1, args[i], grads[j], rng, n_dirs=2, eps=1e-6, rtol=1e-6, atol=1e-9)


# ---- the VJP maker computes only what is traced --------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vjp_maker_returns_only_traced_gradients(case):
    args = _args(case)
    ans = case.prim(*args)
    g = _cotangent(ans)
    maker = primitive_vjps[case.prim]
    full = tuple(maker(case.diff, ans, args, {})(g))
    assert len(full) == len(case.diff)
    for argnums in _subsets(case.diff):
        grads = tuple(maker(argnums, ans, args, {})(g))
        assert len(grads) == len(argnums), f"asked for {argnums}, got {len(grads)} gradients"
        for i, gi in zip(argnums, grads):
            np.testing.assert_allclose(gi, full[case.diff.index(i)], rtol=1e-14, atol=0,
                                       err_msg=f"argnums={argnums} arg {i}")


@pytest.mark.parametrize("case", [c for c in CASES if c.nondiff], ids=[c.name for c in CASES if c.nondiff])
def test_vjp_maker_refuses_nondifferentiable_arguments(case):
    args = _args(case)
    ans = case.prim(*args)
    g = _cotangent(ans)
    maker = primitive_vjps[case.prim]
    for i in case.nondiff:
        with pytest.raises(NotImplementedError):
            tuple(maker((i,), ans, args, {})(g))


def test_linear_x_only_with_readonly_weights():
    rng = np.random.default_rng(4)
    x, W, b = _x(rng, B, T, D_IN), _x(rng, D_OUT, D_IN), _x(rng, D_OUT)
    W.setflags(write=False)
    b.setflags(write=False)
    R_ = _cotangent(ref_linear(x, W, b))
    got = autograd.grad(lambda x_: anp.sum(linear(x_, W, b) * R_))(x)
    np.testing.assert_allclose(got, (R_.reshape(-1, D_OUT) @ W).reshape(x.shape), rtol=1e-12)
    ans = linear(x, W, b)
    grads = tuple(primitive_vjps[linear]((0,), ans, (x, W, b), {})(R_))
    assert len(grads) == 1 and grads[0].shape == x.shape
    np.testing.assert_allclose(grads[0], got, rtol=1e-14)


# ---- keyword arguments reach the VJP -------------------------------------------------------------------------


def test_keyword_arguments_reach_the_vjp():
    rng = np.random.default_rng(5)
    # layer_norm with a large eps given by keyword: a VJP that ignored it would use 1e-5
    x, gm, bt = _x(rng, B, T, D_IN) * 0.05, 1 + _x(rng, D_IN), _x(rng, D_IN)
    R_ = _cotangent(x)
    for fn, ref in ((lambda x_, g_: layer_norm(x_, g_, bt, eps=0.1), lambda x_, g_: ref_layer_norm(x_, g_, bt, 0.1)),):
        np.testing.assert_allclose(fn(x, gm), ref(x, gm), rtol=1e-12)
        for got, want in zip(autograd.grad(_loss_fn(fn, R_), argnum=(0, 1))(x, gm),
                             autograd.grad(_loss_fn(ref, R_), argnum=(0, 1))(x, gm)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    # linear with b by keyword
    W, b = _x(rng, D_OUT, D_IN), _x(rng, D_OUT)
    x = _x(rng, B, T, D_IN)
    R_ = _cotangent(ref_linear(x, W, b))
    np.testing.assert_allclose(linear(x, W, b=b), ref_linear(x, W, b), rtol=1e-12)
    got = autograd.grad(lambda x_, W_: anp.sum(linear(x_, W_, b=b) * R_), argnum=(0, 1))(x, W)
    want = autograd.grad(lambda x_, W_: anp.sum(ref_linear(x_, W_, b) * R_), argnum=(0, 1))(x, W)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=1e-10, atol=1e-13)
    # lora_delta with keep by keyword
    A, Bm, keep = _x(rng, R, D_IN), _x(rng, D_OUT, R), _keep(rng)
    R_ = _cotangent(ref_linear(x, W))
    got = autograd.grad(lambda x_, A_, B_: anp.sum(lora_delta(x_, A_, B_, SCALE, keep=keep) * R_),
                        argnum=(0, 1, 2))(x, A, Bm)
    want = autograd.grad(lambda x_, A_, B_: anp.sum(ref_lora_delta(x_, A_, B_, SCALE, keep) * R_),
                         argnum=(0, 1, 2))(x, A, Bm)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=1e-10, atol=1e-13)
    # cross_entropy with weights by keyword
    logits, targets, w = 2 * _x(rng, B, T, V), rng.integers(0, V, size=(B, T)), _weights(rng)
    np.testing.assert_allclose(cross_entropy(logits, targets, weights=w), ref_cross_entropy(logits, targets, w),
                               rtol=1e-12)
    got = autograd.grad(lambda z: cross_entropy(z, targets, weights=w))(logits)
    want = autograd.grad(lambda z: ref_cross_entropy(z, targets, w))(logits)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


# ---- float32 stays float32 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_in_float32_out(case):
    args32 = _args(case, dtype=np.float32)
    args64 = _args(case)
    out = case.prim(*args32)
    assert np.asarray(out).dtype == np.float32, f"forward returned {np.asarray(out).dtype}"
    np.testing.assert_allclose(out, case.prim(*args64), rtol=2e-4, atol=2e-5)
    R_ = _cotangent(out)
    assert R_.dtype == np.float32
    grads = autograd.grad(_loss_fn(case.prim, R_), argnum=case.diff)(*args32)
    grads64 = autograd.grad(_loss_fn(case.prim, R_.astype(np.float64)), argnum=case.diff)(*args64)
    for i, g, g64 in zip(case.diff, grads, grads64):
        assert np.asarray(g).dtype == np.float32, f"gradient of arg {i} is {np.asarray(g).dtype}"
        np.testing.assert_allclose(g, g64, rtol=1e-3, atol=1e-4 * np.max(np.abs(g64)))
    maker_grads = tuple(primitive_vjps[case.prim](case.diff, out, args32, {})(R_))
    for i, g in zip(case.diff, maker_grads):
        assert np.asarray(g).dtype == np.float32, f"VJP maker's gradient of arg {i} is {np.asarray(g).dtype}"


# ---- causal_attention: the composition of attention_probs and attend ------------------------------------------


def test_causal_attention_matches_the_reference_in_value_and_gradient():
    rng = np.random.default_rng(7)
    q, k, v = (_x(rng, B, T, D_ATT) for _ in range(3))
    np.testing.assert_allclose(causal_attention(q, k, v, N_HEAD), ref_causal_attention(q, k, v, N_HEAD),
                               rtol=1e-12, atol=1e-14)
    R_ = _cotangent(ref_causal_attention(q, k, v, N_HEAD))
    f = lambda qkv: anp.sum(causal_attention(*qkv, N_HEAD) * R_)
    grads = autograd.grad(f)((q, k, v))
    want = autograd.grad(lambda qkv: anp.sum(ref_causal_attention(*qkv, N_HEAD) * R_))((q, k, v))
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)
    directional_check(f, (q, k, v), grads, np.random.default_rng(8))


# ---- a few semantic spot checks ------------------------------------------------------------------------------


def test_attention_is_causal():
    """Changing the last position's keys and values changes no earlier output."""
    rng = np.random.default_rng(6)
    q, k, v = (_x(rng, B, T, D_ATT) for _ in range(3))
    out = causal_attention(q, k, v, N_HEAD)
    k2, v2 = k.copy(), v.copy()
    k2[:, -1] += 10.0
    v2[:, -1] -= 10.0
    out2 = causal_attention(q, k2, v2, N_HEAD)
    np.testing.assert_array_equal(out[:, :-1], out2[:, :-1])
    assert not np.allclose(out[:, -1], out2[:, -1])


def test_embedding_gradient_accumulates_repeated_rows():
    ids = np.array([[1, 1, 3, 1, 0]])
    table = np.random.default_rng(7).standard_normal((N_EMB, D_IN))
    g = np.ones((1, 5, D_IN))
    (grad,) = primitive_vjps[embedding]((1,), embedding(ids, table), (ids, table), {})(g)
    np.testing.assert_array_equal(grad[:, 0], [1, 3, 0, 1] + [0] * (N_EMB - 4))


def test_cross_entropy_weights_must_have_positive_sum():
    logits = np.zeros((B, T, V))
    targets = np.zeros((B, T), dtype=np.int64)
    with pytest.raises(ValueError, match="weights"):
        cross_entropy(logits, targets, np.zeros((B, T)))


# ---- the element-wise pool (backend.rowwise): bit-identical to one thread ------------------------------------


@pytest.fixture
def pool():
    """Run with backend.set_threads(n, min_elements=0, measure=False): every array uses the pool, whatever
    timing would choose. Restores the settings."""
    from minilora import backend

    previous = backend.get_threads(), backend._pool["min_elements"], backend._pool["measure"]

    def use(n):
        backend.set_threads(n, min_elements=0, measure=False)

    yield use
    backend.set_threads(previous[0], min_elements=previous[1], measure=previous[2])


def _forward_and_vjps(case, dtype):
    args = _args(case, seed=3, dtype=dtype)
    out = case.prim(*args)
    g = _cotangent(out)
    return (np.asarray(out),) + tuple(primitive_vjps[case.prim](case.diff, out, args, {})(g))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pooled_ops_are_bit_identical_to_one_thread(case, dtype, pool):
    pool(1)
    want = _forward_and_vjps(case, dtype)
    for n in (2, 3, 7):  # 3 and 7 cut the rows into unequal blocks; 7 leaves some blocks one row long
        pool(n)
        got = _forward_and_vjps(case, dtype)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert a.dtype == b.dtype and np.array_equal(a, b), f"{n} threads: output {i} differs"


def test_pooled_lora_and_full_steps_are_bit_identical(pool):
    """A whole step, LoRA and full, at sizes where every op's arrays are cut into several blocks."""
    from minilora import GPTConfig, LoraConfig, forward, init_lora, init_params

    cfg = GPTConfig(n_layer=2, d_model=32, n_head=4, d_mlp=64, vocab_size=37, context=16)
    lcfg = LoraConfig(r=2, targets=("wq", "wk", "wv", "wo", "mlp_in", "mlp_out"))
    params = init_params(cfg, seed=0)
    lora = init_lora(cfg, lcfg, seed=1)
    for block in lora["blocks"]:
        for ab in block.values():
            ab["B"] = np.random.default_rng(2).standard_normal(ab["B"].shape).astype(np.float32)
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, size=(3, 13))
    x, y = tokens[:, :-1], tokens[:, 1:]
    lora_step = autograd.value_and_grad(lambda a, p: cross_entropy(forward(p, x, cfg, a, lcfg), y))
    full_step = autograd.value_and_grad(lambda p: cross_entropy(forward(p, x, cfg), y))

    def run():
        from minilora.tree import flatten

        (l1, g1), (l2, g2) = lora_step(lora, params), full_step(params)
        return [l1, l2] + list(flatten(g1).values()) + list(flatten(g2).values())

    pool(1)
    want = run()
    pool(3)
    got = run()
    for a, b in zip(got, want, strict=True):
        assert np.asarray(a).dtype == np.float32 and np.array_equal(a, b)


def test_rowwise_cuts_rows_and_passes_broadcast_arguments_whole(pool):
    import threading

    from minilora import backend

    seen = []

    def kernel(x, gamma, scale, out):
        seen.append((threading.get_ident(), x.shape, gamma.shape))
        np.multiply(x, gamma, out=out)
        out *= scale

    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
    gamma = np.arange(4, dtype=np.float32)
    pool(3)
    out = backend.rowwise(kernel, x, gamma, 2.0, out=np.empty_like(x))
    np.testing.assert_array_equal(out, x * gamma * 2.0)
    assert sorted(s[1][0] for s in seen) == [3, 3, 4]  # rows cut into 3 blocks
    assert all(s[2] == (4,) for s in seen)  # gamma (d,) broadcasts: given whole to each block


def test_rowwise_skips_the_pool_for_small_and_non_numpy_arrays(pool):
    from minilora import backend

    calls = []

    def kernel(x, out):
        calls.append(x.shape)
        np.negative(x, out=out)

    class StandIn(np.ndarray):  # an array type that is not numpy.ndarray itself (as CuPy's is not)
        pass

    pool(2)
    x = np.ones((8, 3)).view(StandIn)
    backend.rowwise(kernel, x, out=np.empty((8, 3)))
    assert calls == [(8, 3)]  # one call, whole
    calls.clear()
    backend.set_threads(2, min_elements=1000)  # below the size threshold: one call
    backend.rowwise(kernel, np.ones((8, 3)), out=np.empty((8, 3)))
    assert calls == [(8, 3)]
    calls.clear()
    backend.set_threads(1, min_elements=0)  # pool off
    backend.rowwise(kernel, np.ones((8, 3)), out=np.empty((8, 3)))
    assert calls == [(8, 3)]


def test_rowwise_takes_whichever_way_its_timings_show_faster(pool):
    import time

    from minilora import backend

    def ways(slow_way, calls=31):
        """How each of `calls` rowwise calls ran ("pooled" or "whole") when `slow_way` sleeps 5 ms."""
        seen = []

        def kernel(x, out):
            way = "whole" if x.shape[0] == 64 else "pooled"
            if way == slow_way:
                time.sleep(0.005)
            out[...] = x
            seen.append(way)

        x = np.ones((64, 2))
        for _ in range(calls):
            seen.append("|")
            backend.rowwise(kernel, x, out=np.empty_like(x))
        return [way.split()[0] for way in " ".join(seen).split("|")[1:]]

    backend.set_threads(2, min_elements=0, measure=True)
    got = ways(slow_way="pooled")
    assert sorted(got[:6]) == ["pooled"] * 3 + ["whole"] * 3  # three timings of each way first
    assert set(got[6:]) == {"whole"}  # then one call, the faster way (the pool comes back at call 32)
    backend.set_threads(2, min_elements=0, measure=True)  # new settings: the timings start again
    got = ways(slow_way="whole")
    assert set(got[6:]) == {"pooled"}


def test_rowwise_raises_a_kernels_error_in_the_caller(pool):
    from minilora import backend

    def kernel(x, out):
        if x[0, 0] > 0:  # only the second block fails
            raise FloatingPointError("block failed")
        out[...] = x

    pool(2)
    with pytest.raises(FloatingPointError, match="block failed"):
        backend.rowwise(kernel, np.arange(8.0).reshape(4, 2) - 1.0, out=np.empty((4, 2)))


def test_thread_settings_are_validated(monkeypatch):
    from minilora import backend

    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="set_threads"):
            backend.set_threads(bad)
    with pytest.raises(ValueError, match="min_elements"):
        backend.set_threads(2, min_elements=-1)
    with pytest.raises(ValueError, match="measure"):
        backend.set_threads(2, measure="yes")
    monkeypatch.setenv("MINILORA_THREADS", "3")
    assert backend._default_threads() == 3
    monkeypatch.setenv("MINILORA_THREADS", "zero")
    with pytest.raises(ValueError, match="MINILORA_THREADS"):
        backend._default_threads()
