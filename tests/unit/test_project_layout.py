"""The repository's layout rules: private names stay private, docs/ holds results only, configs are listed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
PACKAGE = "anomalib_hyperbolic"
BENCHMARK_CONFIGS = REPO / "configs" / "benchmark"


def _module_name(path: Path, src: Path) -> str:
    """``src/anomalib_hyperbolic/data/few_shot.py`` -> ``anomalib_hyperbolic.data.few_shot`` (a package: its name)."""
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute module of a ``from`` import (``level`` dots relative to ``importer``)."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join([*base, *([module] if module else [])])


def private_imports(path: Path, src: Path = SRC) -> list[str]:
    """This package's imports in ``path`` that reach another module's underscore name.

    ``from X import _name`` and ``import X._y`` (and ``from X._y import ...``) count unless the
    importer is package ``X``'s own ``__init__.py`` importing its submodule or name.
    """
    importer = _module_name(path, src)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, importer, is_package)
            targets = [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] != PACKAGE:
                continue  # third-party privates are out of scope
            for index, part in enumerate(parts):
                owner = ".".join(parts[:index])
                if _is_private(part) and not (is_package and owner == importer):
                    found.append(f"{path.relative_to(src.parent)}:{node.lineno}: {target}")
                    break
    return found


def test_no_module_imports_another_modules_private_name() -> None:
    offenders = [line for path in sorted((SRC / PACKAGE).rglob("*.py")) for line in private_imports(path)]
    assert not offenders, "imports of another module's underscore name:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    ("source", "name", "expected"),
    [
        ("from anomalib_hyperbolic.benchmark import _evaluator", "main_job.py", True),
        ("import anomalib_hyperbolic.benchmark._evaluator", "main_job.py", True),
        ("from anomalib_hyperbolic.benchmark._evaluator import build", "main_job.py", True),
        ("from anomalib_hyperbolic.metrics import _MIoU", "main_job.py", True),
        ("def f():\n    from anomalib_hyperbolic.metrics import _MIoU", "main_job.py", True),
        ("from ..metrics import _MIoU", "data/few_shot.py", True),
        ("from anomalib_hyperbolic import _autoload", "__init__.py", False),  # its own private submodule
        ("from . import _helpers", "data/__init__.py", False),
        ("from anomalib_hyperbolic.data import _helpers", "data/__init__.py", False),
        ("from anomalib_hyperbolic.metrics import MIoU, __version__", "main_job.py", False),
        ("from torchmetrics.utilities import _private", "metrics.py", False),  # third party: out of scope
    ],
)
def test_private_import_rule(tmp_path: Path, source: str, name: str, expected: bool) -> None:
    """The checker itself, on hand-written modules placed in a copy of the package layout."""
    path = tmp_path / "src" / PACKAGE / name
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    assert bool(private_imports(path, tmp_path / "src")) == expected


def test_docs_hold_no_python_files() -> None:
    scripts = sorted(str(path.relative_to(REPO)) for path in (REPO / "docs").rglob("*.py"))
    assert not scripts, f"docs/ holds results only; move or delete: {scripts}"


def test_every_top_level_benchmark_config_is_in_the_readme() -> None:
    readme = (BENCHMARK_CONFIGS / "README.md").read_text()
    configs = sorted(path.name for path in BENCHMARK_CONFIGS.glob("*.yaml"))
    assert configs
    assert [name for name in configs if f"`{name}`" not in readme] == []
    listed = set(re.findall(r"^\| `([\w.-]+\.yaml)` \|", readme, flags=re.MULTILINE))
    assert listed == set(configs), "the README's table lists exactly the configs at the top of configs/benchmark/"


def test_every_archived_benchmark_config_is_in_its_readme() -> None:
    readme = (BENCHMARK_CONFIGS / "archive" / "README.md").read_text()
    configs = sorted(path.name for path in (BENCHMARK_CONFIGS / "archive").glob("*.yaml"))
    assert [name for name in configs if f"`{name}`" not in readme] == []
