"""Scoring on Ray (a local cluster the test starts): the local scorer's rows, bad files included; resumable."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from mri44.stages.score.cli import app

ray = pytest.importorskip("ray", reason="the Ray engine is an extra: pip install -e '.[ray]'")
runner = CliRunner()


pytestmark = pytest.mark.slow  # starts Ray or torchrun: seconds per test


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _folder_with_bad_files(synthetic_data: Path, tmp_path: Path) -> Path:
    data = tmp_path / "in"
    shutil.copytree(synthetic_data, data)
    cls = next(d for d in sorted(data.iterdir()) if d.is_dir())
    (cls / "junk.jpg").write_bytes(b"not an image")
    (cls / "empty.png").write_bytes(b"")
    (cls / "notes.txt").write_text("not an image type: skipped, not a row")
    return data


def test_ray_engine_gives_the_local_rows_and_resumes(
    local_ray, synthetic_data: Path, exported_model: Path, tmp_path: Path
) -> None:
    data = _folder_with_bad_files(synthetic_data, tmp_path)
    local = runner.invoke(
        app, [str(data), "--out", str(tmp_path / "local.parquet"), "--model", str(exported_model)]
    )
    assert local.exit_code == 0, local.output
    reference = pl.read_parquet(tmp_path / "local.parquet")

    # First run on part of the input, as if it had died; then --resume scores only the rest.
    late = sorted(data.rglob("*.png"))[-10:]
    held = tmp_path / "held"
    held.mkdir()
    for path in late:
        shutil.move(path, held / f"{path.parent.name}__{path.name}")
    out = tmp_path / "ray-out"
    args = ["--out", str(out), "--model", str(exported_model), "--engine", "ray", "--batch-size", "16"]
    first = runner.invoke(app, [str(data), *args])
    assert first.exit_code == 0, first.output
    (out / ".part-crashed.parquet.x.tmp").write_bytes(b"half a part")  # an interrupted write: never a part
    foreign = out / "part-00000.parquet"  # another tool's part (pyarrow's default name), another schema
    pl.DataFrame({"x": [1, 2]}).write_parquet(foreign)
    again = runner.invoke(app, [str(data), *args])
    assert again.exit_code == 2 and "--resume" in again.output
    for path in late:
        shutil.move(held / f"{path.parent.name}__{path.name}", path)
    resumed = runner.invoke(app, [str(data), *args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "scored 12 file(s) now" in resumed.output  # the 10 new files and the 2 error rows, tried again

    rows = pl.read_parquet(sorted(out.glob("mri44-part-*.parquet"))).sort("path")
    assert rows.columns == reference.columns
    assert rows["path"].to_list() == reference["path"].to_list()
    assert rows["status"].to_list() == reference["status"].to_list()
    assert rows["error"].to_list() == reference["error"].to_list()
    assert rows["pred_class"].to_list() == reference["pred_class"].to_list()
    assert rows["true_class"].to_list() == reference["true_class"].to_list()
    ok = reference["status"] == "ok"
    diff = (rows.filter(ok)["confidence"] - reference.filter(ok)["confidence"]).abs().max()
    assert diff is not None and diff <= 1e-5
    assert (out / "metrics" / "summary.csv").exists() == reference["true_class"].is_not_null().any()
    fresh = runner.invoke(app, [str(data), *args, "--overwrite"])  # starts over: the old parts go
    assert fresh.exit_code == 0, fresh.output
    assert pl.read_parquet(sorted(out.glob("mri44-part-*.parquet"))).height == reference.height
    assert pl.read_parquet(foreign)["x"].to_list() == [1, 2]  # neither --resume nor --overwrite touched it
    if importlib.util.find_spec("matplotlib") is not None:  # the report reads a parts folder too
        from mri44.stages.score.report_cli import app as report_app

        made = runner.invoke(report_app, [str(out)])
        assert made.exit_code == 0, made.output
        assert 'id="confident-errors"' in (out / "report.html").read_text()


def test_ray_engine_reads_urls_and_refuses_local_only_options(
    local_ray, synthetic_data: Path, exported_model: Path, tmp_path: Path
) -> None:
    """A URL input goes through pyarrow's file systems (file:// here; s3:// and gs:// take the same path)."""
    out = tmp_path / "url-out"
    args = ["--out", str(out), "--model", str(exported_model), "--engine", "ray"]
    result = runner.invoke(app, [synthetic_data.resolve().as_uri(), *args])
    assert result.exit_code == 0, result.output
    rows = pl.read_parquet(sorted(out.glob("mri44-part-*.parquet")))
    files = sorted(p.relative_to(synthetic_data).as_posix() for p in synthetic_data.rglob("*") if p.is_file())
    assert sorted(rows["path"].to_list()) == files and set(rows["status"]) == {"ok"}
    assert rows["true_class"].is_not_null().all()
    refused = runner.invoke(
        app, [str(synthetic_data), *args[:-2], "--engine", "ray", "--decode", "device", "--report", "r.html"]
    )
    assert refused.exit_code == 2 and "--decode, --report apply to the local engine only" in refused.output


