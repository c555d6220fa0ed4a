"""`python -m rlvr_jax.train --config configs/econ.py [--config.KEY=VALUE ...] [--workdir DIR]`

One RL run: data -> rollout (G samples per prompt) -> judge and rule rewards -> advantages ->
reference log-probs -> clipped policy updates -> metrics, with orbax checkpoints every k steps.
Rerunning with an existing workdir resumes from its last checkpoint and continues exactly as an
uninterrupted run would (the rollout key of step s is fold_in(seed, s); the data position and
the whole TrainState are checkpointed). This file orchestrates; the math lives in losses/update.
"""

from __future__ import annotations

import dataclasses
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

from rlvr_jax import builders, checkpoint, data, host_memory, losses, memory, update
from rlvr_jax import mesh as mesh_lib
from rlvr_jax.builders import RewardRunner
from rlvr_jax.cpu_meter import page_faults
from rlvr_jax.metrics import CompileMeter, MetricsWriter, plot_curves
from rlvr_jax.models.config import ConfigError
from rlvr_jax.models.lora import split_adapters
from rlvr_jax.models.transformer import abstract_model
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
    """The newest complete checkpoint step (orbax renames a finished write into place)."""
    return checkpoint.latest_step(_ckpt_dir(workdir))


def _saved_part(run: Run, state: update.TrainState) -> update.TrainState:
    """The part of the state a checkpoint holds: all but the frozen params (LoRA: the adapters
    and their optimizer state), which the run rebuilds as it started."""
    return state.replace(params=update.split_trainable(state.params, run.trainable)[0])


