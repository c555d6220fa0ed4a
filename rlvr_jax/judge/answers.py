"""What a response commits to: the part of it a judge is shown.

The paper's rule for a reference-based judge counts an answer as correct only when it commits to a
final answer equivalent to the reference. A small policy rarely writes the answer line its system
prompt asks for; it states its answer in its first sentence ("This is known as a liquidity
trap."), at the end of a calculation, or nowhere before the token limit cuts it off. Showing a
judge the response's last line then shows it a sentence cut in the middle of a ramble, and the
judge's verdict follows that fragment, not the answer. `answer_view` picks instead:

- "answer": the content of the response's answer statements ("Therefore, the answer is X",
  "The final answer is X", "Answer: X", "\\boxed{X}"). Several different ones are all shown,
  joined by " ; ", so that a judge sees the conflict (several conflicting answers are not a
  committed answer: the judge is taught NO for them).
- "prose": no answer statement: the first sentence and the last complete sentence, which is where
  a response that answers in prose states it. A sentence cut off by the token limit is never shown.
- "none": nothing committed (empty, or cut off before its first sentence ends, or an answer
  statement with nothing after it). Every reward of such a response is 0 and its verdict NO,
  without asking the judge.

`cut` says whether the response was stopped by the token limit (the sampler knows; files of rows
say so in a "cut" field). Its trailing fragment is then dropped: it is the middle of a sentence.
Unknown (None) keeps it: a finished short answer ("0.75") has no final punctuation either.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

Kind = Literal["answer", "prose", "none"]

# An answer statement: "(Therefore,) (the) (final) answer is (:) X", "Answer: X", to the line end.
# The one parser of answer lines: `answer_view` reads `rest`, `answer_line_start` (the likelihood
# reward's split of reasoning from answer) where the statement begins, its connective included.
_STATEMENT = re.compile(
    r"\b(?:(?:therefore|thus|hence|so)\s*,?\s+)?"
    r"(?:(?:the\s+)?(?:final\s+|correct\s+)?answer\s+(?:is|would\s+be|will\s+be)\b\s*:?"
    r"|(?:final\s+)?answer\s*:)[ \t]*(?P<rest>[^\n]*)",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\{")
_FIRST_SENTENCE = re.compile(r"(?<=[.!?])\s")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]*]*(?=\s)|\n+")
# A line that announces an answer and gives none ("Therefore, the answer is", "Answer:").
_EMPTY_STATEMENT = re.compile(
    r"\W*(?:(?:therefore|so|thus),?\s*)?"
    r"(?:(?:the\s+)?(?:final\s+)?answer\s*(?:is\b\s*:?|:)|(?:the|final)\s+answer)\W*",
    re.IGNORECASE,
)
_MAX_CHARS = 400  # of one shown piece; the judge prompt's token budget cuts further if needed


@dataclasses.dataclass(frozen=True)
class AnswerView:
    """What the judge is shown of a response (`text`), and how it was found (`kind`)."""

    text: str
    kind: Kind

    @property
    def committed(self) -> bool:
        return self.kind != "none"


def _boxed(text: str) -> list[tuple[int, str, bool]]:
    """(position, content, closed) of each \\boxed{...}, braces balanced."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append((m.start(), text[m.end() : i - 1 if depth == 0 else i], depth == 0))
    return out


def _clean(s: str) -> str:
    """An answer's content without markup and closing punctuation: "**$25**." -> "$25"."""
    s = s.strip().strip("*").strip()
    if s.startswith("$") and s.endswith("$") and len(s) > 1 and s.count("$") == 2:
        s = s[1:-1].strip()  # inline math, not a dollar amount
    return s.rstrip(".;,").strip().strip("*").strip()


def _statements(text: str, cut: bool) -> list[str]:
    """Contents of the answer statements, in order; one cut off by the token limit is dropped."""
    found: list[tuple[int, str]] = []
    end = len(text.rstrip())
    for m in _STATEMENT.finditer(text):
        rest = m["rest"]
        at_end = m.end() >= end
        if not rest.strip():  # "Therefore, the answer is:" and the answer on the next line
            nxt = text[m.end() :].lstrip("\n")
            line = nxt.split("\n", 1)[0]
            at_end = m.end() + (len(text[m.end() :]) - len(nxt)) + len(line) >= end
            rest = line
        if "\\boxed{" in rest:
            continue  # read by _boxed, braces and all
        if cut and at_end:
            continue  # the limit cut this statement: its value may be unfinished
        rest = _FIRST_SENTENCE.split(rest, maxsplit=1)[0]  # "4%. Therefore, ..." -> "4%"
        if c := _clean(rest):
            found.append((m.start(), c))
    for pos, content, closed in _boxed(text):
        if closed and (c := _clean(content)):
            found.append((pos, c))
    return [c for _, c in sorted(found)]


def _sentences(text: str, cut: bool) -> list[str]:
    """Complete sentences (and lines) of the text; a trailing fragment is dropped when cut."""
    parts = [p.strip() for p in _SENTENCE_END.split(text)]
    if cut and parts and not re.search(r"[.!?][\"')\]*]*$", text.rstrip()):
        parts = parts[:-1]  # the sentence the token limit stopped in
    return [p for p in parts if re.search(r"\w", p) and not _EMPTY_STATEMENT.fullmatch(p)]


def _short(s: str) -> str:
    return s if len(s) <= _MAX_CHARS else s[: _MAX_CHARS - 3].rstrip() + "..."


def answer_line_start(response: str) -> int | None:
    """Where the first answer statement of `response` begins, its connective and markdown
    included ("So the final answer is 3" from "So", "**Answer:** 3" from "**"); None when it has
    none. Its content is not checked: an answer line with nothing after it still ends the
    reasoning before it."""
    m = _STATEMENT.search(response)
    return None if m is None else len(response[: m.start()].rstrip("*_# \t"))


def answer_view(response: str, cut: bool | None = None) -> AnswerView:
    """The committed answer of `response` as the judge sees it (module docstring)."""
    cut = bool(cut)
    found = list(dict.fromkeys(_statements(response, cut)))  # distinct, in order
    if found:
        return AnswerView(" ; ".join(_short(a) for a in found[-3:]), "answer")
    sents = _sentences(response, cut)
    if not sents:
        return AnswerView("", "none")
    first, last = _short(sents[0]), _short(sents[-1])
    return AnswerView(first if len(sents) == 1 else f"{first} ... {last}", "prose")
