"""Prompt sharing (`optim.share_prompts`): a group's prompt runs once, its rows attend to its KV
cache; log-probs, entropies, gradients and the reference pass equal the unshared pass."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import random_model

from rlvr_jax import builders, logprobs, update
from rlvr_jax.models import ModelConfig

CFG = ModelConfig("llama", 256, 64, 128, 2, 4, 2, 16, rope_theta=1e5, tie_word_embeddings=True)
B, G, P, L = 3, 4, 7, 6
N = B * G


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, scale=0.05)


@pytest.fixture(scope="module")
def batch():
    """B left-padded prompts repeated G times (a rollout's layout), completions of different
    lengths with pad tokens after their end."""
    rng = np.random.default_rng(1)
    prompts = rng.integers(0, CFG.vocab_size, (B, P)).astype(np.int32)
    pmask = np.arange(P)[None] >= np.array([0, 2, 4])[:, None]
    prompts[~pmask] = 0
    comp = rng.integers(0, CFG.vocab_size, (N, L)).astype(np.int32)
    lengths = rng.integers(1, L + 1, N)
    cmask = np.arange(L)[None] < lengths[:, None]
    comp[~cmask] = 0
    tokens = np.concatenate([np.repeat(prompts, G, 0), comp], 1)
    attn = np.concatenate([np.repeat(pmask, G, 0), cmask], 1)
    adv = rng.standard_normal((N, 1)).astype(np.float32) * cmask
    return jnp.asarray(tokens), jnp.asarray(attn), jnp.asarray(cmask), jnp.asarray(adv)


def test_shared_logprobs_and_entropy_equal_unshared(model, batch):
    graphdef, params = model
    tokens, attn, _, _ = batch
    fn = jax.jit(logprobs.token_logprobs_and_entropy, static_argnums=(0, 4, 5, 6, 7, 8, 9))
    want_lp, want_ent = fn(graphdef, params, tokens, attn, L, 0.8, None, True, False, 1)
    for group, chunk, remat in ((G, None, False), (2, 3, True)):
        lp, ent = fn(graphdef, params, tokens, attn, L, 0.8, chunk, True, remat, group)
        np.testing.assert_allclose(lp, want_lp, atol=2e-5)
        np.testing.assert_allclose(ent, want_ent, atol=2e-5)


def test_shared_reference_pass_equals_unshared(model, batch):
    graphdef, params = model
    tokens, attn, _, _ = batch
    want = logprobs.make_ref_logprobs(graphdef)(params, tokens, attn, L)
    got = logprobs.make_ref_logprobs(graphdef, group=G)(params, tokens, attn, L)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # A batch whose rows are not whole groups falls back to the unshared pass.
    odd = logprobs.make_ref_logprobs(graphdef, group=5)(params, tokens, attn, L)
    np.testing.assert_allclose(odd, want, atol=2e-5)


@pytest.mark.parametrize("micro", [N, G])
def test_shared_gradients_equal_unshared(model, batch, micro):
    graphdef, params = model
    tokens, attn, mask, adv = batch
    logp_old = logprobs.make_ref_logprobs(graphdef)(params, tokens, attn, L) + 0.05 * mask
    b = update.Batch(tokens, attn, mask, adv, logp_old, logp_old - 0.1)
    everything = update.trainable_filter(CFG.num_layers)
    out = []
    for group in (1, G):
        cfg = update.StepConfig(micro_batch=micro, kl_coef=0.05, group=group)
        fn = jax.jit(lambda p, bb, cfg=cfg: update.loss_and_grads(graphdef, p, bb, cfg, everything))
        out.append(fn(params, b))
    (g1, m1), (g2, m2) = out
    assert float(jnp.abs(jnp.asarray(jax.tree.leaves(g1)[0])).max()) > 0
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, c, atol=1e-6, rtol=2e-4)
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], atol=2e-5, rtol=1e-4)


def test_micro_batch_must_hold_whole_groups(model, batch):
    graphdef, params = model
    tokens, attn, mask, adv = batch
    b = update.Batch(tokens, attn, mask, adv, jnp.zeros_like(adv * mask))
    cfg = update.StepConfig(micro_batch=6, group=G)
    with pytest.raises(ValueError, match="micro_batch=6 is not a multiple of group=4"):
        update.loss_and_grads(graphdef, params, b, cfg, update.trainable_filter(CFG.num_layers))


def test_prompt_group_from_config():
    c = ml_collections.ConfigDict(
        dict(rollout=dict(prompts_per_step=4, samples_per_prompt=4), optim=dict(share_prompts=True))
    )
    assert builders.prompt_group(c) == 4
    assert builders.prompt_group(c, train_batch=16, micro_batch=8) == 4
    assert builders.prompt_group(c, train_batch=8, micro_batch=8) == 1  # shuffled mini-batches
    assert builders.prompt_group(c, train_batch=16, micro_batch=6) == 1  # groups would split
    c.optim.share_prompts = False
    assert builders.prompt_group(c) == 1
