"""The rlvr_jax transformer against transformers' own, on tiny random models (fp32, CPU).

Covers the families the issue names: Llama tied + GQA, Qwen2 bias + untied + one KV head, Llama with
llama3 rope scaling, Qwen3 (per-head q/k norm, head_dim apart from hidden / heads) tied and
untied; then the KV cache and left padding, which the sampler relies on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_HF_CONFIGS, random_tokens

from rlvr_jax.models.hf_io import load_hf
from rlvr_jax.models.kv_cache import KVCache
from rlvr_jax.models.transformer import abstract_model, forward, positions_from_mask
from rlvr_jax.tokenizer import left_pad

T = 40  # longer than llama3_rope's original context (16), so the scaling matters
_forward = jax.jit(forward, static_argnums=0)


@pytest.fixture(scope="module", params=list(TINY_HF_CONFIGS))
def pair(request, tiny_hf_dirs):
    """(name, torch model, cfg, graphdef, state) for one tiny config, converted by hf_io."""
    from transformers import AutoModelForCausalLM

    d = tiny_hf_dirs[request.param]
    hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    hf.config._attn_implementation = "eager"
    cfg, state = load_hf(d)
    graphdef, _ = abstract_model(cfg)
    return request.param, hf, cfg, graphdef, state


def _hf_logits(hf, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kw = {}
        if mask is not None:
            kw["attention_mask"] = torch.tensor(mask.astype(np.int64))
            kw["position_ids"] = torch.tensor(
                np.asarray(positions_from_mask(mask)), dtype=torch.long
            )
        return hf(torch.tensor(ids, dtype=torch.long), **kw).logits.float().numpy()


def _ours(graphdef, state, ids, mask=None):
    ids = jnp.asarray(ids)
    if mask is None:
        mask = np.ones(ids.shape, bool)
    mask = jnp.asarray(mask)
    logits, _ = _forward(graphdef, state, ids, positions_from_mask(mask), mask)
    return np.asarray(logits)


def test_logits_match_transformers(pair):
    name, hf, cfg, graphdef, state = pair
    ids = random_tokens(1, (2, T))
    ref = _hf_logits(hf, ids)
    ours = _ours(graphdef, state, ids)
    err = np.abs(ours - ref).max()
    print(f"{name}: max|logit| {np.abs(ref).max():.2f}, max abs diff {err:.2e}")
    assert np.abs(ref).max() > 5.0, "logits too small for the tolerance to mean anything"
    assert err <= 1e-4


def test_rope_settings_matter(pair):
    """The parity above would also pass if rope theta/scaling were ignored and had no effect on
    these models; show that changing them changes the logits by far more than the tolerance."""
    name, hf, cfg, graphdef, state = pair
    ids = random_tokens(2, (1, T))
    ours = _ours(graphdef, state, ids)
    changed = cfg.replace(rope_theta=10000.0 if cfg.rope_theta != 10000.0 else 1e5)
    if cfg.rope_scaling is not None:
        changed = cfg.replace(rope_scaling=None)
    g2, _ = abstract_model(changed)
    assert np.abs(_ours(g2, state, ids) - ours).max() > 1e-2


def test_left_padded_batch_equals_unpadded_rows(pair):
    name, hf, cfg, graphdef, state = pair
    rows = [random_tokens(10 + i, (n,)).tolist() for i, n in enumerate((T, 23, 7))]
    ids, mask = left_pad(rows, T, pad_id=2)  # pad id is a real token id on purpose
    batch = _ours(graphdef, state, ids, mask)
    for i, row in enumerate(rows):
        alone = _ours(graphdef, state, np.array([row], np.int32))[0]
        # different shapes reduce in a different order: a few ulp at |logit| ~ 30
        np.testing.assert_allclose(batch[i, T - len(row) :], alone, atol=5e-5, rtol=0)
    # transformers agrees on the padded batch too (same mask and positions)
    ref = _hf_logits(hf, ids, mask)
    assert np.abs(np.where(mask[..., None], batch - ref, 0)).max() <= 1e-4


def test_kv_cache_decode_equals_full_forward(pair):
    """Prefill a left-padded prompt batch, decode one token at a time through the cache (as the
    sampler does, cache shared by G=2 samples per prompt), compare with one full forward."""
    name, hf, cfg, graphdef, state = pair
    prompts = [random_tokens(20, (9,)).tolist(), random_tokens(21, (4,)).tolist()]
    p, steps, g = 9, 6, 2
    ids, mask = left_pad(prompts, p, pad_id=0)
    cache = KVCache.init(cfg, batch=2, size=p + steps)
    logits, cache = _forward(
        graphdef, state, jnp.asarray(ids), positions_from_mask(mask), jnp.asarray(mask), cache
    )
    cache = cache.repeat(g)
    full_ids = np.repeat(ids, g, axis=0)
    full_mask = np.repeat(mask, g, axis=0)
    step_logits = [np.repeat(np.asarray(logits)[:, -1], g, axis=0)]
    nxt = random_tokens(22, (2 * g, steps))  # forced continuations, different per sample
    pos = np.asarray(positions_from_mask(mask))[:, -1].repeat(g)
    for s in range(steps - 1):
        tok = nxt[:, s : s + 1]
        pos = pos + 1
        out, cache = _forward(
            graphdef, state, jnp.asarray(tok), jnp.asarray(pos[:, None]), None, cache
        )
        step_logits.append(np.asarray(out)[:, 0])
        full_ids = np.concatenate([full_ids, tok], axis=1)
        full_mask = np.concatenate([full_mask, np.ones_like(tok, bool)], axis=1)
    full = _ours(graphdef, state, full_ids, full_mask)[:, p - 1 :]
    incremental = np.stack(step_logits, axis=1)
    err = np.abs(full - incremental).max()
    print(f"{name}: cache vs full max abs diff {err:.2e}")
    # fp32 rounding of two summation orders at |logit| ~ 20 (1e-6 relative); Qwen3's extra norm
    # per head measured 1.05e-5.
    assert err <= 2e-5


@pytest.mark.parametrize("t", [40, 130, 257])
def test_causal_blocks_equal_full_attention(t):
    """attention(causal=True), which reads only the keys up to each query block's end, equals the
    full masked attention (values and gradients) at every query with a real key; left padding
    included, block counts 1 (40: short sequences are not split), 5 (130: 4 x 32 + 2) and 8
    (257: 7 x 33 + 26)."""
    from rlvr_jax.models.transformer import attention, causal_blocks

    assert causal_blocks(40) == [(0, 40)]
    assert [b - a for a, b in causal_blocks(130)] == [32, 32, 32, 32, 2]
    assert len(causal_blocks(257)) == 8 and causal_blocks(257)[-1][1] == 257
    rng = np.random.default_rng(t)
    n, h, hkv, kd = 3, 6, 2, 8
    q, do = (jnp.asarray(rng.standard_normal((n, t, h, kd)), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.standard_normal((n, t, hkv, kd)), jnp.float32) for _ in range(2))
    pads = [0, 5, t // 2]  # left pads per row
    real = np.arange(t)[None, :] >= np.asarray(pads)[:, None]
    mask = jnp.asarray(np.tril(np.ones((t, t), bool))[None] & real[:, None, :])

    def run(causal):
        out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, mask, causal), q, k, v)
        return out, vjp(do * jnp.asarray(real, jnp.float32)[:, :, None, None])

    (full, g_full), (blocked, g_blocked) = run(False), run(True)
    sel = real[:, :, None, None]
    np.testing.assert_allclose(
        np.where(sel, blocked, 0), np.where(sel, full, 0), rtol=1e-5, atol=1e-5
    )
    for a, b in zip(g_blocked, g_full, strict=True):  # only real queries carry cotangents
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
