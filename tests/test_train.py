"""The training loop (LoRA and full), its determinism, resume, NaN guard; AdamW, schedule, clipping; TrainConfig."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
from conftest import TINY, TinyLMTask, tiny_params

from minilora import LoraConfig, init_lora
from minilora.checkpoint import load_train_state
from minilora.optim import AdamW, clip_by_global_norm, global_norm, lr_at
from minilora.tasks import Batch
from minilora.train import TrainConfig, TrainingDiverged, train
from minilora.tree import flatten, map_leaves

LCFG = LoraConfig(r=4, alpha=8.0, targets=("wq", "wv"))


def tc(**kw):
    base = {"steps": 30, "batch_size": 8, "lr": 3e-2, "warmup": 2, "eval_every": 0}
    return TrainConfig(**{**base, **kw})


def bitwise_equal(a, b) -> bool:
    fa, fb = flatten(a), flatten(b)
    return sorted(fa) == sorted(fb) and all(
        fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape and fa[k].tobytes() == fb[k].tobytes() for k in fa)


def losses(result):
    return [h["loss"] for h in result.history]


def run_lora(task, params, config=None, lcfg=LCFG, **kw):
    return train(task, params, TINY, config or tc(), method="lora", lora=init_lora(TINY, lcfg, 0), lora_config=lcfg,
                 progress=False, **kw)


# ---- LoRA and full fine-tuning ----------------------------------------------------------------------------

def test_lora_reduces_loss_and_leaves_base_untouched(tiny_task):
    params = tiny_params()
    before = copy.deepcopy(params)
    res = run_lora(tiny_task, params)
    h = losses(res)
    assert len(h) == 30 and [e["step"] for e in res.history] == list(range(1, 31))
    first, last = np.mean(h[:10]), np.mean(h[-10:])
    assert last < first - 0.3, f"first-10 mean {first:.4f}, last-10 mean {last:.4f}"
    assert bitwise_equal(params, before), "LoRA training modified the frozen base parameters"
    # only A and B are trained; the result is an adapter of the same structure
    assert sorted(flatten(res.trainable)) == sorted(flatten(init_lora(TINY, LCFG, 0)))
    assert all(a.dtype == np.float32 for a in flatten(res.trainable).values())
    # the final evaluation is recorded, and agrees with the trained adapter
    assert res.evals[-1]["step"] == 30
    assert res.evals[-1]["loss"] == tiny_task.evaluate(params, TINY, res.trainable, LCFG)["loss"]
    assert res.evals[-1]["loss"] < tiny_task.evaluate(params, TINY)["loss"]


def test_full_finetuning_changes_every_array_and_reduces_loss(tiny_task):
    params = tiny_params()
    before = copy.deepcopy(params)
    res = train(tiny_task, params, TINY, tc(lr=1e-2), method="full", progress=False)
    h = losses(res)
    assert np.mean(h[-10:]) < np.mean(h[:10]) - 0.5, (np.mean(h[:10]), np.mean(h[-10:]))
    assert bitwise_equal(params, before), "train() modified the caller's params in place"
    new, old = flatten(res.trainable), flatten(before)
    assert sorted(new) == sorted(old)
    unchanged = [k for k in old if np.array_equal(new[k], old[k])]
    assert unchanged == [], f"full fine-tuning left these arrays unchanged: {unchanged}"
    assert all(new[k].dtype == np.float32 for k in new)
    # AdamW's state stays float32 too
    assert all(a.dtype == np.float32 for a in flatten(res.opt_state["m"]).values())
    assert all(a.dtype == np.float32 for a in flatten(res.opt_state["v"]).values())
    assert res.opt_state["step"] == 30


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_value_and_grad_of_leaves_equals_the_tree_traced_gradients_bit_for_bit(mode, dtype):
    """train's gradient functions trace a flat list of the leaves (fewer zero trees): the loss and every gradient
    must be exactly those of value_and_grad(objective), which traces the nested tree."""
    from autograd import value_and_grad

    from minilora.train import full_objective, full_value_and_grad, lora_objective, lora_value_and_grad

    params = tiny_params(3, dtype=dtype)
    tokens = np.random.default_rng(4).integers(0, TINY.vocab_size, size=(3, 9))
    weights = np.random.default_rng(5).random((3, 8)).astype(dtype)
    batch = Batch(tokens[:, :-1], tokens[:, 1:], weights)
    if mode == "lora":
        lcfg = LoraConfig(r=4, alpha=8.0, targets=("wq", "wk", "wv", "wo", "mlp_in", "mlp_out"), dropout=0.25)
        lora = init_lora(TINY, lcfg, 6, dtype=dtype)
        lora = map_leaves(lambda a: a + np.asarray(0.1, dtype), lora)  # B != 0: every gradient flows
        args = (lora, params, batch, TINY, lcfg, np.random.default_rng(7))
        again = (lora, params, batch, TINY, lcfg, np.random.default_rng(7))  # the same dropout masks
        tree_traced, flat_traced = value_and_grad(lora_objective), lora_value_and_grad
    else:
        args = again = (params, None, batch, TINY, None, None)
        tree_traced, flat_traced = value_and_grad(full_objective), full_value_and_grad
    loss_tree, grads_tree = tree_traced(*args)
    loss_flat, grads_flat = flat_traced(*again)
    assert np.asarray(loss_flat).dtype == dtype and np.asarray(loss_flat).tobytes() == np.asarray(loss_tree).tobytes()
    assert bitwise_equal(grads_flat, grads_tree)
    assert type(grads_flat["blocks"]) is list and all(np.any(g != 0) for g in flatten(grads_flat).values())


def test_gradient_functions_still_name_a_malformed_tree():
    """A first argument that is not a tree of arrays is traced as given, so forward's checks say what is wrong."""
    from minilora.train import lora_value_and_grad

    tokens = np.zeros((2, 5), dtype=np.int64)
    with pytest.raises(TypeError, match="lora must be a dict"):
        lora_value_and_grad({"blocks": 3}, tiny_params(0), Batch(tokens, tokens), TINY, LCFG, None)


