"""The LightningModule: per-modality backbones (frozen unless trainable) and trainable heads, trained by a method."""

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from brokenbind.backbones import Backbone, BackboneSpec, ModalityInfo, ProjectionHead, build_backbone
from brokenbind.errors import ConfigError
from brokenbind.methods.base import BindingMethod


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The paper's optimiser (Appendix A): AdamW, lr 5e-4, weight decay 0.2."""
    return torch.optim.AdamW(params, lr=5e-4, weight_decay=0.2)


class BindingModule(LightningModule):
    """Embeds each modality as normalize(head(backbone(x))) in fp32 and trains the heads with ``method``.

    Backbones and heads are built in ``configure_model`` from the datamodule's ``modality_info()``, because input
    shapes and data-fitted backbones (mfeat's standardisation) come from the data. Frozen backbones are kept out of
    checkpoints and rebuilt from the data on load; a resumed run therefore needs the same data configuration.

    Args:
        method: the binding objective (``brokenbind.methods``).
        embed_dim, head_hidden_dim: width of the shared embedding space and of the heads' hidden layer.
        backbones: backbone spec per modality (a name from ``brokenbind.backbones.BACKBONES`` or a mapping with
            ``name`` and options); unnamed modalities use ``default_backbone``.
        optimizer, lr_scheduler: callables taking the trainable parameters (LightningCLI dependency injection).
    """

    def __init__(
        self,
        method: BindingMethod,
        embed_dim: int = 128,
        head_hidden_dim: int = 256,
        default_backbone: BackboneSpec = "standardize",
        backbones: dict[str, BackboneSpec] | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["method", "optimizer", "lr_scheduler"])
        self.method = method
        self.embed_dim, self.head_hidden_dim = embed_dim, head_hidden_dim
        self.backbone_names = dict(backbones or {})
        self.default_backbone = default_backbone
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.backbones: nn.ModuleDict | None = None
        self.heads: nn.ModuleDict | None = None

    # -- model -----------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.heads is None:
            self.build(self.trainer.datamodule.modality_info())

    def build(self, info: dict[str, ModalityInfo]) -> None:
        """Create one backbone and one head per modality the data provides."""
        unknown = set(self.backbone_names) - set(info)
        if unknown:
            raise ConfigError(f"backbones configured for modalities no dataset observes: {sorted(unknown)}")
        self.backbones = nn.ModuleDict(
            {m: build_backbone(self.backbone_names.get(m, self.default_backbone), i) for m, i in info.items()}
        )
        self.heads = nn.ModuleDict(
            {m: ProjectionHead(b.out_dim, self.head_hidden_dim, self.embed_dim) for m, b in self.backbones.items()}
        )

    def frozen_backbones(self) -> dict[str, Backbone]:
        return {m: b for m, b in (self.backbones or {}).items() if not b.trainable}

    def train(self, mode: bool = True) -> "BindingModule":
        """Lightning calls ``.train()`` around validation; frozen backbones stay in eval mode (BatchNorm, dropout)."""
        super().train(mode)
        for backbone in self.frozen_backbones().values():
            backbone.eval()
        return self

    def embed(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """L2-normalised fp32 embeddings of every modality in ``inputs``."""
        out = {}
        for m, x in inputs.items():
            backbone = self.backbones[m]
            with torch.set_grad_enabled(torch.is_grad_enabled() and backbone.trainable):
                features = backbone(x)
            out[m] = F.normalize(self.heads[m](features).float(), dim=-1)
        return out

    # -- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, dict], batch_idx: int) -> Tensor:
        embeddings = {ds: self.embed(b["x"]) for ds, b in batch.items()}
        terms = self.method(embeddings, epoch=self.current_epoch)
        loss = sum(terms.values())
        batch_size = len(next(iter(batch.values()))["index"])
        for name, value in terms.items():
            self.log(f"train/loss/{name}", value, batch_size=batch_size, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)  # mean over ranks
        return loss

    def _eval_step(self, batch: dict) -> dict[str, Any]:
        return {"embeddings": self.embed(batch["x"]), "index": batch["index"], "label": batch["label"]}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._eval_step(batch)

    # -- optimisation and checkpoints ------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Frozen backbones are not saved: they are rebuilt from their source (weights file, data statistics)."""
        prefixes = tuple(f"backbones.{m}." for m in self.frozen_backbones())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the rebuilt frozen backbones back so that loading stays strict for every other tensor."""
        for m, backbone in self.frozen_backbones().items():
            for key, value in backbone.state_dict().items():
                checkpoint["state_dict"].setdefault(f"backbones.{m}.{key}", value)
