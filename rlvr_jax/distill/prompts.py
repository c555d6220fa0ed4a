"""Judge prompts for distillation, built by reward.py exactly as the scorer builds them.

Training on the very token ids the judge will later be scored on (same template, system message,
chat template and budget cut) is what makes the distilled verdict transfer to RL.
"""

from __future__ import annotations

from collections.abc import Sequence

from rlvr_jax import reward
from rlvr_jax.tokenizer import Tokenizer


def prompt_ids(
    tokenizer: Tokenizer, rows: Sequence[dict], jcfg: reward.JudgeConfig
) -> tuple[list[list[int]], list[bool]]:
    """(judge prompt ids, empty flags) per row {question, reference, response}.

    A response that commits to nothing is one the scorer forces to reward 0 whatever the model
    says; callers drop such rows from training and score them 0 in evaluation, as reward.py does.
    """
    ps = [
        reward.build_judge_prompt(
            tokenizer, r["question"], r["response"], r["reference"], jcfg, r.get("cut")
        )
        for r in rows
    ]
    return [p.ids for p in ps], [p.empty for p in ps]


def verdict_ids(tokenizer: Tokenizer, jcfg: reward.JudgeConfig) -> tuple[list[int], list[int]]:
    """Single-token YES and NO spellings of the judge's vocabulary (as reward.Judge reads them)."""
    yes, no = tokenizer.token_ids_of(jcfg.yes_spellings), tokenizer.token_ids_of(jcfg.no_spellings)
    if not yes or not no:
        raise ValueError("the judge's vocabulary has no single-token spelling of YES or NO")
    return yes, no
