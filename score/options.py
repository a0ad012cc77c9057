"""What a scoring run is asked to do and what it gives back: the options (the CLI's, one for one) and the result.

Their own module, below every other part of score/, so that the engines, the outputs and the provenance record can
all name them without importing the module that runs them (score/run.py)."""

from __future__ import annotations

import math
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

    def __post_init__(self) -> None:
        """The same one-line refusals for every caller, the CLI (whose own bounds say the same) and the Python
        API alike: a top_k of 0 was an IndexError, -1 gave 43 columns, a NaN threshold turned every flag off."""
        from mri44.errors import SettingError

        counts = {"--top-k": self.top_k, "--batch-size": self.batch_size, "--workers": self.workers}
        counts |= {"--max-pixels": self.max_pixels, "--max-frames": self.max_frames, "--actors": self.actors}
        for name, value in counts.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not (math.isfinite(self.gpus_per_actor) and self.gpus_per_actor >= 0):
            raise SettingError(f"--gpus-per-actor must be 0 or more, got {self.gpus_per_actor!r}")
        if isinstance(self.explain, bool) or not isinstance(self.explain, int) or self.explain < 0:
            raise SettingError(f"--explain must be a whole number of 0 or more, got {self.explain!r}")
        if self.ood_threshold is not None and not math.isfinite(self.ood_threshold):
            raise SettingError(f"--ood-threshold must be a finite number, got {self.ood_threshold!r}")
        choices = {"--engine": (self.engine, ENGINES), "--ood": (self.ood, ("on", "off"))}
        choices["--decode"] = (self.decode, ("cpu", "device"))
        for name, (choice, allowed) in choices.items():
            if choice not in allowed:
                raise SettingError(f"unknown {name} {choice!r}: choose {' or '.join(allowed)}")

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
