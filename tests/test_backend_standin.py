"""The device path, proven on the CPU with a strict stand-in for CuPy (tests/fake_gpu.py).

With ``backend.use(fake_gpu)`` the same minilora code runs on arrays that refuse every implicit conversion to
NumPy, exactly as CuPy's do. Each test computes something twice, on NumPy and on the stand-in, and asserts the
results are bit-identical (the stand-in computes with NumPy underneath, so any difference is a different code
path), that the results stay on the "device", and that nothing but one-element reads (the loss, the gradient
norm) crossed to the host while computing (``fake_gpu.no_host_copies``).
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import autograd
import autograd.core
import fake_gpu
import numpy as np
import pytest
from conftest import TINY, TinyLMTask, tiny_params

from minilora import LoraConfig, backend, forward, init_lora, init_params, merge, unmerge
from minilora.analysis import delta_w_vs_w, subspace_similarity, subspace_similarity_grid
from minilora.checkpoint import (
    load_adapter,
    load_params,
    load_train_state,
    save_adapter,
    save_params,
    save_train_state,
)
from minilora.generate import generate
from minilora.lora import delta_weight
from minilora.ops import cross_entropy
from minilora.tasks import Batch
from minilora.train import TrainConfig, full_value_and_grad, lora_value_and_grad, train
from minilora.tree import flatten

ROOT = Path(__file__).resolve().parents[1]
LCFG = LoraConfig(r=2, alpha=4.0, targets=("wq", "wv", "mlp_in"), dropout=0.1)


@pytest.fixture
def standin():
    """The stand-in, registered; NumPy stays selected until a test selects the stand-in itself (references are
    computed on NumPy first). The previous backend comes back afterwards."""
    before = backend._xp
    backend.register(fake_gpu)
    backend.use("numpy")
    fake_gpu.transfers.reset()
    yield fake_gpu
    backend._xp = before


def on_device(tree) -> bool:
    return all(type(a) is fake_gpu.ndarray for a in flatten(tree).values())


def assert_same(host_tree, device_tree):
    """Same keys and bit-identical arrays; the second tree lives on the stand-in."""
    assert on_device(device_tree)
    a, b = flatten(host_tree), flatten(backend.to_host(device_tree))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k, strict=True)


def nonzero_b(lora, seed=3):
    """The adapter with a random B, so the low-rank path contributes to every output and gradient."""
    rng = np.random.default_rng(seed)
    for block in lora["blocks"]:
        for ab in block.values():
            ab["B"] = (0.3 * rng.standard_normal(ab["B"].shape)).astype(ab["B"].dtype)
    return lora


class DeviceTinyLMTask(TinyLMTask):
    """conftest's task, with an evaluate that moves its targets to the logits' device (as minilora's tasks do)."""

    def evaluate(self, params, config, lora=None, lora_config=None) -> dict:
        logits = forward(params, self.eval_x, config, lora, lora_config)
        return {"loss": float(cross_entropy(logits, backend.to_device(self.eval_y, like=logits)))}


# ---- choosing the backend -----------------------------------------------------------------------------------

def test_use_by_name_by_module_and_by_environment(monkeypatch):
    before = backend._xp
    try:
        assert backend.use("numpy") is np and backend.get_xp() is np
        assert backend.use(fake_gpu) is fake_gpu and backend.get_xp() is fake_gpu
        backend._xp = None  # not chosen yet: the environment decides, on first use
        monkeypatch.setenv(backend.ENV_VAR, "numpy")
        assert backend.get_xp() is np
        backend._xp = None
        monkeypatch.setenv(backend.ENV_VAR, "tpu")
        with pytest.raises(ValueError, match="MINILORA_BACKEND"):
            backend.get_xp()
        with pytest.raises(ValueError, match="backend must be one of"):
            backend.use("tpu")
        with pytest.raises(TypeError, match="module with NumPy's API"):
            backend.use(42)
        with pytest.raises(TypeError, match="has no 'ndarray'"):
            backend.use(types.ModuleType("nothing_like_numpy"))
    finally:
        backend._xp = before


def _fake_cupy(version, device_count):
    cupy = types.ModuleType("cupy")
    cupy.__version__ = version

    def count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count))
    return cupy


