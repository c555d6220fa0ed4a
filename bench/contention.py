"""Shared by the sampler and judge benchmarks: CPU contention and memory bandwidth of this machine.

The benchmark box is shared: a run during which other processes held a core is slower for reasons
that are not ours (torch with 2 threads degrades worst). Each timed region records the CPU time
other processes used, from /proc/stat, as a share of the machine.
"""

from __future__ import annotations

import time

import numpy as np

# CONTENDED and robust_median are the benchmarks' too: imported from here.
from rlvr_jax.cpu_meter import CONTENDED, CpuMeter, robust_median  # noqa: F401


def wait_for_quiet(max_wait_s: float = 60.0, share: float = CONTENDED) -> float:
    """Wait (up to max_wait_s) for a 2-second window where others use < `share`; returns it."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        with CpuMeter() as m:
            time.sleep(2.0)
        if m.other_share < share or time.perf_counter() > deadline:
            return m.other_share


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
