"""`python -m rlvr_jax.experiment --config configs/table1.py[:smoke|:accel] [--workdir SWEEP]`

The paper's Table 1 at small scale: one resumable training run per (cell, seed), each in its own
directory SWEEP/<cell>/seed<k>, all with the same run config, budget and seeds, then one table.
Cells (config `cells`, a list, so that a new reward is one more entry): the SFT baseline
(`train.mode = "sft"`) and RL with a reward x algorithm; the base policy is every run's step-0
evaluation (the same greedy answers, before any update). A killed sweep rerun with the same
SWEEP continues the unfinished run where its checkpoint stopped and skips the finished ones
(those with summary.json). A cell whose run fails (e.g. an unknown reward) is reported as failed
and the sweep goes on.

Writes SWEEP/results.json and SWEEP/results.md: per cell, held-out accuracy by the evaluation
judge before and after, per subject and field, with 95% bootstrap CIs over questions (per-question
correctness averaged over seeds) and the paired after - before difference's CI, the reward
judge's figure beside it; and SWEEP/accuracy.png, held-out accuracy against step for every cell.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging

from rlvr_jax import atomic, data, heldout, host_memory, jsonl, stats, train
from rlvr_jax.metrics import read_metrics

_CELLS = flags.DEFINE_string("cells", None, "Run only these cells (comma-separated names).")
_SEEDS = flags.DEFINE_string(
    "seeds", None, "Run only these seeds of the cells (comma-separated); the report covers all."
)
_LABELS = flags.DEFINE_string(
    "labels", None, "JSONL of independent labels of held-out answers: {id, response, label}."
)
_LABELLED = flags.DEFINE_string(
    "labelled",
    None,
    "With --labels: write every distinct labelled held-out answer of the finished runs as an "
    "on-policy file (for measuring judges on them), and run nothing.",
)
_REPORT = flags.DEFINE_bool(
    "report", False, "Write the results of the finished runs and run nothing."
)
_ANSWERS = flags.DEFINE_string(
    "answers",
    None,
    "Write the finished runs' distinct held-out answers (shuffled, without "
    "their run; with --labels, those it lacks) to this JSONL file for blind "
    "labelling, and run nothing.",
)


def cell_config(exp: Any, cell: Any, seed: int) -> Any:
    """The run config of one (cell, seed): exp.run with the cell's mode/reward/algo and seed."""
    c = exp.run.copy_and_resolve_references()
    c.seed = int(seed)
    c.name = f"{cell['name']}_seed{seed}"
    if cell["kind"] == "sft":
        c.train.mode = "sft"
    elif cell["kind"] == "rl":
        c.judge.reward, c.rl.algo = str(cell["reward"]), str(cell["algo"])
    else:
        raise data.DataError(f"config cells: {cell['name']}: unknown kind {cell['kind']!r}")
    return c


def run_dir(sweep: Path, cell: Any, seed: int) -> Path:
    return sweep / str(cell["name"]) / f"seed{seed}"


def cell_seeds(exp: Any, cell: Any) -> list[int]:
    """The cell's own `seeds` when it names them, else the experiment's."""
    return [int(s) for s in (cell.get("seeds") or exp.seeds)]


def run_sweep(
    exp: Any,
    sweep: str | Path,
    stop_after: int | None = None,
    only: Sequence[str] | None = None,
    labels: str | Path | None = None,
    seeds: Sequence[int] | None = None,
) -> dict:
    """Run every unfinished (cell, seed) of `exp` under `sweep`, then write the results.

    stop_after: return (without results) after this many runs of this call (emulates a kill).
    only: run just these cells, none when empty (the results cover every finished cell).
    labels: a file of independent labels of held-out answers (see `read_labels`).
    seeds: run just these seeds of each cell (None: every seed the cell names).
    Returns {"ran": [...], "skipped": [...], "failed": {...}, "results": ...}.
    """
    sweep = Path(sweep).expanduser()
    sweep.mkdir(parents=True, exist_ok=True)
    names = [str(c["name"]) for c in exp.cells]
    if len(set(names)) != len(names):
        raise data.DataError("config cells: two cells share a name")
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise data.DataError(f"--cells: {', '.join(unknown)}: not a cell of {exp.name}")
    ran, skipped, failed = [], [], {}
    # Seed-major: a stopped sweep leaves whole rows of the table at its first seeds.
    todo = [(cell, seed) for cell in exp.cells for seed in cell_seeds(exp, cell)
            if (only is None or str(cell["name"]) in only)
            and (seeds is None or seed in seeds)]  # fmt: skip
    for cell, seed in sorted(todo, key=lambda cs: cs[1]):
        wd, tag = run_dir(sweep, cell, seed), f"{cell['name']}/seed{seed}"
        if (wd / heldout.SUMMARY).is_file():
            skipped.append(tag)
            continue
        if stop_after is not None and len(ran) >= stop_after:
            return {"ran": ran, "skipped": skipped, "failed": failed, "results": None}
        print(f"rlvr_jax: experiment: running {tag} in {wd}", file=sys.stderr, flush=True)
        try:
            train.train(cell_config(exp, cell, seed), wd)
        except Exception as e:  # a failed cell is reported; the other cells still run
            failed[tag] = f"{type(e).__name__}: {e}"
            wd.mkdir(parents=True, exist_ok=True)
            (wd / "error.txt").write_text(traceback.format_exc())
            print(f"rlvr_jax: experiment: {tag} failed: {failed[tag]}", file=sys.stderr)
            continue
        ran.append(tag)
    res = collect(exp, sweep, failed, read_labels(labels) if labels else None)
    write_results(sweep, res)
    plot(exp, sweep, sweep / "accuracy.png", res)
    return {"ran": ran, "skipped": skipped, "failed": failed, "results": res}


def _labelled_steps(exp, sweep, cell, seeds, labels, before) -> dict[str, dict]:
    """Labelled accuracy at every step that all seeds evaluated and the labels cover: {step:
    paired figures against step 0} (the curve the blind labels draw)."""
    wds = [run_dir(sweep, cell, s) for s in seeds]
    common = sorted(set.intersection(*[set(heldout.eval_steps(wd)) for wd in wds]))
    b = _mean_over_seeds(before, "correct")
    out = {}
    for step in common[1:]:
        rows = _labelled([heldout.read_rows(wd, step) for wd in wds], labels)
        if rows is not None:
            out[str(step)] = heldout.compare(b, _mean_over_seeds(rows, "correct"))["all"]
    return out


def _cell_rows(exp: Any, sweep: Path, cell: Any) -> tuple[list, list, list[int]]:
    """Per seed: (step-0 rows, last-step rows) of the finished runs, and their seeds."""
    befores, afters, seeds = [], [], []
    for seed in cell_seeds(exp, cell):
        wd = run_dir(sweep, cell, seed)
        steps = heldout.eval_steps(wd)
        if (wd / heldout.SUMMARY).is_file() and steps and steps[0] == 0 and len(steps) > 1:
            befores.append(heldout.read_rows(wd, 0))
            afters.append(heldout.read_rows(wd, steps[-1]))
            seeds.append(int(seed))
    return befores, afters, seeds


def _mean_over_seeds(runs: list[list[dict]], key: str) -> list[dict]:
    """Rows of the first seed with `key` averaged over the seeds' rows (same questions)."""
    out = [dict(r) for r in runs[0]]
    for i, r in enumerate(out):
        r[key] = float(np.mean([run[i][key] for run in runs]))
    return out


def read_labels(path: str | Path) -> dict[tuple[str, str], float]:
    """Independent labels of held-out answers: a JSONL file of {"id", "response", "label"}
    (1 correct, 0 not), keyed by (question id, response text)."""
    try:
        rows = jsonl.read_rows(path, allow_empty=True)
    except jsonl.RowError as e:
        raise data.DataError(str(e)) from None
    out = {}
    for where, r in rows:
        try:
            out[(str(r["id"]), str(r["response"]))] = float(r["label"])
        except (ValueError, KeyError, TypeError) as e:
            raise data.DataError(f"{where}: not a label row ({type(e).__name__}: {e})") from e
    return out


