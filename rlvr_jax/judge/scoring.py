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
from rlvr_jax.models.prefix import continue_rows, prefill
from rlvr_jax.models.transformer import forward, lm_logits, positions_from_mask
from rlvr_jax.multihost import to_host
from rlvr_jax.tokenizer import Tokenizer, bucket_length, common_prefix_len, left_pad

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
    prefix_ids: jax.Array,
    prefix_mask: jax.Array,
    owner: jax.Array,
    ids: jax.Array,
    mask: jax.Array,
    yes_ids: jax.Array,
    no_ids: jax.Array,
    valid: jax.Array,
    yes_bias: jax.Array | float = 0.0,
) -> JudgeScores:
    """`judge_scores` for prompts made of a shared prefix and a row's own tokens.

    prefix_ids/prefix_mask [U,Lp] (left-padded): the distinct prefixes (the template's
    instructions; with a rollout's G answers to one question, the question and reference too);
    owner [N]: each row's prefix; ids/mask [N,Ts] (left-padded): the rows' remaining tokens. The
    prefixes run once (`models.prefix`): the full forward's verdicts, for the prefixes' share of
    the work less.
    """
    _, cache = prefill(graphdef, state, prefix_ids, prefix_mask, ids.shape[1])
    hidden = continue_rows(graphdef, state, cache, ids, mask, owner)
    return _scores(lm_logits(graphdef, state, hidden[:, -1]), yes_ids, no_ids, valid, yes_bias)


def shared_prefix_lengths(seqs: Sequence[Sequence[int]], floor: int, extra: int = 8) -> list[int]:
    """Per token sequence, how many first tokens to compute as a shared prefix.

    `floor`: the length every sequence shares (the template's prefix). Sequences that share more
    than floor + extra tokens with a neighbour in sorted order (a rollout's answers to one
    question: same question and reference) form a run, and share the run's common prefix; every
    sequence keeps at least its last token as its own (the verdict is read there).
    """
    out = [floor] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    run = [order[0]] if order else []

    def close(run: list[int]) -> None:
        if len(run) > 1:
            cut = common_prefix_len([seqs[i] for i in run], own=1)
            for i in run:
                out[i] = max(floor, cut)

    for a, b in zip(order, order[1:], strict=False):
        if common_prefix_len([seqs[a], seqs[b]]) > floor + extra:
            run.append(b)
        else:
            close(run)
            run = [b]
    close(run)
    return out


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
        only a prompt's tail) go through `judge_scores_shared_prefix`, with a longer prefix where
        several prompts share more (`shared_prefix_lengths`: a rollout's answers to one question),
        the rest through `judge_scores`. Rows are sorted by the length of their own tokens so that
        a batch pads to its own longest row; results come back in input order. `progress(k)` is
        called after each batch of k rows. Empty prompts (the response commits to nothing) never
        reach the model: they read as a sure NO (p_yes 0, p_no 1, the first NO spelling as the
        greedy token, every reward 0).
        """
        prefix = self.prefix_ids
        lp = len(prefix)
        live = [i for i, p in enumerate(prompts) if not p.empty]
        shared = [i for i in live if lp > 0 and len(prompts[i].ids) > lp
                  and prompts[i].ids[:lp] == prefix]  # fmt: skip
        alone = sorted(set(live) - set(shared), key=lambda i: len(prompts[i].ids))
        lens = shared_prefix_lengths([prompts[i].ids for i in shared], lp)
        cuts = dict(zip(shared, lens, strict=True))
        shared.sort(key=lambda i: len(prompts[i].ids) - cuts[i])
        parts: list[tuple[list[int], JudgeScores]] = []
        for group, cut in ((shared, cuts), (alone, None)):
            for s in range(0, len(group), self.cfg.batch_size):
                idx = group[s : s + self.cfg.batch_size]
                heads = [cut[i] for i in idx] if cut is not None else None
                parts.append((idx, self._score_batch([prompts[i] for i in idx], heads)))
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

    def _score_batch(self, rows: list[JudgePrompt], cuts: list[int] | None) -> JudgeScores:
        """One jitted call for <= batch_size rows (padded with copies of the first row); cuts:
        each row's shared prefix length (None: no prefix, the whole prompt in one pass)."""
        k, pad = len(rows), self.cfg.batch_size - len(rows)
        rows = rows + [rows[0]] * pad
        cuts = [0] * len(rows) if cuts is None else cuts + [cuts[0]] * pad
        valid = np.array([True] * k + [False] * pad)
        ids, mask = self._padded([p.ids[c:] for p, c in zip(rows, cuts, strict=True)])
        extra = ()
        if cuts[0]:
            heads: dict[tuple[int, ...], int] = {}
            owner = [
                heads.setdefault(tuple(p.ids[:c]), len(heads))
                for p, c in zip(rows, cuts, strict=True)
            ]
            # Prefix rows padded to a power of two, their length to a bucket: few shapes to compile.
            fill = [next(iter(heads))] * ((1 << (len(heads) - 1).bit_length()) - len(heads))
            extra = (*self._padded(list(heads) + fill), np.asarray(owner, np.int32))
        if self.batch_sharding is not None:
            ids, mask, valid = jax.device_put((ids, mask, valid), self.batch_sharding)
            if isinstance(self.batch_sharding, NamedSharding) and extra:
                whole = NamedSharding(self.batch_sharding.mesh, PartitionSpec())
                extra = tuple(jax.device_put(x, whole) for x in extra)
        args = (self.yes_ids, self.no_ids, valid, np.float32(self.cfg.yes_bias))
        if extra:
            out = judge_scores_shared_prefix(self.graphdef, self.state, *extra, ids, mask, *args)
        else:
            out = judge_scores(self.graphdef, self.state, ids, mask, *args)
        # to_host: rows split over other processes' devices are gathered (multihost.py).
        return jax.tree.map(lambda x: to_host(x)[:k], out)

    def _padded(self, seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """seqs left-padded to the bucket of the longest: (ids [n, T], mask [n, T])."""
        return left_pad(seqs, bucket_length(max(map(len, seqs)), self.cfg.buckets), self.tok.pad_id)

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
