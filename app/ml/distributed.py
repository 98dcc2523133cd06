"""Data-parallel training on PyTorch's own engine (DistributedDataParallel under torchrun).

Users are sharded across ranks; every rank holds the full model and the gradients are
averaged by DDP (gloo on CPU, nccl on GPU). Rank 0 alone validates; its figures and its
decisions (early stopping, what the refit trains) are broadcast, so every rank keeps the
same epochs and takes the same collective steps. With no process group
initialised everything here is a no-op, so the single-process trainer uses the same code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


class _DDP(DistributedDataParallel):
    """DDP that still exposes the wrapped model's attributes (`rank_out`, `config`...)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> DistributedContext:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
        """find_unused: a head whose loss weight is 0 gets no gradient (DDP must know)."""
        if not self.active:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return _DDP(model, device_ids=ids, find_unused_parameters=find_unused)

    def shard(self, users: np.ndarray) -> np.ndarray:
        return users[self.rank :: self.world]

    @contextlib.contextmanager
    def join(self, model: nn.Module) -> Iterator[None]:
        """Uneven shards: ranks that run out of batches shadow the others' all-reduces."""
        if isinstance(model, DistributedDataParallel):
            with model.join():
                yield
        else:
            yield

    def agree(self, decision: bool) -> bool:
        """Rank 0's decision, on every rank."""
        return bool(self.from_main(decision))

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object), on every rank: what only rank 0
        computes (validation figures) or what timing decides (a deadline) must not let
        the ranks' next collective steps differ."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_from_environment(device: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE...)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("--distributed needs torchrun (RANK and WORLD_SIZE are not set)")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext.current()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
