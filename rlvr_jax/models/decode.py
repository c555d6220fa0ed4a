"""The sampler's one-token decode step, laid out for XLA:CPU: weights [out, in], activations [D, N].

At a batch of a few rows the decode step's matrix products are matrix-vector-like, and XLA:CPU
runs them much faster as W[out, in] @ x[in, N] than as x[N, in] @ W[in, out], the layout the
model keeps for training (measured on 2 cores, SmolLM2-135M at N = 8: 26 against 41 ms for the 30
blocks' products, 6 against 11 ms for the tied vocabulary projection; writing the product the
other way round inside one jit does not help, XLA puts it back). So the sampler transposes the
weights once per `rollout.decode` call (`decode_weights`, a few tens of ms) and runs `decode_step`
on them. It computes the same function as `Transformer.__call__` with a cache and one token per
row (tests compare the two); only the summation order inside the products differs.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.kv_cache import KVCache
from rlvr_jax.models.lora import SUFFIX
from rlvr_jax.models.transformer import apply_rope, rms_norm, rope_inv_freq


@flax.struct.dataclass
class DecodeWeights:
    """The model's weights for `decode_step`: every matrix [out, in], norm scales [D, 1].

    layers: one dict per block with attn_norm, q [H*K, D], k, v [Hkv*K, D], o [D, H*K],
    mlp_norm, gate, up [F, D], down [D, F] (and q_bias [H*K, 1], k_bias, v_bias when the
    model has them; q_norm, k_norm [K] with Qwen3's per-head norms; for a LoRA adapter on
    weight w, w_a [r, in] and w_b [out, r]). Adapters stay apart from their weights, as in the
    trainer: merged into the copy they would change the rounding, and the sampler's log-probs
    would drift from the trainer's by up to 6e-4 (measured on the tiny echo task).
    embed [V, D] is the token table; head [V, D] the vocabulary projection (the same array when
    the embeddings are tied).
    """

    embed: jax.Array
    head: jax.Array
    final_norm: jax.Array
    layers: tuple[dict[str, jax.Array], ...]


def decode_weights(graphdef: nnx.GraphDef, state: nnx.State) -> DecodeWeights:
    """Transposed copies of the weights (call inside the jitted sampler, once per decode)."""
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    d = cfg.hidden_size
    col = lambda x: x[:, None]

    def block(b) -> dict[str, jax.Array]:
        a, m = b.attn, b.mlp
        w = {
            "attn_norm": col(b.attn_norm.scale[...]),
            "q": a.q[...].reshape(d, -1).T,
            "k": a.k[...].reshape(d, -1).T,
            "v": a.v[...].reshape(d, -1).T,
            "o": a.o[...].reshape(-1, d).T,
            "mlp_norm": col(b.mlp_norm.scale[...]),
            "gate": m.gate[...].T,
            "up": m.up[...].T,
            "down": m.down[...].T,
        }
        for module, names in ((a, ("q", "k", "v", "o")), (m, ("gate", "up", "down"))):
            for name in names:
                lora = getattr(module, name + SUFFIX, None)
                if lora is not None:
                    r = lora.b.shape[0]
                    w[name + "_a"] = lora.a[...].reshape(-1, r).T
                    w[name + "_b"] = lora.b[...].reshape(r, -1).T
        if cfg.attention_bias:
            for name in ("q_bias", "k_bias", "v_bias"):
                w[name] = col(getattr(a, name)[...].reshape(-1))
        if cfg.qk_norm:
            w["q_norm"], w["k_norm"] = a.q_norm.scale[...], a.k_norm.scale[...]
        return w

    embed = model.embed[...]
    head = embed if cfg.tie_word_embeddings else model.lm_head[...].T
    layers = tuple(block(b) for b in model.layers)
    return DecodeWeights(embed, head, col(model.final_norm.scale[...]), layers)


@flax.struct.dataclass
class DecodeCache:
    """`KVCache` in `decode_step`'s layout: per layer keys [N, Hkv, K, S], values [N, Hkv, S, K];
    mask [N, S] and index as in KVCache."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array

    @property
    def size(self) -> int:
        return self.mask.shape[1]


def decode_cache(cache: KVCache) -> DecodeCache:
    """The model's cache in the decode layout (one transpose per layer, before the loop)."""
    k = tuple(x.transpose(0, 2, 3, 1) for x in cache.k)
    v = tuple(x.transpose(0, 2, 1, 3) for x in cache.v)
    return DecodeCache(k, v, cache.mask, cache.index)


def model_cache(cache: DecodeCache) -> KVCache:
    """The inverse of `decode_cache`."""
    k = tuple(x.transpose(0, 3, 1, 2) for x in cache.k)
    v = tuple(x.transpose(0, 2, 1, 3) for x in cache.v)
    return KVCache(k, v, cache.mask, cache.index)


def _rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over dim 0 of x [D, N], as models.transformer.RMSNorm does over the last dim."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=0, keepdims=True) + eps)
    return scale * xf.astype(x.dtype)


