"""What a scoring run is asked to do and what it gives back: the options (the CLI's, one for one) and the result.

Their own module, below every other part of score/, so that the engines, the outputs and the provenance record can
all name them without importing the module that runs them (score/run.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mri44.limits import MAX_MEMBERS, MAX_PIXELS, Limits

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ScoreOptions:
    """Every setting of a scoring run; the CLI's options one for one (see `mri-score --help`)."""

    model: str | Path | None = (
        None  # None or 'default': the shipped default; 'int8'; an ONNX file or checkpoint
    )
    device: str = "auto"
    batch_size: int = 32
    workers: int = max(1, min(8, os.cpu_count() or 1))
    top_k: int = 3
    metrics_dir: Path | None = None
    overwrite: bool = False
    max_pixels: int = MAX_PIXELS
    max_frames: int = MAX_MEMBERS  # frames of one DICOM file / slices of one volume scored
    precision: str = "auto"  # checkpoints only
    compile: bool = False  # checkpoints only
    decode: str = "cpu"
    engine: str = "local"
    address: str | None = None  # ray only
    actors: int = 1  # ray only
    gpus_per_actor: float = 0.0  # ray only
    resume: bool = False  # ray only
    report: Path | None = None
    explain: int = 0
    progress: bool = False
    ood: str = (
        "on"  # on: every row gets ood_score and ood (when the model carries a reference set); off: skipped
    )
    ood_threshold: float | None = None  # overrides the model's own threshold

    def limits(self) -> Limits:
        """What one input may cost (mri44.limits): --max-pixels and --max-frames."""
        return Limits(max_pixels=self.max_pixels, max_members=self.max_frames)

    def local_only_given(self) -> list[str]:
        """The options that only the local engine honours and that differ from their defaults."""
        default = ScoreOptions()
        given = {
            "--decode": self.decode != default.decode,
            "--precision": self.precision != default.precision,
            "--compile": self.compile,
            "--report": self.report is not None,
            "--explain": bool(self.explain),
            "--metrics-dir": self.metrics_dir is not None,
        }
        return [name for name, on in given.items() if on]


@dataclass
class ScoreResult:
    """What a run produced. The Ray engine's predictions stay in its part files (`out`), not in memory."""

    predictions: pl.DataFrame | None
    tables: dict[str, pl.DataFrame] | None
    scored: int
    failed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    model: Path | None = None
    out: Path | None = None
    metrics_dir: Path | None = None
