"""Text <-> token ids on the host: chat templates, stop tokens, padding. No JAX here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

Message = dict[str, str]


class Tokenizer:
    """A thin wrapper over a transformers tokenizer, with the ids rlvr_jax needs by name.

    chat_options: extra variables for the chat template on every render, e.g. Qwen3's
    {"enable_thinking": False} (templates ignore variables they do not use).
    """

    def __init__(self, hf: PreTrainedTokenizerBase, chat_options: Mapping[str, Any] | None = None):
        self.hf = hf
        self.chat_options = dict(chat_options or {})
        vocab = hf.get_vocab()
        stops = {hf.eos_token_id} if hf.eos_token_id is not None else set()
        for name in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>"):
            if name in vocab:
                stops.add(vocab[name])
        self.stop_ids: tuple[int, ...] = tuple(sorted(stops))
        # The id written into padded slots. It is never used to decide what is padding: the
        # attention mask is (a pad id equal to <|im_end|> would otherwise mask real tokens).
        self.pad_id: int = hf.pad_token_id if hf.pad_token_id is not None else self.stop_ids[0]

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        return cls(AutoTokenizer.from_pretrained(str(path)))

    @classmethod
    def from_gguf(cls, gguf_file: str | Path) -> Tokenizer:
        p = Path(gguf_file)
        return cls(AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name))

    def with_chat_options(self, **options: Any) -> Tokenizer:
        """The same tokenizer with these chat template variables set (on top of the current)."""
        return Tokenizer(self.hf, {**self.chat_options, **options})

    def save(self, path: str | Path) -> None:
        self.hf.save_pretrained(str(path))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The chat template applied to `messages` (with `chat_options`), as text."""
        return self.hf.apply_chat_template(
            list(messages),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.chat_options,
        )

    def chat_ids(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt))

    def token_ids_of(self, spellings: Sequence[str]) -> list[int]:
        """Ids of those `spellings` that are single tokens of this vocabulary (e.g. "YES", " Yes").

        A spelling counts only if it encodes to exactly one token; unknown-token fallbacks are
        dropped.
        """
        ids = set()
        for s in spellings:
            enc = self.encode(s)
            if len(enc) == 1 and enc[0] != self.hf.unk_token_id:
                ids.add(enc[0])
        return sorted(ids)


def left_pad(
    seqs: Sequence[Sequence[int]], length: int | None = None, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id lists to [N, P] int32 with a bool mask [N, P] (True = real token).

    `length` defaults to the longest sequence; a longer sequence raises ValueError (cut it first,
    by a rule that knows what the tokens mean).
    """
    p = max((len(s) for s in seqs), default=0) if length is None else length
    ids = np.full((len(seqs), p), pad_id, np.int32)
    mask = np.zeros((len(seqs), p), bool)
    for i, s in enumerate(seqs):
        if len(s) > p:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than the padded length {p}")
        if len(s):
            ids[i, p - len(s) :] = s
            mask[i, p - len(s) :] = True
    return ids, mask


def common_prefix_len(seqs: Sequence[Sequence[int]], own: int = 0) -> int:
    """How many first tokens all of `seqs` share, at most so many that every sequence keeps
    `own` tokens after them (a prefix run once for all of them, the rest each row's own)."""
    first, n = seqs[0], min(len(s) for s in seqs) - own
    for i in range(n):
        if any(s[i] != first[i] for s in seqs):
            return i
    return n


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (so a run compiles once per bucket, not once per length)."""
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}")
