"""rlvr_jax.math_data: determinism, splits, and answers checked independently of the generator."""

import re
from fractions import Fraction

import pytest
import sympy
from math_verify import parse, verify

from rlvr_jax import data, math_data


def _nums(q):
    return [int(x) for x in re.findall(r"-?\d+", q)]


def _solve_x(equation):
    """The solutions of an equation in x written as in the questions (e.g. "x^2 + 3x - 10 = 0")."""
    lhs, rhs = equation.split("=")
    expr = lambda s: sympy.sympify(re.sub(r"(\d)x", r"\1*x", s.replace("^", "**")))
    return sympy.solve(sympy.Eq(expr(lhs), expr(rhs)), sympy.Symbol("x"))


def recompute(topic, q):
    """The answer derived from the question text, without the generator's code."""
    n = _nums(q)
    if topic == "addition and subtraction":
        return Fraction(n[0] + n[1] - n[2])
    if topic == "multiplication":
        return Fraction(n[0] * n[1])
    if topic == "division":
        return Fraction(n[0], n[1])
    if topic == "percentages":
        return Fraction(n[0]) * (1 - Fraction(n[1], 100))
    if topic == "rates":
        return Fraction(n[0], n[1])
    if topic == "geometry":
        return Fraction(2 * (n[0] + n[1]) if "perimeter" in q else n[0] * n[1])
    if topic == "averages":
        return Fraction(sum(n[:4]), 4)
    if topic == "fractions":
        return Fraction(n[0], n[1]) + Fraction(n[2], n[3])
    if topic == "linear equations":
        (x,) = _solve_x(q.split(":")[1].rstrip("."))
        return Fraction(str(x))
    if topic == "systems of equations":
        return Fraction(n[0] + n[1], 2)
    if topic == "consecutive integers":
        return Fraction(n[0], 3) + 1
    if topic == "age problems":
        k, y, s = n  # a = k b; (a + y) + (b + y) = s
        return Fraction(s - 2 * y, k + 1)
    if topic == "quadratic equations":
        (x,) = [r for r in _solve_x(q.split("of ")[1].rstrip("?")) if r > 0]
        return Fraction(str(x))
    if topic == "simple interest":
        return Fraction(n[0] * n[1] * n[2], 100)
    raise AssertionError(f"no independent check for topic {topic!r}")


@pytest.fixture(scope="module")
def rows():
    return list(math_data.generate(600, seed=7, split="train"))


def test_same_seed_same_rows_and_prefix_stable(rows):
    assert list(math_data.generate(600, seed=7, split="train")) == rows
    assert list(math_data.generate(50, seed=7, split="train")) == rows[:50]
    other = list(math_data.generate(50, seed=8, split="train"))
    assert [r["label"] for r in other] != [r["label"] for r in rows[:50]]


def test_every_topic_and_all_answers_right(rows):
    assert {r["topic"] for r in rows} == set(math_data.TEMPLATES)
    for r in rows:
        q = r["query"][0]["content"]
        want = recompute(r["topic"], q)
        assert Fraction(r["label"]) == want, (q, r["label"], want)


def test_math_verify_accepts_label_and_rephrasings_rejects_distractors(rows):
    for r in rows[:150]:
        gold = parse(r["label"])
        assert gold, r["label"]
        assert verify(gold, parse(f"Therefore, the answer is {r['label']}"))
        assert verify(gold, parse(f"Therefore, the answer is ${r['label']}$."))
        assert 1 <= len(r["rephrasings"]) <= 3
        for rp in r["rephrasings"]:
            assert verify(gold, parse(rp)), (r["label"], rp)
        assert len(r["distractors"]) == 3 and len(set(r["distractors"])) == 3
        for d in r["distractors"]:
            assert not verify(gold, parse(d)), (r["label"], d)


def test_splits_disjoint_ids_unique_and_rows_valid(rows):
    test = list(math_data.generate(200, seed=7, split="test"))
    q = lambda rs: {r["query"][0]["content"] for r in rs}
    assert len(q(rows)) == 600 and len(q(test)) == 200
    assert not q(rows) & q(test)
    ids = [r["id"] for r in rows + test]
    assert len(set(ids)) == len(ids)
    for i, r in enumerate(rows[:50]):
        data.example_from_row(r, f"math row {i}")


def test_format_number():
    assert math_data.format_number(Fraction(6, 3)) == "2"
    assert math_data.format_number(Fraction(-5, 4)) == "-1.25"
    assert math_data.format_number(Fraction(7, 3)) == "7/3"
    assert math_data.format_number(Fraction(1, 2**7)) == "1/128"  # too many decimals


def test_cli_writes_jsonl(tmp_path):
    out = tmp_path / "m.jsonl"
    math_data.main(["--n", "5", "--seed", "2", "--split", "test", "--out", str(out)])
    assert len(data.load_examples(out).examples) == 5
