"""Hugging Face checkpoints in and out, without torch: safetensors <-> rlvr_jax params.

The conversion is a declarative name map (HF tensor name <-> rlvr_jax state path) plus a small
transform per tensor kind (e.g. q_proj.weight [H*K, D] <-> q [D, H, K]). Reading streams one tensor
at a time (shards and their index included) so peak memory stays near one copy of the weights plus
one tensor; writing fills size-capped shards one at a time.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from rlvr_jax.models.config import ConfigError, ModelConfig
from rlvr_jax.models.lora import merge_adapters
from rlvr_jax.models.transformer import abstract_model


class CheckpointFormatError(ValueError):
    """A checkpoint whose files do not match the model; the message is one readable line."""


Transform = tuple[
    Callable[[np.ndarray, ModelConfig], np.ndarray], Callable[[np.ndarray, ModelConfig], np.ndarray]
]

# (to_ours, to_hf) per tensor kind. HF Linear weights are [out, in]; ours are [in, ...out].
_IDENTITY: Transform = (lambda w, c: w, lambda w, c: w)
_LINEAR: Transform = (lambda w, c: w.T, lambda w, c: w.T)
_Q: Transform = (
    lambda w, c: w.T.reshape(c.hidden_size, c.num_heads, c.head_dim),
    lambda w, c: w.reshape(c.hidden_size, -1).T,
)
_KV: Transform = (
    lambda w, c: w.T.reshape(c.hidden_size, c.num_kv_heads, c.head_dim),
    lambda w, c: w.reshape(c.hidden_size, -1).T,
)
_O: Transform = (
    lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
    lambda w, c: w.reshape(-1, c.hidden_size).T,
)
_Q_BIAS: Transform = (lambda b, c: b.reshape(c.num_heads, c.head_dim), lambda b, c: b.reshape(-1))
_KV_BIAS: Transform = (
    lambda b, c: b.reshape(c.num_kv_heads, c.head_dim),
    lambda b, c: b.reshape(-1),
)

# HF name -> (rlvr_jax path, transform); "{i}" is the layer index.
_GLOBAL_MAP = {
    "model.embed_tokens.weight": ("embed", _IDENTITY),
    "model.norm.weight": ("final_norm.scale", _IDENTITY),
    "lm_head.weight": ("lm_head", _LINEAR),
}
_LAYER_MAP = {
    "input_layernorm.weight": ("attn_norm.scale", _IDENTITY),
    "self_attn.q_proj.weight": ("attn.q", _Q),
    "self_attn.k_proj.weight": ("attn.k", _KV),
    "self_attn.v_proj.weight": ("attn.v", _KV),
    "self_attn.o_proj.weight": ("attn.o", _O),
    "self_attn.q_proj.bias": ("attn.q_bias", _Q_BIAS),
    "self_attn.k_proj.bias": ("attn.k_bias", _KV_BIAS),
    "self_attn.v_proj.bias": ("attn.v_bias", _KV_BIAS),
    "self_attn.q_norm.weight": ("attn.q_norm.scale", _IDENTITY),
    "self_attn.k_norm.weight": ("attn.k_norm.scale", _IDENTITY),
    "post_attention_layernorm.weight": ("mlp_norm.scale", _IDENTITY),
    "mlp.gate_proj.weight": ("mlp.gate", _LINEAR),
    "mlp.up_proj.weight": ("mlp.up", _LINEAR),
    "mlp.down_proj.weight": ("mlp.down", _LINEAR),
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Buffers some exporters include that carry no parameters.
_IGNORED_RE = re.compile(r".*rotary_emb\.inv_freq$")


def hf_to_path(name: str) -> tuple[str, Transform] | None:
    """HF tensor name -> (rlvr_jax dotted state path, transform), or None if not a model tensor."""
    if name in _GLOBAL_MAP:
        return _GLOBAL_MAP[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_MAP:
        path, tf = _LAYER_MAP[m.group(2)]
        return f"layers.{m.group(1)}.{path}", tf
    return None


def hf_names(cfg: ModelConfig) -> list[str]:
    """Every HF tensor name of a model with this config, in a stable order (embedding first)."""
    names = ["model.embed_tokens.weight"]
    for i in range(cfg.num_layers):
        for key in _LAYER_MAP:
            if key.endswith(".bias") and not cfg.attention_bias:
                continue
            if key.endswith("_norm.weight") and not cfg.qk_norm:
                continue
            names.append(f"model.layers.{i}.{key}")
    names.append("model.norm.weight")
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def _path_key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def state_from_tensors(
    cfg: ModelConfig,
    tensors: Iterable[tuple[str, np.ndarray]],
    source: str = "checkpoint",
) -> nnx.State:
    """Build the model state from (HF name, array) pairs, consumed one at a time.

    Each tensor is transformed, cast to cfg.dtype and moved into a jax array before the next is
    read. Raises CheckpointFormatError naming `source` and the tensor on an unexpected,
    missing or mis-shaped tensor.
    """
    dtype = jnp.dtype(cfg.dtype)
    _, abstract = abstract_model(cfg)
    flat = {_path_key(p): v for p, v in nnx.to_flat_state(abstract)}
    filled: dict[str, jax.Array] = {}
    for name, arr in tensors:
        if _IGNORED_RE.fullmatch(name) or (name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue  # tied checkpoints sometimes carry a copy of the embedding; HF ignores it too
        hit = hf_to_path(name)
        if hit is None or hit[0] not in flat:
            raise CheckpointFormatError(f"{source}: unexpected tensor {name!r} for this config")
        path, (to_ours, to_hf) = hit
        want = jax.eval_shape(functools.partial(to_hf, c=cfg), flat[path].get_value()).shape
        if tuple(arr.shape) != tuple(want):
            raise CheckpointFormatError(
                f"{source}: tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(want)}"
            )
        if path in filled:
            raise CheckpointFormatError(f"{source}: tensor {name!r} appears twice")
        filled[path] = jnp.asarray(to_ours(arr, cfg), dtype=dtype)
        del arr
    missing = [p for p in flat if p not in filled]
    if missing:
        raise CheckpointFormatError(
            f"{source}: missing tensor for {missing[0]!r} ({len(missing)} missing in all)"
        )
    for p, var in nnx.to_flat_state(abstract):
        var.set_value(filled.pop(_path_key(p)))
    return abstract


def state_to_tensors(
    cfg: ModelConfig, state: nnx.State, dtype: str | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy array) pairs of a model state, one at a time, in `hf_names` order.
    LoRA adapters are merged into their weights (HF checkpoints have none)."""
    cfg, state = merge_adapters(cfg, state)
    values = {_path_key(p): v for p, v in nnx.to_flat_state(state)}
    for name in hf_names(cfg):
        path, (_, to_hf) = hf_to_path(name)
        arr = np.asarray(jax.device_get(values[path][...]))
        if dtype is not None:
            arr = arr.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype))
        yield name, np.ascontiguousarray(to_hf(arr, cfg))


