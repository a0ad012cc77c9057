"""The base of errors whose message tells the user what to do; commands print them as one line (mri44.console).

Anything else that escapes a command (a ValueError from numpy, a RuntimeError from torch, an error of our own
code) is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MRI44Error(Exception):
    """A failure the user can fix: a missing or foreign file, a refused setting, an unusable model."""


class SettingError(MRI44Error, ValueError):
    """A refused option, setting or input value. Also a ValueError, which is what Python API callers expect."""


def import_extra(module: str, extra: str, what: str, error: type[Exception] = MRI44Error) -> ModuleType:
    """An optional dependency, or `error` naming the extra that installs it: one wording for every extra, right
    for a wheel as for a checkout."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise error(f"{what} needs {module.split('.')[0]}: pip install 'mri44[{extra}]' ({exc})") from exc


class CheckpointError(MRI44Error):
    """A checkpoint that is missing, unreadable or not one of ours (mri44.checkpoint); the message says what to
    do."""


class InputNotFoundError(MRI44Error, FileNotFoundError):
    """An input that is not there (a folder to score or train on, a weights file, usable images in a folder): one
    type wherever it is asked for, and a FileNotFoundError for callers that catch the builtin."""
