"""The sweeps behind the notebooks' tables, each in its full and its reduced size (see ``experiments``).

    python -m minilora.experiments table6-corpus4 --mode full --workers 2   # writes results/table6-corpus4.json

Full sizes were chosen so the whole set finishes in about an hour and a half on two shared cores; reduced sizes
so that each notebook re-executes in about a minute in the test suite.
"""

from __future__ import annotations

from .experiments import Setting, Sweep, reduced

RANKS = (1, 2, 4, 8, 64)
TARGET_SETS = {"wq": ("wq",), "wq,wv": ("wq", "wv"), "wq,wk,wv,wo": ("wq", "wk", "wv", "wo")}
LORA_LRS = (1e-2, 3e-2, 1e-1)
FULL_LRS = (1e-4, 3e-4, 1e-3)
ALPHA = 8.0  # fixed while r varies, as in the paper (s = α/r); kaiming init keeps A's size independent of r


def _table6(task: str, name: str, steps: int) -> Sweep:
    settings = [Setting(f"{t} r={r}", LORA_LRS, targets=targets, r=r, alpha=ALPHA)
                for t, targets in TARGET_SETS.items() for r in RANKS]
    settings.append(Setting("full fine-tuning", FULL_LRS, targets=(), method="full"))
    return Sweep(name, task, tuple(settings), seeds=(0, 1, 2), steps=steps, batch_size=16, warmup=20,
                 eval_every=50)


def _table5(task: str, name: str, steps: int) -> Sweep:
    """Which matrices under a fixed budget (Table 5): every setting trains 2 · d_model · r · matrices · L = 8,192
    parameters (r · matrices = 8)."""
    rows = (("wq r=8", ("wq",), 8), ("wk r=8", ("wk",), 8), ("wv r=8", ("wv",), 8), ("wo r=8", ("wo",), 8),
            ("wq,wk r=4", ("wq", "wk"), 4), ("wq,wv r=4", ("wq", "wv"), 4),
            ("wq,wk,wv,wo r=2", ("wq", "wk", "wv", "wo"), 2))
    settings = tuple(Setting(label, LORA_LRS, targets=targets, r=r, alpha=ALPHA) for label, targets, r in rows)
    return Sweep(name, task, settings, seeds=(0, 1, 2), steps=steps, batch_size=16, warmup=20, eval_every=50)


TABLE6_CORPUS4 = _table6("corpus4", "table6-corpus4", steps=250)
TABLE5_CORPUS4 = _table5("corpus4", "table5-corpus4", steps=250)
# The original docstring task (text the base never read): the paper's main setting {W_q, W_v} only, for time.
TABLE6_DOCMODULE = Sweep("table6-docmodule", "docmodule",
                         tuple(s for s in _table6("docmodule", "", 250).settings if s.label in
                               ("wq,wv r=1", "wq,wv r=8", "wq,wv r=64")), seeds=(0, 1, 2), steps=250)

FULL = {s.name: s for s in (TABLE6_CORPUS4, TABLE5_CORPUS4, TABLE6_DOCMODULE)}
REDUCED = {name: reduced(s, tuple(x.label for x in s.settings)) for name, s in FULL.items()}  # placeholder sizes
