"""Scoring and training throughput against their bounds and a naive baseline; prints a Markdown table and
writes it to docs/benchmarks.md.

    python benchmarks/bench.py --data ../shared/data/brain-mri-44c [--images 512] [--repeats 3] [--memory]

All rows are measured in one run, on the same images, and reported as medians of --repeats runs (these
machines are noisy). Ratios are formed from medians of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_util import bench_parser, median_rate, subset_folder  # noqa: E402

from mri44.discover import find_images  # noqa: E402
from mri44.limits import Limits  # noqa: E402
from mri44.preprocess import normalize  # noqa: E402
from mri44.readers import list_items  # noqa: E402
from mri44.samples import spread  # noqa: E402
from mri44.stages.score.backends import Backend, onnx_backend  # noqa: E402
from mri44.stages.score.pipeline import decoded_batches, score_items  # noqa: E402


def run_child(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `mri-score` process with these arguments.

    Peak memory is the child's own VmHWM, read at its exit: rusage's ru_maxrss would also count the pages of
    this (large) benchmark process that the child inherited before exec.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".hwm") as hwm:
        code = (
            "import atexit, re, sys\n"
            f"atexit.register(lambda: open({hwm.name!r}, 'w').write(re.search(r'VmHWM:\\s+(\\d+)', "
            "open('/proc/self/status').read()).group(1)))\n"
            f"sys.argv = ['mri-score', *{args!r}]\n"
            "from score.cli import main\nmain()\n"
        )
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"mri-score {' '.join(args)} exited {proc.returncode}: {proc.stderr[-500:]}")
        return wall, int(Path(hwm.name).read_text()) / 1024


def naive_baseline(folder: Path, size: int, checkpoint_model: torch.nn.Module, batch: int) -> None:
    """How most notebooks score: ImageFolder + DataLoader + a PyTorch eval loop."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(folder, tf), batch_size=batch, num_workers=2)
    with torch.no_grad():
        for x, _ in loader:
            checkpoint_model(x)


def train_bench(data: Path, paths: list[Path], size: int, batch: int, repeats: int) -> dict[str, float]:
    """Training loop (2 epochs on a class-folder subset; epoch 2 timed) against fwd+bwd+step on ready tensors."""
    from mri44.model import build_model
    from mri44.stages.train.config import TrainConfig
    from mri44.stages.train.loop import run_training
    from mri44.stages.train.recipes import get_recipe
    from mri44.stages.train.split import SplitConfig

    loop_rates = []
    with tempfile.TemporaryDirectory() as tmp:
        sub = subset_folder(paths[:: max(1, len(paths) // 440)], data, 440, Path(tmp) / "data")
        for r in range(repeats):
            out = Path(tmp) / f"run{r}"
            cfg = TrainConfig(
                data=sub,
                out=out,
                recipe=get_recipe("default"),
                image_size=size,
                epochs=2,
                batch_size=batch,
                device="cpu",
                split=SplitConfig(phash_distance=-1, seed=r),
            )
            run_training(cfg)
            import polars as pl

            loop_rates.append(pl.read_csv(out / "metrics.csv")["train_images_per_s"][-1])
    model = build_model(44)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 44, (batch,))

    def steps(n: int = 4) -> None:
        for _ in range(n):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    bound = median_rate(steps, 4 * batch, repeats)
    return {"loop": statistics.median(loop_rates), "bound": bound}


def parse_args() -> argparse.Namespace:
    parser = bench_parser(__doc__, images=512)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=REPO / "runs/h200-default-256/best.pt",
        help="for PyTorch rows and fp16/int8 exports; without it those rows are skipped",
    )
    parser.add_argument("--model", type=Path, default=REPO / "models/mri44-resnet18.onnx")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--memory", action="store_true", help="also score 2,000 vs 20,000 images for peak memory"
    )
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument(
        "--device", default="cpu", help="cuda: the GPU tables of benchmarks/gpu.py instead (cpu: this table)"
    )
    parser.add_argument("--gpu-images", type=int, default=20000, help="with --device cuda: decodes per pass")
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="run the GPU tables' code on --device cpu, to check the script",
    )
    return parser.parse_args()


Rows = list[tuple[str, str]]


