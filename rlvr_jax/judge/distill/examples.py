"""Judge training rows from teachers, and the held-out evaluation rows.

A row is a dict in the judgment-file layout of probes.py / tools/score.py: {id, question,
reference, response, label ("YES"/"NO"), subject, field, kind} plus `teacher` (who gave the label).
Teachers (PAPER.md, "Judge distillation"):

- `labelled_rows`: the data's own labels. The reference and its rephrasings are YES; the
  distractors and other questions' references are NO; all written as a policy's final line in
  varied forms.
- `math_rows`: the rule verifier (math-verify) labels the candidate answers of generated math
  questions: the label is whatever the verifier says, not how the candidate was made.
- `judge_rows` (distill/teacher_judge.py): a judge model labels a policy's on-policy rollouts.
- `master_key_rows`: content-free and truncated responses (probes.PROBES) labelled NO, always
  added (arXiv 2507.08794).
- `onpolicy_rows`: the policy's own answers with a teacher's labels (judge/onpolicy.py): the
  rambling, cut-off, prose-answered responses the judge scores during RL.
- `prose_rows` and `conflicting_rows`: the reference and a distractor stated in prose (YES / NO),
  and responses that commit to two different answers, the reference among them (NO): what the
  judge reads of on-policy answers (answers.answer_view), made from every question.

Held-out rows (`heldout_rows`) come from test questions, which `check_no_leak` keeps out of
training: probes.answer_rows (reference/rephrasings YES, distractors NO) plus every probe.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

from rlvr_jax.data import Example
from rlvr_jax.judge import probes
from rlvr_jax.judge.distill import minimal_pairs as mp

# Final-line forms besides probes.ANSWER_FORMS, so that the judge does not learn one phrasing
# (the held-out rows use ANSWER_FORMS only).
EXTRA_FORMS: tuple[str, ...] = (
    "The answer is {}.",
    "Final answer: {}",
    "**Answer:** {}",
    "{}",
    "Thus, the answer is {}.",
    "Therefore, the final answer is {}.",
    "So the answer is **{}**.",
    "We compute step by step.\nTherefore, the answer is {}",
)
TRAIN_FORMS = probes.ANSWER_FORMS + EXTRA_FORMS


_NUM = r"[-+]?\d[\d,]*(?:\.\d+)?"
_SCALE = r"(?: (?:thousand|million|billion|trillion))?"
_NOT_UNITS = {"thousand", "million", "billion", "trillion", "dollars", "percent"}


def surface_forms(answer: str) -> list[str]:
    """Rewrites of an answer that keep its meaning: "$25" as "25 dollars", "+4 units" as "4",
    "an inferior good" as "inferior good", "P = 20" as "20", "-1" as "-1.0", a changed first
    letter case. A judge trained on one spelling per answer judges such pairs different (a
    reference "$25" against the response "25 dollars"); training on rewritten answers, YES and
    NO alike, teaches that the surface form is not the cue. Empty when no rule applies."""
    a = answer.strip().rstrip(".").strip()
    out = []
    if m := re.fullmatch(rf"\$\s?({_NUM}{_SCALE})", a):
        out += [f"{m[1]} dollars", m[1]]
    if m := re.fullmatch(rf"({_NUM}{_SCALE}) dollars", a):
        out.append(f"${m[1]}")
    if m := re.fullmatch(rf"({_NUM})\s?%", a):
        out.append(f"{m[1]} percent")
    if m := re.fullmatch(rf"({_NUM}) percent", a):
        out.append(f"{m[1]}%")
    if m := re.fullmatch(r"\+(\d.*)", a):
        out.append(m[1])
    if (m := re.fullmatch(rf"[-+]?{_NUM} ([a-z]+)", a)) and m[1] not in _NOT_UNITS:
        out.append(a.split(" ")[0].lstrip("+"))  # "+4 units" -> "4"
    if m := re.fullmatch(r"(?:a|an|the) (.+)", a, flags=re.IGNORECASE):
        out.append(m[1])
    if m := re.fullmatch(r"[A-Za-z]\w{0,3} ?= ?(.+)", a):
        out.append(m[1])
    if re.fullmatch(r"[-+]?\d+", a):
        out.append(f"{a}.0")
    if a[:1].isalpha() and not a[:2].isupper():
        out.append((a[0].lower() if a[0].isupper() else a[0].upper()) + a[1:])
    return [x for x in dict.fromkeys(out) if x and x != answer]


def _rewrite(answer: str, rate: float, rng: np.random.Generator) -> str:
    """With probability `rate`, one of the answer's `surface_forms` (when it has any)."""
    forms = surface_forms(answer)
    if not forms or rng.random() >= rate:
        return answer
    return forms[int(rng.integers(len(forms)))]


class LeakError(ValueError):
    """A held-out question appears in the training rows."""


def _norm(q: str) -> str:
    return " ".join(q.lower().split())


def _row(ex: Example, response: str, label: str, kind: str, k: int, teacher: str) -> dict:
    """probes.py's judgment row, plus who labelled it."""
    return {**probes.judgment_row(ex, response, label, kind, k), "teacher": teacher}


