"""Rewards without a judge: how likely a policy finds the reference answer after a response.

The scored text is the policy's own chat prompt, then an assistant turn written as the system
prompt asks for an answer (`data.DEFAULT_SYSTEM_PROMPT`):

    <chat prompt> + reasoning + "\\nTherefore, the answer is" + " " + reference

where the reasoning is the response before its first answer line (`split_reasoning`, with the
judge's own parser `answers.answer_line_start`: "Therefore, the answer is ...", "So the final
answer is ...", "The answer would be ...", "**Answer:** ..."). A response with no answer line is
reasoning as a whole: its every word is context, none of it is replaced. An empty reasoning
leaves "Therefore, the answer is" + " " + reference. Only the reference's tokens are scored,
under the scoring weights (the current policy by default, as RLPR and VeriFree do: the reward
then follows what the policy has learned; the frozen reference policy is the alternative,
`judge.likelihood_model`).

Two rewards per row (arXiv 2506.18254 for RLPR, 2602.03979 for the comparison):
- likelihood = mean over the reference's tokens of log p(token | everything before it);
- rlpr = clip(mean p - mean p_base, 0, 1): RLPR's mean token probability, debiased by the same
  score with an empty reasoning (what the policy gives the reference with no reasoning at all), and
  clipped to [0, 1] as RLPR's `threshold_0` shaping does.

Device side: one jitted pass per batch (`likelihood_pass`). A batch's distinct prompts are
prefilled once into a KV cache (the G samples of a prompt share it, as in the sampler); the rows'
own tokens (reasoning, answer line, reference: left-padded, so that every reference ends at the
same slot) then attend to their prompt's cache rows; the baseline rows (answer line and reference
only) do the same from the distinct prompts. The log-probs come from the update's own head
read-out (`logprobs.completion_logprobs`), on the reference's positions only.

Shapes: U distinct prompts, N rows, P prompt length, S row suffix length, S0 baseline suffix
length, R reference length (all padded to buckets), D model dim.
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

from rlvr_jax import mesh as mesh_lib
from rlvr_jax import multihost as mh
from rlvr_jax.judge.answers import answer_line_start
from rlvr_jax.logprobs import completion_logprobs
from rlvr_jax.models.prefix import continue_rows, prefill
from rlvr_jax.tokenizer import Message, Tokenizer, left_pad

# The rewards read from the scoring policy's own likelihood of the reference (config judge.reward).
LIKELIHOOD_REWARDS = ("likelihood", "rlpr")

# The answer line's lead, as the paper's system prompt words it (data.DEFAULT_SYSTEM_PROMPT).
ANSWER_LEAD = "Therefore, the answer is"
# Lengths are padded to powers of two from these floors: one compile per bucket used, few buckets.
LENGTH_FLOOR = 32
REF_FLOOR = 8


def split_reasoning(response: str) -> tuple[str, bool]:
    """(reasoning, has_answer_line): the response before its first answer line, stripped; the
    whole response (stripped) and False when it has none."""
    start = answer_line_start(response)
    if start is None:
        return response.strip(), False
    return response[:start].strip(), True


def assistant_text(reasoning: str) -> str:
    """The assistant turn before the reference: reasoning + newline + the answer lead."""
    return f"{reasoning}\n{ANSWER_LEAD}" if reasoning else ANSWER_LEAD


def _pow2(n: int, floor: int = 1) -> int:
    """The smallest power of two >= max(n, floor)."""
    return 1 << max(0, (max(n, floor) - 1).bit_length())


@dataclasses.dataclass
class HostBatch:
    """One batch on the host (numpy), ready for `likelihood_pass`.

    prompt_ids/prompt_mask [U,P]; group [N] int32 (row -> its prompt); suffix_ids/suffix_mask
    [N,S]; base_ids/base_mask [U,S0]; ref_mask [N,R] and base_ref_mask [U,R] bool (the reference's
    tokens, right-aligned); has_line [N] bool; cut [N] bool (reasoning cut to its last tokens).
    """

    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    group: np.ndarray
    suffix_ids: np.ndarray
    suffix_mask: np.ndarray
    base_ids: np.ndarray
    base_mask: np.ndarray
    ref_mask: np.ndarray
    base_ref_mask: np.ndarray
    has_line: np.ndarray
    cut: np.ndarray


def build_batch(
    tok: Tokenizer,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[str],
    references: Sequence[str],
    max_reasoning_tokens: int = 1024,
    rows: int | None = None,
    min_prompts: int = 1,
) -> HostBatch:
    """Token arrays for N rows: prompts [N] (token ids of each row's policy prompt), responses and
    references [N]. Rows with the same prompt and reference share one prefill and one baseline.

    A reasoning longer than `max_reasoning_tokens` keeps its last tokens (those nearest the
    answer). `rows` pads N with copies of row 0 (fixed shapes; the caller drops them). The U
    distinct prompts are padded to a power of two, at least `min_prompts` (so that the mesh's
    batch axes divide them).
    """
    n = len(responses)
    pad = (rows or n) - n
    if pad < 0:
        raise ValueError(f"{n} rows do not fit a batch of {rows}")
    prompts, responses, references = (
        list(prompts) + [prompts[0]] * pad,
        list(responses) + [responses[0]] * pad,
        list(references) + [references[0]] * pad,
    )
    keys: dict[tuple, int] = {}
    group, suffixes, ref_lens, has_line, cut = [], [], [], [], []
    refs_of_group: list[list[int]] = []
    prompt_of_group: list[list[int]] = []
    for p, resp, ref in zip(prompts, responses, references, strict=True):
        ref_ids = tok.encode(" " + ref.strip())
        if not ref_ids:
            raise ValueError("a reference encodes to no tokens")
        k = (tuple(p), tuple(ref_ids))
        if k not in keys:
            keys[k] = len(keys)
            prompt_of_group.append(list(p))
            refs_of_group.append(ref_ids)
        reasoning, line = split_reasoning(resp)
        r_ids = tok.encode(reasoning)
        cut.append(len(r_ids) > max_reasoning_tokens)
        if cut[-1]:
            reasoning = tok.decode(r_ids[len(r_ids) - max_reasoning_tokens :]).strip()
        group.append(keys[k])
        suffixes.append(tok.encode(assistant_text(reasoning)) + ref_ids)
        ref_lens.append(len(ref_ids))
        has_line.append(line)
    u = _pow2(len(keys), min_prompts)
    prompt_of_group += [prompt_of_group[0]] * (u - len(keys))
    refs_of_group += [refs_of_group[0]] * (u - len(keys))
    base = [tok.encode(ANSWER_LEAD) + r for r in refs_of_group]
    r_len = _pow2(max(map(len, refs_of_group)), REF_FLOOR)
    # A suffix holds at least one token before its reference window (the head reads the hidden
    # state before each reference token from inside the suffix).
    length = lambda seqs: _pow2(max(max(map(len, seqs)), r_len + 1), LENGTH_FLOOR)
    p_ids, p_mask = left_pad(prompt_of_group, length(prompt_of_group), tok.pad_id)
    s_ids, s_mask = left_pad(suffixes, length(suffixes), tok.pad_id)
    b_ids, b_mask = left_pad(base, length(base), tok.pad_id)
    right = lambda lens: np.arange(r_len)[None, :] >= r_len - np.asarray(lens)[:, None]
    return HostBatch(
        prompt_ids=p_ids,
        prompt_mask=p_mask,
        group=np.asarray(group, np.int32),
        suffix_ids=s_ids,
        suffix_mask=s_mask,
        base_ids=b_ids,
        base_mask=b_mask,
        ref_mask=right(ref_lens),
        base_ref_mask=right([len(r) for r in refs_of_group]),
        has_line=np.asarray(has_line, bool),
        cut=np.asarray(cut, bool),
    )


@flax.struct.dataclass
class LikelihoodScores:
    """Per-row scores [N] fp32: mean log-prob and mean probability of the reference's tokens after
    the reasoning, the mean probability with no reasoning (its prompt's baseline) and RLPR's
    debiased reward clip(mean_p - base_p, 0, 1)."""

    likelihood: jax.Array
    mean_p: jax.Array
    base_p: jax.Array
    rlpr: jax.Array


def debiased(mean_p: jax.Array, base_p: jax.Array) -> jax.Array:
    """RLPR's reward [N]: the mean probability minus its no-reasoning baseline, clipped to [0, 1]
    (RLPR's `threshold_0` shaping; the difference never exceeds 1)."""
    return jnp.clip(mean_p - base_p, 0.0, 1.0)


def _suffix_logprobs(graphdef, params, cache, ids, mask, owner, ref_len):
    """Log-probs [rows, R] of the last R tokens of suffixes ids/mask [rows, S] that continue the
    prompts owner [rows] of `cache` (None: row n continues prompt n)."""
    hidden = continue_rows(graphdef, params, cache, ids, mask, owner)
    return completion_logprobs(graphdef, params, hidden, ids, ref_len)


@functools.partial(jax.jit, static_argnames=("graphdef", "ref_len"))
def likelihood_pass(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    group: jax.Array,
    suffix_ids: jax.Array,
    suffix_mask: jax.Array,
    base_ids: jax.Array,
    base_mask: jax.Array,
    ref_mask: jax.Array,
    base_ref_mask: jax.Array,
    ref_len: int,
) -> LikelihoodScores:
    """The scores of one batch (see `HostBatch` for the shapes): U prompts prefilled once, then
    the U baseline suffixes and the N row suffixes from their prompts' cache rows."""
    room = max(suffix_ids.shape[1], base_ids.shape[1])
    _, cache = prefill(graphdef, params, prompt_ids, prompt_mask, room)

    def mean_stats(logp, m):
        m = m.astype(jnp.float32)
        count = jnp.maximum(m.sum(-1), 1.0)
        return (logp * m).sum(-1) / count, (jnp.exp(logp) * m).sum(-1) / count

    base_lp = _suffix_logprobs(graphdef, params, cache, base_ids, base_mask, None, ref_len)
    _, base_p = mean_stats(base_lp, base_ref_mask)
    lp = _suffix_logprobs(graphdef, params, cache, suffix_ids, suffix_mask, group, ref_len)
    likelihood, mean_p = mean_stats(lp, ref_mask)
    base_rows = jnp.take(base_p, group, axis=0)
    return LikelihoodScores(
        likelihood=likelihood,
        mean_p=mean_p,
        base_p=base_rows,
        rlpr=debiased(mean_p, base_rows),
    )


class LikelihoodScorer:
    """Scores rows of (policy prompt ids, response, reference) with given weights, in batches of
    `batch_size` rows (one `likelihood_pass` each), rows split over the mesh's batch axes."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        tokenizer: Tokenizer,
        batch_size: int = 16,
        mesh: jax.sharding.Mesh | None = None,
        max_reasoning_tokens: int = 1024,
    ):
        self.graphdef, self.tok, self.batch_size, self.mesh = graphdef, tokenizer, batch_size, mesh
        self.max_reasoning_tokens = max_reasoning_tokens

    def prompt_ids(self, messages: Sequence[Message], chat_template: bool = True) -> list[int]:
        """A row's policy prompt: its chat with the generation prompt (the sampler's prompt)."""
        if chat_template:
            return self.tok.chat_ids(list(messages))
        return self.tok.encode(next(m["content"] for m in reversed(messages)))

    def _place(self, x: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(x, mesh_lib.batch_sharding(self.mesh, x.shape))

    def score(
        self,
        params: nnx.State,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[str],
        references: Sequence[str],
        progress=None,
    ) -> dict[str, np.ndarray]:
        """{likelihood, rlpr, mean_p, base_p, answer_line, reasoning_cut}: [N] arrays, in input
        order. `progress(k)` is called after each batch of k rows."""
        n = len(responses)
        cols = {k: np.zeros(n, np.float32) for k in ("likelihood", "rlpr", "mean_p", "base_p")}
        cols["answer_line"] = np.zeros(n, np.float32)
        cols["reasoning_cut"] = np.zeros(n, np.float32)
        for s in range(0, n, self.batch_size):
            sl = slice(s, min(s + self.batch_size, n))
            split = mesh_lib.batch_size_multiple(self.mesh) if self.mesh is not None else 1
            hb = build_batch(self.tok, prompts[sl], responses[sl], references[sl],
                             self.max_reasoning_tokens, self.batch_size, split)  # fmt: skip
            arrays = [
                self._place(getattr(hb, f))
                for f in ("prompt_ids", "prompt_mask", "group", "suffix_ids", "suffix_mask",
                          "base_ids", "base_mask", "ref_mask", "base_ref_mask")
            ]  # fmt: skip
            out = likelihood_pass(self.graphdef, params, *arrays, ref_len=hb.ref_mask.shape[1])
            k = sl.stop - sl.start
            for name in ("likelihood", "rlpr", "mean_p", "base_p"):
                cols[name][sl] = mh.to_host(getattr(out, name))[:k]
            cols["answer_line"][sl] = hb.has_line[:k]
            cols["reasoning_cut"][sl] = hb.cut[:k]
            if progress is not None:
                progress(k)
        return cols


def std_filter(rewards: np.ndarray, group_size: int, threshold: float) -> np.ndarray:
    """RLPR's prompt filter: keep [N] bool, False for every row of a prompt whose G rewards have a
    standard deviation (population) below `threshold` (0 keeps all). Rows [N] = B groups of G
    adjacent samples."""
    r = np.asarray(rewards, np.float64).reshape(-1, group_size)
    keep = ~(r.std(axis=1) < threshold) if threshold > 0 else np.ones(len(r), bool)
    return np.repeat(keep, group_size)


def score_questions(
    scorer: LikelihoodScorer,
    state: nnx.State,
    questions: Sequence[str],
    responses: Sequence[str],
    references: Sequence[str],
    system_prompt: str,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """`likelihood` and `rlpr` [N] of free-standing rows (a question asked with `system_prompt`,
    a response, its reference), in input order. Rows of one question and reference are scored
    next to each other, so that they share their prompt's prefill."""
    import sys

    from tqdm import tqdm

    n = len(questions)
    order = sorted(range(n), key=lambda i: (questions[i], references[i]))
    ids: dict[str, list[int]] = {}
    for q in questions:
        if q not in ids:
            msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
            ids[q] = scorer.prompt_ids([*msgs, {"role": "user", "content": q}])
    with tqdm(total=n, desc="likelihood", unit="row", file=sys.stderr, disable=not progress) as bar:
        got = scorer.score(
            state,
            [ids[questions[i]] for i in order],
            [responses[i] for i in order],
            [references[i] for i in order],
            progress=bar.update,
        )
    out = {k: np.zeros(n, np.float64) for k in ("likelihood", "rlpr")}
    for j, i in enumerate(order):
        for k in out:
            out[k][i] = float(got[k][j])
    return out