def save_checkpoint(run: Run, state: update.TrainState, step: int) -> None:
    """Save the state after RL step `step` (a loop step: with ppo_epochs > 1, or skipped
    non-finite updates, it differs from state.step, which counts applied updates)."""
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
    (workdir / "memory_plan.txt").write_text(plan.table() + "\n")
    memory.check_fits(plan, memory.device_memory_bytes())
    policy = builders.build_policy(cfg, mesh)
    train = builders.build_examples(cfg, "train")
    print(train.summary(), file=sys.stderr)
    train_ex, dropped = data.drop_long_prompts(
        train.examples, policy.tokenizer, int(cfg.rollout.max_prompt_len), str(cfg.data.bad_rows)
    )
    test_ex = builders.build_examples(cfg, "test").examples[: int(cfg.train.eval_prompts)]
    b = int(cfg.rollout.prompts_per_step)
    train_it = data.BatchIterator(
        train_ex, b, int(cfg.seed), jax.process_index(), jax.process_count()
    )
    steps = int(cfg.train.steps)
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
    n = b * int(cfg.rollout.samples_per_prompt)
    micro = min(int(cfg.optim.micro_batch), n)
    step_cfg = update.StepConfig(
        micro_batch=micro,
        clip_eps=float(cfg.rl.clip_eps),
        kl_coef=float(cfg.rl.beta) if cfg.rl.kl_mode == "loss" else 0.0,
        agg="seq_sum" if cfg.rl.algo == "dr_grpo" else str(cfg.rl.loss_agg),
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
    run = Run(
        cfg=cfg,
        workdir=workdir,
        mesh=mesh,
        policy=policy,
        ref_params=ref_params,
        rewards=RewardRunner.from_config(cfg, mesh, policy),
        train_it=train_it,
        test_examples=test_ex,
        train_step=train_step,
        ref_logprobs=update.make_ref_logprobs(ref_graphdef),
        step_cfg=step_cfg,
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
    toks, cmask = np.asarray(ro.tokens), np.asarray(ro.mask)
    responses = [tok.decode(toks[i][cmask[i]].tolist()) for i in range(len(rows))]
    t0 = time.perf_counter()
    scores = run.rewards.score(rows, responses)
    t_judge = time.perf_counter() - t0
    rewards = jnp.asarray(scores[run.rewards.key], jnp.float32)

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
        ro.mask,
        float(cfg.rl.beta),
        str(cfg.rl.kl_mode) if need_ref else "none",
        str(cfg.rl.norm),
    )
    batch = update.Batch(
        tokens, attn, ro.mask, adv, ro.logprobs, logp_ref if cfg.rl.kl_mode == "loss" else None
    )
    t0 = time.perf_counter()
    first = None
    for _ in range(int(cfg.rl.ppo_epochs)):
        state, m = run.train_step(state, batch)
        first = first or m
    m = jax.device_get(m)
    t_update = time.perf_counter() - t0

    mf = np.asarray(ro.mask, np.float32)
    n_tok = float(mf.sum())
    out = {f"reward/{k}": float(np.mean(v)) for k, v in scores.items() if k != "judge_truncated"}
    out["reward/nonfinite"] = int((~np.isfinite(np.asarray(rewards))).sum())
    out.update(
        {
            f"reward/{k}": float(v)
            for k, v in jax.device_get(losses.reward_stats(rewards, g)).items()
        }
    )
    out["reward/raw_mean"] = float(rewards.mean())
    out["reward/raw_std"] = float(rewards.std())
    out["reward/normalized_std"] = float(
        np.std(np.asarray(losses.normalize_rewards(rewards, g, str(cfg.rl.norm))))
    )
    if logp_ref is not None:
        k1 = (np.asarray(ro.logprobs) - np.asarray(logp_ref)) * mf
        out["kl/mean"] = float(k1.sum() / max(n_tok, 1.0))
    out.update({f"train/{k}": float(np.asarray(v)) for k, v in m.items()})
    # Drift is measured on the first update, before the policy has moved.
    out["train/logp_drift"] = float(np.asarray(jax.device_get(first["logp_drift"])))
    out["rollout/response_len"] = float(mf.sum(1).mean())
    out["rollout/truncation_rate"] = float(1.0 - np.asarray(ro.stopped).mean())
    out["judge/truncated_prompts"] = float(scores.get("judge_truncated", np.zeros(1)).sum())
    seq_tok = float(np.asarray(attn).sum())  # prompt + completion tokens a forward pass reads
    n_epochs = int(cfg.rl.ppo_epochs)
    for name, secs, toks_done in (
        ("rollout", t_roll, n_tok),
        ("judge", t_judge, len(rows)),
        ("reference", t_ref, seq_tok),
        ("update", t_update, seq_tok * n_epochs),
    ):
        out[f"time/{name}_s"] = secs
        if secs > 0:  # judge: responses scored per second; the others: tokens per second
            unit = "rows" if name == "judge" else "tokens"
            out[f"time/{name}_{unit}_per_s"] = toks_done / secs
    return state, out


def evaluate_greedy(run: Run, state: update.TrainState) -> dict:
    """Mean reward of greedy answers to the held-out prompts."""
    if not run.test_examples:
        return {}
    tok = run.policy.tokenizer
    ids, pmask = _prompts(run, run.test_examples)
    ro = generate(
        run.policy.graphdef,
        run.sample_params(state.params),
        ids,
        pmask,
        jax.random.PRNGKey(0),
        builders.sampling_config(run.cfg, greedy=True),
        1,
        stop_ids=tok.stop_ids,
        pad_id=tok.pad_id,
    )
    toks, cmask = np.asarray(ro.tokens), np.asarray(ro.mask)
    responses = [tok.decode(toks[i][cmask[i]].tolist()) for i in range(len(run.test_examples))]
    scores = run.rewards.score(run.test_examples, responses)
    return {f"eval/{k}": float(np.mean(v)) for k, v in scores.items() if k != "judge_truncated"}


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
    if cfg.mesh.distributed:
        mesh_lib.initialize_distributed(cfg.mesh)
    workdir = Path(workdir or cfg.workdir or f"runs/{cfg.name}")
    workdir.mkdir(parents=True, exist_ok=True)
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
        writer.truncate_after(first)
        print(f"rlvr_jax: resumed {workdir} from step {first}", file=sys.stderr)
    steps, records = int(cfg.train.steps), []
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
            state, met = rl_step(run, state, step)
            met["time/step_s"] = time.perf_counter() - t0
            # Pages the step took fresh from the system (a step whose buffers no longer fit in
            # the freed heap grows it, at ~10 us of kernel time per 4 KiB page).
            met["time/page_faults"] = page_faults() - faults0
            met.update(compiles.take())
            done = step + 1
            if int(cfg.train.eval_every) and done % int(cfg.train.eval_every) == 0:
                met.update(evaluate_greedy(run, state))
            if done == steps:
                met.update(evaluate_greedy(run, state))
            records.append(writer.write(done, met))
            bar.set_postfix(
                reward=f"{met['reward/raw_mean']:.3f}", s_per_step=f"{met['time/step_s']:.1f}"
            )
            streak = int(met["train/nonfinite_streak"])
            if done % int(cfg.train.ckpt_every) == 0 or done == steps or streak:
                save_checkpoint(run, state, done)
            if streak >= int(cfg.train.max_nonfinite):
                raise RunStopped(
                    f"{streak} non-finite updates in a row at step {done} (loss or gradient "
                    f"NaN/Inf); checkpoint saved in {_ckpt_dir(workdir)}. Lower optim.lr or "
                    "check the rewards."
                )
            if stop_after is not None and len(records) >= stop_after:
                return records
    finally:
        writer.close()
        compiles.close()
    finish(run, state)
    return records


def finish(run: Run, state: update.TrainState) -> None:
    """End of run: HF export of the policy and the curves plot."""
    if run.cfg.train.export_hf and jax.process_index() == 0:
        from rlvr_jax.models import hf_io

        out = run.workdir / "hf"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        hf_io.save_hf(out, run.policy.cfg, jax.device_get(state.params), run.policy.tokenizer)
        print(f"rlvr_jax: exported the policy as a Hugging Face model to {out}", file=sys.stderr)
    if (run.workdir / "metrics.jsonl").exists():
        png = plot_curves(run.workdir / "metrics.jsonl", run.workdir / "curves.png")
        print(f"rlvr_jax: curves in {png}", file=sys.stderr)


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
        sys.exit(2)


if __name__ == "__main__":
    host_memory.keep_freed_memory()  # before the first JAX computation
    app.run(main)
