"""One decoder-only transformer for the Llama (SmolLM2, Llama 3) and Qwen2/Qwen2.5 families.

Defined as Flax NNX modules and run functionally: `init_model` splits once into (graphdef, state),
and `forward` is a pure function of both, so callers can `jax.jit` it with explicit shardings. Every
parameter carries logical axis names (`sharding_names`); `rlvr_jax.mesh` maps them to a mesh.

Layers are a plain list, unrolled inside jit: on XLA:CPU a scan over stacked layer weights copies
the weights at every decode step, which costs about half the decode speed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.mesh import constrain_rows
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.kv_cache import KVCache

_INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...], dtype) -> nnx.Param:
    value = jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD
    return nnx.Param(value.astype(dtype), out_sharding=names)


def _zeros(shape: tuple[int, ...], names: tuple[str, ...], dtype) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype), out_sharding=names)


# ---------------------------------------------------------------------------------------------
# Matrix products with a CPU-friendly backward pass
#
# XLA:CPU hands a matrix product to YNNPACK only when its left operand is row-major with the
# contracted axis last; otherwise Eigen runs it, asynchronously, on threads that YNNPACK's products
# are using at the same time (two cores: both slow down). The weight gradient of y = x @ w is
# x^T @ g, a product over the token axis, which is x's *first* axis: autodiff's form goes to Eigen.
# Here the backward pass transposes x into a buffer of its own (the barrier keeps XLA from folding
# the transpose back into the product), so that every product of the update runs in YNNPACK.
# Measured on 2 cores, SmolLM2-135M, 8 x 256 tokens: see bench/train_step.py.


def _own_buffer(x: jax.Array) -> jax.Array:
    """x materialised as it is: XLA may not fold a transpose that made it into its consumer."""
    return jax.lax.optimization_barrier(x)


def _t(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., M, A] @ w [..., A, B] (equal leading batch axes, or none on w)."""
    return x @ w


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _sum_leading(dw: jax.Array, ndim: int) -> jax.Array:
    """dw summed over the leading axes beyond ndim: a weight shared by every leading index of x."""
    return dw.sum(tuple(range(dw.ndim - ndim))) if dw.ndim > ndim else dw


def _matmul_bwd(res, g):
    x, w = res
    return g @ _t(w), _sum_leading(_own_buffer(_t(x)) @ g, w.ndim)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def _matmul_nt(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., M, A] @ w [..., B, A]^T (attention scores; the tied vocabulary projection), with
    leading axes as `_matmul`'s."""
    return x @ _t(w)


def _matmul_nt_fwd(x, w):
    return x @ _t(w), (x, w)


def _matmul_nt_bwd(res, g):
    x, w = res
    # dw = g^T x, computed as (x^T g)^T: transposing x [M, A] is cheap, transposing g [M, B]
    # (the [tokens, vocab] logit gradient for the head) is not.
    return g @ w, _t(_own_buffer(_sum_leading(_own_buffer(_t(x)) @ g, w.ndim)))


_matmul_nt.defvjp(_matmul_nt_fwd, _matmul_nt_bwd)


def _use_cpu_products() -> bool:
    return jax.default_backend() == "cpu"


def matmul(x: jax.Array, w: jax.Array, transpose_w: bool = False) -> jax.Array:
    """x [..., M, A] @ w [..., A, B] (or w [..., B, A]^T with transpose_w): `_matmul` on XLA:CPU,
    where its gradients run faster; elsewhere plain jnp.matmul, which accelerators' libraries
    transpose for free. The forward product is the same either way."""
    if not _use_cpu_products():
        return x @ (_t(w) if transpose_w else w)
    return _matmul_nt(x, w) if transpose_w else _matmul(x, w)


