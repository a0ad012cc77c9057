"""Training throughput of ResNet-18 by precision and memory layout, on this machine's CPU (or GPU with --device).

Prints a table of images/s for one optimiser step (forward, backward, AdamW) on random inputs, median of
--repeats after a warm-up step, and each row's ratio to plain fp32. This is what `python -m train --precision
auto` rests on: bf16 autocast pays only where the hardware computes bf16 natively (AVX-512 BF16 or AMX on CPUs);
on AVX2-only CPUs it is emulated and slower.

    python benchmarks/train_precision.py --size 160 --batch 64 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_util import median_rate  # noqa: E402

from mri44.stages.train.config import cpu_has_native_bf16  # noqa: E402


def step_rate(
    device: torch.device, size: int, batch: int, repeats: int, channels_last: bool, bf16: bool
) -> float:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=44).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 44, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return median_rate(step, batch, repeats, sync)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, native CPU bf16: {cpu_has_native_bf16()}")
    print(f"ResNet-18 training step, {args.size} px, batch {args.batch}, median of {args.repeats}\n")
    print("| precision | layout | images/s | ratio to fp32 |")
    print("| --- | --- | ---: | ---: |")
    base = None
    for bf16, channels_last in ((False, False), (False, True), (True, False), (True, True)):
        rate = step_rate(device, args.size, args.batch, args.repeats, channels_last, bf16)
        base = base or rate
        layout = "channels_last" if channels_last else "NCHW"
        print(
            f"| {'bf16 autocast' if bf16 else 'fp32'} | {layout} | {rate:.1f} | {rate / base:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
