"""Pictures of a run in TensorBoard: a person would rather look than read.

At the end of fit (rank 0, TensorBoard logger only):
- ``figures/val_map``: validation mAP per flow over epochs, with the epoch where MOX switched on marked;
- ``figures/loss_terms``: each training loss term over steps;
- the embedding projector: the last validation embeddings of every evaluated dataset and modality, labelled by class
  (the name the data used) and modality, so real embeddings of a hidden target can be compared with the query's.
"""

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state in batch jobs
from matplotlib.ticker import MaxNLocator

from brokenbind.pairing import PairedData


class TensorBoardFigures(Callback):
    """See the module docstring. ``projector_rows`` caps the rows per (dataset, modality) sent to the projector."""

    def __init__(self, projector_rows: int = 1000):
        self.projector_rows = projector_rows
        self.val_map: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.losses: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.mox_epoch: int | None = None

    # the history travels in checkpoints, so a resumed run draws the whole run
    def state_dict(self) -> dict[str, Any]:
        return {"val_map": dict(self.val_map), "losses": dict(self.losses), "mox_epoch": self.mox_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.val_map = defaultdict(list, {k: [tuple(p) for p in v] for k, v in state["val_map"].items()})
        self.losses = defaultdict(list, {k: [tuple(p) for p in v] for k, v in state["losses"].items()})
        self.mox_epoch = state["mox_epoch"]

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if batch_idx % trainer.log_every_n_steps:  # every n-th batch of each epoch, its first included
            return
        for name, value in trainer.callback_metrics.items():
            if name.startswith("train/loss/"):
                self.losses[name.removeprefix("train/loss/")].append((trainer.global_step, float(value)))
        if self.mox_epoch is None and "train/loss/mox" in trainer.callback_metrics:
            self.mox_epoch = trainer.current_epoch

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, value in trainer.callback_metrics.items():
            if name.startswith("val/mAP/"):
                self.val_map[name.removeprefix("val/mAP/")].append((trainer.current_epoch, float(value)))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = trainer.logger
        if not trainer.is_global_zero or not isinstance(logger, TensorBoardLogger):
            return
        writer = logger.experiment
        if self.val_map:
            figure = curves(self.val_map, "epoch", "validation mAP", self.mox_epoch)
            writer.add_figure("figures/val_map", figure, trainer.global_step)
        if self.losses:
            writer.add_figure("figures/loss_terms", curves(self.losses, "step", "loss term"), trainer.global_step)
        self.project(trainer, pl_module, writer)

    def project(self, trainer: Trainer, pl_module: LightningModule, writer: Any) -> None:
        """The validation embeddings of every evaluated dataset, all modalities in one projector tensor."""
        if (Path(writer.get_logdir()) / f"{trainer.global_step:05d}").is_dir():
            return  # a finished run resumed ends at the step it was projected at, with the same weights
        dm: PairedData = trainer.datamodule
        rows, labels = [], []
        training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            for dataset in dm.eval_datasets:
                split = dm.splits[dataset]["val"]
                items = [split[i] for i in range(min(len(split), self.projector_rows))]
                inputs = {}
                for m in items[0]["x"]:
                    values = [it["x"][m] for it in items]  # tensors, or strings for text
                    inputs[m] = torch.stack(values).to(pl_module.device) if torch.is_tensor(values[0]) else values
                index = torch.stack([torch.as_tensor(it["index"]) for it in items])
                names = dm.class_names(torch.stack([torch.as_tensor(it["label"]) for it in items]))
                for m, e in pl_module.model.embed(inputs, index).items():
                    rows.append(e.cpu())
                    labels += [[dataset, m, name] for name in names]
        pl_module.train(training)
        if rows:
            writer.add_embedding(
                torch.cat(rows), metadata=labels, metadata_header=["dataset", "modality", "class"],
                global_step=trainer.global_step, tag="val_embeddings",
            )  # fmt: skip


def curves(
    series: dict[str, list[tuple[int, float]]], x_label: str, y_label: str, mox_epoch: int | None = None
) -> Figure:
    """One line per series; the epoch where MOX switched on marked when given (also drawn by ``benchmarks.bench``)."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    for name, points in sorted(series.items()):
        axes.plot(*zip(*points, strict=True), label=name)
    if mox_epoch is not None:
        axes.axvline(mox_epoch, color="grey", linestyle="--", label=f"MOX on (epoch {mox_epoch})")
    axes.set(xlabel=x_label, ylabel=y_label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure
