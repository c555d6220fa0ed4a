"""Judge distillation: a small generative judge fine-tuned on a teacher's YES/NO verdicts.

`python -m rlvr_jax.distill --config configs/judge_econ.py` builds judge rows from the teachers
(labelled data rows, math-verify, or a judge model on a policy's rollouts) plus master-key
negatives, trains the student's top blocks on the verdict token over cached frozen-layer
activations, evaluates it on held-out questions next to the starting model, and saves it as a
model directory and a Hugging Face export.

Modules: examples (teacher rows), units (shared-prefix batching), split_model (the split forward
pass), cache (frozen activations), prepared (rows, prompts and activations made ready for the
split model), sft (the train step), evaluation (held-out figures), quality (the evaluation
judge's report), teacher_judge (on-policy teacher), run (orchestration); the judge prompts are
the scorer's own (rlvr_jax/judge/prompts.py).

`ensure_default_judge()` is the default judge's entry point for train/evaluate configs that say
`judge.model = "distilled"`; `ensure_evaluation_judge()` builds the held-out evaluation's judge
(`judge.eval_model = "evaluation"`): the same kind of student, distilled with another seed by
configs/judge_eval.py, which also trains on part of the test questions' labelled answers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

DEFAULT_JUDGE = "judge-econ-v7"  # bump when the recipe changes: a new name, never a stale judge
CONFIG = "configs/judge_econ.py"
EVALUATION_JUDGE = "judge-eval-v1"  # bump when configs/judge_eval.py changes
EVALUATION_CONFIG = "configs/judge_eval.py"
# Named judges: spec -> (cache name, config file).
NAMED_JUDGES = {
    "distilled": (DEFAULT_JUDGE, CONFIG),
    "evaluation": (EVALUATION_JUDGE, EVALUATION_CONFIG),
}


def default_judge_dir() -> Path:
    from rlvr_jax.models.default import cache_root

    return cache_root() / DEFAULT_JUDGE


# Set (as the test suite does), a missing named judge is an error instead of a distillation: a
# test or a job that would quietly spend a quarter of an hour building one fails at once.
NO_DISTILL_ENV = "RLVR_JAX_NO_DISTILL"


def named_judge_dir(spec: str) -> Path:
    """Where the named judge ("distilled" or "evaluation") is cached (it may not exist yet)."""
    from rlvr_jax.models.default import cache_root

    return cache_root() / NAMED_JUDGES[spec][0]


def _load_config(config: str = CONFIG):
    """A judge config file's default config (rlvr_jax.shipped finds it and its configs package)."""
    from rlvr_jax.shipped import load_config

    return load_config(config)


def ensure_default_judge(quiet: bool = False) -> Path:
    """The distilled default judge's model directory, distilled (once, then cached) when missing.

    It lives in the same cache as the default model (models/default.py: $RLVR_JAX_CACHE or
    ~/.cache/rlvr_jax). Producing it runs the distillation of configs/judge_econ.py in a work
    directory beside it (resumable if interrupted) and moves the judge into place.
    """
    return _ensure("distilled", quiet)


def ensure_evaluation_judge(quiet: bool = False) -> Path:
    """The evaluation judge's model directory, distilled by configs/judge_eval.py (once, then
    cached) when missing; its quality next to the reward judge's goes to quality.json in it
    (`rlvr_jax.judge.distill.quality.quality_report`)."""
    target = _ensure("evaluation", quiet)
    if not (target / "quality.json").is_file():
        from rlvr_jax.judge.distill.quality import quality_report

        quality_report(target, ensure_default_judge(quiet), _load_config(EVALUATION_CONFIG))
    return target


def _ensure(spec: str, quiet: bool) -> Path:
    target = named_judge_dir(spec)
    config = NAMED_JUDGES[spec][1]
    if (target / "config.json").is_file():
        return target
    if os.environ.get(NO_DISTILL_ENV):
        raise RuntimeError(
            f"the {spec} judge is not in {target}, and {NO_DISTILL_ENV} forbids distilling it here "
            "(about half an hour): name a judge directory instead"
        )
    from rlvr_jax import multihost

    # In a multi-process job (a train run on a cluster) process 0 distils, the others wait.
    multihost.on_main(f"distill {spec}", lambda: _distill_into(spec, target, config, quiet))
    return target


def _distill_into(spec: str, target: Path, config: str, quiet: bool) -> None:
    from rlvr_jax import checkpoint

    work = target.with_name(target.name + ".work")
    if not quiet:
        print(
            f"rlvr_jax: the {spec} judge is not distilled yet: running {config} once (about 30 "
            f"minutes on 2 CPU cores; resumable) in {work}; it is cached in {target} afterwards",
            file=sys.stderr,
        )
    from rlvr_jax.judge.distill.run import distill

    with checkpoint.this_process_only():
        results = distill(_load_config(config), work)
    try:
        (work / "judge").rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # not a concurrent finisher: a real error
            raise
    (target / "distill_results.json").write_text(json.dumps(results, indent=2, default=float))
    shutil.rmtree(work / "activations", ignore_errors=True)  # hundreds of MB, read only by SFT
    if not quiet:
        print(f"rlvr_jax: {spec} judge ready in {target}", file=sys.stderr)


def run_in_job(cfg: Any, workdir: str | Path | None = None) -> dict:
    """`run.distill(cfg, workdir)`, also inside a multi-process job: there process 0 distils on
    its own first device (distillation trains on one device) while the others wait, then every
    process returns the results of the finished run."""
    from rlvr_jax import checkpoint, multihost
    from rlvr_jax.judge.distill.run import distill, resolve_workdir

    def solo() -> dict:
        with checkpoint.this_process_only():
            return distill(cfg, workdir)

    out = multihost.on_main(f"distill {resolve_workdir(cfg, workdir)}", solo)
    if out is None:
        out = json.loads((resolve_workdir(cfg, workdir) / "results.json").read_text())
    return out
