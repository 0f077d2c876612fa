"""The imagebind backbone on a tiny random ImageBindModel saved as a checkpoint (no network), and the Kaldi fbank that
replaces torchaudio's for its audio tower, against kaldi-native-fbank's output."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from brokenbind.backbones import ModalityInfo, build_backbone
from brokenbind.backbones.fbank import kaldi_fbank
from brokenbind.errors import ConfigError

imagebind_installed = pytest.mark.skipif(
    importlib.util.find_spec("imagebind") is None, reason="imagebind-packaged absent (requirements-data.txt)"
)
REFERENCE = Path(__file__).parent / "data" / "kaldi_native_fbank_reference.npy"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TINY = {"out_embed_dim": 8, "imu_embed_dim": 16, "imu_num_blocks": 1, "imu_num_heads": 2} | {
    f"{tower}_{key}": value
    for tower in ("vision", "text", "audio", "depth", "thermal")
    for key, value in (("embed_dim", 16), ("num_blocks", 1), ("num_heads", 2))
}
INFOS = {
    "vision": ModalityInfo("image", (3, 224, 224)),
    "depth": ModalityInfo("image", (1, 224, 224)),
    "thermal": ModalityInfo("image", (1, 224, 224)),
    "text": ModalityInfo("text"),
    "audio": ModalityInfo("audio", sample_rate=16000),
    "imu": ModalityInfo("features", (6, 2000)),
}


def reference_wave() -> torch.Tensor:
    """0.5 s at 16 kHz: a tone, a chirp and a square wave (tests/data/kaldi_native_fbank_reference.py's formula)."""
    t = torch.arange(8000, dtype=torch.float64) / 16000
    wave = (
        0.3 * torch.sin(2 * math.pi * 440 * t)
        + 0.1 * torch.sin(2 * math.pi * (200 + 3000 * t) * t)
        + 0.05 * torch.sign(torch.sin(2 * math.pi * 97 * t))
    )
    return wave.float()


def test_kaldi_fbank_matches_kaldi_native_fbank():
    ours = kaldi_fbank(reference_wave(), 16000, 128)
    reference = torch.from_numpy(np.load(REFERENCE))
    assert ours.shape == reference.shape == (48, 128)  # 1 + (8000 - 400) // 160 whole frames
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=0)


def test_kaldi_fbank_whole_frames_only():
    assert kaldi_fbank(torch.zeros(399), 16000, 128).shape == (0, 128)
    assert kaldi_fbank(torch.zeros(400 + 160 * 5 + 159), 16000, 128).shape == (6, 128)
    silence = kaldi_fbank(torch.zeros(400), 16000, 4)
    torch.testing.assert_close(silence, torch.full((1, 4), math.log(torch.finfo(torch.float32).eps)))


# -- the backbone on a tiny model ------------------------------------------------------------------------------------
def imagebind_model(seed: int) -> torch.nn.Module:
    from brokenbind.backbones.imagebind import import_imagebind

    torch.manual_seed(seed)
    return import_imagebind("models.imagebind_model").ImageBindModel(**TINY).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[str]:
    paths = []
    for seed in (1, 2):
        path = tmp_path_factory.mktemp("imagebind") / f"tiny{seed}.pth"
        torch.save(imagebind_model(seed).state_dict(), path)
        paths.append(str(path))
    return paths


def tower(modality: str, checkpoint: str, **options):
    spec = {"name": "imagebind", "checkpoint": checkpoint, "modality": modality, "architecture": TINY} | options
    return build_backbone(spec, INFOS[modality])


def inputs(modality: str):
    generator = torch.Generator().manual_seed(7)
    if modality == "text":
        return ["a dog barks", "a photo of a cat on a sofa", ""]
    if modality == "audio":  # two 3 s waveforms: three overlapping clips each
        return 0.1 * torch.randn(2, 48000, generator=generator)
    if modality == "imu":
        return torch.randn(2, 6, 2000, generator=generator)
    channels = 3 if modality == "vision" else 1
    return torch.rand(2, channels, 224, 224, generator=generator)


@imagebind_installed
@pytest.mark.parametrize("modality", list(INFOS))
def test_tower_equals_imagebind_model_forward(checkpoints, modality):
    """The tower computes ImageBindModel's own output for its modality (up to ImageBind's logit scale), on the same
    weights; unit-norm (B, out_embed_dim), frozen, in eval mode, deterministic across builds."""
    backbone = tower(modality, checkpoints[0])
    assert backbone.out_dim == 8 and not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    x = inputs(modality)
    with torch.no_grad():
        ours = backbone(x)
        again = tower(modality, checkpoints[0])(x)
        model = imagebind_model(0)
        model.load_state_dict(torch.load(checkpoints[0], weights_only=True))
        if modality == "text":
            model_input = backbone.tokenizer(x)
        elif modality == "audio":
            model_input = torch.stack([backbone.audio_clips(wave) for wave in x])  # (B, clips, 1, mel, frames)
        elif modality == "vision":
            mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
            model_input = (x - mean) / std  # ImageBind's loader: ToTensor then CLIP's Normalize
        else:
            model_input = x
        theirs = model({modality: model_input})[modality]
    assert ours.shape == (len(x), 8)
    torch.testing.assert_close(ours, again, atol=0, rtol=0)
    torch.testing.assert_close(F.normalize(ours, dim=-1), F.normalize(theirs, dim=-1), atol=1e-5, rtol=1e-5)
    if modality != "audio":  # audio averages unit clip embeddings: shorter than 1 unless the clips agree
        torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(x)))


