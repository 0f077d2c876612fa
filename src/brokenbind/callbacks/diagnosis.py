"""Pivot diagnosis: does a MOX pseudo embedding carry more than the pivot it is made from?

For every flow p→q→r whose target r its dataset D does not observe in training, at the end of each validation epoch:
the validation rows of D are embedded (p, q and the real r), and pseudo embeddings of r are extrapolated from q
exactly as MOX does in training (the method's ``extrapolator``: the run's own ``BrokenBind`` settings, MOX's default
linear transition for other methods; the method's imputed features when it imputes them), each chunk of
``batch_size`` validation rows against one fixed random training batch of every other dataset (MOX's X-data of
Eq. 8, BrokenBind arXiv 2602.06451; re-centred when the method re-centres; without the training noise).
Logged as ``val/diag/<D>/<p->r>/<name>``:

- ``cos_pseudo_pivot``, ``cos_pseudo_target``: mean cosine of a row's pseudo r with its own pivot q and with its own
  real r. Equal values say the pseudo target is a copy of the pivot, so L_MOX repeats L_CLIP(p, q);
- ``mAP_pivot_target``, ``mAP_pseudo_target``: instance mAP of retrieving the real r from q and from pseudo r (a
  pseudo target that retrieves worse than the pivot itself adds nothing the pivot does not have);
- ``mAP_query_pivot``, ``mAP_query_pseudo``: from p to q and to pseudo r (the query→pivot alignment bounds both).

The history travels in checkpoints (``bench`` plots it) and is drawn in TensorBoard (``figures/pivot_diagnosis``).

Once per fit, before training, the **transfer error** of each such flow's pivot → target map (an analysis number: it
reads the scored dataset's hidden pairs, which no method sees), from frozen backbone features: the map the run's
method fitted for D when it fits one (the regressor transition's kernel map, ``impute``'s ridge), else a ridge
regressor q → r fitted on the training rows of the datasets observing both (λ chosen on their validation rows), then
``transfer/<D>/<q->r>/<name>``, logged at step 0 and printed:

- ``rel_mse_supporting``, ``rel_mse_scored``: its mean squared error over the target's variance on the validation rows
  of the supporting datasets and of D (the growth is what the shift between datasets costs the map);
- ``mAP_supporting``, ``mAP_scored``: instance mAP of retrieving the real r from the predicted r on the validation rows
  of the supporting datasets and of D (D's hidden training rows are never read: a dataset need not hold them).
"""

from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from brokenbind.callbacks.figures import curves
from brokenbind.errors import ConfigError, DataError
from brokenbind.losses.mox import recentre
from brokenbind.methods.base import Encoder
from brokenbind.methods.extrapolation import Extrapolator
from brokenbind.methods.impute import DEFAULT_RIDGES
from brokenbind.metrics.retrieval import retrieval_metrics
from brokenbind.pairing import PairedData
from brokenbind.transfer import choose, fit_ridge, predict_ridge


