"""rlvr_jax.data: loading, validation messages, skip policy, resumable batches; and probes."""

import json

import datasets
import pytest

from rlvr_jax import batches, data
from rlvr_jax.judge import probes


def _row(i, **over):
    r = {
        "id": f"t-{i}",
        "query": [{"role": "user", "content": f"What is question {i}?"}],
        "label": f"answer {i}",
        "subject": "economics",
        "topic": "micro",
        "rephrasings": [f"ans {i}"],
        "distractors": [f"wrong {i}a", f"wrong {i}b", f"wrong {i}c"],
    }
    r.update(over)
    return r


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "bad, field, words",
    [
        ({"label": None}, "label", "missing"),
        ({"label": "   "}, "label", "empty reference"),
        ({"label": ["a"]}, "label", "expected a string, got list"),
        ({"query": "What?"}, "query", "list of chat messages"),
        ({"query": [{"role": "user", "content": " "}]}, "query[-1].content", "empty question"),
        ({"query": [{"role": "user", "content": 3}]}, "query[0].content", "got int"),
        ({"query": [{"role": "assistant", "content": "hi"}]}, "query[-1].role", "user question"),
        ({"subject": 7}, "subject", "expected a string"),
        ({"distractors": "x"}, "distractors", "list of strings"),
        ({"rephrasings": ["ok", ""]}, "rephrasings[1]", "non-empty string"),
    ],
)
def test_malformed_row_names_file_line_field(tmp_path, bad, field, words):
    rows = [_row(0), _row(1), _row(2, **bad), _row(3)]
    rows[2] = {k: v for k, v in rows[2].items() if v is not None}  # None = field left out
    f = _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(data.DataError) as e:
        data.load_examples(f)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{f}:line 3: {field}: "), msg
    assert words in msg


def test_bad_json_line_and_more_count(tmp_path):
    f = _write_jsonl(
        tmp_path / "train.jsonl", [_row(0), "{not json", "", _row(1, label=""), _row(2)]
    )
    with pytest.raises(data.DataError, match=r"train.jsonl:line 2: not valid JSON .*\(and 1 more"):
        data.load_examples(f)


def test_skip_policy_counts_and_reports(tmp_path):
    rows = [
        _row(0),
        _row(1, label=""),
        _row(2),
        {"query": [], "label": "x", "subject": "s"},
        _row(4),
    ]
    f = _write_jsonl(tmp_path / "d.jsonl", rows)
    rep = data.load_examples(f, on_error="skip")
    assert [ex.id for ex in rep.examples] == ["t-0", "t-2", "t-4"]
    assert len(rep.skipped) == 2
    assert rep.skipped[0].startswith(f"{f}:line 2: label:")
    assert rep.skipped[1].startswith(f"{f}:line 4: query:")
    assert "2 bad rows skipped" in rep.summary()


def test_example_record_and_system_prompt(tmp_path):
    row = _row(
        5,
        query=[
            {"role": "system", "content": "old"},
            {"role": "user", "content": "  What is GDP?  "},
        ],
        subject="Psychology",
    )
    f = _write_jsonl(tmp_path / "d.jsonl", [row])
    ex = data.load_examples(f).examples[0]
    assert ex.question == "What is GDP?"
    assert ex.messages[0] == {"role": "system", "content": data.DEFAULT_SYSTEM_PROMPT}
    assert [m["role"] for m in ex.messages] == ["system", "user"]
    assert ex.field == "Social Sciences" and ex.reference == "answer 5"
    assert ex.distractors == ("wrong 5a", "wrong 5b", "wrong 5c") and ex.rephrasings == ("ans 5",)
    kept = data.load_examples(f, system_prompt=None).examples[0]
    assert kept.messages[0]["content"] == "old"
    custom = data.load_examples(f, system_prompt="Be brief.").examples[0]
    assert custom.messages[0]["content"] == "Be brief." and len(custom.messages) == 2


def test_released_rows_without_extras_and_default_subject(tmp_path):
    rows = [{"query": [{"role": "user", "content": "1+1?"}], "label": "2"}]
    f = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(data.DataError, match="line 1: subject: missing"):
        data.load_examples(f)
    ex = data.load_examples(f, default_subject="math").examples[0]
    assert (ex.subject, ex.field, ex.distractors, ex.id) == ("math", "Math", (), f"{f}:line 1")


def test_fields():
    assert data.field_of("economics") == "Social Sciences"
    assert data.field_of("education") == "Social Sciences"
    assert data.field_of("chemistry") == "STEM"
    assert data.field_of("medicine") == "Applied Sciences"
    assert data.field_of("math") == "Math"
    assert data.field_of("astrology") == "Other"


