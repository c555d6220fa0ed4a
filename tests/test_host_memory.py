"""host_memory.keep_freed_memory: a freed large block is reused, not unmapped and faulted in again.

Each case runs in a fresh interpreter: the setting is process-wide and must come before the
allocations it governs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

_PROBE = """
import ctypes, json, resource, sys
from rlvr_jax import host_memory
kept = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 128 << 20
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # touch every page
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_block_is_reused_without_page_faults():
    pages = (128 << 20) // os.sysconf("SC_PAGE_SIZE")
    system = _probe("system")
    kept = _probe("keep")
    assert kept["kept"] is True and system["kept"] is False
    # glibc's default maps a 128 MiB block afresh each time: every page faults in, every time.
    assert min(system["faults"]) > pages // 2, system
    # Kept: the first allocation faults its pages in, the later ones reuse them.
    assert kept["faults"][0] > pages // 2, kept
    assert max(kept["faults"][1:]) < pages // 50, kept


def test_opt_out_leaves_malloc_alone():
    assert _probe("keep", RLVR_JAX_SYSTEM_MALLOC="1")["kept"] is False
