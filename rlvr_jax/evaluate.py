"""`python -m rlvr_jax.evaluate --model MODEL_DIR --config configs/econ.py --out results.json`

Answers a split's questions with the policy (greedy unless `--config.rollout.temperature` is given),
judges the answers and reports accuracy per subject, per field and the field average (the paper's
figure) for: the model judge's verdict (`binary`), its soft reward (`soft`, paper Eq. 4) and the
rule rewards (`rule_binary`, `rule_jaccard`). It also measures the judge's false-positive rate on
the master-key probes (content-free responses, `probes.probe_rows`) of the evaluated questions.

Votes (`--votes M`): the paper judges "one judgment per response (majority of m when m > 1)", so M
counts judge votes on the same response, not responses. The judge's greedy verdict is
deterministic, so M = 1 uses it; for M > 1 each vote is the judge's first token sampled at
temperature 1, i.e. YES with probability P(YES) (the mass of the YES spellings; NO and any other
token count as NO), drawn with seeded keys from the same single judge prefill, and the verdict is
the majority (a tie is NO). An empty response gets NO votes. The soft reward does not depend on M.
Each row also has `verdict`, the judge's greedy first token read as "YES", "NO" or "NEITHER"
(neither spelling: scored 0 by `binary` and `soft`, but not a NO); the results report the share
of NEITHER as `judge_neither_rate`: a high rate means the judge is not answering the question.

Writes, next to OUT (each to a temporary file, then renamed; OUT itself last):
    OUT                         results: accuracy tables, probe FPR, settings, wall time
    <OUT stem>.md               the accuracy table in markdown
    <OUT stem>.generations.jsonl  one row per question: question, reference, response, scores
                                (the judgment-file layout that tools/judge_agreement.py reads)
    <OUT stem>.probes.jsonl     one row per probe: response, label NO, the judge's scores
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from rlvr_jax import atomic, builders, checkpoint, data, multihost, shipped
from rlvr_jax import mesh as mesh_lib
from rlvr_jax.eval_rows import (
    QA,
    generate_responses,
    json_scalar,
    judged_columns,
    probe_report,
    score_rows,
)
from rlvr_jax.judge import agreement, probes, runner, scoring
from rlvr_jax.models.config import ConfigError
from rlvr_jax.models.default import DefaultModelError

# Specs that are not directories: resolved by builders (or handled by RewardRunner).
_NAMED_MODELS = ("default", "distilled", "evaluation", "synthetic", "policy", "")


class EvalError(ValueError):
    """Bad evaluate input, with a one-line message."""


def out_paths(out: str | Path) -> dict[str, Path]:
    """The files written for results path `out` (results.json -> results.md, ...)."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix else out
    return {
        "results": out,
        "table": base.with_suffix(".md"),
        "generations": Path(f"{base}.generations.jsonl"),
        "probes": Path(f"{base}.probes.jsonl"),
    }


def _check_model_spec(spec: str, what: str) -> None:
    """Fail fast (before loading anything) on a model directory that does not exist."""
    if spec in _NAMED_MODELS:
        return
    p = Path(spec)
    if not p.is_dir():
        raise EvalError(f"{what} {spec}: no such model directory")
    if not (p / "config.json").is_file():
        raise EvalError(f"{what} {spec}: not a model directory (no config.json)")


def _write_outputs(out: str | Path, results: dict, rows: list, probe_rows: list) -> None:
    """All files, each atomically; results.json last (its presence means the set is complete)."""
    paths = out_paths(out)
    results["files"] = {k: str(p) for k, p in paths.items()}
    atomic.write_text(paths["generations"], "".join(json.dumps(r) + "\n" for r in rows))
    atomic.write_text(paths["probes"], "".join(json.dumps(r) + "\n" for r in probe_rows))
    atomic.write_text(paths["table"], results["table"])
    atomic.write_text(paths["results"], json.dumps(results, indent=2) + "\n")


