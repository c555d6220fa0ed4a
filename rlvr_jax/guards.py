"""Reward-hacking guards, tracked every step: figures that move when a policy learns to fool its
judge rather than to answer (arXiv 2507.08794: an RL run collapsed into content-free responses
that the judge accepted).

- guard/probe_yes_rate: the reward judge's YES rate on master-key probes (content-free responses,
  probes.PROBES) asked on this step's prompts; it measures the judge, so a rise is the judge
  being fooled more easily on the questions the policy now sees.
- guard/length_ratio: mean response length over its step-1 value (a collapse to short,
  content-free answers shows as a ratio far below 1).
- judge/neither_rate: share of responses whose judge verdict is neither YES nor NO.
- rollout/truncation_rate: share of responses cut at max_new_tokens (logged by the step).

`train.guards.*` sets a bound for each; crossing one prints a warning naming the figure, its
value and the bound, and with `train.guards.stop` the run stops (after its checkpoint).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax.judge import probes

# (metric, config bound, "max" or "min")
BOUNDS = (
    ("guard/probe_yes_rate", "max_probe_yes_rate", "max"),
    ("guard/length_ratio", "min_length_ratio", "min"),
    ("judge/neither_rate", "max_neither_rate", "max"),
    ("rollout/truncation_rate", "max_truncation_rate", "max"),
)


def step_metrics(rewards: Any, examples: Sequence[Any], kinds: Sequence[str]) -> dict[str, float]:
    """This step's probe guard: the YES rate of the reward judge on the `kinds` probes of
    `examples` (the step's B prompts). Empty without a judge model. (The judge's neither-rate,
    the other judge guard, is logged by the step itself as judge/neither_rate.)"""
    if rewards.judge is None:
        return {}
    out = {}
    if len(kinds):
        rows = probes.probe_rows(examples, list(kinds))
        res = rewards.judge.score(
            [r["question"] for r in rows], [r["response"] for r in rows],
            [r["reference"] for r in rows],
        )  # fmt: skip
        out["guard/probe_yes_rate"] = float(np.mean(res.binary))
    return out


class GuardHook:
    """Adds guard/length_ratio to the step's metrics and checks every bound; `crossed` holds the
    messages of this step's crossings (read by the stop hook)."""

    def __init__(self, cfg: Any, workdir: Path):
        self.g, self.workdir = cfg.train.guards, Path(workdir)
        self.len1: float | None = None
        self.crossed: list[str] = []

    def _first_length(self) -> float | None:
        """The step-1 response length (on resume, read back from the metrics file)."""
        if self.len1 is None:
            path = self.workdir / "metrics.jsonl"
            if path.exists():
                for ln in path.read_text().splitlines():
                    rec = json.loads(ln) if ln.strip() else {}
                    if rec.get("step") == 1 and "rollout/response_len" in rec:
                        self.len1 = float(rec["rollout/response_len"])
        return self.len1

    def __call__(self, ctx: Any) -> None:
        m = ctx.metrics
        if ctx.step == 1 and "rollout/response_len" in m:
            self.len1 = float(m["rollout/response_len"])
        first = self._first_length()
        if first and "rollout/response_len" in m:
            m["guard/length_ratio"] = float(m["rollout/response_len"]) / first
        self.crossed = []
        for key, bound, kind in BOUNDS:
            if key not in m:
                continue
            x, b = float(m[key]), float(self.g[bound])
            if (x > b) if kind == "max" else (x < b):
                self.crossed.append(
                    f"{key} = {x:.3f} is {'above' if kind == 'max' else 'below'} "
                    f"train.guards.{bound} = {b:g}"
                )
        m["guard/crossed"] = len(self.crossed)
        for msg in self.crossed:
            print(f"rlvr_jax: WARNING: reward-hacking guard at step {ctx.step}: {msg}",
                  file=sys.stderr, flush=True)  # fmt: skip

    def should_stop(self) -> bool:
        return bool(self.g.stop) and bool(self.crossed)
