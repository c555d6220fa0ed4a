"""A seeded generator of arithmetic and algebra word problems with numeric answers.

Rows have the shipped data format (query, label, subject "math", topic, rephrasings, distractors,
id). Row i is a pure function of (seed, i); a row's split is a function of its question text, so no
question can land in both splits and asking for more rows only appends. Labels are plain integers,
decimals or p/q fractions, which `math-verify` parses; distractors are the results of typical
mistakes, numerically different from the answer.

    python -m rlvr_jax.math_data --n 1000 --seed 0 --split train --out data/math_train.jsonl
"""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction

import numpy as np

from rlvr_jax import atomic

# question, answer, results of typical mistakes, unit ("x" when the answer is the value of x)
Problem = tuple[str, Fraction, list[Fraction], str]
TEST_FRACTION = 5  # one question in 5 goes to the test split

NAMES = [
    "Ana",
    "Ben",
    "Chen",
    "Dara",
    "Eli",
    "Fatima",
    "Goran",
    "Hana",
    "Ivan",
    "Jia",
    "Kofi",
    "Lena",
]
ITEMS = ["apples", "pencils", "marbles", "stickers", "books", "cards", "shells", "coins"]


def _pick(rng: np.random.Generator, xs: list[str]) -> str:
    return xs[int(rng.integers(len(xs)))]


