"""`python -m rlvr_jax.train --config configs/econ.py [--config.KEY=VALUE ...] [--workdir DIR]`

One RL run: data -> rollout (G samples per prompt) -> judge, likelihood and rule rewards ->
advantages -> reference log-probs -> clipped policy updates -> metrics, with orbax checkpoints
every k steps.
Rerunning with an existing workdir resumes from its last checkpoint and continues exactly as an
uninterrupted run would (the rollout key of step s is fold_in(seed, s); the data position and
the whole TrainState are checkpointed). This file orchestrates; the math lives in losses/update.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_flags

from rlvr_jax import (
    builders,
    checkpoint,
    data,
    guards,
    heldout,
    host_memory,
    likelihood,
    losses,
    memory,
    minibatch,
    sft_baseline,
    update,
)
from rlvr_jax import mesh as mesh_lib
from rlvr_jax import multihost as mh
from rlvr_jax.builders import RewardRunner
from rlvr_jax.cpu_meter import page_faults
from rlvr_jax.hooks import HookContext, Hooks
from rlvr_jax.metrics import CompileMeter, MetricsWriter, plot_curves
from rlvr_jax.models.config import ConfigError
from rlvr_jax.models.lora import split_adapters
from rlvr_jax.models.transformer import abstract_model
from rlvr_jax.reward import neither_rate
from rlvr_jax.rollout import generate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config (a Python file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_MESH = flags.DEFINE_string("mesh", None, "Mesh DATA,FSDP,TENSOR (overrides config mesh.shape).")


class RunStopped(RuntimeError):
    """The run stopped on purpose (e.g. too many non-finite updates); a checkpoint was written."""


@dataclasses.dataclass
class Run:
    """Everything built once per run."""

    cfg: Any
    workdir: Path
    mesh: jax.sharding.Mesh
    policy: Any  # LoadedModel
    ref_params: Any  # None for a LoRA policy: its reference is its own base weights
    rewards: RewardRunner
    train_it: data.BatchIterator
    test_examples: list
    train_step: Any
    ref_logprobs: Any
    step_cfg: update.StepConfig
    train_batch: int  # rollout rows per optimizer step
    evals: RewardRunner | None = None  # the held-out evaluation's judge (heldout.eval_rewards)
    trainable: update.Filter = lambda path, x: True

    def reference_params(self, state: update.TrainState) -> Any:
        """The reference policy's params: the initial policy's copy, or a LoRA policy's base
        weights (the arrays of `state`, adapters left out: no copy, and no sync to get wrong)."""
        if self.ref_params is not None:
            return self.ref_params
        return split_adapters(state.params)[1]

    def sample_params(self, params: Any) -> Any:
        """Params in the sampling layout: whole over fsdp (decode would otherwise all-gather every
        weight at every token); the same arrays when the two layouts agree (fsdp = 1)."""
        if self.mesh.shape["fsdp"] == 1:
            return params
        return mesh_lib.reshard(params, self.mesh, mesh_lib.SAMPLE_RULES)


# --------------------------------------------------------------------------- checkpoints


def _ckpt_dir(workdir: Path) -> Path:
    return workdir / "checkpoints"


def latest_checkpoint(workdir: Path) -> int | None:
    """The newest complete checkpoint step (orbax renames a finished write into place), as
    process 0 sees it: every process resumes from the same step."""
    return mh.from_main(checkpoint.latest_step(_ckpt_dir(workdir)))


def _saved_part(run: Run, state: update.TrainState) -> update.TrainState:
    """The part of the state a checkpoint holds: all but the frozen params (LoRA: the adapters
    and their optimizer state), which the run rebuilds as it started."""
    return state.replace(params=update.split_trainable(state.params, run.trainable)[0])


def save_checkpoint(run: Run, state: update.TrainState, step: int) -> None:
    """Save the state after RL step `step` (a loop step: with several optimizer steps per
    rollout, or skipped non-finite updates, it differs from state.step, which counts applied
    updates)."""
    leaves = jax.tree.leaves(_saved_part(run, state))
    tree = {
        "state": leaves,
        "data": {k: np.asarray(v, np.int64) for k, v in run.train_it.state().items()},
    }
    checkpoint.save_step(_ckpt_dir(run.workdir), step, tree, int(run.cfg.train.keep_ckpts))


def restore_checkpoint(run: Run, state: update.TrainState, step: int) -> update.TrainState:
    frozen = update.split_trainable(state.params, run.trainable)[1]
    leaves, treedef = jax.tree.flatten(_saved_part(run, state))
    abstract = {
        "state": [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for x in leaves],
        "data": {k: jax.ShapeDtypeStruct((), np.int64) for k in run.train_it.state()},
    }
    tree = checkpoint.restore_pytree(_ckpt_dir(run.workdir) / str(step), abstract)
    run.train_it.restore({k: int(v) for k, v in tree["data"].items()})
    saved = jax.tree.unflatten(treedef, tree["state"])
    return saved.replace(params=nnx.merge_state(saved.params, frozen))


# --------------------------------------------------------------------------- building


def _plan_args(cfg: Any, mesh: jax.sharding.Mesh) -> tuple:
    policy_cfg, judge_cfg = builders.model_configs(cfg)
    return policy_cfg, memory.RunShape.from_config(cfg), mesh, judge_cfg


def _on_mesh(x: jax.Array, mesh: jax.sharding.Mesh) -> jax.sharding.Sharding:
    """x's sharding if it is already laid out on `mesh`, else replicated over it (scalars, keys)."""
    s = x.sharding
    if isinstance(s, NamedSharding) and s.mesh == mesh:
        return s
    return NamedSharding(mesh, PartitionSpec())


