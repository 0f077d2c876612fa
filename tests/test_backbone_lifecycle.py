"""Trainable, frozen, cached and LoRA-adapted backbones inside the module: gradients, checkpoints, cache, stages."""

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from brokenbind import backbones
from brokenbind.backbones import Backbone, ModalityInfo
from brokenbind.backbones.lora import lora_parameters
from brokenbind.cache import FeatureCache
from brokenbind.methods import FABind
from brokenbind.module import BindingModule

from .conftest import make_mfeat


class Probe(Backbone):
    """A deterministic linear encoder that counts its forward calls and names itself for the cache."""

    calls = 0

    def __init__(self, info: ModalityInfo, trainable: bool = False, tag: str = "v1"):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.proj = nn.Linear(info.shape[0], 8)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=generator))
            self.proj.bias.zero_()
        self.out_dim, self.trainable, self.tag = 8, trainable, tag

    def fingerprint(self) -> str:
        return f"probe-{self.tag}"

    def forward(self, x):
        Probe.calls += len(x)
        return self.proj(x.float())


class FingerprintedMfeat:
    """mfeat with a data fingerprint, so that the cache is allowed."""

    @staticmethod
    def make(**overrides):
        dm = make_mfeat(**overrides)
        dm.data_fingerprint = lambda: "mfeat-test"
        return dm


@pytest.fixture(autouse=True)
def probe(monkeypatch):
    monkeypatch.setitem(backbones.BACKBONES, "probe", Probe)
    Probe.calls = 0


def fit(tmp_path, model, dm, epochs=2, ckpt_path=None, **kwargs):
    trainer = Trainer(
        default_root_dir=tmp_path, max_epochs=epochs, limit_train_batches=4, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **kwargs,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def test_cache_computes_each_instance_once_across_epochs(tmp_path):
    seed_everything(0)
    dm = FingerprintedMfeat.make()
    model = BindingModule(FABind(), default_backbone="probe")
    fit(tmp_path, model, dm, epochs=3)
    assert sorted(model.model.cache_keys) == ["fou", "pix", "zer"]
    seen = {m: set(t) for m, t in ((m, model.model.cache.tables[k]) for m, k in model.model.cache_keys.items())}
    assert Probe.calls == sum(len(ids) for ids in seen.values())  # every instance encoded once, however many epochs


def test_cached_features_equal_the_backbone_output(tmp_path):
    dm = FingerprintedMfeat.make()
    dm.setup()
    model = BindingModule(FABind(), default_backbone="probe")
    model.model.build(dm.modality_info(), dm.data_fingerprint())
    batch = dm.splits["evaluation"]["test"]
    x, index = batch.features["fou"][:5], batch.index[:5]
    first = model.model.features("fou", x, index)
    again = model.model.features("fou", x * 0, index)  # inputs ignored: served from the cache
    torch.testing.assert_close(first, again)
    assert Probe.calls == 5


def test_cache_key_changes_with_backbone_and_data(tmp_path):
    dm = FingerprintedMfeat.make()
    dm.setup()
    keys = []
    for tag, data in (("v1", "a"), ("v2", "a"), ("v1", "b")):
        model = BindingModule(FABind(), default_backbone={"name": "probe", "tag": tag})
        model.model.build(dm.modality_info(), data)
        keys.append(model.model.cache_keys["fou"])
    assert len(set(keys)) == 3


def test_no_cache_without_data_fingerprint_or_for_trainable_backbones(mfeat):
    model = BindingModule(FABind(), default_backbone="probe")
    model.model.build(mfeat.modality_info(), None)
    assert model.model.cache_keys == {}
    model = BindingModule(FABind(), default_backbone={"name": "probe", "trainable": True})
    model.model.build(mfeat.modality_info(), "data")
    assert model.model.cache_keys == {}


def test_cache_persists_to_disk_and_reloads(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("k", torch.tensor([3, 7]), torch.ones(2, 4))
    cache.save()
    reloaded = FeatureCache(tmp_path)
    torch.testing.assert_close(reloaded.get("k", torch.tensor([7, 3])), torch.ones(2, 4))
    assert reloaded.get("k", torch.tensor([7, 8])) is None


def test_trainable_backbone_trains_and_is_checkpointed(tmp_path):
    seed_everything(0)
    dm = make_mfeat()
    model = BindingModule(FABind(), default_backbone={"name": "probe", "trainable": True})
    trainer = fit(tmp_path, model, dm)
    before = Probe(dm.modality_info()["fou"]).proj.weight
    assert not torch.equal(model.model.backbones["fou"].proj.weight, before)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    state = torch.load(tmp_path / "m.ckpt", weights_only=True)["state_dict"]
    assert "model.backbones.fou.proj.weight" in state


def test_lora_stages_probe_heads_first_then_train_adapters_and_checkpoint_only_them(tmp_path):
    seed_everything(0)
    dm = make_mfeat()
    spec = {"name": "probe", "lora": {"r": 2, "target_modules": ["proj"]}}
    model = BindingModule(FABind(), default_backbone=spec, lora_start_epoch=1)
    trainer = fit(tmp_path, model, dm, epochs=1)
    adapters = {m: [p.detach().clone() for p in lora_parameters(b)] for m, b in model.model.backbones.items()}
    assert all(not p.requires_grad for p in lora_parameters(model.model.backbones["fou"]))
    lora_b = [p for n, p in model.model.backbones["fou"].named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # probing saw the exact pretrained backbone
    trainer.save_checkpoint(tmp_path / "probe.ckpt")

    resumed = BindingModule(FABind(), default_backbone=spec, lora_start_epoch=1)
    trainer = fit(tmp_path, resumed, dm, epochs=2, ckpt_path=tmp_path / "probe.ckpt")
    for m, backbone in resumed.model.backbones.items():
        after = lora_parameters(backbone)
        assert all(p.requires_grad for p in after)
        assert any(not torch.equal(a, b) for a, b in zip(after, adapters[m], strict=True)), (
            f"{m} adapters did not train"
        )
        assert not backbone.proj.base_layer.weight.requires_grad
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    state = torch.load(tmp_path / "lora.ckpt", weights_only=True)["state_dict"]
    assert [k for k in state if "lora_" in k]
    assert not [k for k in state if k.startswith("model.backbones.") and "lora_" not in k]
