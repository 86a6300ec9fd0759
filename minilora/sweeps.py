"""The sweeps behind the notebooks' tables, each in its full and its reduced size (see ``experiments``).

    python -m minilora.experiments corpus4 --mode full --workers 2   # writes minilora/results/corpus4-*.json

One full sweep on the corpus task (in five groups, one result file each) serves two notebooks: 03 reads its
Table 6 rows (r in {1, 2, 4, 8, 64} x {W_q}, {W_q, W_v}, {all four}, and full fine-tuning), 07 its Table 5 rows
(8,192 adapter parameters each). Every setting gets the same learning-rate grid, tuned on seed 0; seeds 1 and 2
then run at the chosen lr. The full size was chosen to finish in about an hour and a half on two shared cores;
the reduced sweeps re-run a few rows of it in the test suite with the same code and a shorter budget.
"""

from __future__ import annotations

from .experiments import Setting, Sweep, reduced

RANKS = (1, 2, 4, 8, 64)
TARGET_SETS = {"wq": ("wq",), "wq,wv": ("wq", "wv"), "wq,wk,wv,wo": ("wq", "wk", "wv", "wo")}
LORA_LRS = (3e-3, 1e-2, 3e-2)
FULL_LRS = (1e-4, 3e-4, 1e-3)
ALPHA = 8.0  # fixed while r varies, as in the paper (s = α/r); kaiming init keeps A's size independent of r

TABLE6_RANKS = {"wq": RANKS, "wq,wv": RANKS, "wq,wk,wv,wo": RANKS}
TABLE6_ROWS = tuple(f"{t} r={r}" for t, ranks in TABLE6_RANKS.items() for r in ranks) + ("full fine-tuning",)
# Table 5: the same number of adapter parameters, 2 · d_model · r · (matrices per block) · L = 8,192.
TABLE5 = (("wq r=8", ("wq",), 8), ("wk r=8", ("wk",), 8), ("wv r=8", ("wv",), 8), ("wo r=8", ("wo",), 8),
          ("wq,wk r=4", ("wq", "wk"), 4), ("wq,wv r=4", ("wq", "wv"), 4),
          ("wq,wk,wv,wo r=2", ("wq", "wk", "wv", "wo"), 2))
TABLE5_ROWS = tuple(label for label, _, _ in TABLE5)


def _group(name: str, settings) -> Sweep:
    return Sweep(name, "corpus4", tuple(settings), seeds=(0, 1, 2), steps=250, batch_size=8, warmup=20,
                 eval_every=84)


def _lora(label, targets, r) -> Setting:
    return Setting(label, LORA_LRS, targets=targets, r=r, alpha=ALPHA)


# The full sweep in groups, each with its own result file, run in this order: on a shared machine the most
# important rows are complete first.
CORPUS4_GROUPS = (
    _group("corpus4-wq,wv", [_lora(f"wq,wv r={r}", TARGET_SETS["wq,wv"], r) for r in RANKS]),
    _group("corpus4-full", [Setting("full fine-tuning", FULL_LRS, targets=(), method="full")]),
    _group("corpus4-wq", [_lora(f"wq r={r}", TARGET_SETS["wq"], r) for r in TABLE6_RANKS["wq"]]),
    _group("corpus4-wq,wk,wv,wo", [_lora(f"wq,wk,wv,wo r={r}", TARGET_SETS["wq,wk,wv,wo"], r)
                                   for r in TABLE6_RANKS["wq,wk,wv,wo"]]),
    _group("corpus4-table5", [_lora(label, targets, r) for label, targets, r in TABLE5
                              if label not in TABLE6_ROWS]),
)
CORPUS4 = CORPUS4_GROUPS[0]  # the paper's main setting, {W_q, W_v}
# The plateau check: r = 1 and r = 64 on {W_q, W_v}, twice as long (500 steps of 8), at the learning rates the
# 250-step sweep chose for them (its seed-0 tuning runs picked 3e-2 and 1e-2).
CORPUS4_LONG = Sweep("corpus4-long", "corpus4", (Setting("wq,wv r=1", (3e-2,), r=1, alpha=ALPHA),
                                                 Setting("wq,wv r=64", (1e-2,), r=64, alpha=ALPHA)),
                     seeds=(0, 1, 2), steps=500, batch_size=8, warmup=20, eval_every=100, tune_on_first_seed=False)

FULL = {s.name: s for s in CORPUS4_GROUPS + (CORPUS4_LONG,)}
GROUPS = {"corpus4": CORPUS4_GROUPS}
REDUCED = {CORPUS4.name: reduced(CORPUS4, ("wq,wv r=1", "wq,wv r=64"), steps=60)}


def corpus4_table(run_if_missing: bool = True) -> dict:
    """{label: row} over every group of the corpus4 sweep: ``experiments.full_results`` of each group (which runs
    a missing group in full mode), or with run_if_missing=False only what is committed."""
    from .experiments import committed_results, full_results

    table = {}
    for group in CORPUS4_GROUPS:
        table.update((full_results if run_if_missing else committed_results)(group)["table"])
    return table


# ---- notebook 08: what α, the scaling rule and the initialisation of A do to the update --------------------
# Fixed learning rate, no held-out evaluation: these runs measure ΔW = s·B A itself (its size after a few steps)
# and the training loss, on the corpus task's batches of 8.
SCALE_RANKS = (1, 4, 16, 64)
SCALE_LR = 1e-2


def _scaling_settings() -> tuple[Setting, ...]:
    out = []
    for init in ("kaiming", "gaussian"):
        for rs in (False, True):
            for r in SCALE_RANKS:
                rule = "α/√r" if rs else "α/r"
                out.append(Setting(f"{init} {rule} r={r}", (SCALE_LR,), r=r, alpha=ALPHA, init=init, use_rslora=rs))
    return tuple(out)


SCALING = Sweep("scaling", "corpus4", _scaling_settings(), seeds=(0, 1, 2), steps=50, batch_size=8, warmup=5,
                eval_every=0, tune_on_first_seed=False)
# α at fixed r: equal α·lr, and α doubled at fixed lr (r = 8, kaiming, α/r).
ALPHA_LR = ((4.0, 4e-3), (8.0, 2e-3), (16.0, 1e-3), (16.0, 2e-3), (32.0, 2e-3))
ALPHAS = Sweep("alpha", "corpus4", tuple(Setting(f"α={a:g} lr={lr:g}", (lr,), r=8, alpha=a) for a, lr in ALPHA_LR),
               seeds=(0, 1, 2), steps=120, batch_size=8, warmup=10, eval_every=0, tune_on_first_seed=False)

SCALING_REDUCED = reduced(SCALING, tuple(s.label for s in SCALING.settings if s.r in (1, 16, 64)), steps=10)
ALPHAS_REDUCED = reduced(ALPHAS, tuple(s.label for s in ALPHAS.settings), steps=30)
