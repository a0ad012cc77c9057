"""Grouped K-fold cross-validation: `python -m train --folds K --out OUT ...` (issue 29).

One 15 % test part cannot rank recipes that differ by a few points, and it costs the model a third of its images.
Here every image is scored once by a model that never saw its near-duplicate group: the groups of the split
(train/split.group_ids) are dealt into K folds by the split's own rule (train/split.deal_groups), fold k trains
on the others in OUT/fold-k (an ordinary run folder: no validation part, the last epoch is the model) and its
logits on fold k are gathered into OUT/oof.parquet. The temperature is fitted on all out-of-fold logits at once,
the largest honest set there is. Runs resume fold by fold; the folds share one decode and feature cache.

A distilling run takes a CV teacher (`--soft-labels TEACHER_CV` or `--teacher TEACHER_CV`, a folder made here
with the same folds): fold k learns from the teacher's fold k, which never saw fold k's images either, so fold k
stays an honest test. The teacher did train on the images it labels, though, and a teacher trained with label
smoothing answers on its own training images with little more than the smoothed label (docs/recipes.md).
`--cross-fit` gives out-of-fold soft labels instead: each training image is labelled by a teacher run that never
saw it. For a student CV that teacher must also never have seen the student's test fold, so the teacher CV leaves
out pairs of folds (`--leave-out 2`: OUT/fold-j-k trains on the other K-2 folds); fold k's image in fold j is
labelled by fold-j-k. An all-data student takes an ordinary CV teacher: its image in fold j by fold-j.

`compare(a, b)` pairs two CV folders image by image: McNemar's exact test on out-of-fold correctness and the
per-class recall of both (scripts/cv_compare.py).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.special import log_softmax

from mri44.atomic import atomic_path, write_text_atomic
from mri44.calibration import fit_temperature, softmax
from mri44.checkpoint import Checkpoint
from mri44.errors import SettingError
from mri44.metrics import expected_calibration_error, metric_tables, write_tables
from mri44.ood import HELD_OUT_PASS, TURNED_HELD_OUT_PASS, pass_rate_for
from mri44.run_folder import RunFolder

from .config import TrainConfig
from .data import holdout_split
from .split import SplitConfig, deal_groups, group_ids

log = logging.getLogger(__name__)


def make_folds(manifest: pl.DataFrame, k: int, split: SplitConfig) -> pl.DataFrame:
    """path, label, group, fold: whole near-duplicate groups dealt into k folds, each class spread evenly."""
    if k < 2:
        raise SettingError(f"--folds must be at least 2, got {k}")
    groups = group_ids(manifest, split.phash_distance, split.max_group_share)
    frame = manifest.select("path", "label").with_columns(group=pl.Series(groups, dtype=pl.Int64))
    assignment = deal_groups(frame, np.full(k, 1.0 / k), split.seed)
    return frame.with_columns(
        fold=pl.col("group").replace_strict(assignment, return_dtype=pl.Int64) + 1
    ).sort("path")


def is_cv_folder(path: Path | None) -> bool:
    return path is not None and RunFolder(Path(path)).folds.is_file()


def fold_runs(k: int, leave_out: int) -> list[tuple[int, ...]]:
    """The runs of a K-fold CV: the folds each leaves out, (1,), (2,), ... or with leave_out 2 every pair."""
    if not 1 <= leave_out < k:
        raise SettingError(f"--leave-out must be at least 1 and below --folds ({k}), got {leave_out}")
    return list(itertools.combinations(range(1, k + 1), leave_out))


def fold_split(
    folds: pl.DataFrame, left_out: tuple[int, ...], held: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The split file of one run: the folds it leaves out are the test part, the rest train, nothing validates;
    `held` (path, group: --holdout's groups) are in no fold, so no run trains or is tested on them."""
    split = folds.select(
        "path",
        "group",
        split=pl.when(pl.col("fold").is_in(list(left_out))).then(pl.lit("test")).otherwise(pl.lit("train")),
    )
    if held is None:
        return split
    return pl.concat([split, held.select("path", "group", split=pl.lit(HELD_OUT))])