def test_from_leaves_inverts_leaves_and_checks_the_count():
    from minilora.tree import from_leaves, leaves

    params = tiny_params(0)
    values = leaves(params)
    assert [id(v) for v in values] == [id(v) for v in flatten(params).values()]  # flatten's order
    rebuilt = from_leaves(params, [v * 2 for v in values])
    assert bitwise_equal(rebuilt, map_leaves(lambda v: v * 2, params))
    with pytest.raises(ValueError, match="leaves"):
        from_leaves(params, values[:-1])


def test_train_rejects_bad_arguments(tiny_task):
    with pytest.raises(ValueError, match="method"):
        train(tiny_task, tiny_params(), TINY, tc(), method="qlora", progress=False)
    with pytest.raises(TypeError, match="lora_config"):
        train(tiny_task, tiny_params(), TINY, tc(), method="lora", progress=False)


def test_the_methods_lora_and_ft_train_exactly_as_the_lora_and_full_paths(tiny_task):
    """train(method=<Setup>) is the same loop: LoRA (with dropout) and FT built as methods give the bit-identical
    run of method="lora" and method="full"."""
    from minilora.methods import METHODS

    params = tiny_params()
    lcfg = LoraConfig(r=4, alpha=8.0, targets=("wq", "wv"), dropout=0.1)
    old = run_lora(tiny_task, params, tc(steps=6), lcfg)
    setup = METHODS["lora"].build(params, TINY, seed=0, **lcfg.to_dict())
    new = train(tiny_task, params, TINY, tc(steps=6), method=setup, progress=False)
    assert losses(new) == losses(old) and bitwise_equal(new.trainable, old.trainable)
    assert new.evals == old.evals
    full = train(tiny_task, params, TINY, tc(steps=4), method="full", progress=False)
    ft = train(tiny_task, params, TINY, tc(steps=4), method=METHODS["ft"].build(params, TINY), progress=False)
    assert losses(ft) == losses(full) and bitwise_equal(ft.trainable, full.trainable)


# ---- determinism ------------------------------------------------------------------------------------------

