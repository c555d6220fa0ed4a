"""Rewards: the generative judge (soft and binary, from one jitted prefill) and rule-based rewards.

The judge reads what the response commits to (`answers.answer_view`: its answer statements, else
its first and last complete sentences; `JudgeConfig.view`), inside the paper's verifier prompt
(verbatim, `PAPER_PROMPT`) as the user message of the judge's chat template with the system message
"You are a helpful assistant.". One jitted prefill over the batch of judge prompts gives the
next-token distribution at the end of each prompt; only that last position is projected to the
vocabulary.

From it, in one pass (c = the verdict = the judge's greedy first token):
- verdict: "YES" (c is a YES spelling), "NO" (a NO spelling) or "NEITHER" (any other token, e.g.
  "The" from a judge that starts a sentence): three values, so that a judge which answers neither
  is reported as such and never counted as a NO (`verdict_label`, `neither_rate`);
- p_yes, p_no: probability mass of the YES / NO spellings that are single tokens of the judge;
- binary = 1 if c is a YES spelling, else 0 (NO and NEITHER alike);
- soft (paper Eq. 4) = p_yes if c is YES, 1 - p_no if c is NO, 0 if c is neither;
- soft_normalized = p_yes / (p_yes + p_no).

A judge may carry a calibration, `JudgeConfig.yes_bias`: a log-odds offset added to the logits of
its YES spellings before all of the above (the distillation chooses it on validation questions
held out from training, never on the test questions; 0 leaves the model's distribution as is).

Prompt budget rule (`JudgeConfig.max_prompt_len` tokens): an over-long prompt is cut inside the
QUESTION first (its middle is replaced by "[...]", keeping its start and its end, where the ask
usually is); only if the question is gone entirely is the response line cut, from the left (its end,
the final answer, is kept); the reference is never cut, except as a last resort when it alone cannot
fit, where the prompt's last `max_prompt_len` tokens are kept. Every cut is counted.

A response that commits to nothing (an empty one, or one cut off before its first sentence ends)
gets every reward 0 and the verdict NO without being shown to the judge, and without failing the
batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rlvr_jax.answers import answer_view
from rlvr_jax.models.kv_cache import KVCache
from rlvr_jax.models.transformer import forward, lm_logits, positions_from_mask
from rlvr_jax.multihost import to_host
from rlvr_jax.rules import last_nonempty_line
from rlvr_jax.rules import math_equivalent as math_equivalent  # rule rewards, re-exported
from rlvr_jax.rules import rule_binary as rule_binary
from rlvr_jax.rules import rule_jaccard as rule_jaccard
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
# The response comes last: the candidates of one question then share everything before it, so
# scoring G of them (or training on them, distill/units.py) runs the shared part once.
SHORT_PROMPT = (
    "Question: {question}\nReference answer: {reference}\n"
    "Does the student's final answer match the reference answer? Answer YES or NO.\n"
    "Student's final answer: {response}"
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
    view: what of a response fills {response}: "committed" (`answers.answer_view`) or "last_line"
    (its last non-empty line, what judges distilled before the committed view were trained on).
    system: the system message (None: no system message); chat_template: False = raw prompt text.
    max_prompt_len: token budget of one judge prompt (see the module docstring for the cut rule).
    buckets: padded prompt lengths (one compile per bucket); batch_size: rows per jitted call.
    """

    template: str = "paper"
    view: str = "committed"
    system: str | None = SYSTEM_MESSAGE
    chat_template: bool = True
    max_prompt_len: int = 1024
    # Judge prompts cluster (the template is ~250 tokens): fine buckets there waste less padding.
    buckets: tuple[int, ...] = (
        32,
        64,
        96,
        128,
        192,
        256,
        320,
        384,
        448,
        512,
        640,
        768,
        1024,
        1536,
        2048,
    )
    batch_size: int = 16
    yes_spellings: tuple[str, ...] = YES_SPELLINGS
    no_spellings: tuple[str, ...] = NO_SPELLINGS
    yes_bias: float = 0.0  # calibration: added to the YES spellings' logits (module docstring)

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"judge view {self.view!r}: use one of {', '.join(VIEWS)}")
        if self.max_prompt_len > max(self.buckets):
            top = max(self.buckets)
            raise ValueError(
                f"max_prompt_len {self.max_prompt_len} exceeds the largest bucket {top}"
            )

    @property
    def prompt_format(self) -> str:
        return TEMPLATES.get(self.template, self.template)

    def prompt_settings(self) -> dict:
        """How this judge's prompts are written and read: what `JUDGE_FILE` stores next to its
        weights."""
        return {
            "template": self.template,
            "view": self.view,
            "system": self.system,
            "chat_template": self.chat_template,
            "max_prompt_len": self.max_prompt_len,
            "yes_bias": self.yes_bias,
        }