# The split name of --holdout images in a CV's runs: neither trained nor tested on (train/data.py reads only
# train, val and test).
HELD_OUT = "holdout"


def held_groups(cfg: TrainConfig, manifest: pl.DataFrame) -> pl.DataFrame | None:
    """path, group of the images a CV keeps out of every fold (--holdout: the near-duplicate groups of those
    images, as an all-data fit keeps them out), so the CV's models can teach an all-data fit that holds them out."""
    if cfg.holdout is None:
        return None
    split = holdout_split(manifest, cfg.holdout, cfg.split)
    return split.filter(split="test").select("path", "group")


def _require_same_folds(source: Path, folds: pl.DataFrame) -> None:
    theirs = pl.read_parquet(RunFolder(source).folds).select("path", "fold").sort("path")
    if not theirs.equals(folds.select("path", "fold").sort("path")):
        raise SettingError(
            f"{source} was cross-validated on other folds: a fold's model would have seen its test images; "
            "use the same data, --seed and split settings"
        )


def _teacher_run(source: Path, left_out: tuple[int, ...]) -> Path:
    """The run of CV teacher `source` that left out exactly these folds; it must have finished."""
    run = RunFolder(source).fold(*left_out)
    if not run.best.is_file():
        leave = len(left_out)
        kept = " (kept without its model: train the teacher CV anew)" if run.result.is_file() else ""
        raise SettingError(
            f"{source} has no finished run {run.root.name}{kept} (a model that never saw folds "
            f"{', '.join(map(str, left_out))}): cross-validate the teacher with --leave-out {leave}"
        )
    return run.root


def _teacher_fold(source: Path, folds: pl.DataFrame, left_out: tuple[int, ...]) -> Path:
    """A CV teacher's run for this run (its folds must be ours); any other teacher as it is."""
    if not is_cv_folder(source):
        return source
    _require_same_folds(source, folds)
    return _teacher_run(source, left_out)


def fold_config(cfg: TrainConfig, folds: pl.DataFrame, left_out: tuple[int, ...]) -> TrainConfig:
    out = RunFolder(cfg.out).fold(*left_out)
    return replace(
        cfg,
        out=out.root,
        folds=0,
        leave_out=1,
        left_out=left_out,
        holdout=None,  # its groups are in the run's split file, as neither train nor test
        split_file=RunFolder(cfg.out).fold_split(*left_out),
        # A cross-fitting student keeps its CV teachers whole: each image picks its run (cross_fit_teachers).
        soft_labels=tuple(
            _checked_cv(source, folds) if cfg.cross_fit else _teacher_fold(source, folds, left_out)
            for source in cfg.soft_labels
        ),
        teacher=None if cfg.teacher is None else _teacher_fold(cfg.teacher, folds, left_out),
        resume=out.last.is_file(),
    )


def _checked_cv(source: Path, folds: pl.DataFrame) -> Path:
    if is_cv_folder(source):
        _require_same_folds(source, folds)
    return source


def cross_fit_teachers(
    sources: tuple[Path, ...], paths: list[str], left_out: tuple[int, ...], test_paths: list[str]
) -> list[tuple[tuple[Path, ...], np.ndarray]]:
    """Out-of-fold soft labels (--cross-fit): for the images at `paths` (a run's training rows), one part per fold
    j of the CV teachers: (the teachers of those images, their positions in `paths`). A CV teacher's run for fold
    j left out fold j and this run's own test folds (`left_out`; none for an all-data run), so it never saw the
    image it labels nor an image this run is judged on; any other teacher (an ONNX file, say) labels every part.
    Each of this run's test images must therefore be in a CV teacher's data only inside `left_out`."""
    cv = [source for source in sources if is_cv_folder(source)]
    if not cv:
        raise SettingError("--cross-fit needs a cross-validation folder among --soft-labels")
    folds = pl.read_parquet(RunFolder(cv[0]).folds).select("path", "fold")
    for source in cv[1:]:
        _require_same_folds(source, folds)
    fold_of = dict(zip(folds["path"].to_list(), folds["fold"].to_list(), strict=True))
    seen = [p for p in test_paths if p in fold_of and fold_of[p] not in left_out]
    if seen:
        raise SettingError(
            f"{len(seen)} test image(s) of this run trained the teacher CV {cv[0]}, e.g. {seen[0]}: its "
            "soft labels would carry them; cross-validate the teacher without them"
        )
    unknown = [p for p in paths if p not in fold_of]
    if unknown:
        raise SettingError(
            f"{len(unknown)} training image(s) are not in the teacher CV {cv[0]}, e.g. {unknown[0]} "
            "(--extra-images have no fold): --cross-fit labels only the teacher's own images"
        )
    image_folds = np.array([fold_of[p] for p in paths])
    parts = []
    for fold in sorted(set(image_folds.tolist())):
        if fold in left_out:
            raise SettingError(f"fold {fold} is this run's test part and a training part at once")
        runs = tuple(_teacher_run(s, tuple(sorted((*left_out, fold)))) if s in cv else s for s in sources)
        parts.append((runs, np.flatnonzero(image_folds == fold)))
    return parts


