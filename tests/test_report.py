"""The HTML review report: every section, self-contained, class activation maps from any model, and a real browser
renders it to something that is not blank."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib", reason="the report is an extra: pip install -e '.[report]'")
from mri44.stages.score.cli import app as score_app  # noqa: E402
from mri44.stages.score.report_cli import app as report_app  # noqa: E402

runner = CliRunner()
LABELLED_SECTIONS = (
    "summary",
    "per-contrast",
    "per-tumor-type",
    "per-class",
    "confusion",
    "reliability",
    "confident-errors",
    "unsure-correct",
)


def _self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)=["']https?:""", html)  # nothing fetched from the network
    assert html.count('src="data:image/png;base64,') >= 3


@pytest.mark.slow
def _unlabelled_copy(synthetic_data: Path, folder: Path, n: int) -> Path:
    """The first n synthetic PNGs in one folder not named like a class: predictions without labels."""
    folder.mkdir()
    for k, png in enumerate(sorted(synthetic_data.rglob("*.png"))[:n]):
        shutil.copy(png, folder / f"{k}.png")
    return folder


def test_report_from_mri_score_has_every_section_and_overlays(
    tmp_path: Path, synthetic_data: Path, trained_run: Path
) -> None:
    report = tmp_path / "report.html"
    args = [str(synthetic_data), "--out", str(tmp_path / "p.parquet"), "--model", str(trained_run)]
    result = runner.invoke(score_app, [*args, "--report", str(report), "--explain", "2"])
    assert result.exit_code == 0, result.output
    html = report.read_text()
    for section in LABELLED_SECTIONS:
        assert f'id="{section}"' in html, section
    _self_contained(html)
    assert html.count('alt="Grad-CAM of') >= 2  # two per gallery asked; galleries may be short on tiny data
    # Beside the slice, not only behind a click, with the colour scale in the legend.
    assert html.count('alt="class activation map of') >= 2 and 'class="scale"' in html
    # Read like a reading room: verdict colours, readable thumbnails that open full size with their map,
    # paths under the input root, intervals beside every rate, tumour-type and contrast confusion maps.
    assert (
        'class="card wrong' in html
        and '<details><summary class="pair">' in html
        and 'alt="full size ' in html
    )
    assert html.count("recall 95% CI") == 2 and "accuracy 95% CI" in html
    assert 'alt="tumour-type confusion heatmap"' in html and 'alt="contrast confusion heatmap"' in html
    shown = re.findall(r'<div class="path">([^<]*)</div>', html)
    assert shown and all("/" in path for path in shown)  # class folder and file, not a clipped file name
    other = [str(synthetic_data), "--out", str(tmp_path / "q.parquet"), "--model", str(trained_run)]
    again = runner.invoke(score_app, [*other, "--report", str(report)])
    assert again.exit_code == 2 and "--overwrite" in again.output  # the report is not replaced silently...
    assert not (tmp_path / "q.parquet").exists()  # ...and that is found before any scoring
    pl.read_parquet(tmp_path / "p.parquet").write_parquet(tmp_path / "bare.parquet")  # no provenance left
    no_ckpt = runner.invoke(
        report_app, [str(tmp_path / "bare.parquet"), "--out", str(tmp_path / "x.html"), "--explain", "1"]
    )
    assert no_ckpt.exit_code == 2 and "--model" in no_ckpt.output
    onnx_model = (
        trained_run.parent / "tiny-report.onnx"
    )  # the shipped models are ONNX files: they explain too
    from mri44.stages.export.onnx_export import export_onnx

    onnx_model.write_bytes(export_onnx(trained_run)[0].SerializeToString())
    args = [
        str(tmp_path / "p.parquet"),
        "--out",
        str(tmp_path / "onnx.html"),
        "--images",
        str(synthetic_data),
    ]
    explained = runner.invoke(report_app, [*args, "--model", str(onnx_model), "--explain", "1"])
    assert explained.exit_code == 0, explained.output
    assert (tmp_path / "onnx.html").read_text().count('alt="Grad-CAM of') >= 1


