"""torch.distributed for batch detection: the rank from torchrun's environment and the final barrier."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Sequence

from detection.runs.batch.errors import BatchError

# A rank that finishes early waits for the slowest at the final barrier; gloo's default 30 minutes
# is far too short for an uneven split of a large input.
BARRIER_TIMEOUT = timedelta(days=2)


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment variables; (0, 1, 0) without them."""
    try:
        return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as err:
        raise BatchError(f"RANK/WORLD_SIZE/LOCAL_RANK: not integers ({err})") from None


def gather_counts(counts: Sequence[int]) -> list[int]:
    """Sum ``counts`` over all ranks, which also waits for every rank (the final barrier).

    Joins a gloo process group (env:// rendezvous from torchrun) only here, at the end: no rank
    needs the others before, so a slow start of one rank delays nobody.
    """
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        total = torch.tensor(list(counts), dtype=torch.int64)
        dist.all_reduce(total)
        return total.tolist()
    finally:
        dist.destroy_process_group()
