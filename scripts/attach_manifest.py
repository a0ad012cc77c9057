"""Give an exported model the manifest of the images it trained on (issue 32), without its checkpoint.

    python scripts/attach_manifest.py MODEL.onnx --data DATA [--split RUN/split.parquet] --out NEW.onnx

The training images are the split's train rows (the run folder's split.parquet or split.csv), or every image
under --data for a model fitted on all of them. Each one's SHA-256, perceptual hash and thumbnail
(mri44.fingerprint) are computed from the file and stored in the model's metadata (mri44.training_manifest), so
every prediction says seen_in_training / near_training. Models trained from now on carry it from their checkpoint.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import polars as pl

from mri44.discover import find_images
from mri44.fingerprint import THUMB, TrainingManifest, fingerprint_tags
from mri44.imageio import decode_bytes, read_file
from mri44.onnx_meta import ModelMetadata, write_with_metadata
from mri44.run_folder import read_split


def manifest_of(files: list[Path]) -> TrainingManifest:
    def signed(path: Path) -> dict:
        raw = read_file(path)
        return fingerprint_tags(decode_bytes(raw, path), raw.tobytes())

    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(signed, files))
    return TrainingManifest(
        sha256=frozenset(str(f["sha256"]) for f in found),
        hashes=np.array([f["phash"] for f in found], np.uint64),
        thumbs=np.array([f["thumb"] for f in found], np.uint8).reshape(-1, THUMB, THUMB),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the image folder the model was trained on")
    parser.add_argument("--split", type=Path, help="its run's split file: the train rows are the manifest")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists() or args.out.resolve() == args.model.resolve():
        raise SystemExit(f"error: {args.out} exists or is the input model; choose a new file")
    if args.split is None:
        files = find_images(args.data)
    else:
        split = read_split(args.split)
        files = [args.data / p for p in split.filter(pl.col("split") == "train")["path"]]
    manifest = manifest_of(files)
    proto = onnx.load(str(args.model))
    meta = ModelMetadata.from_proto(proto, str(args.model))
    write_with_metadata(proto, replace(meta, training=manifest), args.out)
    print(f"wrote {args.out}: {len(files)} training images in its manifest")


if __name__ == "__main__":
    main()
