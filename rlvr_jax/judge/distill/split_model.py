"""The judge's forward pass split at a layer, over prompts that share a prefix.

Distillation trains only the top K blocks (plus the final norm), so the frozen bottom's output at
the split layer is a pure function of the tokens: it is computed once per example and cached, and
each epoch runs only the top blocks. Candidate responses to one question share the start of their
judge prompt (chat header, question, reference), so a prompt is cut into a *prefix*, run once, and
*suffixes*, one per candidate, which attend to their prefix's keys and values (the sampler's
shared-prompt cache, in a training form). The result equals a plain forward over the concatenated
prompt (tests check it).

Shapes: U prefixes [U,P] (left-padded), N suffixes [N,S] (right-padded: causal attention keeps a
row's pads out of its last real token), owner [N] = the prefix of each suffix, D model dim,
V vocab. The verdict is read at each suffix's last real token.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.judge.scoring import calibrated, verdict_probs
from rlvr_jax.models.transformer import positions_from_mask


@flax.struct.dataclass
class Tokens:
    """prefix_ids/prefix_mask [U,P], suffix_ids/suffix_mask [N,S] (every suffix has at least one
    real token), owner [N] int32."""

    prefix_ids: jax.Array
    prefix_mask: jax.Array
    suffix_ids: jax.Array
    suffix_mask: jax.Array
    owner: jax.Array


@flax.struct.dataclass
class Hidden:
    """Hidden states at one layer boundary: prefix [U,P,D], suffix [N,S,D], masks and owner."""

    prefix: jax.Array
    prefix_mask: jax.Array
    suffix: jax.Array
    suffix_mask: jax.Array
    owner: jax.Array


def embed(table: jax.Array, t: Tokens) -> Hidden:
    """Token embeddings (table [V,D]): the input of block 0."""
    return Hidden(
        jnp.take(table, t.prefix_ids, axis=0),
        t.prefix_mask.astype(bool),
        jnp.take(table, t.suffix_ids, axis=0),
        t.suffix_mask.astype(bool),
        t.owner,
    )


embed_jit = jax.jit(embed)


@flax.struct.dataclass
class _Attn:
    """Positions and attention masks of a batch, shared by every block."""

    pre_pos: jax.Array  # [U,P]
    pre_attn: jax.Array  # [U,P,P]
    suf_pos: jax.Array  # [N,S]
    suf_attn: jax.Array  # [N,S,P+S]


def _attn(h: Hidden) -> _Attn:
    p = h.prefix_mask.shape[1]
    n, s = h.suffix_mask.shape
    pmask, smask = h.prefix_mask, h.suffix_mask
    pre_len = pmask.sum(-1).astype(jnp.int32)[h.owner]  # [N]
    keys_pre = jnp.broadcast_to(pmask[h.owner][:, None, :], (n, s, p))
    keys_suf = jnp.tril(jnp.ones((s, s), bool))[None] & smask[:, None, :]
    return _Attn(
        pre_pos=positions_from_mask(pmask),
        pre_attn=jnp.tril(jnp.ones((p, p), bool))[None] & pmask[:, None, :],
        suf_pos=pre_len[:, None] + jnp.arange(s, dtype=jnp.int32)[None],
        suf_attn=jnp.concatenate([keys_pre, keys_suf], axis=-1),
    )


def _block(layer: nnx.Module, a: _Attn, xp: jax.Array, xs: jax.Array, owner: jax.Array):
    """One block over prefixes xp [U,P,D] and suffixes xs [N,S,D].

    The prefixes run as ordinary causal sequences. Each suffix attends to its owner's keys and
    values, written into slots [0, P) of a per-layer cache, and to its own earlier tokens at
    slots [P, P+S): the attention of the concatenated prompt.
    """
    n, s = xs.shape[:2]
    p = xp.shape[1]
    xp_new, (k, v) = layer(xp, a.pre_pos, a.pre_attn, None)  # k, v [U,P,Hkv,K], rotated
    pad = jnp.zeros((n, s, *k.shape[2:]), k.dtype)
    k_cache = jnp.concatenate([k[owner], pad], axis=1)
    v_cache = jnp.concatenate([v[owner], pad], axis=1)
    xs_new, _ = layer(xs, a.suf_pos, a.suf_attn, (k_cache, v_cache, p))
    return xp_new, xs_new


def stack_blocks(
    graphdef: nnx.GraphDef, state: nnx.State, lo: int, hi: int
) -> tuple[nnx.GraphDef, nnx.State]:
    """(one block's graphdef, the states of blocks lo..hi-1 stacked on a leading axis)."""
    model = nnx.merge(graphdef, state)
    parts = [nnx.split(model.layers[i]) for i in range(lo, hi)]
    return parts[0][0], jax.tree.map(lambda *xs: jnp.stack(xs), *[st for _, st in parts])


def run_stacked(block_def: nnx.GraphDef, stacked: nnx.State, h: Hidden) -> Hidden:
    """Stacked blocks in order with `lax.scan`: one block is compiled however many there are."""
    a = _attn(h)

    def body(carry, st):
        return _block(nnx.merge(block_def, st), a, *carry, h.owner), None

    (xp, xs), _ = jax.lax.scan(body, (h.prefix, h.suffix), stacked)
    return h.replace(prefix=xp, suffix=xs)


def run_unrolled(layers, h: Hidden) -> Hidden:
    """Blocks in order, unrolled (the plain reference for run_stacked)."""
    a = _attn(h)
    xp, xs = h.prefix, h.suffix
    for layer in layers:
        xp, xs = _block(layer, a, xp, xs, h.owner)
    return h.replace(prefix=xp, suffix=xs)


def _last_index(h: Hidden) -> jax.Array:
    """[N,1] index of each suffix's last real token (where the verdict is read)."""
    return jnp.maximum(h.suffix_mask.sum(-1) - 1, 0)[:, None]


def _at_last(x: jax.Array, last: jax.Array) -> jax.Array:
    """Rows of x [N,S,...] at positions last [N,1] -> [N,1,...]."""
    idx = last.reshape(last.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def last_block(layer: nnx.Module, h: Hidden) -> jax.Array:
    """The top block at the verdict position only: [N,D].

    Nothing above the top block reads its other outputs, so only their keys and values are
    computed (every prefix and suffix token), and the query, attention and MLP run at each
    suffix's last real token: about a third of a full block's work. Same result as `_block`.
    """
    a = _attn(h)
    kp, vp = layer.attn.project_kv(layer.attn_norm(h.prefix), a.pre_pos)  # [U,P,Hkv,K]
    ks, vs = layer.attn.project_kv(layer.attn_norm(h.suffix), a.suf_pos)  # [N,S,Hkv,K]
    k = jnp.concatenate([kp[h.owner], ks], axis=1)
    v = jnp.concatenate([vp[h.owner], vs], axis=1)
    last = _last_index(h)
    x = _at_last(h.suffix, last)  # [N,1,D]
    q = layer.attn.project_q(layer.attn_norm(x), _at_last(a.suf_pos, last))
    x = x + layer.attn.attend(q, k, v, _at_last(a.suf_attn, last))
    return (x + layer.mlp(layer.mlp_norm(x)))[:, 0]


def verdict_logits(model: nnx.Module, h: Hidden) -> jax.Array:
    """Final hidden states -> fp32 next-token logits [N,V] at each suffix's last real token
    (the vocabulary projection runs there only)."""
    x = _at_last(h.suffix, _last_index(h))[:, 0]  # [N,D]
    return model.logits(model.final_norm(x))


def verdict_logprobs(
    logits: jax.Array, yes_ids: jax.Array, no_ids: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(log P(YES), log P(NO)) [N] from logits [N,V], each summed over its spellings."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    lp_yes = jax.nn.logsumexp(jnp.take(logp, yes_ids, axis=-1), axis=-1)
    lp_no = jax.nn.logsumexp(jnp.take(logp, no_ids, axis=-1), axis=-1)
    return lp_yes, lp_no


def verdict_loss(
    lp_yes: jax.Array, lp_no: jax.Array, labels: jax.Array, weights: jax.Array
) -> jax.Array:
    """Weighted mean cross-entropy of the teacher's verdict: -log P(target verdict), P being the
    full-vocabulary probability summed over the verdict's spellings. labels, weights [N]."""
    nll = -jnp.where(labels.astype(bool), lp_yes, lp_no)
    return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1e-9)


def pair_loss(
    lp_yes: jax.Array, lp_no: jax.Array, labels: jax.Array, weights: jax.Array, owner: jax.Array
) -> jax.Array:
    """Mean over (YES row, NO row) pairs that judge the same prompt prefix (same `owner`: the
    same question and reference) of softplus(margin_no - margin_yes), margin = log P(YES) -
    log P(NO). It ranks a question's right candidates above its wrong ones whatever the
    question's own pull towards YES or NO (the zero-shot judge's failure: its verdict followed
    the question). labels, weights (0: filler slot), owner [N]; 0 when the batch has no pair."""
    margin = lp_yes - lp_no
    real, yes = weights > 0, labels.astype(bool)
    pairs = (owner[:, None] == owner[None, :]) & (real & yes)[:, None] & (real & ~yes)[None, :]
    loss = jax.nn.softplus(margin[None, :] - margin[:, None])
    return jnp.sum(jnp.where(pairs, loss, 0.0)) / jnp.maximum(jnp.sum(pairs), 1)


# ---------------------------------------------------------------------------------------------
# Jitted entry points over (graphdef, state): the bottom once (cached), the top every step.


@functools.partial(jax.jit, static_argnums=(0,))
def bottom(block_def: nnx.GraphDef, stacked: nnx.State, table: jax.Array, t: Tokens) -> Hidden:
    """Embeddings (`table` [V,D]) then the frozen bottom blocks (from `stack_blocks`): the
    split-layer states of a batch, computed once and cached."""
    return run_stacked(block_def, stacked, embed(table, t))


def top_logits(graphdef: nnx.GraphDef, state: nnx.State, split: int, h: Hidden) -> jax.Array:
    """Blocks [split, L) from split-layer states, then the verdict logits [N,V].

    Blocks [split, L-1) are stacked inside the jitted caller and scanned, so compile time does
    not grow with the number of trained blocks; gradients flow back through the stack to each
    block. The top block runs at the verdict positions only (`last_block`).
    """
    model = nnx.merge(graphdef, state)
    top = len(model.layers) - 1
    if split > top:
        return verdict_logits(model, h)
    if split < top:
        block_def, stacked = stack_blocks(graphdef, state, split, top)
        h = run_stacked(block_def, stacked, h)
    return model.logits(model.final_norm(last_block(model.layers[top], h)))


def full_logits(graphdef: nnx.GraphDef, state: nnx.State, t: Tokens) -> jax.Array:
    """All blocks from token ids, unrolled and uncached: the reference for the cached path."""
    model = nnx.merge(graphdef, state)
    return verdict_logits(model, run_unrolled(model.layers, embed(model.embed[...], t)))


@functools.partial(jax.jit, static_argnums=(0, 2))
def score(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    split: int,
    h: Hidden,
    yes_ids: jax.Array,
    no_ids: jax.Array,
    yes_bias: jax.Array | float = 0.0,
) -> dict[str, jax.Array]:
    """Verdict read-out [N] from split-layer states: p_yes, p_no (spelling sums) and the
    greedy first token, the quantities reward.judge_scores reads from a full forward (with the
    same calibration `yes_bias`)."""
    logits = calibrated(top_logits(graphdef, state, split, h), yes_ids, yes_bias)
    p_yes, p_no = verdict_probs(logits, yes_ids, no_ids)
    return {
        "p_yes": p_yes,
        "p_no": p_no,
        "greedy": jnp.argmax(logits, axis=-1).astype(jnp.int32),
    }


def spelling_ids(ids: Any) -> jax.Array:
    """A host list of token ids as an int32 device array (a jit argument, not a constant)."""
    return jnp.asarray(np.asarray(ids, np.int32))
