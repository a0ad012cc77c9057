import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from mri44.calibration import softmax
from mri44.checkpoint import Checkpoint
from mri44.models import SHIPPED
from mri44.preprocess import PreprocessSpec, normalize, to_model_pixels
from mri44.readers import list_items, read_image
from mri44.stages.score.backends import Backend, onnx_backend
from mri44.stages.score.cli import app
from mri44.stages.score.pipeline import score_items
from mri44.stages.train.dataset import scan_dataset
from mri44.torch_input import to_input

runner = CliRunner()


def _score(args: list[str]):
    return runner.invoke(app, [str(a) for a in args])


def test_labelled_folder_rows_and_metrics_equal_sklearn(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    out = tmp_path / "preds.parquet"
    result = _score(
        [synthetic_data, "--out", out, "--model", exported_model, "--device", "cpu", "--top-k", "2"]
    )
    assert result.exit_code == 0, result.output
    preds = pl.read_parquet(out)
    n_files = sum(1 for p in synthetic_data.rglob("*") if p.is_file())
    assert preds.height == n_files
    assert preds["path"].to_list() == sorted(preds["path"].to_list())
    assert set(preds["status"]) == {"ok"}
    for col in (
        "pred_class",
        "pred_tumor_type",
        "pred_contrast",
        "confidence",
        "top1_class",
        "top2_prob",
        "pred_tumor_type_prob",
        "pred_contrast_prob",
        "true_class",
    ):
        assert col in preds.columns
    assert (preds["pred_tumor_type_prob"] >= preds["confidence"] - 1e-9).all()
    summary = pl.read_csv(tmp_path / "preds_metrics" / "summary.csv").row(0, named=True)
    assert summary["accuracy"] == pytest.approx(accuracy_score(preds["true_class"], preds["pred_class"]))
    assert summary["macro_f1"] == pytest.approx(
        f1_score(preds["true_class"], preds["pred_class"], average="macro")
    )
    assert (tmp_path / "preds_metrics" / "confusion.png").is_file()
    again = _score([synthetic_data, "--out", out, "--model", exported_model, "--device", "cpu"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    other = tmp_path / "other.parquet"
    clash = _score(
        [
            synthetic_data,
            "--out",
            other,
            "--model",
            exported_model,
            "--metrics-dir",
            tmp_path / "preds_metrics",
        ]
    )
    assert clash.exit_code == 2 and "not empty" in clash.output and not other.exists()


def test_bad_inputs_become_error_rows(tmp_path: Path, synthetic_data: Path, exported_model: Path) -> None:
    folder = tmp_path / "mixed"
    good = folder / "Circloma T1"
    shutil.copytree(synthetic_data / "Circloma T1", good)
    first = sorted(good.glob("*.jpg"))[0]
    data = first.read_bytes()
    (folder / "corrupt.jpg").write_bytes(data[:20] + b"\x00" * 30 + data[50:])
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    cv2.imwrite(str(folder / "rgba.png"), np.full((30, 30, 4), 128, np.uint8))
    cv2.imwrite(str(folder / "deep16.png"), (np.arange(900, dtype=np.uint16).reshape(30, 30) * 60))
    cv2.imwrite(str(folder / "tiny.png"), np.full((1, 1), 90, np.uint8))
    cv2.imwrite(str(folder / "huge.jpg"), np.zeros((4000, 4000), np.uint8))
    weird = folder / "Squaroma T1C+ (ü) 脑"
    weird.mkdir()
    shutil.copy(first, weird / "slice + (1) é.jpg")
    (folder / ".hidden.jpg").write_bytes(data)
    (folder / "readme.txt").write_text("ignored: not an image name")
    out = tmp_path / "p.csv"
    result = _score([folder, "--out", out, "--model", exported_model, "--device", "cpu", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    preds = pl.read_csv(out)
    status = dict(zip(preds["path"], preds["status"], strict=True))
    for bad in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.jpg"):
        assert status[bad] == "error", bad
    for fine in ("rgba.png", "deep16.png", "tiny.png", "huge.jpg", "Squaroma T1C+ (ü) 脑/slice + (1) é.jpg"):
        assert status[fine] == "ok", fine
    assert ".hidden.jpg" not in status and "readme.txt" not in status
    assert preds.filter(pl.col("status") == "error")["error"].null_count() == 0
    assert preds.filter(pl.col("path") == "Squaroma T1C+ (ü) 脑/slice + (1) é.jpg")["true_class"][0] is None
    assert "4 error(s)" in result.output
    summary = pl.read_csv(next(tmp_path.glob("*_metrics")) / "summary.csv").row(0, named=True)
    assert summary["errors"] == 4 and summary["files"] == preds.height
    assert (
        summary["skipped"] == 1
        and "skipped 1 file(s) or folder(s): 1 not an image type (.txt)" in result.output
    )


def test_scores_equal_pytorch_checkpoint(
    tmp_path: Path, synthetic_data: Path, trained_run: Path, exported_model: Path
) -> None:
    out = tmp_path / "p.parquet"
    assert _score([synthetic_data, "--out", out, "--model", exported_model, "--device", "cpu"]).exit_code == 0
    preds = pl.read_parquet(out)
    ckpt = Checkpoint.load(trained_run)
    model = ckpt.model()
    spec = ckpt.preprocess
    batch = np.stack([to_model_pixels(read_image(synthetic_data / p), spec) for p in preds["path"]])
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(batch, spec))).numpy()
    expected = [ckpt.classes[i] for i in logits.argmax(1)]
    assert preds["pred_class"].to_list() == expected
    # Confidences are the checkpoint's temperature-scaled softmax, which differs from the raw one.
    assert ckpt.temperature is not None and ckpt.temperature != pytest.approx(1.0, abs=0.01)
    scaled = softmax(logits, ckpt.temperature).max(1)
    np.testing.assert_allclose(preds["confidence"].to_numpy(), scaled, atol=1e-4)


def test_non_finite_model_output_is_an_error_row(synthetic_data: Path, exported_model: Path) -> None:
    """A model that emits NaN for an image must not yield an 'ok' row predicting class 0."""
    onnx = onnx_backend(exported_model, "cpu")

    def nan_on_first(batch: np.ndarray) -> np.ndarray:
        logits = onnx.run(batch)
        logits[0] = np.nan
        return logits

    paths = sorted(p for p in synthetic_data.rglob("*") if p.is_file())[:5]
    run = score_items(
        Backend(onnx.meta, nan_on_first, "test"),
        synthetic_data,
        list_items(paths),
        batch_size=8,
        progress=False,
    )
    assert run.predictions["status"].to_list() == ["error", "ok", "ok", "ok", "ok"]
    assert "non-finite" in run.predictions["error"][0]
    assert run.predictions["pred_class"][0] is None


def test_scorer_input_equals_training_input(
    synthetic_data: Path, exported_model: Path, trained_run: Path
) -> None:
    """The same image through the training cache + torch normalisation and through the scorer's numpy path."""
    spec = Checkpoint.load(trained_run).preprocess
    scanned = scan_dataset(synthetic_data, spec, workers=2)
    scale, bias = (torch.as_tensor(a) for a in spec.scale_bias())
    for i in (0, 7, 30):
        path = synthetic_data / scanned.manifest["path"][i]
        train_x = to_input(
            torch.from_numpy(scanned.pixels[i : i + 1].transpose(0, 3, 1, 2)), scale, bias
        ).numpy()
        score_x = normalize(to_model_pixels(read_image(path), spec), spec)
        np.testing.assert_allclose(train_x, score_x, rtol=0, atol=1e-6)


def test_one_file_scores_as_its_row_in_the_folder_and_keeps_its_label(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    image = sorted(synthetic_data.rglob("*.png"))[5]
    args = ["--model", exported_model, "--ood", "off"]
    assert _score([synthetic_data, "--out", tmp_path / "all.parquet", *args]).exit_code == 0
    done = _score([image, "--out", tmp_path / "one.parquet", *args])
    assert done.exit_code == 0, done.output
    one = pl.read_parquet(tmp_path / "one.parquet")
    rel = image.relative_to(synthetic_data).as_posix()
    row = pl.read_parquet(tmp_path / "all.parquet").filter(path=rel)
    assert one["path"].to_list() == [f"{image.parent.name}/{image.name}"] == [rel]
    assert one["true_class"][0] == image.parent.name and one["pred_class"][0] == row["pred_class"][0]
    assert one["confidence"][0] == pytest.approx(row["confidence"][0], abs=1e-6)
    assert (tmp_path / "one_metrics" / "summary.csv").is_file()  # labelled: its tables too


def test_clear_errors(tmp_path: Path, exported_model: Path, synthetic_data: Path) -> None:
    missing = _score([tmp_path / "nowhere", "--out", tmp_path / "p.parquet", "--model", exported_model])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "empty").mkdir()
    empty = _score([tmp_path / "empty", "--out", tmp_path / "p.parquet", "--model", exported_model])
    assert empty.exit_code == 2 and "no image files" in empty.output
    import onnx

    proto = onnx.load(exported_model)
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    no_meta = _score([synthetic_data, "--out", tmp_path / "p.parquet", "--model", bare])
    assert no_meta.exit_code == 2 and "no mri44 metadata" in no_meta.output
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_text("nope")
    fake = _score([synthetic_data, "--out", tmp_path / "p.parquet", "--model", not_onnx])
    assert fake.exit_code == 2 and "cannot load" in fake.output
    all_bad = tmp_path / "allbad"
    all_bad.mkdir()
    (all_bad / "x.jpg").write_bytes(b"junk")
    none_ok = _score([all_bad, "--out", tmp_path / "q.parquet", "--model", exported_model])
    assert none_ok.exit_code == 1
    assert pl.read_parquet(tmp_path / "q.parquet")["status"].to_list() == ["error"]
    # Output places that cannot work are found before scoring, not after it.
    (tmp_path / "afile").write_text("x")
    for args in (
        ["--out", tmp_path / "afile" / "p.csv"],
        ["--out", tmp_path / "r.csv", "--metrics-dir", tmp_path / "afile"],
    ):
        late = _score([synthetic_data, *args, "--model", exported_model])
        assert (
            late.exit_code == 2 and "is a file, not a folder" in late.output and "scored" not in late.output
        )


def test_file_names_that_are_not_utf8_keep_their_row(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    src = next((synthetic_data / "Circloma T1").glob("*.png"))
    name = os.fsdecode(b"slice-\xff\xfe.png")
    try:
        (folder / name).write_bytes(src.read_bytes())
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    result = _score([folder, "--out", tmp_path / "p.parquet", "--model", exported_model])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(tmp_path / "p.parquet")["path"].to_list() == ["slice-\\xff\\xfe.png"]


def test_cuda_request_never_falls_back_silently(
    tmp_path: Path, exported_model: Path, synthetic_data: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = _score(
        [synthetic_data, "--out", tmp_path / "p.parquet", "--model", exported_model, "--device", "cuda"]
    )
    assert result.exit_code == 2
    assert "cuda" in result.output.lower() and not (tmp_path / "p.parquet").exists()


@pytest.mark.slow
def test_shipped_default_model_scores_the_examples(tmp_path: Path) -> None:
    """The README's main job: no --model, the bundled examples, labelled by their folders."""
    from mri44.models import default_model_path

    examples = Path(__file__).resolve().parents[1] / "examples"
    if not default_model_path().is_file():
        pytest.fail(f"the shipped model is missing at {default_model_path()}")
    result = _score([examples, "--out", tmp_path / "preds.parquet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    preds = pl.read_parquet(tmp_path / "preds.parquet")
    assert preds.height == 44 and set(preds["status"]) == {"ok"}
    assert preds["true_class"].null_count() == 0
    assert (preds["pred_class"] == preds["true_class"]).mean() >= 0.5  # held out of its training: 0.75
    fast = _score([examples, "--out", tmp_path / "int8.parquet", "--device", "cpu", "--model", "int8"])
    assert fast.exit_code == 0, fast.output
    assert "mri44-resnet18-int8.onnx" in fast.output


def test_label_is_the_nearest_enclosing_class_folder() -> None:
    """Nested case folders keep their label (training labels everything under DATA/CLASS/ as CLASS)."""
    from mri44.onnx_meta import ModelMetadata
    from mri44.predictions import prediction_frame

    meta = ModelMetadata(["Circloma T1", "Circloma T2"], PreprocessSpec(size=16), "resnet18", "0" * 64, {})
    paths = [
        "Circloma T1/case01/series2/x.jpg",
        "x.jpg",
        "other/Circloma T2/y.png",
        "Circloma T1/Circloma T2/z.png",
    ]
    probs = np.full((4, 2), 0.5, np.float32)
    frame = prediction_frame(paths, probs, np.ones(4, bool), [None] * 4, meta.classes, top_k=1)
    assert frame["true_class"].to_list() == ["Circloma T1", None, "Circloma T2", "Circloma T2"]


def test_own_outputs_inside_the_input_folder_are_not_scored_next_time(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    folder = tmp_path / "in"
    shutil.copytree(synthetic_data / "Circloma T1", folder / "Circloma T1")
    n = len(list((folder / "Circloma T1").iterdir()))
    out = folder / "preds.csv"
    assert _score([folder, "--out", out, "--model", exported_model, "--device", "cpu"]).exit_code == 0
    assert (folder / "preds_metrics" / "confusion.png").is_file()
    again = _score([folder, "--out", folder / "again.csv", "--model", exported_model, "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert pl.read_csv(folder / "again.csv").height == n  # confusion.png was not picked up


def test_overwrite_leaves_no_stale_tables_and_never_deletes_foreign_folders(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    out = tmp_path / "p.csv"
    assert _score([synthetic_data, "--out", out, "--model", exported_model]).exit_code == 0
    assert (tmp_path / "p_metrics" / "summary.csv").is_file()
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    shutil.copy(next((synthetic_data / "Circloma T1").glob("*.png")), unlabelled / "x.png")
    result = _score([unlabelled, "--out", out, "--model", exported_model, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (
        pl.read_csv(out).height == 1 and not (tmp_path / "p_metrics").exists()
    )  # old tables gone with old preds
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = _score(
        [synthetic_data, "--out", out, "--model", exported_model, "--overwrite", "--metrics-dir", foreign]
    )
    assert refused.exit_code == 2 and "did not write" in refused.output
    assert (foreign / "notes.txt").read_text() == "keep me" and pl.read_csv(out).height == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_overwrite_keeps_a_users_file_put_into_our_metrics_folder(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """Our own, marked metrics folder with a user's note added later: --overwrite refuses, before any work,
    instead of deleting the note with the folder; without the note, it replaces exactly our files."""
    out, metrics = tmp_path / "p.parquet", tmp_path / "p_metrics"
    assert _score([synthetic_data, "--out", out, "--model", exported_model]).exit_code == 0
    (metrics / "notes.md").write_text("my reading of the confusions")
    (metrics / "figures").mkdir()
    before = out.read_bytes()
    refused = _score([synthetic_data, "--out", out, "--model", exported_model, "--overwrite"])
    assert refused.exit_code == 2 and "did not write (figures, notes.md)" in refused.output
    assert (metrics / "notes.md").is_file() and (metrics / "figures").is_dir() and out.read_bytes() == before
    (metrics / "notes.md").unlink()
    (metrics / "figures").rmdir()
    mtime = (metrics / "summary.csv").stat().st_mtime_ns
    again = _score([synthetic_data, "--out", out, "--model", exported_model, "--overwrite"])
    assert again.exit_code == 0, again.output
    assert (metrics / "summary.csv").stat().st_mtime_ns != mtime
    listed = set((metrics / ".mri44-outputs").read_text().split())
    assert listed == {p.name for p in metrics.iterdir()} - {
        ".mri44-outputs"
    }  # the marker lists what we wrote


@pytest.mark.slow
def test_checkpoint_scores_like_its_onnx_exports(
    tmp_path: Path, synthetic_data: Path, trained_run: Path
) -> None:
    """The PyTorch backend (a run folder as --model) and the ONNX exports of the same checkpoint give the same
    prediction tables, within the export gate's bounds (one comparison function for both)."""
    from mri44.stages.export.onnx_export import export_onnx
    from mri44.stages.export.parity import compare_predictions

    tables = {}
    for precision in ("fp32", "fp16"):
        proto, _, _ = export_onnx(trained_run, fp16=precision == "fp16")
        model = tmp_path / f"{precision}.onnx"
        model.write_bytes(proto.SerializeToString())
        result = _score([synthetic_data, "--out", tmp_path / f"{precision}.parquet", "--model", model])
        assert result.exit_code == 0, result.output
        tables[precision] = pl.read_parquet(tmp_path / f"{precision}.parquet")
    torch_run = _score(
        [synthetic_data, "--out", tmp_path / "pt.parquet", "--model", trained_run, "--device", "cpu"]
    )
    assert torch_run.exit_code == 0, torch_run.output
    assert "PyTorch cpu fp32" in torch_run.output
    reference = pl.read_parquet(tmp_path / "pt.parquet")
    assert reference.columns == tables["fp32"].columns
    for precision, table in tables.items():
        row = compare_predictions(f"real {precision}", reference, table, precision)
        assert row.passed, row
        assert row.batch == reference.height
    # The comparison can fail: one changed prediction breaks fp32's 100 % top-1 bound.
    flipped = tables["fp32"].with_columns(
        pred_class=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("other")).otherwise("pred_class")
    )
    assert not compare_predictions("real fp32", reference, flipped, "fp32").passed
    assert not compare_predictions("real fp32", reference, tables["fp32"].head(3), "fp32").passed


def test_checkpoint_backend_refuses_what_it_cannot_honour(
    tmp_path: Path, synthetic_data: Path, trained_run: Path, exported_model: Path
) -> None:
    base = [synthetic_data, "--out", tmp_path / "p.parquet"]
    fp16_cpu = _score([*base, "--model", trained_run, "--device", "cpu", "--precision", "fp16"])
    assert fp16_cpu.exit_code == 2 and "fp16 needs --device cuda" in fp16_cpu.output
    onnx_precision = _score([*base, "--model", exported_model, "--precision", "bf16"])
    assert onnx_precision.exit_code == 2 and "apply to checkpoints" in onnx_precision.output
    if not torch.cuda.is_available():
        cuda = _score([*base, "--model", trained_run, "--device", "cuda"])
        assert cuda.exit_code == 2 and "no CUDA GPU" in cuda.output
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize("name", list(SHIPPED))
def test_every_shipped_model_scores_and_carries_its_ood_check(name: str) -> None:
    """The shipped files by name: metadata with a fitted out-of-distribution check and the features output, and
    real rows on three example slices (every one of them decodes, none is an error row)."""
    import mri44
    from mri44.onnx_meta import read_metadata
    from mri44.stages.score.run import resolve_model

    meta = read_metadata(resolve_model(name))
    assert meta.ood is not None and meta.ood.k == 1 and 0 < meta.ood.threshold < 1
    model = mri44.load_model(name)
    assert model.backend.run_features is not None
    files = sorted((Path(__file__).resolve().parents[1] / "examples").rglob("*.jpg"))[:3]
    rows = model.predict(files)
    assert rows["status"].to_list() == ["ok"] * 3 and rows["ood_score"].null_count() == 0


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 256 KiB tmpfs filled to its last 8 KiB (needs CAP_SYS_ADMIN: root in a container here)."""
    place = tmp_path / "full"
    place.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(place)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root, or no CAP_SYS_ADMIN)")
    try:
        (place / "filler").write_bytes(b"\0" * (248 << 10))  # room for a tiny file only
        yield place
    finally:
        subprocess.run(["umount", str(place)], check=False)


def test_a_full_disk_is_said_and_the_predictions_kept(
    full_disk: Path,
    synthetic_data: Path,
    exported_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    rescue_dir = tmp_path / "tmp"
    rescue_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue_dir))
    out = full_disk / "preds.parquet"
    result = CliRunner().invoke(app, [str(synthetic_data), "--out", str(out), "--model", str(exported_model)])
    assert result.exit_code == 2, result.output
    assert f"no space left on the device that holds {full_disk}" in result.output
    assert "Traceback" not in result.output and not out.exists()
    kept = list(rescue_dir.glob("mri44-unsaved-preds-*.parquet"))
    assert len(kept) == 1 and pl.read_parquet(kept[0]).height == sum(
        p.is_file() for p in synthetic_data.rglob("*")
    )


@pytest.mark.slow
def test_an_onnx_scoring_run_never_imports_pytorch(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """PyTorch costs seconds to import and an ONNX model never needs it; the scorer imported it through
    mri44.calibration (softmax) and mri44.model (file hashing). Blocked here, the run, report included, must work."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; from mri44.stages.score.cli import main; "
        f"sys.argv = ['mri-score', {str(synthetic_data)!r}, '--out', 'p.parquet', '--model', {str(exported_model)!r}, "
        "'--report', 'r.html', '--explain', '1']; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "r.html").is_file() and pl.read_parquet(tmp_path / "p.parquet").height > 0


def test_prediction_rows_follow_the_one_schema(synthetic_data: Path, exported_model: Path) -> None:
    """PREDICTION_SCHEMA is the contract: the rows the core builds have exactly its columns, in its order, with
    its dtypes (top-k pairs and the probs width as the run sets them)."""
    import mri44
    from mri44.predictions import PREDICTION_SCHEMA, prediction_schema

    model = mri44.load_model(exported_model)
    rows = model.predict(sorted(synthetic_data.rglob("*.png"))[:3], top_k=2)
    assert rows.schema == prediction_schema(2, len(model.classes))
    assert list(rows.columns[:5]) == ["path", "frame", "slice", "status", "error"]
    assert rows.columns[-1] == "probs" and list(PREDICTION_SCHEMA)[-1] == "probs"
    probs = np.stack(rows["probs"].to_list())
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.allclose(probs.max(1), rows["confidence"].to_numpy(), atol=1e-6)


def test_series_table_matches_the_series_by_series_definition() -> None:
    """series_table (one sort, grouped sums) against its definition written out one series at a time: the class of
    the mean probabilities, that mean, the slice count, the most confident slice, the shared label."""
    from mri44.predictions import series_table

    rng = np.random.default_rng(1)
    n, classes = 300, ["A T1", "A T2", "B T1"]
    probs = rng.dirichlet(np.ones(3), n)
    series = rng.choice([f"1.2.{k}" for k in range(40)], n).astype(object)
    series[::17] = None  # plain images among them
    labels = pl.Series(list(rng.choice(["A T1", "B T1", None], n, p=[0.6, 0.3, 0.1])), dtype=pl.String)
    frame = pl.DataFrame(
        {
            "path": [f"s/{i}.dcm" for i in range(n)],
            "frame": pl.Series([None] * n, dtype=pl.Int64),
            "slice": pl.Series([None] * n, dtype=pl.Int64),
            "status": ["ok" if i % 23 else "error" for i in range(n)],
            "true_class": labels,
            "study_uid": "9",
            "series_uid": pl.Series(list(series), dtype=pl.String),
            "series_description": "AX",
            "probs": probs.astype(np.float32),
        }
    )
    table = series_table(frame, classes)
    assert table is not None
    ok = frame.with_row_index("row").filter(pl.col("status") == "ok", pl.col("series_uid").is_not_null())
    expected = []
    for uid in sorted(set(ok["series_uid"])):
        rows = ok.filter(series_uid=uid)["row"].to_numpy()
        mean = probs[rows].astype(np.float32).mean(0)
        k = int(mean.argmax())
        found = frame["true_class"].gather(rows).unique().to_list()
        expected.append(
            (
                uid,
                len(rows),
                classes[k],
                f"s/{rows[probs[rows, k].astype(np.float32).argmax()]}.dcm",
                found[0] if len(found) == 1 else None,
            )
        )
    got = table.select("series_uid", "slices", "pred_class", "most_confident_slice", "true_class").rows()
    assert got == expected


def test_a_long_out_name_is_written_or_refused_before_any_work(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """A valid 248-byte --out name was scored, then lost: its staging name was 18 bytes over the file system's
    limit (issue 30). Staging names now fit; a name whose metrics folder cannot exist is refused up front."""
    fits = tmp_path / ("p" * 240 + ".parquet")  # 248 bytes; its metrics folder 248 too
    done = _score([synthetic_data, "--out", fits, "--model", exported_model])
    assert done.exit_code == 0, done.output
    assert fits.is_file() and pl.read_parquet(fits).height > 0
    too_long = tmp_path / ("q" * 250 + ".csv")  # 254 bytes; its metrics folder would take 258
    refused = _score([synthetic_data, "--out", too_long, "--model", exported_model])
    assert refused.exit_code == 2 and "is 258 bytes, over the 255 a file name may have here" in refused.output
    assert not too_long.exists() and list(tmp_path.glob("q*")) == []


def test_rows_say_when_the_model_trained_on_the_image_or_a_copy_of_it(
    tmp_path: Path, synthetic_data: Path, exported_model: Path, trained_run: Path
) -> None:
    """Every model carries its training images' fingerprints (issue 32): a training file is seen_in_training, a
    re-encoded, resized copy of it near_training only, an image it never trained on neither; the summary gives
    the figures on unseen images apart and the run warns."""
    import cv2

    import mri44
    from mri44.metrics import training_overlap

    split = pl.read_parquet(trained_run / "split.parquet")
    train = split.filter(split="train")["path"].to_list()
    folder = tmp_path / "in"
    (folder / Path(train[0]).parent).mkdir(parents=True)
    (folder / train[0]).write_bytes((synthetic_data / train[0]).read_bytes())
    # Never trained on: a real slice (the synthetic ones are near-copies of each other under the measured rule).
    unseen = sorted((Path(__file__).resolve().parents[1] / "examples").rglob("*.jpg"))[0]
    held = [f"{Path(train[0]).parent}/unseen.jpg"]
    (folder / held[0]).write_bytes(unseen.read_bytes())
    copy = folder / Path(train[0]).parent / "copy.jpg"
    image = read_image(synthetic_data / train[0])
    small = cv2.resize(
        image, (image.shape[1] * 3 // 4, image.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA
    )
    cv2.imwrite(
        str(copy),
        small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, 80],
    )
    result = mri44.score(folder, out=None, model=str(exported_model))
    assert result.predictions is not None and result.tables is not None
    rows = {Path(r["path"]).name: r for r in result.predictions.iter_rows(named=True)}
    assert (rows[Path(train[0]).name]["seen_in_training"], rows[Path(train[0]).name]["near_training"]) == (
        True,
        True,
    )
    assert (rows["copy.jpg"]["seen_in_training"], rows["copy.jpg"]["near_training"]) == (False, True)
    assert (rows[Path(held[0]).name]["seen_in_training"], rows[Path(held[0]).name]["near_training"]) == (
        False,
        False,
    )
    summary = result.tables["summary"]
    assert summary["in_training"][0] == 2 and summary["n"][0] == 3
    assert summary["accuracy_unseen"][0] in (0.0, 1.0)  # one unseen image
    assert "2 of 3 labelled images were in the model's training data" in (training_overlap(summary) or "")


def test_the_ood_check_runs_numpy_blas_on_one_thread_and_gives_the_threads_back(
    synthetic_data: Path, exported_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenBLAS's idle threads spun on the cores ONNX Runtime needed (mri44.runtime.one_blas_thread): every
    engine's score_batch runs the check's matrix products on one thread, then restores the setting."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from mri44.ood import OodSpec

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    seen: list[list[int]] = []
    fill = OodSpec.fill

    def recording_fill(self, *args, **kwargs) -> None:
        seen.append(blas_threads())
        fill(self, *args, **kwargs)

    monkeypatch.setattr(OodSpec, "fill", recording_fill)
    backend = onnx_backend(exported_model, "cpu")
    with threadpool_limits(limits=2, user_api="blas"):  # two threads outside, whatever this machine's default
        before = blas_threads()
        run = score_items(
            backend, synthetic_data, list_items(sorted(synthetic_data.rglob("*.png"))[:6]), progress=False
        )
        after = blas_threads()
    assert run.scored == 6 and seen and before and all(n == 2 for n in before)
    assert all(threads and all(n == 1 for n in threads) for threads in seen)
    assert after == before
