"""Figures shared by the tour and the notebooks (matplotlib; saved as PNG when given a path).

The backend is the caller's choice: the tour selects Agg (files only), a notebook keeps its inline backend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt


def _save(fig, path):
    """Write ``fig`` to ``path`` as a PNG (when a path is given) the way every minilora file is written:
    rendered in memory, then checkpoint.atomic_write_bytes (temporary file, fsync, rename, folder fsync), so a
    reader never sees half a PNG and a failed save leaves the old file."""
    if path is not None:
        from io import BytesIO

        from .checkpoint import atomic_write_bytes

        buffer = BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        atomic_write_bytes(Path(path), buffer.getvalue())
    return fig


def training_curves(results: dict, metric: str, path=None, smooth: int = 10):
    """Left: training loss per step (moving average); right: the held-out metric at each evaluation.

    results: {label: TrainResult}.
    """
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, res in results.items():
        loss = np.array([h["loss"] for h in res.history])
        k = min(smooth, len(loss))
        avg = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax1.plot(np.arange(k, len(loss) + 1), avg, label=label)
        ax2.plot([e["step"] for e in res.evals], [e[metric] for e in res.evals], marker="o", label=label)
    ax1.set(xlabel="step", ylabel=f"training loss ({smooth}-step mean)", title="Training loss")
    ax2.set(xlabel="step", ylabel=metric, title=f"Held-out {metric}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def param_bars(rows: list[tuple[str, int]], path=None, title="Trainable parameters"):
    """Horizontal bars on a log scale: [(label, count), ...]."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    labels = [r[0] for r in rows]
    counts = [r[1] for r in rows]
    ax.barh(labels, counts, color="tab:blue")
    ax.set_xscale("log")
    for i, c in enumerate(counts):
        ax.text(c, i, f" {c:,}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="parameters (log scale)", title=title)
    fig.tight_layout()
    return _save(fig, path)


def singular_values(series: dict, path=None, title="Singular values"):
    """{label: 1-D array of singular values} on a log scale."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, s in series.items():
        ax.semilogy(range(1, len(s) + 1), s, marker=".", label=label)
    ax.set(xlabel="index", ylabel="singular value", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def param_dots(rows: list[tuple[str, int]], path=None, title="Trainable parameters"):
    """A dot plot on a log scale: [(label, count), ...]. Dots, not bars: on a log axis a bar's length depends on
    the arbitrary left edge, a dot's position does not."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    labels = [r[0] for r in rows]
    counts = [r[1] for r in rows]
    ax.scatter(counts, range(len(rows)), color="tab:blue", zorder=3)
    for i, c in enumerate(counts):
        ax.annotate(f"{c:,}", (c, i), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xscale("log")
    lo, hi = min(counts), max(counts)
    ax.set_xlim(lo / 3, hi * 20)  # room for the labels
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x", which="both")
    ax.set(xlabel="parameters (log scale)", title=title)
    fig.tight_layout()
    return _save(fig, path)
