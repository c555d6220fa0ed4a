"""GGUF (llama.cpp) files in: dequantized params, model config and tokenizer.

The `gguf` package reads and dequantizes tensors; each is renamed to its Hugging Face name and goes
through the same name map and transforms as a safetensors checkpoint (`hf_io.state_from_tensors`).
llama.cpp's converter permutes the rows of Llama q/k projections (to its interleaved RoPE layout);
that is undone here so the weights match HF's rotate-half layout again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from flax import nnx
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from rlvr_jax.models.config import ConfigError, ModelConfig
from rlvr_jax.models.hf_io import CheckpointFormatError, state_from_tensors

# GGUF tensor name -> HF tensor name; "{i}" is the layer index.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(.+)")


def gguf_to_hf_name(name: str) -> str | None:
    """GGUF tensor name -> HF tensor name (None for tensors the model does not use)."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Llama q/k row permutation of w [n_heads*K, ...] (or a bias [n_heads*K]).

    llama.cpp stores, per head, rows (0, K/2, 1, K/2+1, ...) so that RoPE pairs are adjacent; HF's
    rotate-half layout keeps the two halves apart.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def open_gguf(gguf_file: str | Path) -> GGUFReader:
    """A reader over the file (memory-mapped). Parsing the metadata takes seconds for a 50k-token
    vocabulary, so callers open once and pass the reader on."""
    p = Path(gguf_file)
    if not p.is_file():
        raise CheckpointFormatError(f"{p}: no such GGUF file")
    try:
        return GGUFReader(str(p))
    except (ValueError, OSError, KeyError) as e:
        raise CheckpointFormatError(f"{p}: not a readable GGUF file ({e})") from None


def _field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf_config(gguf_file: str | Path, reader: GGUFReader | None = None) -> ModelConfig:
    """The ModelConfig of a GGUF file, from its `{arch}.*` metadata and its tensors.

    The keys are those of llama.cpp's converter (the mapping transformers' GGUF loader uses too);
    the default model's result is checked against transformers' in tests/test_default_model.py.
    """
    reader = reader or open_gguf(gguf_file)
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ConfigError(f"{gguf_file}: unsupported GGUF architecture {arch!r}; need llama, qwen2")
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in reader.tensors}
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none") or "rope_freqs.weight" in shapes:
        raise ConfigError(f"{gguf_file}: GGUF rope scaling is not supported; convert from HF")
    try:
        hidden = int(_field(reader, f"{arch}.embedding_length"))
        heads = int(_field(reader, f"{arch}.attention.head_count"))
        d = {
            "model_type": arch,
            "vocab_size": shapes["token_embd.weight"][0],
            "hidden_size": hidden,
            "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
            "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
            "head_dim": int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
            "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
            "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
            "max_position_embeddings": int(_field(reader, f"{arch}.context_length")),
            # Trust the tensors over the metadata for the two structural switches.
            "tie_word_embeddings": "output.weight" not in shapes,
            "attention_bias": "blk.0.attn_q.bias" in shapes,
            "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
            "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
            "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
        }
    except (TypeError, KeyError) as e:
        raise ConfigError(f"{gguf_file}: GGUF metadata lacks a model field ({e})") from None
    return ModelConfig.from_hf_dict(d, source=str(gguf_file))


def iter_gguf_tensors(
    gguf_file: str | Path, cfg: ModelConfig, reader: GGUFReader | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, fp32 array in HF layout) for every model tensor, dequantized one at a time."""
    reader = reader or open_gguf(gguf_file)
    for t in reader.tensors:
        name = gguf_to_hf_name(t.name)
        if name is None:
            raise CheckpointFormatError(f"{gguf_file}: unexpected tensor {t.name!r}")
        shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists dims fastest-first
        if t.tensor_type == GGMLQuantizationType.F32:
            w = np.array(t.data, np.float32)  # a copy: t.data is a view of the memory-mapped file
        else:
            w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape(shape)
        if cfg.model_type == "llama" and ".q_proj." in name:
            w = unpermute_qk(w, cfg.num_heads)
        elif cfg.model_type == "llama" and ".k_proj." in name:
            w = unpermute_qk(w, cfg.num_kv_heads)
        yield name, w


def load_gguf(gguf_file: str | Path, dtype: str = "float32") -> tuple[ModelConfig, nnx.State]:
    """Read a GGUF file into (cfg, state) with params of `dtype` ("float32" | "bfloat16")."""
    reader = open_gguf(gguf_file)
    cfg = read_gguf_config(gguf_file, reader).replace(dtype=dtype)
    tensors = iter_gguf_tensors(gguf_file, cfg, reader)
    return cfg, state_from_tensors(cfg, tensors, source=str(gguf_file))
