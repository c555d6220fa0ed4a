"""One decoder-only transformer for the Llama (SmolLM2, Llama 3), Qwen2/Qwen2.5 and Qwen3 (dense)
families, with optional LoRA adapters (models/lora.py).

Defined as Flax NNX modules and run functionally: `init_model` splits once into (graphdef, state),
and `forward` is a pure function of both, so callers can `jax.jit` it with explicit shardings. Every
parameter carries logical axis names (`sharding_names`); `rlvr_jax.mesh` maps them to a mesh.

Layers are a plain list, unrolled inside jit: on XLA:CPU a scan over stacked layer weights copies
the weights at every decode step, which costs about half the decode speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.mesh import TRAIN_RULES, Rules, constrain_rows, param_shardings
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.kv_cache import KVCache
from rlvr_jax.models.lora import LoRA, adapted, split_adapters
from rlvr_jax.models.matmul import matmul, project

_INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...], dtype) -> nnx.Param:
    value = jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD
    return nnx.Param(value.astype(dtype), out_sharding=names)


def _zeros(shape: tuple[int, ...], names: tuple[str, ...], dtype) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype), out_sharding=names)


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


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis of x, times scale [x.shape[-1]]."""
    # Normalise in fp32 and cast back before the scale, as transformers does.
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale * xf.astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype):
        self.scale = nnx.Param(jnp.ones((dim,), dtype), out_sharding=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


def _adapters(module: nnx.Module, cfg: ModelConfig, rngs: nnx.Rngs, **weights) -> None:
    """Attach a LoRA adapter to each weight in `weights` (name -> (in shape, out shape, in names,
    out names)) that cfg.lora targets."""
    if cfg.lora is None:
        return
    for name, (shp_in, shp_out, names_in, names_out) in weights.items():
        if name in cfg.lora.targets:
            lora = LoRA(shp_in, shp_out, names_in, names_out, cfg.lora.rank, cfg.lora.scale,
                        cfg.dtype, rngs)  # fmt: skip
            setattr(module, name + "_lora", lora)


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
        if cfg.qk_norm:  # Qwen3: over each head's K features, after the bias, before RoPE
            self.q_norm = RMSNorm(k, cfg.rms_norm_eps, dt)
            self.k_norm = RMSNorm(k, cfg.rms_norm_eps, dt)
        self.has_qk_norm = cfg.qk_norm
        e, qh, kvh = ("embed",), ("q_heads", "head_dim"), ("kv_heads", "head_dim")
        _adapters(self, cfg, rngs, q=((d,), (h, k), e, qh), k=((d,), (hkv, k), e, kvh),
                  v=((d,), (hkv, k), e, kvh), o=((h, k), (d,), qh, e))  # fmt: skip
        # The config, not an inv_freq array: an array attribute would become a leaf of the state.
        self.cfg = cfg

    def project_q(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Rotated queries [N,T,H,K] of x [N,T,D] at positions [N,T]."""
        q = adapted(self, "q", x)
        if self.has_bias:
            q = q + self.q_bias[...]
        if self.has_qk_norm:
            q = self.q_norm(q)
        return apply_rope(q, positions, rope_inv_freq(self.cfg))

    def project_kv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Rotated keys and values, each [N,T,Hkv,K], of x [N,T,D] at positions [N,T]."""
        k, v = adapted(self, "k", x), adapted(self, "v", x)
        if self.has_bias:
            k, v = k + self.k_bias[...], v + self.v_bias[...]
        if self.has_qk_norm:
            k = self.k_norm(k)
        return apply_rope(k, positions, rope_inv_freq(self.cfg)), v

    def attend(
        self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool = False
    ) -> jax.Array:
        """Queries q [N,T,H,K] over keys/values [N,S,Hkv,K] where mask [N,T,S] is True, then the
        output projection: [N,T,D]. causal: see `attention`."""
        return adapted(self, "o", attention(q, k, v, mask, causal), 2)

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
        e, m = ("embed",), ("mlp",)
        _adapters(self, cfg, rngs, gate=((d,), (f,), e, m), up=((d,), (f,), e, m),
                  down=((f,), (d,), m, e))  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = adapted(self, "gate", x), adapted(self, "up", x)
        return adapted(self, "down", jax.nn.silu(gate) * up)


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
        remat: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """tokens, positions [N,T] int; attn_mask [N,T] (True = real token; default all real).

        remat (training): each block's activations are recomputed in the backward pass instead of
        kept, so a micro-batch holds one block's tensors plus every block's input.

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
            if remat:
                block = jax.checkpoint(lambda h, layer=layer, kv=kv: layer(h, positions, mask, kv))
                x, (k, v) = block(x)
            else:
                x, (k, v) = layer(x, positions, mask, kv)
            x = constrain_rows(x)
            ks.append(k)
            vs.append(v)
        x = self.final_norm(x)
        new_cache = None
        if cache is not None:
            new_cache = cache.replace(k=tuple(ks), v=tuple(vs), mask=kv_mask, index=cache.index + t)
        return (x if return_hidden else self.logits(x)), new_cache


def _rngs(seed: int) -> nnx.Rngs:
    # Adapters draw from a stream of their own: the base weights of a seed stay the same with and
    # without them.
    return nnx.Rngs(params=seed, lora=jax.random.fold_in(jax.random.key(seed), 1))


def init_model(cfg: ModelConfig, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    """A randomly initialised model, split once into (graphdef, state)."""
    return nnx.split(Transformer(cfg, _rngs(seed)))


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of ShapeDtypeStructs) without allocating weights."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, _rngs(0))))


def init_sharded(
    cfg: ModelConfig, mesh: jax.sharding.Mesh, rules: Rules = TRAIN_RULES, seed: int = 0
) -> tuple[nnx.GraphDef, nnx.State]:
    """A random model born sharded: each device computes only its own shards of every parameter.

    The same values as `jax.jit(lambda: init_model(cfg, seed)[1])()` on one device (the random
    bits are partitionable, so they do not depend on the mesh).
    """
    graphdef, _ = abstract_model(cfg)
    init = lambda: init_model(cfg, seed)[1]
    shardings = param_shardings(jax.eval_shape(init), mesh, rules)
    return graphdef, jax.jit(init, out_shardings=shardings)()


def init_adapters(
    cfg: ModelConfig, seed: int = 0, shardings_of: Callable[[Any], Any] | None = None
) -> nnx.State:
    """The LoRA adapters of `init_model(cfg, seed)` alone (jit drops the base weights' draws),
    placed by `shardings_of(abstract adapters)` (e.g. the mesh rules' shardings) when given."""

    def init() -> nnx.State:
        return split_adapters(init_model(cfg, seed)[1])[0]

    shardings = shardings_of(jax.eval_shape(init)) if shardings_of is not None else None
    return jax.jit(init, out_shardings=shardings)()


def forward(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,
    positions: jax.Array,
    attn_mask: jax.Array | None = None,
    cache: KVCache | None = None,
    return_hidden: bool = False,
    remat: bool = False,
) -> tuple[jax.Array, KVCache | None]:
    """Pure forward pass over (graphdef, state); see `Transformer.__call__` for shapes."""
    model = nnx.merge(graphdef, state)
    return model(tokens, positions, attn_mask, cache, return_hidden, remat)


def lm_logits(graphdef: nnx.GraphDef, state: nnx.State, hidden: jax.Array) -> jax.Array:
    """Final hidden states [..., D] -> fp32 logits [..., V] (e.g. at a few positions only)."""
    return nnx.merge(graphdef, state).logits(hidden)


def positions_from_mask(attn_mask: jax.Array) -> jax.Array:
    """RoPE positions [N,T] of a left-padded batch: real tokens before each slot (pads get 0)."""
    m = attn_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)
