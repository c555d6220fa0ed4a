"""JSONL for tools/sample.py and tools/score.py: rows with their file:line, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class RowError(ValueError):
    """A malformed input row or file; the message is one line naming file, line and field."""


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) per non-blank line, where = 'FILE:line N'. Raises RowError on bad input."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RowError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        where = f"{path}:line {i + 1}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RowError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise RowError(f"{where}: row: expected a JSON object, got {type(row).__name__}")
        rows.append((where, row))
    if not rows:
        raise RowError(f"{path}: no rows")
    return rows


def text_field(row: dict[str, Any], key: str, where: str) -> str:
    """row[key] as a string, or RowError naming the field."""
    if key not in row:
        raise RowError(f"{where}: {key}: missing")
    if not isinstance(row[key], str):
        raise RowError(f"{where}: {key}: expected a string, got {type(row[key]).__name__}")
    return row[key]


def write_rows_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write JSONL to a temporary file next to `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
