"""The binding model: one backbone and one head per modality, embedding each as normalize(head(backbone(x))) in fp32.

A plain ``nn.Module`` (ImageBind's layout: ``backbones`` and ``heads`` are ``nn.ModuleDict`` keyed by modality); the
LightningModule (``brokenbind.module``) trains it. Backbones that compute a fixed function have their outputs cached
(``brokenbind.cache``).
"""

from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brokenbind.backbones import HEADS, Backbone, BackboneSpec, ModalityInfo, build_backbone
from brokenbind.backbones.lora import lora_parameters
from brokenbind.cache import FeatureCache, cache_key
from brokenbind.errors import ConfigError


class BindingModel(nn.Module):
    """Per-modality backbones (frozen unless trainable) and trainable heads into one ``embed_dim`` space.

    Args:
        embed_dim, head_hidden_dim: width of the shared embedding space and of the heads' hidden layer.
        head: a name from ``brokenbind.backbones.HEADS``.
        default_backbone, backbones: backbone spec per modality; unnamed modalities use ``default_backbone``.
        cache_dir: where cached features persist across runs (default: memory only).

    ``build`` creates the modules once the data says which modalities exist and what their inputs are.
    """

    def __init__(
        self,
        embed_dim: int = 128,
        head_hidden_dim: int = 256,
        head: Literal["mlp", "residual"] = "mlp",
        default_backbone: BackboneSpec = "standardize",
        backbones: dict[str, BackboneSpec] | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__()
        self.embed_dim, self.head_hidden_dim, self.head = embed_dim, head_hidden_dim, head
        self.backbone_names = dict(backbones or {})
        self.default_backbone = default_backbone
        self.cache = FeatureCache(cache_dir)
        self.cache_keys: dict[str, str] = {}  # modality -> cache key, for cacheable backbones only
        self.backbones: nn.ModuleDict | None = None
        self.heads: nn.ModuleDict | None = None

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

    @property
    def built(self) -> bool:
        return self.heads is not None

    def frozen_backbones(self) -> dict[str, Backbone]:
        return {m: b for m, b in (self.backbones or {}).items() if not b.trainable}

    def adapted(self, modalities: Iterable[str]) -> list[str]:
        """Those of ``modalities`` whose backbone features change while training: trainable or LoRA backbones."""
        return [m for m in modalities if self.backbones[m].trainable or self.backbones[m].lora]

    def train(self, mode: bool = True) -> "BindingModel":
        """Frozen backbones stay in eval mode (BatchNorm, dropout) whatever the mode around them."""
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
        device = next(self.heads.parameters()).device
        return self.cache.get(key, index).to(device)

    @torch.no_grad()
    def encode(self, loader: Iterable[dict[str, Any]], modalities: list[str]) -> dict[str, Tensor]:
        """Backbone features (fp32) of ``modalities`` for every row ``loader`` yields, in its order."""
        parts: dict[str, list[Tensor]] = {m: [] for m in modalities}
        for batch in loader:
            for m in modalities:
                parts[m].append(self.features(m, batch["x"][m], batch["index"]).float())
        return {m: torch.cat(p) for m, p in parts.items()}