def prepare_folds(cfg: TrainConfig, manifest: pl.DataFrame) -> pl.DataFrame:
    """OUT/folds.parquet (made once, then reused, so a resumed CV keeps its folds) and one split file per run;
    each run's folder shares OUT/cache (decoded images, frozen-stage features)."""
    path = RunFolder(cfg.out).folds
    held = held_groups(cfg, manifest)
    usable = manifest if held is None else manifest.filter(~pl.col("path").is_in(held["path"].implode()))
    if path.is_file():
        folds = pl.read_parquet(path)
        if folds["fold"].max() != cfg.folds or set(folds["path"]) != set(usable["path"]):
            raise SettingError(f"{path} holds other folds or other images; use a new --out")
    else:
        folds = make_folds(usable, cfg.folds, cfg.split)
        with atomic_path(path) as tmp:
            folds.write_parquet(tmp)
    log.info("%d folds of %s images", cfg.folds, folds.group_by("fold").len().sort("fold")["len"].to_list())
    if held is not None:
        log.info("%d images in --holdout's groups: in no fold", held.height)
    for left_out in fold_runs(cfg.folds, cfg.leave_out):
        with atomic_path(RunFolder(cfg.out).fold_split(*left_out)) as tmp:
            fold_split(folds, left_out, held).write_parquet(tmp)
        run = RunFolder(cfg.out).fold(*left_out).root
        run.mkdir(exist_ok=True)
        if not (run / "cache").is_symlink() and not (run / "cache").exists():
            (run / "cache").symlink_to(Path("..") / "cache", target_is_directory=True)
    return folds


def run_cv(cfg: TrainConfig, manifest: pl.DataFrame, train_one: Any) -> dict[str, Any]:
    """Every unfinished run (resumed where it stopped), then the out-of-fold tables. train_one(cfg) is
    train/loop.run_training for one run. With --leave-out 2 an image is tested by several runs, so there is no
    single out-of-fold prediction to pool: the runs are the product (a cross-fitting student's teachers)."""
    folds = prepare_folds(cfg, manifest)
    runs = fold_runs(cfg.folds, cfg.leave_out)
    for number, left_out in enumerate(runs, 1):
        name = RunFolder(cfg.out).fold(*left_out).root.name
        if RunFolder(cfg.out).fold(*left_out).result.is_file():
            log.info("%s (%d/%d): done before", name, number, len(runs))
            continue
        log.info("%s (%d/%d)", name, number, len(runs))
        train_one(fold_config(cfg, folds, left_out))
    if cfg.leave_out > 1:
        return {"runs": [RunFolder(cfg.out).fold(*r).root.name for r in runs], "leave_out": cfg.leave_out}
    return summarise(cfg.out, folds)