def _distinct_answers(exp: Any, sweep: Path) -> dict[tuple[str, str], dict]:
    """{(question id, response): its first held-out row} over every evaluated step of every
    finished run, in key order."""
    seen: dict[tuple[str, str], dict] = {}
    for cell in exp.cells:
        for seed in cell_seeds(exp, cell):
            wd = run_dir(sweep, cell, seed)
            if (wd / heldout.SUMMARY).is_file():
                for step in heldout.eval_steps(wd):
                    for r in heldout.read_rows(wd, step):
                        seen.setdefault((str(r["id"]), str(r["response"])), r)
    return {k: seen[k] for k in sorted(seen)}


def labelled_answers(exp: Any, sweep: Path, labels: dict) -> list[dict]:
    """Every distinct labelled held-out answer of the finished runs as an on-policy file's rows
    (rlvr_jax/judge/onpolicy.py: correct = the label, split "heldout"), so that any judge is
    measured on the answers RL's policies gave to questions no run trained on:
    `python -m rlvr_jax.onpolicy --input FILE --split all --judge DIR`."""
    return [
        {"id": key[0], "subject": r["subject"], "question": r["question"],
         "reference": r["reference"], "response": key[1], "cut": not bool(r["stopped"]),
         "correct": int(labels[key]), "split": "heldout"}
        for key, r in _distinct_answers(exp, sweep).items() if key in labels
    ]  # fmt: skip


def answer_sheet(exp: Any, sweep: Path, seed: int = 0, labelled: dict | None = None) -> list[dict]:
    """Every distinct held-out answer of the finished runs (every evaluated step), shuffled and
    without the run that gave it, for independent blind labelling: rows of
    {"id", "question", "reference", "response", "cut"}; the label rows that
    `read_labels` reads need only "id", "response" and "label". labelled (`read_labels`): leave
    out the answers it has, so that a grown sweep's new answers alone go to the readers."""
    rows = [
        {"id": key[0], "question": r["question"], "reference": r["reference"],
         "response": key[1], "cut": not bool(r["stopped"])}
        for key, r in _distinct_answers(exp, sweep).items()
        if labelled is None or key not in labelled
    ]  # fmt: skip
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def _labelled(runs: list[list[dict]], labels: dict) -> list[list[dict]] | None:
    """The rows with "correct" replaced by the independent label; None unless all are labelled."""
    out = []
    for rows in runs:
        got = [labels.get((str(r["id"]), str(r["response"]))) for r in rows]
        if any(g is None for g in got):
            return None
        out.append([{**r, "correct": g} for r, g in zip(rows, got, strict=True)])
    return out


