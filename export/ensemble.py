"""Two exported models as one ONNX file that scores their geometric mean (issue 29: the most accurate model we
have is the mean of the teacher's and the student's probabilities).

The file is an ordinary mri44 model, so every engine, the API and the report use it unchanged: one input, the
first member's preprocessing, its `features` output and out-of-distribution spec, and `logits` = the mean of the
members' log-probabilities (whose softmax is the normalised geometric mean of their probabilities, exactly what
`scripts/cv_ensemble.py` measures out of fold). The second member sees the first member's input mapped back to
pixels, re-normalised with its own constants and resized to its own side inside the graph: one decode, two
networks. That resize (linear, from the first member's input) differs slightly from the second member's own
(area, from the file), so `ensemble_parity` measures the file against both members scored separately.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mri44.errors import MRI44Error
from mri44.fingerprint import TrainingManifest
from mri44.onnx_meta import ENSEMBLE_SECOND, FEATURES_NAME, INPUT_NAME, OUTPUT_NAME, ModelMetadata
from mri44.preprocess import PreprocessSpec


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
    """One graph scoring the geometric mean of two exported models, and its metadata: the first member's input,
    features, out-of-distribution spec and training manifest, `temperature` for the mean (fit it on the
    ensemble's out-of-fold logits: scripts/cv_ensemble.py)."""
    import onnx
    from onnx import compose, helper

    first, second = onnx.load(str(first_path)), onnx.load(str(second_path))
    meta1 = ModelMetadata.from_proto(first, str(first_path))
    meta2 = ModelMetadata.from_proto(second, str(second_path))
    _check_members(meta1, meta2)
    training = _union(meta1.training, meta2.training)
    second = compose.add_prefix(second, ENSEMBLE_SECOND)
    g1, g2 = first.graph, second.graph
    logits1 = "member1/" + OUTPUT_NAME
    for node in g1.node:  # the first member's logits become an inner tensor
        node.output[:] = [logits1 if out == OUTPUT_NAME else out for out in node.output]
    bridge, bridge_inits = _member_input(meta1.preprocess, meta2.preprocess)
    combine = [
        helper.make_node("LogSoftmax", [logits1], ["ens/logp1"], axis=1, name="ens/LogSoftmax1"),
        helper.make_node(
            "LogSoftmax", [ENSEMBLE_SECOND + OUTPUT_NAME], ["ens/logp2"], axis=1, name="ens/LogSoftmax2"
        ),
        helper.make_node("Add", ["ens/logp1", "ens/logp2"], ["ens/sum"], name="ens/Sum"),
        helper.make_node("Mul", ["ens/sum", "ens/half"], [OUTPUT_NAME], name="ens/Mean"),
    ]
    half = onnx.numpy_helper.from_array(np.array(0.5, np.float32), "ens/half")
    outputs = {o.name: o for o in g1.output}
    graph = helper.make_graph(
        list(g1.node) + bridge + list(g2.node) + combine,
        "mri44-ensemble",
        list(g1.input),
        [outputs[OUTPUT_NAME], outputs[FEATURES_NAME]],
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
        export={
            "ensemble": "geometric mean of the members' probabilities (mean of log-softmax)",
            "members": [
                {"file": Path(first_path).name, "arch": meta1.arch, "export": meta1.export},
                {"file": Path(second_path).name, "arch": meta2.arch, "export": meta2.export},
            ],
        },
        temperature=float(temperature),
        training=training,
    )
    return model, meta


def ensemble_parity(
    model: Any, meta: ModelMetadata, members: tuple[Path, Path], images: list[Path], batch: int = 32
) -> dict[str, float]:
    """The ensemble file against its members scored separately, each with its own preprocessing from the file
    (the geometric mean as scripts/cv_ensemble.py computes it): top-1 agreement and the largest difference in
    any class probability, at the ensemble's temperature, on real images."""
    from mri44.calibration import softmax
    from mri44.onnx_meta import read_metadata
    from mri44.preprocess import normalize
    from mri44.runtime import make_session
    from mri44.samples import decodable_pixels

    def logits(session: Any, spec: PreprocessSpec) -> np.ndarray:
        pixels, _ = decodable_pixels(images, spec)
        out = [
            session.run([OUTPUT_NAME], {INPUT_NAME: normalize(pixels[i : i + batch], spec)})[0]
            for i in range(0, len(pixels), batch)
        ]
        return np.concatenate(out).astype(np.float64)

    joint = logits(make_session(model.SerializeToString(), "cpu"), meta.preprocess)
    separate = np.mean(
        [
            np.log(softmax(logits(make_session(path, "cpu"), read_metadata(path).preprocess)))
            for path in members
        ],
        axis=0,
    )
    if joint.shape != separate.shape:
        raise EnsembleError("the members decode different images: parity cannot pair them")
    p, q = softmax(joint, meta.temperature), softmax(separate, meta.temperature)
    return {
        "images": float(len(p)),
        "top1_agreement": float((p.argmax(1) == q.argmax(1)).mean()),
        "max_prob_diff": float(np.abs(p - q).max()),
    }