def model_rows(
    args: argparse.Namespace, shipped_backend: Backend, rows: Rows, rates: dict[str, float]
) -> tuple[dict[str, Backend], torch.nn.Module | None]:
    """Model-only throughput of the shipped model and, with a checkpoint, of its fp32/fp16/int8 exports and of
    PyTorch eager; returns the backends (for the end-to-end rows) and the PyTorch model (for the naive row)."""
    meta, bs = shipped_backend.meta, args.batch_size
    spec = meta.preprocess
    ready = normalize(
        np.random.default_rng(0).integers(
            0, 256, (bs, spec.size, spec.size, spec.cache_channels), dtype=np.uint8
        ),
        spec,
    )
    shipped = f"{meta.export['precision']}, shipped {args.model.name}"
    backends: dict[str, Backend] = {shipped: shipped_backend}
    model_pt = None
    if args.checkpoint.is_file():
        from mri44.stages.export.int8 import calibration_files
        from mri44.stages.export.onnx_export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            for precision in ("fp32", "fp16", "int8"):
                calib = calibration_files(args.data, args.checkpoint, 128) if precision == "int8" else None
                proto, model_pt, _ = export_onnx(
                    args.checkpoint, fp16=precision == "fp16", int8_calibration=calib
                )
                path = Path(tmp) / f"{precision}.onnx"
                path.write_bytes(proto.SerializeToString())
                backends[precision] = onnx_backend(path, "cpu")
    for precision, backend in backends.items():
        best = max(
            (median_rate(lambda r=backend.run, b=b: r(ready[:b]), b, args.repeats), b) for b in (1, 8, bs)
        )
        rates["model_shipped" if precision == shipped else f"model_{precision}"] = best[0]
        rows.append((f"model only, ONNX Runtime CPU {precision} (best batch {best[1]})", f"{best[0]:.1f}"))
    if model_pt is not None:
        model_pt.eval()
        with torch.no_grad():
            x = torch.from_numpy(ready)
            rates["model_torch"] = median_rate(lambda: model_pt(x), bs, args.repeats)
        rows.append((f"model only, PyTorch eager fp32 (batch {bs})", f"{rates['model_torch']:.1f}"))
    return backends, model_pt


def end_to_end_rows(
    args: argparse.Namespace,
    paths: list[Path],
    all_paths: list[Path],
    backends: dict[str, Backend],
    model_pt: torch.nn.Module | None,
    rows: Rows,
    rates: dict[str, float],
) -> None:
    """Whole scoring runs on a copy of the images: in process, as an `mri-score` process, the naive baseline,
    and with --memory the peak RSS at 2,000 and 20,000 images."""
    n, bs = len(paths), args.batch_size
    shipped_backend = next(iter(backends.values()))
    spec = shipped_backend.meta.preprocess
    with tempfile.TemporaryDirectory() as tmp:
        folder = subset_folder(paths, args.data, n, Path(tmp) / "in")

        def end_to_end(backend: Backend) -> float:
            """In-process scoring of the folder, as mri-score does it, without process start-up."""
            files = find_images(folder)
            score = lambda: score_items(  # noqa: E731
                backend, folder, list_items(files), batch_size=bs, workers=os.cpu_count() or 1, progress=False
            )
            return median_rate(score, n, args.repeats)

        rates["e2e_inproc"] = end_to_end(shipped_backend)
        rows.append(("end to end, in process (no start-up)", f"{rates['e2e_inproc']:.1f}"))
        if "int8" in backends:
            rates["e2e_int8"] = end_to_end(backends["int8"])
            rows.append(("end to end, in process, int8 model", f"{rates['e2e_int8']:.1f}"))
        cli = [str(folder), "--out", str(Path(tmp) / "p.parquet"), "--model", str(args.model)]
        walls, peaks = [], []
        for _ in range(args.repeats):
            wall, peak = run_child([*cli, "--device", "cpu", "--overwrite"])
            walls.append(wall)
            peaks.append(peak)
        rates["e2e_cli"] = n / statistics.median(walls)
        rows.append(
            (
                f"end to end, `mri-score` process (with start-up; peak RSS {statistics.median(peaks):.0f} MiB)",
                f"{rates['e2e_cli']:.1f}",
            )
        )
        if model_pt is not None:
            rates["naive"] = median_rate(
                lambda: naive_baseline(folder, spec.size, model_pt, bs), n, args.repeats
            )
            rows.append(
                ("naive: ImageFolder + DataLoader(2 workers) + PyTorch eval loop", f"{rates['naive']:.1f}")
            )
        for count in (2000, 20000) if args.memory else ():
            big = subset_folder(all_paths, args.data, count, Path(tmp) / f"m{count}")
            out = Path(tmp) / f"m{count}.parquet"
            wall, peak = run_child(
                [str(big), "--out", str(out), "--model", str(args.model), "--device", "cpu"]
            )
            rows.append(
                (
                    f"memory: `mri-score` on {count:,} images: peak RSS {peak:.0f} MiB, {count / wall:.1f} img/s",
                    "-",
                )
            )


