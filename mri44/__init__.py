"""Shared core of mri44: what train, export and score must agree on.

Labels, image decoding, preprocessing and metrics live here once, so the three stages can never drift apart.
"""

__version__ = "0.1.0"
