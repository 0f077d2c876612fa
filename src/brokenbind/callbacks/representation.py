"""Representation metrics of the field beside the retrieval rows: weighted kNN accuracy, linear probe, zero-shot
classification by class prototypes, and retrieval between every ordered pair of modalities
(``brokenbind.metrics.representation``).

Opt-in: ``--trainer.callbacks+=brokenbind.callbacks.RepresentationMetrics``, or an experiment YAML's
``trainer.callbacks``.
"""

import csv
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state in batch jobs
from torch import Tensor

from brokenbind.callbacks.emergent import EmergentBinding, _seed
from brokenbind.metrics.representation import (
    accuracy_problem,
    all_pairs_retrieval,
    knn_accuracy,
    linear_probe_accuracy,
    zero_shot_accuracy,
)
from brokenbind.pairing import PairedData
from brokenbind.results import replace_csv


@dataclass(frozen=True)
class RepresentationRow:
    """One number of ``representation.csv``; every field but ``value`` is its identity (scoring again replaces it)."""

    experiment: str
    method: str
    seed: str
    stage: str
    weights: str  # what was scored: the epoch just validated, or the checkpoint file tested
    dataset: str
    metric: str  # knn, probe, zero_shot (accuracies), mAP, mAP_class (retrieval)
    modality: str  # the modality classified (knn, probe), or a pair: prototypes->queries, query->target
    value: float  # NaN (an empty cell) where it cannot be computed


COLUMNS = [field.name for field in fields(RepresentationRow)]