def test_loader_reads_jsonl_parquet_and_save_to_disk(tmp_path):
    rows = [_row(i) for i in range(6)]
    want = [(r["id"], r["label"]) for r in rows]
    # JSONL folder with split files
    _write_jsonl(tmp_path / "train.jsonl", rows)
    _write_jsonl(tmp_path / "test.jsonl", rows[:2])
    assert [(e.id, e.reference) for e in data.load_examples(tmp_path).examples] == want
    assert len(data.load_examples(tmp_path, "test").examples) == 2
    # Parquet in the Hugging Face layout data/{split}-*.parquet
    ds = datasets.Dataset.from_list(rows)
    pq = tmp_path / "hub"
    (pq / "data").mkdir(parents=True)
    ds.to_parquet(str(pq / "data" / "train-00000-of-00001.parquet"))
    cache = str(tmp_path / "cache")
    got = data.load_examples(pq, cache_dir=cache).examples
    assert [(e.id, e.reference) for e in got] == want
    assert got[0].where.endswith("train-00000-of-00001.parquet:row 1")
    # save_to_disk: a DatasetDict and a plain Dataset
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert [(e.id, e.reference) for e in data.load_examples(tmp_path / "dd").examples] == want
    assert len(data.load_examples(tmp_path / "dd", "test").examples) == 3
    with pytest.raises(data.DataError, match="no split 'valid'"):
        data.load_examples(tmp_path / "dd", "valid")
    ds.save_to_disk(str(tmp_path / "one"))
    assert len(data.load_examples(tmp_path / "one").examples) == 6


def test_parquet_bad_row_is_named(tmp_path):
    rows = [_row(0), _row(1, label=""), _row(2)]
    f = tmp_path / "x.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(f))
    with pytest.raises(data.DataError, match=r"x\.parquet:row 2: label: empty reference"):
        data.load_examples(f, cache_dir=str(tmp_path / "c"))