def test_cupy_missing_old_or_without_gpu_gives_clear_errors(monkeypatch):
    before = backend._xp
    try:
        monkeypatch.setitem(sys.modules, "cupy", None)  # importing it now fails, as where it is not installed
        with pytest.raises(ImportError, match=r"needs CuPy, which is not installed.*cupy-cuda12x.*cupy-cuda13x"):
            backend.use("cupy")
        backend._xp = None
        monkeypatch.setenv(backend.ENV_VAR, "cupy")
        with pytest.raises(ImportError, match="needs CuPy"):
            init_params(TINY, 0)  # the library's first array creation reads the variable
        monkeypatch.setitem(sys.modules, "cupy", _fake_cupy("12.3.0", 1))
        with pytest.raises(ImportError, match="needs CuPy >= 13, found 12.3.0"):
            backend.use("cupy")
        monkeypatch.setitem(sys.modules, "cupy", _fake_cupy("14.0.0", RuntimeError("cudaErrorNoDevice")))
        with pytest.raises(RuntimeError, match="sees no CUDA GPU.*cudaErrorNoDevice"):
            backend.use("cupy")
        monkeypatch.setitem(sys.modules, "cupy", _fake_cupy("14.0.0", 0))
        with pytest.raises(RuntimeError, match=r"sees no CUDA GPU \(getDeviceCount\(\) = 0\)"):
            backend.use("cupy")
    finally:
        backend._xp = before


def test_cli_backend_cupy_without_cupy_is_one_line_not_a_traceback(monkeypatch, capsys):
    from minilora.cli import main

    monkeypatch.setitem(sys.modules, "cupy", None)
    before = backend._xp
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "--backend", "cupy"])
    finally:
        backend._xp = before
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minilora: error: backend 'cupy' needs CuPy")


