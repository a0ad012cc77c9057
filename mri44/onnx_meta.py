"""The metadata contract between export and score: an ONNX file alone is enough to score.

Export writes these keys into the model's metadata_props; the scorer reads them through ONNX Runtime and
refuses a model that lacks them. Input and output names are fixed here too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mri44.errors import MRI44Error
from mri44.fingerprint import TrainingManifest
from mri44.ood import OodSpec
from mri44.preprocess import PreprocessSpec

if TYPE_CHECKING:  # the ONNX scorer reads metadata without importing torch
    from mri44.checkpoint import Checkpoint

INPUT_NAME = "image"  # float32 (batch, 3, size, size), normalised by the preprocessing spec
OUTPUT_NAME = "logits"  # float32 (batch, classes)
FEATURES_NAME = "features"  # float32 (batch, C, h, w): the last stage's feature map (mri44.ood, explanations)
# In an ensemble graph (mri44/ensemble.py) the second member's names start with this; its features are the
# graph's `features` and its classifier the one a class activation map uses (mri44/cam.py).
ENSEMBLE_SECOND = "member2/"
FORMAT_VERSION = "1"
TRAINING_KEY = "mri44.training_manifest"  # optional, as mri44.ood is
KEYS = (
    "mri44.format",
    "mri44.classes",
    "mri44.preprocess",
    "mri44.arch",
    "mri44.source_sha256",
    "mri44.export",
)


class ModelMetadataError(MRI44Error):
    """An ONNX model without (or with inconsistent) mri44 metadata."""


@dataclass(frozen=True)
class ModelMetadata:
    classes: list[str]
    preprocess: PreprocessSpec
    arch: str
    source_sha256: str
    export: dict
    temperature: float = 1.0  # the scorer's softmax(logits / temperature); fitted on validation at training
    ood: OodSpec | None = None  # out-of-distribution reference, k and threshold (mri44.ood); None: not fitted
    training: TrainingManifest | None = (
        None  # the images it trained on (mri44.fingerprint); None: not recorded
    )

    def to_props(self) -> dict[str, str]:
        return {
            "mri44.format": FORMAT_VERSION,
            "mri44.classes": json.dumps(self.classes),
            "mri44.preprocess": self.preprocess.to_json(),
            "mri44.arch": self.arch,
            "mri44.source_sha256": self.source_sha256,
            "mri44.export": json.dumps(self.export, sort_keys=True),
            "mri44.temperature": repr(float(self.temperature)),
            **({"mri44.ood": self.ood.to_json()} if self.ood is not None else {}),
            **({TRAINING_KEY: self.training.to_json()} if self.training is not None else {}),
        }

    @classmethod
    def from_proto(cls, proto: Any, source: str = "model") -> ModelMetadata:
        """The metadata of a loaded onnx.ModelProto."""
        return cls.from_props({p.key: p.value for p in proto.metadata_props}, source)

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        missing = [k for k in KEYS if k not in props]
        if missing:
            raise ModelMetadataError(
                f"{source} has no mri44 metadata ({', '.join(missing)} missing): export it with `onnx-export`, "
                "which records the class names and preprocessing the scorer needs"
            )
        if props["mri44.format"] != FORMAT_VERSION:
            raise ModelMetadataError(
                f"{source} has metadata format {props['mri44.format']}, this scorer reads {FORMAT_VERSION}"
            )
        try:
            classes = json.loads(props["mri44.classes"])
            spec = PreprocessSpec.from_json(props["mri44.preprocess"])
            export = json.loads(props["mri44.export"])
            # Optional: models exported before calibration existed have none and keep their raw softmax.
            temperature = float(props.get("mri44.temperature", "1.0"))
        except (ValueError, TypeError) as exc:
            raise ModelMetadataError(f"{source} has unreadable mri44 metadata: {exc}") from exc
        if (
            not isinstance(classes, list)
            or len(classes) < 2
            or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)
        ):
            raise ModelMetadataError(
                f"{source}: metadata must list at least two distinct class names (strings)"
            )
        if not 0.01 <= temperature < 100.0:
            raise ModelMetadataError(f"{source}: metadata temperature {temperature} is not a positive number")
        ood = OodSpec.from_json(props["mri44.ood"], source) if "mri44.ood" in props else None
        training = TrainingManifest.from_json(props[TRAINING_KEY], source) if TRAINING_KEY in props else None
        return cls(
            classes=classes,
            preprocess=spec,
            arch=props["mri44.arch"],
            source_sha256=props["mri44.source_sha256"],
            export=export,
            temperature=temperature,
            ood=ood,
            training=training,
        )


def is_checkpoint(path: Path) -> bool:
    """A run folder or a .pt file is a checkpoint; anything else is taken for an ONNX model."""
    return path.is_dir() or path.suffix.lower() in (".pt", ".pth")


def checkpoint_metadata(ckpt: Checkpoint, sha256: str, export: dict) -> ModelMetadata:
    """The model card of a loaded training checkpoint: what its ONNX export will carry and what the PyTorch
    scorer reads."""
    return ModelMetadata(
        classes=list(ckpt.classes),
        preprocess=ckpt.preprocess,
        arch=ckpt.arch,
        source_sha256=sha256,
        export=export,
        temperature=ckpt.temperature if ckpt.temperature is not None else 1.0,
        ood=ckpt.ood,
        training=ckpt.training,
    )


def read_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """The model card of an ONNX file, a checkpoint or a run folder, read without building the network or
    opening a runtime session on any device (a CPU-only Ray head can check a model its GPU actors will run)."""
    from mri44.checkpoint import Checkpoint
    from mri44.files import checkpoint_path, file_sha256

    path = Path(path)
    if is_checkpoint(path):
        return checkpoint_metadata(
            Checkpoint.load(path), file_sha256(checkpoint_path(path)), {"runtime": "pytorch"}
        )
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a file that is not an ONNX model
        raise ModelMetadataError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})") from exc
    return ModelMetadata.from_proto(proto, str(path))


def write_with_metadata(proto: Any, meta: ModelMetadata, out: Path) -> None:
    """proto with meta as its metadata, written atomically to a new file out (never over an existing one): the
    scripts that re-stamp a shipped model (an OOD refit, a training manifest) write through this."""
    import onnx

    from mri44.atomic import atomic_path

    onnx.helper.set_model_props(proto, meta.to_props())
    with atomic_path(out, replace=False) as tmp:
        tmp.write_bytes(proto.SerializeToString())
