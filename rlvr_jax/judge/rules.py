"""Rule-based rewards (host, string matching) and the judge's view of a response (its last line).

The paper's rule baselines: reference-in-response (binary), Jaccard word overlap (soft; the paper
shows it hurts), and symbolic math equivalence through `math-verify`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np


def last_nonempty_line(response: str) -> str:
    """The response's last line with non-whitespace content, stripped ("" if there is none)."""
    for line in reversed(response.splitlines()):
        if line.strip():
            return line.strip()
    return ""


_WORD = re.compile(r"\w+", re.UNICODE)


def _norm(s: str) -> str:
    return " ".join(s.casefold().split())


def rule_binary(response: str, reference: str) -> float:
    """1.0 if the reference occurs in the response (case- and whitespace-insensitive), else 0.0.
    An empty reference or response scores 0."""
    ref, resp = _norm(reference), _norm(response)
    return float(bool(ref) and bool(resp) and ref in resp)


def rule_jaccard(response: str, reference: str) -> float:
    """Jaccard overlap of the word sets of the response's last non-empty line and the reference
    (the whole response's words would dilute the overlap by the length of its reasoning)."""
    a = set(_WORD.findall(last_nonempty_line(response).casefold()))
    b = set(_WORD.findall(reference.casefold()))
    return len(a & b) / len(a | b) if a | b else 0.0


@functools.cache
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def content_words(text: str) -> set[str]:
    """The casefolded words of `text` that are not English stop words (numbers stay)."""
    stop = _stop_words()
    return {w for w in _WORD.findall(text.casefold()) if w not in stop}


def shares_content_word(response: str, reference: str) -> float:
    """1.0 if the response names at least one content word of the reference, else 0.0.

    The gate of the `soft_gated` reward: an answer that names nothing of the reference cannot be
    equivalent to it in this task's references (terms, names, numbers), while the judge pays such
    answers when they sound confident ("Um.", "This illustrates S.I.R.A.P.S."). A reference with
    no content word (all stop words) never closes the gate.
    """
    ref = content_words(reference)
    return float(not ref or bool(ref & content_words(response)))


def content_gate(responses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """`shares_content_word` of each (response, reference) pair, as a float32 [N] mask: the
    `soft_gated` reward is the judge's soft reward times it (judge/runner.py)."""
    return np.array(
        [shares_content_word(r, a) for r, a in zip(responses, references, strict=True)],
        np.float32,
    )


def math_equivalent(response: str, reference: str) -> float:
    """1.0 if math-verify finds the response's final answer symbolically equal to the reference."""
    from math_verify import parse, verify

    if not response.strip() or not reference.strip():
        return 0.0
    try:
        return float(verify(parse(reference), parse(response)))
    except Exception:  # math-verify raises on unparsable input in some versions; that is a 0
        return 0.0
