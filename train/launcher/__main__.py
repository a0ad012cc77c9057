"""`python -m train` outside a checkout: runs the training stage's command, mri44.stages.train."""

import runpy

runpy.run_module("mri44.stages.train", run_name="__main__", alter_sys=True)
