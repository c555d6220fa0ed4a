"""The CPU meter used by distillation results and the benchmarks."""

import mmap
import time

from rlvr_jax.cpu_meter import CpuMeter, busy_seconds


def test_meter_counts_own_cpu_and_wall():
    t0 = time.perf_counter()
    with CpuMeter() as m:
        t = time.process_time()
        while time.process_time() - t < 0.2:  # burn CPU in this process
            pass
        time.sleep(0.1)  # and wait without it
    elapsed = time.perf_counter() - t0
    assert m.own >= 0.2
    # Process CPU counts every thread (a library's pool may run beside the loop), so the loop's
    # wall time can be under 0.2 s: the meter's wall is checked against a clock read around it.
    assert 0.1 <= m.wall <= elapsed
    assert 0.0 <= m.other_share <= 1.0
    assert busy_seconds() > 0
    r = m.read()  # the meter keeps running after the block
    assert r["wall_s"] >= m.wall and r["own_cpu_s"] >= m.own


def test_meter_counts_page_faults_of_fresh_memory():
    with CpuMeter() as idle:
        time.sleep(0.01)
    with CpuMeter() as m:
        with mmap.mmap(-1, 64 << 20) as a:  # 64 MiB of fresh anonymous memory, touched
            a.write(b"\1" * (64 << 20))
    assert m.faults >= (64 << 20) // (2 << 20)  # one per page, at most 2 MiB pages
    assert m.faults > idle.faults
    assert m.read()["page_faults"] >= m.faults
