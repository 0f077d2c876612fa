"""Pseudo embeddings of the modalities a dataset lacks, extrapolated through shared pivots (BrokenBind Eqs. 5-8, 20-21).

``BrokenBind``'s MOX trains on them; the pivot diagnosis (``callbacks.diagnosis``) measures them for any method, with
the method's ``extrapolator`` (MOX's default linear transition for methods that have none of their own).
"""

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch.nn.functional as F
from torch import Tensor

from brokenbind.graph import PairingGraph
from brokenbind.losses.mox import kernel_transition, pivot_pinv, x_data, x_mod

# dataset name -> modality name -> (B, d) L2-normalised fp32 embeddings of one batch
Embeddings = dict[str, dict[str, Tensor]]


class Pseudo(NamedTuple):
    """Pseudo embeddings of one modality a dataset lacks: X-data (Eq. 8), X-mod (Eq. 7; None for the kernel
    transition, which has no X-mod form), ``origin``, the dataset's own real modality the chain starts from, and
    ``source``, the dataset whose real rows of the modality they are made of."""

    data: Tensor
    mod: Tensor | None
    origin: str
    source: str


@dataclass(frozen=True)
class Extrapolator:
    """How pseudo embeddings are extrapolated from another dataset's rows (``BrokenBind``'s arguments of the same
    names): the ``linear`` transition (the ``pinv_ridge`` pseudo-inverse of one batch's pivot rows) or the ``kernel``
    one (a softmax over pivot cosines with ``kernel_temperature``); ``normalize_pseudo`` L2-normalises them;
    ``pseudo_centring`` says whether their consumers move them onto the real target's mean (``target_mean``)."""

    transition: Literal["linear", "kernel"] = "linear"
    pinv_ridge: float = 0.1
    kernel_temperature: float = 0.05
    normalize_pseudo: bool = False
    pseudo_centring: Literal["none", "target_mean"] = "none"

    def __call__(
        self, graph: PairingGraph, full: Embeddings, dataset: str, bank: Embeddings | None = None
    ) -> dict[str, Pseudo]:
        """Pseudo embeddings of every modality ``dataset`` lacks, by shortest chains of datasets.

        Level by level: each other dataset that shares a modality with what ``dataset`` has so far (real, or pseudo
        from an earlier level) lends the modalities it has and ``dataset`` lacks, through that shared pivot. The rows
        it lends are its rows of ``bank`` (default ``full``: this batch's; the kernel transition also reads a memory
        of past batches, ``methods.memory``).
        """
        bank = full if bank is None else bank
        have = dict(full[dataset])
        origin = {m: m for m in have}
        out: dict[str, Pseudo] = {}
        while level := graph.next_level(dataset, have):
            pinvs = {}
            if self.transition == "linear":  # one pseudo-inverse per (source, pivot), shared by its targets
                pinvs = {link: pivot_pinv(bank[link[0]][link[1]], self.pinv_ridge) for link in set(level.values())}
            for target, (source, pivot) in level.items():
                real = bank[source][target]
                if self.transition == "linear":
                    data = x_data(have[pivot], pinvs[source, pivot], real)
                    mod = x_mod(have[pivot], pinvs[source, pivot], real)
                else:  # the source's pivot rows detached, as the pseudo-inverse of the linear transition
                    pivot_rows = F.normalize(have[pivot].float(), dim=1)
                    data = kernel_transition(pivot_rows, bank[source][pivot].detach(), real, self.kernel_temperature)
                    mod = None
                if self.normalize_pseudo:
                    data = F.normalize(data, dim=1)
                    mod = None if mod is None else F.normalize(mod, dim=1)
                origin[target] = origin[pivot]
                out[target] = Pseudo(data, mod, origin[target], source)
            have.update({t: out[t].data for t in level})
        return out
