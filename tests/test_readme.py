"""README's two set-up commands exist, and .ci/run runs the README's test command unchanged."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_has_main_and_test_commands():
    main, tests = _readme_commands()
    assert "python -m rlvr_jax.train --config configs/econ.py" in main
    assert "pytest" in tests and ".[test]" in tests


def test_ci_runs_the_readme_test_command():
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _readme_commands()[1] in ci_lines


def _reachable(names: list[str]) -> dict[str, str]:
    """Distributions reachable from `names` through their installed metadata's requirements
    (extras left out, markers evaluated here): {name: the requirer}."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = {}, [(canonicalize_name(n), "pyproject") for n in names]
    while todo:
        name, parent = todo.pop()
        if name in seen:
            continue
        seen[name] = parent
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, reqs):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append((canonicalize_name(r.name), name))
    return seen


def test_plain_install_never_pulls_torch():
    """`pip install -e .` (the README's main command) must not bring torch: pip would pick a
    CUDA build of it. torch belongs to the test extra only."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [Requirement(d).name for d in project["dependencies"]]
    got = _reachable(deps)
    assert "torch" not in got, f"torch is pulled in by {got['torch']}"
    assert not [n for n in got if n.startswith("nvidia-")]
    assert "jinja2" in got  # chat templates; torch used to bring it in unnoticed
    assert "torch" in _reachable(
        [Requirement(d).name for d in project["optional-dependencies"]["test"]]
    )
