"""benchmarks/gpu_check.py stays runnable: its dry run on the CPU stand-in, and its clean exit without a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_dry_run_on_the_standin_takes_every_code_path(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--standin", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for section in ("== 1. environment", "== 2. parity", "== 3. training", "== 4. speed", "where the time goes",
                    "cProfile of one minilora full step", "train() median step", "all bounds held"):
        assert section in text, section
    data = json.loads(out.read_text())
    assert not data["failed"] and not data["broken"]
    for name, errs in data["parity"].items():  # the stand-in computes with NumPy: bit-identical, not just close
        assert errs == {"loss_rel_err": 0.0, "grad_max_rel_err": 0.0, "rerun_max_rel_diff": 0.0}, name
    assert all(t["loss_max_rel_diff"] == 0.0 and t["on_device"] for t in data["training"].values())
    speed = data["speed"]
    assert {"minilora lora", "minilora full"} <= set(speed["steps"])
    assert all(t["to_host"] == 0 and t["to_device"] == 0 for t in speed["transfers_per_step"].values())
    if importlib.util.find_spec("torch") is not None:
        assert {"torch lora", "torch full"} <= set(speed["steps"]) and "minilora/torch full" in speed["ratios"]
        assert speed["same_model"]["lora"]["grad_max_rel_err"] < 1e-3


@pytest.mark.parametrize("cupy", [None, "no device"])
def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys, cupy):
    if cupy == "no device":
        def no_device():
            raise RuntimeError("cudaErrorNoDevice")

        cupy = types.ModuleType("cupy")
        cupy.__version__ = "14.0.0"
        cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpu_check: no GPU here") and out.count("\n") == 1


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed: the script would run")
def test_the_script_itself_exits_0_on_this_machine():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "no GPU here" in done.stdout, done.stderr
