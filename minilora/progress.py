"""Progress of a training loop: a bar on a terminal, a few plain lines in a log, or nothing.

A tqdm bar redraws itself with carriage returns; written to a file or a pipe that is one ever-growing line (a
56 kB line in a CI log). So the bar is drawn only where it can be redrawn: a terminal, or a Jupyter kernel
(its front end understands ``\\r``). Anywhere else the same loop prints a plain line every tenth of the run, at
each evaluation, and at least once a minute.
"""

from __future__ import annotations

import sys
import time

MODES = ("auto", "bar", "lines", "none")


def resolve_mode(progress, stream=None) -> str:
    """True/"auto": "bar" on a terminal or in Jupyter, else "lines"; False/None: "none"; a mode name as is."""
    if progress is True or progress == "auto":
        stream = sys.stderr if stream is None else stream
        interactive = getattr(stream, "isatty", lambda: False)() or type(stream).__module__.startswith("ipykernel")
        return "bar" if interactive else "lines"
    if progress is False or progress is None:
        return "none"
    if progress not in MODES:
        raise ValueError(f"progress must be True, False or one of {MODES}, got {progress!r}")
    return progress


class Progress:
    """Steps ``start`` .. ``total`` of a loop, shown according to ``mode`` (see resolve_mode)."""

    def __init__(self, desc: str, start: int, total: int, mode="auto", stream=None, min_seconds: float = 60.0):
        self.stream = sys.stderr if stream is None else stream
        self.mode = resolve_mode(mode, self.stream)
        self.desc, self.total = desc, total
        self.every = max(1, total // 10)
        self.min_seconds = min_seconds
        self.t0 = self.last_line = time.perf_counter()
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm  # plain text bars: no widget dependency in notebooks

            self.bar = tqdm(total=total, initial=start, desc=desc, leave=True, dynamic_ncols=True, file=self.stream)

    def step(self, done: int, loss: float, evaluation: dict | None = None) -> None:
        """After step number ``done`` (1-based): its loss, and the evaluation made after it if any."""
        shown = {k: v for k, v in (evaluation or {}).items() if k not in ("step", "n")}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", **{f"eval_{k}": f"{v:.3f}" for k, v in shown.items()})
        elif self.mode == "lines":
            now = time.perf_counter()
            if evaluation or done % self.every == 0 or done == self.total or now - self.last_line > self.min_seconds:
                extra = "".join(f", eval {k} {v:.4f}" for k, v in shown.items())
                print(f"{self.desc}: step {done}/{self.total}, loss {loss:.4f}{extra} ({now - self.t0:.0f} s)",
                      file=self.stream, flush=True)
                self.last_line = now

    def close(self) -> None:
        """End the bar (a no-op for plain lines or none)."""
        if self.bar is not None:
            self.bar.close()
