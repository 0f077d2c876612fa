"""Kaldi's log mel filterbank ("fbank") features in torch, for encoders trained on them (ImageBind's audio tower)
without torchaudio.

Written from Kaldi's documentation of ``compute-fbank-feats`` (feature-window, mel-computations): frames of
``frame_length`` ms every ``frame_shift`` ms, only whole frames (``snip_edges``); per frame, the DC offset removed,
pre-emphasis ``x[i] - 0.97 x[i-1]`` (``x[-1] = x[0]``), a Hanning window ``0.5 - 0.5 cos(2 pi i / (N - 1))``, zero
padding to a power of two, the power spectrum; triangular filters equally spaced on the mel scale
``1127 ln(1 + f / 700)`` from 20 Hz to the Nyquist frequency, applied to the FFT bins below Nyquist; the log, floored
at float32's epsilon. No dither and no energy coefficient: ImageBind's settings (``window_type=hanning``,
``dither=0``, ``use_energy=False``). Checked against kaldi-native-fbank's output in tests/test_imagebind.py.
"""

import math

import torch
from torch import Tensor

LOW_FREQ = 20.0  # Hz, Kaldi's default lower edge of the first filter
PREEMPHASIS = 0.97
FLOAT_EPSILON = torch.finfo(torch.float32).eps  # Kaldi's floor before the log


def kaldi_mel_banks(num_bins: int, padded_length: int, sample_rate: float) -> Tensor:
    """(num_bins, padded_length // 2) triangular filters (float64) over the FFT bins below Nyquist, which Kaldi
    drops."""

    def mel(hz: Tensor) -> Tensor:
        return 1127.0 * torch.log1p(hz / 700.0)

    low, high = mel(torch.tensor([LOW_FREQ, sample_rate / 2], dtype=torch.float64))
    delta = (high - low) / (num_bins + 1)
    left = low + delta * torch.arange(num_bins, dtype=torch.float64)[:, None]
    centre, right = left + delta, left + 2 * delta
    bins = mel(torch.arange(padded_length // 2, dtype=torch.float64) * sample_rate / padded_length)
    weights = torch.where(bins <= centre, (bins - left) / (centre - left), (right - bins) / (right - centre))
    return torch.where((bins > left) & (bins < right), weights, torch.zeros_like(weights))


def kaldi_fbank(
    waveform: Tensor, sample_rate: int, num_mel_bins: int, frame_length: float = 25.0, frame_shift: float = 10.0
) -> Tensor:
    """Log mel filterbank energies (frames, num_mel_bins), float32, of a mono waveform (L,); ``frame_length`` and
    ``frame_shift`` in milliseconds. Computed in float64; a waveform shorter than one frame gives zero frames."""
    if waveform.dim() != 1:
        raise ValueError(f"kaldi_fbank takes one mono waveform (L,), got shape {tuple(waveform.shape)}")
    size = int(sample_rate * frame_length / 1000)
    shift = int(sample_rate * frame_shift / 1000)
    if waveform.numel() < size:
        return torch.zeros(0, num_mel_bins, device=waveform.device)
    padded = 1 << (size - 1).bit_length()
    frames = waveform.to(torch.float64).unfold(0, size, shift)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    phase = 2 * math.pi * torch.arange(size, dtype=torch.float64, device=frames.device) / (size - 1)
    frames = (frames - PREEMPHASIS * previous) * (0.5 - 0.5 * torch.cos(phase))
    power = torch.fft.rfft(frames, n=padded).abs() ** 2
    energies = power[:, : padded // 2] @ kaldi_mel_banks(num_mel_bins, padded, sample_rate).to(frames.device).T
    return energies.clamp_min(FLOAT_EPSILON).log().float()