# A judge's prompt settings, stored in its model directory (and HF export) by the distillation,
# so that every scorer writes the prompts the judge was trained on.
JUDGE_FILE = "judge.json"
VIEWS = ("committed", "last_line")


def prompt_settings_of(model_dir: str | Path) -> dict | None:
    """The prompt settings stored with a judge (`JudgeConfig.prompt_settings`), or None."""
    path = Path(model_dir) / JUDGE_FILE
    if not path.is_file():
        return None
    # Absent from the files of judges distilled before calibration / the committed view: they
    # were trained without an offset, on last lines.
    optional = {"yes_bias": 0.0, "view": "last_line"}
    try:
        d = {**optional, **json.loads(path.read_text())}
        out = {k: d[k] for k in JudgeConfig().prompt_settings()}
        out["yes_bias"] = float(out["yes_bias"])
        return out
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a judge prompt-settings file ({e!r})") from None


def judge_config_for(model_dir: str | Path | None, template: str = "auto", **kw) -> JudgeConfig:
    """JudgeConfig for the judge in model_dir. template "auto": the judge's stored prompt settings
    (`JUDGE_FILE`), else the paper's prompt; any other template is used as given, with the
    default system message. kw: the other JudgeConfig fields (batch_size, max_prompt_len, view,
    ...); a stored max_prompt_len or view wins over the default but not over an explicit one;
    view "auto" (or None) means the stored one.
    """
    kw = {k: v for k, v in kw.items() if v is not None and not (k == "view" and v == "auto")}
    stored = prompt_settings_of(model_dir) if model_dir is not None else None
    if template != "auto" or stored is None:
        settings = {**kw, "template": "paper" if template == "auto" else template}
    else:
        settings = {**stored, **kw}
    if "max_prompt_len" in settings and "buckets" not in settings:
        top = int(settings["max_prompt_len"])
        settings["buckets"] = tuple(b for b in JudgeConfig.buckets if b < top) + (top,)
    return JudgeConfig(**settings)


# ----------------------------------------------------------------------------------------------
# Host side: judge prompts with the budget rule.


@dataclasses.dataclass
class JudgePrompt:
    """One tokenized judge prompt and what was cut to fit the budget."""

    ids: list[int]
    empty: bool = False  # the response commits to nothing: rewards are forced to 0, verdict NO
    cut_question: bool = False
    cut_response: bool = False
    cut_hard: bool = False  # the reference alone did not fit: the prompt's tail was kept


def _middle_cut(tok: Tokenizer, ids: list[int], keep: int) -> str:
    head = keep - keep // 2
    return f"{tok.decode(ids[:head])} {CUT_MARK} {tok.decode(ids[len(ids) - keep // 2 :])}"


def response_view(response: str, view: str, cut: bool | None = None) -> str:
    """What the judge is shown of `response` under `view` ("" = nothing committed)."""
    if view == "last_line":
        return last_nonempty_line(response)
    return answer_view(response, cut).text


def build_judge_prompt(
    tok: Tokenizer,
    question: str,
    response: str,
    reference: str,
    cfg: JudgeConfig,
    cut: bool | None = None,
) -> JudgePrompt:
    """Token ids of the judge prompt for one row, cut to `cfg.max_prompt_len` by the budget rule.
    cut: the response was stopped by the token limit (None: unknown; see answers.py)."""
    line = response_view(response, cfg.view, cut)

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
# The three verdicts, by JudgeScores.verdict code.
VERDICT_LABELS: dict[int, str] = {1: "YES", 0: "NO", -1: "NEITHER"}


def verdict_label(code: int) -> str:
    """ "YES" (1), "NO" (0) or "NEITHER" (-1: the judge's first token is neither spelling)."""
    return VERDICT_LABELS[int(code)]


