"""Rows that start with the same tokens run those tokens once.

A batch's U distinct prefixes ids/mask [U, P] (left-padded) are prefilled into a KV cache
(`prefill`); each of N rows names its prefix (owner [N]) and continues it with its own tokens
[N, S], left-padded too (`continue_rows`): padding sits between a prefix and a row's tokens,
masked out, with positions that skip it. Every row's hidden states are the full forward's over
prefix + row, up to the rounding of the sums, for each prefix's work done once. The update and
the reference pass (a prompt and its G samples), the judge (a template, or a question and its
reference, and the answers to it) and the likelihood reward (a prompt and its responses) use it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlvr_jax.models.kv_cache import KVCache
from rlvr_jax.models.transformer import forward, positions_from_mask


def prefill(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    ids: jax.Array,
    mask: jax.Array,
    room: int,
    remat: bool = False,
) -> tuple[jax.Array, KVCache]:
    """Final hidden states [U, P, D] of the prefixes ids/mask [U, P] and their KV cache, with
    `room` free slots after them for the rows' own tokens."""
    cfg = nnx.merge(graphdef, params).cfg  # trace time only: the model's static config
    cache = KVCache.init(cfg, ids.shape[0], ids.shape[1] + room)
    return forward(graphdef, params, ids, positions_from_mask(mask), mask, cache, True, remat)


def continue_rows(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    cache: KVCache,
    ids: jax.Array,
    mask: jax.Array,
    owner: jax.Array | None = None,
    remat: bool = False,
) -> jax.Array:
    """Final hidden states [N, S, D] of rows ids/mask [N, S] continuing prefix owner[n] of
    `cache` (from `prefill`; owner None: row n continues prefix n)."""
    rows = cache if owner is None else cache.take(owner)
    positions = rows.mask.sum(-1, dtype=jnp.int32)[:, None] + positions_from_mask(mask)
    hidden, _ = forward(graphdef, params, ids, positions, mask, rows, True, remat)
    return hidden
