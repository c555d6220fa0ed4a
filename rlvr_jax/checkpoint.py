"""Saving and restoring pytrees of arrays with orbax (tensorstore). The only module importing orbax.

Two generic helpers, on which the model directory (params) and the trainer (TrainState: params,
optimizer state, step, data iterator state) both build:

- `save_pytree(path, tree)`: write a pytree of arrays to a new directory `path`, atomically (orbax
  writes to a temporary directory and renames it into place on success).
- `restore_pytree(path, abstract_tree)`: read it back into the structure, dtypes and shardings of
  `abstract_tree` (a pytree of `jax.ShapeDtypeStruct`), so arrays are born with the target dtype and
  placement (e.g. sharded over a mesh) without an intermediate full copy on one device.

Runs (the trainer, the judge distillation) keep step-numbered checkpoints in one folder,
`folder/<step>/`: `save_step` writes one and prunes old ones, `latest_step` finds where to resume.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or written; the message is one readable line."""


# Set inside `this_process_only()`: orbax then synchronises with no other process.
_SOLO = False


@contextlib.contextmanager
def this_process_only() -> Iterator[None]:
    """Checkpoints written and read inside are this process's alone. In a multi-process job orbax
    otherwise meets every process at barriers, and the others are not saving (a distillation runs
    on process 0 while they wait)."""
    global _SOLO
    before, _SOLO = _SOLO, True
    try:
        yield
    finally:
        _SOLO = before


def _solo_in_job() -> bool:
    return _SOLO and jax.process_count() > 1


def _checkpointer() -> ocp.StandardCheckpointer:
    if not _solo_in_job():
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    only = ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"solo{me}"
    )
    return ocp.StandardCheckpointer(multiprocessing_options=only)


def _as_numpy_target(x: Any) -> Any:
    return np.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x


def _place(value: Any, target: Any) -> Any:
    if isinstance(target, jax.ShapeDtypeStruct):
        return jax.device_put(value, target.sharding)
    return value


def _single_device_sharding() -> jax.sharding.Sharding:
    # This process's first device: in a multi-process job, jax.devices()[0] is process 0's.
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _with_sharding(x: Any) -> Any:
    """x as a ShapeDtypeStruct that names a sharding (orbax needs one to restore)."""
    if isinstance(x, jax.ShapeDtypeStruct | jax.Array):
        sharding = getattr(x, "sharding", None) or _single_device_sharding()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return x


def save_pytree(path: str | Path, tree: PyTree, overwrite: bool = False) -> None:
    """Write `tree` (a pytree of jax/numpy arrays and scalars) as an orbax checkpoint directory.

    `path` must not exist unless `overwrite`. Blocks until the write is complete and committed.
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists")
    if _solo_in_job():  # orbax refuses single-device arrays in a job; as numpy it writes them
        tree = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, tree)
    with _checkpointer() as ckptr:
        ckptr.save(path, tree, force=overwrite)
        ckptr.wait_until_finished()


def _steps(folder: Path) -> list[int]:
    """The step numbers of folder/<step>/ checkpoints, ascending ([] when there is no folder)."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def latest_step(folder: str | Path) -> int | None:
    """The newest step of a folder of step-numbered checkpoints, or None when it holds none.

    A listed step is complete: orbax writes to a temporary name and renames it into place.
    """
    steps = _steps(Path(folder))
    return steps[-1] if steps else None


def save_step(folder: str | Path, step: int, tree: PyTree, keep: int) -> None:
    """Write `tree` as folder/<step> (replacing an earlier write of that step), then delete all
    but the `keep` newest steps (keep <= 0: keep every step)."""
    d = Path(folder)
    save_pytree(d / str(step), tree, overwrite=True)
    # Every process of a multi-process job calls this (orbax's save is collective); one prunes.
    for old in _steps(d)[:-keep] if keep > 0 and jax.process_index() == 0 else []:
        shutil.rmtree(d / str(old), ignore_errors=True)


class StepCheckpoints:
    """A run's step checkpoints, WORKDIR/checkpoints/<step>, as the RL loop and the judge
    distillation both keep them: save after step s, resume from the newest complete one."""

    def __init__(self, workdir: str | Path, keep: int):
        self.folder, self.keep = Path(workdir) / "checkpoints", int(keep)

    def latest(self) -> int | None:
        """The newest complete step, or None."""
        return latest_step(self.folder)

    def save(self, step: int, tree: PyTree) -> None:
        """`tree` as the checkpoint of step `step`, keeping the `keep` newest."""
        save_step(self.folder, step, tree, self.keep)

    def restore(self, step: int, abstract_tree: PyTree) -> PyTree:
        """The checkpoint of step `step` in the structure of `abstract_tree` (`restore_pytree`)."""
        return restore_pytree(self.folder / str(step), abstract_tree)


def restore_pytree(path: str | Path, abstract_tree: PyTree) -> PyTree:
    """Read the checkpoint at `path` into the structure of `abstract_tree`.

    abstract_tree: a pytree of `jax.ShapeDtypeStruct` (or arrays) giving each leaf's shape, dtype
    (stored values are cast to it) and sharding (a single device when none is given).
    Raises CheckpointError (one line) when the directory is missing or does not match.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"{path}: no checkpoint directory")
    target = jax.tree.map(_with_sharding, abstract_tree)
    try:
        with _checkpointer() as ckptr:
            # Compare first: on a mismatch orbax fails only after starting every read, and the
            # abandoned reads then print pages of tracebacks.
            _check_matches(path, ckptr.metadata(path).item_metadata, target)
            if not _solo_in_job():
                return ckptr.restore(path, target)
            # Read as numpy (see save_pytree), then placed where the target says.
            host = jax.tree.map(_as_numpy_target, target)
            return jax.tree.map(_place, ckptr.restore(path, host), target)
    except (ValueError, KeyError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: checkpoint does not match the expected tree: {first}"
        ) from e


def _key(p: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(p, attr):
            return str(getattr(p, attr))
    return str(p)


def _leaf_shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """'a/b/0/c' -> shape for every leaf (orbax stores dict keys as strings, so compare as such)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key(k) for k in path): tuple(getattr(x, "shape", ())) for path, x in flat}


def _check_matches(path: Path, stored: PyTree, target: PyTree) -> None:
    have, want = _leaf_shapes(stored), _leaf_shapes(target)
    missing = [k for k in want if k not in have]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing[0]!r} ({len(missing)} missing)")
    extra = [k for k in have if k not in want]
    if extra:
        raise CheckpointError(f"{path}: checkpoint has unexpected {extra[0]!r} ({len(extra)} more)")
    for k, shape in want.items():
        if have[k] != shape:
            raise CheckpointError(f"{path}: {k!r} is stored as {have[k]}, expected {shape}")


def pytree_metadata(path: str | Path) -> PyTree:
    """The stored tree's structure with per-leaf metadata (shape, dtype), without reading arrays."""
    path = Path(path).absolute()
    with _checkpointer() as ckptr:
        return ckptr.metadata(path).item_metadata


# Orbax logs every save/restore at INFO through absl; keep the user's console for progress output.
logging.getLogger("absl").setLevel(logging.WARNING)