def test_same_seed_same_run_different_seed_different_run(tiny_task):
    params = tiny_params()
    lcfg = LoraConfig(r=4, alpha=8.0, dropout=0.1)
    a = run_lora(tiny_task, params, tc(steps=8), lcfg)
    b = run_lora(tiny_task, params, tc(steps=8), lcfg)
    c = run_lora(tiny_task, params, tc(steps=8, seed=1), lcfg)
    assert losses(a) == losses(b)
    assert bitwise_equal(a.trainable, b.trainable)
    assert losses(a) != losses(c)
    assert not bitwise_equal(a.trainable, c.trainable)


def test_full_same_seed_same_run(tiny_task):
    a = train(tiny_task, tiny_params(), TINY, tc(steps=5), method="full", progress=False)
    b = train(tiny_task, tiny_params(), TINY, tc(steps=5), method="full", progress=False)
    assert losses(a) == losses(b) and bitwise_equal(a.trainable, b.trainable)


def test_dropout_changes_training(tiny_task):
    """With LoRA dropout on, the run differs from one without (the per-step masks are used)."""
    params = tiny_params()
    a = run_lora(tiny_task, params, tc(steps=4), LoraConfig(r=4, alpha=8.0, dropout=0.0))
    b = run_lora(tiny_task, params, tc(steps=4), LoraConfig(r=4, alpha=8.0, dropout=0.3))
    assert losses(a)[0] == losses(b)[0]  # B = 0 at step 0: dropout on the adapter input changes nothing yet
    assert losses(a)[1:] != losses(b)[1:]


# ---- resume -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_reproduces_an_uninterrupted_run(tiny_task, tmp_path, method):
    params = tiny_params()
    lcfg = LoraConfig(r=4, alpha=8.0, dropout=0.1)
    config = tc(steps=20, checkpoint_every=10, eval_every=5, lr=1e-2)

    def run(**kw):
        extra = {"lora": init_lora(TINY, lcfg, 0), "lora_config": lcfg} if method == "lora" else {}
        return train(tiny_task, params, TINY, config, method=method, progress=False, **extra, **kw)

    a = run(checkpoint=tmp_path / "a.safetensors")
    b_state = tmp_path / "b.safetensors"
    b1 = run(checkpoint=b_state, stop_after=10)
    assert len(b1.history) == 10
    _, saved, _ = load_train_state(b_state, n_blocks=TINY.n_layer)
    assert saved["step"] == 10
    b = run(resume=b_state, checkpoint=b_state)
    assert b.opt_state["step"] == 20
    assert bitwise_equal(a.trainable, b.trainable), "resumed run ends elsewhere than the uninterrupted one"
    assert bitwise_equal(a.opt_state["m"], b.opt_state["m"]) and bitwise_equal(a.opt_state["v"], b.opt_state["v"])
    assert losses(a) == losses(b)
    assert [h["step"] for h in b.history] == list(range(1, 21))
    assert a.evals == b.evals
    # the checkpoint files at the end hold the same final state
    ta, _, _ = load_train_state(tmp_path / "a.safetensors", n_blocks=TINY.n_layer)
    tb, sb, meta = load_train_state(b_state, n_blocks=TINY.n_layer)
    assert bitwise_equal(ta, tb) and sb["step"] == 20
    assert [h["loss"] for h in meta["history"]] == losses(a)


def test_resume_refuses_a_different_run(tiny_task, tmp_path):
    state = tmp_path / "s.safetensors"
    run_lora(tiny_task, tiny_params(), tc(steps=4), checkpoint=state, stop_after=2)
    with pytest.raises(ValueError, match="different run"):
        run_lora(tiny_task, tiny_params(), tc(steps=4, lr=1e-3), resume=state)
    with pytest.raises(ValueError, match="different run"):
        train(tiny_task, tiny_params(), TINY, tc(steps=4), method="full", resume=state, progress=False)


def test_resume_refuses_a_different_lora_config(tiny_task, tmp_path):
    state = tmp_path / "s.safetensors"
    run_lora(tiny_task, tiny_params(), tc(steps=4), LoraConfig(r=4, alpha=8.0), checkpoint=state, stop_after=2)
    with pytest.raises(ValueError, match="different run|lora_config|LoraConfig"):
        run_lora(tiny_task, tiny_params(), tc(steps=4), LoraConfig(r=4, alpha=32.0), resume=state)