def build(cfg: Any, workdir: Path, mesh_flag: str | None = None) -> tuple[Run, update.TrainState]:
    mesh = builders.build_mesh(cfg, mesh_flag)
    # Plan memory per device before loading or compiling anything: a run that cannot fit stops
    # here with the largest term named, not in an out-of-memory error minutes later.
    plan = memory.plan_memory(*_plan_args(cfg, mesh))
    if mh.is_main():
        (workdir / "memory_plan.txt").write_text(plan.table() + "\n")
    memory.check_fits(plan, memory.device_memory_bytes())
    policy = builders.build_policy(cfg, mesh)
    train = builders.build_examples(cfg, "train")
    print(train.summary(), file=sys.stderr)
    train_ex, dropped = data.drop_long_prompts(
        train.examples, policy.tokenizer, int(cfg.rollout.max_prompt_len), str(cfg.data.bad_rows)
    )
    test_ex = builders.build_examples(cfg, "test").examples[: int(cfg.train.eval_prompts) or None]
    b = int(cfg.rollout.prompts_per_step)
    # Every process iterates the whole global batch (not a 1/process_count share): the judge and
    # the host-side rewards need every row on every process (see multihost.py), and the batches
    # are then those of one process whatever the process count.
    train_it = data.BatchIterator(train_ex, b, int(cfg.seed))
    n = b * int(cfg.rollout.samples_per_prompt)
    train_batch, micro = minibatch.resolve_train_batch(
        n, int(cfg.rl.train_batch), int(cfg.optim.micro_batch)
    )
    # The schedule counts optimizer steps: several per rollout with train_batch < n or epochs > 1.
    steps = int(cfg.train.steps) * minibatch.steps_per_rollout(
        n, train_batch, int(cfg.rl.ppo_epochs)
    )
    optimizer = update.make_optimizer(cfg.optim, steps)
    lora = policy.cfg.lora is not None
    trainable = update.trainable_filter(
        policy.cfg.num_layers, int(cfg.optim.train_layers), policy.cfg.lora
    )
    # The reference policy is the initial one: a copy that the donated train state cannot alias,
    # or for a LoRA policy the base weights in the train state, under the base model's graphdef.
    ref_params = None if lora else jax.tree.map(jnp.copy, policy.state)
    ref_graphdef = abstract_model(policy.cfg.replace(lora=None))[0] if lora else policy.graphdef
    state = update.init_train_state(
        policy.state, optimizer, trainable, jax.random.PRNGKey(cfg.seed)
    )
    step_cfg = update.StepConfig(
        micro_batch=micro,
        clip_eps=float(cfg.rl.clip_eps),
        kl_coef=float(cfg.rl.beta) if cfg.rl.kl_mode == "loss" else 0.0,
        agg=losses.loss_aggregation(str(cfg.rl.algo), str(cfg.rl.loss_agg)),
    )
    # Pinning the state's layout keeps one compiled step: the donated output state then has
    # exactly the input's shardings, so the second call does not compile again.
    state_shardings = jax.tree.map(lambda x: _on_mesh(x, mesh), state)
    state = jax.device_put(state, state_shardings)
    train_step = update.make_train_step(
        policy.graphdef,
        optimizer,
        step_cfg,
        trainable,
        update.make_schedule(cfg.optim, steps),
        state_shardings=state_shardings,
    )
    rewards = RewardRunner.from_config(cfg, mesh, policy)
    run = Run(
        cfg=cfg,
        workdir=workdir,
        mesh=mesh,
        policy=policy,
        ref_params=ref_params,
        rewards=rewards,
        train_it=train_it,
        test_examples=test_ex,
        train_step=train_step,
        ref_logprobs=update.make_ref_logprobs(ref_graphdef),
        step_cfg=step_cfg,
        train_batch=train_batch,
        evals=heldout.eval_rewards(cfg, mesh, policy, rewards),
        trainable=trainable,
    )
    return run, state


