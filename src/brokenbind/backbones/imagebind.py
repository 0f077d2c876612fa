"""One modality tower of ImageBind (Girdhar et al., arXiv 2305.05665), weights from a local file.

The model code is ``imagebind-packaged`` (requirements-data.txt), imported without its package ``__init__``, which
loads its data pipeline (torchaudio, pytorchvideo); the preprocessing below is ImageBind's, rewritten in torch:

- ``vision``: (B, C, H, W) floats in [0, 1] (C = 1 repeated to RGB): shorter side resized to 224 (bicubic,
  antialiased, clamped to [0, 1] as PIL's 8-bit output is), centre crop 224, CLIP's mean and std.
- ``depth`` / ``thermal``: (B, 1, H, W) single-channel maps, resized and cropped as images, values passed through:
  ImageBind's release ships no transform for them, so give what its tower was trained on (depth as disparity, §4.1).
- ``text``: strings, ImageBind's CLIP BPE tokenizer (the vocabulary file ships in the package), 77 tokens.
- ``audio``: (B, L) mono waveforms at 16 kHz; each is cut into 3 clips of 2 s evenly spread over it (as ImageBind's
  loader places them), each clip becomes 128 Kaldi log-mel bins (25 ms windows every 10 ms, ``backbones.fbank``),
  padded or cut to 204 frames and standardised with ImageBind's statistics (mean -4.268, std 9.138); the clip
  embeddings are averaged.
- ``imu``: (B, 6, 2000) accelerometer and gyroscope readings, as ImageBind's IMU tower takes them.

Output: the tower's embedding, L2-normalised (B, out_embed_dim). ImageBind's per-modality logit scales are training
temperatures (§3.2, eq. 1), not part of the embedding, and are left out.
"""

import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import sys
import warnings
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from brokenbind.backbones.base import Backbone, sha256_file
from brokenbind.backbones.fbank import kaldi_fbank
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo

# the brokenbind modality kind each tower encodes
TOWER_KINDS = {
    "vision": "image",
    "depth": "image",
    "thermal": "image",
    "text": "text",
    "audio": "audio",
    "imu": "features",
}
# imagebind_huge, the released checkpoint's architecture; ``architecture`` overrides any ImageBindModel argument
HUGE = {
    "out_embed_dim": 1024,
    "vision_embed_dim": 1280,
    "vision_num_blocks": 32,
    "vision_num_heads": 16,
    "text_embed_dim": 1024,
    "text_num_blocks": 24,
    "text_num_heads": 16,
}
IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAMPLE_RATE = 16000
AUDIO_CLIPS, CLIP_SECONDS = 3, 2
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
IMU_SHAPE = (6, 2000)
BPE_FILE = "bpe/bpe_simple_vocab_16e6.txt.gz"


def imagebind_package() -> Path:
    """The installed ``imagebind`` package's directory, its ``__init__`` not run (it imports the data loaders)."""
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "imagebind backbone: the imagebind package is not installed; install ImageBind's model code with "
            "`pip install --no-deps --require-hashes -r requirements-data.txt` (make install does)"
        )
    if "imagebind" not in sys.modules:  # an empty package module, so that imagebind.models.* import alone
        sys.modules["imagebind"] = importlib.util.module_from_spec(spec)
    return Path(spec.submodule_search_locations[0])


def import_imagebind(name: str) -> ModuleType:
    """``imagebind.<name>``; its timm 0.6 import path warns under timm 1.x, a warning about code we do not own."""
    imagebind_package()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Importing from timm.models.layers is deprecated", FutureWarning)
        return importlib.import_module(f"imagebind.{name}")


