"""Which judge model a config names, and where its directory is.

"distilled" (the reward judge) and "evaluation" (the held-out evaluation's judge) name judges that
the distillation produces (rlvr_jax.judge.distill) and caches; other specs are what
`models.default.resolve_model_dir` takes. They are resolved here, where judge specs are read, and
only `judge_model_dir` may start a distillation: memory planning reads `judge_architecture_dir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlvr_jax.judge.likelihood import LIKELIHOOD_REWARDS
from rlvr_jax.models.default import NAMED_JUDGES, resolve_model_dir


def judge_spec(cfg: Any) -> str:
    """The judge model a run builds: none for the likelihood rewards, which need no judge (a
    config's judge.model, e.g. "distilled", is then ignored and never resolved or distilled)."""
    return "" if str(cfg.judge.reward) in LIKELIHOOD_REWARDS else str(cfg.judge.model)


def judge_model_dir(spec: str) -> Path:
    """A judge spec -> its model directory, produced when missing: "distilled" (the default judge,
    `rlvr_jax.judge.distill.ensure_default_judge`), "evaluation" (the held-out evaluation's judge,
    `distill.ensure_evaluation_judge`), or what `models.default.resolve_model_dir` takes
    ("default" or a path)."""
    if spec == "distilled":
        from rlvr_jax.judge import distill

        return distill.ensure_default_judge()
    if spec == "evaluation":
        from rlvr_jax.judge import distill

        return distill.ensure_evaluation_judge()
    return resolve_model_dir(spec)


def judge_architecture_dir(spec: str) -> Path:
    """A directory holding the architecture of judge `spec`, never produced here: a named judge
    that is not distilled yet has its student's, the default model's. Memory planning reads
    shapes only, and must not start a distillation."""
    if spec in NAMED_JUDGES:
        from rlvr_jax.judge import distill

        if (distill.named_judge_dir(spec) / "config.json").is_file():
            return distill.named_judge_dir(spec)
        spec = "default"
    return resolve_model_dir(spec)
