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


def _open(gguf_file: str | Path) -> GGUFReader:
    p = Path(gguf_file)
    if not p.is_file():
        raise CheckpointFormatError(f"{p}: no such GGUF file")
    try:
        return GGUFReader(str(p))
    except (ValueError, OSError, KeyError) as e:
        raise CheckpointFormatError(f"{p}: not a readable GGUF file ({e})") from None


def read_gguf_config(gguf_file: str | Path) -> ModelConfig:
    """The ModelConfig of a GGUF file, via transformers' own GGUF metadata mapping."""
    from transformers import AutoConfig  # heavy import; only needed here

    p = Path(gguf_file)
    try:
        hf = AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name)
    except (ValueError, OSError, KeyError) as e:
        raise ConfigError(f"{p}: cannot read the model config from GGUF metadata ({e})") from None
    d = hf.to_dict()
    reader = _open(p)
    # Trust the tensors over the metadata: a separate output matrix means untied embeddings.
    d["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    return ModelConfig.from_hf_dict(d, source=str(p))


def gguf_tensor_names(gguf_file: str | Path) -> list[str]:
    """The GGUF names of the file's tensors, in file order."""
    return [t.name for t in _open(gguf_file).tensors]


def iter_gguf_tensors(gguf_file: str | Path, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, fp32 array in HF layout) for every model tensor, dequantized one at a time."""
    reader = _open(gguf_file)
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
    cfg = read_gguf_config(gguf_file).replace(dtype=dtype)
    return cfg, state_from_tensors(cfg, iter_gguf_tensors(gguf_file, cfg), source=str(gguf_file))
