"""Judge scoring: one jitted prefill over a batch of judge prompts (judge/prompts.py) gives the
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
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rlvr_jax.judge.prompts import JudgeConfig, JudgePrompt, build_judge_prompt, verdict_ids
from rlvr_jax.models.kv_cache import KVCache
from rlvr_jax.models.transformer import forward, lm_logits, positions_from_mask
from rlvr_jax.multihost import to_host
from rlvr_jax.tokenizer import Tokenizer, bucket_length, left_pad

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


DEFAULT_CONFIG = JudgeConfig()  # frozen: safe to share as a default


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
        cfg: JudgeConfig = DEFAULT_CONFIG,
        batch_sharding: jax.sharding.Sharding | None = None,
    ):
        self.graphdef, self.state, self.tok, self.cfg = graphdef, state, tokenizer, cfg
        self.batch_sharding = batch_sharding
        yes, no = verdict_ids(tokenizer, cfg)
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
        Empty prompts (the response commits to nothing) never reach the model: they read as a
        sure NO (p_yes 0, p_no 1, the first NO spelling as the greedy token, every reward 0).
        """
        prefix = self.prefix_ids
        lp = len(prefix)
        shared = [lp > 0 and len(p.ids) > lp and p.ids[:lp] == prefix for p in prompts]
        groups = [
            [i for i in range(len(prompts)) if shared[i] == s and not prompts[i].empty]
            for s in (True, False)
        ]
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
        if progress is not None and empty.any():
            progress(int(empty.sum()))
        cols["p_no"][empty] = 1.0
        cols["greedy"][empty] = int(self.no_ids[0])
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
