"""The LightningModule: per-modality backbones (frozen unless trainable) and trainable heads, trained by a method."""

import importlib
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from brokenbind.backbones import BackboneSpec
from brokenbind.backbones.lora import lora_parameters
from brokenbind.checkpoints import with_model_prefix
from brokenbind.errors import ConfigError, DivergenceError, TrainableBackboneError
from brokenbind.methods.base import BindingMethod
from brokenbind.model import BindingModel
from brokenbind.pairing import PairedData


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()  # Lightning's per-run advertisement for its cloud logger


def silence_known_warnings() -> None:
    """Warnings and notices every run would print that say nothing about the run (a clean run shows none; see each
    reason)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        if not any(isinstance(f, _NoAdverts) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(_NoAdverts())
    # frozen backbones stay in eval mode on purpose (BindingModel.train); Lightning warns about any module in eval mode
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # an epoch shorter than log_every_n_steps loses nothing: step logs count steps across epochs and per-epoch values
    # (train/cond) are logged every epoch
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    # Lightning 2.6 builds torch's deprecated LeafSpec when it flattens logged values; nothing a user can change
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    # DDP: Lightning's LightningModule.all_gather calls torch's deprecated all_gather; nothing a user can change
    warnings.filterwarnings(
        "ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated", category=FutureWarning
    )
    # DDP: the evaluation gathers every rank's embeddings and counts each instance once (EmergentBinding), so the
    # repeats DistributedSampler pads with are not scored twice, which is what Lightning warns about
    warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders")


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The optimiser of ``configs/defaults.yaml`` (the paper's, Appendix A: AdamW, lr 5e-4, weight decay 0.2), for a
    module built from Python: that file is its one source, as for a run."""
    spec = yaml.safe_load((Path(__file__).parent / "configs" / "defaults.yaml").read_text())["model"]["optimizer"]
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(params, **spec["init_args"])