def _heads(y: jax.Array, n: int, k: int) -> jax.Array:
    """[H*K, N] -> [N, 1, H, K]. The barrier keeps XLA from folding the transpose into the
    product that made y, which would turn it back into the slow x @ W form."""
    return jax.lax.optimization_barrier(y).T.reshape(n, 1, -1, k)


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """One query per row: q [N,1,H,K] over the decode-layout cache k [N,Hkv,K,S], v [N,Hkv,S,K],
    where mask [N,1,S]. `transformer.attention` as products and sums: the scores sum over K with
    the slots contiguous, the output over the slots with K contiguous. Returns [N,1,H,K]."""
    n, _, h, kd = q.shape
    hkv = k.shape[1]
    qg = q.reshape(n, hkv, h // hkv, kd)  # [N, G, R, K]
    kq = k.astype(q.dtype)
    scores = jnp.sum(qg[..., None] * kq[:, :, None], axis=3)  # [N, G, R, S]
    scores = scores.astype(jnp.float32) / np.sqrt(kd).astype(np.float32)
    scores = jnp.where(mask[:, 0, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.sum(probs[..., None] * v.astype(q.dtype)[:, :, None], axis=3)  # [N, G, R, K]
    return out.reshape(n, 1, h, kd)


def _dense(cfg: ModelConfig, lw: dict[str, jax.Array], name: str, h: jax.Array) -> jax.Array:
    """Weight `name` [out, in] times h [in, N], plus its LoRA adapter's term (grouped as the
    model's: B (A h), then the scale)."""
    y = lw[name] @ h
    if name + "_a" not in lw:
        return y
    return y + (lw[name + "_b"] @ (lw[name + "_a"] @ h)) * cfg.lora.scale


def decode_step(
    cfg: ModelConfig, w: DecodeWeights, tokens: jax.Array, positions: jax.Array, cache: DecodeCache
) -> tuple[jax.Array, DecodeCache]:
    """One token per row: tokens, positions [N] -> (fp32 logits [N, V], the updated cache).

    The token is written at slot `cache.index` and attends to every earlier real slot, exactly as
    `Transformer.__call__(tokens[:, None], positions[:, None], None, cache)` on the model layout.
    """
    n, kd, eps = tokens.shape[0], cfg.head_dim, cfg.rms_norm_eps
    index = cache.index
    kv_mask = jax.lax.dynamic_update_slice(cache.mask, jnp.ones((n, 1), bool), (0, index))
    mask = ((jnp.arange(cache.size) <= index)[None, :] & kv_mask)[:, None, :]  # [N, 1, S]
    pos = positions[:, None]
    inv_freq = rope_inv_freq(cfg)
    x = jnp.take(w.embed, tokens, axis=0).T  # [D, N]
    ks, vs = [], []
    for i, lw in enumerate(w.layers):
        h = _rms_norm(x, lw["attn_norm"], eps)
        q, k, v = (_dense(cfg, lw, name, h) for name in ("q", "k", "v"))
        if cfg.attention_bias:
            q, k, v = q + lw["q_bias"], k + lw["k_bias"], v + lw["v_bias"]
        q, k = _heads(q, n, kd), _heads(k, n, kd)
        if cfg.qk_norm:
            q, k = rms_norm(q, lw["q_norm"], eps), rms_norm(k, lw["k_norm"], eps)
        q, k = apply_rope(q, pos, inv_freq), apply_rope(k, pos, inv_freq)
        v = _heads(v, n, kd)
        k = k.astype(cache.k[i].dtype).transpose(0, 2, 3, 1)  # [N, Hkv, K, 1]
        v = v.astype(cache.v[i].dtype).transpose(0, 2, 1, 3)  # [N, Hkv, 1, K]
        k = jax.lax.dynamic_update_slice(cache.k[i], k, (0, 0, 0, index))
        v = jax.lax.dynamic_update_slice(cache.v[i], v, (0, 0, index, 0))
        out = _attention(q, k, v, mask)  # [N, 1, H, K]
        x = x + _dense(cfg, lw, "o", out.reshape(n, -1).T)
        h = _rms_norm(x, lw["mlp_norm"], eps)
        act = jax.nn.silu(_dense(cfg, lw, "gate", h)) * _dense(cfg, lw, "up", h)
        x = x + _dense(cfg, lw, "down", act)
        ks.append(k)
        vs.append(v)
    h = _rms_norm(x, w.final_norm, eps)
    logits = jax.lax.optimization_barrier(w.head @ h).T.astype(jnp.float32)
    new = cache.replace(k=tuple(ks), v=tuple(vs), mask=kv_mask, index=index + 1)
    return logits, new


def use_decode_layout() -> bool:
    """Whether the sampler should use `decode_step` (decided at trace time): on the CPU backend,
    outside a mesh context or under a one-device mesh (the trainer's on a laptop). GPUs and TPUs
    run either layout well, and on a mesh of several devices the canonical path keeps the
    sharding rules of models/transformer.py."""
    am = jax.sharding.get_abstract_mesh()
    return jax.default_backend() == "cpu" and (am.empty or am.size == 1)
