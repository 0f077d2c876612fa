"""Audio backbone: a log-mel frontend and a small trainable CNN (no pretrained audio encoder ships offline).

Input: float32 mono waveforms (B, L) at ``info.sample_rate``. Output: (B, out_dim).
"""

import itertools
import math

import torch
from torch import Tensor, nn

from brokenbind.backbones.base import Backbone
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo


def hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)  # HTK


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, centres equally spaced on the HTK mel scale from 0 to Nyquist.

    Each filter peaks at 1 on its centre frequency (no area normalisation): the log and the per-utterance
    normalisation that follow make the overall scale irrelevant.
    """
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = hz_to_mel(torch.tensor(sample_rate / 2.0, dtype=torch.float64))
    edges = mel_to_hz(torch.linspace(0.0, top.item(), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMelCNN(Backbone):
    """Waveform → |STFT| → mel → log(1e-6 + x) → per-utterance mean/variance normalisation → 3 conv blocks → mean.

    Each conv block is Conv 3×3 (stride 2) → GroupNorm → ReLU. GroupNorm instead of BatchNorm: a sample's features
    never depend on the other samples of its batch, so DDP shards, eval and train mode compute the same function.
    Stride-2 convolutions (rather than pooling) keep at least one frame for very short clips; global average pooling
    over frequency and time then accepts any length.
    """

    trainable = True

    def __init__(
        self,
        info: ModalityInfo,
        n_mels: int = 40,
        n_fft: int = 400,
        hop: int = 160,
        channels: int = 32,
        out_dim: int = 128,
    ):
        super().__init__()
        if info.kind != "audio" or info.sample_rate is None:
            raise ConfigError(f"the logmel_cnn backbone needs an audio modality with a sample_rate, got {info}")
        self.n_fft, self.hop, self.out_dim = n_fft, hop, out_dim
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(n_mels, n_fft, info.sample_rate), persistent=False)
        widths = [1, channels, 2 * channels, 4 * channels]
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                nn.GroupNorm(math.gcd(8, c_out), c_out),
                nn.ReLU(),
            ]
        self.encoder = nn.Sequential(*blocks)
        self.proj = nn.Linear(widths[-1], out_dim)

    def log_mel(self, waveform: Tensor) -> Tensor:
        """(B, L) → normalised log-mel (B, n_mels, frames)."""
        # Zero (not reflect) padding at the edges: reflect needs L > n_fft / 2 and clips can be shorter.
        spec = torch.stft(waveform, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
                          return_complex=True).abs()  # fmt: skip
        logmel = torch.log(1e-6 + self.mel @ spec)
        # Per-utterance normalisation removes recording gain; per utterance (not per batch) keeps samples independent.
        mean = logmel.mean(dim=(1, 2), keepdim=True)
        std = logmel.std(dim=(1, 2), keepdim=True)
        return (logmel - mean) / (std + 1e-5)

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"logmel_cnn expects (batch, samples) mono waveforms, got shape {tuple(waveform.shape)}")
        features = self.encoder(self.log_mel(waveform.float()).unsqueeze(1))
        return self.proj(features.mean(dim=(2, 3)))

    def fingerprint(self) -> str | None:
        return None  # trainable: its outputs change during training
