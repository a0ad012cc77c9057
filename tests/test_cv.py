"""Grouped K-fold cross-validation (train/cv.py): folds of whole groups, out-of-fold predictions, the paired test."""

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
from synthetic import make_dataset, tiny_run_config

from mri44.errors import SettingError
from mri44.ood import HELD_OUT_PASS, TURNED_HELD_OUT_PASS
from mri44.preprocess import PreprocessSpec
from mri44.run_folder import RunFolder
from mri44.stages.train.cv import (
    _teacher_fold,
    compare,
    ensemble_cv,
    fold_config,
    keep_results,
    make_folds,
    mcnemar_exact,
    prepare_folds,
    summarise,
)
from mri44.stages.train.dataset import scan_dataset
from mri44.stages.train.split import SplitConfig


def _with_neighbours(root: Path) -> Path:
    """Five re-encodings of one slice: one near-duplicate group that must stay in one fold."""
    folder = root / "Squaroma T2"
    first = sorted(folder.iterdir())[0]
    img = cv2.imdecode(np.fromfile(first, np.uint8), cv2.IMREAD_GRAYSCALE)
    for i in range(5):
        ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60 + 7 * i])
        (folder / f"neighbour {i}.jpg").write_bytes(data.tobytes())
    return root


def test_folds_hold_whole_groups_and_every_class(tmp_path: Path) -> None:
    manifest = scan_dataset(
        _with_neighbours(make_dataset(tmp_path, per_class=20)), PreprocessSpec(size=16), workers=2
    ).manifest
    folds = make_folds(manifest, 5, SplitConfig(seed=0))
    assert folds.height == manifest.height and set(folds["path"]) == set(manifest["path"])
    assert folds.group_by("group").agg(pl.col("fold").n_unique())["fold"].max() == 1  # no group straddles
    family = folds.filter(pl.col("path").str.contains("neighbour"))
    assert family["fold"].n_unique() == 1 and family["group"].n_unique() == 1
    per_class = folds.group_by("label").agg(pl.col("fold").n_unique())
    assert per_class["fold"].min() == 5  # every class (20+ images, many groups) is tested in every fold
    sizes = folds.group_by("fold").len()["len"]
    assert sizes.max() - sizes.min() <= 6  # the 6-image group can unbalance one fold, no more
    assert folds.equals(make_folds(manifest, 5, SplitConfig(seed=0)))
    assert not folds["fold"].equals(make_folds(manifest, 5, SplitConfig(seed=1))["fold"])
    with pytest.raises(SettingError, match="at least 2"):
        make_folds(manifest, 1, SplitConfig())


def test_mcnemar_exact_against_the_binomial_by_hand() -> None:
    # 1 against 9 discordant pairs: 2 * (C(10,0) + C(10,1)) / 2**10
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0


