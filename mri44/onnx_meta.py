"""The metadata contract between export and score: an ONNX file alone is enough to score.

Export writes these keys into the model's metadata_props; the scorer reads them through ONNX Runtime and
refuses a model that lacks them. Input and output names are fixed here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mri44.errors import MRI44Error
from mri44.preprocess import PreprocessSpec

INPUT_NAME = "image"  # float32 (batch, 3, size, size), normalised by the preprocessing spec
OUTPUT_NAME = "logits"  # float32 (batch, classes)
FORMAT_VERSION = "1"
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

    def to_props(self) -> dict[str, str]:
        return {
            "mri44.format": FORMAT_VERSION,
            "mri44.classes": json.dumps(self.classes),
            "mri44.preprocess": self.preprocess.to_json(),
            "mri44.arch": self.arch,
            "mri44.source_sha256": self.source_sha256,
            "mri44.export": json.dumps(self.export, sort_keys=True),
            "mri44.temperature": repr(float(self.temperature)),
        }

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
        if not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes):
            raise ModelMetadataError(f"{source}: metadata must list at least two distinct class names")
        if not 0.0 < temperature < 100.0:
            raise ModelMetadataError(f"{source}: metadata temperature {temperature} is not a positive number")
        return cls(
            classes=classes,
            preprocess=spec,
            arch=props["mri44.arch"],
            source_sha256=props["mri44.source_sha256"],
            export=export,
            temperature=temperature,
        )
