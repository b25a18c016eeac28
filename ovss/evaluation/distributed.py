"""torch.distributed plumbing of ``ovss eval``: one process per GPU under torchrun, images sharded
over the ranks, the summable statistics all-reduced (so the numbers equal a single-process run)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..segmenter import resolve_device



@dataclass
class Dist:
    """This process's place in the run: rank, world size, backend, and whether ovss started the group."""

    rank: int = 0
    world: int = 1
    backend: str | None = None
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1


def eval_device(device: str | torch.device | None) -> str:
    """"auto"/None -> cuda (this rank's LOCAL_RANK GPU) when available, else cpu; "cuda" -> cuda:LOCAL_RANK."""
    d = str(device) if device is not None else "auto"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cuda" and torch.cuda.is_available() and "WORLD_SIZE" in os.environ:
        d = f"cuda:{local}"
    return str(resolve_device(d))


def dist_setup(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), dist.get_backend(), False)
    if world <= 1:
        return Dist()
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    try:
        dist.init_process_group(backend=backend)
    except (ValueError, RuntimeError) as exc:  # e.g. WORLD_SIZE set by hand without MASTER_ADDR/PORT
        raise InputError(f"cannot start torch.distributed ({backend}) with WORLD_SIZE={world}: {exc}; "
                         "launch with torchrun, or unset WORLD_SIZE for one process") from None
    return Dist(dist.get_rank(), dist.get_world_size(), backend, True)


def all_reduce(d: Dist, arr: np.ndarray, device: str, op: str = "sum") -> np.ndarray:
    if not d.active:
        return arr
    import torch.distributed as dist

    t = torch.from_numpy(np.ascontiguousarray(arr))
    if d.backend == "nccl":  # NCCL reduces CUDA tensors only, whatever device scored the images
        cuda = torch.device(device) if device.startswith("cuda") else torch.device("cuda", torch.cuda.current_device())
        t = t.to(cuda)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu().numpy()


def gather_to_rank0(d: Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable) on rank 0, in rank order (``gather_object``); [] on the
    other ranks; ``[obj]`` on one process."""
    if not d.active:
        return [obj]
    import torch.distributed as dist

    parts: list[Any] | None = [None] * d.world if d.rank == 0 else None
    dist.gather_object(obj, parts, dst=0)
    return list(parts) if parts is not None else []


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``broadcast_object_list``)."""
    if not d.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist, device: str) -> None:
    if d.active:
        all_reduce(d, np.zeros(1, dtype=np.int64), device)  # a tiny collective works on any backend
