"""Every RL step's rollouts as rows: what the policy wrote, and what each reward made of it.

`train.log_rollouts = True` writes WORKDIR/rollouts/step_XXXXXX.jsonl after each step's judge
stage (process 0; written to a temporary file and renamed, so a resumed run rewrites a step it
repeats with the same rows). Rows: id, subject, question, reference, sample (0..G-1 within its
prompt), response, cut (the token limit stopped it), tokens, reward (the optimised one), advantage
(at the response's first token), and every score the reward runner gave (the judge's p_yes, soft,
binary and verdict, the rules', the likelihood rewards'). They are what a judge's quality must be
measured on, and where reward hacking shows first: read them, or label them blind
(tools/onpolicy_answers.py) and score any judge on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax import atomic

FOLDER = "rollouts"


def path(workdir: Path, step: int) -> Path:
    return Path(workdir) / FOLDER / f"step_{step:06d}.jsonl"


def _value(x: Any) -> Any:
    x = x.item() if isinstance(x, np.generic) else x
    return x if isinstance(x, str | int | bool) else float(x)


def write(
    workdir: Path,
    step: int,
    examples: list,
    responses: list[str],
    cut: np.ndarray,
    tokens: np.ndarray,
    rewards: np.ndarray,
    advantages: np.ndarray,
    scores: dict[str, np.ndarray],
) -> Path:
    """One step's N = B*G rollout rows (examples [B], the other arguments [N])."""
    g = len(responses) // max(len(examples), 1)
    # Scores of one value per row; a runner's counts (e.g. judge prompts cut) are not per row.
    per_row = {k: np.asarray(v) for k, v in scores.items()}
    per_row = {k: v for k, v in per_row.items() if v.ndim == 1 and len(v) == len(responses)}
    rows = []
    for i, text in enumerate(responses):
        ex = examples[i // g]
        row = {
            "id": ex.id, "subject": ex.subject, "question": ex.question,
            "reference": ex.reference, "sample": i % g, "response": text,
            "cut": bool(cut[i]), "tokens": int(tokens[i]), "reward": float(rewards[i]),
            "advantage": float(advantages[i]),
        }  # fmt: skip
        row.update({k: _value(v[i]) for k, v in per_row.items() if k not in row})
        rows.append(row)
    out = path(workdir, step)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_jsonl(out, rows)
    return out
