"""Grow the on-policy labelled answers (data/onpolicy/answers.jsonl) with another policy's answers.

    python tools/onpolicy_answers.py prompts --out P.jsonl
    python tools/sample.py --model MODEL_DIR --prompts P.jsonl --out S.jsonl --max-new-tokens 160 \
        --temperature 0
    python tools/onpolicy_answers.py sheet --samples S.jsonl [MORE.jsonl ...] --out SHEET.jsonl
    (two readers label SHEET independently and blind: rows {id, response, label 0/1, reason})
    python tools/onpolicy_answers.py add --samples S.jsonl --policy NAME --sample greedy \
        --labels A.jsonl --second B.jsonl [--file data/onpolicy/answers.jsonl]

`prompts`: every training question of the shipped subjects with the paper's system prompt, as
tools/sample.py input rows that keep id, subject, question and reference. `sheet`: the sampled
answers shuffled, with only what a reader needs (id, question, reference, response, cut), so the
reader cannot tell which policy or sample wrote an answer. An RL run's rollout logs
(WORKDIR/rollouts/step_*.jsonl, `train.log_rollouts`) serve as samples too: the answers the reward
judge scored during RL. `add`: appends the answers with the
first reader's label (`correct`), the second's (`second_label`) and the first's reason (`note`),
each in its question's split (that of the shipped file, data/onpolicy/answers.jsonl; a question
it does not hold is an error: the split is by question). `--file` names the file to grow (made
when missing): data/onpolicy/rl_answers.jsonl holds the answers of RL-trained policies, apart from
the default policy's, so that a judge recipe names which it trains on. The two readers must
agree on every answer; a disagreement is printed and nothing is written, so that it is settled
by reading, not by picking a reader: `--settled` gives a third reading of those answers (its
label is `correct`, its reason the note, marked "settled").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from rlvr_jax import atomic, data, shipped
from rlvr_jax.jsonl import RowError, read_rows
from rlvr_jax.judge import onpolicy

SUBJECTS = ("economics", "medicine", "chemistry", "psychology", "education")


def prompts() -> list[dict]:
    rows = []
    for s in SUBJECTS:
        path = shipped.find(f"data/{s}/train.jsonl")
        for ex in data.load_examples(str(path), system_prompt=data.DEFAULT_SYSTEM_PROMPT).examples:
            rows.append({
                "id": ex.id, "subject": ex.subject, "question": ex.question,
                "reference": ex.reference, "messages": [dict(m) for m in ex.messages],
            })  # fmt: skip
    return rows


def _samples(paths: list[Path]) -> list[dict]:
    """Answers from tools/sample.py's output (completion, stopped, completion_ids) or from a run's
    rollout log (rollout_log.py: response, cut, tokens), in one form: response, cut, tokens."""
    out = []
    for path in paths:
        step = re.fullmatch(r"step_(\d+)", Path(path).stem)  # a rollout log's step
        for where, r in read_rows(path):
            if step:
                r = {**r, "step": int(step.group(1))}
            if "completion" in r and "stopped" in r:
                r = {**r, "response": r["completion"], "cut": not r["stopped"],
                     "tokens": len(r.get("completion_ids", ()))}  # fmt: skip
            for k in ("id", "subject", "question", "reference", "response", "cut"):
                if k not in r:
                    raise RowError(f"{where}: {k}: missing (expected tools/sample.py's output or "
                                   "a rollout log)")  # fmt: skip
            out.append(r)
    return out


def sheet(samples: list[dict], seed: int = 0) -> list[dict]:
    rows = [
        {"id": r["id"], "question": r["question"], "reference": r["reference"],
         "response": r["response"], "cut": r["cut"]}
        for r in samples
    ]  # fmt: skip
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


def _labels(path: Path) -> dict[tuple[str, str], dict]:
    got = {}
    for where, r in read_rows(path):
        if r.get("label") not in (0, 1):
            raise RowError(f"{where}: label: expected 0 or 1, got {r.get('label')!r}")
        got[(str(r.get("id")), str(r.get("response")))] = r
    return got


def add(samples, policy, sample, first, second, file: Path, settled: dict | None = None) -> int:
    # A question's split is the shipped file's (and the target's, which may not exist yet).
    known = onpolicy.load(onpolicy.default_path()) + (onpolicy.load(file) if file.exists() else [])
    split = {r["id"]: r["split"] for r in known}
    new, disagree = [], 0
    for r in samples:
        key = (str(r["id"]), r["response"])
        if key not in first or key not in second:
            raise RowError(f"answer to {r['id']} is not labelled by both readers")
        if r["id"] not in split:
            raise RowError(
                f"{r['id']}: a question of no split (the shipped on-policy file does not hold it)"
            )
        a, b = first[key], second[key]
        if a["label"] != b["label"]:
            if settled and key in settled:  # a third reading of this answer decides
                a = {**settled[key], "reason": f"settled: {settled[key].get('reason', '')}"}
            else:
                disagree += 1
                print(f"disagree {r['id']}: {a['label']} ({a.get('reason')}) / {b['label']} "
                      f"({b.get('reason')}): {r['response'][:160]!r}", file=sys.stderr)  # fmt: skip
        new.append({
            "id": r["id"], "subject": r["subject"], "question": r["question"],
            "reference": r["reference"], "sample": sample, "policy": policy,
            "response": r["response"], "response_tokens": int(r.get("tokens", 0)),
            "cut": bool(r["cut"]), "correct": int(a["label"]), "second_label": int(b["label"]),
            "note": str(a.get("reason", "")), "split": split[r["id"]],
        } | ({"step": r["step"]} if "step" in r else {}))  # fmt: skip
    if disagree:
        print(f"error: the readers disagree on {disagree} answers: nothing written",
              file=sys.stderr)  # fmt: skip
        return 1
    old = [r for _, r in read_rows(file)] if file.exists() else []
    atomic.write_jsonl(file, old + new)
    print(f"{file}: {len(old)} + {len(new)} answers ({sum(r['correct'] for r in new)} correct)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prompts").add_argument("--out", required=True, type=Path)
    sh = sub.add_parser("sheet")
    sh.add_argument("--samples", required=True, type=Path, nargs="+")
    sh.add_argument("--out", required=True, type=Path)
    sh.add_argument("--seed", type=int, default=0)
    ad = sub.add_parser("add")
    ad.add_argument("--samples", required=True, type=Path, nargs="+")
    ad.add_argument("--policy", required=True, help="the policy's name in the file")
    ad.add_argument("--sample", required=True, help="e.g. greedy, t1")
    ad.add_argument("--labels", required=True, type=Path, help="the first reader's labels")
    ad.add_argument("--second", required=True, type=Path, help="the second reader's labels")
    ad.add_argument("--file", type=Path, default=None, help=f"default {onpolicy.DEFAULT_FILE}")
    ad.add_argument("--settled", type=Path, default=None,
                    help="a third reading of the answers the two readers disagree on")  # fmt: skip
    a = p.parse_args(argv)
    try:
        if a.cmd == "prompts":
            rows = prompts()
            atomic.write_text(a.out, "".join(json.dumps(r) + "\n" for r in rows))
            print(f"{a.out}: {len(rows)} prompts")
            return 0
        if a.cmd == "sheet":
            rows = sheet(_samples(a.samples), a.seed)
            atomic.write_text(a.out, "".join(json.dumps(r) + "\n" for r in rows))
            print(f"{a.out}: {len(rows)} answers")
            return 0
        file = a.file or onpolicy.default_path()
        third = _labels(a.settled) if a.settled else None
        return add(_samples(a.samples), a.policy, a.sample, _labels(a.labels), _labels(a.second),
                   file, third)  # fmt: skip
    except (RowError, onpolicy.OnPolicyError, data.DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
