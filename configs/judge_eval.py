"""The evaluation judge: distilled like the default judge (configs/judge_econ.py), independently
of it, for scoring held-out answers during and after RL (`judge.eval_model = "evaluation"`).

Independent of the reward judge in two ways: another seed (other answer forms, batch order,
validation questions) and more data: half of the test questions' labelled answers train it too
(an evaluation judge is given the reference, so it may know the references' wordings); the other
half stay held out for its quality report. `python -m rlvr_jax.distill --config
configs/judge_eval.py`, or built on first use by `rlvr_jax.judge.distill.ensure_evaluation_judge`.
Variant `:smoke` checks the pipeline in a minute or two.
"""

from configs import judge_econ


def get_config(arg: str | None = None):
    c = judge_econ.get_config("smoke" if arg == "smoke" else None)
    c.name = "judge_eval" if arg != "smoke" else "judge_eval_smoke"
    c.seed = 1  # the reward judge's is 0
    c.distill.test_in_train = 0.5  # share of the test questions whose labelled answers train it
    if arg not in (None, "smoke"):
        raise ValueError(f"configs/judge_eval.py: unknown variant {arg!r} (known: smoke)")
    return c
