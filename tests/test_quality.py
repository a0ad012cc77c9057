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


# The installed name of each checkout folder (pyproject.toml's package-dir); train/launcher is the top-level
# `train` package, two lines that run mri44.stages.train.
INSTALLED = {
    "mri44": "mri44",
    "train": "mri44.stages.train",
    "export": "mri44.stages.export",
    "score": "mri44.stages.score",
    "models": "mri44.models",
}
TOP_LAYER = {
    "mri44",
    "mri44.api",
    "mri44.cli",
}  # the facade, the Python API and `mri44 ...`: they assemble stages


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in INSTALLED.items():
        for path in (REPO / folder).glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its body (imports inside functions and under
    TYPE_CHECKING count: they are dependencies all the same)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                # `from pkg import module` imports the module; `from module import name`, the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # a name imported from a module: the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["mri44", "stages"] and len(parts) > 2 else None


def test_layers_hold_and_no_module_imports_in_a_circle() -> None:
    """Core (mri44.*) -> stages (mri44.stages.train, .export, .score) -> top (mri44, mri44.api, mri44.cli): the
    core imports no stage, a stage imports no other stage and not the top, and no module reaches itself through
    its imports (docs/architecture.md)."""
    graph = import_graph()
    wrong = []
    for module, deps in sorted(graph.items()):
        if module in TOP_LAYER:
            continue
        for dep in sorted(deps):
            stage, target = _stage(module), _stage(dep)
            if dep in TOP_LAYER or (target is not None and target != stage):
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "layer rule broken: " + "; ".join(wrong)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph[module]:
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_imports_a_checkout_folder_by_its_bare_name() -> None:
    """`import train.loop` from a checkout would load a second copy of mri44.stages.train.loop."""
    bare = []
    for folder in INSTALLED:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                bare += [
                    f"{path.relative_to(REPO)}: {n}"
                    for n in names
                    if n.split(".")[0] in INSTALLED.keys() - {"mri44"}
                ]
    assert not bare, "import these through mri44.stages.* or mri44.models: " + "; ".join(bare)


@pytest.mark.slow
def test_python_m_train_loads_each_module_once_in_a_checkout_and_runs_anywhere(tmp_path: Path) -> None:
    """README's `python -m train`: in the checkout, the stage's modules load only as mri44.stages.train.*; from
    any other folder, the installed top-level `train` runs the same command."""
    import subprocess
    import sys

    probe = (
        "import runpy, sys\nsys.argv = ['train', '--help']\ntry:\n    runpy.run_module('train', run_name='__main__')\n"
        "except SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'train'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.stdout.strip().splitlines()[-1] == "['train']", done.stdout + done.stderr
    elsewhere = subprocess.run(
        [sys.executable, "-m", "train", "--help"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert elsewhere.returncode == 0 and "--folds" in elsewhere.stdout, elsewhere.stdout + elsewhere.stderr


@pytest.mark.slow
def test_the_commands_help_loads_no_deep_learning_library() -> None:
    """`mri44 --help` and every subcommand's help answer at once (issue 33: 5.4 s when the weights command
    imported torch at module level): torch, torchvision and ONNX load only inside the commands that need them."""
    import subprocess
    import sys

    probe = (
        "import sys\nimport mri44.cli\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'onnx', 'onnxruntime'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_readme_lists_the_prediction_columns_in_the_schemas_order() -> None:
    """README's column list is PREDICTION_SCHEMA's (the top-k pairs shown as top1_class, top1_prob)."""
    import re

    from mri44.predictions import PREDICTION_SCHEMA, TOP_K

    readme = (REPO / "README.md").read_text()
    start = readme.index("- One row per image found")
    bullet = readme[start : readme.index("\n- ", start + 1)]
    expected = [
        c for name in PREDICTION_SCHEMA for c in (["top1_class", "top1_prob"] if name == TOP_K else [name])
    ]
    named = [n for n in re.findall(r"`([a-z0-9_]+)`", bullet) if n in expected]
    assert list(dict.fromkeys(named)) == expected
