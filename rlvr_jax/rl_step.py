"""One RL step, one call per stage: data -> rollout -> judge -> reference -> advantages -> update.

Each stage is a function of the run (`run.Run`), the train state and the previous stages' outputs;
`rl_step` chains them and `step_metrics` turns their outputs into the step's metrics record. The
math lives below (rollout, judge, losses, update, minibatch); this module only passes arrays on.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import builders, guards, losses, minibatch, rollout_log, update
from rlvr_jax import multihost as mh
from rlvr_jax.judge.likelihood import std_filter
from rlvr_jax.judge.scoring import neither_rate
from rlvr_jax.rollout import Rollout, completions_from, generate


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


@dataclasses.dataclass
class Judged:
    """The judge stage's output for N = B*G rollout rows.

    scores: {score name: [N]} from `RewardRunner.score`; rewards [N] fp32, the optimised one;
    keep [N] bool, rows of prompts that stay in the update (RLPR's filter); mask [N, L], the
    completion tokens the update trains on.
    """

    scores: dict[str, np.ndarray]
    rewards: jax.Array
    keep: np.ndarray
    mask: jax.Array


def rollout_stage(run: Any, state: update.TrainState, examples: list, key: jax.Array):
    """B examples -> (Rollout of N = B*G rows, their N response texts, seconds)."""
    cfg, tok = run.cfg, run.policy.tokenizer
    ids, pmask, _ = builders.policy_prompts(cfg, tok, examples)
    ro, secs = _timed(
        lambda: generate(
            run.policy.graphdef,
            run.sample_params(state.params),
            ids,
            pmask,
            key,
            builders.sampling_config(cfg),
            int(cfg.rollout.samples_per_prompt),
            stop_ids=tok.stop_ids,
            pad_id=tok.pad_id,
        )
    )
    # The whole rollout on every process (a gather across processes): see multihost.py.
    return ro, [c.text for c in completions_from(ro, tok)], secs


def judge_stage(
    run: Any, state: update.TrainState, rows: list, responses: list[str], ro: Rollout
) -> Judged:
    """Every reward of the N responses, the optimised one, and which rows the update keeps."""
    g = int(run.cfg.rollout.samples_per_prompt)
    scores = run.rewards.score(
        rows,
        responses,
        ~mh.to_host(ro.stopped),
        policy_params=state.params,
        reference_params=run.reference_params(state),
    )
    rewards = jnp.asarray(scores[run.rewards.key], jnp.float32)
    # RLPR's filter: prompts whose rewards barely vary leave the update (their completion tokens
    # are masked out), instead of having their noise z-scored into full-size advantages.
    keep = std_filter(np.asarray(rewards), g, float(run.cfg.judge.get("rlpr_filter", 0.0)))
    mask = ro.mask if keep.all() else ro.mask & jnp.asarray(keep)[:, None]
    return Judged(scores, rewards, keep, mask)


def sequences(ro: Rollout) -> tuple[jax.Array, jax.Array]:
    """Prompt + completion tokens [N, T] and their attention mask [N, T]."""
    tokens = jnp.concatenate([ro.prompt_ids, ro.tokens], axis=1)
    return tokens, jnp.concatenate([ro.prompt_mask, ro.mask], axis=1)


def reference_stage(run: Any, state: update.TrainState, ro: Rollout):
    """The reference policy's log-probs of the completions [N, L] (None without a KL term, which
    is the only reader), and seconds."""
    if float(run.cfg.rl.beta) <= 0:
        return None, 0.0
    tokens, attn = sequences(ro)
    big_l = ro.tokens.shape[1]
    return _timed(run.ref_logprobs, run.reference_params(state), tokens, attn, big_l)


def advantage_stage(run: Any, ro: Rollout, judged: Judged, logp_ref: jax.Array | None):
    """Per-token advantages [N, L] from the rewards (losses.compute_advantages)."""
    rl = run.cfg.rl
    return losses.compute_advantages(
        str(rl.algo),
        judged.rewards,
        int(run.cfg.rollout.samples_per_prompt),
        ro.logprobs,
        logp_ref,
        judged.mask,
        float(rl.beta),
        str(rl.kl_mode) if logp_ref is not None else "none",
        str(rl.norm),
    )


def update_stage(
    run: Any, state: update.TrainState, ro: Rollout, judged: Judged, adv, logp_ref, key
):
    """The rollout's optimizer steps (minibatch.run_steps): (new state, step metrics, seconds)."""
    rl = run.cfg.rl
    tokens, attn = sequences(ro)
    batch = update.Batch(
        tokens, attn, judged.mask, adv, ro.logprobs, logp_ref if rl.kl_mode == "loss" else None
    )
    t0 = time.perf_counter()
    # The shuffle key derives from the rollout key: a resumed run shuffles exactly as before.
    order = minibatch.shuffled_order(
        jax.random.fold_in(key, 1), batch.tokens.shape[0], run.train_batch, int(rl.ppo_epochs)
    )
    state, m = minibatch.run_steps(run.train_step, state, batch, order)
    return state, m, time.perf_counter() - t0


