"""Minimal pairs of a reference answer: rewrites that keep its value, near misses that change it.

A judge compares a response with a reference. A small distilled judge fails in two ways that the
data's rephrasings and distractors teach too rarely (both show on the validation questions): it
calls equal values different when they are written differently ("0.25" against "1/4", "4%" against
"0.04") and calls different values equal when they look alike ("0.25" against "-0.25", "0.7%"
against "7%", "increasing returns" against "decreasing returns"). Training rows built from the
reference itself, one value-preserving rewrite labelled YES and one minimal change labelled NO, put
the difference in the value alone.

`equivalents(answer)` and `near_misses(answer)` are pure string functions; rules apply only to
answers that are a number with optional sign, currency, scale word, percent sign and unit words
("$9 million", "-4%", "3/4", "1,200 units"), or (near misses) that hold a word with a listed
opposite. Chemical names and other text with digits inside words are left alone.
"""

from __future__ import annotations

import re
from fractions import Fraction

_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_NUMERIC = re.compile(
    r"(?P<sign>[-+]?)(?P<cur>\$?)(?P<num>\d[\d,]*(?:\.\d+)?|\.\d+)(?P<den>/\d+)?"
    r"(?P<scale> (?:thousand|million|billion|trillion))?(?P<pct> ?%| percent)?"
    r"(?P<unit>(?: (?!per\b)[A-Za-z][A-Za-z/^]*| per [A-Za-z]+){0,3})"
)
# Word pairs whose swap changes an answer's meaning (either direction; whole words only).
OPPOSITES = (
    ("increase", "decrease"),
    ("increases", "decreases"),
    ("increasing", "decreasing"),
    ("increased", "decreased"),
    ("rise", "fall"),
    ("rises", "falls"),
    ("higher", "lower"),
    ("more", "less"),
    ("appreciates", "depreciates"),
    ("appreciation", "depreciation"),
    ("positive", "negative"),
    ("surplus", "deficit"),
    ("elastic", "inelastic"),
    ("upward", "downward"),
    ("left", "right"),
    ("first", "second"),
    ("long-run", "short-run"),
    ("long run", "short run"),
    ("gains", "loses"),
    ("above", "below"),
    ("maximum", "minimum"),
    ("complements", "substitutes"),
    ("acidic", "basic"),
    ("oxidation", "reduction"),
    ("endothermic", "exothermic"),
    ("inhibits", "activates"),
    ("intrinsic", "extrinsic"),
)
_SWAP = {a: b for a, b in OPPOSITES} | {b: a for a, b in OPPOSITES}
_ALTS = "|".join(sorted(map(re.escape, _SWAP), key=len, reverse=True))  # longest first
_WORDS = re.compile(rf"\b({_ALTS})\b")


def _parse(answer: str) -> re.Match | None:
    a = answer.strip().rstrip(".").strip()
    m = _NUMERIC.fullmatch(a)
    return m if m and not (m["den"] and (m["scale"] or m["pct"] or m["cur"])) else None


def _value(m: re.Match | None) -> Fraction | None:
    """The parsed number's value; None when there is no number or its denominator is 0."""
    if m is None:
        return None
    try:
        v = Fraction(m["num"].replace(",", ""))
        if m["den"]:
            v /= int(m["den"][1:])
    except ZeroDivisionError:
        return None
    return -v if m["sign"] == "-" else v


def _decimals(num: str) -> int:
    return len(num.split(".")[1]) if "." in num else 0


def _fmt(x: Fraction, places: int, commas: bool) -> str:
    """x as a decimal with `places` decimals (fewer when exact), thousands separated or not."""
    s = f"{float(abs(x)):,.{places}f}" if commas else f"{float(abs(x)):.{places}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def _build(m: re.Match, sign: str, num: str, pct: str | None = None, scale=None) -> str:
    pct = (m["pct"] or "") if pct is None else pct
    scale = (m["scale"] or "") if scale is None else scale
    return f"{sign}{m['cur']}{num}{scale}{pct}{m['unit']}"


def equivalents(answer: str) -> list[str]:
    """Rewrites of a numeric answer with the same value: fraction <-> decimal ("3/4" / "0.75"),
    percent -> decimal ("4%" / "0.04"), thousands separators ("1,200" / "1200"), scale word ->
    digits ("$9 million" / "$9,000,000"), a "+" dropped; an explicit "+" on a positive number when
    no other rule applies. Empty for non-numeric answers."""
    m = _parse(answer)
    v = _value(m)
    if v is None:
        return []
    sign = "-" if v < 0 else ""
    out = []
    if m["den"]:  # 3/4 -> 0.75, when the decimal is exact in 4 places
        if (abs(v) * 10**4).denominator == 1:
            out.append(_build(m, sign, _fmt(v, 4, False)))
    elif "." in m["num"] and not (m["pct"] or m["cur"] or m["scale"] or m["unit"]):
        f = abs(v).limit_denominator(16)  # 0.375 -> 3/8
        if f == abs(v) and f.denominator > 1:
            out.append(_build(m, sign, f"{f.numerator}/{f.denominator}"))
    if m["pct"] and not m["den"]:  # 4% -> 0.04
        out.append(_build(m, sign, _fmt(v / 100, _decimals(m["num"]) + 2, False), pct=""))
    if "," in m["num"]:
        out.append(_build(m, m["sign"], m["num"].replace(",", "")))
    elif not m["den"] and "." not in m["num"] and abs(v) >= 1000:
        out.append(_build(m, m["sign"], f"{int(abs(v)):,}"))
    if m["scale"] and not m["pct"]:  # $9 million -> $9,000,000
        whole = abs(v) * _SCALES[m["scale"].strip()]
        if whole.denominator == 1:
            out.append(_build(m, sign, f"{int(whole):,}", scale=""))
    if v > 0 and not (m["sign"] or m["cur"] or out):  # only when nothing else applies
        out.append(_build(m, "+", m["num"] + (m["den"] or "")))
    if m["sign"] == "+":  # +4 units -> 4 units
        out.append(_build(m, "", m["num"] + (m["den"] or "")))
    return [x for x in dict.fromkeys(out) if x != answer.strip()]


def near_misses(answer: str) -> list[str]:
    """Minimal changes of the answer's value or meaning: the sign flipped, the number times 10 or
    divided by 10, the number moved by a quarter or a half, a percent read as a decimal
    ("4%" / "0.4"), a word replaced by its opposite ("increasing" / "decreasing")."""
    out = []
    m = _parse(answer)
    v = _value(m)
    if v:  # zero has no sign to flip and no scale to change
        out.append(_build(m, "" if v < 0 else "-", m["num"] + (m["den"] or "")))
        if m["den"]:  # 3/4 -> 3/5
            out.append(_build(m, m["sign"], f"{m['num']}/{int(m['den'][1:]) + 1}"))
        else:
            places, commas = _decimals(m["num"]), "," in m["num"]
            for x in (v * 10, v / 10, v * Fraction(3, 2), v * Fraction(3, 4)):
                num = _fmt(x, max(places, 1 if x.denominator > 1 else 0) + 1, commas)
                if Fraction(num.replace(",", "")) not in (0, abs(v)):
                    out.append(_build(m, "-" if x < 0 else "", num))
            if m["pct"]:  # 4% read as the decimal 0.4
                out.append(_build(m, "-" if v < 0 else "", _fmt(abs(v) / 10, 3, False), pct=""))
    swapped = _WORDS.sub(lambda w: _SWAP[w[0]], answer)
    if swapped != answer:
        out.append(swapped)
    return [x for x in dict.fromkeys(out) if x.strip() != answer.strip()]
