"""Data-parallel training under torchrun: every rank sees the same global batches as a single-process run would,
split between the ranks, and only rank 0 writes the run folder.

`torchrun --nproc-per-node N -m train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is
a no-op and training is the plain single-process loop. Each global batch of `batch_size` images is augmented
identically on every rank (one shared generator, so last.pt's generator states resume any rank), then rank r
trains on its slice of batch_size / N images; DistributedDataParallel averages the gradients (NCCL on CUDA, gloo
on the CPU), which gives the single-process update up to BatchNorm statistics being per rank.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_ranks(device: torch.device) -> Ranks:
    """Join torchrun's process group when launched by it; on other ranks than 0, log warnings only."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not ranks.main:
        for name in ("mri44", "train", "export", "score"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return ranks


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per process on CUDA (cuda:LOCAL_RANK); the CPU stays the CPU."""
    if device.type == "cuda" and ranks.active:
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    return device


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()


def all_mean(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of a scalar over the ranks (the epoch's training loss)."""
    if not ranks.active:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / ranks.world


def gather_rows(rows: torch.Tensor, ranks: Ranks) -> list[torch.Tensor]:
    """Every rank's rows (e.g. its share of the validation logits), in rank order, on every rank."""
    if not ranks.active:
        return [rows]
    parts: list[object] = [None] * ranks.world
    dist.all_gather_object(parts, rows.cpu())
    return [p for p in parts if isinstance(p, torch.Tensor)]


def wrap(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """The module that training calls: DistributedDataParallel across the ranks, or the model itself."""
    if not ranks.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def finish(ranks: Ranks) -> None:
    """Leave the process group (no barrier: after an error on one rank the others must not wait forever)."""
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()
