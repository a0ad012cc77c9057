"""`python -m train` in a checkout (and `python -m mri44.stages.train` anywhere): the training command.

An absolute import, so that the stage's modules load under their one name, mri44.stages.train, even when Python
found this folder as the top-level package `train` (the checkout's working folder is on sys.path)."""

from mri44.stages.train.cli import main

main()
