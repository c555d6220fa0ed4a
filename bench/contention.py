"""Shared by the sampler and judge benchmarks: CPU contention and memory bandwidth of this machine.

The benchmark box is shared: a run during which other processes held a core is slower for reasons
that are not ours (torch with 2 threads degrades worst). Each timed region records the CPU time
other processes used, from /proc/stat, as a share of the machine.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

CONTENDED = 0.10  # a run is flagged when other processes used > 10% of the machine


def _busy_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy excludes idle and iowait.
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """`with CpuMeter() as m:` -> m.wall (s), m.other_share (CPU of other processes / machine)."""

    def __enter__(self) -> CpuMeter:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        own = time.process_time() - self.own0
        other = max(_busy_seconds() - self.busy0 - own, 0.0)
        self.other_share = other / (self.wall * (os.cpu_count() or 1))


def wait_for_quiet(max_wait_s: float = 60.0, share: float = CONTENDED) -> float:
    """Wait (up to max_wait_s) for a 2-second window where others use < `share`; returns it."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        with CpuMeter() as m:
            time.sleep(2.0)
        if m.other_share < share or time.perf_counter() > deadline:
            return m.other_share


def robust_median(walls: list[float], shares: list[float]) -> tuple[float, int]:
    """Median of the uncontended runs when there are at least 2, else of all runs; also returns
    how many runs were used."""
    clean = [w for w, s in zip(walls, shares, strict=True) if s < CONTENDED]
    use = clean if len(clean) >= 2 else walls
    return statistics.median(use), len(use)


def copy_bandwidth_gbs(mbytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth from a numpy copy: (bytes read + bytes written) / time, best of repeats."""
    a = np.ones(mbytes * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9