def check_args(votes: int, batch_size: int, limit: int | None, probe_kinds) -> None:
    """EvalError for a bad command-line value, before anything is loaded."""
    if votes < 1:
        raise EvalError(f"--votes must be >= 1, got {votes}")
    if batch_size < 1:
        raise EvalError(f"--batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    unknown = sorted(set(probe_kinds or ()) - set(probes.PROBES))
    if unknown:
        known = ", ".join(probes.PROBES)
        raise EvalError(f"--probes: unknown probe {unknown[0]!r} (known: {known})")


def resolve_judges(cfg: Any, model: str | None, judge: str | None) -> tuple[Any, Any, bool]:
    """(the evaluation's config, the reward's config, compare): which policy answers and which
    judge scores. The evaluation judge (judge.eval_model) scores by default; compare is True when
    it is not the reward judge, whose figures then sit beside its own. Evaluation optimises
    nothing: without a judge model the rule reward scores, and a likelihood reward is replaced by
    the judge's soft reward (or the rule without a judge)."""
    cfg = cfg.copy_and_resolve_references()
    if model is not None:
        cfg.policy.model = model
    reward_cfg = cfg.copy_and_resolve_references()
    if judge is None and str(cfg.judge.eval_model):
        judge = str(cfg.judge.eval_model)
    compare = judge == "evaluation" or (judge is not None and judge == str(cfg.judge.eval_model))
    compare = compare and str(reward_cfg.judge.model) not in ("", judge)
    if judge is not None:
        cfg.judge.model = judge
        if compare:
            cfg.judge.template = "auto"  # the evaluation judge's own prompt settings
    _check_model_spec(str(cfg.policy.model), "--model")
    _check_model_spec(str(cfg.judge.model), "--judge")
    has_judge = bool(str(cfg.judge.model))
    if not has_judge and cfg.judge.reward in runner.JUDGE_REWARDS:
        cfg.judge.reward = "rule_binary"
    if cfg.judge.reward in runner.LIKELIHOOD_REWARDS:
        cfg.judge.reward = "soft" if has_judge else "rule_binary"
    return cfg, reward_cfg, compare


def run_settings(
    cfg: Any, reward_cfg: Any | None, split: str, report: data.LoadReport, votes: int, sc: Any
) -> dict:
    """What the results were made with: config, split, policy, judges (the reward judge's when
    it is compared, `reward_cfg`), the questions (`report`), votes and the sampling settings."""
    has_judge = bool(str(cfg.judge.model))
    return {
        "config": str(cfg.name),
        "split": split,
        "model": str(cfg.policy.model),
        "judge": str(cfg.judge.model) or None,
        "reward_judge": str(reward_cfg.judge.model) if reward_cfg is not None else None,
        "judge_template": str(cfg.judge.template) if has_judge else None,
        "n_questions": len(report.examples),
        "data_source": report.source,
        "votes": votes,
        "vote_rule": (
            "greedy verdict"
            if votes == 1
            else f"majority of {votes} verdicts sampled at temperature 1 (tie = NO)"
        ),
        "sampling": dict(
            greedy=sc.greedy,
            temperature=sc.temperature,
            top_k=sc.top_k,
            top_p=sc.top_p,
            max_new_tokens=sc.max_new_tokens,
            seed=int(cfg.seed),
        ),
    }


def judge_responses(
    rewards: Any,
    reward_runner: Any,
    examples,
    comps,
    chunk: int,
    has_judge: bool,
    votes: int,
    vote_key: jax.Array,
    bar_kw: dict,
) -> tuple[dict, dict]:
    """(scores, judged): every reward of each answer (`rewards`, `chunk` rows per call), with
    the reward judge's binary and soft columns when `reward_runner` is given; with a judge model,
    judged holds the `votes` judge verdicts per answer and their majority (else it is empty)."""
    qa = [QA(ex.question, ex.reference) for ex in examples]
    responses = [c.text for c in comps]
    with tqdm(total=len(examples), desc="judge", unit="row", **bar_kw) as bar:
        scores = score_rows(rewards, qa, responses, chunk, bar, [not c.stopped for c in comps])
    judged = judged_columns(scores, responses, votes, vote_key) if has_judge else {}
    if reward_runner is not None:  # the reward judge on the same answers
        with tqdm(total=len(examples), desc="reward judge", unit="row", **bar_kw) as bar:
            rs = score_rows(reward_runner, qa, responses, chunk, bar)
        scores["reward_judge_binary"], scores["reward_judge_soft"] = rs["binary"], rs["soft"]
    return scores, judged


def answer_rows(examples, comps, scores: dict, judged: dict, rules: Sequence[str]) -> list[dict]:
    """One row per question (the generations file): the question, the policy's answer, and every
    score of it; the judge's columns only when `judged` holds the judge's verdicts."""
    rows = []
    for i, (ex, c) in enumerate(zip(examples, comps, strict=True)):
        row = dict(id=ex.id, subject=ex.subject, field=ex.field, question=ex.question,
                   reference=ex.reference, response=c.text, stopped=c.stopped,
                   response_tokens=len(c.ids),
                   no_answer=int(scores["no_answer"][i]))  # fmt: skip
        if judged:
            row.update(
                binary=int(judged["binary"][i]),
                votes=judged["votes"][i].tolist(),
                greedy_binary=int(judged["greedy_binary"][i]),
                verdict=scoring.verdict_label(scores["judge_verdict"][i]),  # greedy: YES/NO/NEITHER
            )
            for k in ("soft", "soft_normalized", "judge_p_yes"):
                row[k] = json_scalar(scores[k][i])
        for k in (*rules, "reward_judge_binary", "reward_judge_soft"):
            if k in scores:
                row[k] = json_scalar(scores[k][i])
        rows.append(row)
    return rows


def summary_table(results: dict, keys: Sequence[str], has_judge: bool) -> str:
    """The markdown report: accuracy by group of each score in `keys`, then the probes' false
    positives, the judge's NEITHER rate and the wall time."""
    table = agreement.markdown_table(results["accuracy"], keys)
    probe_res = results["probes"]
    if probe_res is not None:
        table += (
            f"\nMaster-key probes: judge false-positive rate {100 * probe_res['fpr']:.1f}% "
            f"over {probe_res['n']} probe rows (votes={results['votes']}).\n"
        )
    if has_judge:
        table += (
            f"\nJudge verdict NEITHER (first token neither YES nor NO, scored 0) on "
            f"{100 * results['judge_neither_rate']:.1f}% of responses.\n"
        )
    n = results["n_questions"]
    return table + f"\nWall time {results['wall_time_s']:.1f} s ({n} questions).\n"


def evaluate(
    cfg: Any,
    model: str | None = None,
    judge: str | None = None,
    split: str = "test",
    votes: int = 1,
    limit: int | None = None,
    mesh_flag: str | None = None,
    out: str | Path | None = None,
    greedy: bool = True,
    batch_size: int = 16,
    probe_kinds: Sequence[str] | None = None,
    quiet: bool = False,
) -> dict:
    """Evaluate a policy on a split; returns the results dict (also written when `out` is given).

    model / judge override config policy.model / judge.model (a directory or a named spec).
    greedy: greedy answers; False samples with the config's rollout temperature/top-k/top-p.
    probe_kinds: the master-key probes to run (default: all of `probes.PROBES`; () skips them).
    """
    t_start = time.perf_counter()
    check_args(votes, batch_size, limit, probe_kinds)
    cfg, reward_cfg, compare = resolve_judges(cfg, model, judge)
    has_judge = bool(str(cfg.judge.model))
    multihost.join(cfg.mesh)
    say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    bar_kw = dict(disable=quiet or jax.process_index() != 0, file=sys.stderr, dynamic_ncols=True)

    report = builders.build_examples(cfg, split, limit)
    say(report.summary())
    examples = report.examples
    mesh = builders.build_mesh(cfg, mesh_flag)
    policy = builders.build_policy(cfg, mesh)
    rewards = runner.RewardRunner.from_config(cfg, mesh, policy)
    t_loaded = time.perf_counter()

    sc = builders.sampling_config(cfg, greedy=greedy)
    with tqdm(total=len(examples), desc="generate", unit="q", **bar_kw) as bar:
        comps, cut = generate_responses(cfg, policy, examples, sc, batch_size, mesh, bar.update)
    t_gen = time.perf_counter()

    vote_key = jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), 1_000_003)
    reward_runner = runner.RewardRunner.from_config(reward_cfg, mesh, policy) if compare else None
    chunk = int(cfg.judge.batch_size)
    scores, judged = judge_responses(
        rewards, reward_runner, examples, comps, chunk, has_judge, votes, vote_key, bar_kw
    )
    t_judge = time.perf_counter()

    rows = answer_rows(examples, comps, scores, judged, rewards.rules)
    names = ("binary", "soft", "reward_judge_binary", "reward_judge_soft", "rule_binary")
    keys = [k for k in (*names, "rule_jaccard") if k in rows[0]]
    acc = agreement.accuracy_by_group(rows, keys)
    probe_res, probe_out = None, []
    if has_judge and (probe_kinds is None or len(probe_kinds)):
        probe_res, probe_out = probe_report(
            rewards, examples, probe_kinds, votes, jax.random.fold_in(vote_key, 1), chunk, bar_kw
        )
    t_end = time.perf_counter()

    results = {
        **run_settings(cfg, reward_cfg if compare else None, split, report, votes, sc),
        "accuracy": acc,
        # Answers that commit to nothing (answers.answer_view): every judge reward 0.
        "no_answer_rate": float(np.mean(scores["no_answer"])),
        "truncation_rate": float(np.mean([not c.stopped for c in comps])),
        "probes": probe_res,
        "generation": {
            "mean_response_tokens": float(np.mean([len(c.ids) for c in comps])),
            "truncated_rate": float(np.mean([not c.stopped for c in comps])),
            "prompts_cut": int(cut),
        },
        "judge_truncated_prompts": int(scores["judge_truncated"][0]) if has_judge else 0,
        # Share of responses whose judge's first token was neither YES nor NO (scored 0, not NO).
        "judge_neither_rate": scoring.neither_rate(scores["judge_verdict"]) if has_judge else None,
        "time_s": dict(
            load=t_loaded - t_start,
            generate=t_gen - t_loaded,
            judge=t_judge - t_gen,
            probes=t_end - t_judge,
        ),
        "wall_time_s": t_end - t_start,
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
    }
    results["table"] = summary_table(results, keys, has_judge)
    if out is not None and jax.process_index() == 0:
        _write_outputs(out, results, rows, probe_out)
    return results


