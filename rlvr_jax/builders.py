"""Config -> the objects a run needs: mesh, models, examples, sampling settings.

Shared by `train`, `evaluate` and `distill`, so that the three read a config the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from rlvr_jax import data, reward, synthetic
from rlvr_jax import mesh as mesh_lib
from rlvr_jax.answers import answer_view
from rlvr_jax.likelihood import LikelihoodScorer
from rlvr_jax.models.config import LoraConfig, ModelConfig
from rlvr_jax.models.default import NAMED_JUDGES, resolve_model_dir
from rlvr_jax.models.model_dir import LoadedModel, load_model
from rlvr_jax.models.transformer import abstract_model, init_adapters, init_sharded
from rlvr_jax.rollout import PROMPT_BUCKETS, SamplingConfig, pad_prompts


def build_mesh(cfg: Any, mesh_flag: str | None = None) -> jax.sharding.Mesh:
    """The run's mesh: `--mesh DATA,FSDP,TENSOR` when given, else config `mesh.shape`."""
    shape = mesh_lib.parse_mesh(mesh_flag) if mesh_flag else tuple(cfg.mesh.shape)
    return mesh_lib.make_mesh(shape)


def synthetic_config(cfg: Any) -> ModelConfig:
    """The ModelConfig of the tiny random policy (config policy.tiny, synthetic vocabulary)."""
    tok = synthetic.make_tokenizer()
    t = cfg.policy.tiny
    heads = int(t.num_heads)
    return ModelConfig(
        model_type="llama",
        vocab_size=tok.vocab_size,
        hidden_size=int(t.hidden_size),
        intermediate_size=int(t.intermediate_size),
        num_layers=int(t.num_layers),
        num_heads=heads,
        num_kv_heads=int(t.num_kv_heads),
        head_dim=int(t.hidden_size) // heads,
        tie_word_embeddings=True,
        eos_token_id=tok.stop_ids,
        pad_token_id=tok.pad_id,
        dtype=str(cfg.policy.dtype),
        lora=lora_config(cfg),
    )


def lora_config(cfg: Any) -> LoraConfig | None:
    """The config's `lora` section as a LoraConfig, or None when lora.rank is 0 (or absent)."""
    sec = cfg.get("lora")
    if sec is None or int(sec.rank) == 0:
        return None
    targets = tuple(str(t) for t in sec.targets)
    return LoraConfig(int(sec.rank), float(sec.alpha), targets, bool(sec.get("train_norms", False)))


def add_adapters(model: LoadedModel, lora: LoraConfig, mesh: jax.sharding.Mesh, seed: int):
    """A loaded model with fresh LoRA adapters (B = 0: the same function), born sharded."""
    cfg = model.cfg.replace(lora=lora)
    shardings_of = lambda tree: mesh_lib.param_shardings(tree, mesh, mesh_lib.TRAIN_RULES)
    adapters = init_adapters(cfg, seed, shardings_of)
    state = nnx.merge_state(model.state, adapters)
    return LoadedModel(cfg, abstract_model(cfg)[0], state, model.tokenizer)


def synthetic_model(cfg: Any, mesh: jax.sharding.Mesh) -> LoadedModel:
    """A tiny random model over the synthetic word tokenizer, born sharded on `mesh`."""
    mcfg = synthetic_config(cfg)
    graphdef, state = init_sharded(mcfg, mesh, mesh_lib.TRAIN_RULES, int(cfg.seed))
    scale = float(cfg.policy.tiny.get("embed_scale", 1.0))
    if scale != 1.0:
        state["embed"].set_value(state["embed"][...] * scale)
    return LoadedModel(mcfg, graphdef, state, synthetic.make_tokenizer())


def model_dir(spec: str) -> Path:
    """A model spec -> its directory, produced when missing: "distilled" (the default judge,
    `rlvr_jax.distill.ensure_default_judge`), "evaluation" (the held-out evaluation's judge,
    `distill.ensure_evaluation_judge`), or what `models.default.resolve_model_dir` takes
    ("default" or a path)."""
    if spec == "distilled":
        from rlvr_jax import distill

        return distill.ensure_default_judge()
    if spec == "evaluation":
        from rlvr_jax import distill

        return distill.ensure_evaluation_judge()
    return resolve_model_dir(spec)


def architecture_dir(spec: str) -> Path:
    """A directory holding the architecture of model `spec`, never produced here: a named judge
    that is not distilled yet has its student's, the default model's. Memory planning reads
    shapes only, and must not start a distillation."""
    if spec in NAMED_JUDGES:
        from rlvr_jax import distill

        if (distill.named_judge_dir(spec) / "config.json").is_file():
            return distill.named_judge_dir(spec)
        spec = "default"
    return resolve_model_dir(spec)


def load_sharded(
    model_dir: str | Path,
    mesh: jax.sharding.Mesh,
    dtype: str | None = None,
    rules: mesh_lib.Rules = mesh_lib.TRAIN_RULES,
) -> LoadedModel:
    """Load a model directory with params restored straight into their mesh shardings."""
    from rlvr_jax.models.model_dir import load_config

    mcfg = load_config(model_dir)
    if dtype:
        mcfg = mcfg.replace(dtype=dtype)
    shardings = mesh_lib.param_shardings(abstract_model(mcfg)[1], mesh, rules)
    return load_model(model_dir, dtype=dtype, shardings=shardings)