def ratio_rows(rates: dict[str, float], tr: dict[str, float]) -> list[tuple[str, float, str]]:
    """The ratios the project holds itself to, from the measured rates."""
    ratios = [
        (
            "end to end (in process) / min(decode, model only) for the shipped model",
            rates["e2e_inproc"] / min(rates["decode"], rates["model_shipped"]),
            ">= 0.9",
        ),
        ("training loop / forward+backward bound", tr["loop"] / tr["bound"], ">= 0.9"),
    ]
    if "naive" in rates:
        ratios.insert(
            1, ("end to end (in process) / naive baseline", rates["e2e_inproc"] / rates["naive"], ">= 2")
        )
    if "e2e_int8" in rates:
        ratios.append(("end to end int8 / end to end shipped", rates["e2e_int8"] / rates["e2e_inproc"], "-"))
    if "model_int8" in rates and "model_fp32" in rates:
        ratios.append(
            ("model int8 / model fp32", rates["model_int8"] / rates["model_fp32"], ">= 1.5 to ship")
        )
    return ratios


def cpu_name() -> str:
    if not Path("/proc/cpuinfo").exists():
        return platform.processor()
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )


def main() -> None:
    args = parse_args()
    if args.device != "cpu" or args.rehearse:
        from gpu import run as run_gpu

        lines = run_gpu(args.data, args.device, args.gpu_images, args.repeats, os.cpu_count() or 1, 256)
        write_section(args.out, f"<!-- bench.py --device {args.device} output -->", "\n".join(lines))
        return

    threads = torch.get_num_threads()
    all_paths = find_images(args.data)
    paths = spread(all_paths, args.images)
    shipped_backend = onnx_backend(args.model, "cpu")
    spec = shipped_backend.meta.preprocess
    bs = args.batch_size
    rows: Rows = []
    rates: dict[str, float] = {}

    def decode_only() -> None:
        for _ in decoded_batches(list_items(paths), spec, bs, os.cpu_count() or 1, 2 * bs, Limits()):
            pass

    rates["decode"] = median_rate(decode_only, len(paths), args.repeats)
    rows.append(("decode + preprocess (scorer pipeline, all cores)", f"{rates['decode']:.1f}"))
    backends, model_pt = model_rows(args, shipped_backend, rows, rates)
    end_to_end_rows(args, paths, all_paths, backends, model_pt, rows, rates)
    tr = train_bench(args.data, all_paths, args.train_size, bs, max(1, args.repeats - 1))
    rows.append((f"training loop, CPU, {args.train_size} px, batch {bs} (epoch 2)", f"{tr['loop']:.1f}"))
    rows.append(("forward+backward+step on ready tensors, same size and batch", f"{tr['bound']:.1f}"))
    head = [
        f"Machine: {os.cpu_count()} cores ({cpu_name()}), torch threads {threads}, GPU: "
        + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"),
        f"Versions: Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"numpy {np.__version__}",
        f"Images: {len(paths)} real images from {args.data.name}, model input {spec.size}px; medians of "
        f"{args.repeats} runs.",
        "",
        "| measurement | images/s |",
        "| --- | ---: |",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        "| ratio | value | target |",
        "| --- | ---: | --- |",
        *[f"| {a} | {v:.2f} | {t} |" for a, v, t in ratio_rows(rates, tr)],
    ]
    write_section(args.out, "<!-- bench.py output -->", "\n".join(head))


def write_section(out: Path, marker: str, text: str) -> None:
    """Print text and put it into `out` under marker, replacing that section (up to the next marker) only."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = out.read_text() if out.exists() else "# Benchmarks\n"
    before, _, after = existing.partition(marker)
    rest = after[after.index("<!-- bench.py") :] if "<!-- bench.py" in after else ""
    out.write_text(before.rstrip() + "\n\n" + marker + "\n" + text + "\n" + ("\n" + rest if rest else ""))


if __name__ == "__main__":
    main()
