"""Atomic file writes: whoever reads the file (a resumed run, a concurrent job, a test) sees the
old content or the new, never a torn file. Each write goes to a temporary file in the same folder
(the same file system), which is then renamed over the target."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def write_with(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path` (its name keeps `path`'s suffix, which
    writers such as matplotlib's savefig read the format from); it then replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a results file should not be
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """`path` holds `text` (UTF-8), written atomically."""
    write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON (numpy scalars as floats), written atomically."""
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line (non-ASCII kept as is), written atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
