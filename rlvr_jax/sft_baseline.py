"""The paper's SFT baseline: a short supervised fine-tune of the policy on the training questions'
reference answers, run by the RL loop (`train.mode = "sft"`) with the same budget, hooks and
held-out evaluation as an RL run.

Each step takes the step's B prompts (the same data stream as RL), writes each reference as the
completion (`train.sft_target`, e.g. "Therefore, the answer is {}.", then the end-of-turn token),
repeated G times so that the batch has RL's shape [N = B*G, T], and applies one update of the
policy loss with advantage 1 on every completion token and the current policy as the sampler.
At ratio 1 that loss's gradient is the negative log-likelihood's, -mean_t grad log p(y_t), so
update.py's train step is the SFT step, with its optimiser, clipping and micro-batching.
"""

from __future__ import annotations

import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from rlvr_jax import builders, update
from rlvr_jax import multihost as mh


def target_ids(run: Any, examples: list, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Completion ids [B, L] (right-padded) and mask [B, L] of the examples' references."""
    tok = run.policy.tokenizer
    eos = tok.hf.eos_token_id if getattr(tok, "hf", None) is not None else None
    eos = eos if eos is not None else tok.stop_ids[0]
    fmt = str(run.cfg.train.sft_target)
    ids = np.full((len(examples), length), tok.pad_id, np.int32)
    mask = np.zeros((len(examples), length), bool)
    for i, ex in enumerate(examples):
        seq = (tok.encode(fmt.format(ex.reference)) + [eos])[:length]
        ids[i, : len(seq)], mask[i, : len(seq)] = seq, True
    return ids, mask


def sft_step(run: Any, state: update.TrainState, step: int) -> tuple[update.TrainState, dict]:
    """One supervised update on this step's references; returns the new state and metrics."""
    del step
    cfg = run.cfg
    g = int(cfg.rollout.samples_per_prompt)
    examples = next(run.train_it)
    pids, pmask, _ = builders.policy_prompts(cfg, run.policy.tokenizer, examples)
    big_l = int(cfg.rollout.max_new_tokens)
    cids, cmask = target_ids(run, examples, big_l)
    rep = lambda x: jnp.asarray(np.repeat(x, g, axis=0))
    tokens = rep(np.concatenate([pids, cids], axis=1))
    attn = rep(np.concatenate([pmask, cmask], axis=1))
    mask = rep(cmask)
    t0 = time.perf_counter()
    logp = run.ref_logprobs(state.params, tokens, attn, big_l)  # the current policy's
    adv = mask.astype(jnp.float32)
    batch = update.Batch(tokens, attn, mask, adv, logp, None)
    state, m = run.train_step(state, batch)
    m = mh.tree_to_host(m)
    mf = np.asarray(mask, np.float32)
    out = {f"train/{k}": float(np.asarray(v)) for k, v in m.items()}
    out["sft/nll"] = float(-(mh.to_host(logp) * mf).sum() / max(mf.sum(), 1.0))
    out["rollout/response_len"] = float(mf.sum(1).mean())
    out["time/update_s"] = time.perf_counter() - t0
    return state, out
