"""The paper's teacher: a judge model labelling a policy's on-policy rollouts.

For each of `distill.teacher_prompts` training questions the policy samples
`distill.teacher_samples` answers (rollout.sample_prompts, the RL sampler); the teacher judge
(scoring.Judge, the RL scorer, with the paper's prompt) gives each a verdict, which becomes the
row's label. Noisy, truncated and wrong answers are kept, as in the paper: they are what the
distilled judge will see during RL. Meant for accelerators (a 7B-72B teacher); any model
directory works, so the pipeline can be exercised on a CPU with a small one.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np

from rlvr_jax.data import Example
from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge import scoring
from rlvr_jax.models.default import resolve_model_dir
from rlvr_jax.models.model_dir import load_model
from rlvr_jax.rollout import SamplingConfig, sample_prompts


def judge_rows(cfg: Any, questions: list[Example]) -> list[dict]:
    """Rows {question, reference, response, label, ...} labelled by the teacher judge."""
    from tqdm import tqdm

    d = cfg.distill
    if not d.teacher_judge:
        raise ValueError("config distill.teacher_judge: a judge model directory is required")
    rng = np.random.default_rng([int(cfg.seed), 5])
    picked = [questions[i] for i in rng.permutation(len(questions))[: int(d.teacher_prompts)]]
    policy = load_model(resolve_model_dir(str(d.teacher_policy)))
    teacher = load_model(resolve_model_dir(str(d.teacher_judge)))
    judge = scoring.Judge(
        teacher.graphdef,
        teacher.state,
        teacher.tokenizer,
        judge_prompts.JudgeConfig(template="paper"),
    )
    sc = SamplingConfig(
        max_new_tokens=int(d.teacher_max_new_tokens),
        temperature=float(cfg.rollout.temperature),
        top_p=float(cfg.rollout.top_p),
        top_k=int(cfg.rollout.top_k),
    )
    g, batch = int(d.teacher_samples), int(cfg.rollout.prompts_per_step)
    key = jax.random.PRNGKey(int(cfg.seed))
    rows = []
    for s in tqdm(range(0, len(picked), batch), desc="teacher rollouts", file=sys.stderr):
        exs = picked[s : s + batch]
        key, sub = jax.random.split(key)
        outs = sample_prompts(
            policy.graphdef,
            policy.state,
            policy.tokenizer,
            [list(ex.messages) for ex in exs],
            sc,
            sub,
            n=g,
            batch=batch,
        )
        flat = [(ex, c.text) for ex, cs in zip(exs, outs, strict=True) for c in cs]
        verdicts = judge.score(
            [ex.question for ex, _ in flat], [t for _, t in flat], [ex.reference for ex, _ in flat]
        ).binary
        for j, ((ex, text), v) in enumerate(zip(flat, verdicts, strict=True)):
            rows.append(
                {
                    "id": f"{ex.id}/rollout/{s + j}",
                    "question": ex.question,
                    "reference": ex.reference,
                    "response": text,
                    "label": "YES" if v == 1 else "NO",
                    "subject": ex.subject,
                    "field": ex.field,
                    "kind": "rollout",
                    "teacher": f"judge:{d.teacher_judge}",
                }
            )
    return rows
