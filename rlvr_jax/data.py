"""Question/answer data: load and validate rows (their resumable batches: batches.py).

Row format (the released Multi-subject-RLVR / Math-RLVR one, plus optional keys of our shipped
data): `query` (chat messages; the last is the user question), `label` (reference answer),
`subject`; optional `id`, `topic`, `rephrasings` (acceptable rewordings of the label),
`distractors` (wrong answers). Every row is checked before training starts; a bad row yields
one line naming file, line (or row) and field, and a per-config policy skips it (counted) or stops.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlvr_jax import shipped

Message = dict[str, str]
OnError = Literal["error", "skip"]

# The paper's policy system prompt (see PAPER.md, "Policy optimisation").
DEFAULT_SYSTEM_PROMPT = (
    "You are a chatbot who can solve problems. Please solve the following problem and give your "
    "thought process. Before giving the final result, you should output "
    '"Therefore, the answer is", and then give your final answer.'
)

# Subject -> field, as the paper groups ExamQA subjects. Unknown subjects fall in "Other".
SUBJECT_FIELDS: dict[str, str] = {
    **dict.fromkeys(
        ["economics", "psychology", "education", "law", "management", "sociology"],
        "Social Sciences",
    ),
    **dict.fromkeys(["chemistry", "physics", "biology", "computer science"], "STEM"),
    **dict.fromkeys(
        ["medicine", "basic medicine", "clinical medicine", "pharmacy"], "Applied Sciences"
    ),
    **dict.fromkeys(["history", "philosophy", "literature"], "Humanities"),
    **dict.fromkeys(["math", "mathematics"], "Math"),
}


def field_of(subject: str) -> str:
    """The paper's field of a subject ("economics" -> "Social Sciences"); "Other" if unknown."""
    return SUBJECT_FIELDS.get(subject.strip().lower().replace("_", " "), "Other")


class DataError(ValueError):
    """Bad data, with a one-line message naming file, line (or row) and field."""


@dataclass(frozen=True)
class Example:
    """One validated question. `messages` is the policy's chat: system prompt + the row's query."""

    id: str
    question: str
    messages: tuple[Message, ...]
    reference: str
    subject: str
    field: str
    topic: str = ""
    rephrasings: tuple[str, ...] = ()
    distractors: tuple[str, ...] = ()
    where: str = ""  # "file:line N", for messages about this example


@dataclass
class LoadReport:
    """What a load produced: the good examples and one message per skipped row."""

    examples: list[Example]
    skipped: list[str] = dataclasses.field(default_factory=list)
    source: str = ""

    def summary(self) -> str:
        s = f"{self.source}: {len(self.examples)} examples"
        if self.skipped:
            s += f", {len(self.skipped)} bad rows skipped (first: {self.skipped[0]})"
        return s


# ---------------------------------------------------------------------------------------------
# Reading rows


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) per non-blank line; a line that is not JSON yields a DataError as its row.

    JSONL is parsed line by line rather than with Arrow's reader: Arrow rejects a column whose type
    changes between rows before any row is seen, and we must name the offending line instead.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as UTF-8 text ({e})") from None
    if text.lstrip().startswith("["):  # a JSON array file, not JSON lines
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            yield (
                f"{path}:line {e.lineno}",
                DataError(f"{path}:line {e.lineno}: not valid JSON ({e.msg})"),
            )
            return
        for i, row in enumerate(rows):
            yield f"{path}:row {i + 1}", row
        return
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        where = f"{path}:line {i + 1}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            yield where, DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})")


def _dataset_rows(ds: Any, name: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(ds):
        yield f"{name}:row {i + 1}", row


def _split_files(folder: Path, split: str) -> list[Path]:
    """Files of `split` in a folder: {split}.jsonl|json|parquet, or the Hugging Face layouts
    data/{split}-*.parquet and {config}/{split}/*.parquet."""
    for ext in ("jsonl", "json", "parquet"):
        if (folder / f"{split}.{ext}").is_file():
            return [folder / f"{split}.{ext}"]
    for pattern in (f"{split}-*.parquet", f"data/{split}-*.parquet", f"*/{split}/*.parquet"):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def read_rows(
    source: str | Path, split: str = "train", cache_dir: str | None = None
) -> Iterator[tuple[str, Any]]:
    """Raw rows (where, row) of one split of `source`, unvalidated.

    `source`: a .jsonl/.json/.parquet file (the split is ignored), a `save_to_disk` folder (Dataset
    or DatasetDict), or a folder holding the split's files (see `_split_files`). Parquet and
    save_to_disk go through `datasets` (whose Arrow cache goes to `cache_dir` or its default).
    A relative path missing from the working directory is looked up in the checkout
    (`shipped.locate`: "data/economics/train.jsonl" from any directory).
    """
    import datasets  # heavy; only needed here

    path = Path(source)
    if not path.exists() and not path.is_absolute():
        path = shipped.locate(path) or path
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r} (has {', '.join(ds)})")
            ds = ds[split]
        yield from _dataset_rows(ds, str(path))
        return
    files = _split_files(path, split) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no files for split {split!r} (expected e.g. {split}.jsonl)")
    for f in files:
        if f.suffix == ".parquet":
            try:
                ds = datasets.Dataset.from_parquet(str(f), cache_dir=cache_dir)
            except Exception as e:  # pyarrow/datasets raise many types for an unreadable file
                raise DataError(f"{f}: cannot read as Parquet ({type(e).__name__})") from None
            yield from _dataset_rows(ds, str(f))
        elif f.suffix in (".jsonl", ".json"):
            yield from _jsonl_rows(f)
        else:
            raise DataError(f"{f}: unknown data file type (expected .jsonl, .json or .parquet)")


# ---------------------------------------------------------------------------------------------
# Validation


