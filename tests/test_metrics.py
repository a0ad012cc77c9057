import numpy as np
import polars as pl
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from mri44.metrics import expected_calibration_error, metric_tables, write_tables

CLASSES = ["A T1", "A T2", "B T1", "B T1C+", "_NORMAL T2"]


@pytest.fixture
def pairs() -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    true = rng.choice(CLASSES, 300).tolist()
    pred = [t if rng.random() < 0.6 else rng.choice(CLASSES[:4]) for t in true]
    return true, pred


def test_summary_and_per_class_equal_sklearn(pairs: tuple[list[str], list[str]]) -> None:
    true, pred = pairs
    tables = metric_tables(true, pred)
    summary = tables["summary"].row(0, named=True)
    assert summary["accuracy"] == pytest.approx(accuracy_score(true, pred))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(true, pred, average=average, zero_division=0)
        assert summary[f"{average}_precision"] == pytest.approx(p)
        assert summary[f"{average}_recall"] == pytest.approx(r)
        assert summary[f"{average}_f1"] == pytest.approx(f)
    labels = sorted(set(true) | set(pred))
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    per_class = tables["per_class"].sort("class")
    assert per_class["class"].to_list() == labels
    np.testing.assert_allclose(per_class["precision"], p)
    np.testing.assert_allclose(per_class["recall"], r)
    np.testing.assert_allclose(per_class["f1"], f)
    assert per_class["n"].to_list() == s.tolist()
    assert tables["per_class"]["f1"].is_sorted()


def test_tumor_type_and_contrast_tables(pairs: tuple[list[str], list[str]]) -> None:
    true, pred = pairs
    tables = metric_tables(true, pred)
    tumor = lambda name: "Normal" if name.startswith("_NORMAL") else name.split()[0]  # noqa: E731
    t_true, t_pred = [tumor(x) for x in true], [tumor(x) for x in pred]
    p, r, f, s = precision_recall_fscore_support(t_true, t_pred, labels=["A", "B", "Normal"], zero_division=0)
    per_tumor = tables["per_tumor_type"].sort("tumor_type")
    np.testing.assert_allclose(per_tumor["f1"], f)
    per_contrast = tables["per_contrast"]
    for row in per_contrast.iter_rows(named=True):
        idx = [i for i, t in enumerate(true) if t.split()[-1] == row["contrast"]]
        assert row["n"] == len(idx)
        assert row["accuracy"] == pytest.approx(
            accuracy_score([true[i] for i in idx], [pred[i] for i in idx])
        )
    assert tables["confusion"]["count"].sum() == len(true)


def test_ece_of_perfectly_calibrated_bins_is_zero() -> None:
    conf = np.array([0.8] * 10 + [0.5] * 10)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 5)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(4), np.zeros(4)) == pytest.approx(1.0)


def test_tables_are_written_as_csv_parquet_and_png(tmp_path, pairs) -> None:
    true, pred = pairs
    written = write_tables(metric_tables(true, pred), tmp_path, CLASSES)
    names = {p.name for p in written}
    assert {"summary.csv", "per_class.parquet", "confusion.png"} <= names
    assert pl.read_parquet(tmp_path / "per_contrast.parquet").height == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_every_count_in_every_table_is_int64(pairs: tuple[list[str], list[str]]) -> None:
    """One type per idea (issue 33): files, errors and skipped were Int32 and confusion counts UInt32."""
    from mri44.metrics import tables_with_counts

    true, pred = pairs
    flags = [i % 3 == 0 for i in range(len(true))]
    rows = pl.DataFrame({"true_class": true, "pred_class": pred, "ood": flags, "near_training": flags})
    tables = tables_with_counts(rows, 10, 1, 2, flagged=sum(flags))
    assert tables is not None
    counts = {
        (name, column): str(dtype)
        for name, table in tables.items()
        for column, dtype in table.schema.items()
        if dtype.is_integer()
    }
    assert counts and set(counts.values()) == {"Int64"}, counts
