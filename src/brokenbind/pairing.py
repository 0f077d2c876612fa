"""What the model, methods and callbacks read from a datamodule (``trainer.datamodule``): its datasets, the pairing
graph linking them, the flows it scores, its splits and loaders of them, the modalities' inputs, and the names of its
instances and classes. ``datamodules.base.PairedDataModule`` satisfies it; the core names the interface here without
importing the datamodules."""

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor
from torch.utils.data import DataLoader

from brokenbind.graph import PairingGraph
from brokenbind.modality import ModalityInfo


class ObservedModalities(Protocol):
    """One training dataset: the modalities it observes."""

    @property
    def modalities(self) -> list[str]: ...


class ScoredFlow(Protocol):
    """A flow ``query->pivot->target`` (or ``query->target``, without a pivot) scored on ``dataset`` (BrokenBind
    §4.1)."""

    @property
    def dataset(self) -> str: ...

    @property
    def flow(self) -> str: ...

    @property
    def modalities(self) -> tuple[str, str | None, str]: ...


class Split(Protocol):
    """One dataset split: item ``i`` is ``{"x": {modality: value}, "index": instance id, "label": class}``."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict[str, Any]: ...


@runtime_checkable
class PairedData(Protocol):
    """A datamodule as the model, methods and callbacks read it."""

    @property
    def datasets(self) -> Mapping[str, ObservedModalities]: ...

    @property
    def graph(self) -> PairingGraph:
        """How the training datasets link through shared modalities (chains, reachability, pivots)."""

    @property
    def flows(self) -> Sequence[ScoredFlow]: ...

    @property
    def eval_datasets(self) -> list[str]:
        """The datasets some flow is scored on, in the order of the validation and test loaders."""

    @property
    def predict_splits(self) -> list[tuple[str, str]]:
        """(dataset, split) of each predict loader, in order."""

    @property
    def splits(self) -> Mapping[str, Mapping[str, Split]]:
        """dataset → split → its items (after ``setup``)."""

    @property
    def batch_size(self) -> int: ...

    def loader(self, dataset: str, split: str, modalities: list[str], rows: Tensor | None = None) -> DataLoader:
        """Every row of one dataset split carrying ``modalities`` (also ones its training split does not observe), in
        row order; with ``rows`` (positions in the split), those rows only, in that order."""

    def modality_info(self) -> dict[str, ModalityInfo]:
        """Input shape and training inputs of every modality, for building backbones."""

    def data_fingerprint(self) -> str | None:
        """A string that changes whenever any instance's raw input could; None disables the feature cache."""

    def split_modalities(self, dataset: str, split: str) -> list[str]:
        """The modalities a split of ``dataset`` carries: those it observes in training, and in val/test also the
        modalities its flows score."""

    def instance_ids(self, index: Tensor) -> list[str]:
        """The user-facing id of each instance."""

    def class_names(self, labels: Tensor) -> list[str]:
        """The class name of each label; "" for an unlabelled row."""
