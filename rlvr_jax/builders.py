"""Config -> the objects a run needs: mesh, models, examples, sampling settings.

Shared by `train`, `evaluate` and `distill`, so that the three read a config the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from rlvr_jax import data, losses, synthetic, update
from rlvr_jax import mesh as mesh_lib
from rlvr_jax.models.config import LoraConfig, ModelConfig
from rlvr_jax.models.default import resolve_model_dir
from rlvr_jax.models.model_dir import LoadedModel, load_model
from rlvr_jax.models.transformer import abstract_model, init_adapters, init_sharded
from rlvr_jax.rollout import PROMPT_BUCKETS, SamplingConfig, pad_prompts


def build_mesh(cfg: Any, mesh_flag: str | None = None) -> jax.sharding.Mesh:
    """The run's mesh: `--mesh DATA,FSDP,TENSOR` when given, else config `mesh.shape`."""
    shape = mesh_lib.parse_mesh(mesh_flag) if mesh_flag else tuple(cfg.mesh.shape)
    return mesh_lib.make_mesh(shape)


def synthetic_config(cfg: Any) -> ModelConfig:
    """The ModelConfig of the tiny random policy (config policy.tiny, synthetic vocabulary)."""
    tok = synthetic.make_tokenizer()
    t = cfg.policy.tiny
    heads = int(t.num_heads)
    return ModelConfig(
        model_type="llama",
        vocab_size=tok.vocab_size,
        hidden_size=int(t.hidden_size),
        intermediate_size=int(t.intermediate_size),
        num_layers=int(t.num_layers),
        num_heads=heads,
        num_kv_heads=int(t.num_kv_heads),
        head_dim=int(t.hidden_size) // heads,
        tie_word_embeddings=True,
        eos_token_id=tok.stop_ids,
        pad_token_id=tok.pad_id,
        dtype=str(cfg.policy.dtype),
        lora=lora_config(cfg),
    )


def lora_config(cfg: Any) -> LoraConfig | None:
    """The config's `lora` section as a LoraConfig, or None when lora.rank is 0 (or absent)."""
    sec = cfg.get("lora")
    if sec is None or int(sec.rank) == 0:
        return None
    targets = tuple(str(t) for t in sec.targets)
    return LoraConfig(int(sec.rank), float(sec.alpha), targets, bool(sec.get("train_norms", False)))


def add_adapters(model: LoadedModel, lora: LoraConfig, mesh: jax.sharding.Mesh, seed: int):
    """A loaded model with fresh LoRA adapters (B = 0: the same function), born sharded."""
    cfg = model.cfg.replace(lora=lora)
    shardings_of = lambda tree: mesh_lib.param_shardings(tree, mesh, mesh_lib.TRAIN_RULES)
    adapters = init_adapters(cfg, seed, shardings_of)
    state = nnx.merge_state(model.state, adapters)
    return LoadedModel(cfg, abstract_model(cfg)[0], state, model.tokenizer)


def synthetic_model(cfg: Any, mesh: jax.sharding.Mesh) -> LoadedModel:
    """A tiny random model over the synthetic word tokenizer, born sharded on `mesh`."""
    mcfg = synthetic_config(cfg)
    graphdef, state = init_sharded(mcfg, mesh, mesh_lib.TRAIN_RULES, int(cfg.seed))
    scale = float(cfg.policy.tiny.get("embed_scale", 1.0))
    if scale != 1.0:
        state["embed"].set_value(state["embed"][...] * scale)
    return LoadedModel(mcfg, graphdef, state, synthetic.make_tokenizer())


def load_sharded(
    model_dir: str | Path,
    mesh: jax.sharding.Mesh,
    dtype: str | None = None,
    rules: mesh_lib.Rules = mesh_lib.TRAIN_RULES,
) -> LoadedModel:
    """Load a model directory with params restored straight into their mesh shardings."""
    from rlvr_jax.models.model_dir import load_config

    mcfg = load_config(model_dir)
    if dtype:
        mcfg = mcfg.replace(dtype=dtype)
    shardings = mesh_lib.param_shardings(abstract_model(mcfg)[1], mesh, rules)
    return load_model(model_dir, dtype=dtype, shardings=shardings)


def build_policy(cfg: Any, mesh: jax.sharding.Mesh) -> LoadedModel:
    """The policy of the config, born sharded, with LoRA adapters when lora.rank > 0 and its
    tokenizer rendering chats with the config's template options (data.enable_thinking)."""
    if cfg.policy.model == "synthetic":
        m = synthetic_model(cfg, mesh)
    else:
        m = load_sharded(resolve_model_dir(cfg.policy.model), mesh, str(cfg.policy.dtype))
        lora = lora_config(cfg)
        if lora is not None:
            m = add_adapters(m, lora, mesh, int(cfg.seed))
    thinking = bool(cfg.data.get("enable_thinking", True))
    return m._replace(tokenizer=m.tokenizer.with_chat_options(enable_thinking=thinking))


