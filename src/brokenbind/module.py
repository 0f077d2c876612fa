"""The LightningModule: per-modality backbones (frozen unless trainable) and trainable heads, trained by a method."""

import importlib
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from brokenbind.backbones import HEADS, Backbone, BackboneSpec, ModalityInfo, build_backbone
from brokenbind.backbones.lora import lora_parameters
from brokenbind.cache import FeatureCache, cache_key
from brokenbind.errors import ConfigError, DivergenceError
from brokenbind.methods.base import BindingMethod


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()  # Lightning's per-run advertisement for its cloud logger


def silence_known_warnings() -> None:
    """Warnings and notices every run would print that say nothing about the run (a clean run shows none; see each
    reason)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        if not any(isinstance(f, _NoAdverts) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(_NoAdverts())
    # frozen backbones stay in eval mode on purpose (BindingModule.train); Lightning warns about any module in eval mode
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
    """Embeds each modality as normalize(head(backbone(x))) in fp32 and trains the heads with ``method``.

    Backbones and heads are built in ``configure_model`` from the datamodule's ``modality_info()``, because input
    shapes and data-fitted backbones (mfeat's standardisation) come from the data. Frozen backbones are kept out of
    checkpoints and rebuilt from the data on load; a resumed run therefore needs the same data configuration.

    Args:
        method: the binding objective (``brokenbind.methods``).
        embed_dim, head_hidden_dim: width of the shared embedding space and of the heads' hidden layer.
        head: ``mlp`` (Linear → GELU → Linear from scratch) or ``residual`` (features + a zero-initialised MLP, so the
            untrained model embeds as its backbones do: the zero-shot start for ``bound`` backbones).
        backbones: backbone spec per modality (a name from ``brokenbind.backbones.BACKBONES`` or a mapping with
            ``name`` and options); unnamed modalities use ``default_backbone``.
        optimizer, lr_scheduler: callables taking the trainable parameters (LightningCLI dependency injection).
        feature_cache: reuse frozen-backbone outputs across epochs (``brokenbind.cache``); off for trainable or LoRA
            backbones and for data with random augmentation.
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
        self.use_cache, self.cache = feature_cache, FeatureCache(cache_dir)
        if lora_start_epoch < 0:
            raise ConfigError("lora_start_epoch must be non-negative")
        for name, width in (("embed_dim", embed_dim), ("head_hidden_dim", head_hidden_dim)):
            if width < 1:
                raise ConfigError(f"model.{name} must be a positive number of dimensions, got {width}")
        self.lora_start_epoch = lora_start_epoch
        self.cache_keys: dict[str, str] = {}  # modality -> cache key, for cacheable backbones only
        self.method = method
        self.embed_dim, self.head_hidden_dim, self.head = embed_dim, head_hidden_dim, head
        self.backbone_names = dict(backbones or {})
        self.default_backbone = default_backbone
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.backbones: nn.ModuleDict | None = None
        self.heads: nn.ModuleDict | None = None
        self.run_config: dict[str, Any] | None = None  # the resolved run configuration (CLI), saved in checkpoints

    # -- model -----------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.heads is None:
            dm = self.trainer.datamodule
            cacheable = self.use_cache and not getattr(dm, "augment", False)
            self.build(dm.modality_info(), dm.data_fingerprint() if cacheable else None)

    def build(self, info: dict[str, ModalityInfo], data_fingerprint: str | None = None) -> None:
        """Create one backbone and one head per modality the data provides; with a ``data_fingerprint``, cache the
        outputs of every backbone that computes a fixed function."""
        unknown = set(self.backbone_names) - set(info)
        if unknown:
            raise ConfigError(f"backbones configured for modalities no dataset observes: {sorted(unknown)}")
        self.backbones = nn.ModuleDict(
            {m: build_backbone(self.backbone_names.get(m, self.default_backbone), replace(i, name=m))
             for m, i in info.items()}
        )  # fmt: skip
        self.heads = nn.ModuleDict(
            {m: HEADS[self.head](b.out_dim, self.head_hidden_dim, self.embed_dim) for m, b in self.backbones.items()}
        )
        for m, backbone in self.backbones.items():
            fingerprint = backbone.fingerprint()
            if data_fingerprint and fingerprint and not backbone.trainable and not backbone.lora:
                self.cache_keys[m] = cache_key(fingerprint, data_fingerprint, m)

    def frozen_backbones(self) -> dict[str, Backbone]:
        return {m: b for m, b in (self.backbones or {}).items() if not b.trainable}

    def train(self, mode: bool = True) -> "BindingModule":
        """Lightning calls ``.train()`` around validation; frozen backbones stay in eval mode (BatchNorm, dropout)."""
        super().train(mode)
        for backbone in self.frozen_backbones().values():
            backbone.eval()
        return self

    def embed(self, inputs: dict[str, Any], index: Tensor | None = None) -> dict[str, Tensor]:
        """L2-normalised fp32 embeddings of every modality in ``inputs`` (instance ids ``index`` enable the cache)."""
        return {m: self.project(m, self.features(m, x, index)) for m, x in inputs.items()}

    def project(self, modality: str, features: Tensor) -> Tensor:
        """The head of ``modality`` on backbone features, L2-normalised in fp32."""
        return F.normalize(self.heads[modality](features).float(), dim=-1)

    def features(self, modality: str, x: Any, index: Tensor | None) -> Tensor:
        """Backbone output, from the feature cache when the backbone is cacheable and the instances are in it."""
        backbone, key = self.backbones[modality], self.cache_keys.get(modality)
        if key is None or index is None:
            adapting = backbone.lora and any(p.requires_grad for p in lora_parameters(backbone))
            with torch.set_grad_enabled(torch.is_grad_enabled() and (backbone.trainable or adapting)):
                return backbone(x)
        missing = self.cache.missing(key, index)
        if missing:  # encode only the instances not seen before
            rows = torch.tensor(missing)
            subset = x[rows.to(x.device)] if isinstance(x, Tensor) else [x[i] for i in missing]
            with torch.no_grad():
                self.cache.put(key, index[rows.to(index.device)], backbone(subset))
        return self.cache.get(key, index).to(self.device)

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        self.method.prepare(self.frozen_features, {ds: list(spec.modalities) for ds, spec in dm.datasets.items()})

    def frozen_features(self, dataset: str, split: str, modalities: list[str]) -> dict[str, Tensor]:
        """``encode_split`` for methods that fit on features before training: the backbones must be frozen, since the
        features of a trainable backbone change while training."""
        trainable = [m for m in modalities if self.backbones[m].trainable or self.backbones[m].lora]
        if trainable:
            raise ConfigError(
                f"method {self.method.name!r} fits on backbone features before training, but the backbones of "
                f"{trainable} are trainable or adapted (LoRA): freeze them or use another method"
            )
        return self.encode_split(dataset, split, modalities)

    @torch.no_grad()
    def encode_split(
        self, dataset: str, split: str, modalities: list[str], rows: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Backbone features of every row of one dataset split, for ``modalities`` (also ones the dataset's training
        split does not observe: they are loaded for this call only), in row order; with ``rows`` (positions in the
        split), of those rows only, in that order."""
        dm = self.trainer.datamodule
        data = dm.splits[dataset][split]
        if not set(modalities) <= set(dm.split_modalities(dataset, split)):
            data = dm.load_split(dataset, split, modalities)
        if rows is not None:
            data = torch.utils.data.Subset(data, rows.tolist())
        loader = torch.utils.data.DataLoader(data, batch_size=dm.eval_batch_size, generator=torch.Generator())
        parts: dict[str, list[Tensor]] = {m: [] for m in modalities}
        for batch in loader:
            for m in modalities:
                parts[m].append(self.features(m, batch["x"][m], batch["index"]).float())
        return {m: torch.cat(p) for m, p in parts.items()}

    def on_train_epoch_start(self) -> None:
        adapting = self.current_epoch >= self.lora_start_epoch
        for m, backbone in self.backbones.items():
            parameters = lora_parameters(backbone)
            if parameters and parameters[0].requires_grad != adapting:
                for p in parameters:
                    p.requires_grad_(adapting)
                rank_zero_info(f"epoch {self.current_epoch}: LoRA adapters of {m} {'train' if adapting else 'frozen'}")

    def on_train_epoch_end(self) -> None:
        if self.trainer.is_global_zero:
            self.cache.save()

    # -- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, dict], batch_idx: int) -> Tensor:
        features = {ds: {m: self.features(m, x, b["index"]) for m, x in b["x"].items()} for ds, b in batch.items()}
        features = self.method.complete(features)  # imputation methods add modalities a dataset lacks
        embeddings = {ds: {m: self.project(m, f) for m, f in fs.items()} for ds, fs in features.items()}
        terms = self.method(embeddings, epoch=self.current_epoch, max_epochs=self.trainer.max_epochs)
        self.check_finite(terms)
        loss = sum(terms.values())
        batch_size = len(next(iter(batch.values()))["index"])
        for name, value in terms.items():
            self.log(f"train/loss/{name}", value, batch_size=batch_size, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)  # mean over ranks
        self.log_pivot_conditioning(embeddings, batch_size)
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

    def log_pivot_conditioning(self, embeddings: dict[str, dict[str, Tensor]], batch_size: int) -> None:
        """Condition number of each dataset's pivot embeddings, i.e. of the pseudo-inverse MOX takes of them (B close
        to d makes it explode, and R_Fro with it), logged once per epoch as the largest of the epoch's batches: an
        epoch shorter than log_every_n_steps still logs it."""
        for pivot in getattr(self.trainer.datamodule, "pivots", []):
            for ds, mods in embeddings.items():
                if pivot in mods:
                    cond = torch.linalg.cond(mods[pivot].detach().float())
                    self.log(
                        f"train/cond/{ds}/{pivot}", cond, on_step=False, on_epoch=True, reduce_fx="max",
                        batch_size=batch_size, sync_dist=True,
                    )  # fmt: skip

    def _eval_step(self, batch: dict) -> dict[str, Any]:
        return {"embeddings": self.embed(batch["x"], batch["index"]), "index": batch["index"], "label": batch["label"]}

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
        prefixes = tuple(f"backbones.{m}." for m in self.frozen_backbones())
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes) or "lora_" in k
        }
        if self.run_config is not None:
            checkpoint["config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the rebuilt frozen backbones back so that loading stays strict for every other tensor."""
        for m, backbone in self.frozen_backbones().items():
            for key, value in backbone.state_dict().items():
                checkpoint["state_dict"].setdefault(f"backbones.{m}.{key}", value)
