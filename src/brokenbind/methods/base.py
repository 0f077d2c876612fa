"""What a binding method is: embeddings in, named loss terms out (``MethodOutput``)."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brokenbind.errors import ConfigError
from brokenbind.graph import PairingGraph
from brokenbind.losses.distributed import Batch
from brokenbind.losses.temperature import LogitScale
from brokenbind.methods.extrapolation import Embeddings, Extrapolator

# dataset name -> modality name -> (B, k) backbone features of one training batch (before the heads)
Features = dict[str, dict[str, Tensor]]
# (dataset, split, modalities) -> {modality: (N, k) backbone features of every row of that split}, ordered by row
Encoder = Callable[[str, str, list[str]], dict[str, Tensor]]


@dataclass
class MethodOutput:
    """What a method gives for one training batch: ``terms``, the named, already weighted loss terms the
    LightningModule sums (in their order) and logs as ``train/loss/<name>``; ``diagnostics``, named values it logs as
    ``train/<name>`` once per epoch, the largest over the epoch's batches."""

    terms: dict[str, Tensor]
    diagnostics: dict[str, Tensor] = field(default_factory=dict)


class BindingMethod(nn.Module, ABC):
    """Maps one batch of embeddings to a ``MethodOutput`` of named, already weighted loss terms.

    Which modalities each dataset holds is read from the keys of the embeddings, so two datasets and five take the
    same path; how datasets link through shared modalities is the ``PairingGraph`` given to ``prepare``. Under DDP the
    embeddings are gathered first (``losses.distributed``) and every term is exact for the global batch.

    Two declarations tell the rest of the run what to do with the method's embeddings: ``transitive_weight`` is the
    share of a flow's retrieval score that goes through anchor rows observing the flow's pivot and target
    (``metrics.transitive``, with the method's ``top_k`` and ``power``; 0: the embeddings' cosine alone, 1: the
    relative representations alone), and ``extrapolator`` how a pseudo target is extrapolated through the pivot for
    the pivot diagnosis (``callbacks.diagnosis``): MOX's default linear transition unless the method has its own
    (None: the method's ``complete`` imputes it).
    """

    name: str
    transitive_weight: float = 0.0
    top_k: int = 800  # ASIF's values (arXiv 2210.01738, its code): with a few hundred anchors top_k keeps them all
    power: float = 8.0
    max_anchors: int = 4096  # beyond, a fixed subset: scoring holds (queries + targets) × max_anchors floats
    extrapolator: Extrapolator | None = Extrapolator()
    # Arguments added after runs of the method were first saved, each at the value such a run behaved as: their
    # stored configuration lacks them, and re-parsed it would take today's default (``checkpoints.stored_config``).
    added_arguments: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__()
        self.scale = LogitScale(logit_scale, learn_logit_scale, modality_scales)
        self._graph: PairingGraph | None = None

    @property
    def graph(self) -> PairingGraph:
        """The pairing of the training datasets, from ``prepare``."""
        if self._graph is None:
            raise ConfigError(
                f"method {self.name!r} links datasets through the pairing graph that prepare gives it at fit start: "
                "call prepare(encode, graph) before training"
            )
        return self._graph

    def forward(self, embeddings: Embeddings, epoch: int, max_epochs: int | None = None) -> MethodOutput:
        """The output for one batch. ``epoch`` and the run length ``max_epochs`` (the trainer's; None or -1 when the
        run has no epoch limit) drive schedules such as MOX's consistency pre-training."""
        terms = self.terms(Batch.gather(embeddings), epoch, max_epochs)
        # a diverged batch has nothing to diagnose: the LightningModule stops on its terms (check_finite)
        finite = all(torch.isfinite(value).all() for value in terms.values())
        return MethodOutput(terms, self.diagnostics(embeddings) if finite else {})

    def prepare(self, encode: Encoder, graph: PairingGraph) -> None:
        """Called once at the start of fit with the frozen backbones' ``encode`` function and the pairing of the
        training datasets; methods that learn something from the data before training (``Impute``'s regressor) do it
        here (``super().prepare`` keeps the graph)."""
        self._graph = graph

    def complete(self, features: Features) -> Features:
        """Backbone features of a training batch, completed with features of modalities a dataset lacks (imputation
        methods); the heads then embed them like real ones. Unchanged by default."""
        return features

    def pivot_map(self, dataset: str, pivot: str, target: str) -> Callable[[Tensor], Tensor] | None:
        """The features map pivot → target that ``complete`` applies to ``dataset``, if the method fitted one (the
        transfer error of ``callbacks.diagnosis`` scores it); None by default."""
        return None

    def diagnostics(self, embeddings: Embeddings) -> dict[str, Tensor]:
        """Values to log for this rank's batch of ``embeddings`` (``MethodOutput``); none by default."""
        return {}

    @abstractmethod
    def terms(self, batch: Batch, epoch: int, max_epochs: int | None) -> dict[str, Tensor]:
        """Loss terms from this rank's rows (``batch.local``) against the whole batch (``batch.full``), at ``epoch`` of
        a run of ``max_epochs`` (see ``forward``)."""


def check_non_negative(**values: float) -> None:
    """Refuse a negative (or NaN) weight, ridge or noise level, naming it."""
    for name, value in values.items():
        if not value >= 0:  # also rejects NaN
            raise ConfigError(f"{name} must be non-negative, got {value}")


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
        self.register_load_state_dict_pre_hook(self._unused_if_absent)

    @staticmethod
    def _unused_if_absent(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
        """A checkpoint written by a method without noise (before a default added it) resumes with an unused
        generator, seeded at first use, rather than failing on a missing key."""
        state_dict.setdefault(prefix + "_extra_state", torch.empty(0, dtype=torch.uint8))

    def forward(self, like: Tensor, std: float) -> Tensor:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(torch.initial_seed())
        return std * torch.randn(like.shape, generator=self.generator).to(like.device)

    def corrupt(self, batch: Batch, std: float) -> Batch:
        """``batch`` with noise of ``std`` per coordinate added to every embedding of the gathered rows, re-normalised
        (C-MCR's semantic completion, arXiv 2305.14381 §3.2); this rank's rows are its slice of them."""
        full = {
            ds: {m: F.normalize(f + self(f, std), dim=1) for m, f in mods.items()} for ds, mods in batch.full.items()
        }
        local = {ds: {m: full[ds][m][batch.offset : batch.offset + len(f)] for m, f in mods.items()}
                 for ds, mods in batch.local.items()}  # fmt: skip
        return Batch(local, full, batch.offset)

    def get_extra_state(self) -> Tensor:
        return torch.empty(0, dtype=torch.uint8) if self.generator is None else self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.generator = None
        if len(state):
            self.generator = torch.Generator()
            self.generator.set_state(state)
