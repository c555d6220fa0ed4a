"""A tiny word-level tokenizer and a synthetic task, for CPU-sized end-to-end runs and tests.

The task ("echo"): the prompt names a word; the response earns rule reward 1 when it contains that
word. A random policy over the small vocabulary succeeds by chance about L/V of the time, and RL
drives it to near 1 within a few dozen steps: a check that the whole loop learns.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlvr_jax.tokenizer import Tokenizer

SPECIALS = ("<pad>", "<unk>", "<eos>", "<user>", "<assistant>")
WORDS = tuple("zero one two three four five six seven eight nine".split())
# Extra filler words that are never a correct answer (they make chance success rarer).
FILLER = tuple("say echo the word please now and then".split())

# A minimal chat template so that chat rendering works the same way as for real models.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<user> {{ m['content'] }} {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<assistant> {% endif %}"
)


def make_tokenizer() -> Tokenizer:
    """The synthetic word-level tokenizer (whitespace split; every word one token)."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS + FILLER)}
    raw = RawTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<eos>",
        extra_special_tokens=["<user>", "<assistant>"],
    )
    hf.chat_template = CHAT_TEMPLATE
    return Tokenizer(hf)


def echo_rows(n: int, seed: int, split: str = "train") -> list[dict]:
    """n rows of the echo task in the released data format (query / label / subject)."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    rows = []
    for i in range(n):
        w = WORDS[rng.integers(len(WORDS))]
        rows.append(
            {
                "id": f"echo-{split}-{i:05d}",
                "query": [{"role": "user", "content": f"say {w}"}],
                "label": w,
                "subject": "echo",
            }
        )
    return rows
