"""The process group of a training run: one process, or several launched by ``torchrun``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process joins a group (gloo on CPU, NCCL on CUDA),
takes the CUDA device of its local rank or its share of the CPU cores, and the trainer wraps its
model in DistributedDataParallel. Outside ``torchrun`` every method is a cheap no-op.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


class Distributed:
    """Process-group facts (a single process when not launched by torchrun)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        self.owns_group = False
        if self.world > 1:
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            else:
                # share the cores between the local processes instead of oversubscribing them
                local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
            if not dist.is_initialized():
                # rank 0 evaluates alone after each epoch while the others wait: allow long waits
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                        timeout=datetime.timedelta(hours=3))
                self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """All-reduce sums of a few floats (identity in one process)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average floating buffers (BatchNorm running statistics) over the processes.

        DDP copies rank 0's buffers to the others at the start of every forward, but each rank's
        last forward of an epoch updates its own copy; averaging makes every rank hold the same
        (and better: estimated from all ranks' batches) statistics for evaluation and checkpoints.
        """
        if self.world == 1:
            return
        with torch.no_grad():
            for buf in model.buffers():
                if buf.is_floating_point():
                    dist.all_reduce(buf)
                    buf.div_(self.world)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel when there are several processes, else itself."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["Distributed"]
