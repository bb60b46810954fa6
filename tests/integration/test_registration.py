"""End-to-end registration: ``pip install`` of the wheel makes anomalib see this package's models.

Runs in subprocesses with a fresh virtual environment holding only the built wheel (its
dependencies come from the test interpreter's site-packages through a ``.pth`` line, so no
download is needed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import anomalib_hyperbolic.models as plugin_models

REPO = Path(__file__).resolve().parents[2]


def _run(python: Path | str, code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(python), "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=Path(python).parent if isinstance(python, Path) else None,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv where the project is installed from its wheel, as a user would."""
    root = tmp_path_factory.mktemp("registration")
    wheels = root / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(_run(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    # dependencies (torch, anomalib, ...) from the test environment, without the editable install
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("anomalib_hyperbolic-*.whl"))
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "anomalib_hyperbolic_autoload.pth").is_file()
    return python


def test_interpreter_start_imports_neither_torch_nor_anomalib(fresh_venv: Path) -> None:
    out = _run(
        fresh_venv,
        """
        import sys
        print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'anomalib', 'lightning', 'timm'}))
        print('anomalib_hyperbolic' in sys.modules)
        """,
    )
    loaded, hook = out.strip().splitlines()
    assert loaded == "[]"
    assert hook == "True"


def test_models_register_when_anomalib_models_is_imported(fresh_venv: Path) -> None:
    out = _run(
        fresh_venv,
        """
        import sys
        import anomalib.models
        from anomalib.models import _get_model_class_by_name, list_models
        import anomalib_hyperbolic.models as plugin
        assert 'site-packages' in plugin.__file__, plugin.__file__
        for name in plugin.__all__:
            cls = _get_model_class_by_name(name.lower())
            assert cls is getattr(plugin, name), (name, cls)
            assert name in list_models(case='pascal')
        import anomalib.data
        print('anomalib_hyperbolic.data' in sys.modules, len(plugin.__all__))
        """,
    )
    registered, count = out.split()
    assert registered == "True"
    assert int(count) == len(plugin_models.__all__)


def test_switch_off(fresh_venv: Path) -> None:
    out = _run(
        fresh_venv,
        """
        import sys
        import anomalib.models
        print('anomalib_hyperbolic' in sys.modules, 'anomalib_hyperbolic.models' in sys.modules)
        """,
        env={"ANOMALIB_HYPERBOLIC_AUTOLOAD": "0"},
    )
    assert out.split() == ["False", "False"]
    explicit = _run(
        fresh_venv,
        """
        import sys
        import anomalib_hyperbolic
        import anomalib.models
        print('anomalib_hyperbolic.models' in sys.modules)
        """,
        env={"ANOMALIB_HYPERBOLIC_AUTOLOAD": "0"},
    )
    assert explicit.strip() == "True"


@pytest.mark.parametrize("name", sorted(plugin_models.__all__))
def test_anomalib_cli_resolves_short_and_full_names(fresh_venv: Path, name: str, tmp_path: Path) -> None:
    for model_arg in (name, f"anomalib_hyperbolic.models.{name}"):
        result = subprocess.run(
            [
                str(fresh_venv),
                "-c",
                "import sys; from anomalib.cli.cli import main; sys.exit(main())",
                "fit",
                "--model",
                model_arg,
                "--data",
                "MVTecAD",
                "--data.root",
                str(tmp_path),
                "--print_config",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"anomalib_hyperbolic.models.{name}" in result.stdout or f".{name}" in result.stdout
