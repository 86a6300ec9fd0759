"""The fault table: bad inputs and broken files, one case per fault, grouped by class (issue 6).

1. non-finite numbers    2. paths and files    3. malformed metadata    4. provenance    5. the command line

Every case asserts the exception type (API) or the exit code and a single stderr line without a traceback
(CLI), that the message names the argument, tensor or path, and that no file on disk changed: the shared input
files and the case's own folder are byte-compared before and after. A model of context 128 but width 16
(``SMALL``) keeps the command-line cases that load or train a base fast.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, tiny_params

import minilora
import minilora.checkpoint as ckpt
import minilora.tour as tour_module
import minilora.train as train_module
from minilora import GPTConfig, LoraConfig, init_lora, init_params, merge
from minilora.checkpoint import (
    atomic_write_bytes,
    load_adapter,
    load_params,
    load_train_state,
    merge_entry,
    read_safetensors,
    save_adapter,
    save_params,
    save_train_state,
    write_safetensors,
)
from minilora.cli import main
from minilora.generate import generate
from minilora.optim import AdamW, clip_by_global_norm
from minilora.paths import check_outputs
from minilora.provenance import BaseMismatch, fingerprint
from minilora.tasks import Batch
from minilora.train import TrainConfig, TrainingDiverged, train
from minilora.tree import flatten

SMALL = GPTConfig(vocab_size=256, context=128, d_model=16, n_layer=2, n_head=2, d_mlp=32)
LCFG = LoraConfig(r=2, alpha=4.0)


# ---- the harness ------------------------------------------------------------------------------------------------

class Snapshot:
    """Every file under some folders, as bytes; assert_same() says which changed, appeared or vanished."""

    def __init__(self, *folders):
        self.folders = folders
        self.files = self._read()

    def _read(self) -> dict:
        out = {}
        for folder in self.folders:
            for p in sorted(Path(folder).rglob("*")):
                if p.is_file():
                    out[str(p)] = p.read_bytes()
        return out

    def assert_same(self):
        now = self._read()
        assert sorted(now) == sorted(self.files), {"appeared": sorted(set(now) - set(self.files)),
                                                   "vanished": sorted(set(self.files) - set(now))}
        changed = [p for p in now if now[p] != self.files[p]]
        assert not changed, f"changed on disk: {changed}"


class WorkStarted(BaseException):
    """Raised by the stand-ins for train() and run_tour(): a refusal must come before any work."""


@pytest.fixture
def no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise WorkStarted("the command started working before refusing")

    monkeypatch.setattr(train_module, "train", refuse)
    monkeypatch.setattr(tour_module, "run_tour", refuse)


def small_params(seed=0):
    return init_params(SMALL, seed)


def trained_adapter(seed=0):
    lora = init_lora(SMALL, LCFG, seed)
    rng = np.random.default_rng(seed)
    for block in lora["blocks"]:
        for ab in block.values():
            ab["B"] = rng.standard_normal(ab["B"].shape).astype(np.float32) * 0.1
    return lora


class SmallTask:
    """A next-byte task on a fixed random stream (any context); ``scale`` multiplies the soft targets of one
    step (a finite loss that explodes) and ``nan_at`` poisons one step's targets."""

    name = "small"

    def __init__(self, scale_at=None, scale=1.0):
        rng = np.random.default_rng(0)
        self.stream = rng.integers(97, 105, size=4096).astype(np.int32)
        self.scale_at, self.scale = scale_at, scale

    def batch(self, step, batch_size, seed):
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, len(self.stream) - 33, size=batch_size)
        w = self.stream[starts[:, None] + np.arange(33)]  # (B, 33)
        y = np.zeros((batch_size, 32, 256), np.float32)  # (B, T, V) one-hot soft targets
        np.put_along_axis(y, w[:, 1:, None], 1.0, axis=-1)
        if step == self.scale_at:
            y *= np.float32(self.scale)
        return Batch(w[:, :-1], y)

    def evaluate(self, params, config, lora=None, lora_config=None):
        return {"loss": 0.0}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Shared, read-only inputs: two small bases, an adapter of the first (with and without its fingerprint),
    the merge of the two, and a training state."""
    d = tmp_path_factory.mktemp("inputs")
    base, other = small_params(0), small_params(1)
    lora = trained_adapter()
    f = {"dir": d,
         "base": save_params(d / "base.safetensors", base, SMALL),
         "other": save_params(d / "other.safetensors", other, SMALL),
         "adapter": save_adapter(d / "adapter.safetensors", lora, LCFG, SMALL, base=base),
         "old_adapter": save_adapter(d / "old_adapter.safetensors", lora, LCFG, SMALL),
         "merged": save_params(d / "merged.safetensors", merge(base, lora, LCFG), SMALL, {},
                               base=base, merged=[merge_entry(lora, LCFG, base)]),
         "tiny_params": save_params(d / "tiny.safetensors", tiny_params(), TINY)}
    state = d / "state.safetensors"
    train(SmallTask(), base, SMALL, TrainConfig(steps=2, batch_size=2, eval_every=0), method="lora",
          lora=init_lora(SMALL, LCFG, 0), lora_config=LCFG, checkpoint=state, progress=False)
    f["state"] = state
    return f


class Ctx:
    def __init__(self, files, tmp):
        self.f, self.tmp = files, tmp

    def variant(self, src: str, name: str, arrays=None, info=None, raw_meta=None) -> Path:
        """A copy of input ``src`` with its arrays and/or its minilora metadata changed."""
        a, meta = read_safetensors(self.f[src])
        if arrays is not None:
            a = arrays(dict(a))
        if info is not None:
            meta = {**meta, "minilora": json.dumps(info(json.loads(meta["minilora"])))}
        if raw_meta is not None:
            meta = {**meta, "minilora": raw_meta}
        return write_safetensors(self.tmp / name, a, meta)

    def copy(self, src: str, name: str) -> Path:
        return Path(shutil.copy(self.f[src], self.tmp / name))


@pytest.fixture
def ctx(files, tmp_path):
    return Ctx(files, tmp_path)


def poison(key, values=(np.nan, np.nan, np.inf)):
    def change(a):
        x = a[key].copy()
        x.flat[:len(values)] = values
        a[key] = x
        return a
    return change


def run_api_case(ctx, setup, act, exc, match):
    arg = setup(ctx) if setup else None
    snap = Snapshot(ctx.f["dir"], ctx.tmp)
    with pytest.raises(exc, match=match):
        act(ctx, arg)
    snap.assert_same()


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_cli_case(ctx, capsys, setup, code, names):
    argv, extra = setup(ctx)
    snap = Snapshot(ctx.f["dir"], ctx.tmp)
    got, out, err = cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, (got, out, err)
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"minilora {argv[0]}: "), lines[0]
    for name in list(names) + list(extra):
        assert str(name) in lines[0], (name, lines[0])
    snap.assert_same()
    return lines[0]


# ==== 1. non-finite numbers never pass silently ==================================================================

def _nan_state(ctx):
    flat = {f"{p}.{k}": v for p in ("params", "m", "v") for k, v in flatten(trained_adapter()).items()}
    flat["v.blocks.1.wv.A"] = np.full_like(flat["v.blocks.1.wv.A"], np.nan)
    info = {"kind": "train_state", "version": 1, "step": 2}
    return write_safetensors(ctx.tmp / "nan_state.safetensors", flat, {"minilora": json.dumps(info)})


def _grads():
    return {"W": np.ones((2, 2), np.float32)}


NONFINITE_API = [
    # every float field of every config: finite, in range, a real number
    ("TrainConfig-lr-inf", None, lambda c, _: TrainConfig(lr=math.inf), ValueError,
     r"TrainConfig\.lr must be a finite number > 0, got inf"),
    ("TrainConfig-lr-nan", None, lambda c, _: TrainConfig(lr=math.nan), ValueError, r"TrainConfig\.lr .*got nan"),
    ("TrainConfig-lr-None", None, lambda c, _: TrainConfig(lr=None), ValueError,
     r"TrainConfig\.lr must be a finite number > 0, got None"),
    ("TrainConfig-lr-str", None, lambda c, _: TrainConfig(lr="1e-3"), ValueError, r"TrainConfig\.lr .*'1e-3'"),
    ("TrainConfig-lr-bool", None, lambda c, _: TrainConfig(lr=True), ValueError, r"TrainConfig\.lr .*True"),
    ("TrainConfig-weight_decay-nan", None, lambda c, _: TrainConfig(weight_decay=math.nan), ValueError,
     r"TrainConfig\.weight_decay must be a finite number >= 0, got nan"),
    ("TrainConfig-weight_decay-inf", None, lambda c, _: TrainConfig(weight_decay=math.inf), ValueError,
     r"TrainConfig\.weight_decay"),
    ("TrainConfig-clip-nan", None, lambda c, _: TrainConfig(clip=math.nan), ValueError,
     r"TrainConfig\.clip must be a finite number >= 0, got nan"),
    ("TrainConfig-clip-None", None, lambda c, _: TrainConfig(clip=None), ValueError, r"TrainConfig\.clip .*None"),
    ("TrainConfig-blowup-nan", None, lambda c, _: TrainConfig(blowup_factor=math.nan), ValueError,
     r"TrainConfig\.blowup_factor"),
    ("TrainConfig-blowup-half", None, lambda c, _: TrainConfig(blowup_factor=0.5), ValueError,
     r"TrainConfig\.blowup_factor must be 0 \(off\) or a finite number > 1, got 0\.5"),
    ("TrainConfig-steps-float", None, lambda c, _: TrainConfig(steps=2.0), ValueError, r"TrainConfig\.steps"),
    ("GPTConfig-ln_eps-inf", None, lambda c, _: GPTConfig(ln_eps=math.inf), ValueError,
     r"GPTConfig\.ln_eps must be a finite number > 0 and < 1, got inf"),
    ("GPTConfig-ln_eps-nan", None, lambda c, _: GPTConfig(ln_eps=math.nan), ValueError, r"GPTConfig\.ln_eps"),
    ("GPTConfig-ln_eps-None", None, lambda c, _: GPTConfig(ln_eps=None), ValueError, r"GPTConfig\.ln_eps .*None"),
    ("GPTConfig-ln_eps-zero", None, lambda c, _: GPTConfig(ln_eps=0.0), ValueError, r"GPTConfig\.ln_eps"),
    ("LoraConfig-alpha-nan", None, lambda c, _: LoraConfig(alpha=math.nan), ValueError,
     r"LoraConfig\.alpha must be a finite number > 0, got nan"),
    ("LoraConfig-alpha-None", None, lambda c, _: LoraConfig(alpha=None), ValueError, r"LoraConfig\.alpha .*None"),
    ("LoraConfig-dropout-nan", None, lambda c, _: LoraConfig(dropout=math.nan), ValueError, r"LoraConfig\.dropout"),
    ("AdamW-lr-nan", None, lambda c, _: AdamW(lr=math.nan), ValueError, r"AdamW\.lr"),
    ("AdamW-eps-zero", None, lambda c, _: AdamW(eps=0.0), ValueError, r"AdamW\.eps"),
    ("AdamW-beta2-nan", None, lambda c, _: AdamW(betas=(0.9, math.nan)), ValueError, r"AdamW\.betas\[1\]"),
    ("AdamW-beta1-one", None, lambda c, _: AdamW(betas=(1.0, 0.999)), ValueError, r"AdamW\.betas\[0\]"),
    ("AdamW-weight_decay-nan", None, lambda c, _: AdamW(weight_decay=math.nan), ValueError, r"AdamW\.weight_decay"),
    ("clip-max_norm-nan", None, lambda c, _: clip_by_global_norm(_grads(), math.nan), ValueError, r"max_norm"),
    ("generate-temperature-nan", None, lambda c, _: generate(small_params(), SMALL, "x", 2, temperature=math.nan),
     ValueError, r"temperature must be a finite number >= 0, got nan"),
    ("generate-temperature-inf", None, lambda c, _: generate(small_params(), SMALL, "x", 2, temperature=math.inf),
     ValueError, r"temperature"),
    ("generate-top_k-negative", None, lambda c, _: generate(small_params(), SMALL, "x", 2, top_k=-1), ValueError,
     r"top_k"),
    # loading refuses NaN/inf, naming the tensor and how many values are bad
    ("load_params-nan", lambda c: c.variant("base", "p.safetensors", arrays=poison("blocks.0.wq.W")),
     lambda c, p: load_params(p), ValueError,
     r"params in .*p\.safetensors: blocks\.0\.wq\.W has 3 non-finite values of 256 \(2 NaN, 1 inf\).*allow_nonfinite"),
    ("load_params-inf-bias", lambda c: c.variant("base", "p.safetensors", arrays=poison("ln_f.b", (np.inf,))),
     lambda c, p: load_params(p), ValueError, r"ln_f\.b has 1 non-finite values"),
    ("load_adapter-nan", lambda c: c.variant("adapter", "a.safetensors", arrays=poison("blocks.1.wv.B")),
     lambda c, p: load_adapter(p, SMALL), ValueError, r"adapter .*a\.safetensors: blocks\.1\.wv\.B has 3 non-finite"),
    ("load_train_state-nan-v", _nan_state, lambda c, p: load_train_state(p, n_blocks=2), ValueError,
     r"training state .*nan_state\.safetensors: v\.blocks\.1\.wv\.A has 32 non-finite"),
    ("load_base-style-shipped-nan", lambda c: c.variant("base", "p.safetensors", arrays=poison("wte", (np.nan,))),
     lambda c, p: load_params(p, SMALL), ValueError, r"wte has 1 non-finite"),
    # saving refuses them too, and the file already at that path stays as it was
    ("save_params-nan-keeps-old", lambda c: c.copy("base", "p.safetensors"),
     lambda c, p: save_params(p, _nan_tree(), SMALL), ValueError,
     r"params for .*p\.safetensors: wpe has 3 non-finite.*nothing was written"),
    ("save_adapter-inf-keeps-old", lambda c: c.copy("adapter", "a.safetensors"),
     lambda c, p: save_adapter(p, _nan_adapter(), LCFG, SMALL), ValueError,
     r"adapter for .*a\.safetensors: blocks\.0\.wq\.B has 1 non-finite"),
    ("save_train_state-nan-m-keeps-old", lambda c: c.copy("state", "s.safetensors"),
     lambda c, p: save_train_state(p, trained_adapter(), {"step": 1, "m": _nan_adapter(), "v": trained_adapter()}, {}),
     ValueError, r"training state for .*s\.safetensors: m\.blocks\.0\.wq\.B has 1 non-finite"),
]


def _nan_tree():
    params = small_params()
    params["wpe"] = params["wpe"].copy()
    params["wpe"].flat[:3] = (np.nan, np.nan, np.inf)
    return params


def _nan_adapter():
    lora = trained_adapter()
    lora["blocks"][0]["wq"]["B"] = lora["blocks"][0]["wq"]["B"].copy()
    lora["blocks"][0]["wq"]["B"][0, 0] = np.inf
    return lora


@pytest.mark.parametrize("setup, act, exc, match", [c[1:] for c in NONFINITE_API], ids=[c[0] for c in NONFINITE_API])
def test_nonfinite_api(ctx, setup, act, exc, match):
    run_api_case(ctx, setup, act, exc, match)


def test_nonfinite_opt_out_loads_a_broken_file(ctx):
    p = ctx.variant("base", "p.safetensors", arrays=poison("blocks.0.wq.W"))
    params, _ = load_params(p, allow_nonfinite=True)
    assert np.isnan(params["blocks"][0]["wq"]["W"]).sum() == 2


def _resume_into(ctx, task, **tc):
    """A good state after 2 steps at tmp/s.safetensors, then a resume of the same run with ``task``."""
    config = TrainConfig(steps=6, batch_size=2, eval_every=0, checkpoint_every=1, clip=0.0, **tc)
    state = ctx.tmp / "s.safetensors"
    kw = {"method": "lora", "lora": init_lora(SMALL, LCFG, 0), "lora_config": LCFG, "progress": False}
    train(SmallTask(), small_params(), SMALL, config, checkpoint=state, stop_after=2, **kw)
    snap = Snapshot(ctx.f["dir"], ctx.tmp)
    with pytest.raises(TrainingDiverged) as err:
        train(task, small_params(), SMALL, config, checkpoint=state, resume=state, **kw)
    snap.assert_same()
    assert str(state) in str(err.value) and "after step 2" in str(err.value), err.value
    return str(err.value)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_nonfinite_state_is_never_written_over_a_good_one(ctx):
    """The issue's example, by the one road left to it: a good state from an earlier run is at the checkpoint
    path; an update overflows (lr 1e39 is a finite float, lr × update is not in float32), so the state after
    step 1 holds inf while the loss and gradients were finite. It is refused; the good file stays, byte for byte."""
    state = ctx.copy("state", "s.safetensors")
    snap = Snapshot(ctx.f["dir"], ctx.tmp)
    config = TrainConfig(steps=3, batch_size=2, lr=1e39, warmup=0, eval_every=0, checkpoint_every=1,
                         blowup_factor=0.0)
    with pytest.raises(TrainingDiverged, match=r"after step 1: the training state holds \d+ non-finite values "
                                               r"\(params \d+, m 0, v 0\); it was not written; no training state "
                                               r"was written") as err:
        train(SmallTask(), small_params(), SMALL, config, method="lora", lora=init_lora(SMALL, LCFG, 0),
              lora_config=LCFG, checkpoint=state, progress=False)
    snap.assert_same()
    assert "params 0" not in str(err.value)


def test_finite_blowup_stops_before_updating_and_keeps_the_state(ctx):
    message = _resume_into(ctx, SmallTask(scale_at=2, scale=1e6))
    assert "step 3: the loss" in message and "blowup_factor=10" in message and "steps 1-2" in message


def test_blowup_guard_off_lets_the_same_run_finish(ctx):
    config = TrainConfig(steps=4, batch_size=2, eval_every=0, blowup_factor=0.0)
    res = train(SmallTask(scale_at=2, scale=1e3), small_params(), SMALL, config, method="lora",
                lora=init_lora(SMALL, LCFG, 0), lora_config=LCFG, progress=False)
    assert res.history[2]["loss"] > 100 * res.history[0]["loss"]


NONFINITE_CLI = [
    ("finetune-lr-inf", lambda c: (["finetune", "--lr", "inf"], []), 2, ["TrainConfig.lr", "inf"]),
    ("finetune-weight-decay-nan", lambda c: (["finetune", "--weight-decay", "nan"], []), 2,
     ["TrainConfig.weight_decay", "nan"]),
    ("finetune-clip-nan", lambda c: (["finetune", "--clip", "nan"], []), 2, ["TrainConfig.clip"]),
    ("finetune-alpha-nan", lambda c: (["finetune", "--alpha", "nan"], []), 2, ["LoraConfig.alpha"]),
    ("finetune-dropout-nan", lambda c: (["finetune", "--dropout", "nan"], []), 2, ["LoraConfig.dropout"]),
    ("finetune-blowup-half", lambda c: (["finetune", "--blowup-factor", "0.5"], []), 2, ["blowup_factor"]),
    ("pretrain-lr-nan", lambda c: (["pretrain", "--lr", "nan", "--out", c.tmp / "m.safetensors"], []), 2,
     ["TrainConfig.lr"]),
    ("generate-temperature-nan", lambda c: (["generate", "x", "--temperature", "nan", "--base", c.f["base"]], []), 2,
     ["temperature", "nan"]),
    ("eval-params-nan", lambda c: (["eval", "--base", c.f["base"], "--params",
                                    c.variant("base", "p.safetensors", arrays=poison("blocks.1.mlp_in.W"))],
                                   ["p.safetensors", "--allow-nonfinite"]), 2, ["blocks.1.mlp_in.W", "3 non-finite"]),
    ("eval-base-nan", lambda c: (["eval", "--base", c.variant("base", "b.safetensors", arrays=poison("wte"))],
                                 ["b.safetensors"]), 2, ["wte has 3 non-finite"]),
    ("generate-adapter-nan", lambda c: (["generate", "x", "--base", c.f["base"], "--adapter",
                                         c.variant("adapter", "a.safetensors", arrays=poison("blocks.0.wq.A"))],
                                        ["a.safetensors"]), 2, ["blocks.0.wq.A"]),
]


@pytest.mark.parametrize("setup, code, names", [c[1:] for c in NONFINITE_CLI], ids=[c[0] for c in NONFINITE_CLI])
def test_nonfinite_cli(ctx, capsys, no_work, setup, code, names):
    def with_defaults(c):
        argv, extra = setup(c)
        if argv[0] == "finetune":
            argv = argv + ["--base", c.f["base"], "--out", c.tmp / "run"]
        return argv, extra
    run_cli_case(ctx, capsys, with_defaults, code, names)


def test_cli_finite_blowup_exits_3_and_writes_nothing(ctx, capsys):
    """The issue's example: finetune --method full --lr 1e6 exploded the loss to 4.5e11 and saved it."""
    run_cli_case(ctx, capsys, lambda c: (["finetune", "--method", "full", "--lr", "1e6", "--warmup", "1", "--base",
                                          c.f["base"], "--out", c.tmp / "run", "--steps", "6", "--batch-size", "2",
                                          "--eval-every", "0", "--checkpoint-every", "0", "--no-progress"], []),
                 3, ["training diverged", "blowup_factor=10", "no training state was written"])


