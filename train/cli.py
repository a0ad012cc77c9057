"""`python -m train`: fine-tune ResNet-18 on a folder-per-class image set with a leak-free split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from mri44.console import setup_logging, user_errors

from .recipes import RECIPES

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


DataOpt = Annotated[
    Path | None,
    typer.Option(help="Folder with one sub-folder of images per class (required without --config)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        help="Start from settings in a file: an earlier run's RUN_DIR/config.json, or a TOML file of this "
        'command\'s option names (data = "DIR", recipe = "distill", epochs = 40, ...; paths relative to '
        "the file); the options given here override them."
    ),
]
OutOpt = Annotated[
    Path, typer.Option(help="Run folder: checkpoints, config.json, split, metrics.csv, test tables.")
]
RecipeOpt = Annotated[str, typer.Option(help=f"Hyper-parameter set: {', '.join(RECIPES)}.")]
EpochsOpt = Annotated[int | None, typer.Option(help="Epochs (default: the recipe's).")]
ImageSizeOpt = Annotated[int, typer.Option(help="Side of the square model input, in pixels.")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Batch size (default: the recipe's).")]
LrOpt = Annotated[float | None, typer.Option(help="Peak learning rate (default: the recipe's).")]
ArchOpt = Annotated[
    str,
    typer.Option(
        help="resnet18 (the shipped model) or resnet50 (Keras layout; the distillation teacher, whose "
        "--weights imagenet come from `mri-weights`)."
    ),
]
WeightsOpt = Annotated[
    str,
    typer.Option(
        help="Initial weights: 'imagenet' (torchvision download), 'none' (random) or a path to a "
        "torchvision state dict or an mri44 checkpoint."
    ),
]
AllowRandomInitOpt = Annotated[
    bool, typer.Option(help="If 'imagenet' cannot be downloaded, warn and start random.")
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="auto (bf16 autocast on CUDA and on CPUs with native bf16: AVX-512 BF16 or AMX; else fp32), fp32 or bf16."
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seeds the split, sampling, augmentation and initialisation.")]
ValFractionOpt = Annotated[float, typer.Option(help="Share of each class for validation.")]
TestFractionOpt = Annotated[float, typer.Option(help="Share of each class for test.")]
MaxGroupShareOpt = Annotated[
    float,
    typer.Option(
        help="A near-duplicate group holding more than this share of a class's images is re-grouped at a "
        "stricter pHash distance, so every class reaches val and test (1: never)."
    ),
]
PhashDistanceOpt = Annotated[
    int,
    typer.Option(
        help="Images of one tumour type whose 64-bit perceptual hashes differ "
        "in at most this many bits are one group (-1: exact duplicates only)."
    ),
]
SplitFileOpt = Annotated[
    Path | None, typer.Option(help="Reuse the split of an earlier run (its split.parquet/csv).")
]
TeacherOpt = Annotated[
    Path | None,
    typer.Option(
        help="Distil from this run folder or checkpoint (with a recipe that has kd_weight > 0: distill)."
    ),
]
AllDataOpt = Annotated[
    bool,
    typer.Option(
        help="Train on every image (no val/test; the last epoch is the model): the final-model step, after "
        "settings were chosen on the group split."
    ),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        help="Softmax temperature to store (default: fitted on val; an --all-data run should take its "
        "selection run's)."
    ),
]
TemperatureFromOpt = Annotated[
    Path | None,
    typer.Option(
        help="Take the temperature from this run folder's best.pt when training ends (an --all-data run "
        "started before its selection run finished)."
    ),
]
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue an interrupted run in --out from its last checkpoint.")
]
SoftLabelsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        help="Distil from this teacher's soft labels (a run folder, checkpoint or ONNX model), computed once before "
        "training on --soft-label-views stored augmented views per training image (RUN_DIR/soft_labels.pt; FKD), "
        "instead of running the teacher every step (--teacher). Give it more than once for an ensemble teacher: "
        "the geometric mean of their probabilities. Needs a recipe with kd_weight > 0: distill."
    ),
]
SoftLabelViewsOpt = Annotated[int, typer.Option(help="With --soft-labels: stored views per training image.")]
FreezeThroughOpt = Annotated[
    str,
    typer.Option(
        help="Freeze the pretrained network through this stage (layer1, layer2 or layer3; none: train all), "
        "compute its output once per image and train the later stages on that cache: many epochs of an "
        "ImageNet ResNet-50 on a CPU. Needs --weights imagenet or a checkpoint."
    ),
]
FeatureViewsOpt = Annotated[
    int,
    typer.Option(
        help="With --freeze-through: cached views per image (view 0 plain, the others through the training "
        "augmentation); each step picks one at random."
    ),
]
FoldsOpt = Annotated[
    int,
    typer.Option(
        help="Grouped K-fold cross-validation (K >= 2): whole near-duplicate groups dealt into K folds, fold k "
        "trained on the others in OUT/fold-k (no validation part: the last epoch is the model); out-of-fold "
        "predictions of every image in OUT/oof.parquet, tables in OUT/cv_metrics, mean +- sd and the "
        "temperature fitted on all out-of-fold logits in OUT/cv_result.json. 0: one split. A teacher "
        "(--soft-labels, --teacher) may be a CV folder with the same folds: fold k learns from its fold k."
    ),
]
LeaveOutOpt = Annotated[
    int,
    typer.Option(
        help="With --folds K: each run leaves out this many folds and is tested on them (2: OUT/fold-j-k for "
        "every pair, trained on the other K-2 folds: the teacher a --cross-fit student CV needs)."
    ),
]
CrossFitOpt = Annotated[
    bool,
    typer.Option(
        help="With --soft-labels CV_FOLDER: out-of-fold soft labels. Each training image in the teacher's fold j "
        "is labelled by the teacher run that left out fold j and this run's own test folds, so no image is "
        "labelled by a model that trained on it or on the images this run is judged on. A student CV needs a "
        "teacher CV of the same folds with --leave-out 2; an --all-data student an ordinary CV teacher."
    ),
]
HoldoutOpt = Annotated[
    Path | None,
    typer.Option(
        help="With --all-data: keep the near-duplicate groups of the images under this folder (class folders "
        "of copies of --data images, matched by class and file name, e.g. examples/) out of training; they "
        "are scored as the test part at the end. With --folds: those groups are in no fold (neither trained "
        "nor tested on), so the CV can teach such an all-data fit (--cross-fit)."
    ),
]
ExtraImagesOpt = Annotated[
    Path | None,
    typer.Option(
        help="With --soft-labels: class folders of images outside the 44 classes (e.g. "
        "../shared/data/brain-tumor-mri-3c) that the student also trains on, with the teacher's soft labels as "
        "their only target. Each folder is sampled as one more class of the square-root balance; never "
        "validated or tested on."
    ),
]
WorkersOpt = Annotated[int | None, typer.Option(help="Decoding threads (default: CPU count, at most 16).")]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Only warnings and errors on stderr (no progress bar, no epoch lines); the result "
        "line on stdout stays.",
    ),
]


@app.command(
    help="Train torchvision's ResNet-18 (or a ResNet-50 teacher) on DATA (one sub-folder per class; folder name = "
    "class name): from random initialisation by default, or fine-tuned from --weights imagenet or a checkpoint.\n\n"
    "Decodes every image once, splits train/val/test by groups of duplicate and near-duplicate slices, trains "
    "with validation after each epoch, keeps the best checkpoint by validation macro-F1 and writes test-split "
    "metric tables.\n\n"
    "Example: python -m train --data ../shared/data/brain-mri-44c --out runs/r18-224 --weights none"
)
@user_errors
def train(
    ctx: typer.Context,
    out: OutOpt,
    data: DataOpt = None,
    config: ConfigOpt = None,
    recipe: RecipeOpt = "default",
    epochs: EpochsOpt = None,
    image_size: ImageSizeOpt = 224,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    arch: ArchOpt = "resnet18",
    weights: WeightsOpt = "none",
    allow_random_init: AllowRandomInitOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    seed: SeedOpt = 0,
    val_fraction: ValFractionOpt = 0.15,
    test_fraction: TestFractionOpt = 0.15,
    max_group_share: MaxGroupShareOpt = 0.3,
    phash_distance: PhashDistanceOpt = 6,
    split_file: SplitFileOpt = None,
    teacher: TeacherOpt = None,
    all_data: AllDataOpt = False,
    temperature: TemperatureOpt = None,
    temperature_from: TemperatureFromOpt = None,
    resume: ResumeOpt = False,
    workers: WorkersOpt = None,
    freeze_through: FreezeThroughOpt = "none",
    feature_views: FeatureViewsOpt = 1,
    soft_labels: SoftLabelsOpt = None,
    soft_label_views: SoftLabelViewsOpt = 8,
    folds: FoldsOpt = 0,
    leave_out: LeaveOutOpt = 1,
    cross_fit: CrossFitOpt = False,
    holdout: HoldoutOpt = None,
    extra_images: ExtraImagesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    from .config import TrainConfig, config_from_settings, read_toml_settings
    from .loop import run_training

    if quiet:
        setup_logging(logging.WARNING)
    settings = {name: value for name, value in ctx.params.items() if name not in ("config", "quiet")}
    given = {  # only the flags given on this command line: they override a --config file
        name: value
        for name, value in settings.items()
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")
    }
    if config is not None and config.suffix.lower() == ".toml":
        cfg = config_from_settings(None, **{**read_toml_settings(config), **given})
    elif config is not None:  # a run's config.json
        cfg = config_from_settings(TrainConfig.read_json(config), **given)
    elif data is None:
        raise typer.BadParameter("--data is required (or --config FILE)", param_hint="--data")
    else:
        cfg = config_from_settings(None, **settings)
    result = run_training(cfg)
    if result:  # under torchrun only rank 0 has the outcome to print
        typer.echo(result_line(cfg.out, result))


def result_line(out: Path, result: dict[str, Any]) -> str:
    """The run's outcome in one line on stdout (progress and details go to stderr and OUT/train.log)."""
    if "pooled" in result:  # cross-validation
        acc, f1 = result["mean_sd"]["accuracy"], result["mean_sd"]["macro_f1"]
        return (
            f"{out}: out-of-fold accuracy {acc[0]:.4f} +- {acc[1]:.4f}, macro-F1 {f1[0]:.4f} +- {f1[1]:.4f} "
            f"({result['images']} images); temperature {result['temperature']:.3f}"
        )
    if "runs" in result:  # --leave-out 2: runs that are each other's teachers, nothing pooled
        return f"{out}: {len(result['runs'])} runs, each leaving out {result['leave_out']} folds"
    test = result.get("test") or {}
    figures = (
        f"test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}"
        if "accuracy" in test
        else "no test part"
    )
    return f"{out}: best epoch {result['best_epoch']}; {figures}; temperature {result['temperature']:.3f}"


def main() -> None:
    app()
