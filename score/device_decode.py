"""JPEG decoding on the scoring device: batched nvJPEG on CUDA (torchvision.io.decode_jpeg), then resize and
normalisation on the device too (mri44.torch_input), so pixels never return to the host before the network.

Only JPEG goes this way. Every other format, and every JPEG the device decoder rejects (CMYK, lossless,
arithmetic-coded, damaged), is decoded on the CPU by the shared core, one file at a time, so a failure stays one
file's error row (device decoding is held to the fp16 export's parity bounds against the CPU path: inputs
within one grey level). The same refusals as the CPU path apply first (empty, truncated, over --max-pixels). On the CPU
device this is torchvision's libjpeg-turbo decoder, which is how the tests check the path without a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from mri44.fingerprint import THUMB_SOURCE, fingerprint_tags, sha256_of
from mri44.imageio import check_encoded, file_error, read_file
from mri44.limits import Limits
from mri44.preprocess import PreprocessSpec, load_item
from mri44.readers import Item, Tags
from mri44.torch_input import resize, to_channels, to_input, to_model_pixels

JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}

Prepared = tuple[
    str, torch.Tensor | np.ndarray, Tags | None
]  # ("jpeg", bytes, {"sha256": ...}) or ("pixels", uint8, tags)


def prepare(item: Item, spec: PreprocessSpec, limits: Limits) -> Prepared:
    """In a worker thread: a JPEG's checked bytes, or any other image decoded and resized on the CPU."""
    if item.format != "raster" or item.path.suffix.lower() not in JPEG_SUFFIXES:
        return ("pixels", *load_item(item, spec, limits))
    data = read_file(item.path, limits.max_pixels)
    check_encoded(data, item.path, limits.max_pixels)
    return "jpeg", torch.from_numpy(data), {"sha256": sha256_of(data)}


def device_fingerprint(image: torch.Tensor) -> dict[str, object]:
    """fingerprint_tags of an image decoded on the device, without bringing it to the host: the grey image is
    area-resized there to the 32 px the perceptual hash starts from (OpenCV's rule, within a grey level), and
    only those 32 x 32 pixels travel."""
    small = resize(to_channels(image, "grey"), THUMB_SOURCE, THUMB_SOURCE, "area")
    return fingerprint_tags(small[0].cpu().numpy(), None)


def decode_on_device(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decoded uint8 (C, H, W) per file, None where the device decoder refused it; one batched call when all go."""
    with warnings.catch_warnings():
        # torchvision 0.29 announces that its decoders move to TorchCodec; they work, and nvJPEG is why we use them.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.UNCHANGED, device=device))
        except RuntimeError:  # one bad file fails the batch: retry one by one to find it
            out: list[torch.Tensor | None] = []
            for data in encoded:
                try:
                    out.append(decode_jpeg(data, mode=ImageReadMode.UNCHANGED, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def _batch(
    items: list[Item],
    chunk: list[int],
    futures: list[Future],
    spec: PreprocessSpec,
    device: torch.device,
    limits: Limits,
) -> tuple[list[int], list[torch.Tensor], list[tuple[int, str]], list[Tags | None]]:
    """One batch: (positions, uint8 (C, S, S) per decoded image on the device, errors, tags)."""
    results: dict[int, torch.Tensor] = {}
    found: dict[int, Tags | None] = {}
    errors: list[tuple[int, str]] = []
    jpegs: list[tuple[int, torch.Tensor]] = []
    for i, future in zip(chunk, futures, strict=True):
        try:
            kind, value, found[i] = future.result()
        except Exception as exc:  # about this one file: its error row
            errors.append((i, file_error(exc)))
            continue
        if kind == "jpeg":
            jpegs.append((i, value))
        else:
            results[i] = torch.from_numpy(np.ascontiguousarray(value)).permute(2, 0, 1).to(device)
    decoded = decode_on_device([data for _, data in jpegs], device) if jpegs else []
    for (i, _), image in zip(jpegs, decoded, strict=True):
        try:
            if image is None or image.shape[0] not in (1, 3):  # refused, or CMYK/grey+alpha: the CPU decoder
                cpu, found[i] = load_item(items[i], spec, limits)
                results[i] = torch.from_numpy(np.ascontiguousarray(cpu)).permute(2, 0, 1).to(device)
            else:
                results[i] = to_model_pixels(image, spec)
                found[i] = {**(found[i] or {}), **device_fingerprint(image)}
        except Exception as exc:  # about this one file: its error row
            errors.append((i, file_error(exc)))
    positions = sorted(results)
    return positions, [results[i] for i in positions], errors, [found.get(i) for i in positions]


def device_batches(
    items: list[Item],
    spec: PreprocessSpec,
    batch_size: int,
    workers: int,
    device: torch.device,
    limits: Limits,
) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]], list[Tags | None]]]:
    """Yield (positions, normalised float (N, 3, S, S) on device, errors, tags) in item order, reading the next
    batch's files in worker threads while this one is decoded."""
    scale, bias = (torch.as_tensor(v, device=device) for v in spec.scale_bias())
    chunks = [list(range(s, min(len(items), s + batch_size))) for s in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max(1, workers)) as pool:

        def submit(chunk: list[int]) -> list[Future]:
            return [pool.submit(prepare, items[i], spec, limits) for i in chunk]

        pending = submit(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            current, pending = pending, (submit(chunks[k + 1]) if k + 1 < len(chunks) else [])
            positions, images, errors, tags = _batch(items, chunk, current, spec, device, limits)
            yield positions, (to_input(torch.stack(images), scale, bias) if images else None), errors, tags