# ---------------------------------------------------------------------------------------------
# Reading a HF directory


def _safetensors_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointFormatError(f"{index}: not a safetensors index ({e})") from None
        files = [hf_dir / f for f in dict.fromkeys(weight_map.values())]
    elif (hf_dir / "model.safetensors").is_file():
        files = [hf_dir / "model.safetensors"]
    else:
        raise CheckpointFormatError(
            f"{hf_dir}: no model.safetensors or model.safetensors.index.json (only safetensors "
            "checkpoints are read)"
        )
    for f in files:
        if not f.is_file():
            raise CheckpointFormatError(f"{f}: shard named in the index is missing")
    return files


_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def iter_safetensors(files: Iterable[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, numpy array) for every tensor of the files, one at a time, in file order.

    The safetensors library validates each file (header, offsets, coverage); the data is then read
    with positional reads into fresh arrays rather than through a memory map, because mapped pages
    that were touched count as resident until the file is closed: that would hold a second copy of
    a single-file checkpoint in memory while its params are being built.
    """
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                names = set(st.keys())
        except SafetensorError as e:
            raise CheckpointFormatError(f"{f}: unreadable safetensors file ({e})") from None
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
            entries = sorted((header[k]["data_offsets"], k) for k in names)
            for _, name in entries:
                info = header[name]
                dtype = _ST_DTYPES.get(info["dtype"])
                if dtype is None:
                    raise CheckpointFormatError(
                        f"{f}: tensor {name!r} has unsupported dtype {info['dtype']}"
                    )
                start, end = info["data_offsets"]
                arr = np.empty(info["shape"], dtype)
                fh.seek(8 + n + start)
                if fh.readinto(arr.reshape(-1).view(np.uint8)) != end - start:
                    raise CheckpointFormatError(f"{f}: tensor {name!r} is truncated")
                yield name, arr


def read_hf_config(hf_dir: str | Path) -> ModelConfig:
    """The ModelConfig of a HF model directory (raises ConfigError with one line)."""
    return ModelConfig.from_hf_file(Path(hf_dir) / "config.json")


def load_hf(hf_dir: str | Path, dtype: str | None = None) -> tuple[ModelConfig, nnx.State]:
    """Read a HF model directory (config.json + safetensors, sharded or not) into (cfg, state).

    dtype: "float32" | "bfloat16" for the params (default: the checkpoint's own, fp16 -> fp32).
    """
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise CheckpointFormatError(f"{hf_dir}: not a directory")
    cfg = read_hf_config(hf_dir)
    if dtype is not None:
        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype {dtype!r}: expected float32 or bfloat16")
        cfg = cfg.replace(dtype=dtype)
    files = _safetensors_files(hf_dir)
    return cfg, state_from_tensors(cfg, iter_safetensors(files), source=str(hf_dir))


# ---------------------------------------------------------------------------------------------
# Writing a HF directory


def _nbytes(a: np.ndarray) -> int:
    return a.size * a.dtype.itemsize


def save_hf(
    hf_dir: str | Path,
    cfg: ModelConfig,
    state: nnx.State,
    tokenizer=None,
    max_shard_bytes: int = 2 * 2**30,
    dtype: str | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> None:
    """Write a HF model directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.

    Files: config.json, generation_config.json, model.safetensors (or model-0000i-of-0000n shards
    plus model.safetensors.index.json when larger than `max_shard_bytes`), tokenizer files when a
    `rlvr_jax.tokenizer.Tokenizer` is given, and extra_files ({name: text}). Written to a
    temporary sibling directory that is renamed into place; `hf_dir` must not exist. An adapted
    model (cfg.lora) is written with its adapters merged into the weights.
    """
    cfg, state = merge_adapters(cfg, state)
    hf_dir = Path(hf_dir)
    if hf_dir.exists():
        raise CheckpointFormatError(f"{hf_dir}: already exists")
    dtype = dtype or cfg.dtype
    hf_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{hf_dir.name}.tmp-", dir=hf_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the final directory should not be
    try:
        shards, weight_map, total = _write_shards(tmp, cfg, state, dtype, max_shard_bytes)
        if len(shards) == 1:
            shards[0].rename(tmp / "model.safetensors")
        else:
            n = len(shards)
            for k, s in enumerate(shards):
                s.rename(tmp / f"model-{k + 1:05d}-of-{n:05d}.safetensors")
            weight_map = {
                name: f"model-{k + 1:05d}-of-{n:05d}.safetensors" for name, k in weight_map.items()
            }
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        hf_cfg = cfg.replace(dtype=dtype).to_hf_dict()
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": hf_cfg["eos_token_id"]}
        if cfg.pad_token_id is not None:
            gen["pad_token_id"] = cfg.pad_token_id
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        tmp.rename(hf_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_shards(
    out: Path, cfg: ModelConfig, state: nnx.State, dtype: str, max_shard_bytes: int
) -> tuple[list[Path], dict[str, int], int]:
    """Fill shards in order, writing each once it would exceed the cap. Returns (files, name ->
    shard number, total bytes)."""
    shards: list[Path] = []
    weight_map: dict[str, int] = {}
    pending: dict[str, np.ndarray] = {}
    size = total = 0

    def flush() -> None:
        nonlocal pending, size
        f = out / f"shard-{len(shards)}.safetensors"
        save_file(pending, str(f), metadata={"format": "pt"})
        shards.append(f)
        pending, size = {}, 0

    for name, arr in state_to_tensors(cfg, state, dtype):
        if pending and size + _nbytes(arr) > max_shard_bytes:
            flush()
        pending[name] = arr
        weight_map[name] = len(shards)
        size += _nbytes(arr)
        total += _nbytes(arr)
    flush()
    return shards, weight_map, total