# --------------------------------------------------------------------------- one step


def _prompts(run: Run, examples: list) -> tuple[np.ndarray, np.ndarray]:
    ids, mask, _ = builders.policy_prompts(run.cfg, run.policy.tokenizer, examples)
    return ids, mask


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def rl_step(run: Run, state: update.TrainState, step: int) -> tuple[update.TrainState, dict]:
    """One rollout + update; returns the new state and this step's metrics."""
    cfg, tok = run.cfg, run.policy.tokenizer
    g = int(cfg.rollout.samples_per_prompt)
    examples = next(run.train_it)
    ids, pmask = _prompts(run, examples)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step)
    sc = builders.sampling_config(cfg)
    ro, t_roll = _timed(
        lambda: generate(
            run.policy.graphdef,
            run.sample_params(state.params),
            ids,
            pmask,
            key,
            sc,
            g,
            stop_ids=tok.stop_ids,
            pad_id=tok.pad_id,
        )
    )
    rows = [ex for ex in examples for _ in range(g)]
    # The whole rollout on every process (a gather across processes): see multihost.py.
    toks, cmask = mh.to_host(ro.tokens), mh.to_host(ro.mask)
    responses = [tok.decode(toks[i][cmask[i]].tolist()) for i in range(len(rows))]
    scores = run.rewards.score(
        rows,
        responses,
        ~mh.to_host(ro.stopped),
        policy_params=state.params,
        reference_params=run.reference_params(state),
    )
    t_judge, t_lik = run.rewards.times["judge"], run.rewards.times["likelihood"]
    rewards = jnp.asarray(scores[run.rewards.key], jnp.float32)
    # RLPR's filter: prompts whose rewards barely vary leave the update (their completion tokens
    # are masked out), instead of having their noise z-scored into full-size advantages.
    keep = likelihood.std_filter(np.asarray(rewards), g, float(cfg.judge.get("rlpr_filter", 0.0)))
    upd_mask = ro.mask if keep.all() else ro.mask & jnp.asarray(keep)[:, None]

    tokens = jnp.concatenate([ro.prompt_ids, ro.tokens], axis=1)
    attn = jnp.concatenate([ro.prompt_mask, ro.mask], axis=1)
    big_l = ro.tokens.shape[1]
    need_ref = float(cfg.rl.beta) > 0
    if need_ref:
        logp_ref, t_ref = _timed(run.ref_logprobs, run.reference_params(state), tokens, attn, big_l)
    else:
        logp_ref, t_ref = None, 0.0
    adv = losses.compute_advantages(
        str(cfg.rl.algo),
        rewards,
        g,
        ro.logprobs,
        logp_ref,
        upd_mask,
        float(cfg.rl.beta),
        str(cfg.rl.kl_mode) if need_ref else "none",
        str(cfg.rl.norm),
    )
    batch = update.Batch(
        tokens, attn, upd_mask, adv, ro.logprobs, logp_ref if cfg.rl.kl_mode == "loss" else None
    )
    t0 = time.perf_counter()
    n_epochs = int(cfg.rl.ppo_epochs)
    # The shuffle key derives from the rollout key: a resumed run shuffles exactly as before.
    order = minibatch.shuffled_order(
        jax.random.fold_in(key, 1), len(rows), run.train_batch, n_epochs
    )
    state, m = minibatch.run_steps(run.train_step, state, batch, order)
    t_update = time.perf_counter() - t0

    mf = cmask.astype(np.float32)
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
    out["reward/kept_prompts"] = float(keep.reshape(-1, g)[:, 0].mean())
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
    seq_tok = float(mh.to_host(attn).sum())  # prompt + completion tokens a forward pass reads
    for name, secs, toks_done in (
        ("rollout", t_roll, n_tok),
        ("judge", t_judge, len(rows)),
        ("likelihood", t_lik, len(rows)),
        ("reference", t_ref, seq_tok),
        ("update", t_update, seq_tok * n_epochs),
    ):
        out[f"time/{name}_s"] = secs
        if secs > 0:  # judge, likelihood: responses scored per second; the others: tokens/s
            unit = "rows" if name in ("judge", "likelihood") else "tokens"
            out[f"time/{name}_{unit}_per_s"] = toks_done / secs
    return state, out


