"""`python -m train`: fine-tune ResNet-18 on a folder-per-class image set with a leak-free split."""

from __future__ import annotations

from pathlib import Path

import typer

from mri44.model import ARCHS
from train.recipes import RECIPES

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(
    help="Fine-tune torchvision's ResNet-18 on DATA (one sub-folder per class; folder name = class name).\n\n"
    "Decodes every image once, splits train/val/test by groups of duplicate and near-duplicate slices, trains "
    "with validation after each epoch, keeps the best checkpoint by validation macro-F1 and writes test-split "
    "metric tables.\n\n"
    "Example: python -m train --data ../shared/data/brain-mri-44c --out runs/r18-224 --weights none"
)
def train(
    data: Path = typer.Option(..., help="Folder with one sub-folder of images per class."),
    out: Path = typer.Option(
        ..., help="Run folder: checkpoints, config.json, split, metrics.csv, test tables."
    ),
    recipe: str = typer.Option("default", help=f"Hyper-parameter set: {', '.join(RECIPES)}."),
    epochs: int | None = typer.Option(None, help="Epochs (default: the recipe's)."),
    image_size: int = typer.Option(224, help="Side of the square model input, in pixels."),
    batch_size: int | None = typer.Option(None, help="Batch size (default: the recipe's)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default: the recipe's)."),
    arch: str = typer.Option(
        "resnet18",
        help="resnet18 (the shipped model) or resnet50 (Keras layout; the distillation teacher, whose "
        "--weights imagenet come from `mri-weights`).",
    ),
    weights: str = typer.Option(
        "none",
        help="Initial weights: 'imagenet' (torchvision download), 'none' (random) or a path to a "
        "torchvision state dict or an mri44 checkpoint.",
    ),
    allow_random_init: bool = typer.Option(
        False, help="If 'imagenet' cannot be downloaded, warn and start random."
    ),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    seed: int = typer.Option(0, help="Seeds the split, sampling, augmentation and initialisation."),
    val_fraction: float = typer.Option(0.15, help="Share of each class for validation."),
    test_fraction: float = typer.Option(0.15, help="Share of each class for test."),
    max_group_share: float = typer.Option(
        0.3,
        help="A near-duplicate group holding more than this share of a class's images is re-grouped at a "
        "stricter pHash distance, so every class reaches val and test (1: never).",
    ),
    phash_distance: int = typer.Option(
        6,
        help="Images of one tumour type whose 64-bit perceptual hashes differ "
        "in at most this many bits are one group (-1: exact duplicates only).",
    ),
    split_file: Path | None = typer.Option(
        None, help="Reuse the split of an earlier run (its split.parquet/csv)."
    ),
    teacher: Path | None = typer.Option(
        None,
        help="Distil from this run folder or checkpoint (with a recipe that has kd_weight > 0: distill).",
    ),
    all_data: bool = typer.Option(
        False,
        help="Train on every image (no val/test; the last epoch is the model): the final-model step, after "
        "settings were chosen on the group split.",
    ),
    temperature: float | None = typer.Option(
        None,
        help="Softmax temperature to store (default: fitted on val; an --all-data run should take its "
        "selection run's).",
    ),
    temperature_from: Path | None = typer.Option(
        None,
        help="Take the temperature from this run folder's best.pt when training ends (an --all-data run "
        "started before its selection run finished).",
    ),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out from its last checkpoint."),
    workers: int | None = typer.Option(None, help="Decoding threads (default: CPU count, at most 16)."),
) -> None:
    from train.loop import TrainConfig, run_training
    from train.recipes import get_recipe
    from train.split import SplitConfig

    try:
        chosen = get_recipe(recipe)
        split = SplitConfig(
            train=1.0 - val_fraction - test_fraction,
            val=val_fraction,
            test=test_fraction,
            seed=seed,
            phash_distance=phash_distance,
            max_group_share=max_group_share,
        )
        if arch not in ARCHS:
            raise ValueError(f"unknown --arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    cfg = TrainConfig(
        data=data,
        out=out,
        recipe=chosen,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weights=weights,
        arch=arch,
        allow_random_init=allow_random_init,
        device=device,
        seed=seed,
        resume=resume,
        split=split,
        split_file=split_file,
        workers=workers,
        teacher=teacher,
        all_data=all_data,
        temperature=temperature,
        temperature_from=temperature_from,
    )
    try:
        run_training(cfg)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc


def main() -> None:
    app()