def rl_step(run: Any, state: update.TrainState, step: int) -> tuple[update.TrainState, dict]:
    """One rollout + update; returns the new state and this step's metrics."""
    g = int(run.cfg.rollout.samples_per_prompt)
    examples = next(run.train_it)
    key = jax.random.fold_in(jax.random.PRNGKey(run.cfg.seed), step)
    ro, responses, t_roll = rollout_stage(run, state, examples, key)
    rows = [ex for ex in examples for _ in range(g)]
    judged = judge_stage(run, state, rows, responses, ro)
    logp_ref, t_ref = reference_stage(run, state, ro)
    adv = advantage_stage(run, ro, judged, logp_ref)
    if run.cfg.train.get("log_rollouts", False) and mh.is_main():
        log_rollouts(run, step + 1, examples, responses, ro, judged, adv)
    state, m, t_update = update_stage(run, state, ro, judged, adv, logp_ref, key)
    times = {
        "rollout": t_roll,
        "judge": run.rewards.times["judge"],
        "likelihood": run.rewards.times["likelihood"],
        "reference": t_ref,
        "update": t_update,
    }
    return state, step_metrics(run, state, examples, ro, judged, logp_ref, m, times)


def log_rollouts(run, step, examples, responses, ro: Rollout, judged: Judged, adv) -> None:
    """The step's rollouts with every reward's score (rollout_log.py)."""
    mask = mh.to_host(ro.mask)
    first = np.argmax(mask, axis=1)  # the response's first token (0 for an empty one)
    a = np.asarray(mh.to_host(adv))[np.arange(len(first)), first]
    rollout_log.write(
        run.workdir, step, examples, responses, ~mh.to_host(ro.stopped), mask.sum(1),
        np.asarray(judged.rewards), a, judged.scores,
    )  # fmt: skip


def step_metrics(
    run: Any,
    state: update.TrainState,
    examples: list,
    ro: Rollout,
    judged: Judged,
    logp_ref: jax.Array | None,
    m: dict,
    times: dict[str, float],
) -> dict:
    """The step's metrics record: rewards, KL, update, rollout, guards and stage timings."""
    cfg, scores, rewards = run.cfg, judged.scores, judged.rewards
    g, n_epochs = int(cfg.rollout.samples_per_prompt), int(cfg.rl.ppo_epochs)
    mf = mh.to_host(ro.mask).astype(np.float32)
    n_tok = float(mf.sum())
    skip = ("judge_truncated", "judge_verdict")
    out = {f"reward/{k}": float(np.mean(v)) for k, v in scores.items() if k not in skip}
    if "judge_verdict" in scores:  # first token neither YES nor NO: soft and binary are 0
        out["judge/neither_rate"] = neither_rate(scores["judge_verdict"])
    out["reward/nonfinite"] = int((~np.isfinite(np.asarray(rewards))).sum())
    out.update(
        {
            f"reward/{k}": float(v)
            for k, v in jax.device_get(losses.reward_stats(rewards, g)).items()
        }
    )
    out["reward/kept_prompts"] = float(judged.keep.reshape(-1, g)[:, 0].mean())
    out["reward/raw_mean"] = float(rewards.mean())
    out["reward/raw_std"] = float(rewards.std())
    out["reward/normalized_std"] = float(
        np.std(np.asarray(losses.normalize_rewards(rewards, g, str(cfg.rl.norm))))
    )
    if logp_ref is not None:
        k1 = (mh.to_host(ro.logprobs) - mh.to_host(logp_ref)) * mf
        out["kl/mean"] = float(k1.sum() / max(n_tok, 1.0))
    # Step metrics averaged over the rollout's optimizer steps; logp_drift is the first step's,
    # measured before the policy moved (see minibatch.run_steps).
    out.update({f"train/{k}": float(np.asarray(v)) for k, v in m.items()})
    out["train/opt_step_total"] = int(mh.to_host(state.step))  # updates applied in the run
    out["rollout/response_len"] = float(mf.sum(1).mean())
    out["rollout/truncation_rate"] = float(1.0 - mh.to_host(ro.stopped).mean())
    out["judge/truncated_prompts"] = float(scores.get("judge_truncated", np.zeros(1)).sum())
    out.update(guards.step_metrics(run.rewards, examples, cfg.train.guards.probes))
    seq_tok = float(mh.to_host(sequences(ro)[1]).sum())  # tokens a forward pass reads
    done = {
        "rollout": n_tok,
        "judge": len(mf),
        "likelihood": len(mf),
        "reference": seq_tok,
        "update": seq_tok * n_epochs,
    }
    for name, secs in times.items():
        out[f"time/{name}_s"] = secs
        if secs > 0:  # judge, likelihood: responses scored per second; the others: tokens/s
            unit = "rows" if name in ("judge", "likelihood") else "tokens"
            out[f"time/{name}_{unit}_per_s"] = done[name] / secs
    return out