def test_ray_resume_is_the_same_run_held_by_one_process_and_survives_damage(
    local_ray, synthetic_data: Path, exported_model: Path, tmp_path: Path
) -> None:
    """--resume refuses another model or other options (it mixed two models' rows; --top-k broke the schema);
    a second run into a held folder is refused; error rows are retried; a cut-off part is set aside, not fatal;
    a name that is not UTF-8 is one row, not an aborted run; a GPU request the cluster cannot meet is refused."""
    import os

    from mri44.atomic import LOCK_FILE
    from mri44.stages.score.ray_engine import RUN_FILE

    data = tmp_path / "in"
    cls = sorted(d for d in synthetic_data.iterdir() if d.is_dir())[0]
    shutil.copytree(cls, data / cls.name)
    (data / cls.name / "junk.jpg").write_bytes(b"not an image")
    os.close(os.open(os.fsencode(data / cls.name) + b"/\xff-latin1.png", os.O_CREAT | os.O_WRONLY))
    shutil.copy(next((data / cls.name).glob("*.png")), os.fsencode(data / cls.name) + b"/\xff-latin1.png")
    out = tmp_path / "out"
    args = [str(data), "--out", str(out), "--model", str(exported_model), "--engine", "ray"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    rows = pl.read_parquet(sorted(out.glob("mri44-part-*.parquet")))
    assert f"{cls.name}/\\xff-latin1.png" in rows.filter(pl.col("status") == "ok")["path"].to_list()
    assert rows.filter(pl.col("status") == "error")["path"].to_list() == [f"{cls.name}/junk.jpg"]
    assert (out / RUN_FILE).is_file() and not (out / LOCK_FILE).exists()

    other = runner.invoke(app, [*args, "--resume", "--top-k", "5"])
    assert other.exit_code == 2 and "--resume of a different run" in other.output
    assert "top_k 3 then, 5 now" in other.output
    copy = tmp_path / "other-model.onnx"
    import onnx

    changed = onnx.load(str(exported_model))
    changed.doc_string = "another model"  # another file's bytes: another model
    onnx.save(changed, str(copy))
    other = runner.invoke(app, [*args[:3], "--model", str(copy), *args[5:], "--resume"])
    assert other.exit_code == 2 and "model_sha256" in other.output

    (out / LOCK_FILE).write_text(f"{os.getppid()} {__import__('socket').gethostname()}")  # a live process
    held = runner.invoke(app, [*args, "--resume"])
    assert held.exit_code == 2 and "another run" in held.output and LOCK_FILE in held.output
    (out / LOCK_FILE).write_text(f"{2**22 + 12345} {__import__('socket').gethostname()}")  # no such process
    (data / cls.name / "junk.jpg").unlink()
    shutil.copy(next((data / cls.name).glob("*.png")), data / cls.name / "junk.jpg")  # now readable
    part = sorted(out.glob("mri44-part-*.parquet"))[0]
    whole = part.read_bytes()
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "scored 1 file(s) now" in resumed.output  # only the former error row
    again = pl.read_parquet(sorted(out.glob("mri44-part-*.parquet")))
    assert again.height == rows.height and set(again["status"]) == {"ok"}
    assert not (out / LOCK_FILE).exists()

    for damaged in sorted(out.glob("mri44-part-*.parquet")):
        damaged.write_bytes(damaged.read_bytes()[: len(whole) // 2])
        break
    if importlib.util.find_spec("matplotlib") is not None:
        from mri44.stages.score.report_cli import app as report_app

        report = runner.invoke(report_app, [str(out)])
        assert report.exit_code == 2 and "cannot be read" in report.output and damaged.name in report.output
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert (out / f"{damaged.name}.unreadable").is_file()
    assert pl.read_parquet(sorted(out.glob("mri44-part-*.parquet"))).height == rows.height

    gpus = runner.invoke(app, [*args[:2], str(tmp_path / "gpu-out"), *args[3:], "--gpus-per-actor", "1"])
    assert gpus.exit_code == 2 and "the Ray cluster has 0" in gpus.output
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(app, [str(empty), "--out", str(tmp_path / "none-out"), *args[3:]])
    assert none.exit_code == 2 and "no image files under" in none.output


def test_ray_url_input_skips_our_own_outputs_inside_it(
    local_ray, synthetic_data: Path, exported_model: Path, tmp_path: Path
) -> None:
    """An --out inside the input URL: its metrics folder (confusion map included) is never scored as input."""
    data = tmp_path / "in"
    cls = sorted(d for d in synthetic_data.iterdir() if d.is_dir())[0]
    shutil.copytree(cls, data / cls.name)
    out = data / "scored"
    args = [data.resolve().as_uri(), "--out", str(out), "--model", str(exported_model), "--engine", "ray"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert any((out / "metrics").glob("*.png"))
    (data / cls.name / "late.png").write_bytes(next((data / cls.name).glob("*.png")).read_bytes())
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    paths = pl.read_parquet(sorted(out.glob("mri44-part-*.parquet")))["path"].to_list()
    assert all(p.startswith(f"{cls.name}/") for p in paths) and f"{cls.name}/late.png" in paths


def test_one_mixed_folder_scores_to_the_same_tables_three_ways(
    local_ray, synthetic_data: Path, exported_model: Path, tmp_path: Path
) -> None:
    """The one scoring core (issue 31): JPEG and PNG slices, a multi-frame DICOM series file, a NIfTI volume and a
    bad file, scored by the local engine, the Ray engine and the Python API, give the same prediction rows (frames
    and slices as fields, tags, errors, every probability) and the same series table."""
    import numpy as np
    from polars.testing import assert_frame_equal

    import mri44
    from mri44.predictions import prediction_schema, series_table

    pytest.importorskip("pydicom")
    pytest.importorskip("nibabel")
    from test_dicom import write_dicom
    from test_nifti import _slices, _volume

    cls = sorted(d.name for d in synthetic_data.iterdir() if d.is_dir())[0]
    folder = tmp_path / "in" / cls
    folder.mkdir(parents=True)
    for source in sorted((synthetic_data / cls).iterdir())[:4]:  # .jpg, .jpeg, .JPG and .png slices
        shutil.copy(source, folder / source.name)
    frames = [np.full((32, 32), 60 * k, np.uint16) for k in range(3)]
    write_dicom(folder / "multi.dcm", frames, "MONOCHROME2", None, series="9.8.7", instance=4)
    _volume(folder / "head.nii.gz", _slices(4), flip_x=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    local = runner.invoke(
        app, [str(tmp_path / "in"), "--out", str(tmp_path / "l.parquet"), "--model", str(exported_model)]
    )
    assert local.exit_code == 0, local.output
    out = tmp_path / "ray"
    done = runner.invoke(
        app, [str(tmp_path / "in"), "--out", str(out), "--model", str(exported_model), "--engine", "ray"]
    )
    assert done.exit_code == 0, done.output
    model = mri44.load_model(exported_model)
    order = ["path", "frame", "slice"]
    tables = {
        "local": pl.read_parquet(tmp_path / "l.parquet"),
        "ray": pl.read_parquet(sorted(out.glob("mri44-part-*.parquet"))),
        "api": model.predict(tmp_path / "in"),
    }
    tables = {name: table.sort(order, nulls_last=False) for name, table in tables.items()}
    reference = tables["local"]
    assert reference.schema == prediction_schema(3, len(model.classes))
    assert reference.height == 4 + 3 + 4 + 1 and reference.filter(status="error")["path"].to_list() == [
        f"{cls}/broken.png"
    ]
    assert reference.filter(pl.col("frame").is_not_null())["frame"].to_list() == [1, 2, 3]
    assert reference.filter(pl.col("slice").is_not_null())["path"].unique().to_list() == [
        f"{cls}/head.nii.gz"
    ]
    for name in ("ray", "api"):
        assert_frame_equal(tables[name], reference, check_exact=False, rel_tol=1e-5, abs_tol=1e-6)
    series = {
        "local": pl.read_csv(tmp_path / "l_metrics" / "series.csv"),
        "ray": pl.read_csv(out / "metrics" / "series.csv"),
        "api": series_table(tables["api"], model.classes),
    }
    assert series["local"].sort("series_uid")["series_uid"].to_list() == ["9.8.7", f"{cls}/head.nii.gz"]
    for name in ("ray", "api"):
        assert_frame_equal(
            series[name].sort("series_uid"),
            series["local"].sort("series_uid"),
            check_dtypes=False,
            check_exact=False,
            rel_tol=1e-5,
        )


def test_a_file_that_aborted_the_decoder_is_one_error_row_under_ray(
    local_ray, synthetic_data: Path, exported_model: Path, tmp_path: Path
) -> None:
    """The lying JPEG-LS file that aborted GDCM made Ray retry its task without end (issue 30): now the run
    finishes, with that file's error row beside the good ones."""
    pytest.importorskip("pydicom")
    from test_dicom import _lying_codestream

    data = tmp_path / "in"
    shutil.copytree(synthetic_data / sorted(p.name for p in synthetic_data.iterdir())[0], data / "c")
    _lying_codestream(data / "c" / "liar.dcm")
    out = tmp_path / "ray"
    done = runner.invoke(
        app, [str(data), "--out", str(out), "--model", str(exported_model), "--engine", "ray"]
    )
    assert done.exit_code == 0, done.output
    rows = pl.read_parquet(sorted(out.glob("mri44-part-*.parquet")))
    assert rows.filter(status="error")["path"].to_list() == ["c/liar.dcm"]
    assert rows.filter(status="ok").height == rows.height - 1 > 0


def test_a_run_record_that_is_not_a_record_refuses_the_resume_in_one_line(
    synthetic_data: Path, exported_model: Path, tmp_path: Path
) -> None:
    """A run record of `[1]` crashed --resume with a traceback (issue 30)."""
    out = tmp_path / "ray"
    out.mkdir()
    (out / "mri44-run.json").write_text("[1]")
    (out / "mri44-part-x-000000.parquet").write_bytes(b"")
    args = [
        str(synthetic_data),
        "--out",
        str(out),
        "--model",
        str(exported_model),
        "--engine",
        "ray",
        "--resume",
    ]
    done = runner.invoke(app, args)
    assert done.exit_code == 2 and "run record (mri44-run.json) is a list, not a record" in done.output
