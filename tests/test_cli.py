"""The ``minilora`` command, called in-process through minilora.cli.main (steps kept tiny: the base model is 0.84M)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import minilora.checkpoint as ckpt
from minilora import GPTConfig, init_params, merge
from minilora.checkpoint import load_adapter, load_params, save_params
from minilora.cli import main
from minilora.tree import flatten

BASE = GPTConfig.preset("base")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One LoRA fine-tuning run of the shipped base (3 steps), shared by the eval/merge/generate tests."""
    if not ckpt.BASE_CHECKPOINT.is_file():
        pytest.skip(f"the shipped base checkpoint {ckpt.BASE_CHECKPOINT} is missing (made by 'minilora pretrain')")
    out = tmp_path_factory.mktemp("lora")
    code = main(["finetune", "--method", "lora", "--steps", "3", "--batch-size", "4", "--r", "2",
                 "--eval-every", "0", "--out", str(out)])
    return code, out


@pytest.fixture(scope="module")
def fake_base(tmp_path_factory):
    """A randomly initialised model of the base preset, passed with --base: the error paths need no shipped model."""
    path = tmp_path_factory.mktemp("fake") / "random_base.safetensors"
    return save_params(path, init_params(BASE, 0), BASE)


# ---- the working paths ------------------------------------------------------------------------------------

