"""What a binding method is: embeddings in, named loss terms out."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from itertools import combinations

import torch
from torch import Tensor, nn

from brokenbind.errors import ConfigError
from brokenbind.losses.distributed import Batch
from brokenbind.losses.temperature import LogitScale

# dataset name -> modality name -> (B, d) L2-normalised fp32 embeddings of one training batch
Embeddings = dict[str, dict[str, Tensor]]
# dataset name -> modality name -> (B, k) backbone features of one training batch (before the heads)
Features = dict[str, dict[str, Tensor]]
# (dataset, split, modalities) -> {modality: (N, k) backbone features of every row of that split}, ordered by row
Encoder = Callable[[str, str, list[str]], dict[str, Tensor]]


class BindingMethod(nn.Module, ABC):
    """Maps one batch of embeddings to a dict of named, already weighted loss terms.

    The LightningModule sums the terms and logs each one as ``train/loss/<name>``. Which modalities each dataset holds
    is read from the keys of the embeddings, so two datasets and five take the same path. Under DDP the embeddings
    are gathered first (``losses.distributed``) and every term is exact for the global batch.
    """

    name: str

    def __init__(
        self,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__()
        self.scale = LogitScale(logit_scale, learn_logit_scale, modality_scales)

    def forward(self, embeddings: Embeddings, epoch: int, max_epochs: int | None = None) -> dict[str, Tensor]:
        """Loss terms for one batch. ``epoch`` and the run length ``max_epochs`` (the trainer's; None or -1 when the
        run has no epoch limit) drive schedules such as MOX's consistency pre-training."""
        return self.terms(Batch.gather(embeddings), epoch, max_epochs)

    def prepare(self, encode: Encoder, datasets: dict[str, list[str]]) -> None:
        """Called once at the start of fit with the frozen backbones' ``encode`` function and the modalities each
        training dataset observes; methods that learn something from the data before training (``Impute``'s
        regressor) do it here. Nothing by default."""

    def complete(self, features: Features) -> Features:
        """Backbone features of a training batch, completed with features of modalities a dataset lacks (imputation
        methods); the heads then embed them like real ones. Unchanged by default."""
        return features

    def represent(
        self, query: Tensor, target: Tensor, anchors: Callable[[], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """The rows that evaluation compares by cosine for a flow's query and target: the embeddings themselves by
        default. ``anchors()`` gives the (pivot, target) embeddings of the training rows of a dataset observing both,
        for methods that retrieve through them (``Transitive``); it is computed only when called."""
        return query, target

    @abstractmethod
    def terms(self, batch: Batch, epoch: int, max_epochs: int | None) -> dict[str, Tensor]:
        """Loss terms from this rank's rows (``batch.local``) against the whole batch (``batch.full``), at ``epoch`` of
        a run of ``max_epochs`` (see ``forward``)."""


def check_non_negative(**values: float) -> None:
    """Refuse a negative (or NaN) weight, ridge or noise level, naming it."""
    for name, value in values.items():
        if not value >= 0:  # also rejects NaN
            raise ConfigError(f"{name} must be non-negative, got {value}")


def next_level(dataset: str, have: Iterable[str], holders: Mapping[str, Iterable[str]]) -> dict[str, tuple[str, str]]:
    """One level of the shortest chains of datasets (BrokenBind Appendix B): each modality that ``dataset`` lacks (is
    not in ``have``) and another dataset of ``holders`` observes with one modality of ``have``, mapped to (that
    dataset, the shared pivot); the first such dataset wins. Empty when nothing more is reachable."""
    have, level = set(have), {}
    for source, modalities in holders.items():
        shared, targets = sorted(have & set(modalities)), sorted(set(modalities) - have)
        if source == dataset or not shared or not targets:
            continue
        if len(shared) > 1:
            raise ConfigError(
                f"datasets {dataset!r} and {source!r} share several modalities {shared}: the pivot is ambiguous"
            )
        for target in targets:
            level.setdefault(target, (source, shared[0]))
    return level


def modality_pairs(embeddings: Embeddings) -> list[tuple[str, str, str]]:
    """Every (dataset, modality, modality) pair observed together in one dataset, in a fixed order."""
    return [(ds, m, n) for ds, mods in embeddings.items() for m, n in combinations(sorted(mods), 2)]


class SharedNoise(nn.Module):
    """Gaussian noise for rows of the gathered batch, from a generator of its own.

    Every rank draws the same noise for the whole global batch and uses its own rows' part, so gradients under DDP
    equal one process on the concatenated batch (the global RNG is not shared between ranks). The generator is
    seeded from ``torch.initial_seed()`` (Lightning's seed_everything) at first use, and its state travels in
    checkpoints (``_extra_state``), so a resumed run draws what an uninterrupted one would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.generator: torch.Generator | None = None

    def forward(self, like: Tensor, std: float) -> Tensor:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(torch.initial_seed())
        return std * torch.randn(like.shape, generator=self.generator).to(like.device)

    def get_extra_state(self) -> Tensor:
        return torch.empty(0, dtype=torch.uint8) if self.generator is None else self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.generator = None
        if len(state):
            self.generator = torch.Generator()
            self.generator.set_state(state)
