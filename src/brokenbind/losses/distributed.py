"""Contrastive losses over the global batch under DDP, with gradients equal to one process on that batch.

Each rank scores its *local rows* against *gathered columns* (every rank's rows, autograd-aware gather) with labels
offset by ``rank × local batch``, and averages over its local rows. DDP averages gradients over ranks, so the result
is the gradient of the global mean (open_clip's local_loss=True with gather_with_grad=True). A
gather without autograd would drop the gradient through remote columns, and a local loss over such columns points in
a wrong direction.

Terms that need the whole batch at once (MOX's pseudo-inverses, CentroBind's anchors) are computed from gathered
embeddings, identically on every rank; their gradients are exact for the same reason (the gather's backward sums
each rank's contribution, DDP divides by the world size).
"""

from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor
from torch.distributed._functional_collectives import all_gather_single

from brokenbind.world import world


def gather_rows(x: Tensor) -> Tensor:
    """Rows of ``x`` from every rank in rank order; gradients flow back to the rank that owns each row.

    Every rank must hold the same number of rows (drop_last), or the collective stalls.
    """
    _, size = world()
    if size == 1:
        return x
    # torch's functional collective: differentiable (its backward reduce-scatters the gradient to each row's owner);
    # it replaces the deprecated torch.distributed.nn.functional.all_gather
    return all_gather_single(x.contiguous(), gather_dim=0, group=dist.group.WORLD)


@dataclass(frozen=True)
class Batch:
    """One training batch seen by one rank: ``local[ds][m]`` are this rank's rows, ``full[ds][m]`` every rank's rows,
    and this rank's rows sit at ``full[ds][m][offset : offset + B]``. Single-process: full is local, offset is 0."""

    local: dict[str, dict[str, Tensor]]
    full: dict[str, dict[str, Tensor]]
    offset: int

    @classmethod
    def gather(cls, local: dict[str, dict[str, Tensor]]) -> "Batch":
        rank, size = world()
        if size == 1:
            return cls(local, local, 0)
        sizes = {len(x) for mods in local.values() for x in mods.values()}
        if len(sizes) != 1:
            raise ValueError(f"every dataset must contribute the same number of rows per rank, got {sorted(sizes)}")
        full = {ds: {m: gather_rows(x) for m, x in mods.items()} for ds, mods in local.items()}
        return cls(local, full, rank * sizes.pop())
