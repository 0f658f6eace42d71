"""The processes of a data-parallel run, and the few collectives scoring and evaluation need.

Under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1) the process group is started
by accelerate's :class:`~accelerate.PartialState` (NCCL on GPUs, gloo on CPU); otherwise there
is no group and every collective here is the identity, so one process behaves exactly as if
this module did not exist. Objects travel as JSON in ``uint8`` tensors: nothing is pickled.

>>> world = current_world()        # World(rank=0, size=1) outside a launcher
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Item ``index`` of a global sequence is this process's (round robin)."""
        return index % self.size == self.rank


def launched_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current_world(cpu: bool | None = None) -> World:
    """This process's rank and the number of processes, starting the process group if a
    launcher asked for one. ``cpu=True`` takes gloo even on a machine with GPUs (without GPUs
    it always is gloo)."""
    if not dist.is_available():
        return World()
    if not dist.is_initialized():
        if launched_size() <= 1:
            return World()
        _start_group(cpu)
    size = dist.get_world_size()
    return World(dist.get_rank(), size) if size > 1 else World()


def process_device(requested: str | None) -> str | None:
    """The device a process of this run should use: on GPUs each process gets its own
    (``cuda:LOCAL_RANK``) unless an indexed device was asked for; otherwise ``requested``."""
    if launched_size() <= 1 or not torch.cuda.is_available():
        return requested
    if requested in (None, "cuda", "gpu"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return requested


def _start_group(cpu: bool | None) -> None:
    from accelerate import PartialState

    use_cpu = bool(cpu) or not torch.cuda.is_available()
    # accelerate chooses NCCL on GPUs; on CPU it needs cpu=True and then takes gloo (MPI only
    # when torch was built with it, which pip wheels are not).
    state = PartialState(cpu=True, backend="gloo") if use_cpu else PartialState()
    if not dist.is_initialized() or state.num_processes != launched_size():
        raise ValueError(
            f"WORLD_SIZE={launched_size()} but no process group could be started "
            f"(accelerate reports {state.num_processes} process(es), backend {state.backend}). "
            "Launch with torchrun or accelerate launch, or unset WORLD_SIZE for one process."
        )


def shutdown() -> None:
    """End the process group, if one was started (the CLI calls this on its way out)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU under NCCL, else the CPU."""
    if "nccl" in str(dist.get_backend()):  # this process's GPU, as the launcher numbered it
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def all_reduce_sum(tensors: dict[str, Tensor], world: World) -> None:
    """Sum each tensor over all processes, in place (float64 and int64 stay exact types)."""
    if world.size == 1:
        return
    device = _comm_device()
    for value in tensors.values():
        buffer = value.to(device)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        value.copy_(buffer.to(value.device))


def all_gather_tensor(value: Tensor, world: World) -> list[Tensor]:
    """Every process's ``value`` (same shape and dtype everywhere), in rank order, on CPU."""
    if world.size == 1:
        return [value]
    device = _comm_device()
    local = value.to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local)
    return [part.cpu() for part in parts]


def all_gather_json(value: Any, world: World) -> list[Any]:
    """Every process's JSON-serialisable ``value``, in rank order (sent as UTF-8 bytes)."""
    if world.size == 1:
        return [value]
    data = json.dumps(value).encode()
    sizes = all_gather_tensor(torch.tensor([len(data)], dtype=torch.int64), world)
    width = max(int(s) for s in sizes)
    local = torch.zeros(width, dtype=torch.uint8)
    local[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    parts = all_gather_tensor(local, world)
    return [
        json.loads(part[: int(size)].numpy().tobytes().decode())
        for part, size in zip(parts, sizes, strict=True)
    ]


def shared_map(work: Callable[[int], Any], n: int, world: World) -> list[Any]:
    """``[work(0), ..., work(n - 1)]`` with each item computed by one process (round robin) and
    gathered, so every process holds them all; ``work`` returns JSON-serialisable values."""
    done: dict[int, Any] = {}
    for part in all_gather_json({i: work(i) for i in range(n) if world.owns(i)}, world):
        done.update({int(i): value for i, value in part.items()})
    return [done[i] for i in range(n)]


def broadcast_json(value: Any, world: World) -> Any:
    """Rank 0's JSON-serialisable ``value``, on every process."""
    if world.size == 1:
        return value
    return all_gather_json(value if world.is_main else None, world)[0]
