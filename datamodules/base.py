"""The shared base of every datamodule: several datasets, each observing some modalities, paired through pivots.

Pairing is configuration. Each dataset lists the modalities it observes in training; a flow ``p->q->r`` on a dataset
asks to retrieve r from p there, through the pivot q. The retrieved modality may be hidden in that dataset's
training split: it exists only in the dataset's val/test splits, for scoring.
"""

import itertools
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from brokenbind.errors import ConfigError, DataError
from brokenbind.graph import PairingGraph
from brokenbind.modality import ModalityInfo
from brokenbind.world import world

SPLITS = ("train", "val", "test")


def run_seed() -> int:
    """The run's seed, as Lightning's ``seed_everything`` records it for this process and the processes it starts
    (``brokenbind fit`` calls it with the config's ``seed_everything``, 0 unless set)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is None:
        raise ConfigError(
            "the training order is a function of the run's seed, and no seed is set: call "
            "lightning.seed_everything(seed) before training or asking for training batches (brokenbind fit sets it "
            "from seed_everything in the config; seed_everything: false leaves it unset)"
        )
    return int(seed)


@dataclass
class DatasetSpec:
    """One dataset: the modalities it observes during training."""

    modalities: list[str]


@dataclass
class Flow:
    """A modality flow ``query->pivot->target`` evaluated on ``dataset`` (BrokenBind §4.1), or ``query->target``: a
    flow without a pivot, as in a one-dataset experiment, where the query and the target are observed together."""

    dataset: str
    flow: str

    @property
    def modalities(self) -> tuple[str, str | None, str]:
        """(query, pivot, target); the pivot is None in a ``query->target`` flow."""
        parts = tuple(p.strip() for p in self.flow.split("->"))
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(
                f"flow {self.flow!r} must read 'query->pivot->target' (e.g. 'fou->pix->zer') or 'query->target' "
                "(e.g. 'fou->zer')"
            )
        return (parts[0], None, parts[1]) if len(parts) == 2 else parts

    @property
    def named_modalities(self) -> set[str]:
        """The modalities the flow names: query and target, and its pivot if it has one."""
        return {m for m in self.modalities if m is not None}

    @property
    def name(self) -> str:
        query, _, target = self.modalities
        return f"{query}->{target}"


class TensorDictDataset(Dataset):
    """In-memory instances: ``{"x": {modality: tensor}, "index": global instance id, "label": class}``."""

    def __init__(self, features: dict[str, Tensor], index: Tensor, label: Tensor):
        self.features, self.index, self.label = features, index, label

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        return {"x": {m: f[i] for m, f in self.features.items()}, "index": self.index[i], "label": self.label[i]}


class EpochShuffle(DistributedSampler):
    """A shuffle whose order is a function of (seed, epoch) alone, sharded over DDP ranks, that can start mid-epoch.

    Lightning calls ``set_epoch`` before every epoch and leaves a ``DistributedSampler`` in place under DDP, so one
    sampler serves one process and many; a resumed run replays exactly the order of an uninterrupted one.
    """

    def __init__(self, dataset: Dataset, seed: int):
        rank, size = world()
        super().__init__(dataset, num_replicas=size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0  # indices to skip at the next iteration only (a mid-epoch resume)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(super().__iter__(), start, None)


# Ours, not torchdata's StatefulDataLoader (0.11, measured with Lightning 2.6): on a restart Lightning iterates the
# restored loader before it sets the sampler's epoch, and StatefulDataLoader fixes the sampler's order when its
# iterator is built, so a run resumed in epoch 1 continues epoch 0's order; a state saved after an epoch's last batch
# (Lightning ends an epoch by its length, so the loader never finished) skips every batch of the next epoch. Both
# resume tests of tests/test_faults.py fail with it. Ours reads the position at the first batch, after the epoch is set.
class ResumableLoader(DataLoader):
    """A training loader whose position Lightning saves in checkpoints (its ``state_dict`` / ``load_state_dict``
    protocol), so that a run resumed mid-epoch continues with the next unseen batch of the same epoch."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches_yielded = 0  # in the current epoch

    def __iter__(self) -> Iterator[Any]:
        self.batches_yielded = self.sampler.start // self.batch_size
        for batch in super().__iter__():
            self.batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        done = state["batches_yielded"]
        self.sampler.start = done * self.batch_size if done < len(self) else 0  # a finished epoch resumes at the next


