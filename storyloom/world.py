"""The processes one run trains on: PyTorch's torch.distributed, launched by torchrun.

storyloom has no distribution scheme of its own. `torchrun --nproc-per-node N
-m storyloom train ...` starts N processes and gives each RANK, WORLD_SIZE,
LOCAL_RANK and a rendezvous; `World.join()` joins that group (nccl on CUDA,
one GPU per process; gloo on the CPU) and the trainer does the rest with
DistributedDataParallel and a few collectives. Started any other way,
`World.join()` is `SOLO` and no collective ever runs: training is exactly
what it is in one process.

Every collective runs under a timeout, and a lost peer (a rank died, the
network broke) surfaces as `RankLost`: one line and exit 1, never a hang.
"""

from __future__ import annotations

import datetime
import gc
import inspect
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .errors import RankLost, UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


LOST_MARKS = ("gloo", "NCCL", "Connection", "connection", "Timed out", "timed out", "Socket", "socket")


def launched() -> bool:
    """Started by torchrun (or anything that sets its environment)?"""
    return all(v in os.environ for v in TORCHRUN_VARS)


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun): for what only rank 0 should print."""
    try:
        return int(os.environ.get("RANK", 0)) if launched() else 0
    except ValueError:
        return 0


class World:
    """This process's place among the ranks training one run. SOLO (rank 0 of 1) outside torchrun."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, local_size: int = 1, backend: str = ""):
        self.rank, self.size, self.local_rank, self.local_size, self.backend = rank, size, local_rank, local_size, backend

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, backend={self.backend or 'none'})"

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run directory and shows progress."""
        return self.rank == 0

    @property
    def joined(self) -> bool:
        return bool(self.backend)

    @classmethod
    def join(cls, dev: torch.device, timeout_s: float) -> "World":
        """Join torchrun's group if this process was launched by it; SOLO otherwise."""
        if not launched():
            return SOLO
        try:
            rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local_rank = int(os.environ["LOCAL_RANK"])
            local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        except ValueError:
            raise UserError("torchrun's RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun") from None
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl":
            if local_rank >= torch.cuda.device_count():
                raise UserError(f"rank {rank} is local rank {local_rank} but this machine shows "
                                f"{torch.cuda.device_count()} GPU(s); give torchrun --nproc-per-node at most that many")
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            kw = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
        return cls(rank, size, local_rank, local_size, backend)

    def device(self, dev: torch.device) -> torch.device:
        """This rank's device: its own GPU under nccl."""
        return torch.device("cuda", self.local_rank) if dev.type == "cuda" and self.joined else dev

    def threads(self, cores: int) -> int:
        """CPU threads for each rank: the cores shared evenly among this machine's ranks (0 in one process: storyloom's default)."""
        return max(1, cores // self.local_size) if self.joined else 0

    def shard(self, batch_size: int) -> slice:
        """The streams this rank owns: an even share of the global batch."""
        if batch_size % self.size:
            raise UserError(f"--batch-size {batch_size} does not split evenly over {self.size} ranks; give a multiple "
                            f"of {self.size} (the batch is global: each rank trains batch-size / ranks streams)")
        b = batch_size // self.size
        return slice(self.rank * b, (self.rank + 1) * b)

    # -- collectives (each a no-op in one process) ---------------------------
    @contextmanager
    def collective(self, what: str):
        """Turn a failed collective into one line naming this rank and what it was doing."""
        try:
            yield
        except RuntimeError as e:
            # DistError is torch's word for a failed collective; gloo reports a dead peer as a plain RuntimeError.
            lost = isinstance(e, dist.DistError) or any(m in str(e) for m in LOST_MARKS)
            if not self.joined or not lost:
                raise
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise RankLost(f"rank {self.rank} of {self.size} lost the others while {what} (a rank died, hung past "
                           f"--dist-timeout, or the network broke): {reason}; relaunch every rank with --resume RUN to continue from "
                           f"the last checkpoint") from None

    def _dev(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def sum(self, values: torch.Tensor, what: str = "adding up figures") -> torch.Tensor:
        """The sum over ranks of `values` (float64 on the CPU here and there)."""
        if not self.joined:
            return values
        t = values.to(self._dev(), torch.float64)
        with self.collective(what):
            dist.all_reduce(t)
        return t.cpu()

    def mean_(self, t: torch.Tensor, what: str = "averaging the loss") -> torch.Tensor:
        """`t` averaged over ranks, in place on its device."""
        if self.joined:
            with self.collective(what):
                dist.all_reduce(t)
            t /= self.size
        return t

    def clock(self, elapsed: float, stop: bool) -> tuple[float, bool]:
        """Rank 0's clock and whether any rank was asked to stop: so every rank decides limits, evaluations and
        stops the same way."""
        if not self.joined:
            return elapsed, stop
        t = self.sum(torch.tensor([elapsed if self.main else 0.0, float(stop)]), "agreeing on the clock")
        return float(t[0]), bool(t[1] > 0)

    def gather(self, t: torch.Tensor, what: str = "gathering a checkpoint") -> list[torch.Tensor]:
        """Every rank's `t` (same shape and dtype on each), in rank order, on the CPU."""
        if not self.joined:
            return [t]
        src = t.to(self._dev()).contiguous()
        out = [torch.empty_like(src) for _ in range(self.size)]
        with self.collective(what):
            dist.all_gather(out, src)
        return [o.cpu() for o in out]

    def broadcast(self, obj, what: str = "sharing the run's place"):
        """Rank 0's `obj` on every rank (a small picklable value: a path, a flag)."""
        if not self.joined:
            return obj
        box = [obj]
        with self.collective(what):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def together(self, fn, what: str):
        """Run fn on every rank; if it raises a UserError on any rank, raise it on all (the lowest rank's words).

        Bad input found by one rank (a file only it cannot read) must stop every rank with the same line,
        not leave the others waiting in a collective.
        """
        error, result = None, None
        try:
            result = fn()
        except UserError as e:
            if not self.joined:
                raise
            error = str(e)
        if self.joined:
            errors = [None] * self.size
            with self.collective(what):
                dist.all_gather_object(errors, error)
            failed = [(r, e) for r, e in enumerate(errors) if e is not None]
            if failed:
                r, e = failed[0]  # every rank raises the same line
                raise UserError(e if len(failed) == self.size and len({m for _, m in failed}) == 1 else f"rank {r}: {e}")
        return result

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module a training step calls: DistributedDataParallel averages the gradients over the ranks."""
        if not self.joined:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.backend == "nccl" else None
        # The model's buffers are constants (folding tables): nothing to send each step.
        quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                 else {"broadcast_buffers": False})
        with self.collective("starting data-parallel training"):
            return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True, **quiet)

    def abandon(self) -> None:
        """After an error on this rank: close the group without waiting for the others, who may be gone.
        Left open, it would be torn down at interpreter exit and abort the process there (SIGABRT, not our exit code)."""
        if self.joined and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()

    def leave(self) -> None:
        """After training ended on every rank: wait for all, then close the group (a rank that closes it while
        another still talks to it aborts in gloo's threads)."""
        if self.joined and dist.is_initialized():
            # A DistributedDataParallel left in a reference cycle would be freed during interpreter shutdown,
            # after its group is gone, and abort there: free it while the group still exists.
            gc.collect()
            with self.collective("finishing"):
                dist.barrier()
            dist.destroy_process_group()


SOLO = World()
