"""The base of errors whose message tells the user what to do; commands print them as one line (mri44.console).

Anything else that escapes a command (a ValueError from numpy, a RuntimeError from torch, an error of our own
code) is a bug and keeps its traceback.
"""


class MRI44Error(Exception):
    """A failure the user can fix: a missing or foreign file, a refused setting, an unusable model."""


class SettingError(MRI44Error, ValueError):
    """A refused option, setting or input value. Also a ValueError, which is what Python API callers expect."""
