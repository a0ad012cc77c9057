"""Honest dependencies: every third-party import of the package is declared in pyproject.toml (in the base or in
an extra), and every declared package is imported where it is declared for. A fresh `pip install` once died on
an import (click) that only CI's `.[dev]` install happened to bring; this reads the code, not an environment."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("mri44", "train", "export", "score", "models")
# Import name -> the distributions that provide it, where the names differ.
PROVIDERS = {
    "cv2": {"opencv-python-headless"},
    "PIL": {"pillow"},
    "sklearn": {"scikit-learn"},
    "skimage": {"scikit-image"},
    "onnxruntime": {"onnxruntime-gpu", "onnxruntime"},  # one per platform, by environment marker
}
TOOLS = {"ruff", "mypy"}  # run by the test suite and CI, not imported by the package
# Loaded by another dependency, not by our code: pydicom finds GDCM and decodes compressed pixel data with it
# (tests/test_dicom.py checks that it does).
PLUGINS = {"python-gdcm"}


def third_party_imports(folders: list[Path], root: Path = REPO) -> dict[str, set[str]]:
    """Top-level module name -> the files that import it, for absolute imports that are neither the standard
    library nor our own packages."""
    own = set(PACKAGE_DIRS) | {"tests", "synthetic", "tfjs_resnet", "conftest", "benchmarks"}
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif extra := extra_import(node):
                    names = [extra[0]]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own and top != "__future__":
                        found.setdefault(top, set()).add(str(path.relative_to(root)))
    return found


def extra_import(node: ast.AST) -> tuple[str, str] | None:
    """(module, extra) of a call `import_extra("module", "extra", ...)` (mri44.errors), the optional imports."""
    if (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_extra"
        and len(node.args) >= 2
        and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args[:2])
    ):
        return node.args[0].value, node.args[1].value  # type: ignore[attr-defined]
    return None


def distribution(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")  # type: ignore[union-attr]


def declared() -> dict[str, set[str]]:
    """'base' and each extra -> the distributions it declares (self-references like mri44[test] left out)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"base": project["dependencies"], **project["optional-dependencies"]}
    return {
        group: {distribution(r) for r in requirements if distribution(r) != "mri44"}
        for group, requirements in groups.items()
    }


def providers(module: str) -> set[str]:
    return PROVIDERS.get(module, {module.lower().replace("_", "-")})


def test_every_third_party_import_of_the_package_is_declared() -> None:
    everything = set().union(*declared().values())
    imports = third_party_imports([REPO / d for d in PACKAGE_DIRS])
    undeclared = {m: sorted(files)[:2] for m, files in imports.items() if not providers(m) & everything}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_declared_package_is_imported_where_it_is_declared_for() -> None:
    groups = declared()
    package = {d for m in third_party_imports([REPO / d for d in PACKAGE_DIRS]) for d in providers(m)}
    where = {
        "test": {d for m in third_party_imports([REPO / "tests"]) for d in providers(m)},
        "bench": {d for m in third_party_imports([REPO / "benchmarks"]) for d in providers(m)},
    }
    unused = {
        group: sorted(names - where.get(group, package) - TOOLS - PLUGINS) for group, names in groups.items()
    }
    assert not any(unused.values()), f"declared but never imported: {unused}"


def test_the_checker_sees_a_missing_declaration(tmp_path: Path) -> None:
    """The rule can fail: a module importing an undeclared package is reported."""
    (tmp_path / "mod.py").write_text(
        "import os\nimport click\nfrom numpy import zeros\nfrom . import sibling\n"
    )
    found = third_party_imports([tmp_path], root=tmp_path)
    assert set(found) == {"click", "numpy"}
    assert not providers("click") & set().union(*declared().values())


def test_each_optional_import_names_the_extra_that_installs_it() -> None:
    """`import_extra("pydicom", "dicom", ...)` tells the user to pip install mri44[dicom]: that extra must
    declare the package, or the advice would not work."""
    groups = declared()
    calls = [
        (extra, str(path.relative_to(REPO)))
        for folder in PACKAGE_DIRS
        for path in (REPO / folder).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if (extra := extra_import(node))
    ]
    assert {module for (module, _), _ in calls} >= {"pydicom", "nibabel", "matplotlib", "ray"}
    wrong = [
        (call, file)
        for call, file in calls
        if not providers(call[0].split(".")[0]) & groups.get(call[1], set())
    ]
    assert not wrong, f"import_extra names an extra that does not declare the module: {wrong}"
