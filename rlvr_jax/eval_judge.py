"""`python -m rlvr_jax.eval_judge [--eval_judge DIR] [--reward_judge DIR]`: the evaluation judge's
quality next to the reward judge's and the rule rewards' (rlvr_jax/judge/distill/quality.py).

Defaults: the named "evaluation" and "distilled" judges, built when missing; building the
evaluation judge writes the report (quality.json in its directory), which is then printed as it
is. With a judge named, the report is made again and written there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlvr_jax.judge import distill
from rlvr_jax.judge.distill.quality import quality_report, summary_lines


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval_judge", default=None)
    ap.add_argument("--reward_judge", default=None)
    a = ap.parse_args()
    ev = Path(a.eval_judge) if a.eval_judge else distill.ensure_evaluation_judge()
    rw = Path(a.reward_judge) if a.reward_judge else distill.ensure_default_judge()
    cached = ev / "quality.json"
    if not (a.eval_judge or a.reward_judge) and cached.is_file():
        # The named judges: building the evaluation judge wrote this report (minutes to make).
        rep = json.loads(cached.read_text())
    else:
        rep = quality_report(ev, rw, distill._load_config(distill.EVALUATION_CONFIG))
    print("\n".join(summary_lines(rep)))
    print(f"report in {cached}", file=sys.stderr)


if __name__ == "__main__":
    main()
