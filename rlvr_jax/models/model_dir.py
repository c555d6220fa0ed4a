"""The rlvr_jax model directory: one self-contained `MODEL_DIR` that every tool takes.

Layout:
    MODEL_DIR/config.json        HF-style config (`ModelConfig.to_hf_dict`), dtype = stored dtype
    MODEL_DIR/tokenizer*.json …  the transformers tokenizer files (chat template included)
    MODEL_DIR/params/            the params as an orbax (tensorstore) checkpoint of the nnx state

`save_model` writes into a temporary sibling directory and renames it into place, so a MODEL_DIR
either is complete or does not exist.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
from flax import nnx

from rlvr_jax import checkpoint
from rlvr_jax.models.config import ConfigError, ModelConfig
from rlvr_jax.models.lora import merge_adapters
from rlvr_jax.models.transformer import abstract_model
from rlvr_jax.tokenizer import Tokenizer

PARAMS = "params"


class LoadedModel(NamedTuple):
    cfg: ModelConfig
    graphdef: nnx.GraphDef
    state: nnx.State
    tokenizer: Tokenizer


def save_model(
    model_dir: str | Path,
    cfg: ModelConfig,
    state: nnx.State,
    tokenizer: Tokenizer,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write cfg, tokenizer and params as a new model directory (which must not exist).

    The stored dtype is that of `state`'s arrays; cfg.dtype is set to match. extra_files: {name:
    text} written beside them (e.g. a judge's prompt settings, reward.JUDGE_FILE). An adapted
    model (cfg.lora) is saved with its adapters merged into the weights.
    """
    cfg, state = merge_adapters(cfg, state)
    model_dir = Path(model_dir).absolute()
    if model_dir.exists():
        raise FileExistsError(f"{model_dir}: already exists")
    dtypes = {str(x.dtype) for x in jax.tree.leaves(state)}
    if len(dtypes) != 1:
        raise ValueError(f"state has mixed dtypes {sorted(dtypes)}; cast it to one first")
    cfg = cfg.replace(dtype=dtypes.pop())
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.tmp-", dir=model_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the final directory should not be
    try:
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
        tokenizer.save(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        checkpoint.save_pytree(tmp / PARAMS, nnx.to_pure_dict(state))
        try:
            tmp.rename(model_dir)
        except OSError:
            if model_dir.exists():  # another process finished first
                raise FileExistsError(f"{model_dir}: already exists") from None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model_dir


def load_config(model_dir: str | Path) -> ModelConfig:
    """The ModelConfig of a model directory (ConfigError with one line if absent or bad)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir}: no such model directory")
    return ModelConfig.from_hf_file(model_dir / "config.json")


def load_model(
    model_dir: str | Path, dtype: str | None = None, shardings: Any = None
) -> LoadedModel:
    """Load a model directory: (cfg, graphdef, state, tokenizer).

    dtype: "float32" | "bfloat16" to cast the params on load (default: as stored).
    shardings: optional pytree of `jax.sharding.Sharding` with the state's structure (an nnx.State
    or its pure dict, e.g. from the mesh rules); params are then restored directly into it.
    """
    cfg = load_config(model_dir)
    if dtype is not None:
        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype {dtype!r}: expected float32 or bfloat16")
        cfg = cfg.replace(dtype=dtype)
    graphdef, abstract = abstract_model(cfg)
    target = nnx.to_pure_dict(abstract)
    if shardings is not None:
        if isinstance(shardings, nnx.State):
            shardings = nnx.to_pure_dict(shardings)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings
        )
    values = checkpoint.restore_pytree(Path(model_dir) / PARAMS, target)
    nnx.replace_by_pure_dict(abstract, values)
    return LoadedModel(cfg, graphdef, abstract, Tokenizer.from_dir(model_dir))