class ImageBindTower(Backbone):
    """The ``modality`` tower of an ``ImageBindModel`` (preprocessor, trunk, head), frozen.

    Args:
        checkpoint: path of the model's state_dict (``imagebind_huge.pth``); required, as nothing is downloaded.
            Only the chosen tower's keys are read; they must fit the architecture exactly.
        modality: the tower: ``vision``, ``text``, ``audio``, ``depth``, ``thermal`` or ``imu``.
        architecture: ``ImageBindModel`` arguments overriding imagebind_huge's (widths, depths, heads), for other
            checkpoints of the same code, such as small test models.
    """

    def __init__(
        self,
        info: ModalityInfo,
        checkpoint: str,
        modality: Literal["vision", "text", "audio", "depth", "thermal", "imu"],
        architecture: dict[str, Any] | None = None,
    ):
        super().__init__()
        if modality not in TOWER_KINDS:
            raise ConfigError(f"imagebind backbone: modality must be one of {list(TOWER_KINDS)}, got {modality!r}")
        if info.kind != TOWER_KINDS[modality]:
            raise ConfigError(
                f"imagebind backbone: the {modality} tower encodes a {TOWER_KINDS[modality]!r} modality, "
                f"{info.name or 'this modality'} is {info.kind!r}"
            )
        self._check_shape(info, modality)
        if not Path(checkpoint).is_file():
            raise ConfigError(f"imagebind backbone: checkpoint {checkpoint!r} is not a file")
        model_module = import_imagebind("models.imagebind_model")
        accepted = [p for p in inspect.signature(model_module.ImageBindModel).parameters if p != "self"]
        unknown = sorted(set(architecture or {}) - set(accepted))
        if unknown:
            raise ConfigError(
                f"imagebind backbone: unknown architecture keys {unknown}; ImageBindModel takes {accepted}"
            )
        self.architecture = {**HUGE, **(architecture or {})}
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the global RNG untouched
            torch.manual_seed(0)
            model = model_module.ImageBindModel(**self.architecture)
        self.preprocessor = model.modality_preprocessors[modality]
        self.trunk = model.modality_trunks[modality]
        self.head = model.modality_heads[modality]
        del model  # the other five towers
        self._load(checkpoint, modality)
        self.modality, self.out_dim = modality, int(self.architecture["out_embed_dim"])
        self.weights_sha256 = sha256_file(checkpoint)
        self.version = importlib.metadata.version("imagebind-packaged")
        if modality == "text":
            bpe = imagebind_package() / BPE_FILE
            self.tokenizer = import_imagebind("models.multimodal_preprocessors").SimpleTokenizer(bpe_path=str(bpe))
            prep = f"bpe={sha256_file(bpe)[:16]}|context={self.tokenizer.context_length}"
        elif modality == "audio":
            self.mel_bins = int(self.architecture.get("audio_num_mel_bins", 128))
            self.frames = int(self.architecture.get("audio_target_len", 204))
            prep = (
                f"sr={SAMPLE_RATE}|clips={AUDIO_CLIPS}x{CLIP_SECONDS}s|kaldi-fbank={self.mel_bins}/25ms/10ms/hanning"
                f"|frames={self.frames}|norm=({AUDIO_MEAN},{AUDIO_STD})|clip-mean"
            )
        elif modality == "imu":
            prep = f"shape={list(IMU_SHAPE)}"
        else:
            prep = f"size={IMAGE_SIZE}|shorter-side-bicubic-aa|centre-crop"
            if modality == "vision":
                self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
                self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
                prep += f"|clamp01|mean={list(CLIP_MEAN)}|std={list(CLIP_STD)}"
        arch = json.dumps(self.architecture, sort_keys=True)
        self._fingerprint = (
            f"imagebind-packaged=={self.version}:{modality}|architecture={arch}|sha256={self.weights_sha256}"
            f"|{prep}|l2|fp32"
        )

    @staticmethod
    def _check_shape(info: ModalityInfo, modality: str) -> None:
        if info.kind == "audio" and info.sample_rate != SAMPLE_RATE:
            raise ConfigError(
                f"imagebind backbone: the audio tower takes {SAMPLE_RATE} Hz waveforms, the data gives "
                f"{info.sample_rate} Hz; set data.init_args.sample_rate={SAMPLE_RATE}"
            )
        if modality == "imu" and info.shape is not None and tuple(info.shape) != IMU_SHAPE:
            raise ConfigError(
                f"imagebind backbone: the imu tower takes {IMU_SHAPE} readings per sample (6 channels, 2000 steps), "
                f"the data gives {tuple(info.shape)}"
            )
        if modality in ("depth", "thermal") and info.shape is not None and info.shape[0] != 1:
            raise ConfigError(
                f"imagebind backbone: the {modality} tower takes single-channel maps, the data has {info.shape[0]} "
                "channels"
            )

    def _load(self, checkpoint: str, modality: str) -> None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for part, prefix in (("preprocessor", "preprocessors"), ("trunk", "trunks"), ("head", "heads")):
            start = f"modality_{prefix}.{modality}."
            own = {key[len(start) :]: value for key, value in state.items() if key.startswith(start)}
            try:
                getattr(self, part).load_state_dict(own, strict=True)
            except RuntimeError as error:
                details = " ".join(str(error).split())
                raise ConfigError(
                    f"imagebind backbone: {checkpoint} does not fit the {modality} tower of architecture "
                    f"{json.dumps(self.architecture, sort_keys=True)} (set model.backbones' architecture to the "
                    f"checkpoint's): {details[:600]}"
                ) from error

    def forward(self, x: Any) -> Tensor:
        device = next(self.trunk.parameters()).device
        if self.modality == "text":
            tokens = self.tokenizer(list(x)).view(len(x), -1)
            return self.embed(tokens.to(device))
        if self.modality == "audio":
            clips = torch.stack([self.audio_clips(wave.float()) for wave in x]).to(device)
            return self.embed(clips.flatten(0, 1)).unflatten(0, (len(x), AUDIO_CLIPS)).mean(1)
        x = x.float().to(device)
        if self.modality == "imu":
            if tuple(x.shape[1:]) != IMU_SHAPE:
                raise ValueError(f"imagebind imu tower: inputs must be (B, 6, 2000), got {tuple(x.shape)}")
            return self.embed(x)
        if x.dim() != 4:
            raise ValueError(f"imagebind {self.modality} tower: inputs must be (B, C, H, W), got {tuple(x.shape)}")
        x = self.resize_crop(x)
        if self.modality == "vision":
            x = (x.clamp(0.0, 1.0).expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.embed(x)

    def embed(self, inputs: Tensor) -> Tensor:
        """The tower on model inputs, as ``ImageBindModel.forward`` runs it, L2-normalised."""
        prepared = self.preprocessor(**{self.modality: inputs})
        tokens = self.trunk(**prepared["trunk"])
        return F.normalize(self.head(tokens, **prepared["head"]), dim=-1).float()

    @staticmethod
    def resize_crop(x: Tensor) -> Tensor:
        """Shorter side to 224 (bicubic, antialiased; the longer side's length truncated, as torchvision's Resize
        computes it), then the centre 224 × 224."""
        height, width = x.shape[-2:]
        short, long = sorted((height, width))
        size = (IMAGE_SIZE, int(IMAGE_SIZE * long / short))
        if (height, width) != (size if height <= width else size[::-1]):
            x = F.interpolate(x, size=size if height <= width else size[::-1], mode="bicubic", antialias=True)
        height, width = x.shape[-2:]
        top, left = round((height - IMAGE_SIZE) / 2), round((width - IMAGE_SIZE) / 2)
        return x[..., top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]

    def audio_clips(self, wave: Tensor) -> Tensor:
        """(AUDIO_CLIPS, 1, mel_bins, frames) standardised log-mel clips of one waveform (L,): clip i starts at
        i / 3 of the time left after one clip, in exact fractions as ImageBind's clip sampler computes it.
        ImageBind also subtracts each clip's mean first: a constant shift that Kaldi's per-frame DC removal undoes."""
        if wave.dim() != 1:
            raise ValueError(f"imagebind audio tower: each waveform must be mono (L,), got {tuple(wave.shape)}")
        spare = Fraction(max(wave.numel() / SAMPLE_RATE - CLIP_SECONDS, 0))
        clips = []
        for index in range(AUDIO_CLIPS):
            start = spare / AUDIO_CLIPS * index
            clip = wave[int(start * SAMPLE_RATE) : int((start + CLIP_SECONDS) * SAMPLE_RATE)]
            mel = kaldi_fbank(clip, SAMPLE_RATE, self.mel_bins).T  # (mel_bins, frames)
            mel = F.pad(mel, (0, max(self.frames - mel.shape[1], 0)))[:, : self.frames]
            clips.append((mel - AUDIO_MEAN) / AUDIO_STD)
        return torch.stack(clips).unsqueeze(1)

    def fingerprint(self) -> str | None:
        return self._fingerprint
