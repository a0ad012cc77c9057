"""Two exported models as one ONNX graph that scores their geometric mean (issue 29: the most accurate model we
have is the mean of the teacher's and the student's probabilities), built from the two files and a small recipe.

The graph is an ordinary mri44 model, so every engine, the API and the report use it unchanged: one input with
the first member's preprocessing, `logits` = the mean of the members' log-probabilities (whose softmax is the
normalised geometric mean of their probabilities, exactly what `scripts/cv_ensemble.py` measures out of fold),
and the second member's `features`, so its out-of-distribution check and class activation maps: the teacher, put
second, has the features that tell non-MRI images apart (docs/ood.md), and the image statistics (detail, border)
stay the first member's, fitted on the input the graph receives. The second member sees the first member's input
mapped back to pixels, re-normalised with its own constants and resized to its own side inside the graph: one
decode, two networks.

Why a recipe and not a file: the graph repeats both members' weights, so shipping it would ship them twice. The
shipped `models/mri44-ensemble.json` names the members by file and sha256 and carries the temperature fitted out of
fold and the parity measured when it was made (scripts/ensemble_onnx.py); `build_from_recipe` makes the graph once
(about a second) into the user's cache and scoring loads it from there by path, like any other model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mri44.errors import MRI44Error, SettingError
from mri44.fingerprint import TrainingManifest
from mri44.onnx_meta import ENSEMBLE_SECOND, FEATURES_NAME, INPUT_NAME, OUTPUT_NAME, ModelMetadata
from mri44.preprocess import PreprocessSpec

RECIPE_FORMAT = "mri44-ensemble-recipe/1"
# Part of every cached graph's name: raise it when ensemble_onnx changes what it builds, so no stale graph is used.
BUILDER_VERSION = 2  # 2: features and the distance check from the second member


class EnsembleError(MRI44Error):
    """Two models that cannot be averaged in one graph."""


def _check_members(first: ModelMetadata, second: ModelMetadata) -> None:
    if first.classes != second.classes:
        raise EnsembleError(
            "the two models have different classes: an ensemble needs the same classes in the same order"
        )
    a, b = first.preprocess, second.preprocess
    if (a.channels, a.resize) != (b.channels, b.resize):
        raise EnsembleError(
            f"the models' inputs differ in channels or resizing ({a.channels}/{a.resize} against "
            f"{b.channels}/{b.resize}): the second cannot be fed from the first's input"
        )
    if b.size > a.size:
        raise EnsembleError(f"give the model with the larger input first ({b.size} px > {a.size} px)")


def _member_input(first: PreprocessSpec, second: PreprocessSpec) -> tuple[list[Any], list[Any]]:
    """Nodes and constants that turn the first member's input into the second's: x2 = resize(x1 * m + c)."""
    from onnx import helper, numpy_helper

    scale1, bias1 = first.scale_bias()
    scale2, bias2 = second.scale_bias()
    mul = (scale2 / scale1).reshape(1, 3, 1, 1).astype(np.float32)  # pixels = (x1 - bias1) / scale1
    add = (bias2 - bias1 * scale2 / scale1).reshape(1, 3, 1, 1).astype(np.float32)
    inits = [numpy_helper.from_array(mul, "ens/mul"), numpy_helper.from_array(add, "ens/add")]
    normalised = "ens/normalised" if second.size != first.size else ENSEMBLE_SECOND + INPUT_NAME
    nodes = [
        helper.make_node("Mul", [INPUT_NAME, "ens/mul"], ["ens/scaled"], name="ens/Mul"),
        helper.make_node("Add", ["ens/scaled", "ens/add"], [normalised], name="ens/Add"),
    ]
    if second.size != first.size:
        side = np.array([second.size, second.size], np.int64)
        inits += [
            numpy_helper.from_array(side, "ens/side"),
            numpy_helper.from_array(np.array([0], np.int64), "ens/zero"),
            numpy_helper.from_array(np.array([2], np.int64), "ens/two"),
        ]
        nodes += [
            helper.make_node("Shape", [normalised], ["ens/shape"], name="ens/Shape"),
            helper.make_node(
                "Slice", ["ens/shape", "ens/zero", "ens/two"], ["ens/batch_channels"], name="ens/Slice"
            ),
            helper.make_node(
                "Concat", ["ens/batch_channels", "ens/side"], ["ens/sizes"], axis=0, name="ens/Concat"
            ),
            helper.make_node(
                "Resize",
                [normalised, "", "", "ens/sizes"],
                [ENSEMBLE_SECOND + INPUT_NAME],
                mode="linear",
                coordinate_transformation_mode="half_pixel",
                name="ens/Resize",
            ),
        ]
    return nodes, inits


def _union(a: TrainingManifest | None, b: TrainingManifest | None) -> TrainingManifest | None:
    """The images either member trained on (seen_in_training must hold for both); None when either is unknown."""
    if a is None or b is None:
        return None
    if a.sha256 == b.sha256:
        return a
    return TrainingManifest(
        a.sha256 | b.sha256, np.concatenate([a.hashes, b.hashes]), np.concatenate([a.thumbs, b.thumbs])
    )


def ensemble_onnx(first_path: Path, second_path: Path, temperature: float) -> tuple[Any, ModelMetadata]:
    """One graph scoring the geometric mean of two exported models, and its metadata: the first member's input and
    image-statistic limits, the second member's features, distance check and orientation probe, both members'
    training manifests, `temperature` for the mean (fit it on the ensemble's out-of-fold logits:
    scripts/cv_ensemble.py)."""
    import onnx
    from onnx import compose, helper

    first, second = onnx.load(str(first_path)), onnx.load(str(second_path))
    meta1 = ModelMetadata.from_proto(first, str(first_path))
    meta2 = ModelMetadata.from_proto(second, str(second_path))
    _check_members(meta1, meta2)
    if meta2.ood is None:
        raise EnsembleError(
            f"{second_path} carries no out-of-distribution check: the ensemble's is the second's"
        )
    training = _union(meta1.training, meta2.training)
    ood = replace(
        meta2.ood,
        detail=meta1.ood.detail if meta1.ood else None,
        border=meta1.ood.border if meta1.ood else None,
    )
    second = compose.add_prefix(second, ENSEMBLE_SECOND)
    g1, g2 = first.graph, second.graph
    inner = {OUTPUT_NAME: "member1/" + OUTPUT_NAME, FEATURES_NAME: "member1/" + FEATURES_NAME}
    for node in g1.node:  # the first member's outputs become inner tensors
        node.output[:] = [inner.get(out, out) for out in node.output]
    logits1 = inner[OUTPUT_NAME]
    bridge, bridge_inits = _member_input(meta1.preprocess, meta2.preprocess)
    combine = [
        helper.make_node("LogSoftmax", [logits1], ["ens/logp1"], axis=1, name="ens/LogSoftmax1"),
        helper.make_node(
            "LogSoftmax", [ENSEMBLE_SECOND + OUTPUT_NAME], ["ens/logp2"], axis=1, name="ens/LogSoftmax2"
        ),
        helper.make_node("Add", ["ens/logp1", "ens/logp2"], ["ens/sum"], name="ens/Sum"),
        helper.make_node("Mul", ["ens/sum", "ens/half"], [OUTPUT_NAME], name="ens/Mean"),
        helper.make_node("Identity", [ENSEMBLE_SECOND + FEATURES_NAME], [FEATURES_NAME], name="ens/Features"),
    ]
    half = onnx.numpy_helper.from_array(np.array(0.5, np.float32), "ens/half")
    logits_out = next(o for o in g1.output if o.name == OUTPUT_NAME)
    features_out = onnx.ValueInfoProto()
    features_out.CopyFrom(next(o for o in g2.output if o.name == ENSEMBLE_SECOND + FEATURES_NAME))
    features_out.name = FEATURES_NAME
    graph = helper.make_graph(
        list(g1.node) + bridge + list(g2.node) + combine,
        "mri44-ensemble",
        list(g1.input),
        [logits_out, features_out],
        list(g1.initializer) + list(g2.initializer) + bridge_inits + [half],
        value_info=list(g1.value_info) + list(g2.value_info),
    )
    opset = max(
        o.version for o in list(first.opset_import) + list(second.opset_import) if o.domain in ("", "ai.onnx")
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="mri44")
    model.ir_version = max(first.ir_version, second.ir_version)
    onnx.checker.check_model(model)
    meta = replace(
        meta1,
        arch=f"ensemble({meta1.arch}+{meta2.arch})",
        source_sha256=f"{meta1.source_sha256}+{meta2.source_sha256}",
        ood=ood,
        export={
            "ensemble": "geometric mean of the members' probabilities (mean of log-softmax); features, distance "
            "check and orientation probe from the second member, image statistics from the first",
            "members": [
                {"file": Path(first_path).name, "arch": meta1.arch, "export": meta1.export},
                {"file": Path(second_path).name, "arch": meta2.arch, "export": meta2.export},
            ],
        },
        temperature=float(temperature),
        training=training,
    )
    return model, meta


def write_recipe(
    first_path: Path, second_path: Path, temperature: float, source: str, parity: dict[str, float], out: Path
) -> None:
    """The recipe that ships in place of the graph: the members (beside the recipe) by name and sha256, the
    temperature and where it came from, and the parity the graph reached when the recipe was made."""
    from mri44.atomic import atomic_path
    from mri44.files import file_sha256

    for member in (first_path, second_path):
        if member.resolve().parent != out.resolve().parent:
            raise SettingError(
                f"{member} is not beside {out}: a recipe names its members by file in its own folder"
            )
    recipe = {
        "format": RECIPE_FORMAT,
        "members": [{"file": p.name, "sha256": file_sha256(p)} for p in (first_path, second_path)],
        "temperature": float(temperature),
        "temperature_source": source,
        "parity": parity,
    }
    with atomic_path(out, replace=False) as tmp:
        tmp.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")


def read_recipe(path: Path) -> tuple[list[Path], float]:
    """The members (checked against their sha256) and the temperature of a recipe."""
    from mri44.files import file_sha256

    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
        if recipe.get("format") != RECIPE_FORMAT:
            raise ValueError(f"format {recipe.get('format')!r}")
        members = [(path.parent / m["file"], str(m["sha256"])) for m in recipe["members"]]
        temperature = float(recipe["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EnsembleError(f"{path} is not a readable ensemble recipe ({exc})") from exc
    if len(members) != 2:
        raise EnsembleError(f"{path} names {len(members)} members: an ensemble recipe names two")
    for member, sha in members:
        if not member.is_file() or file_sha256(member) != sha:
            raise EnsembleError(
                f"{member} is missing or is not the model the recipe {path.name} was measured with: rebuild "
                "the recipe (scripts/ensemble_onnx.py --recipe) after changing a member"
            )
    return [m for m, _ in members], temperature


def cache_dir() -> Path:
    """Where built graphs are kept: $MRI44_CACHE_DIR, else $XDG_CACHE_HOME/mri44, else ~/.cache/mri44."""
    given = os.environ.get("MRI44_CACHE_DIR")
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mri44"


def build_from_recipe(recipe_path: Path) -> Path:
    """The ensemble graph of a recipe, built into cache_dir() the first time and found there after. The cached
    file's name holds a digest of the recipe (which holds the members' sha256) and BUILDER_VERSION, so a new
    member, temperature or builder never reuses an old graph."""
    from mri44.atomic import OutputExistsError
    from mri44.onnx_meta import write_with_metadata

    members, temperature = read_recipe(recipe_path)
    digest = hashlib.sha256(recipe_path.read_bytes() + f"/{BUILDER_VERSION}".encode()).hexdigest()[:16]
    target = cache_dir() / f"{recipe_path.stem}-{digest}.onnx"
    if target.is_file():
        return target
    model, meta = ensemble_onnx(members[0], members[1], temperature)
    try:
        write_with_metadata(model, meta, target)
    except OutputExistsError:  # another process built the same graph meanwhile: the same bytes
        pass
    except OSError as exc:
        raise SettingError(
            f"cannot write the ensemble graph to {target.parent} ({exc.strerror or exc}): set MRI44_CACHE_DIR to a "
            "writable folder"
        ) from exc
    return target
