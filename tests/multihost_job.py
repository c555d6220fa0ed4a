"""One job for tests/test_multihost.py: the same work on 1 process x 4 devices or, under
`rlvr_jax.launch`, 2 processes x 2 devices; every output goes under OUT.

    python tests/multihost_job.py OUT MODEL_DIR DATA_JSONL

Runs, in one process start (JAX import and compiles are most of a CPU test's time):
1. the tiny RL run (configs/tiny.py, rule reward), 4 steps, checkpoints every 2 -> OUT/tiny;
2. an RL run of the tiny model in MODEL_DIR judged by its initial self (judge.model "policy",
   soft reward), with held-out evaluation and the HF export -> OUT/judged;
3. tools/sample.py and tools/score.py on MODEL_DIR -> OUT/samples.jsonl, OUT/scores.jsonl;
4. rlvr_jax.evaluate of MODEL_DIR judged by itself -> OUT/eval/results.json (and its siblings);
5. a tiny judge distillation of MODEL_DIR (`distill.run_in_job`) -> OUT/distill, and what each
   process got back -> OUT/distill_seen_p<i>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

# One process and two agree to ~1e-7 per step: the gradient's all-reduce runs in-process on one and
# over gloo on the other, and rounds differently. A sampled token that lands within that rounding
# of a boundary then differs; this run's first such token is at step 5 (same seed, same
# trajectory), so the comparison covers steps 1-4.
TINY_STEPS, TINY_CKPT = 4, 2


def tiny_overrides() -> list[str]:
    """The tiny run's command-line overrides (the kill test launches the same run as a CLI)."""
    return [
        f"--config.train.steps={TINY_STEPS}",
        f"--config.train.ckpt_every={TINY_CKPT}",
        "--config.train.tensorboard=False",
    ]


def judged_config(model_dir: str, data_file: str):
    from configs import base

    c = base.get_config()
    c.name = "judged"
    c.policy.model = model_dir
    c.policy.dtype = "float32"
    c.judge.model = "policy"
    c.judge.eval_model = ""  # the reward judge evaluates: no evaluation judge to distil
    c.judge.reward = "soft"
    c.judge.template = "short"
    c.judge.max_prompt_len = 128
    c.judge.batch_size = 8
    c.data.train = (data_file,)
    c.data.test = (data_file,)
    c.data.system_prompt = ""
    c.rollout.prompts_per_step = 4
    c.rollout.samples_per_prompt = 2
    c.rollout.max_prompt_len = 64
    c.rollout.max_new_tokens = 4
    c.rl.beta = 0.01  # the reference forward and the KL metric run too
    c.optim.lr = 1e-3
    c.optim.micro_batch = 8
    c.train.steps = 2
    c.train.ckpt_every = 1
    c.train.eval_every = 1
    c.train.eval_prompts = 4
    c.train.export_hf = True
    c.train.tensorboard = False
    return c


def distill_config(model_dir: str, root: Path):
    from configs import judge_econ

    c = judge_econ.get_config()
    c.judge.model = model_dir
    c.data.train = (str(root / "distill_train.jsonl"),)
    c.data.test = (str(root / "distill_test.jsonl"),)
    c.optim.train_layers = 1
    c.optim.lr = 3e-3
    c.distill.epochs = 2
    c.distill.batch_tokens = 256
    c.distill.merge_tokens = 10**9
    c.distill.eval_probes_per_question = 2
    c.distill.val_source, c.distill.val_questions = str(root / "distill_train.jsonl"), 2
    c.distill.teachers = ("data",)
    c.train.ckpt_every = 2
    c.train.tensorboard = False
    return c


def main(out: Path, model_dir: str, data_file: str) -> None:
    from configs import tiny
    from rlvr_jax import evaluate, multihost, train

    multihost.join()  # from the environment; one process without it
    tcfg = tiny.get_config()
    tcfg.train.steps, tcfg.train.ckpt_every, tcfg.train.tensorboard = TINY_STEPS, TINY_CKPT, False
    train.train(tcfg, out / "tiny")
    train.train(judged_config(model_dir, data_file), out / "judged")

    import sample
    import score

    assert sample.main(["--model", model_dir, "--prompts", str(out.parent / "prompts.jsonl"),
                        "--out", str(out / "samples.jsonl"), "--n", "2", "--max-new-tokens", "4",
                        "--batch-size", "4", "--seed", "3"]) == 0  # fmt: skip
    assert score.main(["--judge", model_dir, "--input", str(out.parent / "to_score.jsonl"),
                       "--out", str(out / "scores.jsonl"), "--template", "short",
                       "--batch-size", "4"]) == 0  # fmt: skip
    ecfg = judged_config(model_dir, data_file)
    evaluate.evaluate(ecfg, model=model_dir, judge=model_dir, out=out / "eval" / "results.json",
                      batch_size=4, probe_kinds=["colon", "empty"], quiet=True)  # fmt: skip
    from rlvr_jax.judge.distill import run_in_job

    res = run_in_job(distill_config(model_dir, out.parent), out / "distill")
    got = {"steps": res["steps"], "kappa": res["distilled"]["kappa"]}
    proc = __import__("jax").process_index()
    (out / f"distill_seen_p{proc}.json").write_text(json.dumps(got))
    if multihost.is_main():
        (out / "done.json").write_text(json.dumps({"processes": __import__("jax").process_count()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
