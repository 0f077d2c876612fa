"""What the callbacks read from a datamodule (``trainer.datamodule``): its datasets and the modalities each observes,
the flows it scores, its splits, and the names of its instances and classes. ``datamodules.base.PairedDataModule``
satisfies it; the core names the interface here without importing the datamodules."""

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


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
    """A datamodule as the callbacks read it."""

    @property
    def datasets(self) -> Mapping[str, ObservedModalities]: ...

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

    def chain(self, dataset: str, target: str) -> list[str]:
        """The shortest path of datasets, linked by shared modalities, from one observing ``target`` to ``dataset``."""

    def observed_together(self, first: str, second: str) -> bool:
        """Whether some training dataset observes both modalities (else their binding is emergent)."""

    def split_modalities(self, dataset: str, split: str) -> list[str]:
        """The modalities a split of ``dataset`` carries: those it observes in training, and in val/test also the
        modalities its flows score."""

    def instance_ids(self, index: Tensor) -> list[str]:
        """The user-facing id of each instance."""

    def class_names(self, labels: Tensor) -> list[str]:
        """The class name of each label; "" for an unlabelled row."""