def test_missing_source_and_split(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        data.load_examples(tmp_path / "nope.jsonl")
    no_split = "no files for split .test. \\(expected e.g. test.jsonl"
    with pytest.raises(data.DataError, match=no_split):
        data.load_examples(tmp_path, "test")


def _examples(n):
    return [data.example_from_row(_row(i), f"f:line {i + 1}") for i in range(n)]


def _ids(batch):
    return [e.id for e in batch]


def test_iterator_resumes_exactly_and_shuffles_per_epoch():
    exs = _examples(10)
    it = batches.BatchIterator(exs, batch_size=4, seed=3)
    assert it.batches_per_epoch == 2
    first = [_ids(next(it)) for _ in range(3)]
    saved = json.loads(json.dumps(it.state()))  # a checkpoint round trip
    future = [_ids(next(it)) for _ in range(5)]
    it2 = batches.BatchIterator(exs, batch_size=4, seed=999)  # seed comes from the state
    it2.restore(saved)
    assert [_ids(next(it2)) for _ in range(5)] == future
    # epoch 0 covers 8 distinct examples, epoch 1 is a different order
    assert len(set(first[0] + first[1])) == 8
    assert first[2] != first[0]
    assert saved["epoch"] == 1 and saved["position"] == 4
    # same seed, same batches
    again = batches.BatchIterator(exs, batch_size=4, seed=3)
    assert [_ids(next(again)) for _ in range(3)] == first


def test_iterator_refuses_state_of_other_data():
    it = batches.BatchIterator(_examples(10), batch_size=2)
    next(it)
    st = it.state()
    other = batches.BatchIterator(_examples(11), batch_size=2)
    with pytest.raises(data.DataError, match="num_examples"):
        other.restore(st)
    changed = _examples(10)
    changed[3] = data.example_from_row(_row(3, label="changed"), "f:line 4")
    with pytest.raises(data.DataError, match="fingerprint"):
        batches.BatchIterator(changed, batch_size=2).restore(st)


def test_iterator_host_shards_partition_the_global_batch():
    exs = _examples(12)
    hosts = [batches.BatchIterator(exs, 6, seed=1, host_index=h, host_count=3) for h in range(3)]
    whole = batches.BatchIterator(exs, 6, seed=1)
    for _ in range(4):
        parts = [_ids(next(h)) for h in hosts]
        assert all(len(p) == 2 for p in parts)
        assert sum(parts, []) == _ids(next(whole))
    with pytest.raises(ValueError):
        batches.BatchIterator(exs, 5, host_count=2)


def test_math_source_loads_through_validation():
    rep = data.load_examples("math:20:4", "test")
    assert len(rep.examples) == 20 and all(e.field == "Math" for e in rep.examples)


class _CountingTokenizer:
    def chat_ids(self, messages):
        return list(range(sum(len(m["content"]) for m in messages)))


def test_drop_long_prompts():
    exs = _examples(3) + [
        data.example_from_row(_row(9, query=[{"role": "user", "content": "x" * 500}]), "f:line 9")
    ]
    kept, bad = data.drop_long_prompts(exs, _CountingTokenizer(), 400, on_error="skip")
    assert len(kept) == 3 and len(bad) == 1 and bad[0].startswith("f:line 9: query: prompt has")
    with pytest.raises(data.DataError, match="f:line 9"):
        data.drop_long_prompts(exs, _CountingTokenizer(), 400)


def test_probe_rows_are_content_free_and_labelled_no():
    exs = _examples(2)
    rows = probes.probe_rows(exs)
    assert len(rows) == 2 * len(probes.PROBES)
    assert all(r["label"] == "NO" for r in rows)
    responses = {r["response"] for r in rows}
    for must in ("Thought process:", ":", "Let's solve this step by step.", "", "Solution"):
        assert must in responses
    assert exs[0].question in responses  # the question repeated
    for r in rows:  # no probe gives the answer away
        assert r["reference"] not in r["response"]
    raw = probes.probe_rows([_row(7)], kinds=["colon"])
    assert raw[0]["question"] == "What is question 7?" and raw[0]["response"] == ":"
    with pytest.raises(ValueError, match="unknown probes"):
        probes.probe_rows(exs, kinds=["nope"])


def test_answer_rows_labels_and_forms():
    exs = _examples(3)
    rows = probes.answer_rows(exs, seed=0)
    assert rows == probes.answer_rows(exs, seed=0)
    by_kind = {
        k: [r for r in rows if r["kind"] == k] for k in ("reference", "rephrasing", "distractor")
    }
    assert len(by_kind["reference"]) == 3 and len(by_kind["rephrasing"]) == 3
    assert len(by_kind["distractor"]) == 9
    assert all(r["label"] == "YES" for r in by_kind["reference"] + by_kind["rephrasing"])
    assert all(r["label"] == "NO" for r in by_kind["distractor"])
    for r in rows:
        last = [ln for ln in r["response"].splitlines() if ln.strip()][-1]
        assert "answer is" in last
    assert "wrong 0a" in by_kind["distractor"][0]["response"]


def test_shipped_files_are_found_from_any_directory(tmp_path, monkeypatch):
    """configs/ and data/ of the checkout are found from another working directory; a missing
    one names both places it was looked for."""
    from rlvr_jax import shipped

    monkeypatch.chdir(tmp_path)
    assert shipped.find("data/onpolicy/answers.jsonl").is_file()
    assert shipped.load_config("configs/judge_eval.py").name == "judge_eval"
    with pytest.raises(shipped.ShippedFileError, match=f"nope.py: not found in {tmp_path}"):
        shipped.find("configs/nope.py")
    rep = data.load_examples(["data/economics/test.jsonl"], "test", limit=2)
    assert len(rep.examples) == 2  # a config's data source, read from the checkout
    with pytest.raises(data.DataError, match="^data/nope.jsonl: no such file"):
        data.load_examples(["data/nope.jsonl"], "test")


def test_config_flag_finds_shipped_configs_from_any_directory(tmp_path, monkeypatch):
    """`--config configs/econ.py:smoke` with overrides, parsed in another working directory; a
    missing file is one flag error naming it."""
    from absl import flags

    from rlvr_jax import shipped

    monkeypatch.chdir(tmp_path)
    argv = ["prog", "--config", "configs/econ.py:smoke", "--config.rl.beta=0.5"]
    fv = flags.FlagValues()
    cfg = shipped.define_config_flag("config", "Run config.", flag_values=fv, sys_argv=argv)
    fv(argv)
    assert cfg.value.name == "econ_smoke" and cfg.value.rl.beta == 0.5
    fv = flags.FlagValues()
    shipped.define_config_flag("config", "Run config.", flag_values=fv, sys_argv=["prog"])
    with pytest.raises(flags.IllegalFlagValueError, match="configs/nope.py: not found in"):
        fv(["prog", "--config", "configs/nope.py"])


def test_config_flag_works_without_configs_on_the_path(tmp_path):
    """As from an installed package run in a directory of its own: neither the checkout nor
    `configs` is on the import path, and the config's `from configs import base` still loads."""
    import os
    import subprocess
    import sys

    from rlvr_jax import shipped

    pkgs, work = tmp_path / "site", tmp_path / "work"
    pkgs.mkdir()
    work.mkdir()
    (pkgs / "rlvr_jax").symlink_to(shipped.CHECKOUT / "rlvr_jax")
    code = (
        "import sys\n"
        "from absl import app\n"
        "from rlvr_jax import shipped\n"
        "cfg = shipped.define_config_flag('config', 'Run config.')\n"
        "app.run(lambda argv: print(cfg.value.name, sys.modules['configs'].__file__))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(pkgs)}
    run = lambda *a: subprocess.run(
        [sys.executable, "-c", code, *a], cwd=work, env=env, capture_output=True, text=True
    )
    ok = run("--config", "configs/econ.py:smoke")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["econ_smoke", str(shipped.CHECKOUT / "configs" / "__init__.py")]
    bad = run("--config", "configs/nope.py")
    assert bad.returncode != 0
    assert f"configs/nope.py: not found in {work}" in bad.stderr and "Traceback" not in bad.stderr