class BindingModule(LightningModule):
    """Trains a ``BindingModel`` (``model``: normalize(head(backbone(x))) in fp32 per modality) with ``method``.

    The model's backbones and heads are built in ``configure_model`` from the datamodule's ``modality_info()``,
    because input shapes and data-fitted backbones (mfeat's standardisation) come from the data. Frozen backbones are
    kept out of checkpoints and rebuilt from the data on load; a resumed run therefore needs the same data
    configuration.

    Args:
        method: the binding objective (``brokenbind.methods``).
        embed_dim, head_hidden_dim: width of the shared embedding space and of the heads' hidden layer.
        head: ``mlp`` (Linear → GELU → Linear from scratch) or ``residual`` (features + a zero-initialised MLP, so the
            untrained model embeds as its backbones do: the zero-shot start for ``bound`` backbones).
        backbones: backbone spec per modality (a name from ``brokenbind.backbones.BACKBONES`` or a mapping with
            ``name`` and options); unnamed modalities use ``default_backbone``.
        optimizer, lr_scheduler: callables taking the trainable parameters (LightningCLI dependency injection).
        feature_cache: reuse frozen-backbone outputs across epochs (``brokenbind.cache``); off for trainable or LoRA
            backbones.
        cache_dir: where cached features persist across runs (default: memory only, for this run).
        lora_start_epoch: the paper's two stages in one run (Table 9) when backbones carry LoRA adapters (a ``lora``
            option in their spec): epochs before it train the heads alone (linear probing; peft's zero init keeps
            the backbones exactly pretrained), from it on the adapters train too, starting from the probed heads.
            0 trains the adapters from the start. The stage follows the epoch number, so resumes land in the right one.
    """

    def __init__(
        self,
        method: BindingMethod,
        embed_dim: int = 128,
        head_hidden_dim: int = 256,
        head: Literal["mlp", "residual"] = "mlp",
        default_backbone: BackboneSpec = "standardize",
        backbones: dict[str, BackboneSpec] | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        feature_cache: bool = True,
        cache_dir: str | None = None,
        lora_start_epoch: int = 0,
    ):
        super().__init__()
        silence_known_warnings()
        self.save_hyperparameters(ignore=["method", "optimizer", "lr_scheduler"])
        if lora_start_epoch < 0:
            raise ConfigError("lora_start_epoch must be non-negative")
        for name, width in (("embed_dim", embed_dim), ("head_hidden_dim", head_hidden_dim)):
            if width < 1:
                raise ConfigError(f"model.{name} must be a positive number of dimensions, got {width}")
        self.use_cache, self.lora_start_epoch = feature_cache, lora_start_epoch
        self.method = method
        self.model = BindingModel(embed_dim, head_hidden_dim, head, default_backbone, backbones, cache_dir)
        self.backbone_names, self.default_backbone = self.model.backbone_names, self.model.default_backbone
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.run_config: dict[str, Any] | None = None  # the resolved run configuration (CLI), saved in checkpoints

    @property
    def datamodule(self) -> PairedData:
        return self.trainer.datamodule

    # -- model -----------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if not self.model.built:
            dm = self.datamodule
            self.model.build(dm.modality_info(), dm.data_fingerprint() if self.use_cache else None)

    def on_fit_start(self) -> None:
        self.method.prepare(self.frozen_features, self.datamodule.graph)

    def encode(self, dataset: str, split: str, modalities: list[str], rows: Tensor | None = None) -> dict[str, Tensor]:
        """Backbone features of one dataset split for ``modalities`` (``PairedData.loader``), in row order."""
        return self.model.encode(self.datamodule.loader(dataset, split, modalities, rows), modalities)

    def frozen_features(self, dataset: str, split: str, modalities: list[str]) -> dict[str, Tensor]:
        """``encode`` for methods that fit on features before training: the backbones must be frozen, since the
        features of a trainable backbone change while training."""
        trainable = self.model.adapted(modalities)
        if trainable:
            raise TrainableBackboneError(
                f"method {self.method.name!r} fits on backbone features before training, but the backbones of "
                f"{trainable} are trainable or adapted (LoRA): freeze them or use another method",
                trainable,
            )
        return self.encode(dataset, split, modalities)

    def on_train_epoch_start(self) -> None:
        adapting = self.current_epoch >= self.lora_start_epoch
        for m, backbone in self.model.backbones.items():
            parameters = lora_parameters(backbone)
            if parameters and parameters[0].requires_grad != adapting:
                for p in parameters:
                    p.requires_grad_(adapting)
                rank_zero_info(f"epoch {self.current_epoch}: LoRA adapters of {m} {'train' if adapting else 'frozen'}")

    def on_train_epoch_end(self) -> None:
        if self.trainer.is_global_zero:
            self.model.cache.save()

    # -- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, dict], batch_idx: int) -> Tensor:
        model = self.model
        features = {ds: {m: model.features(m, x, b["index"]) for m, x in b["x"].items()} for ds, b in batch.items()}
        features = self.method.complete(features)  # imputation methods add modalities a dataset lacks
        embeddings = {ds: {m: model.project(m, f) for m, f in fs.items()} for ds, fs in features.items()}
        output = self.method(embeddings, epoch=self.current_epoch, max_epochs=self.trainer.max_epochs)
        self.check_finite(output.terms)
        loss = sum(output.terms.values())
        batch_size = len(next(iter(batch.values()))["index"])
        for name, value in output.terms.items():
            self.log(f"train/loss/{name}", value, batch_size=batch_size, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)  # mean over ranks
        # once per epoch, the largest of its batches: an epoch shorter than log_every_n_steps still logs it
        for name, value in output.diagnostics.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, reduce_fx="max", batch_size=batch_size,
                     sync_dist=True)  # fmt: skip
        return loss

    def check_finite(self, terms: dict[str, Tensor]) -> None:
        """Stop at the first NaN or Inf loss term, before it reaches the weights: a diverged model must never be
        trained on, checkpointed or scored. Every rank computes the same terms (global batch), so all stop together."""
        bad = {name: value.item() for name, value in terms.items() if not torch.isfinite(value)}
        if bad:
            lrs = [group["lr"] for group in self.trainer.optimizers[0].param_groups] if self.trainer.optimizers else []
            raise DivergenceError(
                f"loss term(s) {bad} at epoch {self.current_epoch}, global step {self.global_step}: training diverged. "
                f"Likely causes: the learning rate (now {lrs[0] if lrs else 'unknown'}; "
                "--model.optimizer.init_args.lr) or the logit scale (--model.method.init_args.logit_scale); lower "
                "them and start again. The diverged state was not checkpointed."
            )

    def _eval_step(self, batch: dict) -> dict[str, Any]:
        embeddings = self.model.embed(batch["x"], batch["index"])
        return {"embeddings": embeddings, "index": batch["index"], "label": batch["label"]}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._eval_step(batch)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._eval_step(batch)

    # -- optimisation and checkpoints ------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        # LoRA adapters join from the start, frozen until their stage (lora_start_epoch): AdamW skips parameters
        # without gradients, and the optimiser state keeps one layout across the stages and across resumes.
        optimizer = self.optimizer([p for n, p in self.named_parameters() if p.requires_grad or "lora_" in n])
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Frozen backbones are not saved: they are rebuilt from their source (weights file, data statistics). Their
        LoRA adapters are trained, so they are. The resolved run configuration (plain containers) goes in too, so
        that the checkpoint alone rebuilds its run (``brokenbind test --ckpt_path X``)."""
        prefixes = tuple(f"model.backbones.{m}." for m in self.model.frozen_backbones())
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes) or "lora_" in k
        }
        if self.run_config is not None:
            checkpoint["config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the rebuilt frozen backbones back so that loading stays strict for every other tensor."""
        checkpoint["state_dict"] = with_model_prefix(checkpoint["state_dict"])
        for m, backbone in self.model.frozen_backbones().items():
            for key, value in backbone.state_dict().items():
                checkpoint["state_dict"].setdefault(f"model.backbones.{m}.{key}", value)
