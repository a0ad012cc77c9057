"""The Python API: what the three commands do, callable from a notebook or another pipeline.

    import mri44
    model = mri44.load_model()                      # the shipped default; "int8", an .onnx file, a run folder
    rows = model.predict("examples/")               # a folder, a list of paths, or numpy arrays
    result = mri44.score("examples/", out=None)     # rows and metric tables, as mri-score computes them
    mri44.train(data="DATA", out="runs/r18", epochs=30)   # python -m train's settings

The commands are thin layers over the same functions (score.run.score, train.loop.run_training), so the API
gives the same rows, tables and runs as the command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from mri44.errors import SettingError
from mri44.imageio import to_uint8
from mri44.limits import MAX_PIXELS, Limits
from mri44.preprocess import PreprocessSpec, normalize, to_model_pixels

if TYPE_CHECKING:
    from mri44.onnx_meta import ModelMetadata
    from mri44.readers import Item
    from mri44.stages.score.backends import Backend
    from mri44.stages.score.options import ScoreResult


@dataclass(frozen=True)
class Model:
    """A loaded model: ONNX Runtime for .onnx files, PyTorch for checkpoints; the same rows either way."""

    path: Path
    backend: Backend

    @property
    def meta(self) -> ModelMetadata:
        return self.backend.meta

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def spec(self) -> PreprocessSpec:
        """The preprocessing the model was trained with (size, resize policy, channels, normalisation)."""
        return self.meta.preprocess

    def predict(
        self,
        images: str | os.PathLike[str] | np.ndarray | list[Any],
        top_k: int = 3,
        batch_size: int = 32,
        workers: int = 2,
        max_pixels: int = MAX_PIXELS,
        ood: bool = True,
        ood_threshold: float | None = None,
    ) -> pl.DataFrame:
        """One row per image, with mri-score's columns. images: a folder (searched recursively), one path, a
        list of paths, one decoded image (H x W grey or H x W x 3 RGB; any dtype, deeper ones rescaled by their
        range), or a list of images. Paths keep their folder labels (true_class) as mri-score finds them; a file
        that cannot be read is an error row, as in the CLI. ood / ood_threshold: as mri-score's --ood and
        --ood-threshold."""
        from mri44.stages.score.options import ScoreOptions
        from mri44.stages.score.pipeline import score_items

        # mri-score's checks, the same one-line errors
        ScoreOptions(
            top_k=top_k,
            batch_size=batch_size,
            workers=workers,
            max_pixels=max_pixels,
            ood_threshold=ood_threshold,
        )
        if not isinstance(images, str | os.PathLike | np.ndarray | list | tuple):
            raise SettingError(
                f"predict() takes a folder, a path, a list of paths, an image array or a list of arrays, not a "
                f"{type(images).__name__} (a PIL image: numpy.asarray(image))"
            )
        if isinstance(images, tuple):
            images = list(images)
        if isinstance(images, np.ndarray) or (
            isinstance(images, list) and images and all(isinstance(i, np.ndarray) for i in images)
        ):
            arrays = [images] if isinstance(images, np.ndarray) else list(images)
            return self._predict_arrays(arrays, top_k, batch_size, ood, ood_threshold)
        limits = Limits(max_pixels=max_pixels)
        root, items, shown = _items_of(images, limits)
        run = score_items(
            self.backend,
            root,
            items,
            batch_size,
            workers,
            top_k,
            None,
            False,
            limits,
            "cpu",
            ood,
            ood_threshold,
        )
        return run.predictions if shown is None else run.predictions.with_columns(path=pl.Series(shown))

    def _predict_arrays(
        self, arrays: list[np.ndarray], top_k: int, batch_size: int, ood: bool, ood_threshold: float | None
    ) -> pl.DataFrame:
        from mri44.fingerprint import fingerprint_tags, training_flags
        from mri44.predictions import prediction_frame

        fingerprints: list[dict | None] = []
        from mri44.stages.score.pipeline import ood_rows, score_batch

        n = len(arrays)
        probs = np.zeros((n, len(self.classes)), np.float32)
        ok = np.zeros(n, bool)
        errors: list[str | None] = [None] * n
        scores = ood_rows(self.backend, n, ood, ood_threshold)
        for start in range(0, n, batch_size):
            chunk = arrays[start : start + batch_size]
            images = [_as_image(a, start + i) for i, a in enumerate(chunk)]
            fingerprints += [fingerprint_tags(image, None) for image in images]
            pixels = np.stack([to_model_pixels(image, self.spec) for image in images])
            rows = np.arange(start, start + len(chunk))
            score_batch(self.backend, normalize(pixels, self.spec), rows, probs, ok, errors, scores)
        paths = [f"array[{i}]" for i in range(n)]
        training = training_flags(
            self.meta.training, [f if good else None for f, good in zip(fingerprints, ok, strict=True)]
        )
        return prediction_frame(paths, probs, ok, errors, self.classes, top_k, scores, training=training)


def _as_image(array: np.ndarray, i: int) -> np.ndarray:
    """H x W or H x W x 1 grey, H x W x 3 RGB, H x W x 4 RGBA (alpha dropped) -> uint8 grey or RGB."""
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[:, :, 0] if array.shape[2] == 1 else array[:, :, :3]
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise SettingError(f"image {i}: expected H x W or H x W x 3 pixels, got shape {array.shape}")
    return to_uint8(np.ascontiguousarray(array))


def _items_of(images: Any, limits: Limits) -> tuple[Path, list[Item], list[str] | None]:
    """(root, the images to score, the path column to show or None for paths relative to root)."""
    from mri44.discover import find_images
    from mri44.readers import list_items

    if isinstance(images, str | os.PathLike) and Path(images).is_dir():
        root = Path(images)
        return root, list_items(find_images(root), limits), None
    given = [images] if isinstance(images, str | os.PathLike) else list(images)
    if not given or not all(isinstance(p, str | os.PathLike) for p in given):
        raise SettingError(
            "predict() takes a folder, a path, a list of paths, an image array or a list of arrays"
        )
    # Relative to the file system's root, so the nearest class-named folder still labels each file. A
    # multi-frame DICOM file or a NIfTI volume is a row per frame or slice (its `frame` or `slice` column).
    anchor = Path(Path(given[0]).absolute().anchor)
    items: list[Item] = []
    shown: list[str] = []
    for name in given:
        absolute = Path(name).absolute()
        found = list_items([anchor / absolute.relative_to(absolute.anchor)], limits)
        items += found
        shown += [str(name)] * len(found)
    return anchor, items, shown


def load_model(
    model: str | os.PathLike[str] = "default", device: str = "auto", precision: str = "auto"
) -> Model:
    """A shipped model by name (mri44.models.SHIPPED: 'default', 'int8', ...), an ONNX file from onnx-export, or
    a training checkpoint or run folder. device: auto, cpu, cuda or tensorrt, as for mri-score."""
    from mri44.stages.score.backends import open_backend
    from mri44.stages.score.run import resolve_model

    path = resolve_model(model)
    return Model(path=path, backend=open_backend(path, device, precision))


def score(
    folder: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, **options: Any
) -> ScoreResult:
    """mri-score as a function: predictions (result.predictions) and metric tables (result.tables) of every
    image under folder (or of one image file). With out, also written there as the CLI writes them; options are
    mri-score's, with underscores (model="int8", batch_size=64, overwrite=True, engine="ray", ...)."""
    from mri44.stages.score.options import ScoreOptions
    from mri44.stages.score.run import score as run_score

    try:
        chosen = replace(ScoreOptions(), **options)
    except TypeError as exc:
        raise SettingError(f"unknown scoring option: {exc}") from exc
    return run_score(folder, Path(out) if out is not None else None, chosen)


def train(config: Any = None, **settings: Any) -> dict[str, Any]:
    """python -m train as a function; returns the run's result (best epoch, temperature, val/test summaries).

    config: None, a TrainConfig, or a run's config.json (a path) to start from; settings override it, named as
    python -m train's options with underscores (data=..., out=..., recipe="default", epochs=30, ...)."""
    from mri44.stages.train.config import TrainConfig, config_from_settings
    from mri44.stages.train.loop import run_training

    if isinstance(config, str | os.PathLike):
        cfg = config_from_settings(TrainConfig.read_json(Path(config)), **settings)
    else:
        cfg = config_from_settings(config, **settings)
    return run_training(cfg)
