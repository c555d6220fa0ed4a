"""The frozen-layer activation cache: split-layer hidden states of every unit, computed once.

Distillation trains only the blocks above the split, so what the frozen bottom produces is a pure
function of the tokens. `compute` runs the bottom once over every unit (prefix once, each suffix
against it) and keeps the split-layer states in host memory, per bucket; every epoch then reads
batches from it (`hidden_batch`) and runs only the top blocks. The cache is also written to the
work directory, keyed by everything it depends on, so a resumed run does not recompute it.

Memory: 4 bytes x D per cached token (576 for SmolLM2-135M: about 2.3 KB a token).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.judge.distill import split_model as sm
from rlvr_jax.judge.distill.units import Batch, Bucket

Cache = list[tuple[np.ndarray, np.ndarray]]  # per bucket: (prefix [n_units,P,D], suffix [n,S,D])


def tokens_batch(bucket: Bucket, bt: Batch) -> sm.Tokens:
    """Token ids of one batch: prefixes [U,P], suffixes [N,S] and owner [N]."""
    return sm.Tokens(
        jnp.asarray(bucket.prefix_ids[bt.units]),
        jnp.asarray(bucket.prefix_mask[bt.units]),
        jnp.asarray(bucket.suffix_ids[bt.suffixes]),
        jnp.asarray(bucket.suffix_mask[bt.suffixes]),
        jnp.asarray(bt.owner.astype(np.int32)),
    )


def hidden_batch(bucket: Bucket, states: tuple[np.ndarray, np.ndarray], bt: Batch) -> sm.Hidden:
    """Cached split-layer states of one batch, in the batch's layout."""
    prefix, suffix = states
    return sm.Hidden(
        jnp.asarray(prefix[bt.units]),
        jnp.asarray(bucket.prefix_mask[bt.units]),
        jnp.asarray(suffix[bt.suffixes]),
        jnp.asarray(bucket.suffix_mask[bt.suffixes]),
        jnp.asarray(bt.owner.astype(np.int32)),
    )


def compute(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    split: int,
    buckets: Sequence[Bucket],
    batches: Sequence[Batch],
    progress: Callable[[int], None] | None = None,
) -> Cache:
    """Split-layer states of every unit: embeddings and blocks [0, split) run once per batch.

    `batches` must cover every unit and suffix (units.sequential_batches does).
    `progress(k)` is called with the number of real suffixes of each finished batch.
    """
    d = int(state["embed"][...].shape[1])
    out = [
        (
            np.zeros((b.num_units, b.shape[0], d), np.float32),
            np.zeros((len(b.rows), b.shape[1], d), np.float32),
        )
        for b in buckets
    ]
    table = state["embed"][...]
    if split > 0:
        block_def, stacked = sm.stack_blocks(graphdef, state, 0, split)
    for bt in batches:
        b = buckets[bt.bucket]
        t = tokens_batch(b, bt)
        h = sm.bottom(block_def, stacked, table, t) if split > 0 else sm.embed_jit(table, t)
        prefix, suffix = jax.device_get((h.prefix, h.suffix))
        out[bt.bucket][0][bt.units] = prefix
        out[bt.bucket][1][bt.suffixes[bt.valid]] = suffix[bt.valid]
        if progress is not None:
            progress(int(bt.valid.sum()))
    return out


def cache_key(model_id: str, split: int, buckets: Sequence[Bucket]) -> str:
    """A digest of what the cached states depend on: model, split and every token and mask."""
    h = hashlib.sha256(json.dumps([model_id, split]).encode())
    for b in buckets:
        for a in (b.prefix_ids, b.prefix_mask, b.start, b.suffix_ids, b.suffix_mask):
            h.update(np.ascontiguousarray(a).tobytes())
            h.update(str(a.shape).encode())
    return h.hexdigest()[:16]


def load(folder: Path, key: str, n_buckets: int) -> Cache | None:
    """The cache saved under folder/key, or None if absent (or incomplete)."""
    path = folder / key
    if not (path / "done").is_file():
        return None
    return [
        (np.load(path / f"{i}.prefix.npy"), np.load(path / f"{i}.suffix.npy"))
        for i in range(n_buckets)
    ]


def save(folder: Path, key: str, cache: Cache) -> None:
    """Write the cache to folder/key (a temporary directory renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / key / "done").is_file():
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=folder))
    try:
        for i, (prefix, suffix) in enumerate(cache):
            np.save(tmp / f"{i}.prefix.npy", prefix)
            np.save(tmp / f"{i}.suffix.npy", suffix)
        (tmp / "done").write_text("ok\n")
        shutil.rmtree(folder / key, ignore_errors=True)
        os.replace(tmp, folder / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
