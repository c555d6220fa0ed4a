"""Rewards: the generative judge (soft and binary, from one jitted prefill) and rule-based rewards.

The judge reads only the response's last non-empty line, inside the paper's verifier prompt
(verbatim, `PAPER_PROMPT`) as the user message of the judge's chat template with the system message
"You are a helpful assistant.". One jitted prefill over the batch of judge prompts gives the
next-token distribution at the end of each prompt; only that last position is projected to the
vocabulary.

From it, in one pass (c = the verdict = the judge's greedy first token):
- p_yes, p_no: probability mass of the YES / NO spellings that are single tokens of the judge;
- binary = 1 if c is a YES spelling, else 0;
- soft (paper Eq. 4) = p_yes if c is YES, 1 - p_no if c is NO, 0 if c is neither;
- soft_normalized = p_yes / (p_yes + p_no).

Prompt budget rule (`JudgeConfig.max_prompt_len` tokens): an over-long prompt is cut inside the
QUESTION first (its middle is replaced by "[...]", keeping its start and its end, where the ask
usually is); only if the question is gone entirely is the response line cut, from the left (its end,
the final answer, is kept); the reference is never cut, except as a last resort when it alone cannot
fit, where the prompt's last `max_prompt_len` tokens are kept. Every cut is counted.

An empty response (no non-empty line) gets every reward 0 without failing the batch.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.models.transformer import forward, lm_logits, positions_from_mask
from rlvr_jax.tokenizer import Tokenizer, bucket_length, left_pad

# The released judge's prompt, verbatim: each text line ends with two spaces; the "---" and blank
# lines do not. As released (a code block), it ends with a newline after "**Output:**  ".
PAPER_PROMPT = (
    "Given a problem, determine whether the final answer in the provided (incomplete) solution "
    "process matches the reference answer.  \n"
    "The reference answer may be one single option character (e.g., A, B, C, D), a numerical "
    "value, an expression, or a list of answers if multiple questions are involved.  \n"
    "**The reference answer may be in Chinese or another language, but your evaluation should be "
    "language-agnostic.**  \n"
    "\n"
    "Your task:  \n"
    "- Compare the final output of the solution process with the reference answer.  \n"
    "- If they **match exactly**, output **YES**.  \n"
    "- If they **do not match**, output **NO**.  \n"
    "- If the solution process is unclear, incomplete, or ambiguous, assume it is incorrect and "
    "output **NO**.  \n"
    "\n"
    "Your output must be strictly **'YES'** or **'NO'**, with no additional words, punctuation, or "
    "explanation.  \n"
    "\n"
    "---\n"
    "\n"
    "**Question:**  \n"
    "{question}  \n"
    "\n"
    "**Solution Process (Final Step Only):**  \n"
    "{response}  \n"
    "\n"
    "**Reference Answer:**  \n"
    "{reference}  \n"
    "\n"
    "**Output:**  \n"
)
# A short prompt for small judges (135M-class models lose the thread in the long one).
SHORT_PROMPT = (
    "Question: {question}\nReference answer: {reference}\nStudent's final answer: {response}\n"
    "Does the student's final answer match the reference answer? Answer YES or NO."
)
TEMPLATES = {"paper": PAPER_PROMPT, "short": SHORT_PROMPT}
SYSTEM_MESSAGE = "You are a helpful assistant."
YES_SPELLINGS = ("YES", "Yes", "yes", " YES", " Yes", " yes")
NO_SPELLINGS = ("NO", "No", "no", " NO", " No", " no")
CUT_MARK = "[...]"


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """How judge prompts are built and batched.

    template: "paper", "short", or a format string with {question}, {response}, {reference}.
    system: the system message (None: no system message); chat_template: False = raw prompt text.
    max_prompt_len: token budget of one judge prompt (see the module docstring for the cut rule).
    buckets: padded prompt lengths (one compile per bucket); batch_size: rows per jitted call.
    """

    template: str = "paper"
    system: str | None = SYSTEM_MESSAGE
    chat_template: bool = True
    max_prompt_len: int = 1024
    buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    batch_size: int = 16
    yes_spellings: tuple[str, ...] = YES_SPELLINGS
    no_spellings: tuple[str, ...] = NO_SPELLINGS

    def __post_init__(self):
        if self.max_prompt_len > max(self.buckets):
            top = max(self.buckets)
            raise ValueError(
                f"max_prompt_len {self.max_prompt_len} exceeds the largest bucket {top}"
            )

    @property
    def prompt_format(self) -> str:
        return TEMPLATES.get(self.template, self.template)


# ----------------------------------------------------------------------------------------------
# Host side: judge prompts with the budget rule.


def last_nonempty_line(response: str) -> str:
    """The response's last line with non-whitespace content, stripped ("" if there is none)."""
    for line in reversed(response.splitlines()):
        if line.strip():
            return line.strip()
    return ""