def _type_name(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def _text(row: Mapping, key: str, where: str, *, required: bool) -> str | None:
    v = row.get(key)
    if v is None:
        if required:
            raise DataError(f"{where}: {key}: missing")
        return None
    if not isinstance(v, str):
        raise DataError(f"{where}: {key}: expected a string, got {_type_name(v)}")
    return v


def _texts(row: Mapping, key: str, where: str) -> tuple[str, ...]:
    v = row.get(key)
    if v is None:
        return ()
    if not isinstance(v, list | tuple):
        raise DataError(f"{where}: {key}: expected a list of strings, got {_type_name(v)}")
    for i, s in enumerate(v):
        if not isinstance(s, str) or not s.strip():
            raise DataError(f"{where}: {key}[{i}]: expected a non-empty string, got {s!r}")
    return tuple(s.strip() for s in v)


def _messages(row: Mapping, where: str) -> tuple[Message, ...]:
    q = row.get("query")
    if q is None:
        raise DataError(f"{where}: query: missing")
    if not isinstance(q, list | tuple) or not q:
        raise DataError(
            f"{where}: query: expected a non-empty list of chat messages, got {q!r:.60}"
        )
    out = []
    for i, m in enumerate(q):
        if not isinstance(m, Mapping):
            raise DataError(f"{where}: query[{i}]: expected a message object, got {_type_name(m)}")
        for k in ("role", "content"):
            if not isinstance(m.get(k), str):
                raise DataError(
                    f"{where}: query[{i}].{k}: expected a string, got {_type_name(m.get(k))}"
                )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise DataError(
            f"{where}: query[-1].role: the last message must be the user question, "
            f"got {out[-1]['role']!r}"
        )
    if not out[-1]["content"].strip():
        raise DataError(f"{where}: query[-1].content: empty question")
    return tuple(out)


def example_from_row(
    row: Any,
    where: str,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    default_subject: str | None = None,
) -> Example:
    """Validate one row and build its Example; raises DataError naming `where` and the field.

    `system_prompt`: replaces any system message of the query; None keeps the query as it is.
    `default_subject`: used when a row has no subject (e.g. math sets); otherwise that is an error.
    """
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: row: expected a JSON object, got {_type_name(row)}")
    query = _messages(row, where)
    label = _text(row, "label", where, required=True)
    if not label.strip():
        raise DataError(f"{where}: label: empty reference answer")
    subject = _text(row, "subject", where, required=default_subject is None)
    if subject is not None and not subject.strip():
        if default_subject is None:
            raise DataError(f"{where}: subject: empty")
        subject = None
    subject = (subject or default_subject).strip()
    rid = row.get("id")
    if rid is not None and not isinstance(rid, str | int):
        raise DataError(f"{where}: id: expected a string, got {_type_name(rid)}")
    messages = query
    if system_prompt:
        turns = tuple(m for m in query if m["role"] != "system")
        messages = ({"role": "system", "content": system_prompt}, *turns)
    return Example(
        id=str(rid) if rid is not None else where,
        question=query[-1]["content"].strip(),
        messages=messages,
        reference=label.strip(),
        subject=subject,
        field=field_of(subject),
        topic=(_text(row, "topic", where, required=False) or "").strip(),
        rephrasings=_texts(row, "rephrasings", where),
        distractors=_texts(row, "distractors", where),
        where=where,
    )


def _generated_rows(source: str, split: str) -> Iterator[tuple[str, Any]]:
    """Rows of "math:N" or "math:N:SEED" (the seeded generator in math_data)."""
    from rlvr_jax import math_data

    parts = source.split(":")
    try:
        n, seed = int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        raise DataError(f"{source}: expected math:N or math:N:SEED") from None
    for i, row in enumerate(math_data.generate(n, seed=seed, split=split)):
        yield f"{source}:{split} row {i + 1}", row


def load_examples(
    sources: str | Path | Sequence[str | Path],
    split: str = "train",
    *,
    on_error: OnError = "error",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    default_subject: str | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
) -> LoadReport:
    """Load and validate one split of one or more sources (paths, or "math:N[:SEED]").

    on_error="error": any bad row raises DataError (the first one's line, plus how many more);
    "skip": bad rows are dropped and listed in `LoadReport.skipped`. `limit` keeps the first K.
    """
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    if isinstance(sources, str | Path):
        sources = [sources]
    examples: list[Example] = []
    bad: list[str] = []
    for src in sources:
        s = str(src)
        rows = (
            _generated_rows(s, split) if s.startswith("math:") else read_rows(s, split, cache_dir)
        )
        for where, row in rows:
            try:
                examples.append(example_from_row(row, where, system_prompt, default_subject))
            except DataError as e:
                bad.append(str(e))
    if bad and on_error == "error":
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise DataError(bad[0] + more)
    if limit is not None:
        examples = examples[:limit]
    name = ", ".join(str(s) for s in sources)
    if not examples:
        raise DataError(f"{name}: no usable rows in split {split!r}")
    return LoadReport(examples, bad, name)


def drop_long_prompts(
    examples: Sequence[Example], tokenizer: Any, max_tokens: int, on_error: OnError = "error"
) -> tuple[list[Example], list[str]]:
    """Check before training that each rendered prompt fits `max_tokens` (else left_pad would fail
    mid-run). Returns (kept, messages about dropped ones); on_error="error" raises on the first."""
    kept, bad = [], []
    for ex in examples:
        n = len(tokenizer.chat_ids(list(ex.messages)))
        if n <= max_tokens:
            kept.append(ex)
            continue
        msg = f"{ex.where}: query: prompt has {n} tokens, more than the maximum {max_tokens}"
        if on_error == "error":
            raise DataError(msg)
        bad.append(msg)
    return kept, bad
