"""Shared fixtures: a tiny byte-level tokenizer, tiny random HF models, the real default model.

Tiny models are built in transformers from configs (no downloads). Weights are redrawn at unit
scale so logits are O(10): a parity tolerance means something only against sizeable numbers.
"""

from __future__ import annotations

import os
import tempfile

# Compiled XLA programs are cached on disk for the whole test session (and the subprocesses it
# starts): many tests compile the same tiny-model programs, and compiling dominates their time.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "rlvr_jax_test_jit_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# No test distils a judge by the way (a quarter of an hour each): a config that would name a
# missing "distilled" or "evaluation" judge fails at once (rlvr_jax/judge/distill/__init__.py).
os.environ["RLVR_JAX_NO_DISTILL"] = "1"

import math
from pathlib import Path

import numpy as np
import pytest

TINY_VOCAB = 320  # 256 bytes + 3 specials, rounded up; the spare ids are never produced

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# name -> kwargs of the transformers config class. Each covers a family feature the issue names.
TINY_HF_CONFIGS: dict[str, dict] = {
    # Llama, tied embeddings, GQA (4 query heads over 2 KV heads), SmolLM2's rope theta.
    "llama_tied_gqa": dict(
        arch="llama",
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        rope_theta=1e5,
    ),
    # Qwen2: q/k/v bias, untied lm_head, a single KV head.
    "qwen2_bias_untied_1kv": dict(
        arch="qwen2",
        num_attention_heads=4,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        rope_theta=1e6,
    ),
    # Llama 3 rope scaling, with an original context shorter than the test sequences.
    "llama3_rope": dict(
        arch="llama",
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
        rope_theta=5e5,
    ),
    # Qwen3: per-head q/k RMSNorm, no bias, tied, head_dim 24 != hidden / heads = 16.
    "qwen3_tied_hd24": dict(
        arch="qwen3",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        tie_word_embeddings=True,
        rope_theta=1e6,
    ),
    # Qwen3 untied, a single KV head, head_dim 32.
    "qwen3_untied_1kv_hd32": dict(
        arch="qwen3",
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        tie_word_embeddings=False,
        rope_theta=1e6,
    ),
}


def make_tiny_hf_model(name: str, seed: int = 0, dtype: str = "float32"):
    """A random transformers model (torch, eval mode) for TINY_HF_CONFIGS[name]; D=64, 2 layers."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    kw = dict(TINY_HF_CONFIGS[name])
    arch = kw.pop("arch")
    rope_scaling = kw.pop("rope_scaling", None)
    rope_theta = kw.pop("rope_theta")
    cfg_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    }[arch]
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling:
        rope = {**rope_scaling, "rope_theta": rope_theta}
    cfg = cfg_cls(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters=rope,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **kw,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif "embed_tokens" in pname or pname.startswith("lm_head"):
                p.copy_(0.5 * torch.randn_like(p))  # logits ~ N(0, 4^2): max |logit| ~ 15
            else:  # [out, in] linear: unit-variance outputs
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
    return model.to(getattr(torch, dtype))


def make_tiny_hf_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) and ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tiny_hf_dir(path: Path, name: str, seed: int = 0, dtype: str = "float32", **save_kw):
    """Write a tiny HF model directory (config, safetensors, tokenizer); returns the torch model."""
    model = make_tiny_hf_model(name, seed, dtype)
    model.save_pretrained(str(path), **save_kw)
    make_tiny_hf_tokenizer().save_pretrained(str(path))
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """rlvr_jax Tokenizer over a byte-level vocabulary (259 ids) with a ChatML template."""
    from rlvr_jax.tokenizer import Tokenizer

    return Tokenizer(make_tiny_hf_tokenizer())


@pytest.fixture(scope="session")
def tiny_hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """One HF directory per TINY_HF_CONFIGS entry, fp32, unsharded, seed 0."""
    root = tmp_path_factory.mktemp("tiny_hf")
    out = {}
    for name in TINY_HF_CONFIGS:
        save_tiny_hf_dir(root / name, name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory) -> Path:
    """The embedded default model, materialised once per test session into a temporary cache
    (RLVR_JAX_CACHE points there for the whole session, so other callers reuse it)."""
    from rlvr_jax.models.default import default_model_dir as materialise

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLVR_JAX_CACHE", str(tmp_path_factory.mktemp("rlvr_jax_cache")))
        yield materialise()


def with_random_adapters(
    cfg, state, rank: int = 4, alpha: float = 8.0, seed: int = 0, targets=None
):
    """(cfg with LoRA, graphdef, state) of a model given by (cfg, state) with adapters on every
    target (or `targets`), A and B both drawn at random: a fresh adapter's B is zero, which would
    leave the adapter paths untested."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rlvr_jax.models.config import LORA_TARGETS, LoraConfig
    from rlvr_jax.models.transformer import abstract_model, init_adapters

    cfg = cfg.replace(lora=LoraConfig(rank, alpha, tuple(targets or LORA_TARGETS)))
    adapters = init_adapters(cfg, seed)
    rng = np.random.default_rng(seed)
    # B at the scale of A: the adapter's term is then comparable to the weight's own.
    adapters = jax.tree.map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(x.shape[0]), x.dtype), adapters
    )
    return cfg, abstract_model(cfg)[0], nnx.merge_state(state, adapters)


def random_tokens(seed: int, shape: tuple[int, ...], vocab: int = 259) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape, dtype=np.int32)


def random_model(cfg, seed: int = 0, scale: float = 0.02):
    """(graphdef, state) of the model `cfg` with weights drawn on the host: norm scales near 1,
    matrices N(0, scale^2). Compiling init_model's threefry draws costs several CPU seconds even
    for a tiny model."""
    import jax
    import jax.numpy as jnp

    from rlvr_jax.models.transformer import abstract_model

    graphdef, abstract = abstract_model(cfg)
    rng = np.random.default_rng(seed)
    draw = lambda s: (
        1.0 + 0.1 * rng.standard_normal(s.shape)
        if len(s.shape) == 1
        else scale * rng.standard_normal(s.shape)
    ).astype(s.dtype)
    return graphdef, jax.tree.map(lambda s: jnp.asarray(draw(s)), abstract)
