"""torchrun / DDP plumbing: the same code runs as one process or as N (gloo on CPU, NCCL on GPU).

Evaluation is exact: each rank scores a disjoint slice of the data (no padding with duplicates,
unlike ``DistributedSampler``), and counts are summed across ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists every backend it was built with
        hint = " (did you mean cuda?)" if name.lower().startswith("gpu") else ""
        raise ValueError(
            f"--device {name} is not a device{hint}; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu"
        )
    return device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks (returns ``t`` unchanged without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate per-rank tensors of different lengths along dim 0, in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes, strict=True)])


def every_rank(ok: bool, device: torch.device) -> bool:
    """Whether ``ok`` holds on every rank, so all ranks take the same branch (and enter the same
    collectives); one process answers without a device round-trip."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return ok
    failed = torch.tensor([0.0 if ok else 1.0], device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.SUM)
    return failed.item() == 0


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """This rank's disjoint share of ``range(n)`` for exact evaluation (no duplicates)."""
    return list(range(info.rank, n, info.world_size))


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of rank ``rank``'s model randomness (dropout, drop-path) in ``epoch``.

    Ranks share ``--seed`` for everything that must agree (initialisation, the global batch
    order), but with one shared generator every rank would draw the same dropout and
    drop-path masks for its slice of the batch, unlike one process with the whole batch. The
    seed depends on the epoch so a resumed run reseeds each rank exactly as an unbroken one did.
    """
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def check_world_size(saved: int, current: int) -> None:
    """Refuse to resume a run with a process count other than the one that started it.

    The peak learning rate scales with the global batch (per-process batch x processes) and
    each global batch is cut into per-rank slices, so another count would silently train a
    different run from the checkpoint on.
    """
    if saved != current:
        raise ValueError(
            f"the run was trained by {_processes(saved)} and this resume has "
            f"{_processes(current)}: the learning rate and the data order depend on the count, "
            f"so resume with {saved} (torchrun --nproc_per_node={saved} ... on one machine"
            f"{'' if saved > 1 else ', or plain `adaptformer train`'}) or start a new --output"
        )


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"