def neither_rate(verdict: np.ndarray) -> float:
    """Share of rows [N] whose verdict is NEITHER (code -1); 0.0 for no rows."""
    v = np.asarray(verdict)
    return float(np.mean(v == -1)) if v.size else 0.0


# ---------------------------------------------------------------------------------------------
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


def calibrated(logits: jax.Array, yes_ids: jax.Array, yes_bias) -> jax.Array:
    """logits [N, V] with `yes_bias` added at the YES spellings (the judge's calibration)."""
    return logits.at[:, yes_ids].add(jnp.asarray(yes_bias, logits.dtype))


def verdict_probs(logits: jax.Array, yes_ids, no_ids) -> tuple[jax.Array, jax.Array]:
    """P(YES), P(NO) [N] from next-token logits [N, V], each summed over its spellings: the one
    verdict read-out of the RL scorer and the distillation's evaluation. Clipped to 1: a float32
    sum of the spellings' probabilities can round past 1 (by ~2e-7) for a sure verdict, and a
    reward (or 1 - p_no) outside [0, 1] breaks every consumer that checks its range (sklearn's
    AUC and calibration among them)."""
    probs = jax.nn.softmax(logits, axis=-1)
    p_yes = jnp.minimum(jnp.take(probs, yes_ids, axis=-1).sum(-1), 1.0)
    p_no = jnp.minimum(jnp.take(probs, no_ids, axis=-1).sum(-1), 1.0)
    return p_yes, p_no


def _scores(logits: jax.Array, yes_ids, no_ids, valid, yes_bias=0.0) -> JudgeScores:
    """The rewards from next-token logits [N, V] (see the module docstring)."""
    logits = calibrated(logits, yes_ids, yes_bias)
    p_yes, p_no = verdict_probs(logits, yes_ids, no_ids)
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


