"""Host-side helpers for multi-process (multi-host) runs; each is a plain call on one process.

In a multi-process JAX job every process runs the same program on the same global arrays
(multi-controller SPMD). Three things differ from one process:

- Reading an array on the host: a global array whose shards live on other processes' devices
  cannot be read with `np.asarray`. `to_host` gathers it (a collective: every process must call
  it, in the same order) and returns the whole value on every process.
- Writing files: the run directory is shared; one process (0) writes each file, after the
  others' results are known to be equal, and the others wait at a `barrier` when they read it
  next (e.g. the HF export before the run ends).
- Agreeing: values read from the file system (the latest checkpoint step) are taken from
  process 0, so that a slow shared file system cannot send processes down different paths.

The host-side design of the RL step (rl_step.py) follows from the judge: its scoring is one
jitted computation over a global batch, which every process must enter with the same rows. So every
process holds the whole prompt batch, gathers the whole rollout (`to_host`: [N, L] int32 tokens,
a few KiB to a few MiB), decodes every completion and computes every reward. The redundant host
work (tokenizer decode and string rules over N rows: milliseconds) costs less than the gather of
scores and the second synchronisation that splitting the rows per process would need.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np


def is_main() -> bool:
    """True on the process that writes files and shows progress (process 0)."""
    return jax.process_index() == 0


def to_host(x: Any) -> np.ndarray:
    """The whole value of `x` as a numpy array, on every process.

    An array that spans other processes' devices and is not replicated is gathered with
    `process_allgather`: a collective, so every process must make the same call. Arrays this
    process holds completely (one process, or replicated) are read directly.
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def tree_to_host(tree: Any) -> Any:
    """`to_host` on every leaf of a pytree (same structure, numpy leaves)."""
    return jax.tree.map(to_host, tree)


T = TypeVar("T")
_ON_MAIN_CALLS: dict[str, int] = {}


def _client() -> Any:
    # The coordination service's key-value store; jax exposes it only through its private state
    # (orbax reads it the same way).
    from jax._src import distributed

    return distributed.global_state.client


def on_main(name: str, fn: Callable[[], T], timeout_s: float = 24 * 3600) -> T | None:
    """Run `fn` on process 0 alone while the other processes wait for it to end; returns its
    value on process 0 and None on the others (on one process: `fn()`).

    The others wait on the coordination service's key-value store, not at a collective: gloo
    gives up on a collective after 30 s, and `fn` may take an hour (a judge distillation). When
    `fn` fails on process 0, the others raise a RuntimeError naming its error.
    """
    if jax.process_count() == 1:
        return fn()
    n = _ON_MAIN_CALLS[name] = _ON_MAIN_CALLS.get(name, 0) + 1
    key = f"rlvr_jax/on_main/{name}/{n}"
    if is_main():
        try:
            out = fn()
        except BaseException as e:
            _client().key_value_set(key, f"failed: {type(e).__name__}: {e}")
            raise
        _client().key_value_set(key, "done")
        return out
    status = _client().blocking_key_value_get(key, int(timeout_s * 1000))
    if status != "done":
        raise RuntimeError(f"process 0 {status} (in {name})")
    return None


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def from_main(value: int | None) -> int | None:
    """Process 0's `value` (an int or None) on every process (the value itself on one process)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    v = multihost_utils.broadcast_one_to_all(np.int64(-1 if value is None else value))
    v = int(v)
    return None if v == -1 else v


def join(mesh_cfg: Any = None) -> bool:
    """Join the multi-process job the config's `mesh` section or the environment describes
    (`mesh.initialize_distributed`); returns True when joined.

    A joined process that fails then exits at once (`exit_job`): left to itself, Python's exit
    waits at JAX's shutdown barrier for peers that are blocked in the next collective, and the
    job hangs until the coordination service's timeouts. Exiting closes this process's
    connections, so the peers' collectives fail and they exit the same way.
    """
    from rlvr_jax import mesh as mesh_lib

    joined = mesh_lib.initialize_distributed(mesh_cfg)
    if joined and jax.process_count() > 1:
        hook = sys.excepthook

        def fail_fast(kind, value, tb):
            hook(kind, value, tb)
            i, n = jax.process_index(), jax.process_count()
            # A peer's death reaches the others as an error (or timeout) of their next collective.
            msg = f"error: process {i} of {n} stopped on {kind.__name__}"
            hint = "if a collective failed, another process may have died first (see its log)"
            print(f"{msg}; {hint}", file=sys.stderr)
            exit_job(1)

        sys.excepthook = fail_fast
    return joined


def exit_job(code: int) -> None:
    """End this process with `code`. In a multi-process job, at once (no atexit handlers, no
    shutdown barrier; see `join`), after flushing what it printed."""
    if jax.process_count() == 1:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
