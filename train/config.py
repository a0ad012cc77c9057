"""A training run's settings: one frozen-in-spirit record, saved as the run's config.json, checked on resume."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from mri44.errors import MRI44Error, SettingError
from mri44.model import ARCH, ARCHS
from mri44.run_folder import RunFolder

from .recipes import Recipe, get_recipe
from .split import SplitConfig

# Settings that decide the split, the inputs or the model: a resumed run must keep every one of them.
RESUME_FIXED = (
    "data",
    "seed",
    "split",
    "split_file",
    "all_data",
    "image_size",
    "arch",
    "recipe",
    "teacher",
    "freeze_through",
    "feature_views",
    "soft_labels",
    "soft_label_views",
    "folds",
    "leave_out",
    "cross_fit",
    "holdout",
    "extra_images",
)
PATH_SETTINGS = frozenset({"data", "split_file", "teacher", "soft_labels", "holdout", "extra_images"})
# Settings that name one file or folder (soft_labels names several: see with_paths).
SINGLE_PATHS = ("data", "out", "split_file", "teacher", "temperature_from", "holdout", "extra_images")


@dataclass
class TrainConfig:
    data: Path
    out: Path
    recipe: Recipe
    image_size: int = 224
    epochs: int | None = None  # None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    lr: float | None = None  # None: the recipe's
    weights: str = "none"
    arch: str = ARCH
    allow_random_init: bool = False
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast where the hardware computes bf16 natively, else fp32
    seed: int = 0
    resume: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)
    split_file: Path | None = None
    workers: int | None = None
    eval_batch_size: int = 128
    teacher: Path | None = None  # run folder or checkpoint to distil from (recipe kd_weight > 0)
    all_data: bool = False  # train on every image: no val/test, the last epoch is the model
    temperature: float | None = None  # None: fit on validation; all-data runs take the selection run's
    temperature_from: Path | None = None  # read the temperature from this run's best.pt when training ends
    freeze_through: str = (
        "none"  # train only the stages after this one, on its output cached once (train/frozen.py)
    )
    feature_views: int = 1  # cached views per image with --freeze-through: view 0 plain, the others augmented
    # Teachers whose soft labels on K stored views this run trains on (FKD); several: their geometric mean.
    soft_labels: tuple[Path, ...] = ()
    soft_label_views: int = 8  # K: stored augmented views per training image
    folds: int = 0  # K > 1: grouped K-fold cross-validation into OUT/fold-1..K (train/cv.py)
    # With folds: each run leaves out this many folds (2: OUT/fold-j-k, the cross-fit teachers).
    leave_out: int = 1
    # Soft labels out of fold: each training image labelled by the CV teacher's run that never saw it (train/cv.py)
    cross_fit: bool = False
    left_out: tuple[int, ...] = ()  # set by the CV for each of its runs: the folds this run is tested on
    holdout: Path | None = (
        None  # all-data runs: the near-duplicate groups of these images stay out of training
    )
    # Images outside the 44 classes (class folders of another label set, e.g. ../shared/data/brain-tumor-mri-3c)
    # that the student learns from through the teacher's soft labels alone: never a class, never evaluated.
    extra_images: Path | None = None

    def resolved(self) -> dict[str, Any]:
        """Epochs, batch size and lr: the given value, or the recipe's when none was given (0 is not 'none')."""
        values: dict[str, Any] = {
            "epochs": self.recipe.epochs if self.epochs is None else self.epochs,
            "batch_size": self.recipe.batch_size if self.batch_size is None else self.batch_size,
            "lr": self.recipe.lr if self.lr is None else self.lr,
        }
        for name, value in values.items():
            if not value > 0:
                raise SettingError(f"--{name.replace('_', '-')} must be positive, got {value}")
        return values

    def to_json(self) -> str:
        """The settings (epochs, batch size and lr resolved) and, apart, the provenance of the run: versions
        and the git commit of the code, which a rerun with `--config` does not need to match."""
        data = asdict(self)
        data.update(self.resolved())
        data["provenance"] = provenance()
        return json.dumps(data, indent=2, default=str)

    @classmethod
    def read_json(cls, path: Path) -> TrainConfig:
        """A run's config.json back into settings (`python -m train --config RUN_DIR/config.json`)."""
        try:
            saved = json.loads(Path(path).read_text())
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in saved.items() if k in known}
            values["recipe"] = Recipe(**saved["recipe"])
            values["split"] = SplitConfig(**saved["split"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SettingError(f"--config {path}: not a readable run config.json ({exc})") from exc
        values["resume"] = False
        values["left_out"] = tuple(values.get("left_out") or ())
        return cls(**with_paths(values))


def with_paths(settings: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
    """The path settings as Paths (relative ones under root, a TOML file's folder, when given): one rule for the
    command line, a TOML file and a run's config.json. soft_labels becomes a tuple; the single path (or null) of a
    config.json written before ensembles reads as one teacher (or none)."""

    def path(value: Any) -> Path:
        return Path(value) if root is None else root / value

    out = dict(settings)
    for name in SINGLE_PATHS:
        if out.get(name) is not None:
            out[name] = path(out[name])
    if "soft_labels" in out:
        teachers = out["soft_labels"]
        if teachers is None or isinstance(teachers, str | Path):
            teachers = () if teachers is None else (teachers,)
        out["soft_labels"] = tuple(path(teacher) for teacher in teachers)
    return out


def read_toml_settings(path: Path) -> dict[str, Any]:
    """A settings file a person writes (`python -m train --config run.toml`): python -m train's option names as
    keys (`image-size` or `image_size`), e.g. data = "../shared/data/brain-mri-44c", recipe = "distill",
    epochs = 40. Paths are taken relative to the file's folder."""
    try:
        import tomllib
    except ImportError as exc:  # Python 3.10
        raise SettingError(f"--config {path}: TOML settings need Python 3.11 or later (tomllib)") from exc
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SettingError(f"--config {path}: not a readable TOML file ({exc})") from exc
    return with_paths({key.replace("-", "_"): value for key, value in raw.items()}, Path(path).parent)


# The python -m train options that are SplitConfig fields, by option name -> field name.
SPLIT_OPTIONS = {
    "val_fraction": "val",
    "test_fraction": "test",
    "phash_distance": "phash_distance",
    "max_group_share": "max_group_share",
}


def config_from_settings(base: TrainConfig | None = None, **settings: Any) -> TrainConfig:
    """A run's settings from python -m train's option names (recipe by name, the split's fractions and
    distances, ...) over a base config (defaults when None): one builder for the CLI and mri44.train()."""
    known = {f.name for f in fields(TrainConfig)} | set(SPLIT_OPTIONS)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SettingError(f"unknown training setting(s): {', '.join(unknown)}")
    if base is None:
        missing = [name for name in ("data", "out") if settings.get(name) is None]
        if missing:
            raise SettingError(f"training needs {' and '.join(missing)}")
        base = TrainConfig(
            data=Path(settings["data"]), out=Path(settings["out"]), recipe=get_recipe("default")
        )
    values = {f.name: getattr(base, f.name) for f in fields(TrainConfig)}
    split = asdict(base.split)
    for name, value in settings.items():
        if name in SPLIT_OPTIONS:
            split[SPLIT_OPTIONS[name]] = value
        elif name == "recipe" and isinstance(value, str):
            values["recipe"] = get_recipe(value)
        else:
            values[name] = value
    split["seed"] = values["seed"]
    split["train"] = 1.0 - split["val"] - split["test"]
    if values["arch"] not in ARCHS:
        raise SettingError(f"unknown --arch {values['arch']!r}; choose one of: {', '.join(ARCHS)}")
    values = with_paths(values)
    values["data"] = values["data"].absolute()  # export and reruns find it from any folder
    values["split"] = SplitConfig(**split)
    return TrainConfig(**values)


def provenance() -> dict[str, str]:
    """Versions of what shapes a run's numerics, and the git commit of the code when it runs from a checkout."""
    from mri44.version import __version__

    versions = {"mri44": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "numpy", "polars", "onnx", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # not installed, or no __version__: recorded as absent
            versions[name] = "absent"
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        commit = done.stdout.strip() if done.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions["git_commit"] = commit or "unknown (not a git checkout)"
    return versions


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MRI44Error("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: oneDNN then runs bf16 convolutions natively. Without them (AVX2-only CPUs) bf16 is
    emulated and slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def use_bf16(device: torch.device, precision: str) -> bool:
    """Whether to train and evaluate under bf16 autocast (with channels_last inputs).

    auto: on CUDA, and on CPUs with native bf16, where it gave 2.3x the fp32 training throughput of a ResNet-18
    at 160 px and 2.7x at 256 px on our 2-core AVX-512 BF16 CPU (benchmarks/train_precision.py)."""
    if precision not in PRECISIONS:
        raise SettingError(f"unknown --precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return device.type == "cuda" or cpu_has_native_bf16()
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise SettingError(
            "--precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), where it is slower than fp32; "
            "use --precision fp32 or auto"
        )
    return precision == "bf16"


def same_setting(saved: object, now: object, *, is_path: bool) -> bool:
    """Equal values; for paths, the same file: a run folder reached through a symlink (or moved under another name
    that still points at it) resumes rather than failing on a spelling of its own path."""
    if saved == now:
        return True
    if is_path and isinstance(now, list) and (saved is None or isinstance(saved, str)):
        saved = [] if saved is None else [saved]  # none or one teacher, saved before ensembles
    if is_path and isinstance(saved, list) and isinstance(now, list):
        return len(saved) == len(now) and all(
            same_setting(a, b, is_path=True) for a, b in zip(saved, now, strict=True)
        )
    if is_path and isinstance(saved, str) and isinstance(now, str):
        return Path(saved).resolve() == Path(now).resolve()
    return False


def check_resume_settings(out: Path, cfg: TrainConfig) -> None:
    """Refuse to resume with settings that differ from the run's config.json, naming each difference."""
    try:
        saved = json.loads(RunFolder(out).config.read_text())
    except (OSError, ValueError) as exc:
        raise SettingError(f"cannot resume {out}: its config.json is unreadable ({exc})") from exc
    if not cfg.folds and not RunFolder(out).split.is_file():
        raise SettingError(f"cannot resume {out}: it has no split.parquet")
    now = json.loads(cfg.to_json())
    # A setting added after the run was written reads as its default (what that run did without it).
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    differ = [
        f"{k}: {saved.get(k, defaults.get(k))!r} -> {now.get(k)!r}"
        for k in RESUME_FIXED
        if not same_setting(saved.get(k, defaults.get(k)), now.get(k), is_path=k in PATH_SETTINGS)
    ]
    if differ:
        raise SettingError(
            f"cannot resume {out} with other settings ({'; '.join(differ)}); rerun with the original ones "
            "or train into a new --out"
        )
