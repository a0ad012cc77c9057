"""Write a compact copy of a folder-per-class image set: greyscale, longest side <= --max-side, re-encoded.

For moving the data set to a machine that has a GPU but a small transfer budget. Relative paths (and so the
split of an earlier run, via `python -m train --split-file`) stay valid; file names and extensions are kept.
Colour is dropped, which the default recipe (channels="grey") does anyway.

    python scripts/make_compact_copy.py ../shared/data/brain-mri-44c .gpu/data --max-side 256 --quality 88
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from mri44.discover import find_images
from mri44.imageio import ImageDecodeError
from mri44.readers import read_image


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--quality", type=int, default=88)
    args = parser.parse_args()
    total, failed = 0, 0
    for path in find_images(args.src):
        rel = path.relative_to(args.src)
        try:
            image = read_image(path)
        except ImageDecodeError as exc:
            print(f"skipped: {exc}")
            failed += 1
            continue
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        h, w = grey.shape
        scale = args.max_side / max(h, w)
        if scale < 1:
            grey = cv2.resize(
                grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        ext = rel.suffix.lower()
        params = (
            [cv2.IMWRITE_WEBP_QUALITY, args.quality]
            if ext == ".webp"
            else [cv2.IMWRITE_JPEG_QUALITY, args.quality]
        )
        ok, data = cv2.imencode(ext if ext in (".webp", ".png") else ".jpg", grey, params)
        if not ok:
            raise RuntimeError(f"could not encode {rel}")
        out = args.dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data.tobytes())
        total += len(data)
    print(f"wrote {args.dst}: {total / 1e6:.1f} MB, {failed} skipped")


if __name__ == "__main__":
    main()
