"""The reward stage of one RL step: every score of a batch of responses, in one call.

`RewardRunner.score` runs the judge model (when configured; judge/scoring.py), the likelihood
rewards (when one of them is optimised; judge/likelihood.py) and the rule rewards
(judge/rules.py); config judge.reward names the one RL optimises, the others are logged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from rlvr_jax import builders, data
from rlvr_jax import mesh as mesh_lib
from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge import specs
from rlvr_jax.judge.answers import answer_view
from rlvr_jax.judge.likelihood import LIKELIHOOD_REWARDS, LikelihoodScorer
from rlvr_jax.judge.rules import content_gate, math_equivalent, rule_binary, rule_jaccard
from rlvr_jax.judge.scoring import Judge
from rlvr_jax.models.model_dir import LoadedModel

RULE_REWARDS = {
    "rule_binary": rule_binary,
    "rule_jaccard": rule_jaccard,
    "math": math_equivalent,
}
# The judge's rewards: the fields of its scores (judge/scoring.py Rewards), and soft_gated, the soft
# reward where the response names a content word of the reference, else 0 (rules.content_gate).
_JUDGE_FIELDS = ("soft", "soft_normalized", "binary")
JUDGE_REWARDS = (*_JUDGE_FIELDS, "soft_gated")


class RewardRunner:
    """Scores responses with the judge model (when configured), the likelihood rewards (when one
    of them is optimised) and the rule rewards, in one call.

    `key` names the score that RL optimises (config judge.reward); every other score is logged.
    `times` holds the seconds of the last `score` call's likelihood pass ("likelihood") and of the
    rest ("judge": judge model and rules).
    """

    def __init__(
        self,
        key: str,
        judge: Judge | None = None,
        rules: Sequence[str] = (),
        likelihood: LikelihoodScorer | None = None,
        likelihood_model: str = "policy",
        chat_template: bool = True,
    ):
        if key in JUDGE_REWARDS and judge is None:
            raise data.DataError(f"config judge.reward={key!r} needs a judge model (judge.model)")
        if key in LIKELIHOOD_REWARDS and likelihood is None:
            raise data.DataError(f"config judge.reward={key!r} needs a likelihood scorer")
        if key not in (*JUDGE_REWARDS, *LIKELIHOOD_REWARDS) and key not in RULE_REWARDS:
            known = ", ".join((*JUDGE_REWARDS, *LIKELIHOOD_REWARDS, *RULE_REWARDS))
            raise data.DataError(f"config judge.reward: unknown reward {key!r} (known: {known})")
        if likelihood_model not in ("policy", "reference"):
            raise data.DataError(
                f"config judge.likelihood_model: {likelihood_model!r} is not policy or reference"
            )
        self.key, self.judge, self.likelihood = key, judge, likelihood
        self.likelihood_model, self.chat_template = likelihood_model, chat_template
        self.rules = tuple(dict.fromkeys((*rules, *([key] if key in RULE_REWARDS else []))))
        self.times = {"judge": 0.0, "likelihood": 0.0}

    @classmethod
    def from_config(cls, cfg: Any, mesh: jax.sharding.Mesh, policy: LoadedModel) -> RewardRunner:
        judge = None
        spec = specs.judge_spec(cfg)
        if spec:
            judge_dir = None
            if spec == "policy":  # the initial policy judges (its weights are never trained)
                jm = policy._replace(state=jax.tree.map(lambda x: x.copy(), policy.state))
            else:
                judge_dir = specs.judge_model_dir(spec)
                jm = builders.load_sharded(judge_dir, mesh)
            jcfg = judge_prompts.judge_config_for(
                judge_dir,
                str(cfg.judge.template),
                max_prompt_len=int(cfg.judge.max_prompt_len),
                batch_size=int(cfg.judge.batch_size),
                view=str(cfg.judge.get("view", "auto")),
            )
            sharding = mesh_lib.rows_sharding(mesh, (jcfg.batch_size,))
            judge = Judge(jm.graphdef, jm.state, jm.tokenizer, jcfg, sharding)
        scorer = None
        if str(cfg.judge.reward) in LIKELIHOOD_REWARDS:
            scorer = LikelihoodScorer(
                policy.graphdef, policy.tokenizer, int(cfg.judge.batch_size), mesh
            )
        return cls(
            str(cfg.judge.reward),
            judge,
            ("rule_binary", "rule_jaccard"),
            scorer,
            str(cfg.judge.get("likelihood_model", "policy")),
            bool(cfg.data.chat_template),
        )

    def score(
        self,
        rows: Sequence[data.Example],
        responses: Sequence[str],
        cut: Sequence[bool] | None = None,
        policy_params: Any = None,
        reference_params: Any = None,
    ) -> dict[str, np.ndarray]:
        """N examples (question, reference) and N responses -> {score name: [N] floats}.

        cut [N]: which responses the token limit stopped (None: unknown; answers.py). Also
        "no_answer" [N] (1 where the response commits to no answer: every judge reward is 0; with a
        judge, under its view),
        "judge_truncated", the [N]-summed count of judge prompts cut to fit the budget, and with a
        judge "judge_verdict" [N] int (1 YES, 0 NO, -1 NEITHER; see `scoring.verdict_label`).
        With a likelihood reward, the weights named by `likelihood_model` score it:
        `policy_params` (the current policy) or `reference_params` (the frozen initial policy);
        the rows must then be `data.Example`s (their chat messages are the prompt). Without those
        params (a held-out evaluation scoring with the judge and the rules) the likelihood columns
        are left out.
        """
        t0 = time.perf_counter()
        refs = [ex.reference for ex in rows]
        cuts = [None] * len(responses) if cut is None else [bool(c) for c in cut]
        out = {
            name: np.array(
                [RULE_REWARDS[name](r, a) for r, a in zip(responses, refs, strict=True)], np.float32
            )
            for name in self.rules
        }
        if self.judge is not None:
            res = self.judge.score([ex.question for ex in rows], responses, refs, cut=cuts)
            for name in _JUDGE_FIELDS:
                out[name] = np.asarray(getattr(res, name), np.float32)
            out["soft_gated"] = out["soft"] * content_gate(responses, refs)
            out["judge_p_yes"] = np.asarray(res.p_yes, np.float32)
            out["no_answer"] = np.asarray(res.empty, np.float32)  # as the judge's view reads it
            out["judge_verdict"] = np.asarray(res.verdict, np.int32)  # 1 YES, 0 NO, -1 NEITHER
            out["judge_truncated"] = np.array([res.cut_question + res.cut_response + res.cut_hard])
        else:
            out["no_answer"] = np.array(
                [not answer_view(r, c).committed for r, c in zip(responses, cuts, strict=True)],
                np.float32,
            )
        t_lik = 0.0
        params = policy_params if self.likelihood_model == "policy" else reference_params
        if self.likelihood is not None and params is not None:
            t1 = time.perf_counter()
            # A group's prompt is tokenized once (its G rows are adjacent copies of one example).
            ids: dict[int, list[int]] = {}
            prompts = [
                ids.setdefault(id(ex), self.likelihood.prompt_ids(ex.messages, self.chat_template))
                for ex in rows
            ]
            cols = self.likelihood.score(params, prompts, responses, refs)
            for name in ("likelihood", "rlpr", "answer_line"):
                out[name] = cols[name]
            t_lik = time.perf_counter() - t1
        self.times = {"judge": time.perf_counter() - t0 - t_lik, "likelihood": t_lik}
        return out