def test_numpy_int_train_config_can_checkpoint(tiny_task, tmp_path):
    config = tc(steps=np.int64(2), batch_size=np.int64(4))
    run_lora(tiny_task, tiny_params(), config, checkpoint=tmp_path / "s.safetensors")


# ---- NaN guard --------------------------------------------------------------------------------------------

class PoisonedTask:
    """The tiny task with soft (one-hot) targets; the batch at step ``bad_step`` holds a NaN target."""

    name = "poisoned"

    def __init__(self, bad_step: int):
        self.inner = TinyLMTask()
        self.bad_step = bad_step

    def batch(self, step, batch_size, seed):
        b = self.inner.batch(step, batch_size, seed)
        y = np.zeros(b.y.shape + (TINY.vocab_size,), np.float32)  # (B, T, V)
        np.put_along_axis(y, b.y[..., None], 1.0, axis=-1)
        if step == self.bad_step:
            y[0, 3, 5] = np.nan
        return Batch(b.x, y)

    def evaluate(self, params, config, lora=None, lora_config=None):
        return self.inner.evaluate(params, config, lora, lora_config)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_nan_guard_stops_and_keeps_last_good_state(tmp_path, method):
    state = tmp_path / "state.safetensors"
    params = tiny_params()
    extra = {"lora": init_lora(TINY, LCFG, 0), "lora_config": LCFG} if method == "lora" else {}
    with pytest.raises(TrainingDiverged, match=r"step 4\b") as err:  # the 4th step (index 3) sees the NaN
        train(PoisonedTask(3), params, TINY, tc(steps=10, checkpoint_every=1), method=method, checkpoint=state,
              progress=False, **extra)
    assert str(state) in str(err.value), "the message should say where the last good state is"
    trainable, opt_state, meta = load_train_state(state, n_blocks=TINY.n_layer)
    assert opt_state["step"] == 3
    assert len(meta["history"]) == 3
    assert all(np.isfinite(a).all() for a in flatten(trainable).values())
    # exactly the state of a clean run stopped after 3 steps (the bad update was never applied)
    clean = train(PoisonedTask(-1), params, TINY, tc(steps=10), method=method, stop_after=3, progress=False,
                  **extra)
    assert bitwise_equal(trainable, clean.trainable)
    # and training resumes from it (with the data fixed)
    resumed = train(PoisonedTask(-1), params, TINY, tc(steps=10, checkpoint_every=1), method=method,
                    resume=state, stop_after=5, progress=False, **extra)
    assert resumed.opt_state["step"] == 5


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_guard_on_poisoned_params(tiny_task):
    params = tiny_params()
    params["blocks"][0]["wq"]["W"][0, 0] = np.inf
    with pytest.raises(TrainingDiverged, match=r"step 1\b"):
        run_lora(tiny_task, params, tc(steps=3))
    with pytest.raises(TrainingDiverged, match=r"step 1\b"):
        train(tiny_task, params, TINY, tc(steps=3), method="full", progress=False)


def test_nan_guard_message_does_not_point_to_an_unwritten_checkpoint(tmp_path):
    state = tmp_path / "state.safetensors"
    with pytest.raises(TrainingDiverged) as err:
        run_lora(PoisonedTask(3), tiny_params(), tc(steps=10, checkpoint_every=0), checkpoint=state)
    assert state.exists() or str(state) not in str(err.value)


# ---- optimizer, schedule, clipping ------------------------------------------------------------------------