class RepresentationMetrics(Callback):
    """For each evaluated dataset D, on its test split (and, with ``validation``, at the end of every validation epoch
    on its validation split; off by default, to keep fits fast):

    - ``knn`` and ``probe``: kNN accuracy (``k``, ``temperature``) and linear-probe accuracy (``probe_C``,
      ``probe_max_iter``) of each modality D's training split carries, fitted on its embeddings of D's training rows
      and scored on the evaluated split;
    - ``zero_shot``: for every ordered pair a->b, a carried by D's training split and b by the evaluated split (so
      b may be a modality D never observes in training: emergent zero-shot), queries b classified by the class
      prototypes of a's training embeddings;
    - ``mAP``, ``mAP_class``: retrieval between every ordered pair of modalities the evaluated split carries, also
      drawn as a heat-map (TensorBoard ``figures/pairs/<D>``, and ``pairs_<D>_<stage>.png`` in the run directory).

    Logged as ``<stage>/knn/<D>/<m>``, ``<stage>/probe/<D>/<m>``, ``<stage>/zero_shot/<D>/<a>-><b>`` and
    ``<stage>/pairs/<D>/<q>-><t>/{mAP,mAP_class}``, and written to ``representation.csv`` in the run directory
    (``RepresentationRow``). A number that cannot be computed (accuracies without two labelled training classes or
    without a labelled evaluated row, class mAP with unlabelled rows or one class) is an empty cell and not logged;
    for the accuracies a warning says why once per dataset and stage (for class mAP, ``EmergentBinding``'s does).

    ``experiment`` and ``method`` label the rows; by default they are those of the retrieval rows (the CLI sets them
    on ``EmergentBinding``), else the logger's name and the method's ``name``. Under DDP the evaluated embeddings of
    every rank are gathered as ``EmergentBinding`` gathers them; rank 0 computes, logs and writes.
    """

    # EmergentBinding's collection of eval step outputs into ``self._outputs`` and its gather over DDP ranks
    _collect = EmergentBinding._collect
    _gather = EmergentBinding._gather

    def __init__(
        self,
        validation: bool = False,
        k: int = 20,
        temperature: float = 0.07,
        probe_C: float = 1.0,
        probe_max_iter: int = 1000,
        chunk_size: int = 1024,
        experiment: str | None = None,
        method: str | None = None,
    ):
        self.validation = validation
        self.k, self.temperature = k, temperature
        self.probe_C, self.probe_max_iter = probe_C, probe_max_iter
        self.chunk_size = chunk_size
        self.experiment, self.method = experiment, method
        self._outputs: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._warned: set[tuple[str, str]] = set()  # (dataset, stage) whose missing accuracies were explained
        self.rows: list[RepresentationRow] = []  # the rows just scored

    # -- collect ---------------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._outputs.clear()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.validation and not trainer.sanity_checking:
            self._collect(outputs, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.validation and not trainer.sanity_checking:
            self._score(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._score(trainer, pl_module, "test")

    # -- score -----------------------------------------------------------------------------------------------------
    def _score(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        dm: PairedData = trainer.datamodule
        log_dir = trainer.log_dir  # a collective under DDP (a broadcast): read on every rank
        gathered = [self._gather(pl_module, self._outputs[idx]) for idx in range(len(dm.eval_datasets))]  # collective
        self._outputs.clear()
        if not trainer.is_global_zero:
            return
        names = (*self._names(trainer, pl_module), _seed(pl_module), stage)
        weights = (
            Path(trainer.ckpt_path).name if stage == "test" and trainer.ckpt_path else f"epoch {trainer.current_epoch}"
        )
        self.rows = []
        for dataset, data in zip(dm.eval_datasets, gathered, strict=True):
            values = self._dataset_values(pl_module, dm, stage, dataset, data)
            for (metric, modality), value in values.items():
                self.rows.append(RepresentationRow(*names, weights, dataset, metric, modality, value))
                if not math.isnan(value):
                    pl_module.log(_tag(stage, dataset, metric, modality), value, rank_zero_only=True)
            figure = pairs_figure(values, f"{dataset} ({stage}, {weights})")
            if log_dir is not None:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                figure.savefig(Path(log_dir) / f"pairs_{dataset}_{stage}.png", dpi=100)
            if isinstance(trainer.logger, TensorBoardLogger):  # after the PNG: add_figure closes the figure
                trainer.logger.experiment.add_figure(f"figures/pairs/{dataset}", figure, trainer.global_step)
        if log_dir is not None:
            write_rows(Path(log_dir) / "representation.csv", self.rows)

    @torch.no_grad()
    def _dataset_values(
        self, pl_module: LightningModule, dm: PairedData, stage: str, dataset: str, data: dict[str, Tensor]
    ) -> dict[tuple[str, str], float]:
        """(metric, modality or pair) -> value on one dataset's gathered ``stage`` split ``data``."""
        scored = dm.split_modalities(dataset, stage)
        test = {m: data[m].cpu() for m in scored}
        test_labels = data["label"].cpu()
        fitted = [m for m in dm.split_modalities(dataset, "train") if m in scored]
        features = pl_module.encode(dataset, "train", fitted)
        train = {m: pl_module.model.project(m, features[m]).cpu() for m in fitted}
        train_labels = dm.splits[dataset]["train"].label  # in row order, as encode encodes
        problem = accuracy_problem(train_labels, test_labels)
        if problem is not None and (dataset, stage) not in self._warned:
            self._warned.add((dataset, stage))
            rank_zero_warn(
                f"kNN, linear-probe and zero-shot accuracies on dataset {dataset!r} ({stage} split) are not reported "
                f"(empty cells in representation.csv): {problem}"
            )
        nan = float("nan")
        values = {}
        for m in fitted:
            values["knn", m] = nan if problem else knn_accuracy(
                train[m], train_labels, test[m], test_labels, self.k, self.temperature, self.chunk_size
            )  # fmt: skip
            values["probe", m] = nan if problem else linear_probe_accuracy(
                train[m], train_labels, test[m], test_labels, self.probe_C, self.probe_max_iter
            )  # fmt: skip
        for a in fitted:
            for b in (b for b in scored if b != a):
                values["zero_shot", f"{a}->{b}"] = (
                    nan if problem else zero_shot_accuracy(train[a], train_labels, test[b], test_labels)
                )
        pairs = all_pairs_retrieval(test, data["index"].cpu(), test_labels, self.chunk_size)
        for (q, t), metrics in pairs.items():
            for name, value in metrics.items():
                values[name, f"{q}->{t}"] = value
        return values

    def _names(self, trainer: Trainer, pl_module: LightningModule) -> tuple[str, str]:
        """(experiment, method) of the rows: as the retrieval rows name them (see the class docstring)."""
        retrieval = next((c for c in trainer.callbacks if isinstance(c, EmergentBinding)), None)
        experiment = (
            self.experiment or (retrieval and retrieval.experiment) or (trainer.logger.name if trainer.logger else "")
        )
        method = self.method or (retrieval and retrieval.method) or pl_module.method.name
        return experiment, method


def _tag(stage: str, dataset: str, metric: str, modality: str) -> str:
    if metric in ("mAP", "mAP_class"):
        return f"{stage}/pairs/{dataset}/{modality}/{metric}"
    return f"{stage}/{metric}/{dataset}/{modality}"


def pairs_figure(values: dict[tuple[str, str], float], title: str) -> Figure:
    """Heat-maps of instance and class mAP, query modality by row, target by column (``values`` as
    ``RepresentationMetrics`` computes them); the diagonal and missing numbers are blank."""
    pairs = [tuple(pair.split("->")) for metric, pair in values if metric == "mAP"]
    modalities = sorted({m for pair in pairs for m in pair})
    position = {m: i for i, m in enumerate(modalities)}
    figure = Figure(figsize=(7.4, 3.2), layout="constrained")
    for axes, metric, label in zip(
        figure.subplots(1, 2), ("mAP", "mAP_class"), ("instance mAP (%)", "class mAP (%)"), strict=True
    ):
        matrix = np.full((len(modalities), len(modalities)), np.nan)
        for q, t in pairs:
            value = matrix[position[q], position[t]] = 100 * values.get((metric, f"{q}->{t}"), math.nan)
            if not math.isnan(value):
                colour = "black" if value > 60 else "white"  # readable on viridis' light (high) end too
                axes.text(position[t], position[q], f"{value:.1f}", ha="center", va="center", color=colour,
                          fontsize="small")  # fmt: skip
        image = axes.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        axes.set_xticks(range(len(modalities)), modalities)
        axes.set_yticks(range(len(modalities)), modalities)
        axes.set(title=label, xlabel="target", ylabel="query")
        figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle(title, fontsize="medium")
    return figure


def identity(row: dict[str, object]) -> tuple[str, ...]:
    """What a row scored: every column but ``value`` (a CSV row and a ``RepresentationRow`` as a dict compare equal)."""
    return tuple(str(row[c]) for c in COLUMNS if c != "value")


def write_rows(path: Path, rows: list[RepresentationRow]) -> None:
    """Write ``rows`` into ``path``: each replaces the earlier row of its identity, the others stay in order, new rows
    come last; a NaN value is an empty cell. The file is replaced whole (``results.replace_csv``)."""
    new = [{**asdict(row), "value": "" if math.isnan(row.value) else row.value} for row in rows]
    replaced = {identity(row) for row in new}
    kept = []
    if path.exists():
        with path.open(newline="") as f:
            kept = [row for row in csv.DictReader(f) if identity(row) not in replaced]
    replace_csv(path, COLUMNS, [*kept, *new])