class PairedDataModule(LightningDataModule, ABC):
    """Base of all datamodules. Subclasses name their ``available_modalities`` and implement ``load_split``.

    Training batches come from every dataset at once: a ``CombinedLoader`` over one loader per dataset, each with the
    same ``batch_size`` (MOX's X-mod needs equal per-dataset batches) and ``drop_last``. ``sampling`` says what an
    epoch is: ``min_size`` ends it when the smallest dataset is exhausted (no sample repeats within an epoch),
    ``max_size_cycle`` runs to the largest and cycles the others (smaller datasets are seen more often).
    Validation and test loaders cover every dataset that a flow evaluates on, in the order of ``eval_datasets``.
    ``oracle`` makes each flow's query and target observable in its dataset's training split: the upper bound that
    direct pairs give.
    """

    available_modalities: tuple[str, ...] = ()

    def __init__(
        self,
        datasets: dict[str, DatasetSpec],
        flows: list[Flow],
        pivot: str | list[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        sampling: Literal["min_size", "max_size_cycle"] = "min_size",
        num_workers: int = 0,
        oracle: bool = False,
    ):
        super().__init__()
        specs = {
            name: spec if isinstance(spec, DatasetSpec) else DatasetSpec(**spec) for name, spec in datasets.items()
        }
        self.datasets = {
            name: DatasetSpec(list(spec.modalities)) for name, spec in specs.items()
        }  # a copy: never mutate the config
        self.pivots = [pivot] if isinstance(pivot, str) else list(pivot or [])
        self.flows = [f if isinstance(f, Flow) else Flow(**f) for f in flows]
        self.oracle = oracle
        if oracle:  # the upper bound: each evaluation dataset also observes its flows' modalities in training
            for flow in self.flows:
                if flow.dataset in self.datasets:
                    spec = self.datasets[flow.dataset]
                    spec.modalities = sorted(set(spec.modalities) | flow.named_modalities)
        self.graph = PairingGraph({name: spec.modalities for name, spec in self.datasets.items()}, self.pivots)
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("batch sizes must be positive")
        if batch_size < 2:  # a row's only candidate is its own pair: every contrastive loss is exactly 0
            raise ConfigError(
                "data.init_args.batch_size is 1, but the contrastive terms of every method (CLIP, CyCLIP, MOX's pseudo "
                "pairs, C-MCR's alignment) compare each row with the other rows of its batch: with one row there is "
                "no negative, every such term is exactly 0 and the run would train nothing it could be named after. "
                "Use a batch of 2 rows or more (64, the default, or the largest that fits in memory)"
            )
        if num_workers < 0:
            raise ConfigError(
                f"data.init_args.num_workers must be 0 (load in the main process) or a number of loader processes, "
                f"got {num_workers}"
            )
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.sampling, self.num_workers = sampling, num_workers
        self.validate()
        self.splits: dict[str, dict[str, TensorDictDataset]] = {}

    # -- pairing ---------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Reject configurations that cannot bind: unknown modalities, pivots that link nothing, unscoreable flows."""
        if not self.datasets:
            raise ConfigError("no datasets configured")
        known = set(self.available_modalities)
        for name, spec in self.datasets.items():
            if not spec.modalities:
                raise ConfigError(f"dataset {name!r} observes no modality")
            unknown = set(spec.modalities) - known
            if unknown:
                raise ConfigError(f"dataset {name!r}: unknown modalities {sorted(unknown)}; available: {sorted(known)}")
        for pivot in self.pivots:
            holders = [name for name, spec in self.datasets.items() if pivot in spec.modalities]
            if len(self.datasets) == 1:
                raise ConfigError(
                    f"pivot {pivot!r}: a pivot links datasets, and this experiment has one "
                    f"({next(iter(self.datasets))!r}); leave data.init_args.pivot out and score flows 'query->target' "
                    "(e.g. 'fou->zer')"
                )
            if len(holders) < 2:
                raise ConfigError(
                    f"pivot {pivot!r} must be observed by every dataset it links (at least two); observed by {holders}"
                )
        if not self.flows:
            raise ConfigError("no evaluation flow configured")
        trained = self.graph.modalities()
        for flow in self.flows:
            query, pivot, target = flow.modalities
            if query == target:
                raise ConfigError(
                    f"flow {flow.flow!r} retrieves {query!r} from itself; a flow retrieves one modality from another "
                    "through the pivot, e.g. 'fou->pix->zer'"
                )
            if flow.dataset not in self.datasets:
                raise ConfigError(f"flow {flow.flow!r}: unknown dataset {flow.dataset!r}; have {sorted(self.datasets)}")
            if pivot is not None and pivot not in self.pivots:
                raise ConfigError(f"flow {flow.flow!r}: {pivot!r} is not a configured pivot {self.pivots}")
            for m in (query, target):
                if m not in known:
                    raise ConfigError(f"flow {flow.flow!r}: unknown modality {m!r}; available: {sorted(known)}")
                if m not in trained:
                    raise ConfigError(
                        f"flow {flow.flow!r}: modality {m!r} is observed by no training dataset; add it to a dataset's "
                        "modalities (data.init_args.datasets) or score another modality"
                    )
            if target not in self.graph.reachable(flow.dataset):
                raise ConfigError(
                    f"flow {flow.flow!r}: no chain of datasets linked by shared modalities leads from "
                    f"{flow.dataset!r} to a dataset observing {target!r}"
                )

    @property
    def eval_datasets(self) -> list[str]:
        return sorted({flow.dataset for flow in self.flows})

    def split_modalities(self, dataset: str, split: str) -> list[str]:
        """Training sees only observed modalities; val/test add the flows' query and target modalities, for scoring."""
        mods = set(self.datasets[dataset].modalities)
        if split != "train":
            mods |= {m for flow in self.flows if flow.dataset == dataset for m in flow.named_modalities}
        return sorted(mods)

    # -- data ------------------------------------------------------------------------------------------------------
    @abstractmethod
    def load_split(self, dataset: str, split: str, modalities: list[str]) -> TensorDictDataset:
        """The instances of one dataset split, carrying exactly ``modalities``."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.splits = {
            name: {split: self.load_split(name, split, self.split_modalities(name, split)) for split in SPLITS}
            for name in self.datasets
        }
        for name, splits in self.splits.items():
            if len(splits["train"]) < self.batch_size:
                raise ConfigError(
                    f"dataset {name!r} has {len(splits['train'])} training instances, fewer than batch_size "
                    f"{self.batch_size}: with drop_last it would yield no batch; lower data.init_args.batch_size"
                )
        for name in self.eval_datasets:
            for split in ("val", "test"):
                if len(self.splits[name][split]) < 2:  # one candidate is always ranked first: AP 1 whatever the model
                    raise DataError(
                        f"dataset {name!r} has {len(self.splits[name][split])} {split} instance(s): retrieval ranks a "
                        "gallery of the split's rows, and with fewer than two every query finds its match first "
                        f"whatever the model (instance mAP 100 %). Give its {split} split two or more rows (the "
                        "manifest's split column, or split_fractions)"
                    )

    def modality_info(self) -> dict[str, ModalityInfo]:
        """Input shape and training inputs of every modality, for building backbones."""
        self.setup()
        info = {}
        for m in sorted(self.graph.modalities()):
            inputs = torch.cat([s["train"].features[m] for s in self.splits.values() if m in s["train"].features])
            info[m] = ModalityInfo(kind="features", shape=tuple(inputs.shape[1:]), train_inputs=inputs)
        return info

    def class_names(self, labels: Tensor) -> list[str]:
        """The class name of each label, for exported files; "" for an unlabelled row (a negative label). Data that
        name their classes (a manifest's label column) override this; by default the name is the class id."""
        return [str(label) if label >= 0 else "" for label in labels.tolist()]

    def instance_ids(self, index: Tensor) -> list[str]:
        """The user-facing id of each instance (global ``index``), for exported files; data with their own ids (a
        manifest's ``id`` column) override this."""
        return [str(i) for i in index.tolist()]

    def data_fingerprint(self) -> str | None:
        """A string that changes whenever any instance's raw input could (files, their sizes and times, ids); the
        feature cache keys on it. None, the default, disables caching for this datamodule."""
        return None

    def train_dataloader(self) -> CombinedLoader:
        """One resumable loader per dataset. Orders depend on the run's seed (``run_seed``) and the epoch only (each
        dataset its own); loaders draw worker seeds from their own generator, so loading never consumes the global RNG
        and a resumed run's RNG stream matches an uninterrupted one's."""
        seed = run_seed()
        loaders = {
            name: ResumableLoader(
                splits["train"],
                batch_size=self.batch_size,
                sampler=EpochShuffle(splits["train"], seed + position),
                drop_last=True,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                generator=torch.Generator().manual_seed(seed + position),
            )
            for position, (name, splits) in enumerate(self.splits.items())
        }
        return CombinedLoader(loaders, mode=self.sampling)

    def _loader(self, dataset: Dataset) -> DataLoader:
        """An evaluation loader, in order; its own generator keeps it off the global RNG."""
        return DataLoader(
            dataset, batch_size=self.eval_batch_size, num_workers=self.num_workers, generator=torch.Generator()
        )

    def loader(self, dataset: str, split: str, modalities: list[str], rows: Tensor | None = None) -> DataLoader:
        """Every row of one dataset split carrying ``modalities`` (also ones the dataset's training split does not
        observe: they are loaded for this call only), in row order; with ``rows`` (positions in the split), those rows
        only, in that order. Batches of ``eval_batch_size`` in the main process; its own generator keeps it off the
        global RNG."""
        data = self.splits[dataset][split]
        if not set(modalities) <= set(self.split_modalities(dataset, split)):
            data = self.load_split(dataset, split, modalities)
        if rows is not None:
            data = torch.utils.data.Subset(data, rows.tolist())
        return DataLoader(data, batch_size=self.eval_batch_size, generator=torch.Generator())

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        return [self._loader(self.splits[name][split]) for name in self.eval_datasets]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    @property
    def predict_splits(self) -> list[tuple[str, str]]:
        """(dataset, split) of each predict loader: every split of every dataset, each with its own modalities."""
        return [(name, split) for name in self.datasets for split in SPLITS]

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.splits[name][split]) for name, split in self.predict_splits]
