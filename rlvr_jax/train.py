"""`python -m rlvr_jax.train --config configs/econ.py [--config.KEY=VALUE ...] [--workdir DIR]`

One RL run: build it once (run.py), then step (rl_step.py: data -> rollout (G samples per prompt)
-> judge, likelihood and rule rewards -> reference log-probs -> advantages -> clipped policy
updates), each step followed by hooks with an `every` (hooks.py): held-out evaluation, guards,
metrics, orbax checkpoints and the stop conditions.
Rerunning with an existing workdir resumes from its last checkpoint and continues exactly as an
uninterrupted run would (the rollout key of step s is fold_in(seed, s); the data position and
the whole TrainState are checkpointed). This file is the loop only; the math lives in losses/update.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
from absl import app, flags, logging

from rlvr_jax import checkpoint, data, guards, heldout, host_memory, memory, sft_baseline, update
from rlvr_jax import mesh as mesh_lib
from rlvr_jax import multihost as mh
from rlvr_jax.cpu_meter import page_faults
from rlvr_jax.hooks import HookContext, Hooks
from rlvr_jax.judge import specs
from rlvr_jax.metrics import CompileMeter, MetricsWriter, plot_curves
from rlvr_jax.models.config import ConfigError
from rlvr_jax.rl_step import rl_step
from rlvr_jax.run import (
    Run,
    build,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from rlvr_jax.shipped import define_config_flag

_CONFIG = define_config_flag("config", "Run config (a Python file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_MESH = flags.DEFINE_string("mesh", None, "Mesh DATA,FSDP,TENSOR (overrides config mesh.shape).")


class RunStopped(RuntimeError):
    """The run stopped on purpose (e.g. too many non-finite updates); a checkpoint was written."""


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
                f"NaN/Inf); checkpoint saved in {run.checkpoints.folder}. Lower optim.lr or "
                "check the rewards."
            )
        if stop_guard:
            raise RunStopped(
                f"reward-hacking guard crossed at step {c.step} ({'; '.join(guard.crossed)}) "
                f"and train.guards.stop is set; checkpoint saved in {run.checkpoints.folder}"
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
        judge = str(run.cfg.judge.eval_model) or specs.judge_spec(run.cfg) or "rule"
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