def _fake_cv(folder: Path, correct: list[bool], folds: list[int]) -> Path:
    folder.mkdir()
    n = len(correct)
    labels = ["A T1", "B T1"] * (n // 2)
    pl.DataFrame(
        {
            "path": [f"x{i}.jpg" for i in range(n)],
            "label": labels,
            "fold": folds,
            "pred_class": [lab if ok else "C T1" for lab, ok in zip(labels, correct, strict=True)],
            "correct": correct,
        }
    ).write_parquet(RunFolder(folder).out_of_fold)
    RunFolder(folder).cv_result.write_text(json.dumps({"pooled": {"accuracy": float(np.mean(correct))}}))
    return folder


def test_compare_pairs_images_and_counts_the_discordant_ones(tmp_path: Path) -> None:
    folds = [1, 2] * 5
    a = _fake_cv(tmp_path / "a", [True] * 2 + [False] * 8, folds)
    b = _fake_cv(tmp_path / "b", [True] * 10, folds)
    summary, recall = compare(a, b)
    assert (summary["only_a"], summary["only_b"], summary["images"]) == (0, 8, 10)
    assert summary["mcnemar_p"] == pytest.approx(2 / 2**8)
    assert recall["recall_b"].to_list() == [1.0, 1.0]
    assert sorted(recall["recall_a"].to_list()) == [0.2, 0.2]
    other = _fake_cv(tmp_path / "c", [True] * 10, [2, 1] * 5)
    with pytest.raises(SettingError, match="same images and folds"):
        compare(a, other)


def _running_cv(folder: Path, correct: list[bool], folds: list[int], finished: list[int]) -> Path:
    """A CV folder whose `finished` folds have written their test predictions and result.json; the others ran
    part way (predictions on disk from an earlier attempt, say, but no result)."""
    n = len(correct)
    labels = ["A T1", "B T1"] * (n // 2)
    frame = pl.DataFrame({"path": [f"x{i}.jpg" for i in range(n)], "label": labels, "fold": folds})
    folder.mkdir()
    frame.with_columns(group=pl.int_range(pl.len())).write_parquet(RunFolder(folder).folds)
    for fold in set(folds):
        run = RunFolder(folder).fold(fold)
        run.root.mkdir()
        rows = [i for i, f in enumerate(folds) if f == fold]
        pred = [labels[i] if correct[i] else "C T1" for i in rows]
        frame[rows].select("path").with_columns(pred_class=pl.Series(pred)).write_parquet(
            run.predictions("test")
        )
        if fold in finished:
            run.result.write_text("{}")
    return folder


def test_compare_screens_a_running_recipe_on_the_folds_both_finished(tmp_path: Path) -> None:
    folds = [1, 2] * 5  # images 0, 2, 4, 6, 8 in fold 1
    done = _fake_cv(tmp_path / "done", [True] * 10, folds)
    running = _running_cv(tmp_path / "running", [False] * 4 + [True] * 6, folds, finished=[1])
    with pytest.raises(SettingError, match="--finished-folds"):
        compare(done, running)
    summary, recall = compare(done, running, finished_folds=True)
    # fold 1 only: images 0 and 2 wrong in the running one, 4, 6, 8 right; fold 2's rows (no result) left out
    assert (summary["images"], summary["folds"], summary["only_a"], summary["only_b"]) == (5, [1], 2, 0)
    pooled = summary["figures"][str(running)].filter(fold="all")
    assert pooled["accuracy"][0] == pytest.approx(3 / 5)
    assert recall["n"].sum() == 5
    with pytest.raises(SettingError, match="no fold has finished"):
        compare(done, _running_cv(tmp_path / "new", [True] * 10, folds, finished=[]), finished_folds=True)


def test_kept_results_compare_like_the_cv_folder_and_leave_models_behind(tmp_path: Path) -> None:
    """A CV's results kept in the work tree (scripts/keep_cv.py) pair with a new run as the CV folder did."""
    folds = [1, 2] * 5
    done = _running_cv(tmp_path / "done", [True, False] * 5, folds, finished=[1, 2])
    for fold in (1, 2):
        _checkpoint(RunFolder(done).fold(fold).best)
    (done / "cache").mkdir()
    (done / "cache" / "features.npy").write_bytes(b"features")
    new = _running_cv(tmp_path / "new", [True] * 10, folds, finished=[1])
    copied = keep_results(done, tmp_path / "docs" / "kept")
    kept = tmp_path / "docs" / "kept"
    assert {p.relative_to(kept).as_posix() for p in copied} == {
        "classes.json",
        "folds.parquet",
        "fold-1/result.json",
        "fold-1/test_predictions.parquet",
        "fold-2/result.json",
        "fold-2/test_predictions.parquet",
    }
    assert not list(kept.rglob("*.pt")) and not (kept / "cache").exists()
    assert not [p for p in kept.parent.iterdir() if p != kept]  # no staging folder left behind
    before, recall_before = compare(done, new, finished_folds=True)
    after, recall_after = compare(kept, new, finished_folds=True)
    assert (after["only_a"], after["only_b"], after["images"]) == (before["only_a"], before["only_b"], 5)
    assert recall_after.equals(recall_before)
    with pytest.raises(SettingError, match="remove it first"):
        keep_results(done, kept)
    with pytest.raises(SettingError, match="no fold has finished"):
        keep_results(_running_cv(tmp_path / "idle", [True] * 10, folds, finished=[]), tmp_path / "k2")
    assert not (tmp_path / "k2").exists()


def _checkpoint(path: Path) -> None:
    """A stand-in fold model: only its class names are read."""
    import torch

    from mri44.checkpoint import Checkpoint

    Checkpoint({"w": torch.zeros(1)}, ["A T1", "B T1", "C T1"], PreprocessSpec()).save(path)


def test_a_cv_teacher_must_have_the_same_folds(tmp_path: Path) -> None:
    folds = pl.DataFrame({"path": ["a", "b", "c"], "label": ["x"] * 3, "group": [0, 1, 2], "fold": [1, 2, 1]})
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    folds.write_parquet(teacher / "folds.parquet")
    with pytest.raises(SettingError, match="no finished run fold-2"):
        _teacher_fold(teacher, folds, (2,))
    (teacher / "fold-2").mkdir()
    RunFolder(teacher).fold(2).best.write_bytes(b"")
    assert _teacher_fold(teacher, folds, (2,)) == teacher / "fold-2"
    with pytest.raises(SettingError, match="--leave-out 2"):  # a pair run that was never trained
        _teacher_fold(teacher, folds, (1, 2))
    plain = tmp_path / "plain-run"
    assert _teacher_fold(plain, folds, (2,)) == plain  # not a CV folder: the same teacher for every fold
    with pytest.raises(SettingError, match="other folds"):
        _teacher_fold(teacher, folds.with_columns(fold=pl.Series([2, 1, 1])), (1,))


def _teacher_cv(folder: Path, folds: pl.DataFrame, runs: list[tuple[int, ...]]) -> Path:
    """A CV teacher as training leaves it, as far as cross_fit_teachers reads it: folds and each run's best.pt."""
    folder.mkdir()
    folds.write_parquet(RunFolder(folder).folds)
    for left_out in runs:
        RunFolder(folder).fold(*left_out).root.mkdir()
        RunFolder(folder).fold(*left_out).best.write_bytes(b"")
    return folder


def test_cross_fit_labels_each_image_by_a_teacher_that_saw_neither_it_nor_the_test_fold(
    tmp_path: Path,
) -> None:
    from mri44.stages.train.cv import cross_fit_teachers

    folds = pl.DataFrame({"path": [f"x{i}" for i in range(6)], "label": ["A T1"] * 6, "fold": [1, 2, 3] * 2})
    pairs = _teacher_cv(tmp_path / "pairs", folds, [(1, 2), (1, 3), (2, 3)])
    onnx = tmp_path / "teacher.onnx"  # not a CV folder: labels every part
    train = ["x1", "x2", "x4", "x5"]  # folds 2, 3, 2, 3: the student's fold 1 is x0 and x3
    parts = cross_fit_teachers((pairs, onnx), train, (1,), ["x0", "x3"])
    assert [(runs, rows.tolist()) for runs, rows in parts] == [
        ((pairs / "fold-1-2", onnx), [0, 2]),
        ((pairs / "fold-1-3", onnx), [1, 3]),
    ]
    with pytest.raises(SettingError, match="test image"):  # x1 (fold 2) trained fold-1-3
        cross_fit_teachers((pairs,), ["x2", "x5"], (1,), ["x0", "x1"])
    with pytest.raises(SettingError, match="not in the teacher CV"):
        cross_fit_teachers((pairs,), ["x1", "extra.jpg"], (1,), [])
    with pytest.raises(SettingError, match="cross-validation folder"):
        cross_fit_teachers((onnx,), train, (1,), [])
    # An all-data student: an ordinary CV teacher, each image by the fold run that left its fold out.
    plain = _teacher_cv(tmp_path / "plain", folds, [(1,), (2,), (3,)])
    parts = cross_fit_teachers((plain,), [f"x{i}" for i in range(6)], (), [])
    assert [(runs, rows.tolist()) for runs, rows in parts] == [
        ((plain / "fold-1",), [0, 3]),
        ((plain / "fold-2",), [1, 4]),
        ((plain / "fold-3",), [2, 5]),
    ]
    with pytest.raises(SettingError, match="--leave-out 2"):  # a student CV needs pair runs
        cross_fit_teachers((plain,), train, (1,), ["x0", "x3"])
    with pytest.raises(SettingError, match="trained the teacher CV"):  # --holdout images the teacher saw
        cross_fit_teachers((plain,), ["x1", "x2"], (), ["x0"])


def _logits_cv(folder: Path, logits: np.ndarray, folds: list[int], labels: list[str]) -> Path:
    """A CV folder as training leaves it, without weights: folds, each fold's test logits, fold 1's classes."""
    frame = pl.DataFrame({"path": [f"x{i}.jpg" for i in range(len(folds))], "label": labels, "fold": folds})
    folder.mkdir()
    frame.with_columns(group=pl.int_range(pl.len())).write_parquet(RunFolder(folder).folds)
    for fold in set(folds):
        RunFolder(folder).fold(fold).root.mkdir()
        rows = [i for i, f in enumerate(folds) if f == fold]
        part = frame[rows].select("path", "label").with_columns(logits=pl.Series(logits[rows]))
        part.write_parquet(RunFolder(folder).fold(fold).logits("test"))
    _checkpoint(RunFolder(folder).fold(1).best)
    return folder


def test_an_ensemble_of_cv_runs_scores_each_image_by_the_geometric_mean(tmp_path: Path) -> None:
    """Two members that each get a different half wrong: their geometric mean gets every image right, and the
    result is a CV folder compare() pairs with its members."""
    from scipy.special import log_softmax

    folds, labels = [1, 2] * 4, ["A T1", "B T1"] * 4
    truth = np.array([0, 1] * 4)
    sure = np.eye(3, dtype=np.float32)[truth] * 4.0  # 4 logits for the right class
    a_logits, b_logits = sure.copy(), sure.copy()
    a_logits[:4, 2] = 5.0  # a: images 0-3 prefer C, but only just
    b_logits[4:, 2] = 5.0
    a = _logits_cv(tmp_path / "a", a_logits, folds, labels)
    b = _logits_cv(tmp_path / "b", b_logits, folds, labels)
    result = ensemble_cv([a, b], tmp_path / "ens")
    oof = pl.read_parquet(RunFolder(tmp_path / "ens").out_of_fold)
    assert result["pooled"]["accuracy"] == 1.0 and oof["correct"].all() and result["ood"] is None
    expected = (log_softmax(a_logits.astype(np.float64), 1) + log_softmax(b_logits.astype(np.float64), 1)) / 2
    got = np.stack(oof.sort("path")["logits"].to_list())
    order = np.argsort([f"x{i}.jpg" for i in range(8)])
    np.testing.assert_allclose(got, expected[order], atol=1e-5)
    summarise(a, pl.read_parquet(RunFolder(a).folds))  # a member's own tables, paired with the ensemble's
    summary, _ = compare(a, tmp_path / "ens")
    assert (summary["only_a"], summary["only_b"]) == (0, 4)  # a is wrong on images 0-3 only
    with pytest.raises(SettingError, match="exists"):
        ensemble_cv([a, b], tmp_path / "ens")
    for member in (a, b):  # kept without their models (scripts/keep_cv.py), they make the same ensemble
        for fold in (1, 2):
            RunFolder(member).fold(fold).result.write_text("{}")
        keep_results(member, tmp_path / "kept" / member.name)
    assert not list((tmp_path / "kept").rglob("*.pt"))
    kept = ensemble_cv([tmp_path / "kept" / "a", tmp_path / "kept" / "b"], tmp_path / "ens-kept")
    assert kept["pooled"] == result["pooled"] and kept["temperature"] == pytest.approx(result["temperature"])
    with pytest.raises(SettingError, match="other folds"):
        ensemble_cv([a, _logits_cv(tmp_path / "c", a_logits, [2, 1] * 4, labels)], tmp_path / "ens2")


@pytest.mark.slow
def test_cross_validation_scores_every_image_once_and_resumes(tmp_path: Path) -> None:
    from mri44.stages.train.loop import run_training

    data = make_dataset(tmp_path / "data", per_class=9)
    cfg = tiny_run_config(data, tmp_path / "cv", epochs=2, folds=3)
    result = run_training(cfg)
    oof = pl.read_parquet(RunFolder(tmp_path / "cv").out_of_fold)
    folds = pl.read_parquet(tmp_path / "cv" / "folds.parquet")
    assert oof.height == folds.height == 45 and oof["path"].n_unique() == 45
    assert oof.join(folds, on="path").filter(pl.col("fold") != pl.col("fold_right")).height == 0
    for fold in (1, 2, 3):  # each fold's model was scored on exactly its own fold, none it trained on
        split = pl.read_parquet(tmp_path / "cv" / f"fold-{fold}" / "split.parquet")
        tested = set(split.filter(split="test")["path"])
        assert tested == set(folds.filter(fold=fold)["path"]) and split.filter(split="val").height == 0
    probs = np.stack(oof["probs"].to_list())
    assert probs.shape == (45, 5) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert result["pooled"]["accuracy"] == pytest.approx(oof["correct"].mean())
    assert len(result["mean_sd"]["accuracy"]) == 2 and result["temperature"] > 0
    summary = pl.read_csv(tmp_path / "cv" / "cv_metrics" / "summary.csv")
    assert summary["n"][0] == 45
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(cfg)
    stamp = (tmp_path / "cv" / "fold-2" / "best.pt").stat().st_mtime_ns
    again = run_training(replace(cfg, resume=True))  # every fold done: nothing retrains, the tables again
    assert (tmp_path / "cv" / "fold-2" / "best.pt").stat().st_mtime_ns == stamp
    assert again["pooled"] == result["pooled"]
    # Kept without its models (scripts/keep_cv.py) and continued elsewhere: the kept folds count as done, the
    # missing one trains, and the summary (out-of-distribution evidence included) is the same.
    import shutil

    copied = keep_results(tmp_path / "cv", tmp_path / "kept")
    assert (
        not [p for p in copied if p.suffix == ".pt"]
        and (tmp_path / "kept" / "fold-1" / "ood_evidence.json").is_file()
    )
    shutil.copytree(tmp_path / "kept", tmp_path / "cv2")
    shutil.rmtree(tmp_path / "cv2" / "fold-3")
    continued = run_training(replace(cfg, out=tmp_path / "cv2", resume=True))
    assert not (tmp_path / "cv2" / "fold-1" / "best.pt").exists()
    assert (tmp_path / "cv2" / "fold-3" / "best.pt").is_file()
    assert continued["pooled"] == result["pooled"] and continued["ood"] == result["ood"]
    keep_results(tmp_path / "cv2", tmp_path / "kept2")  # kept again: fold 1 keeps the evidence it came with
    assert (tmp_path / "kept2" / "fold-1" / "ood_evidence.json").read_text() == (
        tmp_path / "kept" / "fold-1" / "ood_evidence.json"
    ).read_text()
    with pytest.raises(SettingError, match="image_size"):
        run_training(replace(cfg, resume=True, image_size=40))
    # The threshold rule measured on unseen images, and an all-data fit that takes it with the temperature.
    ood = result["ood"]
    assert (
        ood["passing"] == HELD_OUT_PASS
        and 0 < ood["loo_pass_rate"] <= 1
        and len(ood["flagged_at_fold_thresholds"]) == 3
    )
    # The probe's threshold: the quantile of the folds' out-of-fold turned scores that lets 99.5 % of them pass.
    turned = np.concatenate(
        [
            pl.read_parquet(tmp_path / "cv" / f"fold-{k}" / "test_predictions.parquet")["turned_score"]
            for k in (1, 2, 3)
        ]
    )
    assert ood["turned_threshold"] == pytest.approx(np.quantile(turned, TURNED_HELD_OUT_PASS))
    final = run_training(
        tiny_run_config(data, tmp_path / "all", epochs=1, all_data=True, temperature_from=tmp_path / "cv")
    )
    assert final["temperature"] == pytest.approx(result["temperature"])
    from mri44.checkpoint import Checkpoint

    best = Checkpoint.load(tmp_path / "all" / "best.pt")
    assert best.ood is not None and "out-of-fold" in best.temperature_source
    assert f"{ood['loo_pass_rate']:.2%}" in best.ood.source and "cv's fold models pass 98%" in best.ood.source
    assert best.ood.orientation is not None and best.ood.orientation.threshold == ood["turned_threshold"]


def test_holdout_keeps_whole_groups_out_of_an_all_data_fit(tmp_path: Path) -> None:
    from mri44.stages.train.data import holdout_split

    root = _with_neighbours(make_dataset(tmp_path / "data", per_class=6))
    manifest = scan_dataset(root, PreprocessSpec(size=16), workers=2).manifest
    first = sorted(p for p in (root / "Squaroma T2").iterdir() if not p.name.startswith("neighbour"))[0]
    held = tmp_path / "examples" / "Squaroma T2"
    held.mkdir(parents=True)
    (held / f"{first.stem}.jpg").write_bytes(first.read_bytes())  # a re-encoded copy, as examples/ holds
    split = holdout_split(manifest, tmp_path / "examples", SplitConfig(phash_distance=6, max_group_share=1.0))
    test = split.filter(split="test")
    assert f"Squaroma T2/{first.name}" in test["path"].to_list()
    assert test.filter(pl.col("path").str.contains("neighbour")).height == 5  # its near-duplicates with it
    assert split.filter(split="train").height == manifest.height - test.height > 0
    # A CV with --holdout keeps the same groups out of every fold: no run trains or is tested on them.
    cfg = tiny_run_config(
        root,
        tmp_path / "cv",
        folds=3,
        holdout=tmp_path / "examples",
        split=SplitConfig(phash_distance=6, max_group_share=1.0),
    )
    folds = prepare_folds(cfg, manifest)
    assert set(folds["path"]) == set(manifest["path"]) - set(test["path"])
    for k in (1, 2, 3):
        run_split = pl.read_parquet(RunFolder(cfg.out).fold_split(k))
        assert set(run_split.filter(split="holdout")["path"]) == set(test["path"])
        assert set(run_split.filter(split="test")["path"]) == set(folds.filter(fold=k)["path"])
        assert run_split.height == manifest.height
    assert fold_config(cfg, folds, (1,)).holdout is None  # the run's split file carries it
    prepare_folds(cfg, manifest)  # resumed: the same images in the folds
    (tmp_path / "examples" / "Circloma T1").mkdir()
    (tmp_path / "examples" / "Circloma T1" / "not in the data.jpg").write_bytes(first.read_bytes())
    with pytest.raises(SettingError, match="match no --data image"):
        holdout_split(manifest, tmp_path / "examples", SplitConfig())


@pytest.mark.slow
def test_a_cross_fitting_student_cv_learns_from_pair_runs_of_its_teacher(tmp_path: Path) -> None:
    """--leave-out 2 trains one teacher run per pair of folds; a student CV with --cross-fit then labels fold k's
    training image in fold j by the teacher's fold-j-k, and an all-data student by an ordinary CV's fold-j."""
    import torch

    from mri44.stages.train.loop import run_training
    from mri44.stages.train.recipes import get_recipe

    data = make_dataset(tmp_path / "data", per_class=9)
    pairs = run_training(tiny_run_config(data, tmp_path / "pairs", epochs=1, folds=3, leave_out=2))
    assert pairs == {"runs": ["fold-1-2", "fold-1-3", "fold-2-3"], "leave_out": 2}
    folds = pl.read_parquet(RunFolder(tmp_path / "pairs").folds)
    split = pl.read_parquet(RunFolder(tmp_path / "pairs").fold(1, 3).split)
    assert set(split.filter(split="test")["path"]) == set(folds.filter(pl.col("fold").is_in([1, 3]))["path"])
    assert set(split.filter(split="train")["path"]) == set(folds.filter(fold=2)["path"])
    from mri44.checkpoint import Checkpoint

    pair_ood = Checkpoint.load(RunFolder(tmp_path / "pairs").fold(1, 3).best).ood
    assert pair_ood is not None and pair_ood.orientation is None  # a teacher only: no orientation probe
    student = {
        "recipe": get_recipe("distill"),
        "epochs": 1,
        "soft_label_views": 2,
        "cross_fit": True,
    }
    result = run_training(
        tiny_run_config(data, tmp_path / "s", folds=3, soft_labels=(tmp_path / "pairs",), **student)
    )
    assert result["images"] == 45
    fold_ood = Checkpoint.load(RunFolder(tmp_path / "s").fold(2).best).ood
    assert fold_ood is not None and fold_ood.orientation is not None  # an ordinary fold keeps its probe
    sizes = folds.group_by("fold").len().sort("fold")["len"].to_list()
    teacher = torch.load(RunFolder(tmp_path / "s").fold(2).root / "soft_labels.pt", weights_only=True)[
        "teacher"
    ]
    described = teacher.removeprefix("out of fold: ").split("; ")
    assert [d.split(" images by ")[0] for d in described] == [str(sizes[0]), str(sizes[2])]
    assert "pairs/fold-1-2/best.pt" in described[0] and "pairs/fold-2-3/best.pt" in described[1]
    with pytest.raises(SettingError, match="--leave-out 2"):  # an ordinary CV teacher cannot cross-fit a CV
        run_training(
            tiny_run_config(data, tmp_path / "s2", folds=3, soft_labels=(tmp_path / "s",), **student)
        )
    final = run_training(
        tiny_run_config(data, tmp_path / "all", all_data=True, soft_labels=(tmp_path / "s",), **student)
    )
    assert final["best_epoch"] == 1
    teacher = torch.load(tmp_path / "all" / "soft_labels.pt", weights_only=True)["teacher"]
    assert [f"s/fold-{k}/best.pt" in part for k, part in enumerate(teacher.split("; "), 1)] == [True] * 3
    # An all-data fit that holds out examples learns only from teachers that never saw them either.
    first = sorted((data / "Squaroma T2").iterdir())[0]
    (tmp_path / "examples" / "Squaroma T2").mkdir(parents=True)
    (tmp_path / "examples" / "Squaroma T2" / first.name).write_bytes(first.read_bytes())
    held = {"holdout": tmp_path / "examples", "soft_labels": (tmp_path / "s",), **student}
    with pytest.raises(SettingError, match="trained the teacher CV"):
        run_training(tiny_run_config(data, tmp_path / "all-held", all_data=True, **held))
    run_training(tiny_run_config(data, tmp_path / "t-held", epochs=1, folds=3, holdout=tmp_path / "examples"))
    assert f"Squaroma T2/{first.name}" not in pl.read_parquet(RunFolder(tmp_path / "t-held").folds)["path"]
    held["soft_labels"] = (tmp_path / "t-held",)
    final = run_training(tiny_run_config(data, tmp_path / "all-held2", all_data=True, **held))
    assert final["test"]["accuracy"] in (0.0, 1.0)  # the one held-out image, scored at the end
