"""The base of errors whose message tells the user what to do; commands print them as one line (mri44.console)."""


class MRI44Error(Exception):
    """A failure the user can fix: a missing or foreign file, a refused setting, an unusable model."""
