"""The three stages: mri44.stages.train, .export and .score, one import name each.

They are the checkout's top-level folders train/, export/ and score/ (the user's layout). An install maps them here
(pyproject.toml's package-dir); in a checkout, where Python may find this package in the working folder instead of
the installed one, the folders are found here too: this package's path also holds the checkout's root, so
mri44.stages.train is train/ whichever way Python found mri44 (python -m train in a checkout, with or without an
install). Stages never import each other; mri44.cli and mri44.api assemble them (docs/architecture.md).
"""

from pathlib import Path

_checkout = Path(__file__).resolve().parents[2]
if (_checkout / "pyproject.toml").is_file() and (_checkout / "train" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (the package's own __path__)
