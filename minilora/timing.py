"""Timing computations side by side on a shared machine: interleaved repetitions, paired ratios, and a measure
of how busy the machine was while they ran.

Two step times measured one after the other are not comparable on a machine that other jobs share: the load
changes between the two, and a ratio of two medians taken minutes apart can say 0.19 one day and 1.21 the next.
``run_interleaved`` runs every contender once per repetition (rotating which goes first), so each repetition's
times were taken under the same conditions; ``paired_ratio`` takes the ratio within each repetition and reports
its median with the 10th and 90th percentiles. ``CpuMonitor`` measures how much CPU other processes used during
the measurement (from /proc/stat where it exists, else the load average), so a report can say when the machine
was visibly busy.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def run_interleaved(contenders, reps: int, warmup: int = 1, collect: bool = True, max_seconds: float | None = None,
                    min_reps: int = 5, blocked: bool = False) -> dict:
    """Time ``contenders`` = [(name, fn), ...]: each repetition calls every fn once, the first one rotating.

    The first ``warmup`` repetitions are not recorded. With ``max_seconds`` the loop stops (after at least
    ``min_reps`` recorded repetitions) once that long has passed. ``collect`` runs the garbage collector before
    each call, outside the timer. ``blocked`` runs all repetitions of one contender before the next instead
    (each with its own warm-up and share of max_seconds): a diagnostic, its repetitions are not paired.
    Returns {name: {"t": [wall s], "cpu": [process CPU s], "faults": [minor page faults]}}.
    """
    if blocked:
        share = None if max_seconds is None else max_seconds / len(contenders)
        out = {}
        for c in contenders:
            out.update(run_interleaved([c], reps, warmup, collect, share, min_reps))
        return out
    results = {name: {"t": [], "cpu": [], "faults": []} for name, _ in contenders}
    start = time.perf_counter()
    for rep in range(warmup + reps):
        if max_seconds is not None and rep >= warmup + min_reps and time.perf_counter() - start > max_seconds:
            break
        k = rep % len(contenders)
        for name, fn in contenders[k:] + contenders[:k]:
            if collect:
                gc.collect()
            faults, cpu, wall = _minor_faults(), time.process_time(), time.perf_counter()
            fn()
            wall, cpu, faults = time.perf_counter() - wall, time.process_time() - cpu, _minor_faults() - faults
            if rep >= warmup:
                for key, value in (("t", wall), ("cpu", cpu), ("faults", faults)):
                    results[name][key].append(value)
    return results


def stats_ms(seconds) -> dict:
    """median, p10, p90 and min of a list of durations in seconds, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)),
            "p90": float(np.percentile(ms, 90)), "min": float(ms.min())}


def paired_ratio(num, den) -> tuple[float, float, float]:
    """(median, p10, p90) of the per-repetition ratios num[i] / den[i] of two interleaved series."""
    n = min(len(num), len(den))
    if n == 0:
        raise ValueError("paired_ratio needs at least one repetition of each series")
    r = np.asarray(num[:n], dtype=np.float64) / np.asarray(den[:n], dtype=np.float64)
    return float(np.median(r)), float(np.percentile(r, 10)), float(np.percentile(r, 90))


# ---- how busy was the machine? --------------------------------------------------------------------------------

def _proc_stat() -> tuple[float, int] | None:
    """(CPU seconds all processes have spent busy since boot, number of CPUs) from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    fields = [int(x) for x in lines[0].split()[1:]]
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait (guest time is inside
    # user already). Steal counts as busy: the hypervisor gave this machine's CPU time to someone else.
    busy = sum(fields[:3]) + sum(fields[5:8])
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return busy / os.sysconf("SC_CLK_TCK"), cpus


def _own_cpu_seconds() -> float:
    if resource is None:  # pragma: no cover - Windows
        return time.process_time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CpuMonitor:
    """CPU used by other processes between start() and stop(), in CPUs (1.0 = one CPU kept busy throughout).

    Linux: from /proc/stat (all busy time) minus this process's own CPU time. Elsewhere: the 1-minute load
    average at stop(), minus one for this process (a rough figure, and marked as such).
    """

    def start(self) -> "CpuMonitor":
        """Begin the interval (CPU counters and wall clock); returns self."""
        self._stat, self._own, self._wall = _proc_stat(), _own_cpu_seconds(), time.perf_counter()
        return self

    def stop(self) -> dict:
        """{"others_cpus", "cpus", "own_cpus", "loadavg", "source"} for the interval since start()."""
        wall = max(time.perf_counter() - self._wall, 1e-9)
        own = (_own_cpu_seconds() - self._own) / wall
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        stat = _proc_stat()
        if self._stat is not None and stat is not None:
            others = max(0.0, (stat[0] - self._stat[0]) / wall - own)
            return {"others_cpus": others, "cpus": stat[1], "own_cpus": own, "loadavg": load, "source": "/proc/stat"}
        others = None if load is None else max(0.0, load[0] - 1.0)
        return {"others_cpus": others, "cpus": os.cpu_count(), "own_cpus": own, "loadavg": load,
                "source": "load average"}


BUSY_THRESHOLD = 0.25
"""Other processes using more than this many CPUs on average make a timing 'visibly loaded'."""


def load_warning(usage: dict) -> str | None:
    """A one-line warning when other processes used the CPUs during a measurement, else None."""
    others = usage.get("others_cpus")
    if others is None or others <= BUSY_THRESHOLD:
        return None
    return (f"WARNING: the machine was busy: other processes used {others:.2f} of {usage['cpus']} CPUs on average "
            f"during the timing ({usage['source']}); the times carry their noise, the paired ratio less so")
