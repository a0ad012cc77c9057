"""mri44: classify brain MRI slices by tumour type and contrast.

The Python API (mri44.api, loaded on first use so that `import mri44` stays light for the stages that share this
core): `load_model(...)` -> Model with `.predict(images)`, `.classes`, `.spec`; `score(folder, out=...)`;
`train(...)`. The shared core (labels, image decoding, preprocessing, metrics) lives here once, so the three
stages (mri44.stages.train, .export, .score) can never drift apart.
"""

from typing import Any

from mri44.version import __version__

__all__ = ["Model", "__version__", "load_model", "score", "train"]


def __getattr__(name: str) -> Any:
    if name in ("Model", "load_model", "score", "train"):
        from mri44 import api

        return getattr(api, name)
    raise AttributeError(f"module 'mri44' has no attribute {name!r}")