def model_configs(cfg: Any) -> tuple[ModelConfig, ModelConfig | None]:
    """(policy, judge or None) ModelConfigs from the config, without loading any weights."""
    from rlvr_jax.models.model_dir import load_config

    if cfg.policy.model == "synthetic":
        policy = synthetic_config(cfg)
    else:
        policy = load_config(architecture_dir(cfg.policy.model))
        policy = policy.replace(dtype=str(cfg.policy.dtype), lora=lora_config(cfg))
    spec = judge_spec(cfg)
    judge = (
        None if not spec else policy if spec == "policy" else load_config(architecture_dir(spec))
    )
    return policy, judge


def build_policy(cfg: Any, mesh: jax.sharding.Mesh) -> LoadedModel:
    """The policy of the config, born sharded, with LoRA adapters when lora.rank > 0 and its
    tokenizer rendering chats with the config's template options (data.enable_thinking)."""
    if cfg.policy.model == "synthetic":
        m = synthetic_model(cfg, mesh)
    else:
        m = load_sharded(model_dir(cfg.policy.model), mesh, str(cfg.policy.dtype))
        lora = lora_config(cfg)
        if lora is not None:
            m = add_adapters(m, lora, mesh, int(cfg.seed))
    thinking = bool(cfg.data.get("enable_thinking", True))
    return m._replace(tokenizer=m.tokenizer.with_chat_options(enable_thinking=thinking))


def build_examples(cfg: Any, split: str, limit: int | None = None) -> data.LoadReport:
    """Validated examples of a split (files from `data.train`/`data.test`, or synthetic rows)."""
    system = str(cfg.data.system_prompt) or None
    if cfg.data.synthetic:
        if cfg.data.synthetic != "echo":
            raise data.DataError(f"config data.synthetic: unknown task {cfg.data.synthetic!r}")
        n = 512 if split == "train" else 64
        rows = synthetic.echo_rows(n, int(cfg.seed), split)
        exs = [
            data.example_from_row(r, f"echo:{split} row {i + 1}", system)
            for i, r in enumerate(rows)
        ]
        return data.LoadReport(exs[:limit] if limit else exs, [], f"echo:{split}")
    sources: Sequence[str] = cfg.data.train if split == "train" else cfg.data.test
    if not sources:
        raise data.DataError(f"config data.{split}: no data sources")
    return data.load_examples(
        list(sources), split, on_error=str(cfg.data.bad_rows), system_prompt=system, limit=limit
    )


def sampling_config(cfg: Any, greedy: bool = False) -> SamplingConfig:
    r = cfg.rollout
    return SamplingConfig(
        max_new_tokens=int(r.max_new_tokens),
        temperature=0.0 if greedy else float(r.temperature),
        top_k=int(r.top_k),
        top_p=float(r.top_p),
    )


def prompt_buckets(max_prompt_len: int) -> tuple[int, ...]:
    """Prompt length buckets up to max_prompt_len (one compile per bucket used)."""
    small = tuple(b for b in PROMPT_BUCKETS if b < max_prompt_len)
    return small + (int(max_prompt_len),)


def policy_prompts(
    cfg: Any, tok: Any, examples: Sequence[data.Example], batch: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """The examples' policy prompts, left-padded to a bucket of `cfg.rollout.max_prompt_len`.

    Chat-rendered (system prompt + query) unless `cfg.data.chat_template` is False. `batch` pads
    the row count with copies of the first row (fixed shapes). Returns (ids [B,P] int32,
    mask [B,P] bool, number of prompts cut to their last tokens; see `rollout.pad_prompts`).
    """
    if cfg.data.chat_template:
        seqs = [tok.chat_ids(ex.messages) for ex in examples]
    else:
        seqs = [tok.encode(ex.question) for ex in examples]
    buckets = prompt_buckets(int(cfg.rollout.max_prompt_len))
    return pad_prompts(seqs, tok.pad_id, buckets, batch)


RULE_REWARDS = {
    "rule_binary": reward.rule_binary,
    "rule_jaccard": reward.rule_jaccard,
    "math": reward.math_equivalent,
}
JUDGE_REWARDS = ("soft", "soft_normalized", "binary")
# Rewards from the scoring policy's own likelihood of the reference (rlvr_jax/likelihood.py).
LIKELIHOOD_REWARDS = ("likelihood", "rlpr")


def judge_spec(cfg: Any) -> str:
    """The judge model a run builds: none for the likelihood rewards, which need no judge (a
    config's judge.model, e.g. "distilled", is then ignored and never resolved or distilled)."""
    return "" if str(cfg.judge.reward) in LIKELIHOOD_REWARDS else str(cfg.judge.model)


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
        judge: reward.Judge | None = None,
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
        spec = judge_spec(cfg)
        if spec:
            judge_dir = None
            if spec == "policy":  # the initial policy judges (its weights are never trained)
                jm = policy._replace(state=jax.tree.map(lambda x: x.copy(), policy.state))
            else:
                judge_dir = model_dir(spec)
                jm = load_sharded(judge_dir, mesh)
            jcfg = reward.judge_config_for(
                judge_dir,
                str(cfg.judge.template),
                max_prompt_len=int(cfg.judge.max_prompt_len),
                batch_size=int(cfg.judge.batch_size),
                view=str(cfg.judge.get("view", "auto")),
            )
            bs = jcfg.batch_size
            sharding = (
                mesh_lib.batch_sharding(mesh, (bs,))
                if bs % mesh_lib.batch_size_multiple(mesh) == 0
                else None
            )
            judge = reward.Judge(jm.graphdef, jm.state, jm.tokenizer, jcfg, sharding)
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
        judge "judge_verdict" [N] int (1 YES, 0 NO, -1 NEITHER; see `reward.verdict_label`).
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
            for name in JUDGE_REWARDS:
                out[name] = np.asarray(getattr(res, name), np.float32)
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