def test_cli_eval_of_a_broken_file_with_the_opt_out(ctx, capsys):
    p = ctx.variant("base", "p.safetensors", arrays=poison("blocks.0.wq.W"))
    code, out, err = cli(capsys, "eval", "--base", ctx.f["base"], "--params", p, "--allow-nonfinite", "--json")
    assert code == 0, err
    assert math.isnan(json.loads(out)["metrics"]["loss"])


# ==== 2. no file is lost or clobbered; path problems are caught before any work =================================

class FullDisk:
    """os.fdopen's stand-in whose write fails with ENOSPC, as on a full disk."""

    real = staticmethod(os.fdopen)

    def __init__(self, fd, mode="rb"):
        self.f = FullDisk.real(fd, mode)

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _check(outputs, inputs=None, **kw):
    return lambda c, arg: check_outputs(outputs(c), inputs(c) if inputs else None, **kw)


PATHS_API = [
    ("write-to-a-directory", lambda c: (c.tmp / "d").mkdir(),
     lambda c, _: atomic_write_bytes(c.tmp / "d", b"x"), IsADirectoryError, r"cannot write .*d: it is a directory"),
    ("save-under-a-file", lambda c: (c.tmp / "f").write_bytes(b"keep"),
     lambda c, _: save_params(c.tmp / "f" / "p.safetensors", small_params(), SMALL), OSError,
     r"could not write .*f/p\.safetensors"),
    ("json-to-a-directory", lambda c: (c.tmp / "m.json").mkdir(),
     lambda c, _: ckpt.atomic_write_json(c.tmp / "m.json", {"a": 1}), IsADirectoryError, r"m\.json: it is a directory"),
    ("outputs-collide", None, _check(lambda c: {"--out": c.tmp / "m.json", "the record": c.tmp / "m.json"}),
     ValueError, r"the record and --out are the same file \(.*m\.json\)"),
    ("outputs-collide-through-dotdot", lambda c: (c.tmp / "sub").mkdir(),
     _check(lambda c: {"a": c.tmp / "x", "b": c.tmp / "sub" / ".." / "x"}), ValueError, r"same file"),
    ("output-exists", lambda c: (c.tmp / "x").write_bytes(b"keep"), _check(lambda c: {"--out": c.tmp / "x"}),
     FileExistsError, r"--out: .*x exists; pass --overwrite"),
    ("output-is-an-input", lambda c: (c.tmp / "x").write_bytes(b"keep"),
     _check(lambda c: {"--out": c.tmp / "x"}, lambda c: {"--base": c.tmp / "x"}, overwrite=True), ValueError,
     r"--out \(.*x\) is also --base"),
    ("output-is-a-directory", lambda c: (c.tmp / "d").mkdir(), _check(lambda c: {"--out": c.tmp / "d"}),
     IsADirectoryError, r"--out: .*d is a directory"),
    ("output-folder-is-a-file", lambda c: (c.tmp / "f").write_bytes(b"keep"),
     _check(lambda c: {"--out": c.tmp / "f" / "sub" / "x"}), NotADirectoryError, r"f is a file, not a folder"),
]


