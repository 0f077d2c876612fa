"""Any transformers model from a local directory (``save_pretrained`` layout), with the hub switched off.

Text models tokenise inside (input: a list of strings); image models take (B, C, H, W) floats in [0, 1], resized and
normalised with the directory's image-processor settings; audio models take (B, L) mono waveforms at the modality's
sample rate, through the directory's feature extractor. Output: (B, hidden) pooled as the spec declares:

- ``cls``: the first token's last hidden state (BERT-style [CLS], ViT's class token);
- ``mean``: the mean of the last hidden states over real tokens (the attention mask, when the model returns one
  for its inputs), sentence-transformers' pooling;
- ``pooler``: the model's own ``pooler_output`` (CLIP vision/text towers, BERT's tanh pooler).
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from brokenbind.backbones.base import Backbone, sha256_file
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo

POOLINGS = ("cls", "mean", "pooler")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Files besides the weights that change what is computed (tokenisation, pre-processing); hashed into the fingerprint.
PREPROCESSING_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


def weight_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


class HFModel(Backbone):
    """A frozen transformers encoder loaded with ``local_files_only`` from ``path``.

    Args:
        path: the model directory (``config.json``, weights, tokenizer or preprocessor files).
        pooling: ``cls``, ``mean`` or ``pooler`` (module docstring); required, because models differ in what their
            authors pooled.
        model_class: the transformers class to load (``CLIPVisionModel``, ``CLIPTextModel``, ``ClapAudioModel``,
            ``Wav2Vec2Model``, ...); default ``AutoModel``. Needed for dual-tower directories (CLIP, CLAP), whose
            ``AutoModel`` wants both inputs at once.
        max_length: tokens per text after truncation (text models); default: the model's
            ``max_position_embeddings`` (512 when the config has none).
        sha256: expected sha256 of the single weights file, checked before anything is loaded; None: no check.
    """

    def __init__(
        self,
        info: ModalityInfo,
        path: str,
        pooling: Literal["cls", "mean", "pooler"],
        model_class: str | None = None,
        max_length: int | None = None,
        sha256: str | None = None,
    ):
        super().__init__()
        if info.kind not in ("text", "image", "audio"):
            raise ConfigError(
                f"the hf backbone encodes text, images or audio, got a {info.kind!r} modality (precomputed "
                "features need no encoder: use standardize or identity)"
            )
        if pooling not in POOLINGS:
            raise ConfigError(f"hf backbone: pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ConfigError(f"hf backbone: model directory {str(root)!r} not found")
        weights = weight_files(root)
        if not weights:
            raise ConfigError(f"hf backbone: no weights (*.safetensors or *.bin) in {str(root)!r}")
        hashes = {w.name: sha256_file(w) for w in weights}
        if sha256 is not None:
            if len(weights) != 1:
                raise ConfigError(f"hf backbone: sha256 checks one weights file; {str(root)!r} holds {list(hashes)}")
            (name, actual), = hashes.items()  # fmt: skip
            if actual != sha256:
                raise ValueError(
                    f"{root / name}: sha256 {actual} differs from the expected {sha256}; "
                    "pass sha256=None to load a different model deliberately"
                )
        if not (root / "config.json").is_file():
            raise ConfigError(
                f"hf backbone: {str(root)!r} is not a transformers model directory (no config.json); save one with "
                "model.save_pretrained(dir) and tokenizer/processor.save_pretrained(dir)"
            )
        os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: transformers must never reach for the hub
        import transformers  # heavy; only runs that use it pay for it

        transformers.utils.logging.disable_progress_bar()  # a bar per model load in every run's log says nothing

        cls_name = model_class or "AutoModel"
        model_cls = getattr(transformers, cls_name, None)
        if model_cls is None or not hasattr(model_cls, "from_pretrained"):
            raise ConfigError(f"hf backbone: transformers {transformers.__version__} has no model class {cls_name!r}")
        self.kind, self.pooling, self.sample_rate = info.kind, pooling, info.sample_rate
        self.model = model_cls.from_pretrained(root, local_files_only=True, dtype=torch.float32)
        config = self.model.config
        self.out_dim = int(_hidden_size(config))
        self.tokenizer = self.extractor = None
        settings: dict[str, Any] = {}
        if info.kind == "text":
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(root, local_files_only=True)
            limit = getattr(config, "max_position_embeddings", None) or 512
            self.max_length = int(max_length or limit)
            settings["max_length"] = self.max_length
        elif info.kind == "image":
            processor = json.loads((root / "preprocessor_config.json").read_text()) if (
                root / "preprocessor_config.json").is_file() else {}  # fmt: skip
            size = _image_size(processor.get("crop_size") or processor.get("size"), getattr(config, "image_size", None))
            if size is None:
                raise ConfigError(
                    f"hf backbone: {str(root)!r} names no image size (preprocessor_config.json 'size' or the "
                    "config's image_size)"
                )
            mean = processor.get("image_mean", [0.5, 0.5, 0.5])
            std = processor.get("image_std", [0.5, 0.5, 0.5])
            self.image_size = size
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            settings.update(size=list(size), mean=mean, std=std, resize="bilinear-aa")
        else:
            self.extractor = transformers.AutoFeatureExtractor.from_pretrained(root, local_files_only=True)
            settings["sample_rate"] = info.sample_rate
            wanted = getattr(self.extractor, "sampling_rate", None)
            if wanted is not None and info.sample_rate is not None and wanted != info.sample_rate:
                raise ConfigError(
                    f"hf backbone: {str(root)!r} expects audio at {wanted} Hz, the data gives {info.sample_rate} Hz; "
                    f"set data.init_args.sample_rate={wanted}"
                )
        prep = ",".join(f"{n}={sha256_file(root / n)[:16]}" for n in PREPROCESSING_FILES if (root / n).is_file())
        weights_part = ",".join(f"{n}={h}" for n, h in hashes.items())
        extra = "|".join(f"{k}={v}" for k, v in settings.items())
        self._fingerprint = (
            f"transformers=={transformers.__version__}:{config.model_type}|class={cls_name}|sha256[{weights_part}]"
            f"|prep[{prep}]|{extra}|pool={pooling}|fp32"
        )

    def forward(self, x: Any) -> Tensor:
        device = next(self.model.parameters()).device
        if self.kind == "text":
            inputs = self.tokenizer(
                list(x), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        elif self.kind == "image":
            x = x.float()
            if x.shape[1] == 1 and self.mean.shape[1] == 3:
                x = x.expand(-1, 3, -1, -1)
            if tuple(x.shape[-2:]) != self.image_size:
                x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True)
            inputs = {"pixel_values": (x - self.mean) / self.std}
        else:
            waves = [w.float().cpu().numpy() for w in x]
            inputs = self.extractor(waves, sampling_rate=self.sample_rate, return_tensors="pt", padding=True)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        outputs = self.model(**inputs)
        return self.pool(outputs, inputs.get("attention_mask")).float()

    def pool(self, outputs: Any, mask: Tensor | None) -> Tensor:
        if self.pooling == "pooler":
            pooled = getattr(outputs, "pooler_output", None)
            if pooled is None:
                raise ConfigError(
                    f"hf backbone: {type(self.model).__name__} returns no pooler_output; use pooling cls or mean"
                )
            return pooled
        hidden = outputs.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if mask is not None and mask.shape[:2] == hidden.shape[:2]:
            # Mean over real tokens only: padding must not change an item's embedding (the batch independence the
            # module relies on for DDP and caching).
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return hidden.mean(1)

    def fingerprint(self) -> str | None:
        return self._fingerprint


def _hidden_size(config: Any) -> int:
    for name in ("hidden_size", "d_model", "projection_dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ConfigError(f"hf backbone: cannot tell the output width of a {type(config).__name__}")


def _image_size(processor_size: Any, config_size: Any) -> tuple[int, int] | None:
    """(H, W) from a preprocessor ``size`` (int, {height, width} or {shortest_edge}) or the config's image_size."""
    if isinstance(processor_size, dict):
        if "height" in processor_size and "width" in processor_size:
            return int(processor_size["height"]), int(processor_size["width"])
        if "shortest_edge" in processor_size:
            edge = int(processor_size["shortest_edge"])
            return edge, edge
    if isinstance(processor_size, int):
        return processor_size, processor_size
    if isinstance(config_size, int):
        return config_size, config_size
    if isinstance(config_size, Sequence) and len(config_size) == 2:
        return int(config_size[0]), int(config_size[1])
    return None
