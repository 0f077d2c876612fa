"""What a binding method is: embeddings in, named loss terms out."""

from abc import ABC, abstractmethod
from itertools import combinations

from torch import Tensor, nn

from brokenbind.losses.distributed import Batch
from brokenbind.losses.temperature import LogitScale

# dataset name -> modality name -> (B, d) L2-normalised fp32 embeddings of one training batch
Embeddings = dict[str, dict[str, Tensor]]


class BindingMethod(nn.Module, ABC):
    """Maps one batch of embeddings to a dict of named, already weighted loss terms.

    The LightningModule sums the terms and logs each one as ``train/loss/<name>``. Which modalities each dataset holds
    is read from the keys of the embeddings, so two datasets and five take the same path. Under DDP the embeddings
    are gathered first (``losses.distributed``) and every term is exact for the global batch.
    """

    name: str
    # the run length, set by the LightningModule at the start of fit; schedules (MOX's consistency phase) read it
    max_epochs: int | None = None

    def __init__(
        self,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__()
        self.scale = LogitScale(logit_scale, learn_logit_scale, modality_scales)

    def forward(self, embeddings: Embeddings, epoch: int) -> dict[str, Tensor]:
        """Loss terms for one batch; ``epoch`` drives schedules such as MOX's consistency pre-training."""
        return self.terms(Batch.gather(embeddings), epoch)

    @abstractmethod
    def terms(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        """Loss terms from this rank's rows (``batch.local``) against the whole batch (``batch.full``)."""


def modality_pairs(embeddings: Embeddings) -> list[tuple[str, str, str]]:
    """Every (dataset, modality, modality) pair observed together in one dataset, in a fixed order."""
    return [(ds, m, n) for ds, mods in embeddings.items() for m, n in combinations(sorted(mods), 2)]