def _n(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A random int in [lo, hi]."""
    return int(rng.integers(lo, hi + 1))


# Each template: rng -> (question, answer, wrong results of typical mistakes, unit). The numbers
# appear in the question in the order the tests read them back (tests recompute every answer).
def _add_sub(rng):
    a, b, c = _n(rng, 20, 500), _n(rng, 5, 200), _n(rng, 1, 19)
    it = _pick(rng, ITEMS)
    q = (
        f"{_pick(rng, NAMES)} has {a} {it}, gets {b} more, and then gives away {c}. "
        f"How many {it} does {_pick(rng, ['she', 'he', 'they'])} have now?"
    )
    return q, Fraction(a + b - c), [Fraction(a + b + c), Fraction(a - b - c), Fraction(a + b)], it


def _multiply(rng):
    a, b = _n(rng, 3, 60), _n(rng, 3, 40)
    it = _pick(rng, ITEMS)
    q = f"A box holds {a} {it}. How many {it} are there in {b} boxes?"
    return q, Fraction(a * b), [Fraction(a + b), Fraction(a * (b - 1)), Fraction(a * b + a)], it


def _divide(rng):
    k, each = _n(rng, 2, 15), _n(rng, 2, 40)
    it = _pick(rng, ITEMS)
    q = f"{k * each} {it} are shared equally among {k} children. How many {it} does each child get?"
    return (
        q,
        Fraction(each),
        [Fraction(each + 1), Fraction(k * each - k), Fraction(each * k + k)],
        it,
    )


def _discount(rng):
    p, d = _n(rng, 4, 400), int(rng.choice([5, 10, 15, 20, 25, 30, 40, 50]))
    q = f"A jacket costs {p} dollars and is discounted by {d}%. What is the sale price in dollars?"
    ans = Fraction(p * (100 - d), 100)
    return q, ans, [Fraction(p * d, 100), Fraction(p - d), Fraction(p * (100 + d), 100)], "dollars"


def _speed(rng):
    v, t = _n(rng, 20, 120), _n(rng, 2, 9)
    d = v * t
    q = f"A train travels {d} km in {t} hours. What is its average speed in km per hour?"
    return q, Fraction(v), [Fraction(d * t), Fraction(d - t), Fraction(d, t + 1)], "km per hour"


def _rectangle(rng):
    length, w = _n(rng, 3, 60), _n(rng, 2, 40)
    if rng.random() < 0.5:
        q = f"A rectangle is {length} cm long and {w} cm wide. What is its perimeter in cm?"
        return (
            q,
            Fraction(2 * (length + w)),
            [Fraction(length * w), Fraction(length + w), Fraction(2 * length + w)],
            "cm",
        )
    q = f"A rectangle is {length} cm long and {w} cm wide. What is its area in square cm?"
    return (
        q,
        Fraction(length * w),
        [Fraction(2 * (length + w)), Fraction(length + w), Fraction(length * w + w)],
        "square cm",
    )


def _mean(rng):
    xs = [_n(rng, 40, 100) for _ in range(4)]
    q = f"Four test scores are {xs[0]}, {xs[1]}, {xs[2]} and {xs[3]}. What is their mean?"
    s = sum(xs)
    srt = sorted(xs)
    return q, Fraction(s, 4), [Fraction(s), Fraction(s, 3), Fraction(srt[1] + srt[2], 2) + 1], ""


def _fractions(rng):
    a, b, c, d = _n(rng, 1, 9), _n(rng, 2, 12), _n(rng, 1, 9), _n(rng, 2, 12)
    q = f"What is {a}/{b} + {c}/{d}?"
    ans = Fraction(a, b) + Fraction(c, d)
    return q, ans, [Fraction(a + c, b + d), Fraction(a * c, b * d), Fraction(a * d + c * b, b)], ""


def _linear(rng):
    a, x, b = _n(rng, 2, 12), _n(rng, -20, 30), _n(rng, -40, 40)
    sign = "+" if b >= 0 else "-"
    q = f"Solve for x: {a}x {sign} {abs(b)} = {a * x + b}."
    c = a * x + b
    return q, Fraction(x), [Fraction(c + b, a), Fraction(c - b), Fraction(-x) - 1], "x"


def _system(rng):
    x, y = _n(rng, 2, 60), _n(rng, 1, 50)
    q = f"Two numbers x and y satisfy x + y = {x + y} and x - y = {x - y}. What is x?"
    return q, Fraction(x), [Fraction(y), Fraction(x + y), Fraction(2 * x)], "x"


def _consecutive(rng):
    n = _n(rng, 1, 300)
    q = f"The sum of three consecutive integers is {3 * n + 3}. What is the largest of them?"
    return q, Fraction(n + 2), [Fraction(n), Fraction(n + 1), Fraction(n + 3)], ""


def _ages(rng):
    k, b, y = _n(rng, 2, 5), _n(rng, 2, 15), _n(rng, 1, 10)
    s = k * b + b + 2 * y
    a, c = _pick(rng, NAMES[:6]), _pick(rng, NAMES[6:])
    q = (
        f"{a} is {k} times as old as {c}. In {y} years the sum of their ages will be {s}. "
        f"How old is {c} now?"
    )
    return q, Fraction(b), [Fraction(k * b), Fraction(b + y), Fraction(s, k + 1)], "years"


def _quadratic(rng):
    r, s = _n(rng, 1, 15), _n(rng, 1, 15)
    while s == r:
        s = _n(rng, 1, 15)
    p = s - r  # x^2 + p x - r s = (x - r)(x + s)
    lin = f" {'+' if p > 0 else '-'} {abs(p)}x"
    q = f"What is the positive solution of x^2{lin} - {r * s} = 0?"
    return q, Fraction(r), [Fraction(s), Fraction(-s), Fraction(r * s)], "x"


def _interest(rng):
    p, r, t = _n(rng, 1, 50) * 100, _n(rng, 1, 12), _n(rng, 1, 8)
    q = (
        f"A deposit of {p} dollars earns simple interest at {r}% per year. How many dollars of "
        f"interest does it earn in {t} years?"
    )
    ans = Fraction(p * r * t, 100)
    return q, ans, [Fraction(p * r, 100), p + ans, Fraction(p * r * t, 10)], "dollars"


TEMPLATES: dict[str, Callable[[np.random.Generator], Problem]] = {
    "addition and subtraction": _add_sub,
    "multiplication": _multiply,
    "division": _divide,
    "percentages": _discount,
    "rates": _speed,
    "geometry": _rectangle,
    "averages": _mean,
    "fractions": _fractions,
    "linear equations": _linear,
    "systems of equations": _system,
    "consecutive integers": _consecutive,
    "age problems": _ages,
    "quadratic equations": _quadratic,
    "simple interest": _interest,
}


def format_number(x: Fraction) -> str:
    """An integer, a short exact decimal, or p/q (all parsed by math-verify)."""
    if x.denominator == 1:
        return str(x.numerator)
    d, digits = x.denominator, 0
    for f in (2, 5):
        k = 0
        while d % f == 0:
            d, k = d // f, k + 1
        digits = max(digits, k)
    if d == 1 and digits <= 6:  # a short terminating decimal, exact through Decimal
        return format(Decimal(x.numerator) / Decimal(x.denominator), "f")
    return f"{x.numerator}/{x.denominator}"


def _rephrasings(x: Fraction, label: str, unit: str, rng: np.random.Generator) -> list[str]:
    """1-3 other spellings of the same value (math-verify equivalent to the label)."""
    forms = []
    if x.denominator == 1:
        forms += [f"{label}.0", f"${label}$"]
    elif "/" in label:
        forms += [f"\\frac{{{x.numerator}}}{{{x.denominator}}}", f"${label}$"]
    else:
        forms += [f"{x.numerator}/{x.denominator}", f"${label}$"]
    if unit == "x":  # the answer is the value of x
        forms.append(f"x = {label}")
    elif unit:
        forms.append(f"{label} {unit}")
    k = _n(rng, 1, len(forms))  # 2 or 3 forms
    return [forms[i] for i in sorted(rng.choice(len(forms), size=k, replace=False))]


def _distractors(x: Fraction, mistakes: list[Fraction]) -> list[str]:
    """Exactly three wrong values: the mistakes first, then near misses, all distinct from x."""
    out: list[Fraction] = []
    for m in [*mistakes, x + 1, x - 1, x + 2, 2 * x + 3]:
        if m != x and m not in out:
            out.append(m)
    return [format_number(m) for m in out[:3]]


def split_of(question: str) -> str:
    """A question's split, from its text alone: the same question is always in the same split."""
    return "test" if zlib.crc32(question.encode()) % TEST_FRACTION == 0 else "train"


def row(seed: int, i: int) -> dict:
    """Row i of the stream `seed` (any split), a pure function of (seed, i)."""
    rng = np.random.default_rng([seed, i])
    names = list(TEMPLATES)
    topic = names[int(rng.integers(len(names)))]
    question, answer, mistakes, unit = TEMPLATES[topic](rng)
    label = format_number(answer)
    return {
        "id": f"math-s{seed}-{i:07d}",
        "query": [{"role": "user", "content": question}],
        "label": label,
        "subject": "math",
        "topic": topic,
        "rephrasings": _rephrasings(answer, label, unit, rng),
        "distractors": _distractors(answer, mistakes),
    }


def generate(n: int, seed: int = 0, split: str = "train") -> Iterator[dict]:
    """The first `n` distinct-question rows of `split` in the stream `seed`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    seen: set[str] = set()
    i = 0
    while len(seen) < n:
        r = row(seed, i)
        q = r["query"][0]["content"]
        i += 1
        if split_of(q) == split and q not in seen:
            seen.add(q)
            yield r


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, required=True, help="number of rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=["train", "test"], default="train")
    ap.add_argument("--out", required=True, help="output JSONL file")
    args = ap.parse_args(argv)
    atomic.write_jsonl(args.out, generate(args.n, args.seed, args.split))


if __name__ == "__main__":
    main()
