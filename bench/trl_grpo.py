"""TRL's side of bench/rl_step.py: a `GRPOTrainer` set to rlvr_jax's step, its reward functions,
and timers around the trainer's phases.

Reward functions are written as a TRL user would write them (plain callables taking the
completions and the dataset's extra columns), over rlvr_jax's own rule and judge prompt text, so
that both sides score the same strings. Nothing here imports jax.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge.rules import rule_binary


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or (conversational prompts) a list of messages
    whose last one is the assistant's answer."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"]


def rule_reward(completions: Sequence[Any], reference: Sequence[str], **_: Any) -> list[float]:
    """TRL reward function: rlvr_jax's substring rule (`rules.rule_binary`) per completion;
    `reference` is the dataset column of the same name, repeated per completion by TRL."""
    return [rule_binary(completion_text(c), r) for c, r in zip(completions, reference, strict=True)]


class TorchJudge:
    """TRL reward function: the judge's soft reward (paper Eq. 4, as `reward._scores` defines it)
    from a transformers causal LM.

    The judge prompt is rlvr_jax's (`JudgeConfig`: template, system message, chat template, the
    response view, YES/NO spellings and the YES calibration offset), rendered and tokenized with
    the HF tokenizer. Rows whose response commits to nothing score 0 without a forward, as in
    rlvr_jax. Batches of `cfg.batch_size` rows in the order given, left-padded to their longest,
    `logits_to_keep=1` (only the last position reaches the vocabulary). An over-long prompt is cut
    from the left by the tokenizer (rlvr_jax cuts the question's middle: rare at these lengths).
    """

    __name__ = "judge_soft"  # TRL names each reward function's metrics by __name__

    def __init__(self, hf_dir: str, cfg: judge_prompts.JudgeConfig, stop_ids: Sequence[int]):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.cfg, self.stop_ids = torch, cfg, set(stop_ids)
        self.tok = AutoTokenizer.from_pretrained(hf_dir)
        self.tok.padding_side, self.tok.truncation_side = "left", "left"
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()

        def single(spellings):
            ids = [self.tok.encode(s, add_special_tokens=False) for s in spellings]
            return sorted({i[0] for i in ids if len(i) == 1})

        self.yes_ids, self.no_ids = single(cfg.yes_spellings), single(cfg.no_spellings)

    def prompt_text(self, question: str, response: str, reference: str, cut: bool) -> str | None:
        """The judge prompt for one row, or None when the response commits to nothing."""
        shown = judge_prompts.response_view(response, self.cfg.view, cut)
        if not shown:
            return None
        user = self.cfg.prompt_format.format(question=question, response=shown, reference=reference)
        if not self.cfg.chat_template:
            return user
        system = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
        msgs = system + [{"role": "user", "content": user}]
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def soft(self, texts: list[str]) -> list[float]:
        """Eq. 4 soft reward for each prompt text."""
        torch, out = self.torch, []
        yes, no = torch.tensor(self.yes_ids), torch.tensor(self.no_ids)
        for s in range(0, len(texts), self.cfg.batch_size):
            enc = self.tok(
                texts[s : s + self.cfg.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.cfg.max_prompt_len,
                add_special_tokens=False,
            )
            with torch.no_grad():
                logits = self.model(**enc, logits_to_keep=1).logits[:, -1].float()
            logits[:, yes] += self.cfg.yes_bias
            probs = torch.softmax(logits, -1)
            p_yes = probs[:, yes].sum(-1).clamp(max=1.0)
            p_no = probs[:, no].sum(-1).clamp(max=1.0)
            greedy = logits.argmax(-1, keepdim=True)
            is_yes, is_no = (greedy == yes).any(-1), (greedy == no).any(-1)
            zero = torch.zeros_like(p_yes)
            soft = torch.where(is_yes, p_yes, torch.where(is_no, 1.0 - p_no, zero))
            out += soft.tolist()
        return out

    def __call__(
        self,
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        question: Sequence[str],
        reference: Sequence[str],
        **_: Any,
    ) -> list[float]:
        # Cut: the sampler stopped at max_completion_length without a stop token (TRL keeps the
        # stop token in completion_ids).
        cut = [not self.stop_ids.intersection(ids) for ids in completion_ids]
        texts = [
            self.prompt_text(q, completion_text(c), r, k)
            for q, c, r, k in zip(question, completions, reference, cut, strict=True)
        ]
        scored = [i for i, t in enumerate(texts) if t is not None]
        rewards = [0.0] * len(texts)
        for i, v in zip(scored, self.soft([texts[i] for i in scored]), strict=True):
            rewards[i] = v
        return rewards


class PhaseTimer:
    """Seconds per phase, accumulated by wrapping methods of one object (`wrap`); `take()` returns
    and resets them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj: Any, name: str, phase: str, when: Callable[[], bool] | None = None):
        """Time every call of obj.name (only those where `when()` is true) as `phase`."""
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            if when is not None and not when():
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0

        setattr(obj, name, timed)

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


def make_trainer(
    policy_dir: str,
    rows: list[dict],
    reward_fn: Callable,
    settings: dict,
    out_dir: str,
    max_steps: int,
    stop_ids: Sequence[int],
    callbacks: Sequence[Any] = (),
):
    """(GRPOTrainer, PhaseTimer) for rlvr_jax's step `settings` (keys B, G, L, temperature, lr,
    beta, clip_eps, micro_batch, b1, b2, grad_clip, seed); `rows` are dataset rows in step order
    (prompt messages, question, reference), taken B at a time without shuffling. `stop_ids`:
    rlvr_jax's stop tokens, which TRL reads from the model's generation config (`__init__`), for
    stopping and for the completion mask.

    Phases timed (seconds, per optimizer step): "generation" (`_generate`: prompt tokenization,
    `generate`, decoding), "reward" (`_calculate_rewards`), "reference" (every no-grad call of
    `_get_per_token_logps_and_entropies`: with these settings only the reference model's pass,
    since old log-probs are skipped when generation and optimizer steps line up) and "scoring"
    (the whole `_generate_and_score_completions`, which holds the three).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    s = settings
    n = s["B"] * s["G"]
    micro = min(s["micro_batch"], n)
    cfg = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=s["seed"],
        max_steps=max_steps,
        # One optimizer step per rollout of B x G completions, in micro-batches of rlvr_jax's size.
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=n // micro,
        num_generations=s["G"],
        num_iterations=1,
        max_completion_length=s["L"],
        temperature=s["temperature"],
        top_p=1.0,
        top_k=0,
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=s["b1"],
        adam_beta2=s["b2"],
        weight_decay=0.0,
        max_grad_norm=s["grad_clip"],
        beta=s["beta"],
        epsilon=s["clip_eps"],
        loss_type="grpo",
        scale_rewards="group",
        gradient_checkpointing=False,
        disable_dropout=True,
        shuffle_dataset=False,
        remove_unused_columns=False,
        mask_truncated_completions=False,
        log_completions=False,
        logging_steps=10**9,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    model.generation_config.eos_token_id = sorted(stop_ids)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward_fn],
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=list(callbacks),
    )
    timer = PhaseTimer()
    timer.wrap(trainer, "_generate", "generation")
    timer.wrap(trainer, "_calculate_rewards", "reward")
    no_grad = lambda: not torch.is_grad_enabled()
    timer.wrap(trainer, "_get_per_token_logps_and_entropies", "reference", when=no_grad)
    timer.wrap(trainer, "_generate_and_score_completions", "scoring")
    return trainer, timer