@imagebind_installed
def test_fingerprint_names_weights_tower_and_architecture(checkpoints):
    first, second = tower("vision", checkpoints[0]), tower("vision", checkpoints[1])
    assert first.fingerprint() == tower("vision", checkpoints[0]).fingerprint()
    assert first.fingerprint() != second.fingerprint()
    assert f"sha256={first.weights_sha256}" in first.fingerprint()
    assert first.fingerprint().startswith("imagebind-packaged==0.1.2:vision|")
    assert tower("depth", checkpoints[0]).fingerprint() != tower("thermal", checkpoints[0]).fingerprint()
    assert "bpe=" in tower("text", checkpoints[0]).fingerprint()
    assert "kaldi-fbank=128/25ms/10ms/hanning" in tower("audio", checkpoints[0]).fingerprint()
    with torch.no_grad():
        assert not torch.allclose(first(inputs("vision")), second(inputs("vision")))


@imagebind_installed
def test_resize_crop_is_torchvisions_resize_and_centre_crop():
    from brokenbind.backbones.imagebind import ImageBindTower

    for shape in ((2, 3, 100, 301), (1, 1, 500, 240), (1, 3, 224, 224)):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
        expected = TF.center_crop(TF.resize(x, 224, interpolation=InterpolationMode.BICUBIC, antialias=True), 224)
        torch.testing.assert_close(ImageBindTower.resize_crop(x), expected, atol=1e-6, rtol=0)


@imagebind_installed
def test_audio_clips_spread_over_the_waveform(checkpoints):
    backbone = tower("audio", checkpoints[0])
    wave = 0.1 * torch.randn(80000, generator=torch.Generator().manual_seed(5))  # 5 s: clips at 0, 1 and 2 s
    clips = backbone.audio_clips(wave)
    assert clips.shape == (3, 1, 128, 204)
    for index in range(3):
        mel = kaldi_fbank(wave[index * 16000 : index * 16000 + 32000], 16000, 128).T  # 198 frames, 6 padded
        torch.testing.assert_close(clips[index, 0, :, :198], (mel + 4.268) / 9.138)
        torch.testing.assert_close(clips[index, 0, :, 198:], torch.full((128, 6), 4.268 / 9.138))
    short = backbone.audio_clips(reference_wave())  # shorter than a clip: three identical clips of all of it
    torch.testing.assert_close(short[0], short[2], atol=0, rtol=0)
    torch.testing.assert_close(short[0, 0, :, :48], (kaldi_fbank(reference_wave(), 16000, 128).T + 4.268) / 9.138)


@imagebind_installed
def test_configuration_errors_name_the_problem(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="does not fit the vision tower"):
        tower("vision", checkpoints[0], architecture={**TINY, "vision_embed_dim": 32})
    with pytest.raises(ConfigError, match=r"unknown architecture keys \['vision_width'\]"):
        tower("vision", checkpoints[0], architecture={"vision_width": 3})
    with pytest.raises(ConfigError, match="is not a file"):
        tower("vision", str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="modality must be one of"):
        build_backbone({"name": "imagebind", "checkpoint": checkpoints[0], "modality": "video"}, INFOS["vision"])
    with pytest.raises(ConfigError, match="encodes a 'text' modality"):
        build_backbone({"name": "imagebind", "checkpoint": checkpoints[0], "modality": "text"}, INFOS["vision"])
    with pytest.raises(ConfigError, match=r"data\.init_args\.sample_rate=16000"):
        build_backbone(
            {"name": "imagebind", "checkpoint": checkpoints[0], "modality": "audio"},
            ModalityInfo("audio", sample_rate=8000),
        )
    with pytest.raises(ConfigError, match="single-channel"):
        build_backbone({"name": "imagebind", "checkpoint": checkpoints[0], "modality": "depth"}, INFOS["vision"])
    with pytest.raises(ConfigError, match=r"takes \(6, 2000\)"):
        build_backbone(
            {"name": "imagebind", "checkpoint": checkpoints[0], "modality": "imu"}, ModalityInfo("features", (6, 100))
        )
