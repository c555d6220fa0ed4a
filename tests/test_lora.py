"""LoRA policies: adapters in the model state, trained alone, merged on export; the reference is
the base weights with the adapters off; the sampler runs on the adapted weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from conftest import random_tokens, with_random_adapters
from flax import nnx

from rlvr_jax import logprobs, memory, rollout, update
from rlvr_jax.models.config import ConfigError, LoraConfig, ModelConfig
from rlvr_jax.models.hf_io import load_hf, save_hf
from rlvr_jax.models.lora import merge_adapters, split_adapters
from rlvr_jax.models.transformer import abstract_model, forward, init_adapters, positions_from_mask

_forward = jax.jit(forward, static_argnums=0)


def _logits(graphdef, state, ids):
    ids = jnp.asarray(ids)
    mask = jnp.ones(ids.shape, bool)
    return np.asarray(_forward(graphdef, state, ids, positions_from_mask(mask), mask)[0])


@pytest.fixture(scope="module")
def qwen3(tiny_hf_dirs):
    """(cfg, state) of the tiny Qwen3 model (tied, head_dim 24) and its HF directory."""
    d = tiny_hf_dirs["qwen3_tied_hd24"]
    cfg, state = load_hf(d)
    return cfg, state, d


def test_fresh_adapters_are_the_base_model(qwen3):
    cfg, state, _ = qwen3
    lcfg = cfg.replace(lora=LoraConfig(4, 8.0))
    adapters = init_adapters(lcfg, seed=1)
    n_adapters = len(jax.tree.leaves(adapters))
    assert n_adapters == 2 * 7 * cfg.num_layers  # A and B on every target of every block
    assert all(float(jnp.abs(b[...]).max()) == 0.0 for b in jax.tree.leaves(adapters)[1::2])
    ids = random_tokens(0, (2, 24))
    base = _logits(abstract_model(cfg)[0], state, ids)
    fresh = _logits(abstract_model(lcfg)[0], nnx.merge_state(state, adapters), ids)
    np.testing.assert_array_equal(fresh, base)


def test_adapted_model_merges_and_exports_to_transformers(qwen3, tmp_path):
    """Adapters on every target (A and B random): the merged model computes what the adapted one
    does, and the HF export (merged) loads in transformers with the adapted model's logits."""
    from transformers import AutoModelForCausalLM

    from rlvr_jax.tokenizer import Tokenizer

    cfg, state, hf_dir = qwen3
    lcfg, lgraph, lstate = with_random_adapters(cfg, state, rank=4, alpha=8.0, seed=2)
    ids = random_tokens(3, (2, 30))
    adapted = _logits(lgraph, lstate, ids)
    base = _logits(abstract_model(cfg)[0], state, ids)
    assert np.abs(adapted - base).max() > 1.0  # the adapters matter far beyond the tolerance
    mcfg, merged = merge_adapters(lcfg, lstate)
    assert mcfg == cfg and mcfg.lora is None
    np.testing.assert_allclose(_logits(abstract_model(mcfg)[0], merged, ids), adapted, atol=1e-4)

    out = tmp_path / "hf"
    save_hf(out, lcfg, lstate, Tokenizer.from_dir(hf_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.abs(theirs).max() > 5.0
    np.testing.assert_allclose(theirs, adapted, atol=1e-4)
    # The export is a plain Qwen3 checkpoint: no adapter tensors, no LoRA in its config.
    cfg2, _ = load_hf(out)
    assert cfg2 == cfg


def test_base_part_is_the_same_arrays(qwen3):
    cfg, state, _ = qwen3
    lcfg, _, lstate = with_random_adapters(cfg, state)
    adapters, base = split_adapters(lstate)
    assert jax.tree.leaves(base) and all(
        a is b for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(state), strict=True)
    )
    ids = random_tokens(4, (1, 12))
    np.testing.assert_array_equal(
        _logits(abstract_model(cfg)[0], base, ids), _logits(abstract_model(cfg)[0], state, ids)
    )


def test_bad_lora_settings_are_one_line():
    with pytest.raises(ConfigError, match="lora.rank"):
        LoraConfig(0, 8.0)
    with pytest.raises(ConfigError, match="lora.targets: 'qkv'"):
        LoraConfig(4, 8.0, ("q", "qkv"))


# --------------------------------------------------------------------------- training


def _optim(**kw):
    c = dict(lr=5e-2, warmup_frac=0.0, min_lr_ratio=1.0, b1=0.9, b2=0.95, weight_decay=0.0)
    return ml_collections.ConfigDict({**c, "grad_clip": 1.0, **kw})


def test_one_update_trains_only_adapters_and_moves_the_sampler(qwen3):
    """One policy update of a LoRA policy: the weights stay bit-identical, the adapters move,
    Adam moments exist for the adapters only, and the sampler (same params tree) then samples
    from the updated policy, with its log-probs equal to the trainer's at rounding level."""
    cfg, state, _ = qwen3
    lcfg = cfg.replace(lora=LoraConfig(4, 8.0))
    graphdef = abstract_model(lcfg)[0]
    params = nnx.merge_state(state, init_adapters(lcfg, seed=0))
    opt = update.make_optimizer(_optim(), total_steps=10)
    keep = update.trainable_filter(lcfg.num_layers, lora=lcfg.lora)
    ts = update.init_train_state(params, opt, keep, jax.random.key(0))
    n_adapter = sum(x.size for x in jax.tree.leaves(split_adapters(params)[0]))
    n_all = sum(x.size for x in jax.tree.leaves(params))
    n_opt = sum(x.size for x in jax.tree.leaves(ts.opt_state) if x.ndim)
    assert n_opt == 2 * n_adapter and n_adapter < n_all // 10

    prompts = [random_tokens(5 + i, (n,)).tolist() for i, n in enumerate((6, 9, 4, 8))]
    ids, pmask, _ = rollout.pad_prompts(prompts, pad_id=0, buckets=(12,))
    sc = rollout.SamplingConfig(max_new_tokens=6, temperature=1.0)
    key = jax.random.key(7)
    before = rollout.generate(graphdef, ts.params, ids, pmask, key, sc, 2)
    tokens = jnp.concatenate([before.prompt_ids, before.tokens], 1)
    attn = jnp.concatenate([before.prompt_mask, before.mask], 1)
    adv = jnp.asarray(np.random.default_rng(0).standard_normal((8, 1)), jnp.float32) * before.mask
    batch = update.Batch(tokens, attn, before.mask, adv, before.logprobs)
    step = update.make_train_step(graphdef, opt, update.StepConfig(micro_batch=8), keep)
    base_before = jax.tree.map(np.asarray, split_adapters(ts.params)[1])
    ts, met = step(ts, batch)
    assert float(met["logp_drift"]) < 1e-5  # sampler vs trainer before the update
    adapters, base_after = split_adapters(ts.params)
    for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(base_after), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert max(float(jnp.abs(b).max()) for b in jax.tree.leaves(adapters)[1::2]) > 1e-3

    # The sampler reads the updated adapters: the same key now gives other log-probs ...
    after = rollout.generate(graphdef, ts.params, ids, pmask, key, sc, 2)
    same = np.asarray(before.mask & after.mask & (before.tokens == after.tokens))
    lp_change = np.abs(np.asarray(after.logprobs) - np.asarray(before.logprobs))[same]
    assert lp_change.size and lp_change.max() > 1e-2
    # ... which the trainer's forward pass reproduces to rounding.
    t2 = jnp.concatenate([after.prompt_ids, after.tokens], 1)
    a2 = jnp.concatenate([after.prompt_mask, after.mask], 1)
    lp = logprobs.token_logprobs(graphdef, ts.params, t2, a2, 6)
    drift = np.abs(np.asarray(lp) - np.asarray(after.logprobs))[np.asarray(after.mask)]
    print(f"sampler/trainer drift after one update: {drift.max():.2e}")
    assert drift.max() < 1e-5


def test_memory_plan_counts_adapters_only():
    """SmolLM2-135M's shape (no weights needed): with LoRA the optimizer and gradients cover the
    adapters, and the reference costs nothing (it is the policy's base weights)."""
    cfg = ModelConfig("llama", 49152, 576, 1536, 30, 9, 3, 64, tie_word_embeddings=True)
    run = memory.RunShape(prompts=4, group=4, prompt_len=256, completion_len=128, micro_batch=8)
    full = memory.plan_memory(cfg, run, (1, 1, 1))
    lcfg = cfg.replace(lora=LoraConfig(16, 32.0))
    lora = memory.plan_memory(lcfg, run, (1, 1, 1))
    # rank 16 on q,k,v,o,gate,up,down: per block 16 * (in + out) for each product
    d, h, kv, k, f = 576, 9, 3, 64, 1536
    per_block = 16 * ((d + h * k) * 2 + 2 * (d + kv * k) + 2 * (d + f) + (f + d))
    n_adapter = 30 * per_block
    assert lora.terms["optimizer"] == 2 * 4 * n_adapter
    # one fp32 gradient of the adapters and its accumulator over the 2 micro-batches
    assert lora.terms["grads"] == 2 * 4 * n_adapter
    assert lora.terms["reference"] == 0 and full.terms["reference"] == full.terms["params"]
    assert full.terms["optimizer"] > 20 * lora.terms["optimizer"]  # 134.5M against 4.9M
    assert lora.terms["params"] == full.terms["params"] + 4 * n_adapter
    assert "LoRA rank 16" in lora.table() and "no copy" in lora.table()