def test_unlabelled_report_shows_predicted_classes_and_low_confidence(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    flat = _unlabelled_copy(synthetic_data, tmp_path / "flat", 12)
    (flat / "bad.png").write_bytes(b"broken")
    out = tmp_path / "flat.parquet"
    assert (
        runner.invoke(score_app, [str(flat), "--out", str(out), "--model", str(exported_model)]).exit_code
        == 0
    )
    result = runner.invoke(report_app, [str(out), "--images", str(flat)])
    assert result.exit_code == 0, result.output
    html = out.with_suffix(".html").read_text()
    assert 'id="predicted-classes"' in html and 'id="low-confidence"' in html and 'id="confusion"' not in html
    assert "bad.png" in html  # the unreadable file is listed
    _self_contained(html)
    not_ours = tmp_path / "other.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(not_ours)
    refused = runner.invoke(report_app, [str(not_ours)])
    assert refused.exit_code == 2 and "not mri-score output" in refused.output
    # mri-score --report draws class maps beside the slices unless told --explain 0
    for explain, maps in (([], True), (["--explain", "0"], False)):
        report = tmp_path / f"maps-{bool(explain)}.html"
        args = [str(flat), "--out", str(report.with_suffix(".parquet")), "--model", str(exported_model)]
        assert runner.invoke(score_app, [*args, "--report", str(report), *explain]).exit_code == 0
        assert ('alt="class activation map of' in report.read_text()) is maps


@pytest.mark.slow
def test_headless_chromium_renders_the_report(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip(
            "no Chromium on this machine (Debian: apt-get install chromium): the rendering check did not run"
        )
    report = tmp_path / "r.html"
    args = [str(synthetic_data), "--out", str(tmp_path / "p.parquet"), "--model", str(exported_model)]
    assert runner.invoke(score_app, [*args, "--report", str(report)]).exit_code == 0
    shot = tmp_path / "r.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        report.as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    image = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    assert image is not None, "Chromium wrote no screenshot"
    assert image.shape == (1600, 1200)
    dark = (image < 128).mean()
    assert 0.01 < dark < 0.6 and float(np.std(image)) > 20  # text, tables and plots: neither blank nor black


def test_report_shows_the_flagged_images_in_their_own_gallery(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    import cv2
    import numpy as np

    folder = _unlabelled_copy(synthetic_data, tmp_path / "mixed", 6)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "noise.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "blank.png"), np.zeros((64, 64), np.uint8))
    out = tmp_path / "mixed.parquet"
    done = runner.invoke(score_app, [str(folder), "--out", str(out), "--model", str(exported_model)])
    assert done.exit_code == 0, done.output
    assert set(pl.read_parquet(out).filter("ood")["path"]) >= {"noise.png", "blank.png"}
    assert runner.invoke(report_app, [str(out), "--images", str(folder)]).exit_code == 0
    html = out.with_suffix(".html").read_text()
    gallery = html[html.index('id="out-of-distribution"') :]
    assert "noise.png" in gallery[:20000] and "unlike the training images" in gallery[:20000]
    # A flagged card is amber, never green, whatever its verdict; the legend says what each colour means.
    flagged_cards = gallery.split('<div class="card')[1:]
    assert flagged_cards and all(card.split('">')[0].endswith("flagged") for card in flagged_cards[:2])
    assert "flagged out of distribution" in html[: html.index('id="out-of-distribution"')]
    flagged = pl.read_parquet(out)["ood"].sum()
    assert f"{flagged} of {pl.read_parquet(out).filter(status='ok').height} scored images flagged (" in html
    # The header counts the flags by reason and each flagged card says its own.
    reasons = pl.read_parquet(out).filter("ood")["ood_reason"].str.split("; ").explode()
    top = reasons.value_counts(sort=True).row(0)
    assert f"{top[0]} {top[1]}" in html and "; distance: ood_score above " in html
    assert all("flagged: " in card for card in flagged_cards[: min(int(flagged), 12)])
    off = tmp_path / "off.parquet"
    runner.invoke(score_app, [str(folder), "--out", str(off), "--model", str(exported_model), "--ood", "off"])
    assert runner.invoke(report_app, [str(off), "--images", str(folder)]).exit_code == 0
    assert 'id="out-of-distribution"' not in off.with_suffix(".html").read_text()
    assert "<td>off (mri-score --ood off)" in off.with_suffix(".html").read_text()


def test_no_output_replaces_an_input_or_another_output(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """With --overwrite, --report over the model, over the predictions, or over an input image is refused before
    any work, and so is a --metrics-dir that would hold --out; mri-report --out over the predictions it reads too."""
    model = tmp_path / "model.onnx"
    shutil.copy(exported_model, model)
    images = tmp_path / "images"
    shutil.copytree(synthetic_data, images)
    an_image = next(images.rglob("*.png"))
    out = tmp_path / "p.parquet"
    before = {p: p.read_bytes() for p in (model, an_image)}
    cases = {
        "the --model this run reads": ["--report", model],
        "are the same path": ["--report", out],
        "an image under the input folder": ["--report", an_image],
    }
    for message, extra in cases.items():
        done = runner.invoke(
            score_app, [str(a) for a in [images, "--out", out, "--model", model, "--overwrite", *extra]]
        )
        assert done.exit_code == 2 and message in done.output, (message, done.output)
        assert not out.exists()
    # A new, empty --metrics-dir that would hold --out (it is replaced as a whole after --out is written).
    inside = tmp_path / "results"
    done = runner.invoke(
        score_app,
        [str(a) for a in [images, "--out", inside / "p.parquet", "--model", model, "--metrics-dir", inside]],
    )
    assert done.exit_code == 2 and "would hold --out" in done.output and not inside.exists()
    assert all(p.read_bytes() == data for p, data in before.items())
    assert runner.invoke(score_app, [str(images), "--out", str(out), "--model", str(model)]).exit_code == 0
    written = out.read_bytes()
    refused = runner.invoke(report_app, [str(out), "--out", str(out), "--overwrite"])
    assert refused.exit_code == 2 and "predictions file this run reads" in refused.output
    assert out.read_bytes() == written


def test_report_of_a_table_with_a_wrongly_typed_column_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pl.DataFrame(
        {
            "path": ["a.png"],
            "status": ["ok"],
            "error": pl.Series([None], dtype=pl.String),
            "pred_class": ["A T1"],
            "confidence": ["high"],
            "true_class": [None],
        }
    ).write_parquet(bad)
    done = runner.invoke(report_app, [str(bad)])
    assert done.exit_code == 2 and "confidence is String, expected numbers" in done.output
    assert not bad.with_suffix(".html").exists()


def test_class_names_with_dollar_signs_are_text_not_mathematics(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """A class named like `Odd $x_{$ T1` made matplotlib parse mathtext and the report crash."""
    scored = tmp_path / "p.parquet"
    result = runner.invoke(
        score_app, [str(synthetic_data), "--out", str(scored), "--model", str(exported_model)]
    )
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(scored)
    first = sorted(frame["pred_class"].unique().to_list())[0]
    odd = "Odd $x_{$ T1"
    renamed = frame.with_columns(pl.col("pred_class", "true_class").replace(first, odd))
    renamed.write_parquet(tmp_path / "odd.parquet")
    made = runner.invoke(report_app, [str(tmp_path / "odd.parquet")])
    assert made.exit_code == 0, made.output
    assert "Odd $x_{$ T1" in (tmp_path / "odd.html").read_text()


@pytest.mark.slow
def test_class_maps_of_onnx_models_equal_torchcam_grad_cam_on_the_checkpoint(
    trained_run: Path, exported_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    """The report's maps come from the feature-map output and the classifier weights (mri44.cam), with no
    gradients; for a ResNet that is Grad-CAM. Checked against torchcam's Grad-CAM on the PyTorch checkpoint for
    the checkpoint itself, its fp32 export and its fp16 export (within fp16 rounding)."""
    import torch
    from torchcam.methods import GradCAM

    from mri44.cam import class_activation_map, classifier_weights
    from mri44.checkpoint import Checkpoint
    from mri44.preprocess import load_pixels, normalize
    from mri44.stages.export.onnx_export import export_onnx
    from mri44.stages.score.backends import open_backend

    fp16 = tmp_path / "fp16.onnx"
    fp16.write_bytes(export_onnx(trained_run, fp16=True)[0].SerializeToString())
    ckpt = Checkpoint.load(trained_run)
    model, spec = ckpt.model(), ckpt.preprocess
    images = sorted(synthetic_data.rglob("*.png"))[::7][:4]
    for source, tolerance in ((trained_run, 1e-4), (exported_model, 1e-3), (fp16, 0.05)):
        backend, weights = open_backend(source, "cpu"), classifier_weights(source)
        assert backend.run_features is not None
        for path in images:
            pixels = load_pixels(path, spec)
            x = normalize(pixels, spec)
            extractor = GradCAM(model, target_layer="layer4")
            try:
                scores = model(torch.from_numpy(x))
                k = int(scores.argmax())
                (cam,) = extractor(k, scores)
            finally:
                extractor.remove_hooks()
            small = cam[0].detach().float().numpy()
            expected = cv2.resize(small, (spec.size, spec.size), interpolation=cv2.INTER_LINEAR)
            expected = (expected - expected.min()) / max(float(expected.max() - expected.min()), 1e-8)
            mine = class_activation_map(backend.run_features(x)[1][0], weights, k, spec.size)
            assert mine.max() > 0.99 and mine.min() < 0.01  # a map with structure, not a constant
            assert np.abs(mine - expected).max() <= tolerance, (source.name, path.name)


@pytest.mark.slow
def test_report_renders_from_any_working_folder(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """The template was looked up in a top-level package `score`, which exists only when Python runs from the
    repository: every installed `mri-score --report` failed with ModuleNotFoundError."""
    import subprocess
    import sys

    code = (
        "from mri44.stages.score.cli import main; import sys; "
        f"sys.argv = ['mri-score', {str(synthetic_data)!r}, '--out', 'p.parquet', '--model', "
        f"{str(exported_model)!r}, '--report', 'r.html']; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'id="summary"' in (tmp_path / "r.html").read_text()


def test_predictions_carry_their_provenance_and_the_report_uses_it(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """`mri-report preds.parquet` without --images used to drop every thumbnail and print 'model ?': the
    predictions now record the model (SHA-256 of the file), the input root, options, versions and counts, in the
    Parquet metadata or a CSV sidecar, and the report finds images, names the model and explains with it."""
    from mri44.files import file_sha256
    from mri44.stages.score.provenance import read_provenance, sidecar

    for name in ("p.parquet", "c.csv"):
        out = tmp_path / name
        done = runner.invoke(
            score_app, [str(synthetic_data), "--out", str(out), "--model", str(exported_model)]
        )
        assert done.exit_code == 0, done.output
        recorded = read_provenance(out)
        assert recorded is not None, name
        assert recorded["model"]["sha256"] == file_sha256(exported_model)
        assert recorded["input"] == str(synthetic_data.resolve())
        assert recorded["counts"]["files"] == pl.read_csv(out).height if name.endswith("csv") else True
        assert recorded["options"]["top_k"] == 3 and recorded["versions"]["mri44"]
    assert sidecar(tmp_path / "c.csv").is_file()
    again = runner.invoke(
        score_app, [str(synthetic_data), "--out", str(tmp_path / "c.csv"), "--model", str(exported_model)]
    )
    assert again.exit_code == 2  # neither the table nor its record is replaced without --overwrite

    made = runner.invoke(
        report_app, [str(tmp_path / "p.parquet"), "--explain", "1"]
    )  # no --images, no --model
    assert made.exit_code == 0, made.output
    html = (tmp_path / "p.html").read_text()
    assert f"{exported_model.name} (" in html and file_sha256(exported_model)[:16] in html
    assert str(synthetic_data.resolve()) in html
    assert html.count('class="thumb"') and html.count('alt="Grad-CAM of') >= 1  # thumbnails and maps found


def test_wilson_interval_matches_the_textbook() -> None:
    """8 of 10: 0.490-0.943 (Wilson 1927; Newcombe 1998, table I); 0 of 5 and 5 of 5 stay inside 0..1."""
    from mri44.stages.score.report import wilson_interval

    frame = pl.DataFrame({"k": [8, 0, 5], "n": [10, 5, 5]})
    lo, hi = wilson_interval(pl.col("k"), pl.col("n"))
    bounds = frame.select(lo=lo, hi=hi)
    assert bounds["lo"][0] == pytest.approx(0.4902, abs=1e-4) and bounds["hi"][0] == pytest.approx(
        0.9433, abs=1e-4
    )
    assert bounds["lo"][1] == pytest.approx(0.0, abs=1e-12) and bounds["hi"][1] == pytest.approx(
        0.4345, abs=1e-4
    )
    assert bounds["hi"][2] == pytest.approx(1.0, abs=1e-12) and bounds["lo"][2] == pytest.approx(
        0.5655, abs=1e-4
    )
    # In the tables: three decimals on both ends, whatever the values (issue 33: 0.5-1.0 beside 0.25-0.83)
    from mri44.stages.score.report import with_interval

    shown = with_interval(frame.with_columns(recall=pl.col("k") / pl.col("n")), "recall", "n")[
        "recall 95% CI"
    ]
    assert shown.to_list() == ["0.490–0.943", "0.000–0.434", "0.566–1.000"]


@pytest.mark.slow
def test_a_report_of_ten_thousand_rows_stays_small(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """Galleries are capped and tables are per class, so the report of 10,000 scored images is the size of the
    report of a hundred: what grows with the run is only the one-line counts, and the galleries up to their cap.
    The bound comes from what the page holds, not from a ratio of sizes: how many cards the small run's galleries
    fill depends on how many of its images the model flags, which differs from one CPU's numerics to another's."""
    from mri44.stages.score.report import GALLERY_SIZE, render_report

    scored = tmp_path / "p.parquet"
    done = runner.invoke(
        score_app, [str(synthetic_data), "--out", str(scored), "--model", str(exported_model)]
    )
    assert done.exit_code == 0, done.output
    small = pl.read_parquet(scored)
    big = pl.concat([small] * (10_000 // small.height + 1)).head(10_000)
    pages = [render_report(frame, synthetic_data, None, "t") for frame in (small, big)]
    card = re.compile(r'<div class="card [^"]*">.*?\n</div>', re.S)  # a gallery card, thumbnail and all
    for section in re.findall(r"<section id=.*?</section>", pages[1], re.S):
        assert len(card.findall(section)) <= GALLERY_SIZE
    small_rest, big_rest = (len(card.sub("", page).encode()) for page in pages)
    assert big_rest < 1.02 * small_rest, (small_rest, big_rest)  # tables, plots, counts: the same page
    assert len(pages[1].encode()) < 3_000_000


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ([1, 2], "a list, not an object"),
        ({"model": [1]}, "model is list"),
        ({"input": 3}, "input is int"),
        ({"model": {"sha256": 7}}, "model.sha256 is int"),
    ],
)
def test_a_malformed_provenance_record_is_a_one_line_error(
    tmp_path: Path, synthetic_data: Path, exported_model: Path, record: object, problem: str
) -> None:
    """A list, a nested value or a number where a name belongs crashed mri-report with a traceback (issue 30)."""
    import json

    scored = tmp_path / "p.parquet"
    done = runner.invoke(
        score_app, [str(synthetic_data), "--out", str(scored), "--model", str(exported_model)]
    )
    assert done.exit_code == 0, done.output
    pl.read_parquet(scored).write_parquet(scored, metadata={"mri44.provenance": json.dumps(record)})
    result = runner.invoke(report_app, [str(scored), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and f"malformed ({problem})" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r.html").exists()


def test_predictions_without_an_error_column_are_refused_in_one_line(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    scored = tmp_path / "p.parquet"
    done = runner.invoke(
        score_app, [str(synthetic_data), "--out", str(scored), "--model", str(exported_model)]
    )
    assert done.exit_code == 0, done.output
    pl.read_parquet(scored).drop("error").write_parquet(tmp_path / "q.parquet")
    result = runner.invoke(report_app, [str(tmp_path / "q.parquet")])
    assert result.exit_code == 2 and "is not mri-score output (missing error)" in result.output


def test_the_report_shows_no_image_from_outside_its_folder(tmp_path: Path, synthetic_data: Path) -> None:
    """Predictions whose paths point outside the folder given (`../`, absolute, a link out of it) embedded those
    files in the report: a privacy leak once the report is shared (issue 30). They are counted, never shown."""
    from mri44.stages.score.report import render_report

    inside_dir = tmp_path / "shown"
    secret_dir = tmp_path / "secret"
    for folder in (inside_dir, secret_dir):
        folder.mkdir()
    source = sorted(synthetic_data.rglob("*.png"))[0]
    (inside_dir / "mine.png").write_bytes(source.read_bytes())
    (secret_dir / "private.png").write_bytes(source.read_bytes())
    (inside_dir / "link.png").symlink_to(secret_dir / "private.png")
    paths = ["mine.png", "../secret/private.png", str(secret_dir / "private.png"), "link.png"]
    frame = pl.DataFrame(
        {
            "path": paths,
            "status": ["ok"] * 4,
            "error": pl.Series([None] * 4, dtype=pl.String),
            "pred_class": ["A T1"] * 4,
            "confidence": [0.4, 0.3, 0.2, 0.1],
            "true_class": pl.Series([None] * 4, dtype=pl.String),
        }
    )
    html = render_report(frame, inside_dir, None, "t")
    assert html.count('class="thumb"') == 1 and 'alt="mine.png"' in html
    assert "3 file(s) lie outside the images folder" in html
