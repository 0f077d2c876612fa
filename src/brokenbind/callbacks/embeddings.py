"""``brokenbind predict``: the bound embeddings of every instance, written for use downstream."""

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from brokenbind.pairing import PairedData


class EmbeddingWriter(Callback):
    """Writes ``<output_dir>/<dataset>/<split>/<modality>.npy`` (float32, one row per instance, L2-normalised) and
    ``index.csv`` for every split of every dataset: ``row`` (the row of the .npy files), ``id`` (the data's own id: a
    manifest's id column), ``label`` (the integer class id; -1: unlabelled) and ``class`` (the class name the data
    used; empty when unlabelled). ``output_dir`` defaults to ``embeddings/`` in the run directory. Single process
    only: predict on one device."""

    def __init__(self, output_dir: str | None = None):
        self.output_dir = output_dir
        self._outputs: dict[int, list[dict[str, Any]]] = defaultdict(list)

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1:
            raise RuntimeError("predict writes embeddings from one process; run it with --trainer.devices=1")
        self._outputs.clear()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._outputs[dataloader_idx].append(outputs)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        root = Path(self.output_dir or Path(trainer.log_dir or ".") / "embeddings")
        dm: PairedData = trainer.datamodule
        for idx, (dataset, split) in enumerate(dm.predict_splits):
            batches = self._outputs[idx]
            if not batches:
                continue
            out = root / dataset / split
            out.mkdir(parents=True, exist_ok=True)
            for m in batches[0]["embeddings"]:
                rows = torch.cat([b["embeddings"][m] for b in batches]).float().cpu().numpy()
                np.save(out / f"{m}.npy", rows.astype(np.float32))
            ids = dm.instance_ids(torch.cat([b["index"] for b in batches]))
            label = torch.cat([b["label"] for b in batches])
            names = dm.class_names(label)
            with (out / "index.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["row", "id", "label", "class"])
                writer.writerows(zip(range(len(ids)), ids, label.tolist(), names, strict=True))
        rank_zero_info(f"embeddings: {root}")
        self._outputs.clear()
