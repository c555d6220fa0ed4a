"""rlvr_jax.update on a tiny random model (D=64, 2 layers, V=256), fp32."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import random_model

from rlvr_jax import logprobs, update
from rlvr_jax.models import ModelConfig
from rlvr_jax.models.transformer import forward, positions_from_mask

CFG = ModelConfig("llama", 256, 64, 128, 2, 4, 2, 16, rope_theta=1e5, tie_word_embeddings=True)
N, P, L = 8, 6, 5


def optim_cfg(**kw):
    c = dict(
        lr=1e-2, warmup_frac=0.0, min_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.0, grad_clip=1.0
    )
    c.update(kw)
    return ml_collections.ConfigDict(c)


@pytest.fixture(scope="module")
def model():
    return random_model(CFG)


def fresh_copy(params):
    return jax.tree.map(jnp.copy, params)


@pytest.fixture(scope="module")
def trainer(model):
    """One compiled train step shared by several tests (compiles dominate this file's time):
    top block only (plus final norm), weight decay on, micro-batches of 4."""
    graphdef, _ = model
    ocfg = optim_cfg(weight_decay=0.1)
    opt = update.make_optimizer(ocfg, total_steps=100)
    keep = update.trainable_filter(CFG.num_layers, train_layers=1)
    sched = update.make_schedule(ocfg, total_steps=100)
    step = update.make_train_step(graphdef, opt, update.StepConfig(micro_batch=4), keep, sched)
    return opt, keep, step


@pytest.fixture(scope="module")
def batch(model):
    graphdef, params = model
    k1, k2 = jax.random.split(jax.random.key(1))
    tokens = jax.random.randint(k1, (N, P + L), 0, CFG.vocab_size, jnp.int32)
    # Left-padded prompts of different lengths; completions of different lengths.
    prompt_mask = jnp.arange(P)[None] >= jnp.array([0, 1, 2, 0, 3, 0, 1, 2])[:, None]
    mask = jnp.arange(L)[None] < jnp.array([5, 3, 1, 5, 4, 2, 5, 3])[:, None]
    attn_mask = jnp.concatenate([prompt_mask, mask], axis=1)
    logp = jax.jit(logprobs.token_logprobs, static_argnums=(0, 4))(
        graphdef, params, tokens, attn_mask, L
    )
    adv = jax.random.normal(k2, (N,))[:, None] * mask
    return update.Batch(tokens, attn_mask, mask, adv, logp)


@functools.partial(jax.jit, static_argnums=(0,))
def naive_logprobs(graphdef, params, tokens, attn_mask, temperature=1.0):
    logits, _ = forward(graphdef, params, tokens, positions_from_mask(attn_mask), attn_mask)
    logsm = jax.nn.log_softmax(logits / temperature, axis=-1)  # [N,T,V]
    # Position t predicts token t+1; completion tokens are the last L.
    return jnp.take_along_axis(logsm[:, P - 1 : -1], tokens[:, P:, None], axis=-1)[..., 0], logsm


def test_logprobs_match_log_softmax_gather(model, batch):
    graphdef, params = model
    # Chunked head (2 positions at a time) at temperature 0.7 vs one full log-softmax.
    want, logsm = naive_logprobs(graphdef, params, batch.tokens, batch.attn_mask, 0.7)
    got, ent = jax.jit(logprobs.token_logprobs_and_entropy, static_argnums=(0, 4, 5, 6))(
        graphdef, params, batch.tokens, batch.attn_mask, L, 0.7, 2
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    plain, _ = naive_logprobs(graphdef, params, batch.tokens, batch.attn_mask, 1.0)
    np.testing.assert_allclose(batch.logp_old, plain, atol=1e-5)
    want_ent = -jnp.sum(jnp.exp(logsm) * logsm, axis=-1)[:, P - 1 : -1]
    np.testing.assert_allclose(ent, want_ent, atol=1e-4)


def test_micro_batch_accumulation_equals_one_batch(model, batch):
    # Per-aggregation splitting is checked in test_losses; token_mean is the common case here.
    graphdef, params = model
    ref = fresh_copy(params)
    logp_ref = logprobs.make_ref_logprobs(graphdef)(ref, batch.tokens, batch.attn_mask, L) - 0.1
    b = batch.replace(logp_ref=logp_ref)
    everything = update.trainable_filter(CFG.num_layers)
    results = []
    for mb in (N, 2):
        cfg = update.StepConfig(micro_batch=mb, kl_coef=0.05)
        fn = jax.jit(lambda p, bb, cfg=cfg: update.loss_and_grads(graphdef, p, bb, cfg, everything))
        results.append(fn(params, b))
    (g1, m1), (g4, m4) = results
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g4), strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g1)) > 1e-4  # not trivially 0
    for key in ("loss", "clip_frac", "entropy", "kl_ref"):
        np.testing.assert_allclose(m1[key], m4[key], rtol=1e-5, atol=1e-7)
    # logp_old was computed from these params by another jitted program: the drift is rounding
    # only (0 or about 1e-6, as XLA happens to fuse each shape), nothing clipped.
    for m in (m1, m4):
        assert float(m["logp_drift"]) < 1e-5 and float(m["clip_frac"]) == 0.0


def run_steps(model, batch, n_steps, opt, keep, step):
    _, params = model
    state = update.init_train_state(fresh_copy(params), opt, keep, jax.random.key(0))
    mets = []
    for _ in range(n_steps):
        state, met = step(state, batch)
        mets.append(jax.device_get(met))
    return state, mets


def test_loss_decreases_on_a_fixed_batch(model, batch, trainer):
    state, mets = run_steps(model, batch, 6, *trainer)
    loss = [float(m["loss"]) for m in mets]
    assert loss[-1] < loss[0] - 0.05, loss
    assert int(state.step) == 6 and int(state.nonfinite_total) == 0
    assert float(mets[0]["grad_norm"]) > 0 and all(np.isfinite(m["grad_norm"]) for m in mets)
    # Step 0 uses the warmup-free schedule's peak; the schedule is reported.
    np.testing.assert_allclose(mets[0]["lr"], 1e-2, rtol=1e-6)


def test_frozen_layers_are_unchanged(model, batch, trainer):
    _, params = model
    state, _ = run_steps(model, batch, 2, *trainer)
    new = state.params
    np.testing.assert_array_equal(new["embed"][...], params["embed"][...])
    for a, c in zip(
        jax.tree.leaves(new["layers"][0]), jax.tree.leaves(params["layers"][0]), strict=True
    ):
        np.testing.assert_array_equal(a, c)
    assert not np.allclose(
        new["layers"][1]["mlp"]["up"][...], params["layers"][1]["mlp"]["up"][...]
    )
    assert not np.allclose(new["final_norm"]["scale"][...], params["final_norm"]["scale"][...])
    # Adam moments exist only for the trained parameters.
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    n_top = sum(x.size for x in jax.tree.leaves(new["layers"][1])) + CFG.hidden_size
    assert n_opt <= 2 * n_top + 10


def test_nonfinite_batch_is_skipped_and_counted(model, batch, trainer):
    opt, keep, step = trainer
    state = update.init_train_state(fresh_copy(model[1]), opt, keep, jax.random.key(0))
    bad = batch.replace(advantages=batch.advantages.at[0, 0].set(jnp.nan))
    before = jax.device_get(state.params)
    for i in (1, 2):
        state, met = step(state, bad)
        assert int(met["nonfinite"]) == 1 and int(met["nonfinite_streak"]) == i
    assert int(state.step) == 0 and int(state.nonfinite_total) == 2
    for a, c in zip(jax.tree.leaves(before), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, c)
    state, met = step(state, batch)
    assert int(met["nonfinite"]) == 0 and int(state.nonfinite_streak) == 0
    assert int(state.step) == 1 and int(state.nonfinite_total) == 2


def test_schedule_warmup_cosine_floor():
    sched = update.make_schedule(optim_cfg(lr=1.0, warmup_frac=0.1), total_steps=100)
    # Linear warmup to 1 over 10 steps, cosine over the next 90 down to 0.1.
    for t, want in [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.55), (100, 0.1), (150, 0.1)]:
        assert math.isclose(float(sched(t)), want, abs_tol=1e-6), (t, float(sched(t)))


def test_step_config_fields_come_from_the_config():
    """rl.clip_eps_high, rl.norm_len and optim.logit_chunk reach the train step; 0 means off."""
    from configs import tiny
    from rlvr_jax import builders

    c = tiny.get_config("dr_grpo")
    sc = builders.step_config(c, 8)
    assert (sc.clip_eps_high, sc.norm_len, sc.logit_chunk) == (None, None, None)
    assert sc.agg == "seq_sum" and sc.micro_batch == 8
    c.rl.clip_eps_high, c.rl.norm_len, c.optim.logit_chunk = 0.28, 96, 2
    sc = builders.step_config(c, 8)
    assert (sc.clip_eps_high, sc.norm_len, sc.logit_chunk) == (0.28, 96, 2)


def test_remat_recomputes_blocks_with_the_same_gradients(model, batch):
    """optim.remat recomputes each block in the backward pass: the same loss and gradients."""
    graphdef, params = model
    keep = lambda path, x: True
    out = [
        jax.jit(lambda p, b, r=r: update.loss_and_grads(
            graphdef, p, b, update.StepConfig(micro_batch=4, remat=r), keep
        ))(params, batch)
        for r in (False, True)
    ]  # fmt: skip
    (g0, m0), (g1, m1) = out
    np.testing.assert_allclose(float(m1["loss"]), float(m0["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    from configs import tiny
    from rlvr_jax import builders

    c = tiny.get_config()
    c.optim.remat = True
    assert builders.step_config(c, 8).remat