@dataclasses.dataclass
class JudgePrompt:
    """One tokenized judge prompt and what was cut to fit the budget."""

    ids: list[int]
    empty: bool = False  # the response had no non-empty line: rewards are forced to 0
    cut_question: bool = False
    cut_response: bool = False
    cut_hard: bool = False  # the reference alone did not fit: the prompt's tail was kept


def _middle_cut(tok: Tokenizer, ids: list[int], keep: int) -> str:
    head = keep - keep // 2
    return f"{tok.decode(ids[:head])} {CUT_MARK} {tok.decode(ids[len(ids) - keep // 2 :])}"


def build_judge_prompt(
    tok: Tokenizer, question: str, response: str, reference: str, cfg: JudgeConfig
) -> JudgePrompt:
    """Token ids of the judge prompt for one row, cut to `cfg.max_prompt_len` by the budget rule."""
    line = last_nonempty_line(response)

    def render(q: str, r: str) -> list[int]:
        user = cfg.prompt_format.format(question=q, response=r, reference=reference)
        if not cfg.chat_template:
            return tok.encode(user)
        msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
            {"role": "user", "content": user}
        ]
        return tok.chat_ids(msgs)

    out = JudgePrompt(render(question, line), empty=not line)
    budget = cfg.max_prompt_len
    if len(out.ids) <= budget:
        return out
    # 1. Cut the middle of the question, shrinking until the prompt fits (re-tokenizing each time:
    #    the pieces do not tokenize exactly as the whole).
    q_ids = tok.encode(question)
    keep = len(q_ids) - (len(out.ids) - budget) - 4
    q = question
    while len(out.ids) > budget and keep > 0:
        q = _middle_cut(tok, q_ids, keep)
        out.ids, out.cut_question = render(q, line), True
        keep -= max(len(out.ids) - budget, 0) + 4
    if len(out.ids) > budget:
        q, out.cut_question = CUT_MARK, True
        out.ids = render(q, line)
    # 2. Then the response line, from the left.
    r_ids = tok.encode(line)
    keep = len(r_ids) - (len(out.ids) - budget) - 4
    while len(out.ids) > budget and keep > 0:
        out.ids = render(q, f"{CUT_MARK} {tok.decode(r_ids[len(r_ids) - keep :])}")
        out.cut_response = True
        keep -= max(len(out.ids) - budget, 0) + 4
    # 3. Last resort: the reference (with the template) alone is over budget.
    if len(out.ids) > budget:
        out.ids, out.cut_hard = out.ids[-budget:], True
    return out


# ----------------------------------------------------------------------------------------------
# Device side: one jitted prefill -> the verdict distribution.


@flax.struct.dataclass
class JudgeScores:
    """Per-row judge outputs, all [N] (fp32 unless noted).

    verdict: int32, 1 = greedy token is a YES spelling, 0 = a NO spelling, -1 = neither.
    greedy: int32, the judge's greedy first token.
    """

    p_yes: jax.Array
    p_no: jax.Array
    verdict: jax.Array
    greedy: jax.Array
    binary: jax.Array
    soft: jax.Array
    soft_normalized: jax.Array


@functools.partial(jax.jit, static_argnames=("graphdef",))
def judge_scores(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    ids: jax.Array,
    mask: jax.Array,
    yes_ids: jax.Array,
    no_ids: jax.Array,
    valid: jax.Array,
) -> JudgeScores:
    """Score left-padded judge prompts ids/mask [N,T] with the judge (graphdef, state).

    yes_ids [Ky], no_ids [Kn] int32: the single-token spellings. valid [N] bool: False rows (empty
    responses, batch padding) get every reward 0. Only the last position is projected to [N, V].
    """
    hidden, _ = forward(graphdef, state, ids, positions_from_mask(mask), mask, None, True)
    logits = lm_logits(graphdef, state, hidden[:, -1])  # [N, V]
    probs = jax.nn.softmax(logits, axis=-1)
    p_yes = jnp.take(probs, yes_ids, axis=-1).sum(-1)
    p_no = jnp.take(probs, no_ids, axis=-1).sum(-1)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    is_yes = jnp.any(greedy[:, None] == yes_ids[None], axis=-1)
    is_no = jnp.any(greedy[:, None] == no_ids[None], axis=-1)
    verdict = jnp.where(is_yes, 1, jnp.where(is_no, 0, -1)).astype(jnp.int32)
    soft = jnp.where(is_yes, p_yes, jnp.where(is_no, 1.0 - p_no, 0.0))
    denom = p_yes + p_no
    normalized = jnp.where(denom > 0, p_yes / jnp.where(denom > 0, denom, 1.0), 0.0)
    zero = jnp.zeros_like(p_yes)
    return JudgeScores(
        p_yes=p_yes,
        p_no=p_no,
        verdict=verdict,
        greedy=greedy,
        binary=jnp.where(valid & is_yes, 1.0, 0.0),
        soft=jnp.where(valid, soft, zero),
        soft_normalized=jnp.where(valid, normalized, zero),
    )


