"""Host allocator settings for the CPU backend: XLA's temporaries reused instead of faulted in.

XLA:CPU allocates the temporary buffer of every jitted call with malloc and frees it when the
call returns (4.9 GB for one SmolLM2-135M update of 8 x 256 tokens). glibc serves any block over
32 MiB with a fresh mmap and unmaps it on free, so every execution faults all of its pages in
again: 1.2 million minor page faults and 4-7 s of kernel CPU time per update on 2 cores.

`keep_freed_memory()` asks glibc (through `mallopt`) to serve every block from one heap and never
to hand freed memory back to the kernel; from the second execution of a jitted function on, its
buffer is memory that is already mapped. Measured on 2 cores, the 8 x 256 update alone
(`bench/train_step.py`'s JAX side): 18.2 -> 14.4 s median, kernel CPU 5.7-7.2 -> 0.1 s per step.
The price: the process keeps its peak heap until it exits, which is what a training run does
anyway.

Applied by the command-line entry points (train, distill) and the train-step benchmark, not on
import: a library user's process keeps its allocator. Skipped where an accelerator plugin is
installed and `JAX_PLATFORMS` does not say `cpu` (there XLA's buffers live on the device), off
glibc, and when RLVR_JAX_SYSTEM_MALLOC=1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pkgutil
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def _accelerator_plugin_installed() -> bool:
    try:
        import jax_plugins
    except ImportError:
        return False
    return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed memory (see the module doc). Returns whether it did.

    Call it before the first JAX computation: the arena limit reaches only threads that have not
    allocated yet (XLA's worker threads start with the backend).
    """
    if os.environ.get("RLVR_JAX_SYSTEM_MALLOC") == "1":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms.split(",")[0].strip() != "cpu" and _accelerator_plugin_installed():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_ARENA_MAX, 1)  # one heap: a block freed by one thread serves all
    ok &= libc.mallopt(_M_MMAP_MAX, 0)  # no block gets its own mapping
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, -1)  # (size_t)-1: never trim the heap's top
    ok &= libc.mallopt(_M_TOP_PAD, 256 << 20)  # grow the heap 256 MiB at a time
    return bool(ok)
