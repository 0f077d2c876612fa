import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from brokenbind import backbones
from brokenbind.backbones import Backbone, ModalityInfo
from brokenbind.callbacks import EmergentBinding
from brokenbind.callbacks.diagnosis import diagnose
from brokenbind.methods import BrokenBind, FABind
from brokenbind.module import BindingModule

from .binding import run
from .conftest import make_mfeat


class NormDropBackbone(Backbone):
    """A frozen backbone whose state would change if it ever ran in train mode (BatchNorm stats) or got gradients."""

    def __init__(self, info: ModalityInfo):
        super().__init__()
        generator = torch.Generator().manual_seed(7)  # deterministic, so a fresh build is the reference
        linear = nn.Linear(info.shape[0], 16)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.1)
            linear.bias.zero_()
        self.net = nn.Sequential(linear, nn.BatchNorm1d(16), nn.Dropout(0.5))
        self.out_dim = 16

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def bn_backbone(monkeypatch):
    monkeypatch.setitem(backbones.BACKBONES, "normdrop", NormDropBackbone)
    return "normdrop"


def make_trainer(tmp_path, **kwargs) -> Trainer:
    args = {
        "default_root_dir": tmp_path, "max_epochs": 2, "limit_train_batches": 3, "logger": False,
        "enable_progress_bar": False, "enable_model_summary": False, "callbacks": [EmergentBinding()],
    }  # fmt: skip
    return Trainer(**{**args, **kwargs})


# two short epochs: fou may not spread out yet, nor zer, whose raw features (the frozen BatchNorm passes them) start in
# a narrow cone that the default's centred L_Sym does not see (docs/choosing.md, "L_Sym on centred rows"); the
# collapse alarm is right, and beside the point here
@pytest.mark.filterwarnings(r"ignore:embeddings of modality '(fou|zer)' on dataset 'evaluation' never spread out")
def test_frozen_backbones_stay_bit_identical_in_eval_mode_and_out_of_checkpoints(tmp_path, bn_backbone):
    seed_everything(0)
    dm = make_mfeat()
    model = BindingModule(BrokenBind(consistency_epochs=1), default_backbone=bn_backbone)
    trainer = make_trainer(tmp_path)
    trainer.fit(model, datamodule=dm)

    reference = BindingModule(FABind(), default_backbone=bn_backbone)
    reference.model.build(dm.modality_info())
    expected = reference.model.backbones.state_dict()
    after = model.model.backbones.state_dict()
    assert after.keys() == expected.keys()
    assert all(torch.equal(after[k], expected[k]) for k in expected), "a frozen backbone changed during fit"
    assert all(not b.training for b in model.model.backbones.values())
    assert all(not p.requires_grad for p in model.model.backbones.parameters())

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not [k for k in state if k.startswith("model.backbones.")]
    assert sorted({k.split(".")[2] for k in state if k.startswith("model.heads.")}) == ["fou", "pix", "zer"]


def test_training_step_gives_every_head_a_gradient_and_no_backbone(bn_backbone, seeded):
    dm = make_mfeat()
    dm.setup()
    model = BindingModule(BrokenBind(consistency_epochs=0), default_backbone=bn_backbone)
    model.model.build(dm.modality_info())
    model.train()
    batch, _, _ = next(iter(dm.train_dataloader()))
    embeddings = {ds: model.model.embed(b["x"]) for ds, b in batch.items()}
    terms = run(model.method, embeddings, epoch=0)
    assert sorted(terms) == ["clip", "fro", "mox", "sym"]
    sum(terms.values()).backward()
    for name, p in model.model.heads.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for head parameter {name}"
    assert all(p.grad is None for p in model.model.backbones.parameters())
    assert all(not b.training for b in model.model.backbones.values())


def test_embeddings_are_unit_norm_fp32(mfeat):
    model = BindingModule(FABind())
    model.model.build(mfeat.modality_info())
    x = mfeat.splits["evaluation"]["test"].features
    out = model.model.embed({m: v[:10] for m, v in x.items()})
    for e in out.values():
        assert e.dtype == torch.float32
        torch.testing.assert_close(e.norm(dim=1), torch.ones(10))


