"""Emergent binding: retrieval along every configured modality flow on the full val/test split of its dataset."""

import math
import os
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor

from brokenbind.checkpoints import checkpoint_digest
from brokenbind.errors import ConfigError, DivergenceError
from brokenbind.metrics.retrieval import class_map_problem, retrieval_metrics
from brokenbind.metrics.transitive import anchor_subset, blended, transitive_embeddings
from brokenbind.pairing import PairedData
from brokenbind.results import ResultRow, format_table, write_csv


class EmergentBinding(Callback):
    """For each flow p→q→r on dataset D, retrieves r from p over D's whole split and logs
    ``<stage>/mAP/<D>/<p>-><r>`` (instance-level: the paired item is the one relevant item),
    ``<stage>/mAP_class/...`` (same label is relevant), ``<stage>/R@k/...``, and ``<stage>/mAP``, the mean instance
    mAP over flows, which checkpoint selection monitors. Class mAP is missing (not logged, NaN in the rows: "n/a" in
    the table, an empty cell in ``results.csv``) where it would say nothing (``class_map_problem``: unlabelled rows,
    or one class only); a warning says why, once per dataset and split.

    Embeddings from every rank are gathered and deduplicated by instance id (DistributedSampler pads with repeats), so
    every query is scored against the full gallery. At the end of fit (the validation epoch with the best mean mAP) and
    of test it prints the results table and appends the rows to ``results.csv`` in the run directory.

    Health checks on the same embeddings: NaN or Inf stops the run (``DivergenceError``), before any checkpoint of the
    epoch is written; ``<stage>/mean_cosine/<D>/<m>``, the mean pairwise cosine of a modality's embeddings, is logged,
    and a warning is given once per modality when it rises above ``collapse_cosine`` after having been below it
    (everything mapped towards one point, as the literal BrokenBind recipe does on mfeat once MOX starts; randomly
    initialised heads also start near one point, which is not a collapse), and at the end of fit for every modality
    that never went below it (it never spread out: the worst case). A ``fast_dev_run`` (one batch) is not judged.
    """

    def __init__(
        self,
        chunk_size: int = 1024,
        ks: tuple[int, ...] = (1, 5, 10),
        experiment: str | None = None,
        method: str | None = None,
        collapse_cosine: float = 0.9,
    ):
        """``experiment`` and ``method`` label the result rows (the CLI sets them from the experiment file and the
        method preset); by default they are the logger's name and the method's ``name``."""
        self.chunk_size, self.ks = chunk_size, tuple(ks)
        self.experiment, self.method = experiment, method
        self.collapse_cosine = collapse_cosine
        self._collapse_warned: set[str] = set()
        self._spread_seen: dict[str, bool] = {}  # whether a modality's embeddings were ever below collapse_cosine
        self._last_cosine: dict[str, tuple[int, float]] = {}  # (epoch, mean cosine) of each modality's last check
        self._class_map_warned: set[tuple[str, str]] = set()  # (dataset, stage) whose missing class mAP was explained
        self._last: list[ResultRow] = []  # the rows just scored
        self._outputs: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.rows: dict[str, list[ResultRow]] = {}  # stage -> rows reported at the end of fit ("val") or test

    # -- collect ---------------------------------------------------------------------------------------------------
    def _collect(self, outputs: dict[str, Any], dataloader_idx: int) -> None:
        self._outputs[dataloader_idx].append(
            {
                "embeddings": {m: e.detach().float() for m, e in outputs["embeddings"].items()},
                "index": outputs["index"],
                "label": outputs["label"],
            }
        )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is None:  # a resumed fit keeps the best epoch restored from its checkpoint
            self.rows.pop("val", None)
        method, weight = pl_module.method, pl_module.method.transitive_weight
        dm: PairedData = trainer.datamodule
        if not 0.0 <= weight <= 1.0:  # a method of one's own sets it as a class attribute: say so before training
            raise ConfigError(f"method {method.name!r}: transitive_weight must lie in [0, 1], got {weight}")
        if weight:  # before training: refuse unscoreable flows, or name those scored by the cosine alone
            alone = [f.flow for f in dm.flows if anchor_holder(pl_module, f, weight == 1) is None]
            if alone:
                rank_zero_info(
                    f"method {method.name!r} gives {weight} of the retrieval score to anchor rows observing a flow's "
                    "pivot and target; these flows have no pivot or no training dataset observing both, and are "
                    f"scored by the embeddings' cosine alone: {alone}"
                )

    # the best validation epoch so far and which modalities ever spread out travel in checkpoints, so a resumed run
    # reports the best over the whole run and judges collapse over the whole run
    def state_dict(self) -> dict[str, Any]:
        return {"val": [asdict(r) for r in self.rows.get("val", [])], "spread": dict(self._spread_seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["val"]:
            self.rows["val"] = [ResultRow(**r) for r in state["val"]]
        self._spread_seen = dict(state.get("spread", {}))  # checkpoints written before this key have none

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._outputs.clear()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, dataloader_idx)

    def _gather(self, pl_module: LightningModule, batches: list[dict[str, Any]]) -> dict[str, Any]:
        """One split's embeddings, ids and labels from all ranks, each instance once, ordered by instance id."""
        local = {
            "index": torch.cat([b["index"] for b in batches]),
            "label": torch.cat([b["label"] for b in batches]),
            **{m: torch.cat([b["embeddings"][m] for b in batches]) for m in batches[0]["embeddings"]},
        }
        if pl_module.trainer.world_size > 1:
            local = {k: pl_module.all_gather(v).flatten(0, 1) for k, v in local.items()}
        order = torch.argsort(local["index"], stable=True)
        ids = local["index"][order]
        first = torch.ones_like(ids, dtype=torch.bool)
        first[1:] = ids[1:] != ids[:-1]
        return {k: v[order][first] for k, v in local.items()}

    # -- score -----------------------------------------------------------------------------------------------------
    def _score(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        dm: PairedData = trainer.datamodule
        rows = []
        digest = checkpoint_digest(trainer.ckpt_path) if stage == "test" and trainer.ckpt_path else ""
        for idx, dataset in enumerate(dm.eval_datasets):
            data = self._gather(pl_module, self._outputs[idx])
            self._check_health(trainer, pl_module, stage, dataset, data)
            self._explain_class_map(trainer, stage, dataset, data["label"])
            for flow in (f for f in dm.flows if f.dataset == dataset):
                query, _, target = flow.modalities
                queries, targets = self._represent(pl_module, flow, data[query], data[target])
                metrics = retrieval_metrics(
                    queries, targets, data["index"], data["index"], data["label"], data["label"],
                    ks=self.ks, chunk_size=self.chunk_size,
                )  # fmt: skip
                for name, value in metrics.items():
                    if math.isnan(value):  # class mAP that cannot be computed: missing, not a number
                        continue
                    # identical on every rank (gathered above); sync_dist only tells Lightning so
                    pl_module.log(f"{stage}/{name}/{dataset}/{flow.name}", value, sync_dist=True)
                rows.append(self._row(trainer, pl_module, stage, flow, metrics, digest))
        # the mean instance mAP over flows is what checkpoint selection monitors
        pl_module.log(f"{stage}/mAP", _mean_map(rows), sync_dist=True)
        self._last = rows
        best = self.rows.get(stage)
        if stage == "test" or best is None or _mean_map(rows) > _mean_map(best):
            self.rows[stage] = rows  # val keeps the best epoch: the one checkpoint selection picks by default
        self._outputs.clear()

    @staticmethod
    def _represent(pl_module: LightningModule, flow, query: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The rows compared by cosine for a flow's query and target, as the method's ``transitive_weight`` declares:
        the embeddings themselves (0), their relative representations through the (pivot, target) embeddings of the
        training rows of the first dataset observing both (1, ``metrics.transitive``; at most the method's
        ``max_anchors`` of them), or the two blended (between; the embeddings alone where no dataset observes
        both)."""
        method = pl_module.method
        weight = method.transitive_weight
        holder = anchor_holder(pl_module, flow, weight == 1) if weight else None
        if holder is None:
            return query, target
        _, pivot, target_modality = flow.modalities
        rows = anchor_subset(len(pl_module.trainer.datamodule.splits[holder]["train"]), method.max_anchors)
        features = pl_module.encode(holder, "train", [pivot, target_modality], rows)
        anchor_pivot, anchor_target = (pl_module.model.project(m, features[m]) for m in (pivot, target_modality))
        relative = transitive_embeddings(query, target, anchor_pivot, anchor_target, method.top_k, method.power)
        if weight == 1:
            return relative
        return blended(query, relative[0], weight), blended(target, relative[1], weight)

    def _check_health(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, dataset: str, data: dict[str, Any]
    ) -> None:
        for m, e in data.items():
            if m in ("index", "label"):
                continue
            if not torch.isfinite(e).all():
                raise DivergenceError(
                    f"{stage} embeddings of modality {m!r} on dataset {dataset!r} contain NaN or Inf at epoch "
                    f"{trainer.current_epoch}: the model diverged (learning rate or logit scale too high?). Nothing "
                    "of this epoch is scored or checkpointed."
                )
            n = len(e)  # unit rows: sum over i != j of cos(e_i, e_j) is |Σ e|² − n
            mean_cosine = ((e.sum(0).pow(2).sum() - n) / max(n * (n - 1), 1)).item()
            pl_module.log(f"{stage}/mean_cosine/{dataset}/{m}", mean_cosine, sync_dist=True)
            key = f"{dataset}/{m}"
            spread = self._spread_seen.get(key, False)  # untrained heads start near one point: not a collapse
            self._spread_seen[key] = spread or mean_cosine <= self.collapse_cosine
            self._last_cosine[key] = (trainer.current_epoch, mean_cosine)
            if mean_cosine > self.collapse_cosine and spread and key not in self._collapse_warned:
                self._collapse_warned.add(key)
                rank_zero_warn(
                    f"embeddings of modality {m!r} on dataset {dataset!r} are collapsing towards one point at epoch "
                    f"{trainer.current_epoch}: mean pairwise cosine {mean_cosine:.3f} > {self.collapse_cosine}, after "
                    "having been spread out, so retrieval can hardly tell its items apart. What to check: the "
                    "learning rate (--model.optimizer.init_args.lr: lower it); with BrokenBind, the MOX terms, which "
                    "start after consistency_fraction of the run: the paper's literal recipe (--method "
                    "brokenbind_paper: Moore-Penrose pseudo-inverse, summed R_Fro) collapses this way on mfeat, the "
                    "default --method brokenbind bounds them (--model.method.init_args.pinv_ridge, fro_reduction, "
                    "fro_weight, mox_weight). fit tests the best validation epoch, which may precede the collapse"
                )

    def _warn_never_spread(self) -> None:
        """A modality whose embeddings stayed bunched up in every validation epoch of the fit: the collapse alarm
        above cannot fire for it (it never was spread out), and it is the worst case."""
        for key, (epoch, mean_cosine) in self._last_cosine.items():
            if self._spread_seen[key]:
                continue
            dataset, m = key.split("/", 1)
            rank_zero_warn(
                f"embeddings of modality {m!r} on dataset {dataset!r} never spread out: their mean pairwise cosine "
                f"stayed above {self.collapse_cosine} in every validation epoch of this fit ({mean_cosine:.3f} at "
                f"epoch {epoch}), so retrieval can hardly tell its items apart and its mAP is near chance. What to "
                f"check: that the inputs of {m!r} differ from row to row (its backbone's features; for audio, silent "
                "or cut clips: data.init_args.audio_seconds), its backbone (model.backbones), a longer run "
                "(trainer.max_epochs) or another learning rate (--model.optimizer.init_args.lr)"
            )

    def _explain_class_map(self, trainer: Trainer, stage: str, dataset: str, labels: torch.Tensor) -> None:
        """Say once per dataset and split why its class mAP is missing (``class_map_problem``)."""
        problem = class_map_problem(labels)
        if problem is None or (dataset, stage) in self._class_map_warned:
            return
        self._class_map_warned.add((dataset, stage))
        dm: PairedData = trainer.datamodule
        flows = [f.flow for f in dm.flows if f.dataset == dataset]
        rank_zero_warn(
            f"class mAP of {flows} on dataset {dataset!r} ({stage} split) is not reported (n/a in the table, an "
            f"empty map_class cell in results.csv): {problem}"
        )

    def _row(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, flow, metrics: dict[str, float], digest: str
    ) -> ResultRow:
        dm: PairedData = trainer.datamodule
        query, _, target = flow.modalities
        return ResultRow(
            experiment=self.experiment or (trainer.logger.name if trainer.logger else ""),
            method=self.method or pl_module.method.name,
            seed=_seed(pl_module),
            stage=stage,
            weights=Path(trainer.ckpt_path).name
            if stage == "test" and trainer.ckpt_path
            else f"epoch {trainer.current_epoch}",
            dataset_flow="→".join(dm.graph.chain(flow.dataset, target)),
            dataset=flow.dataset,
            flow=flow.flow,
            emergent=not dm.graph.observed_together(query, target),
            map_instance=metrics["mAP"],
            map_class=metrics.get("mAP_class", float("nan")),
            r1=metrics.get("R@1", float("nan")),
            r5=metrics.get("R@5", float("nan")),
            r10=metrics.get("R@10", float("nan")),
            checkpoint=digest,
        )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:  # a couple of batches, not the whole split: no score
            self._outputs.clear()
            return
        self._score(trainer, pl_module, "val")
        if trainer.progress_bar_callback is None and trainer.state.fn == "fit":  # a sign of life in batch jobs and logs
            loss = trainer.callback_metrics.get("train/loss")
            rank_zero_info(
                f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: val mAP {_mean_map(self._last):.4f}"
                + (f", train loss {loss.item():.4f}" if loss is not None else "")
            )

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._score(trainer, pl_module, "test")

    # -- report ----------------------------------------------------------------------------------------------------
    @rank_zero_only
    def _report(self, log_dir: str | None, stage: str) -> None:
        rows = self.rows.get(stage)
        if not rows:
            return
        # results go to stdout, with Lightning's metric tables; progress, warnings and errors go to stderr
        label = rows[0].weights + (", best validation mAP" if stage == "val" else "")
        print(f"\n{stage} retrieval ({label}):\n{format_table(rows)}", flush=True)
        if log_dir is not None:
            run_dir = Path(log_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_csv(run_dir / "results.csv", rows)
            print(f"results: {run_dir / 'results.csv'}\nrun directory: {run_dir}", flush=True)

    # trainer.log_dir is a collective under DDP (a broadcast): read it on every rank, report on rank 0 only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.fast_dev_run:  # one batch: nothing trained long enough to judge
            self._warn_never_spread()
        self._report(trainer.log_dir, "val")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":  # `brokenbind validate`, or the untrained model after a 0-epoch fit
            self._report(trainer.log_dir, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer.log_dir, "test")


def anchor_holder(pl_module: LightningModule, flow, required: bool = True) -> str | None:
    """The first training dataset observing a flow's pivot and target: the anchor rows of transitive retrieval. None
    when there is none and it is not ``required`` (a blended score then has only the embeddings' cosine)."""
    _, pivot, target = flow.modalities
    dm: PairedData = pl_module.trainer.datamodule
    holder = None if pivot is None else dm.graph.anchor_holder(pivot, target)
    if holder is not None or not required:
        return holder
    if pivot is None:
        raise ConfigError(
            f"method {pl_module.method.name!r} retrieves through anchor rows observing a flow's pivot and target, and "
            f"flow {flow.flow!r} has no pivot; score it with another method, or name a pivot ('query->pivot->target')"
        )
    raise ConfigError(
        f"method {pl_module.method.name!r} retrieves through anchor rows observing both {pivot!r} and "
        f"{target!r} (flow {flow.flow!r}), and no training dataset observes both: three-dataset chains have "
        "no such rows; use another method for them"
    )


def _seed(pl_module: LightningModule) -> str:
    """The run's seed as results.csv records it: the resolved ``seed_everything`` of a CLI or API run (an environment
    variable could be a previous in-process run's), else Lightning's ``PL_GLOBAL_SEED``; "unseeded" when neither set
    one."""
    config = getattr(pl_module, "run_config", None)
    seed = config.get("seed_everything") if config else os.environ.get("PL_GLOBAL_SEED")
    return "unseeded" if seed is None or seed is False else str(seed)


def _mean_map(rows: list[ResultRow]) -> float:
    return sum(r.map_instance for r in rows) / len(rows)
