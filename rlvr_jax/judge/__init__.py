"""The reward stage of the RL step: everything that turns a response into a reward.

- prompts: what the judge is shown (answers: what a response commits to), templates, budget cuts.
- scoring: the judge's verdict distribution from one jitted prefill -> soft and binary rewards.
- rules: rule rewards (reference in the response, token Jaccard, math equivalence).
- likelihood: rewards from the policy's own likelihood of the reference (no judge model).
- runner: `RewardRunner`, all of the above for one batch of responses, as the RL step calls it.
- probes, agreement: master-key probes and agreement statistics for judging the judges.
- distill: training small judges (`python -m rlvr_jax.distill`).
"""
