"""Markdown tables for the model card and docs, from scorer outputs and training run folders.

python scripts/report_tables.py scored PREDS.parquet METRICS_DIR     # test tables, ECE, top confusions
python scripts/report_tables.py runs RUN_DIR [RUN_DIR ...]           # one row per run (val of best epoch)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

from mri44.metrics import expected_calibration_error
from mri44.run_folder import RunFolder


def markdown(frame: pl.DataFrame, digits: int = 3) -> str:
    def cell(v: object) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---:" if frame[c].dtype.is_numeric() else "---" for c in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([head, rule, *rows])


def scored(preds_path: Path, metrics_dir: Path) -> None:
    preds = pl.read_parquet(preds_path).filter(status="ok").drop_nulls("true_class")
    ece = expected_calibration_error(
        preds["confidence"].to_numpy(), (preds["pred_class"] == preds["true_class"]).to_numpy()
    )
    summary = pl.read_parquet(metrics_dir / "summary.parquet").with_columns(ece=pl.lit(ece))
    print("### Summary (test split)\n\n" + markdown(summary) + "\n")
    print("### Per contrast\n\n" + markdown(pl.read_parquet(metrics_dir / "per_contrast.parquet")) + "\n")
    print(
        "### Per tumour type (15-class task derived from the 44-class predictions)\n\n"
        + markdown(pl.read_parquet(metrics_dir / "per_tumor_type.parquet"))
        + "\n"
    )
    print(
        "### Per class (sorted by F1)\n\n"
        + markdown(pl.read_parquet(metrics_dir / "per_class.parquet"))
        + "\n"
    )
    confused = (
        pl.read_parquet(metrics_dir / "confusion.parquet")
        .filter(pl.col("true_class") != pl.col("pred_class"))
        .sort("count", descending=True)
        .head(10)
    )
    print("### Most frequent confusions\n\n" + markdown(confused) + "\n")


def runs(folders: list[Path]) -> None:
    rows = []
    for folder in folders:
        run = RunFolder(folder)
        config = json.loads(run.config.read_text())
        history = pl.read_csv(run.history)
        if run.result.exists():
            result = json.loads(run.result.read_text())
            val, test = result.get("val", {}), result.get("test", {})
        else:  # stopped before its test evaluation: best validation epoch from the history, no test figures
            best = history.sort("val_macro_f1", descending=True).row(0, named=True)
            result = {"best_epoch": best["epoch"]}
            val, test = {k.removeprefix("val_"): v for k, v in best.items() if k.startswith("val_")}, {}
        rows.append(
            {
                "run": folder.name + ("" if run.result.exists() else f" (stopped at {history.height})"),
                "arch": config.get("arch", "resnet18"),
                "recipe": config["recipe"]["name"],
                "size": config["image_size"],
                "epochs": config["epochs"],
                "best epoch": result["best_epoch"],
                "s/epoch": float(history["epoch_s"].median()),
                # an all-data run has no validation part: NaN, as a run without a test part has for test
                "val acc": val.get("accuracy", float("nan")),
                "val macro P": val.get("macro_precision", float("nan")),
                "val macro R": val.get("macro_recall", float("nan")),
                "val macro F1": val.get("macro_f1", float("nan")),
                "test acc": test.get("accuracy", float("nan")),
                "test macro F1": test.get("macro_f1", float("nan")),
            }
        )
    print(markdown(pl.DataFrame(rows)))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "scored":
        scored(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "runs":
        runs([Path(p) for p in sys.argv[2:]])
    else:
        sys.exit(__doc__)
