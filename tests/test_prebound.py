"""The pre-bound regime: a pretraining pool no benchmark dataset holds, the low-data fraction, ``bound`` backbones
(an earlier run's trained encoders, frozen) and residual heads that start from their space."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from brokenbind.backbones import ModalityInfo, ResidualHead, build_backbone
from brokenbind.cli import cli
from brokenbind.errors import ConfigError
from brokenbind.module import BindingModule
from datamodules.mfeat import assign_instances, load_mfeat
from tests.conftest import make_mfeat

ROOT = Path(__file__).resolve().parents[1]
POOL_EXPERIMENT = ROOT / "experiments" / "pretrain" / "mfeat_pool.yaml"


def all_ids(dm) -> set[int]:
    return {int(i) for splits in dm.assignment().values() for ids in splits.values() for i in ids}


def test_the_pool_is_disjoint_from_every_dataset_and_independent_of_the_split_seed():
    pool = {split_seed: all_ids(make_mfeat(pool_fraction=0.2, use_pool=True, split_seed=split_seed))
            for split_seed in (0, 1)}  # fmt: skip
    rest = all_ids(make_mfeat(pool_fraction=0.2, split_seed=3))
    assert pool[0] == pool[1] and len(pool[0]) == 400 and not pool[0] & rest and len(rest) == 1600
    labels = load_mfeat()[1]
    assert np.bincount(labels[sorted(pool[0])]).tolist() == [40] * 10  # stratified: 20 % of every class
    assert all_ids(make_mfeat(pool_fraction=0.2, pool_seed=1, use_pool=True)) != pool[0]


def test_no_pool_and_full_training_data_keep_the_assignment_unchanged():
    labels = load_mfeat()[1]
    names = ["support", "evaluation"]
    before = assign_instances(labels, names, 0.5, (0.6, 0.2, 0.2), 0)
    after = make_mfeat().assignment()
    assert all(np.array_equal(before[n][s], after[n][s]) for n in names for s in before[n])
    everything = assign_instances(labels, names, 0.5, (0.6, 0.2, 0.2), 0, among=np.arange(len(labels)))
    assert all(np.array_equal(before[n][s], everything[n][s]) for n in names for s in before[n])


def test_train_fraction_shrinks_only_the_training_splits_stratified():
    full, low = make_mfeat().assignment(), make_mfeat(train_fraction=0.25).assignment()
    labels = load_mfeat()[1]
    for name in full:
        assert np.array_equal(full[name]["val"], low[name]["val"]) and np.array_equal(full[name]["test"],
                                                                                      low[name]["test"])  # fmt: skip
        assert set(low[name]["train"]) < set(full[name]["train"])
        expected = [round(0.25 * n) for n in np.bincount(labels[full[name]["train"]], minlength=10)]
        assert np.bincount(labels[low[name]["train"]], minlength=10).tolist() == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_fraction": 0.0}, "train_fraction must lie in (0, 1]"),
        ({"use_pool": True}, "pool_fraction must lie in [0, 1) and be positive with use_pool"),
        ({"pool_fraction": 1.0}, "pool_fraction must lie in [0, 1)"),
    ],
)
def test_bad_pool_and_fraction_settings_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        make_mfeat(**overrides)


def test_a_residual_head_starts_as_the_identity_and_needs_equal_widths():
    head = ResidualHead(8, 16, 8)
    x = torch.randn(5, 8)
    assert torch.equal(head(x), x)
    with pytest.raises(ConfigError, match="a residual head needs backbone features as wide as the embedding"):
        ResidualHead(6, 16, 8)


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory) -> tuple[Path, BindingModule]:
    """A 2-epoch pre-binding run on the pool; its last checkpoint and its trained module."""
    root = tmp_path_factory.mktemp("pool")
    result = cli(["fit", "--config", str(POOL_EXPERIMENT), "--trainer.max_epochs=2", "--test_after_fit=false",
                  "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={root}"])  # fmt: skip
    return Path(result.trainer.log_dir) / "checkpoints" / "last.ckpt", result.model


def benchmark_info(modality: str) -> ModalityInfo:
    dm = make_mfeat(pool_fraction=0.2)
    return dm.modality_info()[modality]


def test_a_bound_backbone_embeds_exactly_as_its_checkpoints_run(pool_run):
    ckpt, source = pool_run
    info = benchmark_info("fou")
    bound = build_backbone({"name": "bound", "checkpoint": str(ckpt)}, ModalityInfo(**{**info.__dict__, "name": "fou"}))
    x = info.train_inputs[:50]
    source.eval()
    with torch.no_grad():
        expected = source.model.embed({"fou": x})["fou"]
        assert torch.allclose(bound(x), expected, atol=1e-6)
    assert bound.out_dim == 128 and not any(p.requires_grad for p in bound.parameters()) and not bound.training


def test_bound_backbone_errors_name_the_problem(pool_run):
    ckpt, _ = pool_run
    zer = ModalityInfo(**{**benchmark_info("zer").__dict__, "name": "zer"})
    with pytest.raises(ConfigError, match=r"the 'fou' encoder of .* takes features inputs of shape \(76,\), this "):
        build_backbone({"name": "bound", "checkpoint": str(ckpt), "modality": "fou"}, zer)
    with pytest.raises(ConfigError, match=r"has no encoder for 'top'; it encodes \['fac', 'fou', 'kar', 'mor', "):
        build_backbone({"name": "bound", "checkpoint": str(ckpt), "modality": "top"}, zer)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        build_backbone({"name": "bound", "checkpoint": "missing.ckpt"}, zer)


def with_stored_config(ckpt: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``ckpt`` whose stored run configuration ``edit`` changed in place."""
    state = torch.load(ckpt, weights_only=True)
    edit(state["config"])
    path = tmp_path / "edited.ckpt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("key", ["model.default_backbone", "model.embed_dim", "model.head", "model.head_hidden_dim",
                                 "model", "data.class_path", "data.init_args"])  # fmt: skip