def out_of_fold(out: Path, folds: pl.DataFrame) -> pl.DataFrame:
    """Every fold's test logits, joined to the folds: one row per image."""
    parts = [pl.read_parquet(RunFolder(out).fold(f).logits("test")) for f in sorted(folds["fold"].unique())]
    logits = pl.concat(parts).select("path", "logits")
    oof = folds.select("path", "label", "fold").join(logits, on="path", how="left")
    missing = oof.filter(pl.col("logits").is_null())
    if missing.height:
        raise SettingError(f"{missing.height} image(s) have no out-of-fold logits, e.g. {missing['path'][0]}")
    return oof.sort("path")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def fold_figures(oof: pl.DataFrame) -> pl.DataFrame:
    """One row per fold and for all images pooled: accuracy, macro-F1, tumour-type and contrast accuracy, and
    accuracy per contrast."""
    rows = []
    for fold, part in [(str(f), oof.filter(fold=f)) for f in sorted(oof["fold"].unique())] + [("all", oof)]:
        tables = metric_tables(part["label"], part["pred_class"])
        row: dict[str, Any] = {"fold": fold, **tables["summary"].row(0, named=True)}
        for contrast, acc in tables["per_contrast"].select("contrast", "accuracy").iter_rows():
            row[f"accuracy_{contrast}"] = acc
        rows.append(row)
    return pl.DataFrame(rows)


FIGURES = (
    "accuracy",
    "macro_f1",
    "tumor_type_accuracy",
    "contrast_accuracy",
    "accuracy_T1",
    "accuracy_T1C+",
    "accuracy_T2",
)


def summarise(out: Path, folds: pl.DataFrame, classes: list[str] | None = None) -> dict[str, Any]:
    """oof.parquet, cv_metrics/ (the pooled out-of-fold tables plus per-fold figures) and cv_result.json. classes:
    given for an ensemble (ensemble_cv), whose folds hold logits but no model; else fold 1's."""
    oof = out_of_fold(out, folds)
    logits = np.stack(oof["logits"].to_list()).astype(np.float32)
    has_models = classes is None
    classes = cv_classes(out) if classes is None else classes
    labels = oof["label"].replace_strict({c: i for i, c in enumerate(classes)}, return_dtype=pl.Int64)
    temperature = fit_temperature(logits, labels.to_numpy().copy())
    probs = softmax(logits, temperature)
    pred = probs.argmax(1)
    correct = pred == labels.to_numpy()
    oof = oof.with_columns(
        pred_class=pl.Series(np.asarray(classes)[pred]),
        confidence=pl.Series(probs.max(1).astype(np.float32)),
        correct=pl.Series(correct),
        probs=pl.Series(probs.astype(np.float32)),
    )
    with atomic_path(RunFolder(out).out_of_fold) as tmp:
        oof.write_parquet(tmp)
    tables = metric_tables(oof["label"], oof["pred_class"])
    per_fold = fold_figures(oof)
    tables["folds"] = per_fold
    write_tables(tables, RunFolder(out).cv_metrics, classes)
    fold_rows = per_fold.filter(pl.col("fold") != "all")
    result: dict[str, Any] = {
        "folds": folds["fold"].n_unique(),
        "images": oof.height,
        "temperature": temperature,
        "ece_before_temperature": expected_calibration_error(softmax(logits).max(1), correct),
        "ece": expected_calibration_error(probs.max(1), correct),
        "pooled": {
            name: per_fold.filter(fold="all")[name][0] for name in FIGURES if name in per_fold.columns
        },
        "mean_sd": {
            name: _mean_sd(fold_rows[name].drop_nulls().to_list())
            for name in FIGURES
            if name in fold_rows.columns
        },
        "classes_never_right": tables["per_class"]
        .filter(pl.col("n") > 0, pl.col("recall") == 0)["class"]
        .to_list(),
    }
    result["ood"] = held_out_ood(out, folds) if has_models else None
    write_text_atomic(RunFolder(out).cv_result, json.dumps(result, indent=2))
    log.info(
        "out-of-fold (%d images, %d folds): accuracy %.4f +- %.4f, macro-F1 %.4f +- %.4f; temperature %.3f",
        oof.height,
        result["folds"],
        *result["mean_sd"]["accuracy"],
        *result["mean_sd"]["macro_f1"],
        temperature,
    )
    return result