def define_flags() -> dict[str, Any]:
    """The command-line flags. Defined only when run as a program: train.py defines --config too,
    and absl refuses a flag defined twice in one process (e.g. a test session importing both)."""
    return {
        "config": shipped.define_config_flag("config", "Run config (a Python file)."),
        "model": flags.DEFINE_string("model", None, 'Policy model directory or "default".'),
        "judge": flags.DEFINE_string(
            "judge",
            None,
            'Judge: a model dir, "evaluation" or "distilled" (default: '
            "judge.eval_model, else judge.model); the reward judge's figures sit beside it.",
        ),
        "split": flags.DEFINE_string("split", "test", "Data split to evaluate."),
        "votes": flags.DEFINE_integer("votes", 1, "Judge votes per response (majority)."),
        "limit": flags.DEFINE_integer("limit", None, "Evaluate only the first K questions."),
        "batch_size": flags.DEFINE_integer("batch_size", 16, "Questions per generation batch."),
        "mesh": flags.DEFINE_string("mesh", None, "Mesh DATA,FSDP,TENSOR (overrides mesh.shape)."),
        "out": flags.DEFINE_string("out", None, "Path of results.json (others go next to it)."),
        "probes": flags.DEFINE_string("probes", "all", "Master-key probes: all, none or NAME,..."),
    }


def main(argv: list[str], fl: dict[str, Any]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    cfg = fl["config"].value
    if cfg is None:
        raise app.UsageError("--config is required, e.g. --config configs/econ.py")
    if not fl["out"].value:
        raise app.UsageError("--out is required, e.g. --out results.json")
    # Greedy unless a sampling temperature is set on the command line.
    greedy = "rollout.temperature" not in config_flags.get_override_values(flags.FLAGS["config"])
    v = {k: h.value for k, h in fl.items()}
    kinds = {"all": None, "none": ()}.get(v["probes"], [k for k in v["probes"].split(",") if k])
    try:
        res = evaluate(cfg, v["model"], v["judge"], v["split"], v["votes"], v["limit"], v["mesh"],
                       v["out"], greedy, v["batch_size"], kinds)  # fmt: skip
    except (EvalError, ConfigError, data.DataError, mesh_lib.MeshError,
            checkpoint.CheckpointError, DefaultModelError) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        multihost.exit_job(2)
    print(res["table"], end="")
    print(f"wrote {res['files']['results']}", file=sys.stderr)


if __name__ == "__main__":
    _FLAGS = define_flags()
    app.run(lambda argv: main(argv, _FLAGS))
