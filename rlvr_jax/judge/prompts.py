"""Judge prompts: what the judge is shown of a row, in which template, within which budget.

The judge reads what the response commits to (`answers.answer_view`: its answer statements, else
its first and last complete sentences; `JudgeConfig.view`), inside the paper's verifier prompt
(verbatim, `PAPER_PROMPT`) as the user message of the judge's chat template with the system message
"You are a helpful assistant.".

Prompt budget rule (`JudgeConfig.max_prompt_len` tokens): an over-long prompt is cut inside the
QUESTION first (its middle is replaced by "[...]", keeping its start and its end, where the ask
usually is); only if the question is gone entirely is the response line cut, from the left (its end,
the final answer, is kept); the reference is never cut, except as a last resort when it alone cannot
fit, where the prompt's last `max_prompt_len` tokens are kept. Every cut is counted.

A response that commits to nothing (an empty one, or one cut off before its first sentence ends)
gets every reward 0 and the verdict NO without being shown to the judge, and without failing the
batch. The distillation trains on the very token ids built here (`prompt_ids`), which is what makes
the distilled verdict transfer to RL.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from rlvr_jax.judge.answers import answer_view
from rlvr_jax.judge.rules import last_nonempty_line
from rlvr_jax.tokenizer import Tokenizer

# The released judge's prompt, verbatim: each text line ends with two spaces; the "---" and blank
# lines do not. As released (a code block), it ends with a newline after "**Output:**  ".
PAPER_PROMPT = (
    "Given a problem, determine whether the final answer in the provided (incomplete) solution "
    "process matches the reference answer.  \n"
    "The reference answer may be one single option character (e.g., A, B, C, D), a numerical "
    "value, an expression, or a list of answers if multiple questions are involved.  \n"
    "**The reference answer may be in Chinese or another language, but your evaluation should be "
    "language-agnostic.**  \n"
    "\n"
    "Your task:  \n"
    "- Compare the final output of the solution process with the reference answer.  \n"
    "- If they **match exactly**, output **YES**.  \n"
    "- If they **do not match**, output **NO**.  \n"
    "- If the solution process is unclear, incomplete, or ambiguous, assume it is incorrect and "
    "output **NO**.  \n"
    "\n"
    "Your output must be strictly **'YES'** or **'NO'**, with no additional words, punctuation, or "
    "explanation.  \n"
    "\n"
    "---\n"
    "\n"
    "**Question:**  \n"
    "{question}  \n"
    "\n"
    "**Solution Process (Final Step Only):**  \n"
    "{response}  \n"
    "\n"
    "**Reference Answer:**  \n"
    "{reference}  \n"
    "\n"
    "**Output:**  \n"
)
# A short prompt for small judges (135M-class models lose the thread in the long one).
# The response comes last: the candidates of one question then share everything before it, so
# scoring G of them (or training on them, distill/units.py) runs the shared part once.
SHORT_PROMPT = (
    "Question: {question}\nReference answer: {reference}\n"
    "Does the student's final answer match the reference answer? Answer YES or NO.\n"
    "Student's final answer: {response}"
)
TEMPLATES = {"paper": PAPER_PROMPT, "short": SHORT_PROMPT}
SYSTEM_MESSAGE = "You are a helpful assistant."
YES_SPELLINGS = ("YES", "Yes", "yes", " YES", " Yes", " yes")
NO_SPELLINGS = ("NO", "No", "no", " NO", " No", " no")
CUT_MARK = "[...]"


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """How judge prompts are built and batched.

    template: "paper", "short", or a format string with {question}, {response}, {reference}.
    view: what of a response fills {response}: "committed" (`answers.answer_view`) or "last_line"
    (its last non-empty line: for judges trained on last lines).
    system: the system message (None: no system message); chat_template: False = raw prompt text.
    max_prompt_len: token budget of one judge prompt (see the module docstring for the cut rule).
    buckets: padded prompt lengths (one compile per bucket); batch_size: rows per jitted call.
    """

    template: str = "paper"
    view: str = "committed"
    system: str | None = SYSTEM_MESSAGE
    chat_template: bool = True
    max_prompt_len: int = 1024
    # Judge prompts cluster (the template is ~250 tokens): fine buckets there waste less padding.
    buckets: tuple[int, ...] = (
        32,
        64,
        96,
        128,
        192,
        256,
        320,
        384,
        448,
        512,
        640,
        768,
        1024,
        1536,
        2048,
    )
    batch_size: int = 16
    yes_spellings: tuple[str, ...] = YES_SPELLINGS
    no_spellings: tuple[str, ...] = NO_SPELLINGS
    yes_bias: float = 0.0  # calibration: added to the YES spellings' logits (module docstring)

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"judge view {self.view!r}: use one of {', '.join(VIEWS)}")
        if self.max_prompt_len > max(self.buckets):
            top = max(self.buckets)
            raise ValueError(
                f"max_prompt_len {self.max_prompt_len} exceeds the largest bucket {top}"
            )

    @property
    def prompt_format(self) -> str:
        return TEMPLATES.get(self.template, self.template)

    def prompt_settings(self) -> dict:
        """How this judge's prompts are written and read: what `JUDGE_FILE` stores next to its
        weights."""
        return {
            "template": self.template,
            "view": self.view,
            "system": self.system,
            "chat_template": self.chat_template,
            "max_prompt_len": self.max_prompt_len,
            "yes_bias": self.yes_bias,
        }


# A judge's prompt settings, stored in its model directory (and HF export) by the distillation,
# so that every scorer writes the prompts the judge was trained on.
JUDGE_FILE = "judge.json"
VIEWS = ("committed", "last_line")


def prompt_settings_of(model_dir: str | Path) -> dict | None:
    """The prompt settings stored with a judge (`JudgeConfig.prompt_settings`), or None."""
    path = Path(model_dir) / JUDGE_FILE
    if not path.is_file():
        return None
    # A judge.json without these keys describes a judge trained without a calibration offset,
    # on last lines: the defaults say so.
    optional = {"yes_bias": 0.0, "view": "last_line"}
    try:
        d = {**optional, **json.loads(path.read_text())}
        out = {k: d[k] for k in JudgeConfig().prompt_settings()}
        out["yes_bias"] = float(out["yes_bias"])
        return out
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a judge prompt-settings file ({e!r})") from None


def judge_config_for(model_dir: str | Path | None, template: str = "auto", **kw) -> JudgeConfig:
    """JudgeConfig for the judge in model_dir. template "auto": the judge's stored prompt settings
    (`JUDGE_FILE`), else the paper's prompt; any other template is used as given, with the
    default system message. kw: the other JudgeConfig fields (batch_size, max_prompt_len, view,
    ...); a stored max_prompt_len or view wins over the default but not over an explicit one;
    view "auto" (or None) means the stored one.
    """
    kw = {k: v for k, v in kw.items() if v is not None and not (k == "view" and v == "auto")}
    stored = prompt_settings_of(model_dir) if model_dir is not None else None
    if template != "auto" or stored is None:
        settings = {**kw, "template": "paper" if template == "auto" else template}
    else:
        settings = {**stored, **kw}
    if "max_prompt_len" in settings and "buckets" not in settings:
        top = int(settings["max_prompt_len"])
        settings["buckets"] = tuple(b for b in JudgeConfig.buckets if b < top) + (top,)
    return JudgeConfig(**settings)


# ----------------------------------------------------------------------------------------------
# Host side: judge prompts with the budget rule.


@dataclasses.dataclass
class JudgePrompt:
    """One tokenized judge prompt and what was cut to fit the budget."""

    ids: list[int]
    empty: bool = False  # the response commits to nothing: rewards are forced to 0, verdict NO
    cut_question: bool = False
    cut_response: bool = False
    cut_hard: bool = False  # the reference alone did not fit: the prompt's tail was kept


def _middle_cut(tok: Tokenizer, ids: list[int], keep: int) -> str:
    head = keep - keep // 2
    return f"{tok.decode(ids[:head])} {CUT_MARK} {tok.decode(ids[len(ids) - keep // 2 :])}"


def response_view(response: str, view: str, cut: bool | None = None) -> str:
    """What the judge is shown of `response` under `view` ("" = nothing committed)."""
    if view == "last_line":
        return last_nonempty_line(response)
    return answer_view(response, cut).text


def build_judge_prompt(
    tok: Tokenizer,
    question: str,
    response: str,
    reference: str,
    cfg: JudgeConfig,
    cut: bool | None = None,
) -> JudgePrompt:
    """Token ids of the judge prompt for one row, cut to `cfg.max_prompt_len` by the budget rule.
    cut: the response was stopped by the token limit (None: unknown; see answers.py)."""
    line = response_view(response, cfg.view, cut)

    def render(q: str, r: str) -> list[int]:
        user = cfg.prompt_format.format(question=q, response=r, reference=reference)
        if not cfg.chat_template:
            return tok.encode(user)
        msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
            {"role": "user", "content": user}
        ]
        return tok.chat_ids(msgs)

    out = JudgePrompt(render(question, line), empty=not line)
    budget = cfg.max_prompt_len
    if len(out.ids) <= budget:
        return out
    # 1. Cut the middle of the question, shrinking until the prompt fits (re-tokenizing each time:
    #    the pieces do not tokenize exactly as the whole).
    q_ids = tok.encode(question)
    keep = len(q_ids) - (len(out.ids) - budget) - 4
    q = question
    while len(out.ids) > budget and keep > 0:
        q = _middle_cut(tok, q_ids, keep)
        out.ids, out.cut_question = render(q, line), True
        keep -= max(len(out.ids) - budget, 0) + 4
    if len(out.ids) > budget:
        q, out.cut_question = CUT_MARK, True
        out.ids = render(q, line)
    # 2. Then the response line, from the left.
    r_ids = tok.encode(line)
    keep = len(r_ids) - (len(out.ids) - budget) - 4
    while len(out.ids) > budget and keep > 0:
        out.ids = render(q, f"{CUT_MARK} {tok.decode(r_ids[len(r_ids) - keep :])}")
        out.cut_response = True
        keep -= max(len(out.ids) - budget, 0) + 4
    # 3. Last resort: the reference (with the template) alone is over budget.
    if len(out.ids) > budget:
        out.ids, out.cut_hard = out.ids[-budget:], True
    return out


def prompt_ids(
    tokenizer: Tokenizer, rows: Sequence[dict], jcfg: JudgeConfig
) -> tuple[list[list[int]], list[bool]]:
    """(judge prompt ids, empty flags) per row {question, reference, response[, cut]}.

    A response that commits to nothing is one the scorer forces to reward 0 whatever the model
    says; the distillation drops such rows from training and scores them 0 in evaluation.
    """
    ps = [
        build_judge_prompt(
            tokenizer, r["question"], r["response"], r["reference"], jcfg, r.get("cut")
        )
        for r in rows
    ]
    return [p.ids for p in ps], [p.empty for p in ps]


def verdict_ids(tokenizer: Tokenizer, jcfg: JudgeConfig) -> tuple[list[int], list[int]]:
    """The single-token YES and NO spellings of the judge's vocabulary: the tokens whose
    probabilities make P(YES) and P(NO)."""
    yes, no = tokenizer.token_ids_of(jcfg.yes_spellings), tokenizer.token_ids_of(jcfg.no_spellings)
    if not yes or not no:
        raise ValueError(
            f"judge vocabulary has no single-token spelling of {'YES' if not yes else 'NO'}"
        )
    return yes, no
