"""The package version, in a module of its own so that every layer can read it without importing the API facade
(mri44/__init__.py); pyproject.toml reads it from here too."""

__version__ = "0.1.0"
