"""Digests that pin behaviour across refactors: the distillation's judge rows and a run's metrics.

`python tests/behaviour_digest.py rows [VARIANT]` hashes the judge training, validation, held-out
and on-policy rows that configs/judge_econ.py[:VARIANT] builds, with their judge prompt ids, without
running the SFT. `python tests/behaviour_digest.py metrics WORKDIR` hashes WORKDIR/metrics.jsonl
without its timing fields (the only ones that differ between two identical runs on one machine).
Run from the repository root with PYTHONPATH=. (the configs package sits there).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def judge_rows(variant: str | None = "smoke") -> dict[str, list[dict]]:
    """The rows of every split the distillation of configs/judge_econ.py[:variant] trains or
    evaluates on, in order."""
    from configs import judge_econ
    from rlvr_jax.judge.distill import examples
    from rlvr_jax.judge.distill import rows as distill_rows

    cfg = judge_econ.get_config(variant)
    train_q, val_q, held_q = distill_rows.load_questions(cfg)
    onp = examples.onpolicy_rows(
        examples.keep_questions(distill_rows.onpolicy_answers(cfg, "heldout"), train_q + val_q)
    )
    return {
        "train": distill_rows.teacher_rows(cfg, train_q, val_q + held_q),
        "val": distill_rows.eval_rows(cfg, val_q),
        "heldout": distill_rows.eval_rows(cfg, held_q),
        "onpolicy": onp,
    }


def rows_digest(variant: str | None = "smoke", with_prompts: bool = True) -> dict[str, str]:
    """sha256 per split of its rows (and, with_prompts, of their judge prompt ids)."""
    rows = judge_rows(variant)
    out = {k: _sha(v) for k, v in rows.items()}
    if with_prompts:
        from configs import judge_econ
        from rlvr_jax.judge import prompts as judge_prompts
        from rlvr_jax.models.default import resolve_model_dir
        from rlvr_jax.tokenizer import Tokenizer

        cfg = judge_econ.get_config(variant)
        model_dir = resolve_model_dir(str(cfg.judge.model))
        tok = Tokenizer.from_dir(model_dir)
        jcfg = judge_prompts.judge_config_for(
            model_dir, str(cfg.judge.template), max_prompt_len=int(cfg.judge.max_prompt_len)
        )
        for k, v in rows.items():
            out[k + "_prompts"] = _sha(judge_prompts.prompt_ids(tok, v, jcfg))
    return out


def metrics_digest(workdir: str | Path) -> str:
    """sha256 of metrics.jsonl without its time/ fields."""
    recs = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return _sha([{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs])


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "rows":
        print(json.dumps(rows_digest(sys.argv[2] if len(sys.argv) > 2 else "smoke"), indent=1))
    else:
        print(metrics_digest(sys.argv[2]))