def held_out_ood(out: Path, folds: pl.DataFrame) -> dict[str, Any] | None:
    """The out-of-distribution thresholds measured on unseen images (issue 32), for an all-data fit
    (--temperature-from this folder, scripts/fit_ood.py --calibration-from):
    - the feature distance: per fold, the leave-one-out pass rate of its reference at the threshold that lets
      HELD_OUT_PASS of its test images through (mri44.ood.pass_rate_for), and their mean;
    - the orientation probe: the TURNED_HELD_OUT_PASS quantile of every fold's out-of-fold turned scores. The probe's
      output is a probability, comparable between models of one recipe, whereas its own threshold (held-out groups
      of the training images) let 3-6 % of unseen upright slices through;
    and the share of out-of-fold images each fold's own thresholds flagged. None when the folds carry no reference
    set."""
    rates, flagged, turned, turned_flagged = [], [], [], []
    fold_numbers = sorted(folds["fold"].unique().to_list())
    for fold in fold_numbers:
        evidence = fold_ood_evidence(RunFolder(out).fold(fold))
        if evidence is None:
            return None
        rates.append(evidence["loo_pass_rate"])
        flagged.append(evidence["flagged"])
        rows = pl.read_parquet(RunFolder(out).fold(fold).predictions("test"))
        if evidence["turned_threshold"] is not None and "turned_score" in rows.columns:
            turned.append(rows["turned_score"].drop_nulls().to_numpy())
            turned_flagged.append(float((turned[-1] > evidence["turned_threshold"]).mean()))
    result: dict[str, Any] = {
        "passing": HELD_OUT_PASS,
        "loo_pass_rate": float(np.mean(rates)),
        "loo_pass_rate_per_fold": rates,
        "flagged_at_fold_thresholds": flagged,
    }
    if len(turned) == len(fold_numbers):
        result |= {
            "turned_passing": TURNED_HELD_OUT_PASS,
            "turned_threshold": float(
                np.clip(np.quantile(np.concatenate(turned), TURNED_HELD_OUT_PASS), 1e-6, 1 - 1e-6)
            ),
            "turned_flagged_at_fold_thresholds": turned_flagged,
        }
    return result


def fold_ood_evidence(run: RunFolder) -> dict[str, Any] | None:
    """What held_out_ood needs of one fold's model: the leave-one-out pass rate of its reference at the threshold
    that lets HELD_OUT_PASS of the fold's test images through, the share of them its own threshold flagged, and its
    orientation probe's threshold (None without a probe). From the model, or from ood_evidence.json where the CV
    was kept without its models (keep_results); None when the model carries no reference set."""
    if not run.best.is_file():
        if run.ood_evidence.is_file():
            return dict(json.loads(run.ood_evidence.read_text()))
        raise SettingError(f"{run.root} has neither its model ({run.best.name}) nor {run.ood_evidence.name}")
    ood = Checkpoint.load(run.best).ood
    if ood is None:
        return None
    scores = pl.read_parquet(run.predictions("test"))["ood_score"].drop_nulls().to_numpy()
    return {
        "loo_pass_rate": pass_rate_for(ood, scores),
        "flagged": float((scores > ood.threshold).mean()),
        "turned_threshold": None if ood.orientation is None else ood.orientation.threshold,
    }


def cv_classes(folder: Path) -> list[str]:
    """The class names in the order of a CV's logits: from a fold's model, or from classes.json where the CV was
    kept without its models (keep_results)."""
    kept = RunFolder(folder).classes
    if kept.is_file():
        return list(json.loads(kept.read_text()))
    for run in sorted(folder.glob("fold-*")):
        if RunFolder(run).best.is_file():
            return Checkpoint.load(RunFolder(run).best).classes
    raise SettingError(f"{folder}: no fold model and no {kept.name} to name its classes")


def cv_calibration(folder: Path) -> tuple[float, float | None, float | None]:
    """(temperature, leave-one-out pass rate, orientation threshold; each None where not measured) that a CV
    folder measured on its out-of-fold images, for an all-data fit."""
    result = json.loads(RunFolder(folder).cv_result.read_text())
    ood = result.get("ood") or {}
    return float(result["temperature"]), ood.get("loo_pass_rate"), ood.get("turned_threshold")


