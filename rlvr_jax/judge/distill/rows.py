"""The distillation's questions and judge rows: which questions train, validate and are held out,
and the rows each teacher makes of them (examples.py writes the rows themselves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax import data, shipped
from rlvr_jax.judge.distill import examples


def resolve_source(src: str) -> str:
    """A data source as given, or where `shipped.locate` finds it (the loader reports a source
    found nowhere, naming it as given)."""
    if src.startswith("math:") or Path(src).exists() or Path(src).is_absolute():
        return src
    return str(shipped.locate(src) or src)


def load_questions(
    cfg: Any,
) -> tuple[list[data.Example], list[data.Example], list[data.Example]]:
    """(training, validation, held-out questions); any training question that is also held out is
    dropped. distill.questions_per_source > 0 keeps the first K questions of each source.
    Validation: distill.val_questions questions of the training source distill.val_source, drawn
    with the seed and removed from training (they choose the judge's calibration, so that the
    held-out test questions never choose anything)."""
    system = str(cfg.data.system_prompt) or None
    limit = int(cfg.distill.questions_per_source) or None
    load = lambda src, split, lim: (
        data.load_examples(
            resolve_source(src),
            split,
            on_error=str(cfg.data.bad_rows),
            system_prompt=system,
            limit=lim,
        ).examples
    )
    held = [ex for src in cfg.data.test for ex in load(src, "test", None)]
    held = held[: int(cfg.distill.heldout_questions) or None]
    # distill.test_in_train = f: a share f of the held-out questions train (their labelled
    # answers; an evaluation judge is given the reference anyway); the rest stay held out.
    frac, own = float(cfg.distill.get("test_in_train", 0.0)), []
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"config distill.test_in_train: {frac} is not in [0, 1)")
    if frac > 0:
        rng = np.random.default_rng([int(cfg.seed), 8])
        pick = set(rng.choice(len(held), size=int(frac * len(held)), replace=False).tolist())
        own, held = (
            [ex for i, ex in enumerate(held) if i in pick],
            [ex for i, ex in enumerate(held) if i not in pick],
        )
    k_val, val_src = int(cfg.distill.val_questions), str(cfg.distill.val_source)
    if k_val > 0 and val_src not in tuple(cfg.data.train):
        raise ValueError(f"config distill.val_source: {val_src!r} is not one of data.train")
    train, val = [], []
    for src in cfg.data.train:
        exs = examples.drop_heldout(load(src, "train", limit), held)
        if k_val > 0 and src == val_src:
            rng = np.random.default_rng([int(cfg.seed), 5])
            pick = set(rng.choice(len(exs), size=min(k_val, len(exs) - 1), replace=False).tolist())
            val += [ex for i, ex in enumerate(exs) if i in pick]
            exs = [ex for i, ex in enumerate(exs) if i not in pick]
        train += exs
    return examples.drop_heldout(train + own, val), val, held


def teacher_rows(cfg: Any, train: list[data.Example], held: list[data.Example]) -> list[dict]:
    """Training rows from the teachers named in distill.teachers, plus master-key negatives.
    `held`: every question training must not see (validation and held-out)."""
    d, seed = cfg.distill, int(cfg.seed)
    rows, asked = [], list(train)
    for t in d.teachers:
        if t == "data":
            rows += examples.labelled_rows(
                train,
                seed,
                int(d.other_answers),
                int(d.yes_forms),
                float(d.surface_rate),
                int(d.distractor_forms),
                int(d.minimal_pairs),
                int(d.swapped_references),
            )
            rows += examples.prose_rows(train, seed, int(d.get("prose_pairs", 0)))
            rows += examples.conflicting_rows(train, seed, int(d.get("conflicting", 0)))
        elif t == "onpolicy":
            answers = examples.keep_questions(onpolicy_answers(cfg, "train"), train)
            rows += examples.onpolicy_rows(answers, int(d.get("onpolicy_repeat", 1)))
        elif t == "math":
            src = f"math:{int(d.math_questions)}:{seed}"
            maths = data.load_examples(src, "train", system_prompt=None).examples
            maths = examples.drop_heldout(maths, held)
            rows += examples.math_rows(maths, seed)
            asked += maths
        elif t == "judge":
            from rlvr_jax.judge.distill import teacher_judge

            rows += teacher_judge.judge_rows(cfg, train)
        else:
            known = "data, math, judge, onpolicy"
            raise ValueError(f"config distill.teachers: unknown teacher {t!r} ({known})")
    rows += examples.master_key_rows(asked, seed, int(d.probes_per_question), list(d.probe_kinds))
    examples.check_no_leak(rows, held)
    return rows


def onpolicy_answers(cfg: Any, split: str) -> list[dict]:
    """The labelled on-policy answers of `split` from config distill.onpolicy_file ("" = none)
    and distill.onpolicy_more (more files of that form, e.g. RL-trained policies' answers)."""
    from rlvr_jax.judge import onpolicy

    paths = [str(cfg.distill.get("onpolicy_file", ""))] + list(cfg.distill.get("onpolicy_more", ()))
    return [r for p in paths if p for r in onpolicy.load(resolve_source(p), split)]


def eval_rows(cfg: Any, held: list[data.Example]) -> list[dict]:
    """Held-out rows; with distill.eval_probes_per_question = k > 0, k probe kinds per question
    (drawn once from the seed) instead of every probe."""
    rows = examples.heldout_rows(held, int(cfg.seed))
    k = int(cfg.distill.eval_probes_per_question)
    if k <= 0:
        return rows
    rng = np.random.default_rng([int(cfg.seed), 4])
    kinds = sorted({r["kind"] for r in rows if r["kind"].startswith("probe:")})
    kept, picks = [], {}
    for r in rows:
        if r["kind"].startswith("probe:"):
            if r["question"] not in picks:
                picks[r["question"]] = set(
                    rng.choice(kinds, size=min(k, len(kinds)), replace=False)
                )
            if r["kind"] not in picks[r["question"]]:
                continue
        kept.append(r)
    return kept
