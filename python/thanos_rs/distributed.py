"""Several processes, one run: ``torchrun --nproc-per-node N -m thanos_rs.prune ...``.

Every rank holds the model and runs its share of the calibration batches
through each block; each layer Hessian is then summed over the ranks, weighted
by their token counts, which is the same running mean one process computes (up
to float rounding). The layer solves of a block are shared out whole,
balanced by their cost, and each pruned weight is broadcast from the rank that solved it,
so every rank continues with identical weights. Rank 0 evaluates, writes the
model and the report; ``--save`` must be on a filesystem every rank sees.

Whole layers, not rows of a layer: Thanos's and SparseGPT's unstructured masks,
magnitude's and every structured column choice rank the weights of all rows
together, and every rank would need the full ``O(b^3)`` factorisation of H
anyway, which is most of a large layer's time. Sharing out whole layers keeps
the results identical to one process and does no work twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import InputError, ThanosError

__all__ = ["World", "current_world", "init_from_env"]

# Ranks wait in collectives while rank 0 alone evaluates (lm-eval on a large model
# takes hours) and while one rank solves a 28672-wide layer on a CPU: the default
# 10-30 minutes would abort healthy runs. A failure is forwarded, never waited out.
COLLECTIVE_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of the run (rank 0 of 1 when alone)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def batches(self, batches: list) -> list:
        """This rank's calibration batches (every size-th, from its rank on)."""
        if len(batches) < self.size:
            raise InputError(
                f"{self.size} processes need at least {self.size} calibration batches, got {len(batches)}; "
                "raise --nsamples or lower --batch-size"
            )
        return batches[self.rank::self.size]

    def owners(self, shapes: list[tuple[int, int]]) -> list[int]:
        """The rank that solves each layer of a step: largest solve first, to the least loaded rank.

        A (c, b) solve costs about ``b^3 + c b^2`` (ALGORITHM.md, complexity); every rank
        computes the same assignment from the shapes alone.
        """
        load = [0.0] * self.size
        owners = [0] * len(shapes)
        for i in sorted(range(len(shapes)), key=lambda i: (-_cost(shapes[i]), i)):
            owners[i] = min(range(self.size), key=lambda r: (load[r], r))
            load[owners[i]] += _cost(shapes[i])
        return owners

    def mean_hessian(self, hessian: torch.Tensor, tokens: int) -> torch.Tensor:
        """The running mean over every rank's tokens, from each rank's own mean over ``tokens``."""
        if self.size == 1:
            return hessian
        total = hessian * tokens
        count = torch.tensor([float(tokens)], dtype=torch.float64, device=hessian.device)
        dist.all_reduce(total)
        dist.all_reduce(count)
        return total / count.item()

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object), on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def solve_on(self, owner: int, solve, tensor: torch.Tensor):
        """Run ``solve()`` on rank ``owner``; every rank gets its return value and ``tensor`` (in place).

        An error the owner meets is raised on every rank (a ThanosError as it is,
        anything else described in one), so none is left waiting in a collective.
        """
        if self.size == 1:
            return solve()
        outcome, failure = None, None
        if self.rank == owner:
            try:
                outcome = solve()
            except ThanosError as e:
                outcome = e
            except Exception as e:  # noqa: BLE001 - forwarded to the other ranks, then raised here as it is
                outcome, failure = ThanosError(f"rank {owner} failed: {type(e).__name__}: {e}"), e
        box = [outcome]
        dist.broadcast_object_list(box, src=owner)
        if failure is not None:
            raise failure
        if isinstance(box[0], ThanosError):
            raise box[0]
        dist.broadcast(tensor, src=owner)
        return box[0]


def _cost(shape: tuple[int, int]) -> float:
    rows, cols = shape
    return float(cols) ** 3 + float(rows) * cols * cols


def current_world() -> World:
    """The initialised default process group, if any, as a World."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env(device: str) -> World:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1).

    gloo for CPU runs, NCCL when the run's device is CUDA, where each rank takes
    the GPU of its LOCAL_RANK.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or dist.is_initialized():
        return current_world()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return current_world()
