"""Pivot diagnosis: does a MOX pseudo embedding carry more than the pivot it is made from?

For every flow p→q→r whose target r its dataset D does not observe in training, at the end of each validation epoch:
the validation rows of D are embedded (p, q and the real r), and pseudo embeddings of r are extrapolated from q
exactly as MOX does in training (the run's own ``BrokenBind`` settings; ``BrokenBind()``'s defaults for other
methods), each chunk of ``batch_size`` validation rows against one fixed random training batch of every other
dataset (MOX's X-data of Eq. 8, BrokenBind arXiv 2602.06451; re-centred when the method re-centres; without the
training noise). Logged as ``val/diag/<D>/<p->r>/<name>``:

- ``cos_pseudo_pivot``, ``cos_pseudo_target``: mean cosine of a row's pseudo r with its own pivot q and with its own
  real r. Equal values say the pseudo target is a copy of the pivot, so L_MOX repeats L_CLIP(p, q);
- ``mAP_pivot_target``, ``mAP_pseudo_target``: instance mAP of retrieving the real r from q and from pseudo r (a
  pseudo target that retrieves worse than the pivot itself adds nothing the pivot does not have);
- ``mAP_query_pivot``, ``mAP_query_pseudo``: from p to q and to pseudo r (the query→pivot alignment bounds both).

The history travels in checkpoints (``bench`` plots it) and is drawn in TensorBoard (``figures/pivot_diagnosis``).
"""

from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from brokenbind.callbacks.figures import curves
from brokenbind.losses.mox import recentre
from brokenbind.methods.brokenbind import BrokenBind
from brokenbind.metrics.retrieval import retrieval_metrics
from brokenbind.pairing import PairedData


class PivotDiagnosis(Callback):
    """See the module docstring. ``seed`` fixes the training batches the pseudo embeddings are extrapolated from."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = defaultdict(list, {k: [tuple(p) for p in v] for k, v in state["history"].items()})

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dm: PairedData = trainer.datamodule
        for flow in dm.flows:
            query, pivot, target = flow.modalities
            if target in dm.datasets[flow.dataset].modalities:
                continue  # observed in training: nothing is extrapolated
            for name, value in diagnose(pl_module, flow.dataset, query, pivot, target, self.seed).items():
                key = f"{flow.dataset}/{query}->{target}/{name}"
                # identical on every rank (each computes it from the whole split); sync_dist only tells Lightning so
                pl_module.log(f"val/diag/{key}", value, sync_dist=True)
                self.history[key].append((trainer.current_epoch, value))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger) and self.history:
            figure = curves(self.history, "epoch", "cosine / mAP")
            trainer.logger.experiment.add_figure("figures/pivot_diagnosis", figure, trainer.global_step)


@torch.no_grad()
def diagnose(
    pl_module: LightningModule, dataset: str, query: str, pivot: str, target: str, seed: int = 0
) -> dict[str, float]:
    """The diagnosis numbers of one flow on the validation split of ``dataset`` (module docstring)."""
    dm: PairedData = pl_module.trainer.datamodule
    training = pl_module.training
    pl_module.eval()

    def embed(ds: str, split: str, modalities: list[str], rows: Tensor | None = None) -> dict[str, Tensor]:
        features = pl_module.encode_split(ds, split, modalities, rows)
        return {m: pl_module.project(m, f) for m, f in features.items()}

    own = embed(dataset, "val", sorted({query, pivot, target} | set(dm.datasets[dataset].modalities)))
    method = pl_module.method if isinstance(pl_module.method, BrokenBind) else BrokenBind()
    if method.imputer is not None:  # the regressor transition: the pseudo target is the embedded imputed features
        features = pl_module.encode_split(dataset, "val", list(dm.datasets[dataset].modalities))
        pseudo = pl_module.project(target, method.complete({dataset: features})[dataset][target])
    else:
        pseudo = extrapolate(pl_module, method, own, dataset, target, seed)
    pl_module.train(training)
    index = torch.arange(len(pseudo))

    def mean_ap(first: Tensor, second: Tensor) -> float:
        return retrieval_metrics(first, second, index, index, ks=(1,))["mAP"]

    return {
        "cos_pseudo_pivot": (pseudo * own[pivot]).sum(1).mean().item(),
        "cos_pseudo_target": (pseudo * own[target]).sum(1).mean().item(),
        "mAP_pivot_target": mean_ap(own[pivot], own[target]),
        "mAP_pseudo_target": mean_ap(pseudo, own[target]),
        "mAP_query_pivot": mean_ap(own[query], own[pivot]),
        "mAP_query_pseudo": mean_ap(own[query], pseudo),
    }


def extrapolate(
    pl_module: LightningModule, method: BrokenBind, own: dict[str, Tensor], dataset: str, target: str, seed: int
) -> Tensor:
    """Unit pseudo embeddings of ``target`` for the validation rows ``own`` of ``dataset``, each chunk of a batch
    against one fixed random training batch of every other dataset, as MOX extrapolates in training."""
    dm: PairedData = pl_module.trainer.datamodule

    def embed(ds: str, split: str, modalities: list[str], rows: Tensor | None = None) -> dict[str, Tensor]:
        features = pl_module.encode_split(ds, split, modalities, rows)
        return {m: pl_module.project(m, f) for m, f in features.items()}

    n = len(next(iter(own.values())))
    size = min(dm.batch_size, n)  # X-mod (Eq. 7) pairs rows of equal batches
    generator = torch.Generator().manual_seed(seed)
    others = {}
    for ds, spec in dm.datasets.items():
        if ds != dataset:
            # only the picked rows are encoded: memory and time of one batch, not of the whole training split
            pick = torch.randperm(len(dm.splits[ds]["train"]), generator=generator)[:size]
            others[ds] = embed(ds, "train", list(spec.modalities), pick)
    parts = []
    for start in range(0, n, size):
        first = min(start, n - size)  # the last chunk is the last full batch; only its new rows are kept
        chunk = {m: own[m][first : first + size] for m in dm.datasets[dataset].modalities}
        pseudo = method.pseudo_embeddings({dataset: chunk, **others}, dataset)[target]
        rows = pseudo.data
        if method.pseudo_centring == "target_mean":
            rows = recentre(rows, others[pseudo.source][target].float().mean(0))
        parts.append(F.normalize(rows, dim=1)[start - first :])
    return torch.cat(parts)
