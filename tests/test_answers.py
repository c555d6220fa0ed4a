"""What the judge is shown of a response (rlvr_jax/judge/answers.py) and how the scorer uses it."""

import pytest

from rlvr_jax.judge.answers import answer_view

RAMBLE_CUT = (
    "To find the answer we first look at the demand curve. The demand curve shows how much\n\n"
    "Then the elasticity of the curve, which measures the responsiveness of the quantity to the"
)


def test_cut_ramble_with_no_committed_answer_shows_no_fragment():
    v = answer_view(RAMBLE_CUT, cut=True)
    # The fragment the token limit stopped in is never what the judge reads.
    assert "responsiveness of the quantity to the" not in v.text
    assert v.kind == "prose" and v.text.startswith("To find the answer")


def test_cut_before_first_sentence_ends_commits_nothing():
    v = answer_view("To find the elasticity we first need to recall the definition of", cut=True)
    assert v.kind == "none" and not v.committed and v.text == ""


@pytest.mark.parametrize(
    "response,expected",
    [
        ("Some work.\n\nTherefore, the answer is $25.", "$25"),
        ("Therefore, the answer is **0.75**.", "0.75"),
        ("We compute.\nThe final answer is: a liquidity trap", "a liquidity trap"),
        ("Answer: 12 units", "12 units"),
        ("So the answer is $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),
        ("Therefore, the answer is:\n\n180.16 g/mol\n\nThis is the molar mass.", "180.16 g/mol"),
    ],
)
def test_answer_statement_is_what_the_judge_reads(response, expected):
    v = answer_view(response)
    assert v.kind == "answer" and v.text == expected


def test_conflicting_answers_are_all_shown():
    v = answer_view("Therefore, the answer is 4%.\nWait.\nThe final answer is 6%.")
    assert v.kind == "answer" and v.text == "4% ; 6%"
    # The same answer twice is one answer.
    assert answer_view("The answer is 4%. Therefore, the answer is 4%.").text == "4%"


def test_answer_statement_cut_by_the_limit_is_dropped():
    text = "Therefore, the answer is 36 moles.\n\nThe final answer is 36.0 x 10^(-4"
    assert answer_view(text, cut=True).text == "36 moles"
    assert answer_view("Some steps first.\nThe final answer is 36.0 x 10^(-4", cut=True).kind in (
        "prose",
        "none",
    )
    assert "10^(-4" not in answer_view("Some steps first.\nThe answer is 36.0 x 10^(-4", True).text


def test_prose_answer_shows_first_and_last_complete_sentence():
    text = (
        "This scenario is known as a liquidity trap. It happens when rates are near zero.\n\n"
        "Central banks then lose their usual tool. In short, monetary policy stops working"
    )
    v = answer_view(text, cut=True)
    assert v.text == (
        "This scenario is known as a liquidity trap. ... Central banks then lose their usual tool."
    )
    # Unknown or finished: the last sentence counts even without a full stop.
    assert answer_view(text).text.endswith("monetary policy stops working")


@pytest.mark.parametrize("text", ["", "  \n ", "Therefore, the answer is", "Answer:", "..."])
def test_announcements_without_an_answer_commit_nothing(text):
    assert answer_view(text).kind == "none"


def test_short_finished_answer_is_committed():
    assert answer_view("0.75").text == "0.75" and answer_view("0.75", cut=False).committed