def test_lr_schedule_shape():
    peak, warmup, total = 1e-3, 10, 100
    assert lr_at(0, peak, warmup, total) == pytest.approx(peak / warmup)
    assert lr_at(4, peak, warmup, total) == pytest.approx(peak * 5 / warmup)
    assert lr_at(warmup - 1, peak, warmup, total) == pytest.approx(peak)
    assert lr_at(warmup, peak, warmup, total) == pytest.approx(peak)
    mid = warmup + (total - warmup) // 2
    assert lr_at(mid, peak, warmup, total) == pytest.approx(peak * (0.1 + 0.9 * 0.5))
    assert lr_at(total, peak, warmup, total) == pytest.approx(0.1 * peak)
    assert lr_at(total + 50, peak, warmup, total) == pytest.approx(0.1 * peak)
    assert lr_at(total, peak, warmup, total, min_ratio=0.0) == pytest.approx(0.0, abs=1e-15)
    lrs = [lr_at(s, peak, warmup, total) for s in range(total)]
    assert all(a < b for a, b in itertools.pairwise(lrs[:warmup])), "warm-up must increase"
    assert all(a >= b for a, b in itertools.pairwise(lrs[warmup:])), "cosine must not increase"
    assert max(lrs) == pytest.approx(peak) and min(lrs[warmup:]) > 0.1 * peak
    # no warm-up: start at the peak
    assert lr_at(0, peak, 0, total) == pytest.approx(peak)


def test_clip_by_global_norm():
    grads = {"a": np.array([3.0, 0.0], np.float32), "b": [np.array([[4.0]], np.float32)]}
    assert global_norm(grads) == pytest.approx(5.0)
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"][0], [[0.8]], rtol=1e-6)
    assert clipped["a"].dtype == np.float32
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])  # input untouched
    same, norm = clip_by_global_norm(grads, 10.0)  # under the limit: unchanged
    assert norm == pytest.approx(5.0) and same["a"] is grads["a"]
    same, _ = clip_by_global_norm(grads, 0.0)  # 0 disables clipping
    assert same["a"] is grads["a"]


def test_adamw_first_step_moves_by_lr_times_sign():
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    grads = {"W": (rng.standard_normal((4, 3)) * 10.0 ** rng.integers(-3, 3, (4, 3))).astype(np.float32),
             "b": np.array([1e-2, -5.0, 300.0], np.float32)}
    opt = AdamW()
    lr = 0.01
    new, state = opt.update(params, grads, opt.init(params), lr)
    for k, p in params.items():
        np.testing.assert_allclose(new[k] - p, -lr * np.sign(grads[k]), rtol=1e-3, atol=1e-6)
        assert new[k].dtype == np.float32
        assert state["m"][k].dtype == np.float32 and state["v"][k].dtype == np.float32
    assert state["step"] == 1
    np.testing.assert_array_equal(opt.init(params)["m"]["W"], 0)


def test_adamw_weight_decay_applies_to_matrices_only():
    params = {"W": np.full((2, 2), 3.0, np.float32), "b": np.full(2, 3.0, np.float32),
              "blocks": [{"ln": {"g": np.full(2, 3.0, np.float32)}}]}
    zeros = map_leaves(np.zeros_like, params)
    opt = AdamW(weight_decay=0.1)
    new, _ = opt.update(params, zeros, opt.init(params), 0.5)
    np.testing.assert_allclose(new["W"], 3.0 - 0.5 * 0.1 * 3.0, rtol=1e-6)
    np.testing.assert_array_equal(new["b"], params["b"])
    np.testing.assert_array_equal(new["blocks"][0]["ln"]["g"], params["blocks"][0]["ln"]["g"])
    np.testing.assert_array_equal(params["W"], 3.0)  # nothing modified in place


def test_adamw_state_stays_float32_over_steps():
    rng = np.random.default_rng(1)
    params = {"W": rng.standard_normal((3, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    opt = AdamW(weight_decay=0.01)
    state = opt.init(params)
    for _ in range(5):
        grads = map_leaves(lambda a: rng.standard_normal(a.shape).astype(np.float32), params)
        params, state = opt.update(params, grads, state, 1e-3)
    for tree in (params, state["m"], state["v"]):
        assert all(a.dtype == np.float32 for a in flatten(tree).values())
    assert state["step"] == 5


# ---- TrainConfig ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, field", [
    ({"steps": 0}, "steps"),
    ({"steps": -3}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"steps": True}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"clip": -1.0}, "clip"),
    ({"warmup": -1}, "warmup"),
    ({"eval_every": -1}, "eval_every"),
    ({"checkpoint_every": -1}, "checkpoint_every"),
    ({"seed": -1}, "seed"),
])
def test_train_config_rejects_bad_values(kw, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kw)


def test_train_config_defaults_are_valid():
    TrainConfig()
    TrainConfig(steps=1, warmup=0, eval_every=0, checkpoint_every=0, clip=0.0, weight_decay=0.0)


