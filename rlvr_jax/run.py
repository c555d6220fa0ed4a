"""One RL run's objects, built once from its config (`build`), and its step checkpoints.

`Run` holds the policy, reference, reward runner, data iterator and compiled steps; the train
state travels beside it. A checkpoint of RL step s holds the trainable part of the state and the
data iterator's position, so that a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rlvr_jax import builders, checkpoint, data, heldout, memory, minibatch, update
from rlvr_jax import mesh as mesh_lib
from rlvr_jax import multihost as mh
from rlvr_jax.batches import BatchIterator
from rlvr_jax.judge import specs
from rlvr_jax.judge.runner import RewardRunner
from rlvr_jax.logprobs import make_ref_logprobs
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.default import resolve_model_dir
from rlvr_jax.models.lora import split_adapters
from rlvr_jax.models.model_dir import load_config
from rlvr_jax.models.transformer import abstract_model


@dataclasses.dataclass
class Run:
    """Everything built once per run."""

    cfg: Any
    workdir: Path
    mesh: jax.sharding.Mesh
    policy: Any  # LoadedModel
    ref_params: Any  # None for a LoRA policy: its reference is its own base weights
    rewards: RewardRunner
    train_it: BatchIterator
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

    @property
    def checkpoints(self) -> checkpoint.StepCheckpoints:
        return checkpoint.StepCheckpoints(self.workdir, int(self.cfg.train.keep_ckpts))

    def sample_params(self, params: Any) -> Any:
        """Params in the sampling layout: whole over fsdp (decode would otherwise all-gather every
        weight at every token); the same arrays when the two layouts agree (fsdp = 1)."""
        if self.mesh.shape["fsdp"] == 1:
            return params
        return mesh_lib.reshard(params, self.mesh, mesh_lib.SAMPLE_RULES)


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(workdir: Path) -> int | None:
    """The newest complete checkpoint step (orbax renames a finished write into place), as
    process 0 sees it: every process resumes from the same step."""
    return mh.from_main(checkpoint.StepCheckpoints(workdir, keep=0).latest())


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
    run.checkpoints.save(step, tree)


def restore_checkpoint(run: Run, state: update.TrainState, step: int) -> update.TrainState:
    frozen = update.split_trainable(state.params, run.trainable)[1]
    leaves, treedef = jax.tree.flatten(_saved_part(run, state))
    abstract = {
        "state": [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for x in leaves],
        "data": {k: jax.ShapeDtypeStruct((), np.int64) for k in run.train_it.state()},
    }
    tree = run.checkpoints.restore(step, abstract)
    run.train_it.restore({k: int(v) for k, v in tree["data"].items()})
    saved = jax.tree.unflatten(treedef, tree["state"])
    return saved.replace(params=nnx.merge_state(saved.params, frozen))


# --------------------------------------------------------------------------- building


def model_configs(cfg: Any) -> tuple[ModelConfig, ModelConfig | None]:
    """(policy, judge or None) ModelConfigs from the config, without loading any weights."""
    if cfg.policy.model == "synthetic":
        policy = builders.synthetic_config(cfg)
    else:
        policy = load_config(resolve_model_dir(cfg.policy.model))
        policy = policy.replace(dtype=str(cfg.policy.dtype), lora=builders.lora_config(cfg))
    spec = specs.judge_spec(cfg)
    judge = (
        None
        if not spec
        else policy
        if spec == "policy"
        else load_config(specs.judge_architecture_dir(spec))
    )
    return policy, judge


def _plan_args(cfg: Any, mesh: jax.sharding.Mesh) -> tuple:
    policy_cfg, judge_cfg = model_configs(cfg)
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
    train_it = BatchIterator(train_ex, b, int(cfg.seed))
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
    step_cfg = builders.step_config(cfg, micro, train_batch)
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
        ref_logprobs=make_ref_logprobs(ref_graphdef, group=builders.prompt_group(cfg)),
        step_cfg=step_cfg,
        train_batch=train_batch,
        evals=heldout.eval_rewards(cfg, mesh, policy, rewards),
        trainable=trainable,
    )
    return run, state
