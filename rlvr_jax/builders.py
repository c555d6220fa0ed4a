"""Config -> the objects a run needs: mesh, models, examples, sampling settings.

Shared by `train`, `evaluate` and `distill`, so that the three read a config the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from rlvr_jax import data, mesh as mesh_lib, synthetic
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.model_dir import LoadedModel, load_model
from rlvr_jax.models.transformer import abstract_model
from rlvr_jax.rollout import PROMPT_BUCKETS, SamplingConfig


def build_mesh(cfg: Any, mesh_flag: str | None = None) -> jax.sharding.Mesh:
    """The run's mesh: `--mesh DATA,FSDP,TENSOR` when given, else config `mesh.shape`."""
    shape = mesh_lib.parse_mesh(mesh_flag) if mesh_flag else tuple(cfg.mesh.shape)
    return mesh_lib.make_mesh(shape)


def synthetic_model(cfg: Any, mesh: jax.sharding.Mesh) -> LoadedModel:
    """A tiny random model over the synthetic word tokenizer, born sharded on `mesh`."""
    tok = synthetic.make_tokenizer()
    t = cfg.policy.tiny
    heads = int(t.num_heads)
    mcfg = ModelConfig(
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
    )
    graphdef, state = mesh_lib.init_sharded(mcfg, mesh, mesh_lib.TRAIN_RULES, int(cfg.seed))
    return LoadedModel(mcfg, graphdef, state, tok)


def resolve_model_dir(spec: str) -> Path:
    """A model spec -> its directory: "default" (embedded SmolLM2-135M-Instruct), "distilled"
    (the default judge distilled by `rlvr_jax.distill`, produced when missing) or a path."""
    if spec == "default":
        from rlvr_jax.models.default import default_model_dir

        return default_model_dir()
    if spec == "distilled":
        from rlvr_jax.distill import ensure_default_judge

        return ensure_default_judge()
    return Path(spec)


def load_sharded(model_dir: str | Path, mesh: jax.sharding.Mesh, dtype: str | None = None,
                 rules: mesh_lib.Rules = mesh_lib.TRAIN_RULES) -> LoadedModel:
    """Load a model directory with params restored straight into their mesh shardings."""
    from rlvr_jax.models.model_dir import load_config

    mcfg = load_config(model_dir)
    if dtype:
        mcfg = mcfg.replace(dtype=dtype)
    shardings = mesh_lib.param_shardings(abstract_model(mcfg)[1], mesh, rules)
    return load_model(model_dir, dtype=dtype, shardings=shardings)


def build_policy(cfg: Any, mesh: jax.sharding.Mesh) -> LoadedModel:
    if cfg.policy.model == "synthetic":
        return synthetic_model(cfg, mesh)
    return load_sharded(resolve_model_dir(cfg.policy.model), mesh, str(cfg.policy.dtype))


def build_examples(cfg: Any, split: str, limit: int | None = None) -> data.LoadReport:
    """Validated examples of a split (files from `data.train`/`data.test`, or synthetic rows)."""
    system = str(cfg.data.system_prompt) or None
    if cfg.data.synthetic:
        if cfg.data.synthetic != "echo":
            raise data.DataError(f"config data.synthetic: unknown task {cfg.data.synthetic!r}")
        n = 512 if split == "train" else 64
        rows = synthetic.echo_rows(n, int(cfg.seed), split)
        exs = [data.example_from_row(r, f"echo:{split} row {i + 1}", system)
               for i, r in enumerate(rows)]
        return data.LoadReport(exs[:limit] if limit else exs, [], f"echo:{split}")
    sources: Sequence[str] = cfg.data.train if split == "train" else cfg.data.test
    if not sources:
        raise data.DataError(f"config data.{split}: no data sources")
    return data.load_examples(
        list(sources), split, on_error=str(cfg.data.bad_rows), system_prompt=system, limit=limit
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
