"""Data-parallel training over processes started by ``torchrun``.

``torchrun --nproc_per_node N -m attnlab.cli train CONFIG.yaml`` starts N copies of the trainer;
each reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment, joins one process
group (gloo on CPU, NCCL on CUDA, one GPU a process) and wraps the model in
``DistributedDataParallel``. A step takes N consecutive batches of the one batch order, one a
process, and averages the gradients over all their tokens (or images); rank 0 alone evaluates,
writes checkpoints and metrics and decides when to stop.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Distributed", "from_environment"]


@dataclass
class Distributed:
    """This process's place in the group.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 is the main process.
        world_size: processes in the group.
        local_rank: the process's index on its machine (its GPU).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The process's own GPU on CUDA; the CPU stays the CPU."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def all_sum(self, values: list[float | int], device: torch.device) -> list[float]:
        """Sums of ``values`` over all processes (one collective for the list)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` in every process (a picklable object)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """Leave the process group, all processes together. The barrier first lets gloo's worker
        threads finish this process's last collectives while the interpreter still runs: a worker
        that releases a collective's tensors drops their Python objects, and during the
        interpreter's shutdown that aborts the process ("terminate called without an active
        exception")."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def reseed(self, seed: int, step: int) -> None:
        """Seed this process's torch generator from (seed, rank, step): dropout differs between
        processes, and a resumed run draws what an uninterrupted one would."""
        torch.manual_seed(int(np.random.SeedSequence([seed, self.rank, step]).generate_state(1, np.uint64)[0] >> 1))


def from_environment(device: torch.device) -> Distributed | None:
    """Join the process group that ``torchrun`` describes in the environment; None when the
    process runs alone (no ``WORLD_SIZE`` or a world of one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Rank 0 evaluates while the others wait in their next collective: allow long evaluations.
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return Distributed(rank, world_size, local_rank)
