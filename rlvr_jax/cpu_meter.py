"""Wall time, own CPU time, and the CPU share other processes took, around a region of code.

On a shared machine a slow run must be told from a slow program: the meter reads the machine's busy
CPU seconds from /proc/stat (Linux; NaN elsewhere) and subtracts this process's own. Used by the
distillation's results and by the benchmarks in bench/. No jax import: a benchmark may load it
before it sets XLA_FLAGS.
"""

from __future__ import annotations

import os
import statistics
import time

try:
    import resource
except ImportError:  # not on Windows
    resource = None


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (NaN without /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    # user nice system idle iowait irq softirq steal: busy excludes idle and iowait.
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def page_faults() -> int:
    """Minor page faults of this process so far (-1 where getrusage is missing). Each is a page
    the kernel mapped and zeroed on first touch: memory the allocator took fresh from the system."""
    return -1 if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class CpuMeter:
    """Starts when made (and again when entered). `read()` -> {wall_s, own_cpu_s,
    others_cpu_share, page_faults} so far; `with CpuMeter() as m:` sets m.wall, m.own,
    m.other_share (CPU of other processes as a share of the machine) and m.faults (this process's
    minor page faults) on exit."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> CpuMeter:
        self.t0, self.busy0, self.own0 = time.perf_counter(), busy_seconds(), time.process_time()
        self.faults0 = page_faults()
        return self

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        own = time.process_time() - self.own0
        other = max(busy_seconds() - self.busy0 - own, 0.0)
        return {
            "wall_s": wall,
            "own_cpu_s": own,
            "others_cpu_share": other / (wall * (os.cpu_count() or 1)),
            "page_faults": page_faults() - self.faults0,
        }

    def __enter__(self) -> CpuMeter:
        return self.start()

    def __exit__(self, *exc) -> None:
        r = self.read()
        self.wall, self.own, self.other_share = r["wall_s"], r["own_cpu_s"], r["others_cpu_share"]
        self.faults = r["page_faults"]


CONTENDED = 0.10  # a timed run is flagged when other processes used > 10% of the machine


def robust_median(walls: list[float], shares: list[float]) -> tuple[float, int]:
    """Median of the uncontended runs when there are at least 2, else of all runs; also returns
    how many runs were used."""
    clean = [w for w, s in zip(walls, shares, strict=True) if s < CONTENDED]
    use = clean if len(clean) >= 2 else walls
    return statistics.median(use), len(use)
