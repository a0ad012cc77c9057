from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mri44.checkpoint import Checkpoint
from mri44.errors import CheckpointError, MRI44Error
from mri44.model import build_model
from mri44.onnx_meta import INPUT_NAME, ModelMetadata, ModelMetadataError
from mri44.preprocess import PreprocessSpec
from mri44.runtime import make_session
from mri44.stages.export.onnx_export import export_onnx
from mri44.stages.export.parity import check_parity, compare, random_batches


def _random_init_checkpoint(path: Path, size: int = 40) -> Path:
    torch.manual_seed(0)
    model = build_model(44)
    classes = [f"T{i} T1" for i in range(44)]
    Checkpoint(weights=model.state_dict(), classes=classes, preprocess=PreprocessSpec(size=size)).save(path)
    return path


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("source", [pytest.param("random-init", marks=pytest.mark.slow), "trained"])
def test_parity_at_batch_1_3_8(tmp_path: Path, trained_run: Path, fp16: bool, source: str) -> None:
    ckpt = _random_init_checkpoint(tmp_path / "r.pt") if source == "random-init" else trained_run
    proto, model, meta = export_onnx(ckpt, fp16=fp16)
    session = make_session(proto.SerializeToString(), "cpu")
    rows = check_parity(
        model,
        lambda x: session.run(None, {INPUT_NAME: x})[0],
        random_batches(meta.preprocess),
        meta.export["precision"],
    )
    assert [r.batch for r in rows] == [1, 3, 8]
    assert all(r.passed for r in rows), rows
    if not fp16:
        assert max(r.max_abs for r in rows) <= 1e-4
    io = session.get_inputs()[0]
    assert io.type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    assert isinstance(io.shape[0], str)  # the batch axis stayed symbolic


def test_parity_gate_can_fail() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert not compare("random x2", ref, ref + 1e-3, "fp32").passed
    assert not compare("real x2", ref, ref[:, ::-1], "fp16").passed
    assert compare("real x2", ref, ref + 1e-3, "fp16").passed


def test_metadata_round_trip(exported_model: Path, trained_run: Path) -> None:
    proto = onnx.load(exported_model)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = ModelMetadata.from_props(props)
    ckpt = Checkpoint.load(trained_run)
    assert meta.classes == ckpt.classes
    assert meta.preprocess == ckpt.preprocess
    assert meta.arch == "resnet18"
    assert meta.temperature == pytest.approx(ckpt.temperature)
    assert len(meta.source_sha256) == 64
    assert meta.export["opset"] == 17 and meta.export["precision"] == "fp32"
    onnx.checker.check_model(proto, full_check=True)


def test_missing_metadata_is_refused() -> None:
    with pytest.raises(ModelMetadataError, match="onnx-export"):
        ModelMetadata.from_props({"mri44.format": "1"}, "plain.onnx")


def test_missing_or_corrupt_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        export_onnx(tmp_path / "nothing.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        export_onnx(tmp_path / "bad.pt")


@pytest.mark.slow
def test_cli_writes_nothing_on_failure_and_file_on_success(
    tmp_path: Path, trained_run: Path, synthetic_data: Path
) -> None:
    from typer.testing import CliRunner

    from mri44.stages.export.cli import app

    runner = CliRunner()
    out = tmp_path / "m.onnx"
    bad = runner.invoke(app, [str(tmp_path / "nope.pt"), "--out", str(out)])
    assert bad.exit_code == 2 and not out.exists()
    good = runner.invoke(app, [str(trained_run), "--out", str(out), "--images", str(synthetic_data)])
    assert good.exit_code == 0, good.output
    assert "real x" in good.output and "FAIL" not in good.output
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))
    # Never replaces a file unless told: not the model just written, not the training checkpoint itself.
    before = out.read_bytes()
    again = runner.invoke(app, [str(trained_run), "--out", str(out), "--no-check"])
    assert again.exit_code == 2 and "--overwrite" in again.output and out.read_bytes() == before
    ckpt = trained_run / "best.pt"
    clobber = runner.invoke(app, [str(ckpt), "--out", str(ckpt), "--no-check"])
    assert clobber.exit_code == 2 and "best.pt" in clobber.output
    assert (
        runner.invoke(app, [str(trained_run), "--out", str(out), "--overwrite", "--no-check"]).exit_code == 0
    )


def test_no_replace_write_fails_if_the_target_appears_meanwhile(tmp_path: Path) -> None:
    """The existence check holds at the moment of writing, not only at start (two runs to one --out)."""
    from mri44.atomic import atomic_path

    target = tmp_path / "preds.parquet"
    with pytest.raises(FileExistsError, match="--overwrite"), atomic_path(target, replace=False) as tmp:
        tmp.write_text("mine")
        target.write_text("the other run's")  # another writer finishes first
    assert target.read_text() == "the other run's" and not list(tmp_path.glob(".*.tmp"))
    with atomic_path(tmp_path / "new.csv", replace=False) as tmp:
        tmp.write_text("x")
    assert (tmp_path / "new.csv").read_text() == "x"


def test_tensorrt_absent_says_what_to_install() -> None:
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from mri44.stages.export.tensorrt_engine import build_engine

        with pytest.raises(MRI44Error, match="pip install"):
            build_engine(b"", 32, fp16=False)
    else:
        pytest.skip("TensorRT is installed here; the engine path is exercised on GPU machines")


