"""A queue of past embeddings per dataset and modality: the rows a retrieval transition reads beyond one batch.

C-MCR retrieves pseudo targets from a memory of embeddings (arXiv 2305.14381, §3.2); BrokenBind's kernel transition
can read one too (``kernel_memory``). The queue holds the newest ``size`` rows of every (dataset, modality) of the
gathered batches, detached and in fp32; it is the same on every DDP rank (it is filled from the gathered batch) and
travels in checkpoints, so that a resumed run reads what an uninterrupted one would.
"""

import torch
from torch import nn

from brokenbind.methods.extrapolation import Embeddings


class EmbeddingMemory(nn.Module):
    """The newest ``size`` rows of every (dataset, modality), newest first (``rows``)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.rows: Embeddings = {}

    def get_extra_state(self) -> Embeddings:
        return self.rows

    def set_extra_state(self, state: Embeddings) -> None:
        self.rows = state

    def push(self, full: Embeddings) -> Embeddings:
        """Put the gathered batch ``full`` in front of each queue, keep the newest ``size`` rows, and return the
        queues with this batch's rows as given (their gradient flows) and the older rows detached."""
        queues = {}
        for ds, mods in full.items():
            old = self.rows.get(ds, {})
            queues[ds] = {
                m: (torch.cat([f.float(), old[m].to(f.device)]) if m in old else f.float())[: self.size]
                for m, f in mods.items()
            }
        self.rows = {ds: {m: f.detach() for m, f in mods.items()} for ds, mods in queues.items()}
        return queues
