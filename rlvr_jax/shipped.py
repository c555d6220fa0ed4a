"""The files a checkout ships beside the package (configs/, data/), found from any directory.

A relative path such as "data/onpolicy/answers.jsonl" is looked up in the working directory
first (a user's own copy wins), then in the checkout that holds this package. An installed
package without its checkout has neither: `find` then says where it looked.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

# The checkout that holds this package (its parent folder), where configs/ and data/ sit.
CHECKOUT = Path(__file__).resolve().parents[1]


class ShippedFileError(FileNotFoundError):
    """A shipped file is in neither place; the message names both."""


def locate(rel: str | Path) -> Path | None:
    """`rel` from the working directory, else from the checkout, else None."""
    for p in (Path(rel), CHECKOUT / rel):
        if p.exists():
            return p
    return None


def find(rel: str | Path) -> Path:
    """`rel` as `locate` finds it; ShippedFileError when neither place has it."""
    p = locate(rel)
    if p is None:
        raise ShippedFileError(
            f"{rel}: not found in {Path.cwd()} nor in the rlvr_jax checkout {CHECKOUT}; "
            "run from a checkout of rlvr_jax or give the file's path"
        )
    return p


def load_config(rel: str | Path, arg: str | None = None) -> Any:
    """`get_config(arg)` of the config file `rel` (found by `find`). Its `from configs import
    base` needs the `configs` package, which is not installed with rlvr_jax: when it is not
    importable from here, the checkout's copy is registered under that name."""
    path = find(rel)
    if "configs" not in sys.modules and importlib.util.find_spec("configs") is None:
        folder = path.resolve().parent
        spec = importlib.util.spec_from_file_location(
            "configs", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        sys.modules["configs"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["configs"])
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)
