"""Reading JSONL files of rows: each row with its file:line, every error one line naming them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RowError(ValueError):
    """A malformed input row or file; the message is one line naming file, line and field."""


def read_rows(path: str | Path, allow_empty: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) per non-blank line, where = 'FILE:line N'. Raises RowError on bad input (and
    on a file without rows, unless allow_empty)."""
    path = Path(path)
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
    if not rows and not allow_empty:
        raise RowError(f"{path}: no rows")
    return rows


def text_field(row: dict[str, Any], key: str, where: str) -> str:
    """row[key] as a string, or RowError naming the field."""
    if key not in row:
        raise RowError(f"{where}: {key}: missing")
    if not isinstance(row[key], str):
        raise RowError(f"{where}: {key}: expected a string, got {type(row[key]).__name__}")
    return row[key]