@functools.partial(jax.jit, static_argnames=("graphdef",))
def judge_scores(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    ids: jax.Array,
    mask: jax.Array,
    yes_ids: jax.Array,
    no_ids: jax.Array,
    valid: jax.Array,
    yes_bias: jax.Array | float = 0.0,
) -> JudgeScores:
    """Score left-padded judge prompts ids/mask [N,T] with the judge (graphdef, state).

    yes_ids [Ky], no_ids [Kn] int32: the single-token spellings. valid [N] bool: False rows (empty
    responses, batch padding) get every reward 0. yes_bias: the judge's calibration (a traced
    scalar). Only the last position is projected to [N, V].
    """
    hidden, _ = forward(graphdef, state, ids, positions_from_mask(mask), mask, None, True)
    return _scores(lm_logits(graphdef, state, hidden[:, -1]), yes_ids, no_ids, valid, yes_bias)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def judge_scores_shared_prefix(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prefix: jax.Array,
    ids: jax.Array,
    mask: jax.Array,
    yes_ids: jax.Array,
    no_ids: jax.Array,
    valid: jax.Array,
    yes_bias: jax.Array | float = 0.0,
) -> JudgeScores:
    """`judge_scores` for prompts that all start with the same tokens `prefix` [Lp].

    The prefix (system message and instructions: most of the paper prompt) is computed once, its
    KV cache shared by the N rows, whose remaining tokens ids/mask [N,Ts] are left-padded: padding
    sits between the prefix and a row's own tokens, masked out, with positions that skip it. The
    same attention as the full forward over prefix + row, for about a third of the work.
    """
    lp, (n, ts) = prefix.shape[0], ids.shape
    cfg = nnx.merge(graphdef, state).cfg  # trace time only: the model's static config
    cache = KVCache.init(cfg, 1, lp + ts)
    pos = jnp.arange(lp, dtype=jnp.int32)[None]
    _, cache = forward(graphdef, state, prefix[None], pos, None, cache, True)
    positions = lp + positions_from_mask(mask)
    hidden, _ = forward(graphdef, state, ids, positions, mask, cache.repeat(n), True)
    return _scores(lm_logits(graphdef, state, hidden[:, -1]), yes_ids, no_ids, valid, yes_bias)


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
        self,
        questions: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str],
        cut: Sequence[bool] | None = None,
    ) -> list[JudgePrompt]:
        cut = [None] * len(responses) if cut is None else list(cut)
        return [
            build_judge_prompt(self.tok, q, r, a, self.cfg, c)
            for q, r, a, c in zip(questions, responses, references, cut, strict=True)
        ]

    @functools.cached_property
    def prefix_ids(self) -> list[int]:
        """The tokens every judge prompt of this template starts with (before the question),
        less two at the end, where the question's first characters could merge into a token."""
        sentinel = "\x00QUESTION\x00"
        ids = build_judge_prompt(self.tok, sentinel, "r", "a", self.cfg).ids
        text = self.tok.decode(ids, skip_special_tokens=False)
        cut = text.find(sentinel)
        return self.tok.encode(text[:cut])[:-2] if cut > 0 else []

    def score_prompts(self, prompts: Sequence[JudgePrompt], progress=None) -> Rewards:
        """Score tokenized judge prompts in fixed-size batches, each padded to a length bucket.

        Prompts starting with the template's shared prefix (all of them, unless a budget cut kept
        only a prompt's tail) go through `judge_scores_shared_prefix`, the rest through
        `judge_scores`. Rows are sorted by length so that a batch pads to its own longest row;
        results come back in input order. `progress(k)` is called after each batch of k rows.
        """
        prefix = self.prefix_ids
        lp = len(prefix)
        shared = [lp > 0 and len(p.ids) > lp and p.ids[:lp] == prefix for p in prompts]
        groups = [[i for i in range(len(prompts)) if shared[i] == s] for s in (True, False)]
        parts: list[tuple[list[int], JudgeScores]] = []
        for use_prefix, group in zip((True, False), groups, strict=True):
            group.sort(key=lambda i: len(prompts[i].ids))
            for s in range(0, len(group), self.cfg.batch_size):
                idx = group[s : s + self.cfg.batch_size]
                out = self._score_batch([prompts[i] for i in idx], lp if use_prefix else 0)
                parts.append((idx, out))
                if progress is not None:
                    progress(len(idx))
        cols = {f.name: np.zeros(len(prompts), np.float32) for f in dataclasses.fields(JudgeScores)}
        for k in ("verdict", "greedy"):
            cols[k] = np.zeros(len(prompts), np.int32)
        for idx, out in parts:
            for k in cols:
                cols[k][idx] = getattr(out, k)
        empty = np.array([p.empty for p in prompts], bool)
        cols["verdict"][empty] = 0  # nothing committed is a NO, whatever the padded row gave
        return Rewards(
            **cols,
            empty=empty,
            cut_question=sum(p.cut_question for p in prompts),
            cut_response=sum(p.cut_response for p in prompts),
            cut_hard=sum(p.cut_hard for p in prompts),
        )

    def _score_batch(self, rows: list[JudgePrompt], lp: int) -> JudgeScores:
        """One jitted call for <= batch_size rows (padded with copies of the first row)."""
        k, pad = len(rows), self.cfg.batch_size - len(rows)
        seqs = [p.ids[lp:] for p in rows] + [rows[0].ids[lp:]] * pad
        length = bucket_length(max(map(len, seqs)), self.cfg.buckets)
        ids, mask = left_pad(seqs, length, self.tok.pad_id)
        valid = np.array([not p.empty for p in rows] + [False] * pad)
        prefix = np.asarray(rows[0].ids[:lp], np.int32)
        if self.batch_sharding is not None:
            ids, mask, valid = jax.device_put((ids, mask, valid), self.batch_sharding)
            if isinstance(self.batch_sharding, NamedSharding):
                whole = NamedSharding(self.batch_sharding.mesh, PartitionSpec())
                prefix = jax.device_put(prefix, whole)
        args = (self.yes_ids, self.no_ids, valid, np.float32(self.cfg.yes_bias))
        if lp:
            out = judge_scores_shared_prefix(self.graphdef, self.state, prefix, ids, mask, *args)
        else:
            out = judge_scores(self.graphdef, self.state, ids, mask, *args)
        # to_host: rows split over other processes' devices are gathered (multihost.py).
        return jax.tree.map(lambda x: to_host(x)[:k], out)

    def score(
        self,
        questions: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str],
        progress=None,
        cut: Sequence[bool] | None = None,
    ) -> Rewards:
        """Judge rewards for N (question, response, reference) rows; cut [N]: which responses
        the token limit stopped (None: unknown)."""
        return self.score_prompts(self.prompts(questions, responses, references, cut), progress)