def test_a_stored_configuration_missing_a_key_the_rebuild_needs_is_an_error_not_todays_default(pool_run, tmp_path, key):
    ckpt, _ = pool_run
    *parents, last = key.split(".")

    def drop(config: dict) -> None:
        for part in parents:
            config = config[part]
        del config[last]

    edited = with_stored_config(ckpt, tmp_path, drop)
    fou = ModalityInfo(**{**benchmark_info("fou").__dict__, "name": "fou"})
    message = f"the run configuration stored in checkpoint {edited} has no {key}, which rebuilding its encoder needs"
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_backbone({"name": "bound", "checkpoint": str(edited)}, fou)


def test_a_stored_backbones_mapping_is_read_and_the_default_backbone_serves_the_modalities_it_leaves_out(
    pool_run, tmp_path
):
    ckpt, _ = pool_run
    assert "backbones" not in torch.load(ckpt, weights_only=True)["config"]["model"]  # the dump leaves out None
    edited = with_stored_config(ckpt, tmp_path, lambda c: c["model"].update(backbones={"zer": "identity"}))
    infos = {m: ModalityInfo(**{**benchmark_info(m).__dict__, "name": m}) for m in ("fou", "zer")}
    built = {m: build_backbone({"name": "bound", "checkpoint": str(edited)}, i).backbone for m, i in infos.items()}
    assert (type(built["fou"]).__name__, type(built["zer"]).__name__) == ("Standardize", "Identity")


def test_an_untrained_model_on_bound_backbones_is_the_zero_shot_one_and_saves_no_backbone(pool_run, tmp_path):
    ckpt, source = pool_run
    bound = f'--model.default_backbone={{"name": "bound", "checkpoint": "{ckpt}"}}'
    result = cli(["fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--method", "frozen",
                  "--data.init_args.pool_fraction=0.2", "--model.head=residual", bound,
                  "--trainer.enable_progress_bar=false",
                  f"--trainer.logger.init_args.save_dir={tmp_path}"])  # fmt: skip
    model, dm = result.model, result.datamodule
    x = dm.splits["evaluation"]["test"].features["fou"]
    source.eval()
    with torch.no_grad():
        assert torch.allclose(model.model.embed({"fou": x})["fou"], source.model.embed({"fou": x})["fou"], atol=1e-6)
    run = Path(result.trainer.log_dir)
    with (run / "results.csv").open() as f:  # a 0-epoch fit scores validation too, so suites can choose on it
        assert {r["stage"] for r in csv.DictReader(f)} == {"val", "test"}
    fit = cli(["fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--method", "fabind",
               "--data.init_args.pool_fraction=0.2", "--model.head=residual", bound, "--trainer.max_epochs=1",
               "--test_after_fit=false", "--trainer.enable_progress_bar=false",
               f"--trainer.logger.init_args.save_dir={tmp_path}"])  # fmt: skip
    saved = torch.load(Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert saved and not any(k.startswith("model.backbones.") for k in saved)
