"""Held-out evaluation during training: a hook of the training loop, and the run's summary.

At step 0 (before any update), every `train.eval_every` steps and at the end, the policy answers a
fixed held-out question set greedily (default: every test question of the run's data;
`train.eval_prompts` = K > 0 keeps the first K). The answers are scored by the evaluation judge
(`judge.eval_model`: "evaluation" is a judge distilled independently of the reward judge, see
`rlvr_jax.judge.distill.ensure_evaluation_judge`; "" reuses the reward judge); without any judge
model the run's rule verifies them (math-verify for `math` rewards, else `rule_binary`).

Metrics (prefix eval/): accuracy (the evaluation judge's binary verdict), subject/<s>, field/<f>,
field_average; beside it the reward judge's figures (reward_judge/binary, reward_judge/soft) and
the rules' (rule_binary, rule_jaccard): a reward judge that rises while the evaluation judge does
not is how reward hacking shows. With `train.eval_samples` = n > 1, also n answers per question
sampled at the rollout temperature: mean@n and pass@k (unbiased estimator, stats.pass_at_k).

The per-question verdicts go to WORKDIR/eval/step_NNNNNN.jsonl; `summarize` compares the first
and last of them (bootstrap CIs over questions) and writes WORKDIR/summary.json.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from rlvr_jax import atomic, builders, stats
from rlvr_jax.eval_rows import generate_responses, score_rows
from rlvr_jax.judge import agreement, specs
from rlvr_jax.judge.runner import RewardRunner

EVAL_DIR = "eval"
SUMMARY = "summary.json"


def eval_rewards(cfg: Any, mesh: jax.sharding.Mesh, policy: Any, rewards: RewardRunner):
    """The evaluation judge's RewardRunner: the reward runner itself when judge.eval_model is ""
    or names the reward judge, else a runner over the evaluation judge (its own prompt settings)."""
    spec = str(cfg.judge.eval_model)
    # Compared with the judge the run built: a likelihood-reward run builds none, so its
    # evaluation judge is built here even when it is the config's judge.model.
    if not spec or spec == specs.judge_spec(cfg):
        return rewards
    c = cfg.copy_and_resolve_references()
    c.judge.model, c.judge.template, c.judge.reward = spec, "auto", "binary"
    return RewardRunner.from_config(c, mesh, policy)


def _key(name: str) -> str:
    return re.sub(r"\s+", "_", name.strip())


def rows_path(workdir: Path, step: int) -> Path:
    return Path(workdir) / EVAL_DIR / f"step_{step:06d}.jsonl"


class HeldOutEval:
    """Greedy answers to the held-out questions, scored: `__call__(params, step)` -> metrics.

    examples: the held-out questions [Q]; rewards: the reward runner; evals: the evaluation
    judge's runner (may be `rewards` itself).
    """

    def __init__(
        self,
        cfg: Any,
        mesh: jax.sharding.Mesh,
        policy: Any,
        examples: Sequence[Any],
        rewards: RewardRunner,
        evals: RewardRunner,
        workdir: Path | None,
    ):
        self.cfg, self.mesh, self.policy, self.examples = cfg, mesh, policy, list(examples)
        self.rewards, self.evals, self.workdir = rewards, evals, workdir
        self.samples = int(cfg.train.eval_samples)
        self.batch = int(cfg.train.eval_batch)
        if evals.judge is not None:
            self.acc_key = "binary"
        else:
            self.acc_key = "math" if str(cfg.judge.reward) == "math" else "rule_binary"

    def _score(self, runner: RewardRunner, exs: Sequence[Any], comps: Sequence[Any]) -> dict:
        """Scores of completions `comps` (their text, and whether the token limit cut them)."""
        responses, cut = [c.text for c in comps], [not c.stopped for c in comps]
        with tqdm(total=len(exs), disable=True) as bar:
            return score_rows(runner, exs, responses, int(self.cfg.judge.batch_size), bar, cut)

    def _answers(self, params: Any, exs: Sequence[Any], cfg: Any, greedy: bool) -> list:
        pol = self.policy._replace(state=params)
        sc = builders.sampling_config(cfg, greedy=greedy)
        comps, _ = generate_responses(cfg, pol, exs, sc, self.batch, self.mesh)
        return comps

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        """Metrics of the policy with `params` after `step` updates (see the module docstring)."""
        exs = self.examples
        if not exs:
            return {}
        t0 = time.perf_counter()
        comps = self._answers(params, exs, self.cfg, greedy=True)
        responses = [c.text for c in comps]
        ev = self._score(self.evals, exs, comps)
        rw = ev if self.rewards is self.evals else self._score(self.rewards, exs, comps)
        correct = np.asarray(ev[self.acc_key], np.float64)
        rows = [
            {"id": ex.id, "subject": ex.subject, "field": ex.field, "question": ex.question,
             "reference": ex.reference, "correct": float(correct[i]),
             "response": responses[i], "stopped": bool(comps[i].stopped),
             "tokens": len(comps[i].ids)}
            for i, ex in enumerate(exs)
        ]  # fmt: skip
        m: dict[str, float] = {"eval/accuracy": float(correct.mean()), "eval/n": len(exs)}
        if self.evals.judge is not None:
            m["eval/soft"] = float(np.mean(ev["soft"]))
        if self.rewards.judge is not None:
            for k in ("binary", "soft"):
                m[f"eval/reward_judge/{k}"] = float(np.mean(rw[k]))
            for r, b in zip(rows, rw["binary"], strict=True):
                r["reward_judge"] = float(b)
        for k in ("rule_binary", "rule_jaccard"):
            m[f"eval/{k}"] = float(np.mean(rw[k]))
        for r, b in zip(rows, rw["rule_binary"], strict=True):
            r["rule_binary"] = float(b)
        acc = agreement.accuracy_by_group(rows, ["correct"])
        for g in ("subject", "field"):
            for name, d in acc[g].items():
                m[f"eval/{g}/{_key(name)}"] = d["correct"]
        m["eval/field_average"] = acc["field_average"]["correct"]
        m["eval/response_len"] = float(np.mean([len(c.ids) for c in comps]))
        m["eval/truncation_rate"] = float(np.mean([not c.stopped for c in comps]))
        m["eval/no_answer_rate"] = float(np.mean(ev["no_answer"]))
        if self.samples > 1:
            m.update(self._sampled(params, step, rows))
        if self.workdir is not None and jax.process_index() == 0:
            text = "".join(json.dumps(r) + "\n" for r in rows)
            atomic.write_text(rows_path(self.workdir, step), text)
        m["time/eval_s"] = time.perf_counter() - t0
        return m

    def _sampled(self, params: Any, step: int, rows: list[dict]) -> dict[str, float]:
        """mean@n and pass@k over n sampled answers per question (keys differ per step)."""
        n, exs = self.samples, self.examples
        cfg = self.cfg.copy_and_resolve_references()
        cfg.seed = int(self.cfg.seed) * 1_000_003 + 7919 * (step + 1)
        rep = [ex for ex in exs for _ in range(n)]
        comps = self._answers(params, rep, cfg, greedy=False)
        ok = self._score(self.evals, rep, comps)[self.acc_key]
        c = np.asarray(ok, np.float64).reshape(len(exs), n)
        m = {f"eval/mean@{n}": float(c.mean())}
        for k in stats.ks_for(n):
            m[f"eval/pass@{k}"] = float(
                np.mean([stats.pass_at_k(n, int(round(x)), k) for x in c.sum(1)])
            )
        for r, x in zip(rows, c.mean(1), strict=True):
            r[f"mean@{n}"] = float(x)
        return m


def drop_after(workdir: Path, step: int) -> None:
    """Remove per-question files of steps after `step` (a resumed run writes them again)."""
    for s in eval_steps(workdir):
        if s > step:
            rows_path(workdir, s).unlink(missing_ok=True)


def read_rows(workdir: Path, step: int) -> list[dict]:
    path = rows_path(workdir, step)
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def eval_steps(workdir: Path) -> list[int]:
    """Steps with per-question held-out verdicts, ascending."""
    folder = Path(workdir) / EVAL_DIR
    if not folder.is_dir():
        return []
    return sorted(int(p.stem.split("_")[1]) for p in folder.glob("step_*.jsonl"))


def compare(before: list[dict], after: list[dict], key: str = "correct", seed: int = 0) -> dict:
    """Paired before/after figures with bootstrap CIs, overall and per subject and field."""
    if [r["id"] for r in before] != [r["id"] for r in after]:
        raise ValueError("held-out rows of the two steps are not the same questions")
    b = np.array([r[key] for r in before], np.float64)
    a = np.array([r[key] for r in after], np.float64)
    out: dict[str, Any] = {"all": stats.paired_ci(b, a, seed=seed)}
    for g in ("subject", "field"):
        names = sorted({r[g] for r in before})
        out[g] = {}
        for name in names:
            idx = np.array([r[g] == name for r in before])
            out[g][name] = stats.paired_ci(b[idx], a[idx], seed=seed)
    return out


def _pct(d: dict) -> str:
    return f"{100 * d['mean']:.1f}% [{100 * d['lo']:.1f}, {100 * d['hi']:.1f}]"


def summarize(workdir: Path, judge: str) -> dict | None:
    """Before (step 0) vs after (last evaluated step) on the held-out questions; writes
    WORKDIR/summary.json and returns it with its one-line form under "line"; None without both."""
    steps = eval_steps(workdir)
    if len(steps) < 2 or steps[0] != 0:
        return None
    before, after = read_rows(workdir, 0), read_rows(workdir, steps[-1])
    res: dict[str, Any] = {
        "judge": judge,
        "steps": steps[-1],
        "n_questions": len(before),
        "accuracy": compare(before, after),
    }
    if "reward_judge" in before[0]:
        res["reward_judge"] = compare(before, after, "reward_judge")["all"]
    acc = res["accuracy"]["all"]
    line = (
        f"held-out accuracy ({judge}, {len(before)} questions, 95% CI): "
        f"before {_pct(acc['before'])} -> after {_pct(acc['after'])} at step {steps[-1]}; "
        f"change {100 * acc['change']['mean']:+.1f} pp "
        f"[{100 * acc['change']['lo']:+.1f}, {100 * acc['change']['hi']:+.1f}]"
    )
    if "reward_judge" in res:
        rj = res["reward_judge"]
        line += f"; reward judge {_pct(rj['before'])} -> {_pct(rj['after'])}"
    res["line"] = line
    atomic.write_text(Path(workdir) / SUMMARY, json.dumps(res, indent=2) + "\n")
    return res