def _form(answer: str, rng: np.random.Generator) -> str:
    return TRAIN_FORMS[int(rng.integers(len(TRAIN_FORMS)))].format(answer)


def labelled_rows(
    examples: Sequence[Example],
    seed: int,
    other_answers: int = 1,
    yes_forms: int = 1,
    surface_rate: float = 0.0,
    distractor_forms: int = 1,
    minimal_pairs: int = 0,
    swapped_references: int = 0,
) -> list[dict]:
    """Rows labelled by the data: per question, the reference and rephrasings (YES, each in
    `yes_forms` forms), the distractors (NO, each in `distractor_forms` forms: the hard
    negatives, close to the reference in content) and `other_answers` references of other questions
    of the same subject (NO; harder than random ones). Each answer, YES or NO, is replaced by one
    of its `surface_forms` with probability `surface_rate`. With `minimal_pairs` = k > 0, also up
    to k rewrites of the reference that keep its value (YES, kind "equivalent") and up to k
    minimal changes of it (NO, kind "near_miss"), from distill/minimal_pairs.py; they draw from
    their own random stream, so the other rows stay the same. With `swapped_references` = k > 0,
    up to k of each question's rephrasings also serve as the reference of a prompt of their own,
    whose candidates are the original reference and the other rephrasings (YES, kind "swap_yes")
    and the distractors (NO, "swap_no"): equivalence both ways, and more pairs of paraphrases
    (their own random stream too). Same seed, same rows."""
    rng = np.random.default_rng([seed, 1])
    rng_mp = np.random.default_rng([seed, 6])
    rng_sw = np.random.default_rng([seed, 7])
    form = lambda a, r=rng: _form(_rewrite(a, surface_rate, r), r)  # r: the row kind's stream
    by_subject: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_subject.setdefault(ex.subject, []).append(i)
    rows = []
    for i, ex in enumerate(examples):
        yes = [ex.reference, *ex.rephrasings]
        for k, a in enumerate(yes * yes_forms):
            kind = "reference" if k % len(yes) == 0 else "rephrasing"
            rows.append(_row(ex, form(a), "YES", kind, k, "data"))
        for k, a in enumerate(ex.distractors * distractor_forms):
            rows.append(_row(ex, form(a), "NO", "distractor", k, "data"))
        own = {_norm(a) for a in yes}
        pool = [j for j in by_subject[ex.subject] if j != i]
        picked = 0
        for j in rng.permutation(pool).tolist():
            if picked == other_answers:
                break
            other = examples[j].reference
            if _norm(other) in own:  # two questions with the same answer: not a negative
                continue
            rows.append(_row(ex, form(other), "NO", "other_answer", picked, "data"))
            picked += 1
        for label, kind, found in (
            ("YES", "equivalent", mp.equivalents(ex.reference)),
            ("NO", "near_miss", mp.near_misses(ex.reference)),
        ):
            take = min(minimal_pairs, len(found))
            for k, j in enumerate(rng_mp.choice(len(found), size=take, replace=False).tolist()):
                rows.append(_row(ex, _form(found[j], rng_mp), label, kind, k, "data"))
        take = min(swapped_references, len(ex.rephrasings))
        for s, j in enumerate(
            rng_sw.choice(len(ex.rephrasings), size=take, replace=False).tolist()
        ):
            alt = dataclasses.replace(ex, reference=ex.rephrasings[j])
            same = [ex.reference] + [a for i, a in enumerate(ex.rephrasings) if i != j]
            for label, kind, answers in (
                ("YES", "swap_yes", same),
                ("NO", "swap_no", ex.distractors),
            ):
                for k, a in enumerate(answers):
                    rows.append(_row(alt, form(a, rng_sw), label, kind, 100 * s + k, "data"))
    return rows


# Answers stated in prose, as a small policy states them; {a} is the answer, {s} the subject.
PROSE_FORMS: tuple[str, ...] = (
    "This is known as {a}. It is a key idea in {s}.",
    "The result is {a}. This follows from the definitions involved.",
    "{A} is the correct term here. It is widely used in {s}.",
    "It is called {a}.",
    "In this case, we get {a}. This is the standard result.",
    "To answer this, recall the main concept.\n\nHere it is {a}, as explained above.",
)


def _prose(answer: str, subject: str, rng: np.random.Generator) -> str:
    f = PROSE_FORMS[int(rng.integers(len(PROSE_FORMS)))]
    return f.format(a=answer, A=answer[:1].upper() + answer[1:], s=subject)


def prose_rows(examples: Sequence[Example], seed: int, per_question: int) -> list[dict]:
    """Per question, up to `per_question` of its YES answers (reference, rephrasings) and as many
    distractors (NO), each stated in a prose form (PROSE_FORMS)."""
    rng = np.random.default_rng([seed, 8])
    rows = []
    for ex in examples:
        for label, kind, answers in (
            ("YES", "prose_yes", [ex.reference, *ex.rephrasings]),
            ("NO", "prose_no", list(ex.distractors)),
        ):
            take = min(per_question, len(answers))
            for k, j in enumerate(rng.choice(len(answers), size=take, replace=False).tolist()):
                rows.append(_row(ex, _prose(answers[j], ex.subject, rng), label, kind, k, "data"))
    return rows