def test_finetune_lora(finetuned):
    code, out = finetuned
    assert code == 0
    assert (out / "adapter.safetensors").is_file()
    assert (out / "train_state.safetensors").is_file()
    lora, lcfg = load_adapter(out / "adapter.safetensors", BASE)
    assert lcfg.r == 2 and lcfg.targets == ("wq", "wv")
    assert any(np.abs(ab["B"]).max() > 0 for block in lora["blocks"] for ab in block.values()), "B never trained"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "lora" and metrics["task"] == "docmodule"
    assert [h["step"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["trainable_params"] == 2 * BASE.n_layer * 2 * (2 * BASE.d_model)
    assert metrics["file_bytes"] == (out / "adapter.safetensors").stat().st_size
    assert 0.0 <= metrics["final"]["accuracy"] <= 1.0 and metrics["final"]["step"] == 3
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_finetune_full(shipped_base, tmp_path, capsys):
    code, out, err = run(capsys, "finetune", "--method", "full", "--steps", "2", "--batch-size", "2",
                         "--eval-every", "0", "--out", tmp_path, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["method"] == "full" and summary["trainable_params"] > 800_000
    params, config = load_params(tmp_path / "params.safetensors")
    assert config == BASE
    base, _ = ckpt.load_base()
    assert not np.array_equal(params["blocks"][0]["wq"]["W"], base["blocks"][0]["wq"]["W"])
    assert ckpt.read_record(tmp_path / "params.safetensors") == {"finetuned_on": "docmodule"}
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "full"


def test_eval_adapter(finetuned, capsys):
    code, out, err = run(capsys, "eval", "--adapter", finetuned[1] / "adapter.safetensors", "--json")
    assert code == 0, err
    report = json.loads(out)
    result = report["metrics"]
    assert set(result) == {"accuracy", "loss", "n"}
    assert 0.0 <= result["accuracy"] <= 1.0 and np.isfinite(result["loss"]) and result["n"] > 100
    # the same numbers the fine-tuning run recorded at its end
    metrics = json.loads((finetuned[1] / "metrics.json").read_text())
    assert result["accuracy"] == metrics["final"]["accuracy"]
    assert result["loss"] == pytest.approx(metrics["final"]["loss"], rel=1e-6)


def test_merge(finetuned, tmp_path, capsys):
    adapter = finetuned[1] / "adapter.safetensors"
    out_path = tmp_path / "merged.safetensors"
    code, out, err = run(capsys, "merge", "--adapter", adapter, "--out", out_path)
    assert code == 0, err
    assert str(out_path) in out
    merged, config = load_params(out_path)
    assert config == BASE
    base, _ = ckpt.load_base()
    lora, lcfg = load_adapter(adapter, BASE)
    expected = merge(base, lora, lcfg)
    for k, v in flatten(expected).items():
        np.testing.assert_array_equal(flatten(merged)[k], v, err_msg=k)
    assert ckpt.read_record(out_path) == {"merged_adapter": str(adapter)}


def test_generate(finetuned, capsys):
    code, out, err = run(capsys, "generate", "def ", "--max-new", 5)
    assert code == 0, err
    from minilora.generate import generate

    params, config = ckpt.load_base()
    expected = generate(params, config, "def ", 5)
    assert out == expected + "\n"
    assert len(expected.encode("utf-8", errors="surrogatepass")) <= 5 * 3  # at most 5 bytes, some may be U+FFFD
    code, out2, err = run(capsys, "generate", "def ", "--max-new", 5, "--adapter",
                          finetuned[1] / "adapter.safetensors", "--temperature", 0.8, "--seed", 3)
    assert code == 0, err
    code, out3, _ = run(capsys, "generate", "def ", "--max-new", 5, "--adapter",
                        finetuned[1] / "adapter.safetensors", "--temperature", 0.8, "--seed", 3)
    assert out2 == out3, "sampling with the same seed must give the same text"


def test_tour(shipped_base, tmp_path, capsys):
    code, out, err = run(capsys, "tour", "--quick", "--steps", 2, "--out", tmp_path)
    assert code == 0, err[-2000:]
    for name in ("training_curves.png", "parameter_counts.png", "singular_values.png", "adapter.safetensors",
                 "summary.json"):
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, f"tour did not write {name}"
    for name in ("training_curves.png", "parameter_counts.png", "singular_values.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["zero_init_identical"] is True
    assert summary["steps"] == 2
    assert summary["lora_params"] < summary["full_params"] / 40
    assert summary["adapter_bytes"] < summary["full_bytes"] / 20
    assert summary["merge_max_abs_diff"] <= 1e-4
    load_adapter(tmp_path / "adapter.safetensors", BASE)
    assert "bitwise identical: True" in out


# ---- bad input: exit code 2 and a message that names the problem ------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["finetune", "--r", "0"], "LoraConfig.r must be a positive int"),
    (["finetune", "--targets", "wq,bogus"], "unknown target 'bogus'"),
    (["finetune", "--alpha", "-1"], "LoraConfig.alpha"),
    (["finetune", "--dropout", "1.5"], "LoraConfig.dropout"),
    (["finetune", "--r", "200"], "exceeds min"),
    (["finetune", "--steps", "0"], "TrainConfig.steps"),
    (["finetune", "--lr", "0"], "TrainConfig.lr"),
    (["generate", "", "--max-new", "3"], "prompt must not be empty"),
    (["generate", "x", "--max-new", "-1"], "max_new"),
    (["generate", "x", "--temperature", "-1"], "temperature"),
])
def test_bad_arguments_exit_2(fake_base, tmp_path, capsys, argv, message):
    argv = argv + ["--base", str(fake_base)] + (["--out", str(tmp_path / "run")] if argv[0] == "finetune" else [])
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert f"minilora {argv[0]}: error:" in err and message in err, err
    assert not (tmp_path / "run" / "adapter.safetensors").exists()


def test_eval_refuses_a_pickle_adapter(fake_base, tmp_path, capsys):
    bad = tmp_path / "adapter.bin"
    bad.write_bytes(pickle.dumps({"blocks": []}))
    code, _, err = run(capsys, "eval", "--base", fake_base, "--adapter", bad)
    assert code == 2 and "pickle" in err and str(bad) in err, err


def test_eval_refuses_params_as_an_adapter(fake_base, capsys):
    code, _, err = run(capsys, "eval", "--base", fake_base, "--adapter", fake_base)
    assert code == 2 and "expected a 'adapter'" in err, err


def test_eval_refuses_an_adapter_for_another_base(fake_base, tmp_path, capsys):
    from minilora import LoraConfig, init_lora
    from minilora.checkpoint import save_adapter

    tiny = GPTConfig.preset("tiny")
    adapter = save_adapter(tmp_path / "a.safetensors", init_lora(tiny, LoraConfig(r=2), 0), LoraConfig(r=2), tiny)
    code, _, err = run(capsys, "merge", "--base", fake_base, "--adapter", adapter, "--out", tmp_path / "m")
    assert code == 2 and "was trained for" in err, err
    assert not (tmp_path / "m").exists()


def test_missing_files_exit_2(fake_base, tmp_path, capsys):
    code, _, err = run(capsys, "eval", "--base", tmp_path / "nope.safetensors")
    assert code == 2 and "nope.safetensors" in err, err
    code, _, err = run(capsys, "generate", "x", "--base", fake_base, "--adapter", tmp_path / "missing")
    assert code == 2 and "missing" in err, err


def test_argparse_errors_exit_2(capsys):
    for argv in (["finetune", "--method", "qlora"], ["finetune", "--r", "two"], ["bogus-command"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "error" in capsys.readouterr().err
