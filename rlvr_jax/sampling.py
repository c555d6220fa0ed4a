"""Sampling one token per row from next-token logits, and the sampling settings.

It costs little next to the forward: greedy is an argmax; temperature sampling draws one
uniform per row and inverts the CDF (not N*V Gumbel draws); top-k uses `lax.top_k`; top-p alone
finds its threshold by bisection instead of sorting the vocabulary.

Sampling order follows transformers: logits / temperature, then top-k, then top-p. Top-p keeps the
smallest set of most likely tokens whose mass reaches `top_p` (and any token tied with the last
one kept). Temperature 0 means greedy.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Frozen and hashable: it is a static argument of the jitted decode loop.

    max_new_tokens: L, the completion length (buffer size; rows stop earlier at a stop token).
    temperature: 0 = greedy; otherwise logits are divided by it before top-k/top-p.
    top_k: keep the k most likely tokens (0 = off).
    top_p: nucleus mass (1.0 = off).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _top_p_mask(sorted_desc: jax.Array, top_p: float) -> jax.Array:
    """Keep mask over logits sorted descending [N, k]: the smallest prefix with mass >= top_p."""
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return mass_before < top_p  # the first token always has mass_before 0


def _top_p_keep(probs: jax.Array, top_p: float) -> jax.Array:
    """Keep mask [N, V] of the nucleus of probs [N, V], without sorting the vocabulary.

    The nucleus is {p >= t} for the largest threshold t whose mass is >= top_p (the sorted-prefix
    definition, ties with the last kept token included). t is found by bisection on the bit
    patterns of the probabilities (non-negative floats order like their int32 bits): 31 masked
    sums over [N, V], where a sort of 49k entries per row costs ~50x more on XLA:CPU.
    """
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
    need = top_p * jnp.sum(probs, axis=-1)  # relative to the row's own (rounded) total
    lo = jnp.zeros(probs.shape[:1], jnp.int32)  # mass(bits >= lo) >= need
    hi = jnp.max(bits, axis=-1) + 1  # mass(bits >= hi) == 0 < need

    def step(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(jnp.where(bits >= mid[:, None], probs, 0.0), axis=-1) >= need
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, step, (lo, hi))
    return bits >= lo[:, None]


def _inverse_cdf(weights: jax.Array, key: jax.Array, block: int = 256) -> jax.Array:
    """One index per row of non-negative weights [N, V], drawn with probability weight / row sum.

    Inverse-CDF with one uniform per row, in two levels (block sums, then within the block), so
    it needs N random numbers per step instead of the N*V Gumbel draws of `categorical`. Never
    returns an index of zero weight.
    """
    n, v = weights.shape
    pad = (-v) % block
    w = jnp.pad(weights, ((0, 0), (0, pad))).reshape(n, -1, block)
    bcdf = jnp.cumsum(w.sum(-1), axis=-1)  # [N, V/block]
    u = jax.random.uniform(key, (n,), jnp.float32) * bcdf[:, -1]  # in [0, total)
    b = jnp.minimum(jnp.sum(bcdf <= u[:, None], axis=-1), bcdf.shape[1] - 1)
    below = jnp.where(b > 0, jnp.take_along_axis(bcdf, jnp.maximum(b - 1, 0)[:, None], -1)[:, 0], 0)
    row = jnp.take_along_axis(w, b[:, None, None], axis=1)[:, 0]  # [N, block]
    j = jnp.sum(jnp.cumsum(row, axis=-1) <= (u - below)[:, None], axis=-1)
    # Rounding can push j past the block's last positive weight: clamp to it.
    last = block - 1 - jnp.argmax((row > 0)[:, ::-1], axis=-1)
    return (b * block + jnp.minimum(j, last)).astype(jnp.int32)


def sample_tokens(logits: jax.Array, key: jax.Array, sc: SamplingConfig) -> jax.Array:
    """Sample one token per row from fp32 logits [N, V] -> [N] int32, per `sc`."""
    if sc.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = logits / jnp.float32(sc.temperature) if sc.temperature != 1.0 else logits
    if sc.top_k > 0 and sc.top_k < x.shape[-1]:
        vals, idx = jax.lax.top_k(x, sc.top_k)  # [N, k], sorted descending: cheap
        if sc.top_p < 1.0:
            vals = jnp.where(_top_p_mask(vals, sc.top_p), vals, jnp.finfo(jnp.float32).min)
        choice = jax.random.categorical(key, vals, axis=-1)
        return jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    probs = jax.nn.softmax(x, axis=-1)
    if sc.top_p < 1.0:
        probs = jnp.where(_top_p_keep(probs, sc.top_p), probs, 0.0)
    return _inverse_cdf(probs, key)


def sampled_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[token] for fp32 logits [..., V] and tokens [...] (no [.., V] log-softmax
    array is kept: only the row's logsumexp)."""
    picked = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)