@pytest.mark.filterwarnings("ignore:Checkpoint directory")  # three trainers share one directory on purpose
def test_resume_from_last_checkpoint_restores_heads_and_continues(tmp_path):
    seed_everything(0)
    first, trainer = BindingModule(FABind()), make_trainer(tmp_path, max_epochs=1)
    trainer.fit(first, datamodule=make_mfeat())
    ckpt = tmp_path / "epoch0.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed = BindingModule(FABind())
    resumed_trainer = make_trainer(tmp_path, max_epochs=1)  # already done: restores without training
    resumed_trainer.fit(resumed, datamodule=make_mfeat(), ckpt_path=ckpt)
    assert resumed_trainer.global_step == trainer.global_step == 3
    for key, value in first.model.heads.state_dict().items():
        assert torch.equal(resumed.model.heads.state_dict()[key], value)

    continued = make_trainer(tmp_path, max_epochs=2)
    continued.fit(BindingModule(FABind()), datamodule=make_mfeat(), ckpt_path=ckpt)
    assert continued.global_step == 6


def test_unknown_backbone_is_a_clear_error(mfeat):
    model = BindingModule(FABind(), backbones={"fou": "nope"})
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        model.model.build(mfeat.modality_info())


def test_a_module_built_from_python_takes_the_optimiser_of_the_defaults_file():
    import yaml

    from brokenbind.module import default_optimizer
    from brokenbind.settings import DEFAULTS

    spec = yaml.safe_load(DEFAULTS.read_text())["model"]["optimizer"]
    optimizer = default_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.AdamW) and spec["class_path"] == "torch.optim.AdamW"
    assert spec["init_args"] == {"lr": 5e-4, "weight_decay": 0.2}
    assert {k: optimizer.defaults[k] for k in spec["init_args"]} == spec["init_args"]


def test_the_pivot_diagnosis_encodes_only_the_training_rows_it_picks(tmp_path, monkeypatch):
    """Pseudo targets of a batch transition come from one random batch of the other dataset's training split: only
    that batch is encoded (memory and time of a batch, not of the split), and encoding those rows alone equals picking
    them from the whole split's features. (The default's kernel map on these frozen features extrapolates nothing.)"""
    seed_everything(0)
    model, dm = BindingModule(BrokenBind(transition="linear")), make_mfeat()
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=dm)
    model.eval()
    encode, encoded = model.encode, []

    def recording(dataset, split, modalities, rows=None):
        out = encode(dataset, split, modalities, rows)
        encoded.append((dataset, split, len(next(iter(out.values())))))
        return out

    monkeypatch.setattr(model, "encode", recording)
    values = diagnose(model, "evaluation", "fou", "pix", "zer")
    assert encoded == [("evaluation", "val", len(dm.splits["evaluation"]["val"])), ("support", "train", 32)]
    assert all(math.isfinite(v) for v in values.values()) and len(values) == 6
    pick = torch.randperm(len(dm.splits["support"]["train"]), generator=torch.Generator().manual_seed(0))[:32]
    whole, picked = encode("support", "train", ["pix", "zer"]), encode("support", "train", ["pix", "zer"], pick)
    for m in ("pix", "zer"):
        torch.testing.assert_close(picked[m], whole[m][pick])


def test_weights_of_checkpoints_written_before_the_model_module_load_under_its_prefix():
    from brokenbind.checkpoints import with_model_prefix

    old = {"backbones.pix.scale": 1, "heads.pix.0.weight": 2, "method.scale.value": 3, "model.heads.fou.0.bias": 4}
    assert with_model_prefix(old) == {
        "model.backbones.pix.scale": 1, "model.heads.pix.0.weight": 2, "method.scale.value": 3,
        "model.heads.fou.0.bias": 4,
    }  # fmt: skip


def test_the_transfer_error_reads_the_map_the_method_fitted(tmp_path):
    """With the default's kernel map the transfer error is that map's (the one the run trains on), not a ridge's."""
    from brokenbind.callbacks.diagnosis import PivotDiagnosis, transfer_error

    seed_everything(0)
    model, diagnosis = BindingModule(BrokenBind()), PivotDiagnosis()
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[diagnosis])
    trainer.fit(model, datamodule=make_mfeat())
    kernel_map = model.method.imputer.maps["evaluation", "pix", "zer"]
    expected = transfer_error(model.frozen_features, "evaluation", ["support"], "pix", "zer", kernel_map)
    assert diagnosis.transfer == {f"evaluation/pix->zer/{k}": v for k, v in expected.items()}
    ridge = transfer_error(model.frozen_features, "evaluation", ["support"], "pix", "zer")
    assert ridge["mAP_scored"] != expected["mAP_scored"]
