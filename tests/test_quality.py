"""Code-health rules that CI enforces: the package type-checks, and no package function outgrows a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mri44", "train", "export", "score", "models")
MAX_FUNCTION_LINES = 80


def test_no_package_function_is_longer_than_a_screen() -> None:
    long = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions: " + "; ".join(long)


@pytest.mark.slow
def test_package_type_checks() -> None:
    """mypy over the package code, configured in pyproject.toml ([tool.mypy])."""
    api = pytest.importorskip("mypy.api", reason="mypy is in the [dev] extra: pip install -e '.[dev]'")
    stdout, stderr, status = api.run(["--config-file", str(REPO / "pyproject.toml"), "--no-error-summary"])
    assert status == 0, f"mypy found problems:\n{stdout}{stderr}"


def test_ruff_lint_and_format_hold() -> None:
    """ruff check and ruff format --check over the repository, configured in pyproject.toml ([tool.ruff])."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is in the [dev] extra: pip install -e '.[dev]'")
    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run([ruff, *args], cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"ruff {' '.join(args)}:\n{done.stdout}{done.stderr}"