def collect(exp: Any, sweep: Path, failed: dict | None = None, labels: dict | None = None) -> dict:
    """results.json's content from the finished runs under `sweep`; with `labels`, also held-out
    accuracy by those labels ("labelled") for every cell whose answers they all cover."""
    cells, base = {}, None
    for cell in exp.cells:
        befores, afters, seeds = _cell_rows(exp, sweep, cell)
        if not seeds:
            continue
        b, a = _mean_over_seeds(befores, "correct"), _mean_over_seeds(afters, "correct")
        summary = json.loads((run_dir(sweep, cell, seeds[0]) / heldout.SUMMARY).read_text())
        entry: dict[str, Any] = {
            "evaluator": str(summary.get("judge", "")),
            "kind": str(cell["kind"]),
            "reward": str(cell.get("reward", "")),
            "algo": str(cell.get("algo", "")),
            "seeds": seeds,
            "accuracy": heldout.compare(b, a),
            "per_seed": [
                stats.paired_ci([r["correct"] for r in x], [r["correct"] for r in y])["change"]
                for x, y in zip(befores, afters, strict=True)
            ],
        }
        if "reward_judge" in befores[0][0]:
            rb = _mean_over_seeds(befores, "reward_judge")
            ra = _mean_over_seeds(afters, "reward_judge")
            entry["reward_judge"] = heldout.compare(rb, ra, "reward_judge")["all"]
        lb, la = (_labelled(x, labels) if labels else None for x in (befores, afters))
        if lb is not None and la is not None:
            b_l, a_l = _mean_over_seeds(lb, "correct"), _mean_over_seeds(la, "correct")
            entry["labelled"] = heldout.compare(b_l, a_l)["all"]
            entry["labelled_per_seed"] = [
                stats.paired_ci([r["correct"] for r in x], [r["correct"] for r in y])["change"]
                for x, y in zip(lb, la, strict=True)
            ]
            steps = _labelled_steps(exp, sweep, cell, seeds, labels, lb)
            if steps:
                entry["labelled_steps"] = steps
        cells[str(cell["name"])] = entry
        if base is None:
            base = {"from": str(cell["name"]), "accuracy": heldout.compare(b, b)["all"]["before"]}
    return {"name": str(exp.name), "seeds": list(exp.seeds), "base": base, "cells": cells,
            "failed": dict(failed or {})}  # fmt: skip


def _ci(d: dict) -> str:
    return f"{100 * d['mean']:.1f} [{100 * d['lo']:.1f}, {100 * d['hi']:.1f}]"


