"""The fine-tuning methods of minilora.methods: the paper's parameter counts, a falling loss on a tiny config,
a bit-identical frozen part, adapted = base at init, prefix tuning's layout (prefix, infix), LoRA+ and LoRA-FA."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from conftest import TINY, TinyLMTask

from minilora import GPTConfig, init_params
from minilora.methods import METHODS, get_method, join, split
from minilora.model import Hooks, transformer
from minilora.optim import AdamW
from minilora.tasks import Batch
from minilora.train import TrainConfig, train
from minilora.tree import flatten

TINY3 = dataclasses.replace(TINY, n_layer=3)  # FT-top2 then trains 2 of 3 blocks
BASE = GPTConfig.preset("base")
L_P = 8

OPTIONS = {"preembed": {"l_p": L_P}, "prelayer": {"l_p": L_P}, "adapter_h": {"r": 4}, "adapter_l": {"r": 4},
           "lora": {"r": 4}, "lora_plus": {"r": 4}, "lora_fa": {"r": 4}}


def bitwise_equal(a, b) -> bool:
    fa, fb = flatten(a), flatten(b)
    return sorted(fa) == sorted(fb) and all(
        fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape and fa[k].tobytes() == fb[k].tobytes() for k in fa)


def expected_count(name: str, config, options) -> int:
    """The paper's formulas written out again here, independently of the methods' own paper_count."""
    d, L, m = config.d_model, config.n_layer, config.d_mlp
    block = 4 * d * d + 2 * d * m + 4 * d + m + d + 4 * d
    r, n_tokens = options.get("r", 8), options.get("l_p", 8) + options.get("l_i", 0)
    return {
        "ft": config.vocab_size * d + config.context * d + L * block + 2 * d,
        "ft_top2": 2 * block,
        "bitfit": L * (4 * d + m + d + 2 * d) + d,
        "preembed": d * n_tokens,                                   # d × (l_p + l_i)
        "prelayer": L * d * n_tokens,                               # L × d × (l_p + l_i)
        "adapter_h": (2 * L) * (2 * d * r + r + d) + 2 * 0 * d,     # L̂_Adpt = 2L, L̂_LN = 0
        "adapter_l": L * (2 * d * r + r + d) + 2 * L * d,           # L̂_Adpt = L, L̂_LN = L
        "lora": 2 * (L * 2) * d * r,                                # 2 L̂ d r, L̂ = L × |{wq, wv}|
        "lora_plus": 2 * (L * 2) * d * r,
        "lora_fa": (L * 2) * d * r,                                 # B only: L̂ d r
    }[name]


# ---- trainable-parameter counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("config", [TINY3, BASE], ids=["tiny3", "base"])
def test_trainable_count_equals_the_papers_formula(name, config):
    options = {**OPTIONS.get(name, {}), **({"l_i": 2} if name in ("preembed", "prelayer") else {})}
    setup = METHODS[name].build(init_params(config, 0), config, seed=0, **options)
    assert setup.trainable_count() == expected_count(name, config, options)
    assert setup.paper_count() == setup.trainable_count()


def test_formula_counts_on_the_base_config():
    """d = 128, d_mlp = 512, L = 4, r = 8, l_p + l_i = 10: the numbers the comparison table will quote, worked
    by hand: FT-top2 2 (12·128² + 13·128) = 396,544; AdapterH 8 (2·128·8 + 8 + 128) = 17,472; AdapterL
    4 · 2,184 + 2·4·128 = 9,760; LoRA on wq, wv 2·8·128·8 = 16,384; PreLayer 4·128·10 = 5,120."""
    params = init_params(BASE, 0)
    got = {n: m.build(params, BASE, 0, **({"l_p": 8, "l_i": 2} if n in ("preembed", "prelayer") else {}))
           .trainable_count() for n, m in METHODS.items()}
    assert got == {"ft": 842496, "ft_top2": 396544, "bitfit": 5760, "preembed": 1280, "prelayer": 5120,
                   "adapter_h": 17472, "adapter_l": 9760, "lora": 16384, "lora_plus": 16384, "lora_fa": 8192}


def test_the_formulas_give_the_papers_gpt3_counts():
    """Table 4 (GPT-3 175B): PreEmbed 3.2M (l_p = 256, l_i = 8); AdapterH 7.1M (r = 1) and 40.1M (r = 8), which
    is what L̂_Adpt = 2 L, L̂_LN = 0 gives; LoRA 4.7M (wq, wv, r = 1). paper_count needs only the shapes."""
    gpt3 = GPTConfig.preset("gpt3-175b")
    count = {n: (lambda o, m=m: m.paper_count(gpt3, m.options(**o))) for n, m in METHODS.items()}
    assert count["preembed"]({"l_p": 256, "l_i": 8}) == 3_244_032
    assert count["adapter_h"]({"r": 1}) == 7_078_080 and count["adapter_h"]({"r": 8}) == 40_109_568
    assert count["lora"]({"r": 1}) == 4_718_592


# ---- training through the one loop ------------------------------------------------------------------------

def run(name, params, config=TINY3, **kw):
    setup = METHODS[name].build(params, config, seed=0, **OPTIONS.get(name, {}))
    prefix = name in ("preembed", "prelayer")
    task = TinyLMTask(length=config.context - (L_P if prefix else 0))
    tc = {"steps": 60 if prefix else 30, "batch_size": 8, "lr": 0.1 if prefix else 3e-2, "warmup": 2,
          "eval_every": 0, "clip": 0.0 if prefix else 1.0, **kw}
    return setup, train(task, params, config, TrainConfig(**tc), method=setup, progress=False)


@pytest.mark.parametrize("name", list(METHODS))
def test_loss_falls_and_the_frozen_part_is_bit_identical(name):
    params = _tiny3_params()
    base_before = copy.deepcopy(params)
    setup, res = run(name, params)
    frozen_before = copy.deepcopy(setup.frozen)
    h = [s["loss"] for s in res.history]
    first, last = np.mean(h[:10]), np.mean(h[-10:])
    assert last < first - 0.3, f"{name}: first-10 mean {first:.4f}, last-10 mean {last:.4f}"
    assert bitwise_equal(params, base_before), f"{name}: train() modified the caller's base parameters"
    assert bitwise_equal(setup.frozen, frozen_before)
    # the trained tree keeps the starting tree's structure, dtype and count, and every leaf of it moved
    new, old = flatten(res.trainable), flatten(setup.trainable)
    assert sorted(new) == sorted(old) and all(new[k].dtype == old[k].dtype == np.float32 for k in new)
    moved = [k for k in old if not np.array_equal(new[k], old[k])]
    assert moved, f"{name}: nothing was trained"
    if name != "ft":
        # the model that runs after training holds the base's arrays wherever the method does not train
        run_params, _ = setup.model(res.trainable, Batch(np.zeros((1, 4), np.int32), None))
        trained = set(flatten(res.trainable)) if name in ("ft_top2", "bitfit") else set()
        flat_run, flat_base = flatten(run_params), flatten(base_before)
        for k, a in flat_base.items():
            if k not in trained:
                assert flat_run[k].tobytes() == a.tobytes(), f"{name}: frozen {k} changed"


def _tiny3_params():
    params = init_params(TINY3, 0)
    params["wte"] = (params["wte"] * 25).astype(np.float32)
    for block in params["blocks"]:
        for name in ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out"):
            block[name]["W"] = (block[name]["W"] * 10).astype(np.float32)
    return params


def test_evals_run_for_methods_the_task_can_evaluate():
    params = _tiny3_params()
    _, bitfit = run("bitfit", params, steps=4)
    _, adapter = run("adapter_h", params, steps=4)
    assert [e["step"] for e in bitfit.evals] == [4] and bitfit.evals[0]["loss"] > 0
    assert adapter.evals == []  # TinyLMTask's evaluate takes no model= (see train's docstring)


def test_a_method_run_resumes_exactly(tmp_path):
    params = _tiny3_params()
    _, whole = run("adapter_l", params, steps=8)
    setup = METHODS["adapter_l"].build(params, TINY3, seed=0, r=4)
    task, tc = TinyLMTask(length=TINY3.context), TrainConfig(steps=8, batch_size=8, lr=3e-2, warmup=2, eval_every=0)
    state = tmp_path / "state.safetensors"
    train(task, params, TINY3, tc, method=setup, checkpoint=state, stop_after=5, progress=False)
    resumed = train(task, params, TINY3, tc, method=setup, checkpoint=state, resume=state, progress=False)
    assert bitwise_equal(resumed.trainable, whole.trainable)
    other = METHODS["adapter_l"].build(params, TINY3, seed=0, r=2)
    with pytest.raises(ValueError, match="different run|options"):
        train(task, params, TINY3, tc, method=other, resume=state, progress=False)


# ---- gradients --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(METHODS))
def test_the_objective_gradient_matches_finite_differences(name):
    """float64, away from init (every trainable leaf perturbed, so no gradient is zero by symmetry), on a
    prompt → answer batch (the prefix methods with an infix)."""
    from autograd import grad
    from gradcheck import directional_check

    from minilora.train import method_objective
    from minilora.tree import map_leaves

    params = init_params(TINY3, 0, dtype=np.float64)
    options = {**OPTIONS.get(name, {}), **({"l_p": 2, "l_i": 2} if name in ("preembed", "prelayer") else {})}
    setup = METHODS[name].build(params, TINY3, seed=0, **options)
    rng = np.random.default_rng(1)
    start = map_leaves(lambda a: a + 0.05 * rng.standard_normal(a.shape), setup.trainable)
    batch = prompt_answer_batch()

    def f(trainable):
        return method_objective(trainable, setup.frozen, batch, TINY3, setup, None)

    directional_check(f, start, grad(f)(start), rng)


# ---- the adapted model starts at the base model ------------------------------------------------------------

@pytest.mark.parametrize("name", ["ft", "ft_top2", "bitfit", "adapter_h", "adapter_l", "lora", "lora_plus",
                                  "lora_fa"])
def test_adapted_model_equals_the_base_at_init(name):
    params = _tiny3_params()
    x = TinyLMTask(length=TINY3.context).eval_x
    setup = METHODS[name].build(params, TINY3, seed=0, **OPTIONS.get(name, {}))
    assert np.array_equal(setup.logits(setup.trainable, Batch(x, None)), transformer(params, x, TINY3))


def test_adapter_up_projection_is_zero_and_down_is_not():
    setup = METHODS["adapter_h"].build(_tiny3_params(), TINY3, seed=0, r=4)
    for block in setup.trainable["blocks"]:
        for p in (block["attn"], block["mlp"]):
            assert not p["up"]["W"].any() and not p["up"]["b"].any() and p["down"]["W"].std() > 0


# ---- prefix tuning: where the virtual tokens sit --------------------------------------------------------------

def prompt_answer_batch(T=10, a=5):
    """Rows whose weights start at position a (the token that predicts the answer's first byte)."""
    x = (97 + np.random.default_rng(0).integers(0, 8, size=(3, T))).astype(np.int32)
    w = np.zeros((3, T), np.float32)
    w[:, a:] = 1.0
    return Batch(x, np.roll(x, -1, axis=1), w)


@pytest.mark.parametrize("name", ["preembed", "prelayer"])
def test_the_infix_sits_between_prompt_and_answer(name):
    params, a = _tiny3_params(), 5
    batch = prompt_answer_batch(a=a)
    setup = METHODS[name].build(params, TINY3, seed=0, l_p=2, l_i=3)
    logits = setup.logits(setup.trainable, batch)
    assert logits.shape == (3, 10, TINY3.vocab_size)
    changed = copy.deepcopy(setup.trainable)
    changed["virtual"][..., 2:, :] += 1.0  # only the infix rows (the last l_i of each block)
    other = setup.logits(changed, batch)
    assert np.array_equal(logits[:, :a], other[:, :a]), "the prompt saw the infix"
    assert (logits[:, a:] != other[:, a:]).any(axis=-1).all(), "an answer position did not see the infix"
    changed = copy.deepcopy(setup.trainable)
    changed["virtual"][..., :2, :] += 1.0  # the prefix reaches every position
    other = setup.logits(changed, batch)
    assert (logits != other).any(axis=-1).all(), "a position did not see the prefix"


def _explicit_sequence(x_row, a, l_p, l_i):
    """The lengthened row written out as a list: ("v", k) virtual row k, ("x", t) real token t."""
    T = len(x_row)
    return ([("v", k) for k in range(l_p)] + [("x", t) for t in range(a + 1)] +
            [("v", l_p + k) for k in range(l_i)] + [("x", t) for t in range(a + 1, T)])


@pytest.mark.parametrize("name", ["preembed", "prelayer"])
def test_prefix_layout_equals_the_sequence_written_out(name):
    """The logits equal the frozen transformer run on [prefix][prompt][infix][answer] built by hand, row by row
    (rows with different prompt lengths), real token t read at its own column and the first answer byte read at
    the last infix column; position embeddings wpe[j] by column j; PreLayer's rows replace every block's input."""
    params, l_p, l_i = _tiny3_params(), 2, 3
    x = (97 + np.random.default_rng(3).integers(0, 8, size=(3, 9))).astype(np.int32)
    starts = np.array([2, 5, 7])  # each row's first weighted position a (the token before the answer)
    w = (np.arange(9)[None] >= starts[:, None]).astype(np.float32)
    setup = METHODS[name].build(params, TINY3, seed=0, l_p=l_p, l_i=l_i)
    virtual = np.asarray(setup.trainable["virtual"])  # (l, d) PreEmbed, (L, l, d) PreLayer
    got = setup.logits(setup.trainable, Batch(x, np.roll(x, -1, axis=1), w))
    for b, a in enumerate(starts):
        seq = _explicit_sequence(x[b], int(a), l_p, l_i)
        columns = [j for j, (kind, _) in enumerate(seq) if kind == "v"]
        rows = [k for kind, k in seq if kind == "v"]

        def embed(tokens, p, seq=seq):
            first = virtual if virtual.ndim == 2 else virtual[0]
            e = np.stack([first[k] if kind == "v" else p["wte"][x[b, k]] for kind, k in seq])  # (T', d)
            return (e + p["wpe"][:len(seq)])[None]  # (1, T', d)

        def enter(i, h, columns=columns, rows=rows):
            if virtual.ndim == 2:
                return h
            h = np.array(h)
            h[0, columns] = virtual[i][rows]
            return h

        full = transformer(params, x[b:b + 1], TINY3, Hooks(embed=embed, enter_block=enter))[0]  # (T', V)
        read = [seq.index(("x", t)) for t in range(9)]
        read[a] = seq.index(("v", l_p + l_i - 1))  # the first answer byte comes from the last infix position
        np.testing.assert_allclose(got[b], full[read], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["preembed", "prelayer"])
def test_prefix_tuning_is_scored_where_it_is_trained(name):
    """The class metric of evaluation (tasks.evaluate_class, through train's model callable) reads the first
    answer byte where the training objective puts its loss: its first-byte NLL equals the objective with the
    weight on each row's first answer byte only."""
    from test_experiments import TinyClassTask

    from minilora.train import method_objective

    config = dataclasses.replace(TINY3, context=32)
    params = init_params(config, 0)
    task = TinyClassTask(context=32)
    setup = METHODS[name].build(params, config, seed=0, l_p=2, l_i=2)
    scored = task.evaluate_class(params, config, split="train", model=lambda b: setup.logits(setup.trainable, b))
    x, y, w, at, _ = task.split("train")
    T = int(w.nonzero()[1].max()) + 1  # the padding trimmed, as evaluation does
    x, y = x[:, :T], y[:, :T]
    first = np.zeros(x.shape, np.float32)
    first[np.arange(len(x)), at] = 1.0
    trained = method_objective(setup.trainable, setup.frozen, Batch(x, y, first), config, setup, None)
    assert scored["first_byte_nll"] == pytest.approx(float(trained), rel=1e-5)


def test_prefix_tuning_refuses_an_infix_on_plain_lm_data_and_an_overlong_batch():
    params = _tiny3_params()
    setup = METHODS["preembed"].build(params, TINY3, seed=0, l_p=2, l_i=1)
    x = np.zeros((2, 8), np.int32)
    with pytest.raises(ValueError, match="l_i=1 infix tokens need a prompt"):
        setup.model(setup.trainable, Batch(x, x))
    with pytest.raises(ValueError, match="exceed the context 16"):
        setup.model(setup.trainable, Batch(np.zeros((2, 15), np.int32), x))
    with pytest.raises(ValueError, match="at least 1"):
        METHODS["prelayer"].build(params, TINY3, seed=0, l_p=0, l_i=0)


def test_prelayer_with_an_infix_learns_a_prompt_answer_task():
    params = _tiny3_params()
    setup = METHODS["prelayer"].build(params, TINY3, seed=0, l_p=2, l_i=2)

    class PromptAnswer(TinyLMTask):  # the stream, with the loss on the positions from 6 on (the "answer")
        def batch(self, step, batch_size, seed):
            b = super().batch(step, batch_size, seed)
            w = np.zeros(b.x.shape, np.float32)
            w[:, 6:] = 1.0
            return Batch(b.x, b.y, w)

    tc = TrainConfig(steps=60, batch_size=8, lr=0.1, warmup=2, eval_every=0, clip=0.0)
    res = train(PromptAnswer(length=12), params, TINY3, tc, method=setup, progress=False)
    h = [s["loss"] for s in res.history]
    assert np.mean(h[-10:]) < np.mean(h[:10]) - 0.3, (np.mean(h[:10]), np.mean(h[-10:]))


# ---- LoRA+ and LoRA-FA --------------------------------------------------------------------------------------

def test_lora_plus_steps_b_at_ratio_times_loras_rate():
    params = _tiny3_params()
    _, lora = run("lora", params, steps=1, warmup=1)
    _, plus = run("lora_plus", params, steps=1, warmup=1)
    for got, ref in zip(plus.trainable["blocks"], lora.trainable["blocks"], strict=True):
        for t in got:
            np.testing.assert_allclose(got[t]["B"], 16.0 * ref[t]["B"], rtol=1e-5, atol=1e-9)
            assert ref[t]["B"].any()
            np.testing.assert_array_equal(got[t]["A"], ref[t]["A"])  # B = 0 at step 1: A's gradient is 0


def test_adamw_lr_scale_of_ones_changes_nothing():
    rng = np.random.default_rng(0)
    p = {"a": rng.standard_normal((3, 2)).astype(np.float32), "b": [rng.standard_normal(4).astype(np.float32)]}
    g = {"a": rng.standard_normal((3, 2)).astype(np.float32), "b": [rng.standard_normal(4).astype(np.float32)]}
    opt = AdamW(weight_decay=0.1)
    plain, _ = opt.update(p, g, opt.init(p), 1e-2)
    ones, _ = opt.update(p, g, opt.init(p), 1e-2, {"a": 1.0, "b": [1.0]})
    twice, _ = opt.update(p, g, opt.init(p), 1e-2, {"a": 2.0, "b": [1.0]})
    assert bitwise_equal(plain, ones)
    np.testing.assert_allclose(twice["a"] - p["a"], 2 * (plain["a"] - p["a"]), rtol=1e-5)
    assert twice["b"][0].tobytes() == plain["b"][0].tobytes()


def test_lora_fa_trains_b_only_with_a_on_the_frozen_side():
    params = _tiny3_params()
    setup, res = run("lora_fa", params)
    assert {k.rsplit(".", 1)[1] for k in flatten(res.trainable)} == {"B"}
    assert {k.rsplit(".", 1)[1] for k in flatten(setup.frozen["lora_A"])} == {"A"}
    lora = METHODS["lora"].build(params, TINY3, seed=0, r=4)
    assert bitwise_equal(setup.frozen["lora_A"], split(lora.trainable, lambda p: p[-1] == "A")[0])


# ---- the interface ---------------------------------------------------------------------------------------------

def test_every_method_describes_itself_and_checks_its_options():
    for name, m in METHODS.items():
        assert m.name == name and m.label and m.trains and m.formula and m.file_holds
    with pytest.raises(ValueError, match="unknown option.*'rank'.*its options are \\['r'\\]"):
        METHODS["adapter_l"].build(_tiny3_params(), TINY3, rank=4)
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        METHODS["bitfit"].build(_tiny3_params(), {"d_model": 16})
    with pytest.raises(ValueError):
        METHODS["bitfit"].build(_tiny3_params(), TINY)  # 3 blocks given, the config says 2
    with pytest.raises(ValueError, match="unknown method 'prefix'"):
        get_method("prefix")
    with pytest.raises(ValueError, match="at least 2 blocks"):
        METHODS["ft_top2"].build(init_params(dataclasses.replace(TINY, n_layer=1), 0),
                                 dataclasses.replace(TINY, n_layer=1))
    with pytest.raises(ValueError, match="LoRA\\+.ratio must be a finite number > 0"):
        METHODS["lora_plus"].build(_tiny3_params(), TINY3, ratio=0)
    setup = METHODS["bitfit"].build(_tiny3_params(), TINY3)
    with pytest.raises(TypeError, match="options go to build"):
        train(TinyLMTask(), _tiny3_params(), TINY3, TrainConfig(steps=1), method=setup, lora_config=object(),
              progress=False)
    with pytest.raises(ValueError, match="'params' must be the very tree the setup was built on"):
        train(TinyLMTask(), _tiny3_params(), TINY3, TrainConfig(steps=1), method=setup, progress=False)
    with pytest.raises(ValueError, match="built for another config"):
        train(TinyLMTask(), setup.base, TINY, TrainConfig(steps=1), method=setup, progress=False)
    with pytest.raises(ValueError, match="method must be 'lora', 'full' or a minilora.methods Setup"):
        train(TinyLMTask(), _tiny3_params(), TINY3, TrainConfig(steps=1), method="bitfit", progress=False)


def test_split_and_join_are_inverse():
    params = _tiny3_params()
    a, b = split(params, lambda path: path[-1] == "g")
    assert bitwise_equal(join(a, b), params)
    assert all(k.endswith(".g") for k in flatten(a)) and not any(k.endswith(".g") for k in flatten(b))


# ---- the GPU path (the strict CuPy stand-in of tests/fake_gpu.py) ------------------------------------------------

@pytest.fixture
def standin():
    import fake_gpu

    from minilora import backend

    before = backend._xp
    backend.register(fake_gpu)
    backend.use("numpy")
    yield fake_gpu
    backend._xp = before


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_on_the_device_as_on_numpy(standin, name):
    from test_backend_standin import DeviceTinyLMTask  # evaluates with its targets moved to the device

    from minilora import backend

    task = DeviceTinyLMTask(length=TINY3.context - L_P)
    tc = TrainConfig(steps=3, batch_size=3, lr=3e-2, warmup=1, eval_every=0)
    options = OPTIONS.get(name, {})
    host = _tiny3_params()
    ref = train(task, host, TINY3, tc, method=METHODS[name].build(host, TINY3, 0, **options), progress=False)
    backend.use(standin)
    params = backend.to_device(_tiny3_params())
    setup = METHODS[name].build(params, TINY3, 0, **options)
    res = train(task, params, TINY3, tc, method=setup, progress=False)
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
    flat = flatten(res.trainable)
    assert all(type(a) is standin.ndarray for a in flat.values())
    assert bitwise_equal(backend.to_host(res.trainable), ref.trainable)
    assert res.evals == ref.evals