def test_environment_variable_cupy_without_cupy_in_a_fresh_process():
    """The real command line, in its own process: MINILORA_BACKEND=cupy with CuPy made unimportable."""
    code = ("import sys; sys.modules['cupy'] = None\n"
            "from minilora.cli import main\n"
            "sys.exit(main(['generate', 'hello', '--max-new', '1']))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MINILORA_BACKEND": "cupy"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs CuPy" in lines[0] and "cupy-cuda13x" in lines[0], done.stderr


# ---- the stand-in itself is as strict as CuPy ---------------------------------------------------------------

def test_stand_in_refuses_every_implicit_conversion(standin):
    x = standin.asarray(np.arange(6.0).reshape(2, 3))
    host = np.ones(3)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    for mixed in (lambda: x + host, lambda: host * x, lambda: np.add(x, host), lambda: np.concatenate([x, host[None]]),
                  lambda: x[np.array([0, 1])], lambda: x.__setitem__(0, host)):
        with pytest.raises(fake_gpu.HostArrayError):
            mixed()
    assert not isinstance(x, np.ndarray) and type(x.sum()) is fake_gpu.ndarray  # reductions stay 0-d arrays
    standin.transfers.reset()
    with standin.no_host_copies():
        assert float(x.sum()) == 15.0  # one element: allowed, counted
        with pytest.raises(fake_gpu.HostCopyError):
            x.get()
    assert standin.transfers.scalar_reads == 1 and standin.transfers.to_host == 0


def test_to_device_and_to_host_move_whole_trees(standin):
    backend.use(standin)
    tree = {"a": np.arange(3, dtype=np.float32), "b": [np.ones((2, 2)), (np.zeros(1, np.int32), 7)], "s": None,
            "batch": Batch(np.ones((1, 2), np.int32), np.zeros((1, 2), np.int32))}
    moved = backend.to_device(tree)
    assert type(moved["a"]) is fake_gpu.ndarray and type(moved["b"][1][0]) is fake_gpu.ndarray
    assert moved["b"][1][1] == 7 and moved["s"] is None and isinstance(moved["b"][1], tuple)
    assert isinstance(moved["batch"], Batch) and type(moved["batch"].x) is fake_gpu.ndarray
    back = backend.to_host(moved)
    np.testing.assert_array_equal(back["b"][0], tree["b"][0], strict=True)
    assert back["a"].dtype == np.float32 and back["b"][1][0].dtype == np.int32
    backend.use("numpy")
    assert backend.to_device(tree) is tree  # NumPy target: nothing is copied
    assert type(backend.to_device(tree, like=moved["a"])["a"]) is fake_gpu.ndarray


# ---- the model, LoRA and full fine-tuning -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_seed_gives_the_same_model_and_adapter_on_every_backend(standin, dtype):
    host_params, host_lora = init_params(TINY, 3, dtype=dtype), init_lora(TINY, LCFG, 4, dtype=dtype)
    backend.use(standin)
    with standin.no_host_copies():
        params, lora = init_params(TINY, 3, dtype=dtype), init_lora(TINY, LCFG, 4, dtype=dtype)
    assert_same(host_params, params)
    assert_same(host_lora, lora)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_and_gradients_are_bit_identical(standin, dtype):
    params, lora = tiny_params(0, dtype=dtype), nonzero_b(init_lora(TINY, LCFG, 1, dtype=dtype))
    batch = TinyLMTask().batch(0, 3, 0)
    ref = {"logits": forward(params, batch.x, TINY, lora, LCFG),
           "lora": lora_value_and_grad(lora, params, batch, TINY, LCFG, np.random.default_rng(5)),
           "full": full_value_and_grad(params, None, batch, TINY, LCFG, None)}
    backend.use(standin)
    d_params, d_lora, d_batch = backend.to_device((params, lora, batch))
    with standin.no_host_copies():
        logits = forward(d_params, batch.x, TINY, d_lora, LCFG)  # host tokens are moved by forward itself
        lora_loss, lora_grads = lora_value_and_grad(d_lora, d_params, d_batch, TINY, LCFG, np.random.default_rng(5))
        full_loss, full_grads = full_value_and_grad(d_params, None, d_batch, TINY, LCFG, None)
    assert_same({"logits": ref["logits"]}, {"logits": logits})
    assert float(lora_loss) == float(ref["lora"][0]) and float(full_loss) == float(ref["full"][0])
    assert_same(ref["lora"][1], lora_grads)  # with a dropout mask drawn on the host and moved
    assert_same(ref["full"][1], full_grads)


def test_only_device_safe_autograd_builtins_are_on_the_differentiated_path(monkeypatch):
    """Besides minilora's primitives, autograd records exactly three of its own on the path, and their VJPs are
    device-safe: container_take (dict/list access; zeros from each leaf's VSpace), numpy.add (unbroadcast sums
    through np.sum, which dispatches), and ArrayBox.__getitem__ (wpe[:T]; numpy.add.at into zeros from the VSpace,
    which CuPy >= 13 dispatches). A new one on the path must be checked on the stand-in before it is added here."""
    seen = set()
    init = autograd.core.VJPNode.__init__

    def record(self, value, fun, args, kwargs, parent_argnums, parents):
        raw = getattr(fun, "fun", fun)
        seen.add(f"{raw.__module__}.{raw.__qualname__}")
        init(self, value, fun, args, kwargs, parent_argnums, parents)

    monkeypatch.setattr(autograd.core.VJPNode, "__init__", record)
    params, batch = tiny_params(0), TinyLMTask().batch(0, 2, 0)
    every = LoraConfig(r=2, targets=("wq", "wk", "wv", "wo", "mlp_in", "mlp_out"), dropout=0.1)
    lora_value_and_grad(init_lora(TINY, every, 1), params, batch, TINY, every, np.random.default_rng(0))
    full_value_and_grad(params, None, batch, TINY, every, None)
    builtins = {name for name in seen if not name.startswith("minilora.ops.")}
    assert builtins == {"autograd.builtins.container_take", "numpy.add",
                        "autograd.numpy.numpy_boxes.ArrayBox.__getitem__"}


def test_autograd_builtins_that_allocate_on_the_host_are_caught(standin):
    """Why the list above matters: autograd's own VJP of sum() adds a host np.zeros to the cotangent."""
    x = standin.asarray(np.arange(4.0))
    with pytest.raises(fake_gpu.HostArrayError, match="NumPy array"):
        autograd.grad(lambda a: (a * a).sum())(x)
    assert autograd.grad(lambda a: (a * a).sum())(np.arange(4.0)).tolist() == [0.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize("how", ["implicit", "host_array", "explicit_get"])
def test_a_host_round_trip_inside_a_primitive_is_caught(standin, monkeypatch, how):
    """A primitive that leaves the device: by an implicit conversion (CuPy raises), by mixing in a host array
    (CuPy raises), or by an explicit .get() and back (CuPy allows it; the stand-in's no_host_copies catches it)."""
    ln = sys.modules["minilora.ops.layer_norm"]  # the module (minilora.ops.layer_norm is also the function)
    rows = ln._layer_norm_rows  # the forward's row kernel

    def leaky(x, gamma, beta, eps, out):
        xp = backend.array_module(x)
        if how == "implicit":
            x = xp.asarray(np.asarray(x))
        elif how == "host_array":
            x = x + np.zeros(x.shape, x.dtype)
        else:
            x = xp.asarray(x.get())
        return rows(x, gamma, beta, eps, out)

    monkeypatch.setattr(ln, "_layer_norm_rows", leaky)
    backend.use(standin)
    params, batch = backend.to_device((tiny_params(0), TinyLMTask().batch(0, 2, 0)))
    expected = {"implicit": (TypeError, "Implicit conversion"), "host_array": (fake_gpu.HostArrayError, "NumPy"),
                "explicit_get": (fake_gpu.HostCopyError, "copied")}[how]
    with standin.no_host_copies(), pytest.raises(expected[0], match=expected[1]):
        full_value_and_grad(params, None, batch, TINY, LCFG, None)


# ---- the real training loop, merge, checkpoints ---------------------------------------------------------------

def _train_both(task, tc):
    params = tiny_params(0)
    lora = init_lora(TINY, LCFG, 1)
    lora_run = train(task, params, TINY, tc, method="lora", lora=lora, lora_config=LCFG, progress=False)
    full_run = train(task, params, TINY, tc, method="full", progress=False)
    return lora_run, full_run


def test_train_loop_lora_and_full_bit_identical_and_on_the_device(standin):
    """The real train(): AdamW with weight decay, clipping, LoRA dropout, evaluations; every step identical."""
    task = DeviceTinyLMTask()
    tc = TrainConfig(steps=4, batch_size=3, lr=3e-2, warmup=1, weight_decay=0.1, clip=0.5, eval_every=2, seed=1)
    refs = _train_both(task, tc)
    backend.use(standin)
    standin.transfers.reset()
    with standin.no_host_copies():
        runs = _train_both(task, tc)
    assert standin.transfers.to_host == 0  # only one-element reads crossed: losses, norms, checks
    for ref, run in zip(refs, runs):
        assert [h["loss"] for h in run.history] == [h["loss"] for h in ref.history]
        assert [h["grad_norm"] for h in run.history] == [h["grad_norm"] for h in ref.history]
        assert run.evals == ref.evals
        assert_same(ref.trainable, run.trainable)
        assert_same({"m": ref.opt_state["m"], "v": ref.opt_state["v"]}, {"m": run.opt_state["m"],
                                                                        "v": run.opt_state["v"]})


def test_merge_and_checkpoints_round_trip_bit_identical(standin, tmp_path):
    params, lora = tiny_params(0), nonzero_b(init_lora(TINY, LCFG, 1))
    merged = merge(params, lora, LCFG)
    backend.use(standin)
    d_params, d_lora = backend.to_device((params, lora))
    with standin.no_host_copies():
        d_merged = merge(d_params, d_lora, LCFG)
        d_unmerged = unmerge(d_merged, d_lora, LCFG)
    assert_same(merged, d_merged)
    assert_same(unmerge(merged, lora, LCFG), d_unmerged)
    for name, save, args in (("params", save_params, (TINY,)), ("adapter", save_adapter, (LCFG, TINY))):
        tree, d_tree = (params, d_params) if name == "params" else (lora, d_lora)
        save(tmp_path / f"host_{name}.safetensors", tree, *args)
        save(tmp_path / f"dev_{name}.safetensors", d_tree, *args)  # through to_host: the bytes are the same
        host_bytes = (tmp_path / f"host_{name}.safetensors").read_bytes()
        assert (tmp_path / f"dev_{name}.safetensors").read_bytes() == host_bytes
    assert_same(params, load_params(tmp_path / "dev_params.safetensors", TINY)[0])  # read, placed on the device
    assert_same(lora, load_adapter(tmp_path / "dev_adapter.safetensors", TINY)[0])
    state = {"step": 3, "m": d_lora, "v": d_lora}
    save_train_state(tmp_path / "state.safetensors", d_lora, state, {"method": "lora"})
    trainable, opt_state, _ = load_train_state(tmp_path / "state.safetensors", n_blocks=TINY.n_layer)
    assert_same(lora, trainable)
    assert opt_state["step"] == 3
    assert_same({"m": lora, "v": lora}, {"m": opt_state["m"], "v": opt_state["v"]})


def test_resume_on_the_device_reproduces_an_uninterrupted_run(standin, tmp_path):
    backend.use(standin)
    task, params = DeviceTinyLMTask(), tiny_params(0)
    tc = TrainConfig(steps=4, batch_size=2, lr=1e-2, warmup=1, eval_every=0, checkpoint_every=2, seed=0)
    lora = init_lora(TINY, LCFG, 1)
    whole = train(task, params, TINY, tc, method="lora", lora=lora, lora_config=LCFG, progress=False)
    path = tmp_path / "state.safetensors"
    train(task, params, TINY, tc, method="lora", lora=lora, lora_config=LCFG, checkpoint=path, stop_after=2,
          progress=False)
    resumed = train(task, params, TINY, tc, method="lora", lora=lora, lora_config=LCFG, resume=path, progress=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert_same(backend.to_host(whole.trainable), resumed.trainable)


# ---- analysis, generation, tasks --------------------------------------------------------------------------------

def test_analysis_runs_on_the_device_and_matches_numpy(standin):
    rng = np.random.default_rng(0)
    A1, A2, W = rng.standard_normal((4, 20)), rng.standard_normal((6, 20)), rng.standard_normal((16, 16))
    lora = nonzero_b(init_lora(TINY, LCFG, 1))
    delta = delta_weight(lora["blocks"][0]["wq"], LCFG.scale)
    ref = (subspace_similarity(A1, A2, 2, 3), subspace_similarity_grid(A1, A2), delta_w_vs_w(W, delta, 2))
    backend.use(standin)
    dA1, dA2, dW, d_lora = backend.to_device((A1, A2, W, lora))
    with standin.no_host_copies():
        d_delta = delta_weight(d_lora["blocks"][0]["wq"], LCFG.scale)
        out = (subspace_similarity(dA1, dA2, 2, 3), subspace_similarity_grid(dA1, dA2),
               delta_w_vs_w(dW, d_delta, 2))
    assert out[0] == ref[0] and out[2] == ref[2]
    assert_same({"grid": ref[1]}, {"grid": out[1]})


def test_generate_is_the_same_text_on_the_device(standin):
    params = tiny_params(0)
    ref = [generate(params, TINY, "abc", 5), generate(params, TINY, "abc", 5, temperature=1.0, seed=2)]
    backend.use(standin)
    d_params = backend.to_device(params)
    assert [generate(d_params, TINY, "abc", 5), generate(d_params, TINY, "abc", 5, temperature=1.0, seed=2)] == ref


def test_tasks_evaluate_on_the_device_and_keep_their_data_on_the_host(standin):
    """DocModuleTask, LanguageModelTask and RankShiftTask: the same metrics, with only one-element reads."""
    from minilora import GPTConfig
    from minilora.tasks import DocModuleTask, LanguageModelTask, RankShiftTask

    cfg = GPTConfig(vocab_size=256, context=128, d_model=16, n_layer=1, n_head=2, d_mlp=24)
    params, lcfg = init_params(cfg, 0), LoraConfig(r=1, alpha=1.0)
    lora = nonzero_b(init_lora(cfg, lcfg, 0))
    doc = DocModuleTask(context=128)
    doc._eval, doc.eval_examples = tuple(a[:6] for a in doc._eval), doc.eval_examples[:6]  # 6 examples suffice
    lm = LanguageModelTask(context=128, n_eval_windows=4)
    shift = RankShiftTask(params, cfg, k=1, n_train=4, n_eval=2, length=8)
    ref = [doc.evaluate(params, cfg, lora, lcfg), lm.evaluate(params, cfg), shift.evaluate(params, cfg, lora, lcfg)]
    backend.use(standin)
    d_params, d_lora = backend.to_device((params, lora))
    d_shift = RankShiftTask(d_params, cfg, k=1, n_train=4, n_eval=2, length=8)  # its teacher runs on the device
    with standin.no_host_copies():
        out = [doc.evaluate(d_params, cfg, d_lora, lcfg), lm.evaluate(d_params, cfg),
               d_shift.evaluate(d_params, cfg, d_lora, lcfg)]
    assert out == ref
    np.testing.assert_array_equal(d_shift.p, shift.p, strict=True)  # soft targets: host arrays, as the tokens
    assert type(d_shift.batch(0, 2, 0).y) is np.ndarray


def test_the_tour_runs_on_the_device(standin, shipped_base, tmp_path, capsys):
    """`minilora tour --backend cupy`, with the stand-in in CuPy's place: every section, one step per method."""
    from minilora.tour import run_tour

    backend.use(standin)
    summary = run_tour(out_dir=tmp_path, steps=1, quick=True)
    out = capsys.readouterr().out
    assert "bitwise identical: True" in out and summary["zero_init_identical"] is True
    assert summary["merge_max_abs_diff"] <= 1e-4 and summary["steps"] == 1
    assert (tmp_path / "singular_values.png").read_bytes()[:4] == b"\x89PNG"
    assert on_device(load_adapter(tmp_path / "adapter.safetensors", load_params(shipped_base)[1])[0])