def markdown(res: dict) -> str:
    """results.md: one row per cell, then per-field rows."""
    lines = [
        f"# {res['name']}: held-out accuracy (%), 95% bootstrap CIs over questions",
        "",
        "| cell | seeds | evaluator | before | after | change (paired) "
        "| reward judge before -> after |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    if res["base"]:
        lines.append(f"| base policy | | | {_ci(res['base']['accuracy'])} | | | |")
    for name, c in res["cells"].items():
        acc = c["accuracy"]["all"]
        rj = c.get("reward_judge")
        rjs = f"{100 * rj['before']['mean']:.1f} -> {100 * rj['after']['mean']:.1f}" if rj else ""
        lines.append(
            f"| {name} | {c['seeds']} | {c.get('evaluator', '')} | {_ci(acc['before'])} "
            f"| {_ci(acc['after'])} | {_ci(acc['change'])} | {rjs} |"
        )
    labelled = {n: c for n, c in res["cells"].items() if "labelled" in c}
    if labelled:
        lines += ["", "By independent blind labels of the same answers (correct only if the answer "
                  "commits to a final answer equivalent to the reference):", "",
                  "| cell | seeds | before | after | change (paired) | change per seed |",
                  "|---|---|---:|---:|---:|---:|"]  # fmt: skip
        first = next(iter(labelled.values()))["labelled"]["before"]
        lines.append(f"| base policy | | {_ci(first)} | | | |")
        for name, c in labelled.items():
            la = c["labelled"]
            per = "; ".join(_ci(d) for d in c["labelled_per_seed"])
            lines.append(
                f"| {name} | {c['seeds']} | {_ci(la['before'])} | {_ci(la['after'])} "
                f"| {_ci(la['change'])} | {per} |"
            )
        curves = {n: c["labelled_steps"] for n, c in labelled.items() if c.get("labelled_steps")}
        if curves:
            lines += ["", "By the labels at every evaluated step (mean over seeds; change from "
                      "step 0, paired):", "", "| cell | step | accuracy | change |",
                      "|---|---:|---:|---:|"]  # fmt: skip
            for name, by_step in curves.items():
                for step, d in by_step.items():
                    lines.append(f"| {name} | {step} | {_ci(d['after'])} | {_ci(d['change'])} |")
    lines += ["", "Per field (after, change):", "", "| cell | field | after | change |",
              "|---|---|---:|---:|"]  # fmt: skip
    for name, c in res["cells"].items():
        for g in ("field", "subject"):
            for f, d in c["accuracy"][g].items():
                lines.append(f"| {name} | {g}: {f} | {_ci(d['after'])} | {_ci(d['change'])} |")
    for tag, err in res["failed"].items():
        lines.append(f"\nFailed: {tag}: {err}")
    return "\n".join(lines) + "\n"


def plot(exp: Any, sweep: Path, out: Path, res: dict | None = None) -> Path:
    """Held-out accuracy against step, one line per cell (mean over its finished seeds) by the
    in-run evaluator, dashed when `res` (collect's results) has the independent labels' curve of
    that cell, which is then drawn solid beside it: the two diverge where the evaluator errs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell in exp.cells:
        curves = []
        for seed in exp.seeds:
            path = run_dir(sweep, cell, seed) / "metrics.jsonl"
            if path.exists():
                pts = {r["step"]: r["eval/accuracy"] for r in read_metrics(path)
                       if "eval/accuracy" in r}  # fmt: skip
                curves.append(pts)
        name = str(cell["name"])
        entry = (res or {}).get("cells", {}).get(name) or {}
        lab = entry.get("labelled_steps")
        if curves:
            steps = sorted(set.intersection(*[set(c) for c in curves]))
            ys = [np.mean([c[s] for c in curves]) for s in steps]
            evaluator = entry.get("evaluator") or "evaluator"
            line = ax.plot(steps, ys, marker="o", lw=1.2, ms=3, ls="--" if lab else "-",
                           label=f"{name} ({evaluator})" if lab else name)  # fmt: skip
            if lab:
                first = entry["labelled"]["before"]["mean"]
                xs = [0] + [int(k) for k in lab]
                ax.plot(
                    xs,
                    [first] + [d["after"]["mean"] for d in lab.values()],
                    marker="s",
                    lw=1.6,
                    ms=4,
                    color=line[0].get_color(),
                    label=f"{name} (blind labels)",
                )
    ax.set_xlabel("step")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def write_results(sweep: Path, res: dict) -> None:
    atomic.write_text(sweep / "results.md", markdown(res))
    atomic.write_text(sweep / "results.json", json.dumps(res, indent=2) + "\n")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    exp = train._CONFIG.value  # the same --config / --workdir flags as rlvr_jax.train
    if exp is None:
        raise app.UsageError("--config is required, e.g. --config configs/table1.py:smoke")
    sweep = Path(train._WORKDIR.value or exp.sweep_dir).expanduser()
    # The cells compile the same programs (a minute or two each on a CPU): JAX's persistent
    # cache lets every run after the first load them.
    import jax

    jax.config.update("jax_compilation_cache_dir", str(sweep / ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    only = [c for c in _CELLS.value.split(",") if c] if _CELLS.value else None
    if _ANSWERS.value:
        rows = answer_sheet(
            exp, sweep, labelled=read_labels(_LABELS.value) if _LABELS.value else None
        )
        atomic.write_text(Path(_ANSWERS.value), "".join(json.dumps(r) + "\n" for r in rows))
        print(f"rlvr_jax: wrote {len(rows)} answers to {_ANSWERS.value}", file=sys.stderr)
        return
    if _LABELLED.value:
        if not _LABELS.value:
            raise app.UsageError("--labelled needs --labels")
        rows = labelled_answers(exp, sweep, read_labels(_LABELS.value))
        atomic.write_text(Path(_LABELLED.value), "".join(json.dumps(r) + "\n" for r in rows))
        print(f"rlvr_jax: wrote {len(rows)} labelled answers to {_LABELLED.value}", file=sys.stderr)
        return
    if _REPORT.value:
        only = []
    try:
        seeds = [int(s) for s in _SEEDS.value.split(",") if s] if _SEEDS.value else None
        out = run_sweep(exp, sweep, only=only, labels=_LABELS.value, seeds=seeds)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(markdown(out["results"]), end="")
    print(f"rlvr_jax: wrote {sweep / 'results.json'}, results.md, accuracy.png", file=sys.stderr)


if __name__ == "__main__":
    host_memory.keep_freed_memory()
    app.run(main)