def conflicting_rows(examples: Sequence[Example], seed: int, per_question: int) -> list[dict]:
    """Per question, up to `per_question` responses that state the reference and a distractor as
    final answers, in either order: several conflicting answers are not a committed one (NO)."""
    rng = np.random.default_rng([seed, 9])
    rows = []
    for ex in examples:
        take = min(per_question, len(ex.distractors))
        for k, j in enumerate(rng.choice(len(ex.distractors), size=take, replace=False).tolist()):
            pair = [ex.reference, ex.distractors[j]]
            if rng.random() < 0.5:
                pair.reverse()
            text = f"{_form(pair[0], rng)}\nWait, let me check.\n{_form(pair[1], rng)}"
            rows.append(_row(ex, text, "NO", "conflicting", k, "data"))
    return rows


def onpolicy_rows(answers: Sequence[dict], repeat: int = 1) -> list[dict]:
    """Judge rows from labelled on-policy answers (rlvr_jax/judge/onpolicy.py rows): correct -> YES,
    else NO, kind "onpolicy", each `repeat` times (they are few next to the data's rows); the
    "cut" flag travels with the row, so that the judge reads them as the scorer will."""
    rows = []
    for a in answers:
        for k in range(repeat):
            rows.append(
                {
                    "id": f"{a['id']}/onpolicy/{a.get('sample', '')}/{k}",
                    "question": a["question"],
                    "reference": a["reference"],
                    "response": a["response"],
                    "cut": bool(a["cut"]),
                    "label": "YES" if a["correct"] else "NO",
                    "subject": a["subject"],
                    "field": a.get("field", ""),
                    "kind": "onpolicy",
                    "teacher": "onpolicy",
                }
            )
    return rows


def math_rows(examples: Sequence[Example], seed: int) -> list[dict]:
    """Candidates of math questions (reference, rephrasings, distractors, in varied forms)
    labelled by math-verify against the reference: the rule verifier is the teacher."""
    from math_verify import parse, verify

    rng = np.random.default_rng([seed, 2])
    rows = []
    for ex in examples:
        gold = parse(f"${ex.reference}$")
        for k, a in enumerate([ex.reference, *ex.rephrasings, *ex.distractors]):
            response = _form(a, rng)
            ok = bool(gold) and bool(verify(gold, parse(response.splitlines()[-1])))
            rows.append(_row(ex, response, "YES" if ok else "NO", "math", k, "math-verify"))
    return rows


def master_key_rows(
    examples: Sequence[Example], seed: int, per_question: int, kinds: Sequence[str] | None = None
) -> list[dict]:
    """`per_question` master-key probes per question, drawn from `kinds` (default: all of
    probes.PROBES), labelled NO."""
    kinds = list(probes.PROBES) if kinds is None or not len(kinds) else list(kinds)
    rng = np.random.default_rng([seed, 3])
    rows = []
    for ex in examples:
        take = min(per_question, len(kinds))
        for k in rng.choice(len(kinds), size=take, replace=False).tolist():
            for r in probes.probe_rows([ex], [kinds[k]]):
                r["teacher"] = "master-key"
                rows.append(r)
    return rows


def heldout_rows(examples: Sequence[Example], seed: int) -> list[dict]:
    """Evaluation rows of held-out questions: probes.answer_rows (reference and rephrasings YES,
    distractors NO, in probes.ANSWER_FORMS) and every master-key probe (NO)."""
    rows = probes.answer_rows(examples, seed=seed) + probes.probe_rows(examples)
    for r in rows:
        r["teacher"] = "master-key" if r["kind"].startswith("probe:") else "data"
    return rows


def keep_questions(rows: Iterable[dict], examples: Iterable[Example]) -> list[dict]:
    """The rows whose question is one of `examples`' (same text up to case and spacing)."""
    asked = {_norm(ex.question) for ex in examples}
    return [r for r in rows if _norm(r["question"]) in asked]


def drop_heldout(examples: Iterable[Example], heldout: Iterable[Example]) -> list[Example]:
    """Training examples minus any whose question is a held-out question (same text up to case
    and spacing), so that shared questions between files can never leak."""
    held = {_norm(ex.question) for ex in heldout}
    return [ex for ex in examples if _norm(ex.question) not in held]


def check_no_leak(train_rows: Iterable[dict], heldout: Iterable[Example]) -> None:
    """Raise LeakError if any training row asks a held-out question."""
    held = {_norm(ex.question) for ex in heldout}
    for r in train_rows:
        if _norm(r["question"]) in held:
            raise LeakError(f"training row {r['id']} asks held-out question {r['question']!r:.80}")


def label_counts(rows: Iterable[dict]) -> dict[str, int]:
    """{"YES": n, "NO": m, "teacher:<name>": k, ...}, for the run's summary."""
    out: dict[str, int] = {}
    for r in rows:
        for key in (r["label"], f"teacher:{r['teacher']}"):
            out[key] = out.get(key, 0) + 1
    return out