@pytest.mark.slow
def test_int8_export_calibrates_on_train_split_and_agrees(
    trained_run: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    import polars as pl

    from mri44.stages.export.int8 import calibration_files
    from mri44.stages.export.parity import real_batch

    files = calibration_files(synthetic_data, trained_run / "best.pt", limit=1000)
    train = set(pl.read_csv(trained_run / "split.csv").filter(pl.col("split") == "train")["path"])
    assert files and {f.relative_to(synthetic_data).as_posix() for f in files} <= train
    proto, model, meta = export_onnx(trained_run, int8_calibration=files)
    assert meta.export["precision"] == "int8"
    assert any(node.op_type == "QuantizeLinear" for node in proto.graph.node)
    session = make_session(proto.SerializeToString(), "cpu")
    batch, _ = real_batch(synthetic_data, meta.preprocess, limit=64)
    rows = check_parity(model, lambda x: session.run(None, {INPUT_NAME: x})[0], {"real x64": batch}, "int8")
    assert rows[0].top1_agreement >= 0.95
    from mri44.cam import checkpoint_classifier_weights, onnx_classifier_weights

    (tmp_path / "int8.onnx").write_bytes(proto.SerializeToString())
    dequantized, exact = (
        onnx_classifier_weights(tmp_path / "int8.onnx"),
        checkpoint_classifier_weights(trained_run),
    )
    assert (
        dequantized.shape == exact.shape
    )  # the class maps of an INT8 model use its own (dequantized) weights
    assert np.abs(dequantized - exact).max() <= 0.02 * np.abs(exact).max()


def test_int8_calibration_refuses_a_folder_outside_the_split(trained_run: Path, tmp_path: Path) -> None:
    """A folder whose layout does not match split.csv must not silently calibrate on val/test images."""
    from synthetic import make_dataset

    from mri44.stages.export.int8 import calibration_files

    elsewhere = make_dataset(tmp_path / "other", per_class=2, classes=("Unknown T1",))
    with pytest.raises(FileNotFoundError, match="train split"):
        calibration_files(elsewhere, trained_run / "best.pt", limit=10)


def test_export_never_replaces_its_own_source(trained_run: Path, tmp_path: Path) -> None:
    """A checkpoint saved under an .onnx name, exported onto itself with --overwrite: refused, file kept."""
    import shutil

    from typer.testing import CliRunner

    from mri44.stages.export.cli import app

    source = tmp_path / "ckpt.onnx"
    shutil.copy(trained_run / "best.pt", source)
    before = source.read_bytes()
    done = CliRunner().invoke(app, [str(source), "--out", str(source), "--overwrite", "--no-check"])
    assert done.exit_code == 2 and "is the checkpoint being exported" in done.output
    assert source.read_bytes() == before


@pytest.mark.slow
def test_export_of_an_unfinished_run_is_refused_unless_allowed(trained_run: Path, tmp_path: Path) -> None:
    """A run still training has best.pt and last.pt but no result.json newer than best.pt."""
    import os
    import shutil

    from typer.testing import CliRunner

    from mri44.stages.export.cli import app

    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "last.pt", "result.json"):
        shutil.copy2(trained_run / name, run / name)
    best = run / "best.pt"
    os.utime(
        best, (best.stat().st_atime, (run / "result.json").stat().st_mtime + 60)
    )  # saved after the result
    out = tmp_path / "m.onnx"
    runner = CliRunner()
    done = runner.invoke(app, [str(run), "--out", str(out), "--no-check"])
    assert done.exit_code == 2 and "has not finished training" in done.output and not out.exists()
    done = runner.invoke(app, [str(run), "--out", str(out), "--no-check", "--allow-unfinished"])
    assert done.exit_code == 0, done.output
    assert out.is_file()
    finished = runner.invoke(app, [str(trained_run), "--out", str(tmp_path / "f.onnx"), "--no-check"])
    assert finished.exit_code == 0, finished.output


@pytest.mark.parametrize("option", ["--max-images", "--calibration-images"])
def test_zero_image_counts_are_refused_as_usage_errors(
    trained_run: Path, tmp_path: Path, option: str
) -> None:
    from typer.testing import CliRunner

    from mri44.stages.export.cli import app

    done = CliRunner().invoke(app, [str(trained_run), "--out", str(tmp_path / "m.onnx"), option, "0"])
    assert done.exit_code == 2 and "Invalid value" in done.output  # a usage error, not a ZeroDivisionError
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "change",
    [
        {"mri44.classes": '["a", 3]'},
        {"mri44.preprocess": '{"size": 64, "mean": [0.5]}'},
        {"mri44.preprocess": '{"size": 64, "std": [1.0, 0.0, 1.0]}'},
        {"mri44.temperature": "1e-30"},
    ],
)
def test_crafted_metadata_is_refused_on_load(exported_model: Path, change: dict) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported_model)).metadata_props}
    with pytest.raises(ModelMetadataError):
        ModelMetadata.from_props({**props, **change}, "crafted.onnx")


def test_every_refusal_to_replace_an_output_is_one_library_error(tmp_path: Path) -> None:
    """One output policy (issue 31): the wording and the type (an MRI44Error, still a FileExistsError) are one."""
    from mri44.atomic import OutputExistsError, refuse_existing
    from mri44.errors import MRI44Error

    there = tmp_path / "preds.parquet"
    refuse_existing(there)  # nothing there: nothing to refuse
    there.write_bytes(b"x")
    refuse_existing(there, overwrite=True)
    with pytest.raises(
        OutputExistsError, match=r"preds.parquet \(the CSV's provenance file\) exists; pass --over"
    ):
        refuse_existing(there, what="the CSV's provenance file")
    assert issubclass(OutputExistsError, MRI44Error) and issubclass(OutputExistsError, FileExistsError)