def build_examples(cfg: Any, split: str, limit: int | None = None) -> data.LoadReport:
    """Validated examples of a split (files from `data.train`/`data.test`, or synthetic rows)."""
    system = str(cfg.data.system_prompt) or None
    if cfg.data.synthetic:
        if cfg.data.synthetic != "echo":
            raise data.DataError(f"config data.synthetic: unknown task {cfg.data.synthetic!r}")
        n = 512 if split == "train" else 64
        rows = synthetic.echo_rows(n, int(cfg.seed), split)
        exs = [
            data.example_from_row(r, f"echo:{split} row {i + 1}", system)
            for i, r in enumerate(rows)
        ]
        return data.LoadReport(exs[:limit] if limit else exs, [], f"echo:{split}")
    sources: Sequence[str] = cfg.data.train if split == "train" else cfg.data.test
    if not sources:
        raise data.DataError(f"config data.{split}: no data sources")
    return data.load_examples(
        list(sources), split, on_error=str(cfg.data.bad_rows), system_prompt=system, limit=limit
    )


def prompt_group(cfg: Any, train_batch: int | None = None, micro_batch: int | None = None) -> int:
    """Rows per shared prompt in the update and the reference pass (`update.StepConfig.group`).

    `optim.share_prompts` runs a prompt once for its rollout.samples_per_prompt samples; that
    needs the step's rows in rollout order (a step over the whole rollout: train_batch None or
    the rollout's size) and micro-batches of whole groups. Otherwise 1.
    """
    g = int(cfg.rollout.samples_per_prompt)
    n = int(cfg.rollout.prompts_per_step) * g
    if not bool(cfg.optim.get("share_prompts", True)) or g < 2:
        return 1
    if train_batch is not None and train_batch != n:
        return 1
    if micro_batch is not None and micro_batch % g:
        return 1
    return g


def step_config(cfg: Any, micro_batch: int, train_batch: int | None = None) -> update.StepConfig:
    """The train step's static settings from config sections `rl` and `optim` (0 = off / the
    default for clip_eps_high, norm_len and logit_chunk); train_batch: rows per optimizer step
    (None: the whole rollout), which decides the prompt sharing (`prompt_group`)."""
    rl = cfg.rl
    return update.StepConfig(
        micro_batch=micro_batch,
        clip_eps=float(rl.clip_eps),
        clip_eps_high=float(rl.get("clip_eps_high", 0.0)) or None,
        kl_coef=float(rl.beta) if rl.kl_mode == "loss" else 0.0,
        agg=losses.loss_aggregation(str(rl.algo), str(rl.loss_agg)),
        norm_len=int(rl.get("norm_len", 0)) or None,
        logit_chunk=int(cfg.optim.get("logit_chunk", 0)) or None,
        remat=bool(cfg.optim.get("remat", False)),
        group=prompt_group(cfg, train_batch, micro_batch),
    )


def sampling_config(cfg: Any, greedy: bool = False) -> SamplingConfig:
    r = cfg.rollout
    return SamplingConfig(
        max_new_tokens=int(r.max_new_tokens),
        temperature=0.0 if greedy else float(r.temperature),
        top_k=int(r.top_k),
        top_p=float(r.top_p),
    )


def prompt_buckets(max_prompt_len: int) -> tuple[int, ...]:
    """Prompt length buckets up to max_prompt_len (one compile per bucket used)."""
    small = tuple(b for b in PROMPT_BUCKETS if b < max_prompt_len)
    return small + (int(max_prompt_len),)


def policy_prompts(
    cfg: Any, tok: Any, examples: Sequence[data.Example], batch: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """The examples' policy prompts, left-padded to a bucket of `cfg.rollout.max_prompt_len`.

    Chat-rendered (system prompt + query) unless `cfg.data.chat_template` is False. `batch` pads
    the row count with copies of the first row (fixed shapes). Returns (ids [B,P] int32,
    mask [B,P] bool, number of prompts cut to their last tokens; see `rollout.pad_prompts`).
    """
    if cfg.data.chat_template:
        seqs = [tok.chat_ids(ex.messages) for ex in examples]
    else:
        seqs = [tok.encode(ex.question) for ex in examples]
    buckets = prompt_buckets(int(cfg.rollout.max_prompt_len))
    return pad_prompts(seqs, tok.pad_id, buckets, batch)
