"""The installed top-level package `train`: nothing but `python -m train`, from any folder, after any install.

pyproject.toml maps the top-level name `train` to this folder alone; the training code itself is installed once,
as mri44.stages.train (the folder above), so no user's own `train` module is shadowed by more than this."""