def test_each_state_is_written_once(tiny_task, tmp_path, monkeypatch):
    """checkpoint_every dividing the last step must not write the same final state a second time."""
    import minilora.checkpoint

    writes = []
    real = minilora.checkpoint.save_train_state
    monkeypatch.setattr(minilora.checkpoint, "save_train_state",
                        lambda path, t, s, meta: writes.append(s["step"]) or real(path, t, s, meta))
    run_lora(tiny_task, tiny_params(), tc(steps=6, checkpoint_every=3), checkpoint=tmp_path / "s.safetensors")
    assert writes == [3, 6]
    run_lora(tiny_task, tiny_params(), tc(steps=6, checkpoint_every=4), checkpoint=tmp_path / "t.safetensors")
    assert writes == [3, 6, 4, 6]


# ---- the finite blow-up guard and resume compatibility ---------------------------------------------------

def small_run(task, config, **kw):
    from test_faults import LCFG as SMALL_LCFG
    from test_faults import SMALL, small_params

    return train(task, small_params(), SMALL, config, method="lora", lora=init_lora(SMALL, SMALL_LCFG, 0),
                 lora_config=SMALL_LCFG, progress=False, **kw)


def test_blowup_reference_is_the_mean_of_the_first_five_steps():
    from test_faults import SmallTask

    config = tc(steps=10, batch_size=2, clip=0.0)
    clean = small_run(SmallTask(), config)
    reference = np.mean(losses(clean)[:5])
    # targets x 20 at step 8 (index 7): that loss is about 20 times the others; x 5 stays under the factor 10
    with pytest.raises(TrainingDiverged, match=r"step 8: the loss .* blowup_factor=10 times the reference loss "
                                               rf"{reference:.4g} \(the mean of steps 1-5\)"):
        small_run(SmallTask(scale_at=7, scale=20.0), config)
    assert len(small_run(SmallTask(scale_at=7, scale=5.0), config).history) == 10
    with pytest.raises(TrainingDiverged, match=r"step 8: .*blowup_factor=4"):
        small_run(SmallTask(scale_at=7, scale=5.0), tc(steps=10, batch_size=2, clip=0.0, blowup_factor=4.0))


def test_blowup_in_the_first_steps_compares_with_the_steps_done():
    from test_faults import SmallTask

    with pytest.raises(TrainingDiverged, match=r"step 2: .*\(the mean of step 1\)"):
        small_run(SmallTask(scale_at=1, scale=50.0), tc(steps=4, batch_size=2))


def test_resume_may_change_the_blowup_factor_and_reads_states_saved_before_it_existed(tmp_path):
    import json

    from test_faults import SmallTask

    from minilora.checkpoint import read_safetensors, write_safetensors

    state = tmp_path / "s.safetensors"
    full = small_run(SmallTask(), tc(steps=6, batch_size=2))
    small_run(SmallTask(), tc(steps=6, batch_size=2), checkpoint=state, stop_after=3)
    resumed = small_run(SmallTask(), tc(steps=6, batch_size=2, blowup_factor=0.0), resume=state)
    assert losses(resumed) == losses(full)
    # a state written before blowup_factor and base fingerprints existed
    arrays, meta = read_safetensors(state)
    info = json.loads(meta["minilora"])
    del info["train_config"]["blowup_factor"], info["base_sha256"]
    old = write_safetensors(tmp_path / "old.safetensors", arrays, {"minilora": json.dumps(info)})
    assert losses(small_run(SmallTask(), tc(steps=6, batch_size=2), resume=old)) == losses(full)
    with pytest.raises(ValueError, match=r"train_config differs in lr \(0\.03 there, 0\.01 here\)"):
        small_run(SmallTask(), tc(steps=6, batch_size=2, lr=1e-2), resume=old)


def test_train_config_round_trips_and_names_unknown_fields():
    config = tc(blowup_factor=3.0)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"TrainConfig: unknown field\(s\) \['lr_max'\]"):
        TrainConfig.from_dict({"lr_max": 1.0})
    assert TrainConfig(lr=np.float32(1e-3), steps=np.int32(3)).steps == 3
