"""The held-out evaluation row by row: greedy answers, every reward score (rows in the order that
pads judge prompts least), judge votes, and the judge on the master-key probes.

Used by `python -m rlvr_jax.evaluate` and by the training run's held-out evaluation (heldout.py);
the vote rule is described in evaluate.py's docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from rlvr_jax import builders, data
from rlvr_jax import mesh as mesh_lib
from rlvr_jax.judge import agreement, probes, runner
from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.rollout import SamplingConfig, completions_from, generate


class QA(NamedTuple):
    """What RewardRunner.score reads from a row."""

    question: str
    reference: str


def generate_responses(
    cfg: Any,
    policy: Any,
    examples: Sequence[data.Example],
    sc: SamplingConfig,
    batch_size: int,
    mesh: jax.sharding.Mesh | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Any], int]:
    """One completion per example, in fixed-size batches (the last padded with copies).

    Batch k samples with key fold_in(PRNGKey(cfg.seed), k) (unused when greedy). Returns
    (`rollout.Completion` per example, number of prompts cut to fit the largest bucket).
    """
    tok, out, cut = policy.tokenizer, [], 0
    batch_size = min(batch_size, len(examples))  # no padding rows beyond the questions
    sharding = mesh_lib.rows_sharding(mesh, (batch_size, 1))
    for k, s in enumerate(range(0, len(examples), batch_size)):
        chunk = examples[s : s + batch_size]
        ids, mask, c = builders.policy_prompts(cfg, tok, chunk, batch=batch_size)
        key = jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), k)
        ro = generate(policy.graphdef, policy.state, ids, mask, key, sc, 1, stop_ids=tok.stop_ids,
                      pad_id=tok.pad_id, batch_sharding=sharding)  # fmt: skip
        out.extend(completions_from(ro, tok, len(chunk)))
        cut += c  # counts real prompts only (the batch's pad rows are not counted)
        if progress is not None:
            progress(len(chunk))
    return out, cut


def judge_votes(
    p_yes: np.ndarray, empty: np.ndarray, greedy: np.ndarray, votes: int, key: jax.Array
) -> tuple[np.ndarray, np.ndarray]:
    """Judge votes [N, M] and their majority verdict [N] (see the module docstring).

    p_yes [N]: P(YES) of the judge's first token; empty [N] bool; greedy [N]: greedy verdict (0/1).
    """
    if votes == 1:
        v = np.asarray(greedy, int)[:, None]
    else:
        u = np.asarray(jax.random.uniform(key, (len(p_yes), votes)))
        v = (u < np.asarray(p_yes)[:, None]).astype(int)
    v = np.where(np.asarray(empty, bool)[:, None], 0, v)
    return v, agreement.majority(v)


def score_rows(
    rewards: runner.RewardRunner,
    qa: Sequence[QA],
    responses: Sequence[str],
    chunk: int,
    bar: tqdm,
    cut: Sequence[bool] | None = None,
) -> dict[str, np.ndarray]:
    """RewardRunner.score over rows in chunks of `chunk` (progress per chunk), in input order.

    Rows are scored in order of the length of what the judge reads (question, response,
    reference), so that each chunk pads to a small prompt bucket; scores are per row, so the
    order does not change them.
    """
    cuts = [None] * len(responses) if cut is None else list(cut)
    size = [len(q.question) + len(judge_prompts.response_view(r, "committed", c)) + len(q.reference)
            for q, r, c in zip(qa, responses, cuts, strict=True)]  # fmt: skip
    order = np.argsort(size, kind="stable")
    parts: list[dict[str, np.ndarray]] = []
    for s in range(0, len(qa), chunk):
        idx = order[s : s + chunk]
        parts.append(
            rewards.score([qa[i] for i in idx], [responses[i] for i in idx], [cuts[i] for i in idx])
        )
        bar.update(len(idx))
    inv = np.argsort(order)
    keys = [k for k in parts[0] if k != "judge_truncated"]
    out = {k: np.concatenate([p[k] for p in parts])[inv] for k in keys}
    out["judge_truncated"] = np.array([sum(int(p.get("judge_truncated", [0])[0]) for p in parts)])
    return out


def judged_columns(
    scores: dict[str, np.ndarray], responses: Sequence[str], votes: int, key: jax.Array
) -> dict[str, np.ndarray]:
    """Per-row judge columns: votes [N, M], binary (majority) [N], greedy binary [N]."""
    empty = scores["no_answer"].astype(bool)
    v, maj = judge_votes(scores["judge_p_yes"], empty, scores["binary"], votes, key)
    return {"votes": v, "binary": maj, "greedy_binary": scores["binary"].astype(int)}


def json_scalar(x: Any) -> Any:
    """JSON-ready scalar: numpy -> python, rounded floats."""
    if isinstance(x, np.generic):
        x = x.item()
    return round(x, 6) if isinstance(x, float) else x


def probe_report(
    rewards: runner.RewardRunner,
    examples: Sequence[data.Example],
    kinds: Sequence[str] | None,
    votes: int,
    key: jax.Array,
    chunk: int,
    bar_kw: dict,
) -> tuple[dict, list[dict]]:
    """The judge on the master-key probes of `examples` (all labelled NO).

    Returns ({n, fpr (YES rate with the same vote rule as the answers), soft_mean,
    rule_binary_fpr, per_probe: {probe: fpr}}, the judged probe rows).
    """
    prs = probes.probe_rows(examples, kinds)
    responses = [r["response"] for r in prs]
    with tqdm(total=len(prs), desc="probes", unit="row", **bar_kw) as bar:
        qa = [QA(r["question"], r["reference"]) for r in prs]
        ps = score_rows(rewards, qa, responses, chunk, bar)
    pj = judged_columns(ps, responses, votes, key)
    rows = [
        {**r, "binary": int(pj["binary"][i]), "votes": pj["votes"][i].tolist(),
         "soft": json_scalar(ps["soft"][i]), "judge_p_yes": json_scalar(ps["judge_p_yes"][i]),
         "rule_binary": json_scalar(ps["rule_binary"][i])}
        for i, r in enumerate(prs)
    ]  # fmt: skip
    per_probe: dict[str, list[int]] = {}
    for r in rows:
        per_probe.setdefault(r["kind"].removeprefix("probe:"), []).append(r["binary"])
    res = {
        "n": len(rows),
        "fpr": float(np.mean([r["binary"] for r in rows])),
        "soft_mean": float(np.mean([r["soft"] for r in rows])),
        "rule_binary_fpr": float(np.mean([r["rule_binary"] for r in rows])),
        "per_probe": {k: float(np.mean(v)) for k, v in per_probe.items()},
        "judge_truncated_prompts": int(ps["judge_truncated"][0]),
    }
    return res, rows
