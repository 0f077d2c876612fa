"""One tower of any open_clip model, weights from a local file (no model hub is ever contacted).

Image tower input: (B, C, H, W) floats in [0, 1] (C = 1 is repeated to RGB), resized (bilinear, antialiased) to the
model's own input size and normalised; or (B, T, C, H, W) frames of a clip, each frame encoded and the T frame
features averaged (Video-CLIP-style frame pooling). Text tower input: a list of strings, tokenised with the model's
own tokenizer. Output: the tower's projected features ``encode_image`` / ``encode_text`` (B, embed_dim), not
normalised (the module does that).
"""

import difflib
import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from brokenbind.backbones.base import Backbone, sha256_file
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo


class OpenClipTower(Backbone):
    """``open_clip.create_model(model, pretrained=<file>)``, frozen, keeping the ``tower`` the modality needs.

    Args:
        model: an open_clip model name (``open_clip.list_models()``: ViT-B-32, ViT-L-14, RN50, ...).
        tower: ``image`` or ``text``; must match the modality's kind.
        pretrained: path of the weights file (a full CLIP checkpoint: ``open_clip_pytorch_model.bin``,
            ``.safetensors``, an OpenAI ``.pt``). Tags (``openai``, ``laion2b_s34b_b79k``) are refused: they download.
            None = random init drawn from a fixed seed (the same on every rank and rebuild; not cacheable).
        config_file: a model config JSON to register first (``open_clip.add_model_config``); its file stem is then
            a model name. For architectures open_clip does not ship.
        mean, std: image normalisation; default the model's preprocessing config (OpenAI's statistics unless the
            model config says otherwise: set them for weights trained with other statistics, e.g. SigLIP's 0.5).
    """

    def __init__(
        self,
        info: ModalityInfo,
        model: str,
        tower: Literal["image", "text"],
        pretrained: str | None = None,
        config_file: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
        super().__init__()
        if tower not in ("image", "text"):
            raise ConfigError(f"open_clip backbone: tower must be 'image' or 'text', got {tower!r}")
        if info.kind != tower:
            raise ConfigError(f"open_clip backbone: the {tower} tower cannot encode a {info.kind!r} modality")
        os.environ["HF_HUB_OFFLINE"] = "1"  # tokenizers of HF-text models must never reach for the hub
        import open_clip  # heavy; only runs that use it pay for it

        if config_file is not None:
            if not Path(config_file).is_file():
                raise ConfigError(f"open_clip backbone: config_file {config_file!r} not found")
            open_clip.add_model_config(config_file)
        if model not in open_clip.list_models():
            close = difflib.get_close_matches(model, open_clip.list_models(), n=3)
            raise ConfigError(
                f"open_clip backbone: open_clip {open_clip.__version__} has no model {model!r}"
                + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
                + ' `python -c "import open_clip; print(open_clip.list_models())"` lists the names'
            )
        self.weights_sha256: str | None = None
        if pretrained is not None:
            if not Path(pretrained).is_file():
                raise ConfigError(
                    f"open_clip backbone: pretrained must be the path of a local weights file, {pretrained!r} is "
                    "not a file (open_clip's tags would download; fetch the file once and name its path)"
                )
            self.weights_sha256 = sha256_file(pretrained)
        with torch.random.fork_rng(devices=[]):  # deterministic random init without touching the global RNG
            torch.manual_seed(0)
            try:
                clip = open_clip.create_model(model, pretrained=pretrained, precision="fp32", device="cpu")
            except RuntimeError as error:  # strict load of a checkpoint of another architecture
                first = str(error).splitlines()[0]
                raise ConfigError(f"open_clip backbone: {pretrained} does not fit {model!r}: {first}") from error
        self.model_name, self.tower, self.version = model, tower, open_clip.__version__
        self.out_dim = int(open_clip.get_model_config(model)["embed_dim"])
        settings = f"tower={tower}"
        if tower == "image":
            self.visual = clip.visual
            cfg = getattr(clip.visual, "preprocess_cfg", {})
            size = cfg.get("size", getattr(clip.visual, "image_size", 224))
            self.image_size = (size, size) if isinstance(size, int) else tuple(size)
            mean = list(mean if mean is not None else cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
            std = list(std if std is not None else cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            settings += f"|size={list(self.image_size)}|mean={mean}|std={std}|resize=bilinear-aa|frames=mean"
        else:
            clip.visual = None  # keep the text tower only
            self.clip = clip
            self.tokenizer = open_clip.get_tokenizer(model)
            settings += f"|context={getattr(self.tokenizer, 'context_length', None)}"
        self._settings = settings

    def forward(self, x: Tensor | list[str]) -> Tensor:
        if self.tower == "text":
            device = next(self.clip.parameters()).device
            return self.clip.encode_text(self.tokenizer(list(x)).to(device)).float()
        x = x.float()
        frames = x.shape[1] if x.dim() == 5 else None
        if frames is not None:  # (B, T, C, H, W): encode every frame, average per clip
            x = x.flatten(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True)
        features = self.visual((x - self.mean) / self.std).float()
        return features.unflatten(0, (-1, frames)).mean(1) if frames is not None else features

    def fingerprint(self) -> str | None:
        if self.weights_sha256 is None:
            return None  # random init: not worth caching
        return f"open_clip=={self.version}:{self.model_name}|sha256={self.weights_sha256}|{self._settings}|fp32"
