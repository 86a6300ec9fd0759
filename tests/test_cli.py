"""The ``minilora`` command, called in-process through minilora.cli.main (steps kept tiny: the base model is 0.84M)."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minilora.checkpoint as ckpt
from minilora import GPTConfig, init_params, merge
from minilora.checkpoint import load_adapter, load_params, save_params
from minilora.cli import FINETUNE_METHODS, main
from minilora.provenance import fingerprint
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
    assert report["chance"] == 0.1 and report["split"] == "held-out split" and report["n"] == 230
    assert report["base"]["sha256"] == fingerprint(ckpt.load_base()[0]) and report["params"] is None
    assert report["adapter"]["file"] == str(finetuned[1] / "adapter.safetensors")
    assert report["below_chance"] is (result["accuracy"] < 0.1)
    assert set(report["base_metrics"]) == {"accuracy", "loss", "n"}
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
                 "summary.json", "report.txt"):
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
    load_adapter(tmp_path / "adapter.safetensors", BASE, base=ckpt.load_base()[0])  # it records the shipped base
    assert "bitwise identical: True" in out
    # the printed report is the text file, and the step times were measured as interleaved pairs
    assert (tmp_path / "report.txt").read_text() == out.lstrip("\n")
    assert "full/LoRA = " in out and "of the per-pair ratios [p10, p90]" in out and "CPUs meanwhile" in out
    assert summary["timing_pairs"] == 3
    lo, hi = summary["step_time_ratio_p10_p90"]
    assert lo <= summary["step_time_ratio_full_over_lora"] <= hi
    assert "\r" not in err, "progress bars redraw with \\r only on a terminal"


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


# ---- what the commands print ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_base(tmp_path_factory):
    """A base of context 128 but width 16: the docmodule task runs on it in a fraction of a second."""
    from test_faults import SMALL

    return save_params(tmp_path_factory.mktemp("small") / "small.safetensors", init_params(SMALL, 0), SMALL)


def test_finetune_prints_a_summary_and_overwrites_only_when_asked(small_base, tmp_path, capsys):
    argv = ["finetune", "--base", small_base, "--r", 2, "--steps", 3, "--batch-size", 2, "--eval-every", 0,
            "--out", tmp_path]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("fine-tuned  LoRA r=2 alpha=16 on wq,wv of all blocks of base ")
    assert str(small_base) in lines[0] and "fingerprint" in lines[0]
    assert lines[1].startswith("trained     256 parameters (2.41% of 10,624)")
    assert "for 3 steps on docmodule" in lines[1]
    assert lines[2].startswith("held out    accuracy ") and "(base " in lines[2] and "chance 0.100" in lines[2]
    assert lines[4].startswith(f"wrote       {tmp_path / 'adapter.safetensors'} (")
    before = (tmp_path / "adapter.safetensors").read_bytes()
    code, _, err = run(capsys, *argv)
    assert code == 2 and "exists; pass --overwrite" in err
    assert (tmp_path / "adapter.safetensors").read_bytes() == before
    code, out, err = run(capsys, *argv, "--overwrite", "--json", "--seed", 1)
    assert code == 0, err
    assert json.loads(out)["final"]["step"] == 3
    assert (tmp_path / "adapter.safetensors").read_bytes() != before


def test_progress_is_plain_lines_without_a_terminal(small_base, tmp_path, capsys):
    argv = ["finetune", "--base", small_base, "--r", 2, "--steps", 3, "--batch-size", 2, "--eval-every", 0]
    code, _, err = run(capsys, *argv, "--out", tmp_path / "a")
    assert code == 0, err
    assert "\r" not in err
    assert [line.split(",")[0] for line in err.splitlines()] == [f"lora fine-tuning: step {i}/3" for i in (1, 2, 3)]
    code, out, err = run(capsys, *argv, "--out", tmp_path / "b", "--no-progress")
    assert code == 0 and err == "" and out
    code, out, err = run(capsys, "--quiet", *argv, "--out", tmp_path / "c")
    assert code == 0 and err == "" and out


def test_progress_modes():
    from minilora.progress import Progress, resolve_mode

    class Terminal:
        def isatty(self):
            return True

        def write(self, text):
            pass

        def flush(self):
            pass

    assert resolve_mode(True, Terminal()) == "bar"
    assert resolve_mode(True, io.StringIO()) == "lines"
    assert resolve_mode(False) == "none"
    with pytest.raises(ValueError, match="progress must be"):
        resolve_mode("fancy")
    stream = io.StringIO()
    bar = Progress("x", 0, 20, "lines", stream=stream)
    for done in range(1, 21):
        bar.step(done, 1.0, {"step": done, "accuracy": 0.5} if done == 7 else None)
    lines = stream.getvalue().splitlines()
    assert [int(line.split()[2].split("/")[0].rstrip(",")) for line in lines] == [2, 4, 6, 7, 8, 10, 12, 14, 16, 18,
                                                                                  20]
    assert "eval accuracy 0.5000" in lines[3]


def test_eval_says_what_it_evaluated(finetuned, capsys):
    adapter = finetuned[1] / "adapter.safetensors"
    code, out, err = run(capsys, "eval", "--adapter", adapter)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"evaluated  adapter {adapter} (LoRA r=2 alpha=16 on wq,wv of all blocks) on the "
                               f"shipped base {ckpt.BASE_CHECKPOINT} [fingerprint ")
    assert lines[1].startswith("task       docmodule: name the standard-library module")
    assert "held-out split" in lines[1] and "n = 230" in lines[1]
    assert lines[2].split() == ["accuracy", "loss"]
    assert [line.split()[0] for line in lines[3:6]] == ["this", "base", "chance"]
    assert lines[5].split()[1] == "0.1000"


def test_eval_says_when_a_model_is_below_chance(small_base, capsys, monkeypatch):
    from minilora.tasks import DocModuleTask

    monkeypatch.setattr(DocModuleTask, "evaluate", lambda self, *a, **k: {"accuracy": 0.04, "loss": 7.0, "n": 230})
    code, out, err = run(capsys, "eval", "--base", small_base)
    assert code == 0, err
    assert "below chance: accuracy 0.040 is under the 0.100 of a uniform guess" in out


def test_generate_echo_and_top_k(small_base, capsys):
    code, plain, err = run(capsys, "generate", "abc", "--base", small_base, "--max-new", 6)
    assert code == 0, err
    code, echoed, err = run(capsys, "generate", "abc", "--base", small_base, "--max-new", 6, "--echo")
    assert code == 0 and echoed == "abc" + plain, err
    # top-1 sampling is greedy decoding, whatever the temperature and seed
    code, top1, err = run(capsys, "generate", "abc", "--base", small_base, "--max-new", 6, "--temperature", 5,
                          "--top-k", 1, "--seed", 7)
    assert code == 0 and top1 == plain, err


def test_merged_file_records_what_it_merged(finetuned, tmp_path, capsys):
    adapter = finetuned[1] / "adapter.safetensors"
    out_path = tmp_path / "merged.safetensors"
    assert run(capsys, "merge", "--adapter", adapter, "--out", out_path)[0] == 0
    base = ckpt.load_base()[0]
    info = ckpt.read_info(out_path, "params")
    assert info["base_sha256"] == fingerprint(base)
    (entry,) = info["merged"]
    assert entry["adapter_sha256"] == fingerprint(load_adapter(adapter, BASE)[0])
    assert entry["base_sha256"] == fingerprint(base) and entry["file"] == str(adapter)
    assert ckpt.adapter_base(adapter) == fingerprint(base)


# ---- help, version, python -m -----------------------------------------------------------------------------

def test_help_everywhere(capsys):
    from minilora.cli import SUBCOMMANDS, _HelpFormatter, build_parser

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    top = capsys.readouterr().out
    assert exc.value.code == 0 and "`" not in top
    assert all(name in top for name in SUBCOMMANDS) and "exit codes:" in top
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == set(SUBCOMMANDS) >= {"pretrain", "finetune", "eval", "generate", "merge",
                                                            "tour"}
    for name, sub in subparsers.choices.items():
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        text = capsys.readouterr().out
        assert exc.value.code == 0 and " ".join(SUBCOMMANDS[name].description.split()[:4]) in " ".join(text.split())
        formatter = _HelpFormatter(name)
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"minilora {name} {action.option_strings or action.dest} has no help"
            if not action.option_strings:  # a positional argument: no default to show
                continue
            meaningful = action.default not in (None, argparse.SUPPRESS) and action.default is not False
            if meaningful:
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)
    assert "(default: 300)" in run_help(capsys, "finetune") and "(default: 3000)" in run_help(capsys, "pretrain")
    assert "(default: 0.0)" in run_help(capsys, "generate")  # zero defaults are shown too


def run_help(capsys, name):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_version(capsys):
    from minilora import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith(f"minilora {__version__} (numpy ")


def test_python_dash_m(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(ckpt.__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-m", "minilora", "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.startswith("minilora "), done.stderr
    done = subprocess.run([sys.executable, "-m", "minilora", "eval", "--base", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nope" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_golden_command(tmp_path, capsys):
    code, out, err = run(capsys, "golden", tmp_path / "g")
    assert code == 0 and (tmp_path / "g" / "index.json").is_file() and "62 golden cases" in out, err
    before = (tmp_path / "g" / "index.json").read_bytes()
    code, out, err = run(capsys, "golden", tmp_path / "g")
    assert code == 2 and "exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert (tmp_path / "g" / "index.json").read_bytes() == before
    code, out, err = run(capsys, "golden", tmp_path / "g", "--overwrite")
    assert code == 0 and (tmp_path / "g" / "index.json").read_bytes() == before  # deterministic
    code, out, err = run(capsys, "golden", tmp_path / "g" / "index.json")
    assert code == 2 and "is not a folder" in err


# ---- finetune --method NAME (every method of minilora.methods) and eval --method-file -------------------------

METHOD_RUNS = [m for m in FINETUNE_METHODS if m not in ("lora", "full")]


def test_finetune_offers_every_method():
    from minilora.methods import METHODS

    assert FINETUNE_METHODS == ["lora", "full"] + [m for m in METHODS if m != "lora"]


@pytest.mark.parametrize("name", METHOD_RUNS)
def test_finetune_any_method_writes_a_method_file_that_eval_reads(small_base, tmp_path, capsys, name):
    from minilora.methods import load_method

    code, out, err = run(capsys, "finetune", "--base", small_base, "--method", name, "--r", 2, "--steps", 2,
                         "--batch-size", 2, "--eval-every", 0, "--out", tmp_path, "--json", "--no-progress")
    assert code == 0, err
    summary = json.loads(out)
    path = tmp_path / "method.safetensors"
    assert summary["file"] == str(path) and summary["file_bytes"] == path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["method.safetensors", "metrics.json",
                                                          "train_state.safetensors"]
    params, config = load_params(small_base)
    setup, trainable = load_method(path, params, config)
    assert setup.method.name == name and setup.json_options() == summary["options"]
    assert setup.trainable_count() == summary["trainable_params"] == summary["paper_count"]
    if name in ("adapter_h", "adapter_l", "lora_plus", "lora_fa"):
        assert setup.options["r"] == 2  # --r reaches every method that has a rank
    code, out, err = run(capsys, "eval", "--base", small_base, "--method-file", path, "--json")
    if summary["final"] is None:  # the tasks' evaluate cannot run this method's hooks: eval says so
        assert code == 2 and "cannot run" in err and setup.method.task_model is None, err
    else:  # the file, rebuilt on the base, scores exactly what the run scored at its end
        assert code == 0, err
        report = json.loads(out)
        assert report["metrics"] == {k: v for k, v in summary["final"].items() if k != "step"}
        assert report["method_file"] == {"file": str(path), "method": name, "options": summary["options"]}
        assert report["base_metrics"] == summary["base"]


def test_finetune_method_text_summary_and_eval_text(small_base, tmp_path, capsys):
    code, out, err = run(capsys, "finetune", "--base", small_base, "--method", "lora_fa", "--r", 2, "--steps", 2,
                         "--batch-size", 2, "--eval-every", 0, "--out", tmp_path, "--no-progress")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("fine-tuned  LoRA-FA (B of every adapted matrix (A frozen at init); r=2, ")
    assert lines[1].startswith("trained     128 parameters (1.20% of 10,624) for 2 steps on docmodule")
    assert lines[4].startswith(f"wrote       {tmp_path / 'method.safetensors'} (")
    code, out, err = run(capsys, "eval", "--base", small_base, "--method-file", tmp_path / "method.safetensors")
    assert code == 0, err
    assert out.startswith(f"evaluated  method file {tmp_path / 'method.safetensors'} (LoRA-FA (")
    assert [line.split()[0] for line in out.splitlines()[3:6]] == ["this", "base", "chance"]


def test_prefix_methods_leave_room_for_their_virtual_tokens(small_base, tmp_path, capsys):
    code, out, err = run(capsys, "finetune", "--base", small_base, "--method", "prelayer", "--l-p", 4, "--l-i", 2,
                         "--steps", 1, "--batch-size", 2, "--eval-every", 0, "--out", tmp_path, "--json")
    assert code == 0, err
    assert json.loads(out)["options"] == {"l_p": 4, "l_i": 2} and json.loads(out)["trainable_params"] == 2 * 16 * 6


@pytest.mark.parametrize("argv, message", [
    (["--method", "lora", "--l-p", 4], "--l-p is not an option of --method lora (r, alpha, targets, ...); it is "
                                       "for --method preembed, prelayer"),
    (["--method", "full", "--ratio", 4], "--ratio is not an option of --method full; it is for --method lora_plus"),
    (["--method", "adapter_h", "--l-i", 1], "--l-i is not an option of --method adapter_h (its options: ['r'])"),
    (["--method", "adapter_l", "--r", 0], "AdapterL.r"),
    (["--method", "lora_plus", "--ratio", -1], "ratio"),
])
def test_finetune_method_bad_arguments_exit_2(small_base, tmp_path, capsys, argv, message):
    code, out, err = run(capsys, "finetune", "--base", small_base, *argv, "--steps", 1, "--out", tmp_path)
    assert code == 2 and message in err and out == "", err
    assert not (tmp_path / "method.safetensors").exists()


def test_eval_method_file_refusals(small_base, fake_base, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(capsys, "finetune", "--base", small_base, "--method", "bitfit", "--steps", 1, "--batch-size", 2,
               "--eval-every", 0, "--out", run_dir)[0] == 0
    path = run_dir / "method.safetensors"
    config = load_params(small_base)[1]
    other = save_params(tmp_path / "other.safetensors", init_params(config, 1), config)  # same shapes, other values
    code, _, err = run(capsys, "eval", "--base", other, "--method-file", path)
    assert code == 2 and f"method file {path} was made from base parameters with fingerprint" in err
    assert run(capsys, "eval", "--base", other, "--method-file", path, "--allow-base-mismatch")[0] == 0
    code, _, err = run(capsys, "eval", "--base", fake_base, "--method-file", path)
    assert code == 2 and f"method file {path} was saved for GPTConfig(" in err and "differs from the config" in err
    code, _, err = run(capsys, "eval", "--base", small_base, "--method-file", path, "--params", small_base)
    assert code == 2 and "--method-file cannot be combined with --params" in err
    code, _, err = run(capsys, "eval", "--base", small_base, "--method-file", small_base)
    assert code == 2 and "holds a minilora 'params', expected a 'method'" in err
    code, _, err = run(capsys, "eval", "--base", small_base, "--method-file", tmp_path / "missing.safetensors")
    assert code == 2 and "--method-file: " in err and "does not exist" in err