# --------------------------------------------------------------------------- the loop


def train(
    cfg: Any,
    workdir: str | Path | None = None,
    mesh_flag: str | None = None,
    stop_after: int | None = None,
) -> list[dict]:
    """Run (or resume) the config's RL run in `workdir`; returns the metrics records written.

    stop_after: return after this many steps of this call (tests use it to emulate a kill).
    """
    mh.join(cfg.mesh)
    workdir = Path(workdir or cfg.workdir or f"runs/{cfg.name}")
    workdir.mkdir(parents=True, exist_ok=True)
    if mh.is_main():
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
    run, state = build(cfg, workdir, mesh_flag)
    # Inside the mesh context the model's activation-row constraints apply (see mesh.py).
    with jax.set_mesh(run.mesh):
        return _loop(run, state, stop_after)


def _loop(run: Run, state: update.TrainState, stop_after: int | None) -> list[dict]:
    from tqdm import tqdm

    cfg, workdir = run.cfg, run.workdir
    # Every process runs the same steps; only process 0 writes metrics.
    writer = MetricsWriter(
        workdir, tensorboard=bool(cfg.train.tensorboard), enabled=jax.process_index() == 0
    )
    first = latest_checkpoint(workdir) or 0
    if first:
        state = restore_checkpoint(run, state, first)
        print(f"rlvr_jax: resumed {workdir} from step {first}", file=sys.stderr)
    # Rows written after the restored step (or any row, when no checkpoint was reached) are
    # dropped, so that the file reads like an uninterrupted run's; the step-0 row survives a
    # resume from a checkpoint and is not computed again.
    writer.truncate_after(first if first else -1)
    heldout.drop_after(workdir, first if first else -1)
    steps, records = int(cfg.train.steps), []
    hooks = default_hooks(run, writer, records)
    step_fn = sft_baseline.sft_step if str(cfg.train.mode) == "sft" else rl_step
    if not first:
        hooks.run(HookContext(0, state, {}, steps == 0))
    bar = tqdm(
        range(first, steps),
        initial=first,
        total=steps,
        desc=cfg.name,
        unit="step",
        disable=jax.process_index() != 0,
    )
    compiles = CompileMeter()  # a slow step that compiled says so
    try:
        for step in bar:
            t0, faults0 = time.perf_counter(), page_faults()
            compiles.take()
            state, met = step_fn(run, state, step)
            met["time/step_s"] = time.perf_counter() - t0
            # Pages the step took fresh from the system (a step whose buffers no longer fit in
            # the freed heap grows it, at ~10 us of kernel time per 4 KiB page).
            met["time/page_faults"] = page_faults() - faults0
            met.update(compiles.take())
            hooks.run(HookContext(step + 1, state, met, step + 1 == steps))
            bar.set_postfix(
                reward=f"{met.get('reward/raw_mean', float('nan')):.3f}",
                s_per_step=f"{met['time/step_s']:.1f}",
            )
            if stop_after is not None and len(records) >= stop_after:
                return records
    finally:
        writer.close()
        compiles.close()
    finish(run, state)
    return records


