"""Audit of the shipped data/<domain>/{train,test}.jsonl: every row loads, splits are disjoint,
references are non-empty, distractors are really different answers, counts are as promised."""

from collections import Counter
from pathlib import Path

import pytest

from rlvr_jax import data

DATA = Path(__file__).resolve().parents[1] / "data"
MIN_ROWS = {
    "economics": 300,
    "medicine": 100,
    "chemistry": 100,
    "psychology": 100,
    "education": 100,
}


def _norm(s: str) -> str:
    """Case- and whitespace-insensitive form."""
    return " ".join(s.split()).casefold()


def _load(domain: str, split: str) -> list[data.Example]:
    path = DATA / domain / f"{split}.jsonl"
    assert path.is_file(), f"missing {path}"
    return data.load_examples(path, on_error="error").examples  # any malformed row fails here


@pytest.fixture(scope="module", params=sorted(MIN_ROWS))
def domain(request):
    d = request.param
    return d, _load(d, "train"), _load(d, "test")


def test_counts_and_subject(domain):
    name, train, test = domain
    assert len(train) + len(test) >= MIN_ROWS[name]
    assert test and train
    assert {e.subject for e in train + test} == {name}
    assert {e.field for e in train + test} != {"Other"}


def test_no_question_in_both_splits_or_twice(domain):
    _, train, test = domain
    tr, te = [_norm(e.question) for e in train], [_norm(e.question) for e in test]
    assert not set(tr) & set(te), sorted(set(tr) & set(te))[:3]
    assert len(set(tr + te)) == len(tr + te), "a question appears twice"


def test_references_rephrasings_distractors(domain):
    _, train, test = domain
    for e in train + test:
        assert e.reference.strip(), e.where
        assert len(e.distractors) == 3, f"{e.where}: {len(e.distractors)} distractors"
        assert 1 <= len(e.rephrasings) <= 3, f"{e.where}: {len(e.rephrasings)} rephrasings"
        right = {_norm(e.reference)} | {_norm(r) for r in e.rephrasings}
        wrong = [_norm(d) for d in e.distractors]
        assert not right & set(wrong), (
            f"{e.where}: a distractor equals the reference or a rephrasing"
        )
        assert len(set(wrong)) == 3, f"{e.where}: repeated distractor"


def test_ids_unique_across_all_shipped_data():
    ids = [e.id for d in sorted(MIN_ROWS) for s in ("train", "test") for e in _load(d, s)]
    dup = [i for i, k in Counter(ids).items() if k > 1]
    assert not dup, sorted(dup)[:5]
    assert all(not i.startswith(str(DATA)) for i in ids), "rows without an id"