def project(x: jax.Array, w: jax.Array, n_in: int = 1) -> jax.Array:
    """A dense layer: contract the last n_in axes of x with the first n_in axes of w."""
    lead, a = x.shape[: x.ndim - n_in], math.prod(w.shape[:n_in])
    y = matmul(x.reshape(-1, a), w.reshape(a, -1))
    return y.reshape(*lead, *w.shape[n_in:])


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies [K/2] from the config, with llama3 scaling when configured."""
    k = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, k, 2, dtype=np.float64) / k))
    rs = cfg.rope_scaling_dict
    if rs is not None and rs.get("rope_type") == "llama3":
        factor = float(rs["factor"])
        low, high = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
        old_ctx = float(rs["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate x [N, T, H, K] by positions [N, T] (HF's rotate-half layout), computed in fp32."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [N, T, K/2]
    cos, sin = jnp.cos(freqs), jnp.sin(freqs)
    cos = jnp.concatenate([cos, cos], axis=-1)[:, :, None, :].astype(x.dtype)  # [N, T, 1, K]
    sin = jnp.concatenate([-sin, sin], axis=-1)[:, :, None, :].astype(x.dtype)
    # rotate_half(x) = [-x2, x1]: the sign lives in `sin`, and the halves swap by a reversal of a
    # size-2 axis, which fuses with the products forwards and backwards (a concatenate of x's
    # halves does not, and its gradient is two slices and a pad per call).
    swapped = jnp.flip(x.reshape(*x.shape[:-1], 2, x.shape[-1] // 2), axis=-2).reshape(x.shape)
    return x * cos + swapped * sin


# Causal self-attention of at least CAUSAL_SPLIT_FROM tokens runs in query blocks of at least
# CAUSAL_BLOCK_MIN rows, each over the keys up to its own end only: up to CAUSAL_BLOCKS_MAX = 8
# blocks skip ~7/16 of the score work (the masked upper triangle).
CAUSAL_SPLIT_FROM = 128
CAUSAL_BLOCK_MIN = 32
CAUSAL_BLOCKS_MAX = 8


def causal_blocks(t: int) -> list[tuple[int, int]]:
    """Query row ranges [(start, end)] splitting t rows for `attention(..., causal=True)`.

    Sequences shorter than CAUSAL_SPLIT_FROM stay one block: there the skipped scores are little
    work, and each block makes the compiled program larger."""
    if t < CAUSAL_SPLIT_FROM:
        return [(0, t)]
    size = max(CAUSAL_BLOCK_MIN, -(-t // CAUSAL_BLOCKS_MAX))
    return [(a, min(a + size, t)) for a in range(0, t, size)]


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool = False
) -> jax.Array:
    """Grouped-query attention: q [N,T,H,K] over k, v [N,S,Hkv,K] where mask [N,T,S] is True.
    Returns [N,T,H,K] (before the output projection). Scores and softmax in fp32.

    Each key/value head's R = H/Hkv query heads are stacked as R*T rows of one batched matrix
    product per (row, kv head), which XLA:CPU runs as plain GEMMs (`matmul`: their gradients
    too; measured on 2 cores, the SmolLM2-135M update of 8 x 256 tokens 10.43 -> 10.22 s, medians
    of 7 alternating runs in one process). causal=True (self-attention
    without a cache, S = T and mask[:, i, j] False for j > i) splits the queries into blocks that
    read only the keys up to their end: the same result for every query with a real key, less
    work. (A query with no real key at all, a left pad, gets a uniform mix of fewer keys; pads
    feed nothing real.)
    """
    n, t, h, kd = q.shape
    g = k.shape[2]
    r = h // g
    qg = q.reshape(n, t, g, r, kd).transpose(0, 2, 3, 1, 4)  # [N,G,R,T,K]
    kg = k.astype(q.dtype).transpose(0, 2, 1, 3)  # [N,G,S,K]
    vg = v.astype(q.dtype).transpose(0, 2, 1, 3)
    blocks = causal_blocks(t) if causal else [(0, t)]
    outs = []
    for a, b in blocks:
        end = b if causal else k.shape[1]
        rows = qg[:, :, :, a:b].reshape(n, g, r * (b - a), kd)
        scores = matmul(rows, kg[:, :, :end], transpose_w=True).astype(jnp.float32)
        scores = scores.reshape(n, g, r, b - a, end) / np.sqrt(kd).astype(np.float32)
        scores = jnp.where(mask[:, None, None, a:b, :end], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype).reshape(n, g, r * (b - a), end)
        out = matmul(probs, vg[:, :, :end])
        outs.append(out.reshape(n, g, r, b - a, kd))
    out5 = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)  # [N,G,R,T,K]
    return out5.transpose(0, 3, 1, 2, 4).reshape(n, t, h, kd)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype):
        self.scale = nnx.Param(jnp.ones((dim,), dtype), out_sharding=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        # Normalise in fp32 and cast back before the scale, as transformers does.
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...] * xf.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, h, hkv, k, dt = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.dtype
        self.q = _param(rngs, (d, h, k), ("embed", "q_heads", "head_dim"), dt)
        self.k = _param(rngs, (d, hkv, k), ("embed", "kv_heads", "head_dim"), dt)
        self.v = _param(rngs, (d, hkv, k), ("embed", "kv_heads", "head_dim"), dt)
        self.o = _param(rngs, (h, k, d), ("q_heads", "head_dim", "embed"), dt)
        if cfg.attention_bias:
            self.q_bias = _zeros((h, k), ("q_heads", "head_dim"), dt)
            self.k_bias = _zeros((hkv, k), ("kv_heads", "head_dim"), dt)
            self.v_bias = _zeros((hkv, k), ("kv_heads", "head_dim"), dt)
        self.has_bias = cfg.attention_bias
        # The config, not an inv_freq array: an array attribute would become a leaf of the state.
        self.cfg = cfg

    def project_q(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Rotated queries [N,T,H,K] of x [N,T,D] at positions [N,T]."""
        q = project(x, self.q[...])
        if self.has_bias:
            q = q + self.q_bias[...]
        return apply_rope(q, positions, rope_inv_freq(self.cfg))

    def project_kv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Rotated keys and values, each [N,T,Hkv,K], of x [N,T,D] at positions [N,T]."""
        k = project(x, self.k[...])
        v = project(x, self.v[...])
        if self.has_bias:
            k, v = k + self.k_bias[...], v + self.v_bias[...]
        return apply_rope(k, positions, rope_inv_freq(self.cfg)), v

    def attend(
        self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool = False
    ) -> jax.Array:
        """Queries q [N,T,H,K] over keys/values [N,S,Hkv,K] where mask [N,T,S] is True, then the
        output projection: [N,T,D]. causal: see `attention`."""
        return project(attention(q, k, v, mask, causal), self.o[...], 2)

    def __call__(self, x, positions, mask, kv):
        """x [N,T,D], positions [N,T], mask [N,T,S] bool, kv: None or (k_cache, v_cache, index).

        Returns ([N,T,D], (k, v)) where k, v are [N,S,Hkv,K]: the updated cache, or this step's keys
        and values when there is no cache (S = T).
        """
        q = self.project_q(x, positions)
        k, v = self.project_kv(x, positions)
        if kv is not None:
            k_cache, v_cache, index = kv
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
        return self.attend(q, k, v, mask, causal=kv is None), (k, v)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f, dt = cfg.hidden_size, cfg.intermediate_size, cfg.dtype
        self.gate = _param(rngs, (d, f), ("embed", "mlp"), dt)
        self.up = _param(rngs, (d, f), ("embed", "mlp"), dt)
        self.down = _param(rngs, (f, d), ("mlp", "embed"), dt)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = project(x, self.gate[...]), project(x, self.up[...])
        return project(jax.nn.silu(gate) * up, self.down[...])


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.dtype)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.dtype)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, mask, kv):
        a, new_kv = self.attn(self.attn_norm(x), positions, mask, kv)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), new_kv


class Transformer(nnx.Module):
    """Token ids -> next-token logits, with an optional explicit KV cache."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.dtype)
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(
                rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg.dtype
            )

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final hidden states [..., D] -> fp32 logits [..., V]."""
        if self.cfg.tie_word_embeddings:
            flat = matmul(hidden.reshape(-1, hidden.shape[-1]), self.embed[...], transpose_w=True)
            out = flat.reshape(*hidden.shape[:-1], -1)
        else:
            out = project(hidden, self.lm_head[...])
        return out.astype(jnp.float32)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        attn_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """tokens, positions [N,T] int; attn_mask [N,T] (True = real token; default all real).

        Without a cache: causal attention over these T tokens. With a cache: the T tokens are
        written at slots [index, index+T), attend to every earlier real slot, and the updated cache
        is returned. Output: fp32 logits [N,T,V] (or final hidden states [N,T,D] if return_hidden).
        """
        n, t = tokens.shape
        if attn_mask is None:
            attn_mask = jnp.ones((n, t), bool)
        attn_mask = attn_mask.astype(bool)
        # Under a mesh context the residual stream keeps its rows split over the batch axes.
        x = constrain_rows(jnp.take(self.embed[...], tokens, axis=0))
        if cache is None:
            causal = jnp.tril(jnp.ones((t, t), bool))
            mask = causal[None] & attn_mask[:, None, :]
            kv_mask = None
        else:
            kv_mask = jax.lax.dynamic_update_slice(cache.mask, attn_mask, (0, cache.index))
            slot = jnp.arange(cache.size)
            causal = slot[None, :] <= (cache.index + jnp.arange(t))[:, None]  # [T, S]
            mask = causal[None] & kv_mask[:, None, :]
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i], cache.index)
            x, (k, v) = layer(x, positions, mask, kv)
            x = constrain_rows(x)
            ks.append(k)
            vs.append(v)
        x = self.final_norm(x)
        new_cache = None
        if cache is not None:
            new_cache = cache.replace(k=tuple(ks), v=tuple(vs), mask=kv_mask, index=cache.index + t)
        return (x if return_hidden else self.logits(x)), new_cache


def init_model(cfg: ModelConfig, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    """A randomly initialised model, split once into (graphdef, state)."""
    return nnx.split(Transformer(cfg, nnx.Rngs(params=seed)))


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of ShapeDtypeStructs) without allocating weights."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(params=0))))


def forward(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,
    positions: jax.Array,
    attn_mask: jax.Array | None = None,
    cache: KVCache | None = None,
    return_hidden: bool = False,
) -> tuple[jax.Array, KVCache | None]:
    """Pure forward pass over (graphdef, state); see `Transformer.__call__` for shapes."""
    model = nnx.merge(graphdef, state)
    return model(tokens, positions, attn_mask, cache, return_hidden)


def lm_logits(graphdef: nnx.GraphDef, state: nnx.State, hidden: jax.Array) -> jax.Array:
    """Final hidden states [..., D] -> fp32 logits [..., V] (e.g. at a few positions only)."""
    return nnx.merge(graphdef, state).logits(hidden)


def positions_from_mask(attn_mask: jax.Array) -> jax.Array:
    """RoPE positions [N,T] of a left-padded batch: real tokens before each slot (pads get 0)."""
    m = attn_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)
