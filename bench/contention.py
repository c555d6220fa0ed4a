"""Shared by the sampler and judge benchmarks: CPU contention and memory bandwidth of this machine.

The benchmark box is shared: a run during which other processes held a core is slower for reasons
that are not ours (torch with 2 threads degrades worst). Each timed region records the CPU time
other processes used, from /proc/stat, as a share of the machine.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from rlvr_jax.cpu_meter import CpuMeter

CONTENDED = 0.10  # a run is flagged when other processes used > 10% of the machine


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
