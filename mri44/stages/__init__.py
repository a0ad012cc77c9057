"""The three stages as installed: mri44.stages.train, .export and .score.

In a checkout they are the top-level folders train/, export/ and score/ (`python -m train` runs there);
pyproject.toml maps them here at install time, so the installed distribution puts nothing but `mri44` at the top
of site-packages. Stages never import each other; mri44.cli and mri44.api assemble them.
"""