def default_hooks(run: Run, writer: MetricsWriter, records: list[dict]) -> Hooks:
    """The run's hooks, in order: evaluation adds to the step's metrics, which are then written;
    the checkpoint comes before the non-finite stop, so a stopped run can be resumed."""
    cfg = run.cfg
    ckpt_every = int(cfg.train.ckpt_every)
    hooks = Hooks()
    held = heldout.HeldOutEval(
        cfg, run.mesh, run.policy, run.test_examples, run.rewards, run.evals, run.workdir
    )
    hooks.add(
        lambda c: c.metrics.update(held(run.sample_params(c.state.params), c.step)),
        every=int(cfg.train.eval_every),
        at_start=True,
        at_end=True,
        name="evaluate",
    )

    def write_metrics(c: HookContext) -> None:
        rec = writer.write(c.step, c.metrics)
        if c.step:  # the returned records are this call's steps; step 0 is evaluation only
            records.append(rec)

    guard = hooks.add(guards.GuardHook(cfg, run.workdir), every=1, name="guards").fn
    hooks.add(write_metrics, every=1, at_start=True, name="metrics")
    ckpt = hooks.add(
        lambda c: save_checkpoint(run, c.state, c.step),
        every=ckpt_every,
        at_end=True,
        name="checkpoint",
    )

    def stop_conditions(c: HookContext) -> None:
        streak = int(c.metrics["train/nonfinite_streak"])
        stop_guard = guard.should_stop()
        if (streak or stop_guard) and not ckpt.due(c):  # keep a restart point at this step
            save_checkpoint(run, c.state, c.step)
        if streak >= int(cfg.train.max_nonfinite):
            raise RunStopped(
                f"{streak} non-finite updates in a row at step {c.step} (loss or gradient "
                f"NaN/Inf); checkpoint saved in {_ckpt_dir(run.workdir)}. Lower optim.lr or "
                "check the rewards."
            )
        if stop_guard:
            raise RunStopped(
                f"reward-hacking guard crossed at step {c.step} ({'; '.join(guard.crossed)}) "
                f"and train.guards.stop is set; checkpoint saved in {_ckpt_dir(run.workdir)}"
            )

    hooks.add(stop_conditions, every=1, name="stop_conditions")
    return hooks


def finish(run: Run, state: update.TrainState) -> None:
    """End of run: HF export of the policy, the curves plot and the held-out summary line (also in
    WORKDIR/summary.json); process 0 writes them.

    Every process gathers the params (a collective); process 0 writes the export next to the
    old one and swaps it in, so `hf/` is always a complete model; the others wait for it.
    """
    if run.cfg.train.export_hf:
        from rlvr_jax.models import hf_io

        params = mh.tree_to_host(state.params)
        out = run.workdir / "hf"
        if mh.is_main():
            new, old = out.with_name(".hf.new"), out.with_name(".hf.old")
            for d in (new, old):
                shutil.rmtree(d, ignore_errors=True)
            hf_io.save_hf(new, run.policy.cfg, params, run.policy.tokenizer)
            if out.exists():
                out.rename(old)
            new.rename(out)
            shutil.rmtree(old, ignore_errors=True)
            print(
                f"rlvr_jax: exported the policy as a Hugging Face model to {out}", file=sys.stderr
            )
        mh.barrier("rlvr_jax.train.export_hf")
    if mh.is_main() and (run.workdir / "metrics.jsonl").exists():
        png = plot_curves(run.workdir / "metrics.jsonl", run.workdir / "curves.png")
        print(f"rlvr_jax: curves in {png}", file=sys.stderr)
    if mh.is_main():
        judge = str(run.cfg.judge.eval_model) or builders.judge_spec(run.cfg) or "rule"
        summary = heldout.summarize(run.workdir, judge)
        if summary is not None:
            print(f"rlvr_jax: {summary['line']}", flush=True)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every write at INFO
    cfg = _CONFIG.value
    if cfg is None:
        raise app.UsageError("--config is required, e.g. --config configs/econ.py")
    try:
        train(cfg, _WORKDIR.value, _MESH.value)
    except (
        data.DataError,
        mesh_lib.MeshError,
        memory.MemoryPlanError,
        checkpoint.CheckpointError,
        ConfigError,
        RunStopped,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        mh.exit_job(2)


if __name__ == "__main__":
    host_memory.keep_freed_memory()  # before the first JAX computation
    app.run(main)