class PivotDiagnosis(Callback):
    """See the module docstring. ``seed`` fixes the training batches the pseudo embeddings are extrapolated from."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.transfer: dict[str, float] = {}  # "<D>/<q->r>/<name>" -> the transfer error numbers of this fit

    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history), "transfer": self.transfer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = defaultdict(list, {k: [tuple(p) for p in v] for k, v in state["history"].items()})
        self.transfer = dict(state.get("transfer", {}))  # absent from checkpoints written before it existed

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm: PairedData = trainer.datamodule
        for flow in dm.flows:
            _, pivot, target = flow.modalities
            holders = dm.graph.holders(pivot, target)
            if pivot is None or target in dm.datasets[flow.dataset].modalities or not holders:
                continue  # no pivot, observed in training, or no dataset observes the pivot with the target (a chain)
            try:
                mapping = pl_module.method.pivot_map(flow.dataset, pivot, target)
                numbers = transfer_error(pl_module.frozen_features, flow.dataset, holders, pivot, target, mapping)
            except (ConfigError, DataError) as error:  # trainable backbones (their features move), or no such rows
                rank_zero_info(f"transfer error of {flow.dataset}: {pivot}->{target} not computed: {error}")
                continue
            key = f"{flow.dataset}/{pivot}->{target}"
            source = "the method's map" if mapping is not None else "a ridge map"
            rank_zero_info(f"transfer error {key} ({source}): " + ", ".join(f"{k} {v:.3f}" for k, v in numbers.items()))
            self.transfer |= {f"{key}/{name}": value for name, value in numbers.items()}
            if trainer.logger is not None:
                trainer.logger.log_metrics({f"transfer/{key}/{k}": v for k, v in numbers.items()}, step=0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dm: PairedData = trainer.datamodule
        for flow in dm.flows:
            query, pivot, target = flow.modalities
            if pivot is None or target in dm.datasets[flow.dataset].modalities:
                continue  # no pivot, or observed in training: nothing is extrapolated
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

    observed = dm.datasets[dataset].modalities
    features = pl_module.encode(dataset, "val", sorted({query, pivot, target} | set(observed)))
    own = {m: pl_module.model.project(m, f) for m, f in features.items()}
    method = pl_module.method
    if method.extrapolator is None:  # the method imputes the pseudo target: the embedded imputed features
        imputed = method.complete({dataset: {m: features[m] for m in observed}})[dataset][target]
        pseudo = pl_module.model.project(target, imputed)
    else:
        pseudo = extrapolate(pl_module, method.extrapolator, own, dataset, target, seed)
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
    pl_module: LightningModule, extrapolator: Extrapolator, own: dict[str, Tensor], dataset: str, target: str, seed: int
) -> Tensor:
    """Unit pseudo embeddings of ``target`` for the validation rows ``own`` of ``dataset``, each chunk of a batch
    against one fixed random training batch of every other dataset, as MOX extrapolates in training."""
    dm: PairedData = pl_module.trainer.datamodule

    def embed(ds: str, split: str, modalities: list[str], rows: Tensor | None = None) -> dict[str, Tensor]:
        features = pl_module.encode(ds, split, modalities, rows)
        return {m: pl_module.model.project(m, f) for m, f in features.items()}

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
        pseudo = extrapolator(dm.graph, {dataset: chunk, **others}, dataset)[target]
        rows = pseudo.data
        if extrapolator.pseudo_centring == "target_mean":
            rows = recentre(rows, others[pseudo.source][target].float().mean(0))
        parts.append(F.normalize(rows, dim=1)[start - first :])
    return torch.cat(parts)


@torch.no_grad()
def transfer_error(
    encode: Encoder,
    scored: str,
    holders: list[str],
    pivot: str,
    target: str,
    mapping: Callable[[Tensor], Tensor] | None = None,
    ridges: tuple[float, ...] = DEFAULT_RIDGES,
) -> dict[str, float]:
    """The transfer-error numbers of one flow (module docstring) from ``encode`` (frozen backbone features), for
    ``mapping`` (pivot features → target features) or, without one, a ridge map chosen from ``ridges``."""

    def pairs(datasets: list[str], split: str) -> tuple[Tensor, Tensor]:
        parts = [encode(d, split, [pivot, target]) for d in datasets]
        return torch.cat([p[pivot] for p in parts]), torch.cat([p[target] for p in parts])

    def rel_mse(x: Tensor, y: Tensor) -> float:
        return ((mapping(x) - y).pow(2).mean() / (y - y.mean(0)).pow(2).mean()).item()

    def mean_ap(x: Tensor, y: Tensor) -> float:
        index = torch.arange(len(x))
        return retrieval_metrics(F.normalize(mapping(x), dim=1), F.normalize(y, dim=1), index, index,
                                 ks=(1,))["mAP"]  # fmt: skip

    supporting_val, scored_val = pairs(holders, "val"), pairs([scored], "val")
    if mapping is None:
        supporting = pairs(holders, "train")
        (ridge, _), _ = choose("ridge", *supporting, *supporting_val, [(r, 0.0) for r in ridges])
        mapping = partial(predict_ridge, fit_ridge(*supporting, ridge))
    return {
        "rel_mse_supporting": rel_mse(*supporting_val),
        "rel_mse_scored": rel_mse(*scored_val),
        "mAP_supporting": mean_ap(*supporting_val),
        "mAP_scored": mean_ap(*scored_val),
    }
