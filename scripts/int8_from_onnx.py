"""INT8 of a shipped fp16 model whose checkpoint is gone (issue 29: the distilled ResNet-18 became the default
after the machine that held its run folder was replaced).

    python scripts/int8_from_onnx.py models/mri44-resnet18.onnx --calibration ../shared/data/brain-mri-44c \
        --out int8-noood.onnx
    python scripts/fit_ood.py int8-noood.onnx --data ../shared/data/brain-mri-44c --split ALL_TRAIN.csv \
        --pass-rate-from models/mri44-resnet18.onnx --out models/mri44-resnet18-int8.onnx

The fp16 graph is widened to float32 exactly (export/int8.float32_graph), quantised by the same ONNX Runtime
static QDQ step as `onnx-export --int8`, and gated like it: >= 95 % top-1 agreement on real images, here with
the fp16 source model instead of PyTorch. The metadata is the source's (classes, preprocessing, temperature,
out-of-distribution reference) with the export settings saying what was done; refit the out-of-distribution
reference on the INT8 features with scripts/fit_ood.py (second command) so its scores are its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import replace
from pathlib import Path

import onnx
import onnxruntime

from mri44.atomic import atomic_path
from mri44.discover import find_images
from mri44.files import file_sha256
from mri44.onnx_meta import INPUT_NAME, OUTPUT_NAME, ModelMetadata
from mri44.runtime import make_session
from mri44.samples import spread
from mri44.stages.export.int8 import float32_graph, quantize_int8
from mri44.stages.export.parity import compare, format_table, real_batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="an exported mri44 model (fp16 or fp32)")
    parser.add_argument("--calibration", type=Path, required=True, help="images the source model trained on")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--images", type=Path, help="real images for the gate (default: --calibration)")
    parser.add_argument("--max-images", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists; choose a new file")
    source = onnx.load(str(args.source))
    meta = ModelMetadata.from_proto(source, str(args.source))
    files = spread(find_images(args.calibration), args.calibration_images)
    proto = quantize_int8(float32_graph(source), files, meta.preprocess)
    export = {
        **meta.export,
        "precision": "int8",
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": f"{args.source.name} (sha256 {file_sha256(args.source)}), requantised from ONNX",
        "onnxruntime": onnxruntime.__version__,
    }
    onnx.helper.set_model_props(proto, replace(meta, export=export).to_props())
    proto.doc_string = source.doc_string
    onnx.checker.check_model(proto, full_check=True)
    batch, _ = real_batch(args.images or args.calibration, meta.preprocess, args.max_images)
    reference, candidate = (
        make_session(m.SerializeToString(), "cpu").run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        for m in (source, proto)
    )
    row = compare(f"real x{len(batch)}", reference, candidate, "int8")
    print(format_table([row], "parity int8 vs its fp16 source (ONNX Runtime, CPU)"))
    if not row.passed:
        raise SystemExit("error: parity check failed: nothing written")
    with atomic_path(args.out, replace=False) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
