"""The files a checkout ships beside the package (configs/, data/), found from any directory.

A relative path such as "data/onpolicy/answers.jsonl" or "configs/econ.py" is looked up in the
working directory first (a user's own copy wins), then in the checkout that holds this package
(an editable install's). A package installed without its checkout has neither: `find` then says
where it looked. The commands' `--config` flag (`define_config_flag`) and `load_config` find
config files the same way.
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


def _register_configs(path: Path) -> None:
    """Makes `configs` importable for a config file's `from configs import base`. It is not
    installed with rlvr_jax: when no `configs` package is importable from here, the folder of
    the config file `path` is registered under that name when it is one, else the checkout's."""
    if "configs" in sys.modules or importlib.util.find_spec("configs") is not None:
        return
    folder = path.resolve().parent
    if folder.name != "configs" or not (folder / "__init__.py").is_file():
        folder = CHECKOUT / "configs"
    if not (folder / "__init__.py").is_file():
        return  # the config's own import then names the missing package
    spec = importlib.util.spec_from_file_location(
        "configs", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    sys.modules["configs"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["configs"])


def load_config(rel: str | Path, arg: str | None = None) -> Any:
    """`get_config(arg)` of the config file `rel` (found by `find`; `configs` made importable by
    `_register_configs`)."""
    path = find(rel)
    _register_configs(path)
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def define_config_flag(name: str, help_string: str, **kw: Any) -> Any:
    """`ml_collections.config_flags.DEFINE_config_file(name, None, help_string, **kw)` whose file
    is found by `find`: `--config configs/econ.py:smoke --config.rl.beta=0.02` works from any
    directory. A file in neither place stops flag parsing with one line naming it (absl's
    IllegalFlagValueError, printed by app.run)."""
    from absl import flags
    from ml_collections import config_flags

    class FoundConfigParser(flags.ArgumentParser):
        """The config file parser of `inner`, given the file `find` finds."""

        def __init__(self, inner: flags.ArgumentParser):
            self.inner = inner

        def parse(self, argument: str) -> Any:
            rel, colon, arg = str(argument).partition(":")
            try:
                path = find(rel)
            except ShippedFileError as e:
                raise ValueError(str(e)) from None
            _register_configs(path)
            return self.inner.parse(f"{path}{colon}{arg}")

        def flag_type(self) -> str:
            return self.inner.flag_type()

    holder = config_flags.DEFINE_config_file(name, None, help_string, **kw)
    flag = kw.get("flag_values", flags.FLAGS)[name]
    flag.parser = FoundConfigParser(flag.parser)
    return holder
