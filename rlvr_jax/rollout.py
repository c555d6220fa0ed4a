"""Sampling completions from the policy: one jitted prefill, then one jitted decode loop.

Host side (`encode_prompt`, `pad_prompts`, `sample_prompts`) tokenizes and pads; the device side
is two jitted pure functions over (graphdef, state):

- prefill: B left-padded prompts [B,P] written into a fresh KV cache of S = P + L slots; only the
  last position is projected to the vocabulary (no [B,P,V] logits). Each prompt is computed once
  and its cache repeated for its G samples (`KVCache.repeat`), giving N = B*G rows;
- decode: a `lax.while_loop` samples one token per step for all N rows and stops as soon as every
  row has emitted a stop token (or after L tokens). The cache is donated and carried through the
  loop, so XLA updates it in place; the weights are read in place (no per-step copies: layers are
  unrolled, see models/transformer.py). On XLA:CPU the step runs on a transposed copy of the
  weights made once per call (models/decode.py: its products are about 1.5x faster).

Sampling one token from logits is sampling.py's.

Shapes are fixed per (B, P, L): callers pad prompts to a few length buckets (`PROMPT_BUCKETS`), so
a training run compiles once per bucket.

Conventions of the returned `Rollout`:
- `mask` covers the sampled tokens up to and INCLUDING the row's stop token (the policy must learn
  to stop, so the stop token is an action with a log-prob); nothing after it.
- `logprobs` are log-probs of the sampled tokens under the unmodified policy distribution
  (temperature 1, no top-k/top-p): exactly what the trainer recomputes with a teacher-forced
  forward. They are 0 outside the mask.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.models.decode import (
    decode_cache,
    decode_step,
    decode_weights,
    model_cache,
    use_decode_layout,
)
from rlvr_jax.models.kv_cache import KVCache
from rlvr_jax.models.transformer import forward, lm_logits, positions_from_mask
from rlvr_jax.multihost import to_host
from rlvr_jax.sampling import SamplingConfig, sample_tokens, sampled_logprobs
from rlvr_jax.tokenizer import Message, Tokenizer, bucket_length, left_pad

PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)


@flax.struct.dataclass
class Rollout:
    """N = B*G sampled completions; rows of one prompt are adjacent (row = b*G + g).

    prompt_ids, prompt_mask: [N, P] left-padded prompts (repeated G times), mask True = real token
    tokens: [N, L] int32 completion ids (pad id after a row's end)
    mask: [N, L] bool, sampled tokens up to and including the stop token
    logprobs: [N, L] fp32 log-probs of `tokens` under the temperature-1 policy (0 outside `mask`)
    lengths: [N] int32, mask.sum(-1)
    stopped: [N] bool, True if the row emitted a stop token (False = cut at max_new_tokens)
    """

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array


# ----------------------------------------------------------------------------------------------
# Device side: two jitted pure functions.


@flax.struct.dataclass
class DecodeState:
    """The decode loop's carry for N rows and L = max_new_tokens slots.

    step: [] int32, the slot i that the loop's next iteration samples (1 <= i <= L)
    token: [N] int32, the token sampled at slot i - 1: the next forward pass's input
    done: [N] bool, rows that emitted a stop token
    cache: the KV cache (in the decode layout on XLA:CPU), updated in place
    tokens: [N, L] int32, logprobs: [N, L] fp32, mask: [N, L] bool: the completions so far
    """

    step: jax.Array
    token: jax.Array
    done: jax.Array
    cache: Any
    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_size", "n"))
def prefill(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    cache_size: int,
    n: int = 1,
) -> tuple[KVCache, jax.Array]:
    """Write B left-padded prompts [B,P] into a new cache of `cache_size` (S >= P) slots.

    Each prompt is computed once; its cache and logits are then repeated for its n samples.
    Returns (cache of N = B*n rows, logits [N, V] fp32 of the token after each prompt). Only the
    last position is projected to the vocabulary.
    """
    cfg = nnx.merge(graphdef, state).cfg  # trace time only: the model's static config
    cache = KVCache.init(cfg, prompt_ids.shape[0], cache_size)
    positions = positions_from_mask(prompt_mask)
    hidden, cache = forward(graphdef, state, prompt_ids, positions, prompt_mask, cache, True)
    logits = lm_logits(graphdef, state, hidden[:, -1])
    if n > 1:
        cache, logits = cache.repeat(n), jnp.repeat(logits, n, axis=0)
    return cache, logits


@functools.partial(
    jax.jit, static_argnames=("graphdef", "sc", "stop_ids", "pad_id"), donate_argnums=(2,)
)
def decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    cache: KVCache,
    first_logits: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    sc: SamplingConfig,
    stop_ids: tuple[int, ...] = (),
    pad_id: int = 0,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, KVCache]:
    """Sample L = sc.max_new_tokens tokens for each of N prefilled rows.

    cache: the prefill cache of N rows (donated); first_logits [N, V]; prompt_mask [N, P].
    Step i uses key fold_in(key, i), so a row's samples depend on the seed and its row index only.
    Returns tokens [N,L] int32, mask [N,L] bool, logprobs [N,L] fp32, stopped [N] bool and the
    final cache (returned so that the donated buffers are reused in place; drop it).
    """
    big_l = sc.max_new_tokens
    rows = first_logits.shape[0]
    stops = jnp.asarray(stop_ids or (-1,), jnp.int32)
    # The RoPE position of a row's first completion token: its number of real prompt tokens.
    pos0 = jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32)

    def pick(logits, i, done):
        """Sample step i from logits [N,V]; finished rows emit pad with mask False."""
        tok = sample_tokens(logits, jax.random.fold_in(key, i), sc)
        lp = sampled_logprobs(logits, tok)
        live = ~done
        tok = jnp.where(live, tok, pad_id)
        lp = jnp.where(live, lp, 0.0)
        hit = jnp.any(tok[:, None] == stops[None, :], axis=-1) & live
        return tok, lp, live, done | hit

    tok, lp, live, done = pick(first_logits, 0, jnp.zeros((rows,), bool))
    toks = jnp.full((rows, big_l), pad_id, jnp.int32).at[:, 0].set(tok)
    lps = jnp.zeros((rows, big_l), jnp.float32).at[:, 0].set(lp)
    mask = jnp.zeros((rows, big_l), bool).at[:, 0].set(live)

    def cond(s: DecodeState) -> jax.Array:
        return (s.step < big_l) & ~jnp.all(s.done)

    cpu_layout = use_decode_layout()
    if cpu_layout:  # XLA:CPU: transposed weights and cache, faster products (models/decode.py)
        cfg = nnx.merge(graphdef, state).cfg  # trace time only: the model's static config
        dw = decode_weights(graphdef, state)
        step = lambda tok, pos, cache: decode_step(cfg, dw, tok, pos, cache)
        cache = decode_cache(cache)
    else:

        def step(tok, pos, cache):
            hidden, cache = forward(graphdef, state, tok[:, None], pos[:, None], None, cache, True)
            return lm_logits(graphdef, state, hidden[:, 0]), cache

    def body(s: DecodeState) -> DecodeState:
        i = s.step
        logits, cache = step(s.token, pos0 + i - 1, s.cache)
        tok, lp, live, done = pick(logits, i, s.done)
        put = lambda buf, col: jax.lax.dynamic_update_slice(buf, col[:, None], (0, i))
        return DecodeState(
            i + 1, tok, done, cache, put(s.tokens, tok), put(s.logprobs, lp), put(s.mask, live)
        )

    init = DecodeState(jnp.int32(1), tok, done, cache, toks, lps, mask)
    out = jax.lax.while_loop(cond, body, init)
    cache = model_cache(out.cache) if cpu_layout else out.cache
    return out.tokens, out.mask, out.logprobs, out.done, cache


def generate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_ids: jax.Array | np.ndarray,
    prompt_mask: jax.Array | np.ndarray,
    key: jax.Array,
    sc: SamplingConfig,
    n: int = 1,
    *,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> Rollout:
    """Sample n completions for each of B left-padded prompts.

    prompt_ids [B,P] int32, prompt_mask [B,P] bool (True = real token; prompts LEFT-padded).
    stop_ids: a row ends after emitting any of these (e.g. `Tokenizer.stop_ids`).
    batch_sharding: where to place the [B,P] prompt arrays (e.g. rows split over the mesh's batch
    axes); the weights keep whatever sharding `state` has, and XLA propagates the rest.
    Returns a `Rollout` of N = B*n rows, the n samples of a prompt adjacent.
    """
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    if batch_sharding is not None:
        prompt_ids = jax.device_put(prompt_ids, batch_sharding)
        prompt_mask = jax.device_put(prompt_mask, batch_sharding)
    size = prompt_ids.shape[1] + sc.max_new_tokens
    cache, first = prefill(graphdef, state, prompt_ids, prompt_mask, size, n)
    if n > 1:
        prompt_ids = jnp.repeat(prompt_ids, n, axis=0)
        prompt_mask = jnp.repeat(prompt_mask, n, axis=0)
    stops = tuple(int(s) for s in stop_ids)
    toks, mask, lps, stopped, _ = decode(
        graphdef, state, cache, first, prompt_mask, key, sc, stops, int(pad_id)
    )
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        tokens=toks,
        mask=mask,
        logprobs=lps,
        lengths=mask.sum(-1, dtype=jnp.int32),
        stopped=stopped,
    )


# ----------------------------------------------------------------------------------------------
# Host side: text -> padded ids -> Rollout -> text.

Prompt = str | Sequence[Message] | Sequence[int]


def encode_prompt(tokenizer: Tokenizer, prompt: Prompt, chat_template: bool = True) -> list[int]:
    """One prompt -> token ids: a string (rendered as the user message of the chat template
    unless `chat_template` is False), a list of chat messages, or a list of ids (used as is)."""
    if isinstance(prompt, str):
        if chat_template:
            return tokenizer.chat_ids([{"role": "user", "content": prompt}])
        return tokenizer.encode(prompt)
    items = list(prompt)
    if items and all(isinstance(m, dict) for m in items):
        return tokenizer.chat_ids(items)
    return [int(t) for t in items]


def pad_prompts(
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    buckets: Sequence[int] = PROMPT_BUCKETS,
    batch: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Left-pad prompts to the smallest bucket length that holds the longest one.

    A prompt longer than the largest bucket keeps its LAST max(buckets) tokens (the end of a chat
    prompt, with the generation header, is what the model continues). `batch` pads the row count
    with copies of the first row (so the batch shape is fixed too; drop those rows' outputs).
    Returns (ids [B,P] int32, mask [B,P] bool, number of prompts cut).
    """
    if not seqs:
        raise ValueError("no prompts")
    top = max(buckets)
    cut = sum(len(s) > top for s in seqs)
    seqs = [list(s)[-top:] for s in seqs]
    if any(len(s) == 0 for s in seqs):
        raise ValueError("a prompt has no tokens")
    if batch is not None:
        if len(seqs) > batch:
            raise ValueError(f"{len(seqs)} prompts exceed the batch size {batch}")
        seqs = seqs + [seqs[0]] * (batch - len(seqs))
    ids, mask = left_pad(seqs, bucket_length(max(map(len, seqs)), buckets), pad_id)
    return ids, mask, cut


@dataclasses.dataclass
class Completion:
    """One sampled completion on the host."""

    text: str
    ids: list[int]  # including the stop token, if any
    logprobs: list[float]  # one per id
    stopped: bool  # False = cut at max_new_tokens


def completions_from(rollout: Rollout, tokenizer: Tokenizer, rows: int | None = None) -> list:
    """The first `rows` rows of a Rollout as `Completion`s (text without special tokens)."""
    # to_host: rows split over other processes' devices are gathered (every process calls this).
    toks, mask = to_host(rollout.tokens), to_host(rollout.mask)
    lps, stopped = to_host(rollout.logprobs), to_host(rollout.stopped)
    out = []
    for r in range(toks.shape[0] if rows is None else rows):
        ids = toks[r][mask[r]].tolist()
        out.append(
            Completion(tokenizer.decode(ids), ids, lps[r][mask[r]].tolist(), bool(stopped[r]))
        )
    return out


def sample_prompts(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokenizer: Tokenizer,
    prompts: Sequence[Prompt],
    sc: SamplingConfig,
    key: jax.Array,
    n: int = 1,
    chat_template: bool = True,
    buckets: Sequence[int] = PROMPT_BUCKETS,
    batch: int | None = None,
) -> list[list[Completion]]:
    """Host helper: text / messages / ids in, n `Completion`s per prompt out (one batch).

    `batch` fixes the padded batch size (default: len(prompts)).
    """
    seqs = [encode_prompt(tokenizer, p, chat_template) for p in prompts]
    ids, mask, _ = pad_prompts(seqs, tokenizer.pad_id, buckets, batch)
    ro = generate(
        graphdef, state, ids, mask, key, sc, n, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id
    )
    flat = completions_from(ro, tokenizer, len(prompts) * n)
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]
