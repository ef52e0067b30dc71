"""Data-parallel training under `torchrun`: one process per GPU (or per CPU, with gloo).

`eebench train` started by `torchrun --nproc_per_node=N` finds torchrun's environment
(WORLD_SIZE, RANK, LOCAL_RANK) and trains as N ranks: every rank holds the whole method,
takes its contiguous part of each global batch (`loaders.sharded`: the same seeded
batches, in the same order, as one process) and runs the method's step on it, half-batch
logic included, as the released multi-GPU codes do. What keeps the ranks one model:

- gradients: the engine averages, over the ranks, the gradients of the parameters an
  optimizer is about to step, in one all-reduce after each backward
  (`World.average_gradients`). This is what DistributedDataParallel's hooks compute,
  without its wrapper, which does not fit every method: they call the backbone several
  times per step, in eval mode under no_grad, functionally (l2w's `functional_call` on
  the bare module), and step several optimizers, each on some of the parameters.
- buffers (BatchNorm running statistics): each rank normalises with its own batch
  statistics (no SyncBN, as in the originals); after every step the running statistics
  are rank 0's (`World.broadcast_buffers`, DDP's `broadcast_buffers`).
- epoch ends: rank 0 validates, selects and runs the method's `end_epoch`, then sends
  the whole method state to the others (`World.broadcast_state`).
- random draws (mixup, dropout): a stream per rank, rank 0's that of one process; every
  rank's state goes into the checkpoints (`World.gather`), so a resumed run draws on.

A single process is `World()`: every collective is then a no-op, so its numbers are
exactly those of a run that never heard of ranks.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run; `device` is the rank's own device,
    where its collectives run (the rank's GPU under NCCL, the CPU under gloo)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that validates and writes the run directory."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def average_gradients(self, params: Iterable[nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Every parameter's gradient averaged over the ranks, and the ranks' mean `loss`.

        A parameter without a gradient on every rank keeps none (SGD then skips it, momentum
        and decay included, as in one process); one with a gradient on some ranks only gets
        the average with zeros from the others (DDP's find_unused_parameters). One
        all-reduce carries the gradients, which ranks have them, and the loss.
        """
        if not self.distributed:
            return loss
        params = list(params)
        sizes = [p.numel() for p in params]
        flags = torch.tensor([float(p.grad is not None) for p in params], device=loss.device)
        flat = torch.cat([*map(_flat_grad, params), flags, loss.detach().float().reshape(1)])
        dist.all_reduce(flat)
        flat /= self.size
        grads, somewhere = flat[: sum(sizes)].split(sizes), flat[sum(sizes) : -1].tolist()
        for p, grad, has_grad in zip(params, grads, somewhere, strict=True):
            if has_grad:
                _set_grad(p, grad.view(p.shape))
        return flat[-1]

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics, step counters) on every rank."""
        if self.distributed:
            _broadcast([b.data for b in module.buffers()])

    def broadcast_state(self, module: nn.Module) -> None:
        """Rank 0's whole state (parameters and buffers) on every rank."""
        if self.distributed:
            state = module.state_dict().values()
            _broadcast([value for value in state if isinstance(value, torch.Tensor)])

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (picklable objects)."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, obj)
        return gathered


def _flat_grad(param: nn.Parameter) -> torch.Tensor:
    """The gradient as a flat vector (zeros when there is none)."""
    if param.grad is None:
        return torch.zeros(param.numel(), dtype=param.dtype, device=param.device)
    return param.grad.reshape(-1)


def _set_grad(param: nn.Parameter, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = torch.empty_like(param).copy_(grad)
    else:
        param.grad.copy_(grad)


def _broadcast(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values of `tensors`, in place, in one broadcast per dtype."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.broadcast(flat, src=0)
        for tensor, value in zip(group, torch.split(flat, [t.numel() for t in group]), strict=True):
            tensor.copy_(value.view(tensor.shape))


def world_of(device: torch.device) -> World:
    """This process's `World` for training on `device`: torchrun's ranks (found in its
    environment; the rank of a CUDA run trains on `cuda:LOCAL_RANK`), else the one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        _join(rank, device)
    return World(rank, size, device)


def _join(rank: int, device: torch.device) -> None:
    """Set up the process group (NCCL between GPUs, gloo between CPUs) once per process,
    torn down at exit (a second setup in the same process can hang on torchrun's store),
    and leave the run's log to rank 0 (the others log warnings only)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(dist.destroy_process_group)
    if rank:
        logging.getLogger("eebench").setLevel(logging.WARNING)