@pytest.mark.parametrize("setup, act, exc, match", [c[1:] for c in PATHS_API], ids=[c[0] for c in PATHS_API])
def test_paths_api(ctx, setup, act, exc, match):
    run_api_case(ctx, setup, act, exc, match)


@pytest.mark.parametrize("save", ["params", "adapter", "json"])
def test_full_disk_keeps_the_old_file_and_says_so(ctx, monkeypatch, save):
    path = ctx.copy({"params": "base", "adapter": "adapter", "json": "base"}[save], "target")
    snap = Snapshot(ctx.f["dir"], ctx.tmp)
    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(ckpt.SaveError, match=r"could not write .*target: No space left on device; the existing "
                                             r"file is unchanged") as err:
        {"params": lambda: save_params(path, small_params(1), SMALL),
         "adapter": lambda: save_adapter(path, trained_adapter(1), LCFG, SMALL),
         "json": lambda: ckpt.atomic_write_json(path, {"a": 1})}[save]()
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    snap.assert_same()  # the old file intact, no temporary file left behind


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_save_killed_with_sigkill_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    target = tmp_path / "a.safetensors"
    target.write_bytes(b"old")
    child = ("import os, sys, time\n"
             "import minilora.checkpoint as c\n"
             "os.fsync = lambda fd: (print('writing', flush=True), time.sleep(60))\n"
             "c.atomic_write_bytes(sys.argv[1], b'new' * 1000)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(minilora.__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", child, str(target)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    stale = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and f"-{proc.pid}-" in stale[0] and ".minilora-" in stale[0], stale
    live = tmp_path / f".a.safetensors.minilora-{ckpt._host_tag()}-{os.getppid()}-live.tmp"
    live.write_bytes(b"another writer")  # a live process's temporary: never touched
    unrelated = tmp_path / ".a.safetensors.someone-else.tmp"
    unrelated.write_bytes(b"not ours")
    assert target.read_bytes() == b"old"
    atomic_write_bytes(target, b"newer")
    assert target.read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.safetensors", live.name, unrelated.name])


def _run(c, *files):
    """A finished fine-tuning folder: its files, and their names for the message."""
    run = c.tmp / "run"
    run.mkdir(exist_ok=True)
    for name in files:
        (run / name).write_bytes(b"an earlier run's " + name.encode())
    return run


PATHS_CLI = [
    ("pretrain-out-json-collides-with-record", lambda c: (["pretrain", "--out", c.tmp / "model.json"], []), 2,
     ["model.json", "same file"]),
    ("pretrain-state-collides-with-out", lambda c: (["pretrain", "--out", c.tmp / "m.safetensors", "--state",
                                                     c.tmp / "m.safetensors"], []), 2, ["--state", "same file"]),
    ("finetune-out-exists", lambda c: (["finetune", "--base", c.f["base"], "--out", _run(c, "adapter.safetensors")],
                                       ["adapter.safetensors"]), 2, ["exists", "--overwrite"]),
    ("finetune-metrics-exist", lambda c: (["finetune", "--base", c.f["base"], "--out", _run(c, "metrics.json")],
                                          ["metrics.json"]), 2, ["exists", "--overwrite"]),
    ("finetune-out-is-a-file", lambda c: (["finetune", "--base", c.f["base"], "--out", c.copy("base", "afile")],
                                          ["afile"]), 2, ["is a file, not a folder"]),
    ("finetune-full-out-overwrites-its-base", lambda c: (
        ["finetune", "--method", "full", "--base", c.copy("base", "params.safetensors"), "--out", c.tmp,
         "--overwrite"], []), 2, ["params.safetensors", "is also --base"]),
    ("finetune-resume-missing", lambda c: (["finetune", "--base", c.f["base"], "--out", c.tmp / "run", "--resume",
                                            c.tmp / "nope.safetensors"], []), 2, ["--resume", "nope.safetensors"]),
    ("merge-out-is-a-directory", lambda c: (["merge", "--base", c.f["base"], "--adapter", c.f["adapter"], "--out",
                                             _run(c)], []), 2, ["--out", "is a directory"]),
    ("merge-out-exists", lambda c: (["merge", "--base", c.f["base"], "--adapter", c.f["adapter"], "--out",
                                     c.copy("base", "m.safetensors")], []), 2, ["m.safetensors exists"]),
    ("merge-out-is-the-adapter", lambda c: (["merge", "--base", c.f["base"], "--adapter", c.copy("adapter", "a"),
                                             "--out", c.tmp / "a", "--overwrite"], []), 2, ["is also --adapter"]),
    ("eval-adapter-missing", lambda c: (["eval", "--base", c.f["base"], "--adapter", c.tmp / "missing"], []), 2,
     ["--adapter", "missing", "does not exist"]),
    ("eval-params-is-a-directory", lambda c: (["eval", "--base", c.f["base"], "--params", c.tmp], []), 2,
     ["--params", "is a directory"]),
    ("eval-base-missing", lambda c: (["eval", "--base", c.tmp / "nope.safetensors"], []), 2, ["nope.safetensors"]),
    ("pretrain-out-is-a-directory", lambda c: (["pretrain", "--out", _run(c)], []), 2, ["--out", "is a directory"]),
    ("finetune-resume-is-a-directory", lambda c: (["finetune", "--base", c.f["base"], "--out", c.tmp / "o",
                                                   "--resume", _run(c)], []), 2, ["--resume", "is a directory"]),
    ("tour-out-exists", lambda c: (["tour", "--out", _run(c, "summary.json")], []), 2, ["summary.json exists"]),
    ("tour-out-is-a-file", lambda c: (["tour", "--out", c.copy("base", "afile")], []), 2, ["afile", "not a folder"]),
]


@pytest.mark.parametrize("setup, code, names", [c[1:] for c in PATHS_CLI], ids=[c[0] for c in PATHS_CLI])
def test_paths_cli(ctx, capsys, no_work, setup, code, names):
    run_cli_case(ctx, capsys, setup, code, names)


def test_cli_full_disk_is_one_line_and_keeps_the_old_file(ctx, capsys, monkeypatch):
    out = ctx.copy("merged", "m.safetensors")
    monkeypatch.setattr(os, "fdopen", FullDisk)
    run_cli_case(ctx, capsys, lambda c: (["merge", "--base", c.f["base"], "--adapter", c.f["adapter"], "--out", out,
                                          "--overwrite"], []), 4, ["could not write", "m.safetensors",
                                                                   "No space left on device", "unchanged"])


# ==== 3. malformed metadata is a clear ValueError naming the file and the field ==================================

def _bf16_file(c, dtype="bfloat16"):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    info = {"kind": "params", "version": 1, "config": SMALL.to_dict(), "record": {}}
    tensors = {k: torch.from_numpy(v.copy()).to(getattr(torch, dtype)) for k, v in flatten(small_params()).items()}
    path = c.tmp / f"{dtype}.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"minilora": json.dumps(info)})
    return path


def _raw_header_file(c, header: bytes):
    path = c.tmp / "raw.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def _drop(key):
    return lambda i: {k: v for k, v in i.items() if k != key}


def _set(key, value):
    return lambda i: {**i, key: value}


def _set_in(key, field, value):
    return lambda i: {**i, key: {**i[key], field: value}}


METADATA_API = [
    ("metadata-is-a-list", lambda c: c.variant("base", "p.safetensors", info=lambda i: [i]),
     lambda c, p: load_params(p), ValueError,
     r"p\.safetensors: the 'minilora' metadata must be a JSON object, got a list"),
    ("metadata-is-a-string", lambda c: c.variant("adapter", "a.safetensors", info=lambda i: "adapter"),
     lambda c, p: load_adapter(p, SMALL), ValueError, r"a\.safetensors: .*must be a JSON object, got a string"),
    ("metadata-not-json", lambda c: c.variant("base", "p.safetensors", raw_meta="{nope"),
     lambda c, p: load_params(p), ValueError, r"p\.safetensors: the 'minilora' metadata is not valid JSON"),
    ("params-config-missing", lambda c: c.variant("base", "p.safetensors", info=_drop("config")),
     lambda c, p: load_params(p), ValueError, r"p\.safetensors: the minilora metadata has no 'config' field"),
    ("params-config-is-a-list", lambda c: c.variant("base", "p.safetensors", info=_set("config", [1, 2])),
     lambda c, p: load_params(p), ValueError, r"metadata field 'config' must be a JSON object, got a list"),
    ("params-config-unknown-field", lambda c: c.variant("base", "p.safetensors", info=_set_in("config", "depth", 3)),
     lambda c, p: load_params(p), ValueError, r"p\.safetensors: metadata field 'config': GPTConfig: unknown field"),
    ("params-config-ln_eps-string", lambda c: c.variant("base", "p.safetensors",
                                                        info=_set_in("config", "ln_eps", "1e-5")),
     lambda c, p: load_params(p), ValueError, r"'config': GPTConfig\.ln_eps must be a finite number"),
    ("params-config-n_layer-float", lambda c: c.variant("base", "p.safetensors",
                                                        info=_set_in("config", "n_layer", 2.0)),
     lambda c, p: load_params(p), ValueError, r"GPTConfig\.n_layer must be a positive int, got 2\.0"),
    ("params-record-is-a-list", lambda c: c.variant("base", "p.safetensors", info=_set("record", [])),
     lambda c, p: ckpt.read_record(p), ValueError, r"metadata field 'record' must be a JSON object"),
    ("params-merged-malformed", lambda c: c.variant("merged", "m.safetensors", info=_set("merged", [{"x": 1}])),
     lambda c, p: load_params(p), ValueError, r"m\.safetensors: metadata field 'merged' entry 0"),
    ("params-base_sha256-not-hex", lambda c: c.variant("merged", "m.safetensors", info=_set("base_sha256", "abc")),
     lambda c, p: load_params(p), ValueError, r"'base_sha256' must be 64 hex digits"),
    ("version-missing", lambda c: c.variant("base", "p.safetensors", info=_drop("version")),
     lambda c, p: load_params(p), ValueError, r"metadata field 'version' must be an int >= 1, got None"),
    ("version-newer", lambda c: c.variant("base", "p.safetensors", info=_set("version", 99)),
     lambda c, p: load_params(p), ValueError, r"written by a newer minilora \(format version 99"),
    ("kind-missing", lambda c: c.variant("base", "p.safetensors", info=_drop("kind")),
     lambda c, p: load_params(p), ValueError, r"p\.safetensors holds a minilora None, expected a 'params'"),
    ("adapter-use_rslora-string", lambda c: c.variant("adapter", "a.safetensors",
                                                      info=_set_in("lora_config", "use_rslora", "false")),
     lambda c, p: load_adapter(p, SMALL), ValueError,
     r"a\.safetensors: metadata field 'lora_config': LoraConfig\.use_rslora must be True or False, got 'false'"),
    ("adapter-targets-null", lambda c: c.variant("adapter", "a.safetensors",
                                                 info=_set_in("lora_config", "targets", None)),
     lambda c, p: load_adapter(p, SMALL), ValueError, r"LoraConfig\.targets must be a name or a list"),
    ("adapter-layers-int", lambda c: c.variant("adapter", "a.safetensors", info=_set_in("lora_config", "layers", 1)),
     lambda c, p: load_adapter(p, SMALL), ValueError, r"LoraConfig\.layers must be None or a non-empty list"),
    ("adapter-r-string", lambda c: c.variant("adapter", "a.safetensors", info=_set_in("lora_config", "r", "2")),
     lambda c, p: load_adapter(p, SMALL), ValueError, r"LoraConfig\.r must be a positive int, got '2'"),
    ("adapter-lora_config-missing", lambda c: c.variant("adapter", "a.safetensors", info=_drop("lora_config")),
     lambda c, p: load_adapter(p, SMALL), ValueError, r"no 'lora_config' field"),
    ("state-step-missing", lambda c: c.variant("state", "s.safetensors", info=_drop("step")),
     lambda c, p: load_train_state(p, n_blocks=2), ValueError, r"s\.safetensors: the minilora metadata has no 'step'"),
    ("state-step-string", lambda c: c.variant("state", "s.safetensors", info=_set("step", "2")),
     lambda c, p: load_train_state(p, n_blocks=2), ValueError, r"metadata field 'step' must be a JSON number, got a "
                                                               r"string"),
    ("state-step-negative", lambda c: c.variant("state", "s.safetensors", info=_set("step", -1)),
     lambda c, p: load_train_state(p, n_blocks=2), ValueError, r"'step' must be >= 0"),
    ("state-step-bool", lambda c: c.variant("state", "s.safetensors", info=_set("step", True)),
     lambda c, p: load_train_state(p, n_blocks=2), ValueError, r"'step' must be a JSON number, got a boolean"),
    ("state-history-not-a-list", lambda c: c.variant("state", "s.safetensors", info=_set("history", {"a": 1})),
     lambda c, p: load_train_state(p, n_blocks=2), ValueError, r"'history' must be a JSON list"),
    ("state-history-loss-null", lambda c: c.variant("state", "s.safetensors",
                                                    info=lambda i: {**i, "history": [{"step": 1, "loss": None}]}),
     lambda c, p: _resume(p), ValueError, r"s\.safetensors: metadata field 'history' holds an entry whose 'loss'"),
    ("state-train_config-bad", lambda c: c.variant("state", "s.safetensors", info=_set_in("train_config", "lr", "x")),
     lambda c, p: _resume(p), ValueError, r"s\.safetensors: metadata field 'train_config': TrainConfig\.lr"),
    ("dtype-bf16", lambda c: _bf16_file(c), lambda c, p: load_params(p), ValueError,
     r"bfloat16\.safetensors: dtype BF16 is not supported by minilora checkpoints \(tensor 'blocks\.0\.ln1\.b'"),
    ("dtype-f8", lambda c: _bf16_file(c, "float8_e4m3fn"), lambda c, p: load_params(p), ValueError,
     r"dtype F8_E4M3 is not supported by minilora checkpoints"),
    ("header-entry-not-an-object", lambda c: _raw_header_file(c, b'{"wte": 5}      '), lambda c, p: load_params(p),
     ValueError, r"raw\.safetensors is truncated or corrupt"),
    ("header-not-a-header", lambda c: _raw_header_file(c, b"[1, 2]   "), lambda c, p: load_params(p), ValueError,
     r"raw\.safetensors is truncated or not a safetensors file"),
    ("header-metadata-not-an-object", lambda c: _raw_header_file(c, b'{"__metadata__": [1]}   '),
     lambda c, p: load_params(p), ValueError, r"'__metadata__' must be an object"),
    # the same checks in the constructors
    ("LoraConfig-use_rslora-no", None, lambda c, _: LoraConfig(use_rslora="no"), ValueError,
     r"LoraConfig\.use_rslora must be True or False, got 'no'"),
    ("LoraConfig-targets-None", None, lambda c, _: LoraConfig(targets=None), ValueError, r"LoraConfig\.targets"),
    ("LoraConfig-layers-1", None, lambda c, _: LoraConfig(layers=1), ValueError, r"LoraConfig\.layers .*got 1"),
    ("LoraConfig-from_dict-list", None, lambda c, _: LoraConfig.from_dict([1]), TypeError,
     r"LoraConfig\.from_dict needs a dict, got list"),
]


def _resume(state):
    return train(SmallTask(), small_params(), SMALL, TrainConfig(steps=2, batch_size=2, eval_every=0),
                 method="lora", lora=init_lora(SMALL, LCFG, 0), lora_config=LCFG, resume=state, progress=False)


@pytest.mark.parametrize("setup, act, exc, match", [c[1:] for c in METADATA_API], ids=[c[0] for c in METADATA_API])
def test_metadata_api(ctx, setup, act, exc, match):
    run_api_case(ctx, setup, act, exc, match)


METADATA_CLI = [
    ("eval-adapter-use_rslora-string", lambda c: (
        ["eval", "--base", c.f["base"], "--adapter",
         c.variant("adapter", "a.safetensors", info=_set_in("lora_config", "use_rslora", "false"))],
        ["a.safetensors"]), 2, ["use_rslora", "'false'"]),
    ("eval-params-metadata-list", lambda c: (
        ["eval", "--base", c.f["base"], "--params", c.variant("base", "p.safetensors", info=lambda i: [i])],
        ["p.safetensors"]), 2, ["must be a JSON object"]),
    ("generate-base-bf16", lambda c: (["generate", "x", "--base", _bf16_file(c)], []), 2,
     ["bfloat16.safetensors", "dtype BF16 is not supported"]),
    ("merge-adapter-config-missing", lambda c: (
        ["merge", "--base", c.f["base"], "--adapter", c.variant("adapter", "a.safetensors", info=_drop("config")),
         "--out", c.tmp / "m.safetensors"], ["a.safetensors"]), 2, ["no 'config' field"]),
    ("eval-adapter-is-params", lambda c: (["eval", "--base", c.f["base"], "--adapter", c.f["base"]], []), 2,
     ["holds a minilora 'params', expected a 'adapter'"]),
]


@pytest.mark.parametrize("setup, code, names", [c[1:] for c in METADATA_CLI], ids=[c[0] for c in METADATA_CLI])
def test_metadata_cli(ctx, capsys, setup, code, names):
    run_cli_case(ctx, capsys, setup, code, names)


def test_cli_resume_from_a_state_without_step(ctx, capsys):
    run = ctx.tmp / "run"
    run.mkdir()
    state = ctx.variant("state", "run/train_state.safetensors", info=_drop("step"))
    run_cli_case(ctx, capsys, lambda c: (["finetune", "--base", c.f["base"], "--out", run, "--resume", state,
                                          "--r", "2", "--alpha", "4", "--steps", "2", "--no-progress"], []),
                 2, ["train_state.safetensors", "no 'step' field"])


# ==== 4. provenance: an adapter knows which base it belongs to ===================================================

def _other_base(c):
    return load_params(c.f["other"])[0]


PROVENANCE_API = [
    ("adapter-onto-another-base", None, lambda c, _: load_adapter(c.f["adapter"], SMALL, base=_other_base(c)),
     BaseMismatch, r"adapter .*adapter\.safetensors was made from base parameters with fingerprint [0-9a-f]{12}, but "
                   r"the base given has fingerprint [0-9a-f]{12}; pass allow_base_mismatch=True"),
    ("adapter-onto-another-base-by-fingerprint", None,
     lambda c, _: load_adapter(c.f["adapter"], SMALL, base=fingerprint(_other_base(c))), BaseMismatch, r"fingerprint"),
    ("adapter-onto-merged", None, lambda c, _: load_adapter(c.f["adapter"], SMALL, base=load_params(c.f["merged"])[0]),
     BaseMismatch, r"adapter\.safetensors"),
    ("resume-on-another-base", lambda c: c.copy("state", "s.safetensors"),
     lambda c, p: train(SmallTask(), _other_base(c), SMALL, TrainConfig(steps=4, batch_size=2, eval_every=0),
                        method="lora", lora=init_lora(SMALL, LCFG, 0), lora_config=LCFG, resume=p, checkpoint=p,
                        progress=False),
     BaseMismatch, r"resume: training state .*s\.safetensors was made from base parameters with fingerprint"),
    ("full-resume-from-another-start", lambda c: _full_state(c),
     lambda c, p: train(SmallTask(), _other_base(c), SMALL, TrainConfig(steps=4, batch_size=2, eval_every=0),
                        method="full", resume=p, checkpoint=p, progress=False),
     BaseMismatch, r"resume with the base parameters the run started from"),
    ("fingerprint-bad-string", None, lambda c, _: load_adapter(c.f["adapter"], SMALL, base="abc"), ValueError,
     r"base must be a parameter tree or a 64-hex-digit fingerprint"),
    ("adapter-onto-a-float64-copy", None,
     lambda c, _: load_adapter(c.f["adapter"], SMALL, base=_cast(small_params(), np.float64)), BaseMismatch,
     r"adapter .*adapter\.safetensors was made from base parameters"),
    ("resume-on-a-base-one-bit-off", lambda c: c.copy("state", "s.safetensors"),
     lambda c, p: train(SmallTask(), _one_bit_off(small_params()), SMALL,
                        TrainConfig(steps=2, batch_size=2, eval_every=0), method="lora",
                        lora=init_lora(SMALL, LCFG, 0), lora_config=LCFG, resume=p, checkpoint=p, progress=False),
     BaseMismatch, r"s\.safetensors was made from base parameters with fingerprint"),
]


def _cast(tree, dtype):
    from minilora.tree import map_leaves

    return map_leaves(lambda a: a.astype(dtype), tree)


def _one_bit_off(params):
    params["blocks"][1]["wv"]["W"].view(np.uint32)[0, 0] ^= 1
    return params


def _full_state(c):
    path = c.tmp / "full_state.safetensors"
    train(SmallTask(), small_params(), SMALL, TrainConfig(steps=4, batch_size=2, eval_every=0), method="full",
          checkpoint=path, stop_after=1, progress=False)
    return path


@pytest.mark.parametrize("setup, act, exc, match", [c[1:] for c in PROVENANCE_API],
                         ids=[c[0] for c in PROVENANCE_API])
def test_provenance_api(ctx, setup, act, exc, match):
    run_api_case(ctx, setup, act, exc, match)


def test_provenance_opt_outs_and_old_files(files):
    other = load_params(files["other"])[0]
    load_adapter(files["adapter"], SMALL, base=other, allow_base_mismatch=True)  # explicit override
    load_adapter(files["adapter"], SMALL)  # no base given: nothing to check
    load_adapter(files["old_adapter"], SMALL, base=other)  # written before fingerprints: nothing recorded
    assert ckpt.adapter_base(files["old_adapter"]) is None
    assert ckpt.adapter_base(files["adapter"]) == fingerprint(load_params(files["base"])[0])


PROVENANCE_CLI = [
    ("eval-adapter-on-another-base", lambda c: (["eval", "--base", c.f["other"], "--adapter", c.f["adapter"]],
                                                [c.f["adapter"], c.f["other"]]), 2,
     ["was made from base parameters with fingerprint", "--allow-base-mismatch"]),
    ("eval-merged-plus-its-adapter", lambda c: (["eval", "--base", c.f["base"], "--params", c.f["merged"],
                                                 "--adapter", c.f["adapter"]], [c.f["merged"], c.f["adapter"]]), 2,
     ["already contains this adapter"]),
    ("generate-merged-plus-its-adapter", lambda c: (["generate", "x", "--base", c.f["base"], "--params",
                                                     c.f["merged"], "--adapter", c.f["adapter"]], []), 2,
     ["already contains this adapter"]),
    ("merge-into-a-file-that-has-it", lambda c: (["merge", "--base", c.f["merged"], "--adapter", c.f["adapter"],
                                                  "--out", c.tmp / "twice.safetensors"], []), 2,
     ["already contains this adapter"]),
    ("merge-adapter-of-another-base", lambda c: (["merge", "--base", c.f["other"], "--adapter", c.f["adapter"],
                                                  "--out", c.tmp / "m.safetensors"], []), 2, ["fingerprint"]),
    ("generate-adapter-of-another-base", lambda c: (["generate", "x", "--base", c.f["other"], "--adapter",
                                                     c.f["adapter"]], [c.f["adapter"]]), 2, ["fingerprint"]),
    ("eval-adapter-on-finetuned-params", lambda c: (["eval", "--base", c.f["base"], "--params", c.f["other"],
                                                     "--adapter", c.f["adapter"]], ["--params"]), 2,
     ["was made from base parameters"]),
    ("merge-a-copy-of-a-merged-adapter", lambda c: (["merge", "--base", c.f["merged"], "--adapter",
                                                     c.copy("adapter", "renamed.safetensors"), "--out",
                                                     c.tmp / "twice.safetensors"], ["renamed.safetensors"]), 2,
     ["already contains this adapter"]),
    ("finetune-resume-on-another-base", lambda c: (
        ["finetune", "--base", c.f["other"], "--out", c.tmp / "run", "--r", "2", "--alpha", "4", "--steps", "2",
         "--resume", _cli_state(c), "--no-progress"], []), 2, ["resume", "fingerprint"]),
]


def _cli_state(c):
    """A training state that `minilora finetune --base base --r 2 --alpha 4 --steps 2` would resume."""
    (c.tmp / "run").mkdir(exist_ok=True)
    code = main(["finetune", "--base", str(c.f["base"]), "--out", str(c.tmp / "run"), "--r", "2", "--alpha", "4",
                 "--steps", "2", "--batch-size", "2", "--eval-every", "0", "--json", "-q"])
    assert code == 0
    for name in ("adapter.safetensors", "metrics.json"):
        (c.tmp / "run" / name).unlink()
    return c.tmp / "run" / "train_state.safetensors"


@pytest.mark.parametrize("setup, code, names", [c[1:] for c in PROVENANCE_CLI], ids=[c[0] for c in PROVENANCE_CLI])
def test_provenance_cli(ctx, capsys, setup, code, names):
    def quiet_setup(c):
        result = setup(c)
        capsys.readouterr()  # whatever the set-up printed
        return result
    run_cli_case(ctx, capsys, quiet_setup, code, names)


def test_provenance_cli_overrides_and_old_adapters(files, capsys):
    code, _, err = cli(capsys, "eval", "--base", files["other"], "--adapter", files["adapter"],
                       "--allow-base-mismatch")
    assert code == 0, err
    code, _, err = cli(capsys, "eval", "--base", files["base"], "--adapter", files["old_adapter"])
    assert code == 0 and "records no base fingerprint" in err, err
    code, _, err = cli(capsys, "eval", "--base", files["base"], "--adapter", files["old_adapter"], "--quiet")
    assert code == 0 and err == "", err


# ==== 5. the command line explains itself and never shows a traceback for a user error ===========================

BAD_ARGS_CLI = [
    ("tour-steps-0", ["tour", "--steps", "0"], ["steps must be a positive int, got 0"]),
    ("tour-steps-negative", ["tour", "--steps", "-5", "--quick"], ["steps"]),
    ("finetune-steps-0", ["finetune", "--steps", "0"], ["TrainConfig.steps"]),
    ("finetune-batch-size-0", ["finetune", "--batch-size", "0"], ["TrainConfig.batch_size"]),
    ("finetune-warmup-negative", ["finetune", "--warmup", "-1"], ["TrainConfig.warmup"]),
    ("finetune-seed-negative", ["finetune", "--seed", "-1"], ["TrainConfig.seed"]),
    ("finetune-r-0", ["finetune", "--r", "0"], ["LoraConfig.r must be a positive int"]),
    ("finetune-r-too-large", ["finetune", "--r", "200"], ["exceeds min"]),
    ("finetune-target-bogus", ["finetune", "--targets", "wq,bogus"], ["unknown target 'bogus'"]),
    ("finetune-targets-empty", ["finetune", "--targets", ""], ["LoraConfig.targets"]),
    ("finetune-alpha-negative", ["finetune", "--alpha", "-1"], ["LoraConfig.alpha"]),
    ("finetune-dropout-1.5", ["finetune", "--dropout", "1.5"], ["LoraConfig.dropout"]),
    ("generate-empty-prompt", ["generate", ""], ["prompt must not be empty"]),
    ("generate-max-new-negative", ["generate", "x", "--max-new", "-1"], ["max_new"]),
    ("generate-top-k-negative", ["generate", "x", "--top-k", "-2"], ["top_k"]),
    ("generate-seed-negative", ["generate", "x", "--seed", "-1"], ["seed"]),
    ("generate-temperature-negative", ["generate", "x", "--temperature", "-1"], ["temperature"]),
    ("eval-seed-negative", ["eval", "--seed", "-3"], ["--seed"]),
]


@pytest.mark.parametrize("argv, names", [c[1:] for c in BAD_ARGS_CLI], ids=[c[0] for c in BAD_ARGS_CLI])
def test_bad_arguments_fail_before_any_work(ctx, capsys, no_work, argv, names):
    def setup(c):
        extra = [] if argv[0] == "tour" else ["--base", c.f["base"]]
        return argv + extra + (["--out", c.tmp / "run"] if argv[0] in ("finetune", "tour") else []), []
    run_cli_case(ctx, capsys, setup, 2, names)


@pytest.mark.parametrize("argv", [["finetune", "--method", "qlora"], ["finetune", "--r", "two"], ["bogus-command"],
                                  [], ["eval", "--no-such-flag"], ["generate"]])
def test_argparse_errors_keep_exit_code_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_debug_shows_the_traceback(files, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope"):
        main(["--debug", "eval", "--base", str(files["dir"] / "nope")])
    with pytest.raises(FileNotFoundError, match="nope"):
        main(["eval", "--debug", "--base", str(files["dir"] / "nope")])
    monkeypatch.setenv("MINILORA_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="nope"):
        main(["eval", "--base", str(files["dir"] / "nope")])


@pytest.mark.parametrize("raised, code, words", [
    (KeyError("x"), 1, ["internal error", "KeyError", "--debug"]),
    (KeyboardInterrupt(), 130, ["interrupted"]),
    (TrainingDiverged("step 9: boom"), 3, ["training diverged: step 9: boom"]),
    (PermissionError(13, "Permission denied"), 4, ["Permission denied"]),
    (ValueError("line one\nline two"), 2, ["line one line two"]),
])
def test_every_error_is_one_line_with_its_exit_code(ctx, capsys, monkeypatch, raised, code, words):
    import dataclasses

    import minilora.cli as cli_module

    def fail(args, console):
        raise raised

    monkeypatch.setitem(cli_module.SUBCOMMANDS, "eval", dataclasses.replace(cli_module.SUBCOMMANDS["eval"], run=fail))
    run_cli_case(ctx, capsys, lambda c: (["eval"], []), code, words)
