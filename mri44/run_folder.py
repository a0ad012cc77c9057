"""Every file of a training run's folder, named once (issue 31).

`python -m train` writes these files; export, the cross-validation summary, resumes and scripts read them. A
run folder holds one training run; a cross-validation folder holds K of them (fold-1 .. fold-K) and the files that
pool them. Code asks RunFolder(path).best instead of spelling "best.pt".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class RunFolder:
    root: Path

    # One training run
    @property
    def best(self) -> Path:  # the model: best validation macro-F1, or the last epoch without validation
        return self.root / "best.pt"

    @property
    def last(self) -> Path:  # training state after the latest epoch, for --resume
        return self.root / "last.pt"

    @property
    def config(self) -> Path:  # the settings, for --resume and --config
        return self.root / "config.json"

    @property
    def split(self) -> Path:  # path, label, group, split of every image
        return self.root / "split.parquet"

    @property
    def split_csv(self) -> Path:  # the same as CSV, for people and for export --int8's calibration images
        return self.root / "split.csv"

    @property
    def result(self) -> Path:  # written last: the run finished
        return self.root / "result.json"

    @property
    def history(self) -> Path:  # one row per epoch
        return self.root / "metrics.csv"

    @property
    def unreadable(self) -> Path:
        return self.root / "unreadable.csv"

    @property
    def duplicate_conflicts(self) -> Path:
        return self.root / "duplicate_conflicts.csv"

    def predictions(self, part: str) -> Path:  # the scorer's rows for the val or test part
        return self.root / f"{part}_predictions.parquet"

    def logits(self, part: str) -> Path:  # raw logits of the part, pooled by cross-validation
        return self.root / f"{part}_logits.parquet"

    def metric_tables(self, part: str) -> Path:
        return self.root / f"{part}_metrics"

    @property
    def ood_evidence(self) -> Path:  # what a CV's summary needs of the model, where it was kept without it
        return self.root / "ood_evidence.json"

    # A cross-validation folder
    @property
    def folds(self) -> Path:  # path, label, group, fold (1..K): the assignment every fold reads
        return self.root / "folds.parquet"

    @property
    def out_of_fold(self) -> Path:  # every image's prediction by the fold model that never saw it
        return self.root / "oof.parquet"

    @property
    def cv_result(self) -> Path:
        return self.root / "cv_result.json"

    @property
    def cv_metrics(self) -> Path:
        return self.root / "cv_metrics"

    @property
    def classes(self) -> Path:  # the logits' class names, where a CV was kept without its models (keep_cv.py)
        return self.root / "classes.json"

    def fold(self, *left_out: int) -> RunFolder:
        """The run that left out these folds (fold-3; with --leave-out 2, fold-1-3: trained on the others)."""
        return RunFolder(self.root / _fold_name(left_out))

    def fold_split(self, *left_out: int) -> Path:  # that run's split file (test = the folds left out)
        return self.root / f"{_fold_name(left_out)}-split.parquet"


def _fold_name(left_out: tuple[int, ...]) -> str:
    if not left_out:
        raise ValueError("a fold run leaves out at least one fold")
    return "fold-" + "-".join(str(k) for k in sorted(left_out))


def read_split(path: Path) -> pl.DataFrame:
    """A split table (path, label, split, group, ...) from a run's split.parquet or its split.csv copy."""
    import polars as pl  # here: reading a run's file names must not pay for Polars

    return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