def ensemble_cv(members: list[Path], out: Path) -> dict[str, Any]:
    """The out-of-fold figures of the geometric mean of several CV runs on the same folds (issue 29: what an
    ensemble teacher offers, measured before a student learns from it). Fold k's members never saw fold k, so the
    ensemble's out-of-fold predictions are as honest as theirs. OUT gets folds.parquet, each fold's test logits
    (the mean of the members' log-probabilities) and the usual oof.parquet, cv_metrics/ and cv_result.json, so
    scripts/cv_compare.py compares it with any run on the same folds."""
    if len(members) < 2:
        raise SettingError("an ensemble needs at least two cross-validation folders")
    folds = pl.read_parquet(RunFolder(members[0]).folds)
    for member in members[1:]:
        _require_same_folds(member, folds)
    if out.exists():
        raise SettingError(f"{out} exists: choose a new folder for the ensemble")
    out.mkdir(parents=True)
    with atomic_path(RunFolder(out).folds) as tmp:
        folds.write_parquet(tmp)
    for fold in sorted(folds["fold"].unique().to_list()):
        parts = [pl.read_parquet(RunFolder(m).fold(fold).logits("test")).sort("path") for m in members]
        if any(not part["path"].equals(parts[0]["path"]) for part in parts):
            raise SettingError(f"fold {fold}: the members scored other images")
        log_probs = [log_softmax(np.stack(part["logits"].to_list()).astype(np.float64), 1) for part in parts]
        mean = np.mean(log_probs, axis=0).astype(np.float32)
        RunFolder(out).fold(fold).root.mkdir()
        with atomic_path(RunFolder(out).fold(fold).logits("test")) as tmp:
            parts[0].select("path", "label").with_columns(logits=pl.Series(mean)).write_parquet(tmp)
    result = summarise(out, folds, cv_classes(members[0]))
    result["members"] = [str(m) for m in members]
    write_text_atomic(RunFolder(out).cv_result, json.dumps(result, indent=2))
    return result


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: the discordant pairs against a fair coin."""
    from scipy.stats import binomtest

    n = only_a + only_b
    return 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)


def _predictions_so_far(folder: Path) -> pl.DataFrame:
    """path, label, fold, pred_class, correct of a CV folder: its oof.parquet once every fold is done, else the test
    predictions of the folds finished so far (a run can be screened, and stopped, before its last fold). The
    prediction is the argmax either way, which no temperature moves."""
    run = RunFolder(folder)
    cols = ["path", "label", "fold", "pred_class", "correct"]
    if run.out_of_fold.is_file():
        return pl.read_parquet(run.out_of_fold).select(cols)
    if not run.folds.is_file():
        raise SettingError(f"{folder} is not a cross-validation folder (no {run.folds.name})")
    folds = pl.read_parquet(run.folds)
    done = [k for k in sorted(folds["fold"].unique().to_list()) if run.fold(k).result.is_file()]
    if not done:
        raise SettingError(f"{folder}: no fold has finished yet")
    predicted = pl.concat(
        [pl.read_parquet(run.fold(k).predictions("test")).select("path", "pred_class") for k in done]
    )
    return (
        folds.select("path", "label", "fold")
        .join(predicted, on="path", how="inner")
        .with_columns(correct=pl.col("pred_class") == pl.col("label"))
        .select(cols)
    )


def compare(a: Path, b: Path, finished_folds: bool = False) -> tuple[dict[str, Any], pl.DataFrame]:
    """Two CV folders on the same folds, image by image: ({figures per run, McNemar}, per-class recall table).
    figures[run] is fold_figures of the images compared (one row per fold, and "all": pooled). With
    finished_folds, only the folds both runs have finished are compared (a screening); else both must be done."""
    sides = [_predictions_so_far(Path(p)) for p in (a, b)]
    if finished_folds:
        common = set(sides[0]["fold"].unique().to_list()) & set(sides[1]["fold"].unique().to_list())
        if not common:
            raise SettingError(f"{a} and {b} have no finished fold in common")
        sides = [side.filter(pl.col("fold").is_in(sorted(common))) for side in sides]
    else:
        for path in (a, b):
            if not RunFolder(Path(path)).out_of_fold.is_file():
                raise SettingError(f"{path} has not finished every fold: wait, or compare --finished-folds")
    oof_a, oof_b = sides
    pairs = oof_a.join(oof_b, on="path", how="inner", suffix="_b")
    if (
        pairs.height != oof_a.height
        or pairs.height != oof_b.height
        or not pairs["fold"].equals(pairs["fold_b"])
    ):
        raise SettingError(f"{a} and {b} were not cross-validated on the same images and folds")
    only_a = int((pairs["correct"] & ~pairs["correct_b"]).sum())
    only_b = int((~pairs["correct"] & pairs["correct_b"]).sum())
    summary = {
        "images": pairs.height,
        "folds": sorted(pairs["fold"].unique().to_list()),
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": mcnemar_exact(only_a, only_b),
        "figures": {str(a): fold_figures(oof_a), str(b): fold_figures(oof_b)},
    }
    recall = (
        pairs.group_by(pl.col("label").alias("class"))
        .agg(n=pl.len(), recall_a=pl.col("correct").mean(), recall_b=pl.col("correct_b").mean())
        .with_columns(diff=pl.col("recall_b") - pl.col("recall_a"))
        .sort("diff", "class")
    )
    return summary, recall


def kept_files(cv: RunFolder, fold_runs: list[RunFolder]) -> list[Path]:
    """What a CV folder's results are, without its models and caches: enough for compare(), ensemble_cv() and the
    tables (with classes.json and each fold's ood_evidence.json, which keep_results writes). The checkpoints are
    gigabytes; these files are a few hundred kilobytes per fold."""
    files = [cv.config, cv.folds, cv.out_of_fold, cv.cv_result, cv.cv_metrics]
    for run in fold_runs:
        test = [run.predictions("test"), run.logits("test"), run.metric_tables("test")]
        files += [run.config, run.result, run.history, *test, run.ood_evidence]  # evidence: a kept fold's
    return files


def keep_results(cv: Path, dest: Path) -> list[Path]:
    """Copy a CV folder's results (kept_files: the CV's and every finished fold's) to `dest`, a new folder that
    compare() and ensemble_cv() read like the CV folder itself, with classes.json and each fold's
    ood_evidence.json in place of the models. Why: run folders live outside the work tree and are lost with the
    machine; a new recipe must still be paired, image by image, with the runs that came before it, without
    retraining them, and a CV lost half-way continues from the copy (copied back as its --out, with --resume: the
    kept folds count as done, as their models are not needed again; not for a teacher, whose models are).
    Returns the files copied."""
    run = RunFolder(cv)
    if not run.folds.is_file():
        raise SettingError(f"{cv} is not a cross-validation folder (no {run.folds.name})")
    if dest.exists():
        raise SettingError(f"{dest} exists; remove it first to keep {cv}'s results there again")
    folds = sorted(pl.read_parquet(run.folds)["fold"].unique().to_list())
    finished = [d for d in sorted(cv.glob("fold-*")) if d.is_dir() and RunFolder(d).result.is_file()]
    if not finished:
        raise SettingError(f"{cv}: no fold has finished yet, nothing to keep")
    names = kept_files(run, [RunFolder(d) for d in finished])
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        copied = []
        for source in (p for p in names if p.exists()):
            target = staging / source.relative_to(cv)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
            copied.append(dest / source.relative_to(cv))
        # What the CV's summary needs of each model, for a CV continued from this copy
        for folder in finished:
            if not RunFolder(folder).best.is_file():
                continue  # a fold kept before: its ood_evidence.json was copied above
            evidence = fold_ood_evidence(RunFolder(folder))
            if evidence is not None:
                target = RunFolder(staging / folder.name).ood_evidence
                write_text_atomic(target, json.dumps(evidence, indent=2))
                copied.append(dest / folder.name / target.name)
        write_text_atomic(RunFolder(staging).classes, json.dumps(cv_classes(cv)))
        copied.append(RunFolder(dest).classes)
        staging.rename(dest)  # all or nothing: a folder that exists is a whole copy
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "%s: kept %d files of %d finished runs (a %d-fold CV)", dest, len(copied), len(finished), len(folds)
    )
    return copied