@dataclasses.dataclass
class Rewards:
    """Host-side results for N rows (numpy arrays [N]) and the prompt-cut counts."""

    p_yes: np.ndarray
    p_no: np.ndarray
    verdict: np.ndarray  # 1 YES, 0 NO, -1 neither
    greedy: np.ndarray
    binary: np.ndarray
    soft: np.ndarray
    soft_normalized: np.ndarray
    empty: np.ndarray  # bool
    cut_question: int = 0
    cut_response: int = 0
    cut_hard: int = 0


class Judge:
    """A judge model with its tokenizer and prompt config; `score` turns text rows into rewards."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        state: nnx.State,
        tokenizer: Tokenizer,
        cfg: JudgeConfig = JudgeConfig(),
        batch_sharding: jax.sharding.Sharding | None = None,
    ):
        self.graphdef, self.state, self.tok, self.cfg = graphdef, state, tokenizer, cfg
        self.batch_sharding = batch_sharding
        yes, no = (
            tokenizer.token_ids_of(cfg.yes_spellings),
            tokenizer.token_ids_of(cfg.no_spellings),
        )
        if not yes or not no:
            raise ValueError(
                f"judge vocabulary has no single-token spelling of {'YES' if not yes else 'NO'}"
            )
        self.yes_ids, self.no_ids = jnp.asarray(yes, jnp.int32), jnp.asarray(no, jnp.int32)

    def prompts(
        self, questions: Sequence[str], responses: Sequence[str], references: Sequence[str]
    ) -> list[JudgePrompt]:
        return [
            build_judge_prompt(self.tok, q, r, a, self.cfg)
            for q, r, a in zip(questions, responses, references, strict=True)
        ]

    def score_prompts(self, prompts: Sequence[JudgePrompt], progress=None) -> Rewards:
        """Score tokenized judge prompts in fixed-size batches, each padded to a length bucket.

        Rows are sorted by length so that a batch pads to its own longest row, not the global one;
        results come back in input order. `progress(k)` is called after each batch of k rows.
        """
        n, bs = len(prompts), self.cfg.batch_size
        order = sorted(range(n), key=lambda i: len(prompts[i].ids))
        parts: list[JudgeScores] = []
        for s in range(0, n, bs):
            rows = [prompts[i] for i in order[s : s + bs]]
            pad = bs - len(rows)
            seqs = [p.ids for p in rows] + [rows[0].ids] * pad  # fixed batch shape
            length = bucket_length(max(map(len, seqs)), self.cfg.buckets)
            ids, mask = left_pad(seqs, length, self.tok.pad_id)
            valid = np.array([not p.empty for p in rows] + [False] * pad)
            if self.batch_sharding is not None:
                ids, mask, valid = jax.device_put((ids, mask, valid), self.batch_sharding)
            out = judge_scores(
                self.graphdef, self.state, ids, mask, self.yes_ids, self.no_ids, valid
            )
            k = len(rows)
            parts.append(jax.tree.map(lambda x: np.asarray(x)[:k], out))  # noqa: B023
            if progress is not None:
                progress(len(rows))
        cat = {f.name: np.zeros(0) for f in dataclasses.fields(JudgeScores)}
        if parts:
            cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in cat}
        inv = np.argsort(np.asarray(order, dtype=np.int64)) if n else np.zeros(0, np.int64)
        return Rewards(
            **{k: v[inv] for k, v in cat.items()},
            empty=np.array([p.empty for p in prompts], bool),
            cut_question=sum(p.cut_question for p in prompts),
            cut_response=sum(p.cut_response for p in prompts),
            cut_hard=sum(p.cut_hard for p in prompts),
        )

    def score(
        self,
        questions: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str],
        progress=None,
    ) -> Rewards:
        """Judge rewards for N (question, response, reference) rows."""
        return self.score_prompts(self.prompts(questions, responses, references), progress)


# ----------------------------------------------------------------------------------------------
# Rule-based rewards (host, string matching).

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


def math_equivalent(response: str, reference: str) -> float:
    """1.0 if math-verify finds the response's final answer symbolically equal to the reference."""
    from math_verify import parse, verify

    if not response.strip() or not reference.strip():
        return 0.0
    try:
        return float(verify(parse(reference), parse(response)))
    except Exception:  # math-verify raises on unparsable input in some versions; that is a 0
        return 0.0
