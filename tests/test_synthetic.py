"""SyntheticDataModule: seeded generation, the division into datasets and splits, the knobs' validation, the ground
truth (the shared latent is linearly recoverable from every modality, a private latent only from its own), and a CLI
run of experiments/synthetic.yaml."""

from pathlib import Path

import numpy as np
import pytest
import torch

from brokenbind.cli import cli
from brokenbind.errors import ConfigError
from datamodules import SyntheticDataModule

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ["m0", "m1", "m2", "m3"]
DATASETS = {"first": {"modalities": MODALITIES}, "second": {"modalities": MODALITIES}}
FLOWS = [{"dataset": "first", "flow": "m1->m0->m2"}]


def make_synthetic(**overrides) -> SyntheticDataModule:
    args = {"datasets": DATASETS, "pivot": "m0", "flows": FLOWS, "batch_size": 32}
    return SyntheticDataModule(**{**args, **overrides})


@pytest.fixture(scope="module")
def synthetic() -> SyntheticDataModule:
    dm = make_synthetic()
    dm.setup()
    return dm


def held_out_r2(x: torch.Tensor, z: torch.Tensor, x_test: torch.Tensor, z_test: torch.Tensor) -> float:
    """R² on (x_test, z_test) of the least-squares affine map from x to z fitted on (x, z): 1 is perfect recovery,
    about 0 is chance (predicting the mean)."""

    def affine(features: torch.Tensor) -> torch.Tensor:
        return torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)

    coef = torch.linalg.lstsq(affine(x), z.double()).solution
    residual = z_test.double() - affine(x_test) @ coef
    return float(1 - residual.square().sum() / (z_test.double() - z_test.double().mean(0)).square().sum())


def test_same_data_seed_gives_the_same_data_and_another_seed_other_data():
    a, b, c = make_synthetic(), make_synthetic(), make_synthetic(data_seed=1)
    np.random.seed(1)
    torch.manual_seed(1)
    first = a.sample()
    np.random.seed(2)  # the global RNGs (seed_everything) must not move the data
    torch.manual_seed(2)
    again, other = b.sample(), c.sample()
    for m in MODALITIES:
        assert np.array_equal(first.features[m], again.features[m])
        assert np.array_equal(first.private[m], again.private[m])
        assert not np.allclose(first.features[m], other.features[m])
        assert not np.allclose(first.private[m], other.private[m])
    assert np.array_equal(first.shared, again.shared)
    assert not np.allclose(first.shared, other.shared)
    assert np.array_equal(first.labels, other.labels)  # class i mod C, whatever the seed


def test_a_modality_depends_on_neither_the_other_modalities_nor_its_noise():
    three = make_synthetic(modalities=3, datasets={name: {"modalities": MODALITIES[:3]} for name in DATASETS})
    four = make_synthetic()
    assert np.array_equal(three.sample().features["m0"], four.sample().features["m0"])
    assert np.array_equal(three.sample().private["m2"], four.sample().private["m2"])
    clean, noisy, noisier = (make_synthetic(noise=noise).sample() for noise in (0.0, 0.5, 2.0))
    assert np.array_equal(clean.private["m2"], noisier.private["m2"])
    np.testing.assert_allclose(  # the same η, rescaled
        (noisy.features["m2"] - clean.features["m2"]) / 0.5,
        (noisier.features["m2"] - clean.features["m2"]) / 2.0,
        atol=1e-5,
    )


def test_shapes_names_and_per_modality_settings():
    names = ["photo", "sound", "text"]
    dm = make_synthetic(
        modalities=names,
        shared_dim=3,
        private_dim=2,
        feature_dim={"photo": 20, "sound": 7, "text": 5},
        noise={"photo": 0.0, "sound": 0.1, "text": 1.0},
        classes=4,
        instances=400,
        datasets={"first": {"modalities": names}, "second": {"modalities": ["photo", "sound"]}},
        pivot="photo",
        flows=[{"dataset": "second", "flow": "sound->photo->text"}],
    )
    assert dm.available_modalities == tuple(names)
    dm.setup()
    assert {m: i.shape for m, i in dm.modality_info().items()} == {"photo": (20,), "sound": (7,), "text": (5,)}
    test = dm.splits["second"]["test"]
    assert sorted(test.features) == names  # the flow's target, hidden in this dataset's training split
    assert sorted(dm.splits["second"]["train"].features) == ["photo", "sound"]
    assert test.features["text"].dtype == torch.float32 and test.features["text"].shape == (len(test), 5)
    shared, private = dm.latents(test.index)
    assert shared.shape == (len(test), 3) and shared.dtype == torch.float32
    assert {m: z.shape for m, z in private.items()} == {m: (len(test), 2) for m in names}
    assert np.bincount(dm.sample().labels).tolist() == [100] * 4
    assert dm.sample().features["photo"].std(0) == pytest.approx(np.ones(20), abs=1e-5)  # noiseless: standardised


def test_latents_follow_the_order_of_the_index(synthetic):
    index = torch.tensor([7, 3, 1999, 3])
    shared, private = synthetic.latents(index)
    assert torch.equal(shared, torch.from_numpy(synthetic.sample().shared[[7, 3, 1999, 3]]).float())
    assert torch.equal(private["m1"][1], private["m1"][3])


def test_splits_are_disjoint_stratified_and_sized(synthetic):
    everything = torch.cat([split.index for splits in synthetic.splits.values() for split in splits.values()])
    assert len(everything) == len(torch.unique(everything)) == 2000
    for splits in synthetic.splits.values():
        assert {s: len(d) for s, d in splits.items()} == {"train": 600, "val": 200, "test": 200}
        for split, per_class in (("train", 60), ("val", 20), ("test", 20)):
            assert torch.bincount(splits[split].label).tolist() == [per_class] * 10


def test_split_depends_only_on_split_seed():
    a, b, c = make_synthetic(), make_synthetic(data_seed=1), make_synthetic(split_seed=1)
    assert np.array_equal(a.assignment()["first"]["train"], b.assignment()["first"]["train"])
    assert not np.array_equal(a.assignment()["first"]["train"], c.assignment()["first"]["train"])


def test_class_shift_moves_the_class_prior_between_datasets():
    def share_of_low_classes(class_shift: float) -> float:
        dm = make_synthetic(class_shift=class_shift)
        dm.setup()
        labels = torch.cat([d.label for d in dm.splits["first"].values()])
        return (labels < 5).float().mean().item()

    assert share_of_low_classes(0.0) == pytest.approx(0.5)
    assert share_of_low_classes(0.5) == pytest.approx(0.75)
    assert share_of_low_classes(1.0) == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"modalities": 1}, "modalities must be a count of at least 2 or a list of two or more distinct names, got 1"),
        (
            {"modalities": ["m0", "m0"]},
            "modalities must be a count of at least 2 or a list of two or more distinct names, got ['m0', 'm0']",
        ),
        ({"shared_dim": 0}, "shared_dim must be at least 1, got 0"),
        ({"private_dim": -1}, "private_dim must be at least 0, got -1"),
        ({"hidden_dim": 0}, "hidden_dim must be at least 1, got 0"),
        ({"classes": 1}, "classes must be at least 2, got 1"),
        ({"instances": 9}, "instances must be at least classes (10), one per class, got 9"),
        ({"data_seed": -1}, "data_seed must be at least 0, got -1"),
        ({"split_seed": -1}, "split_seed must be at least 0, got -1"),
        ({"feature_dim": 0}, "feature_dim must be at least 1, got 0"),
        ({"feature_dim": {"m0": 8, "m1": 8, "m2": 0, "m3": 8}}, "feature_dim.m2 must be at least 1, got 0"),
        (
            {"feature_dim": {"m0": 8, "m1": 8}},
            "feature_dim per modality must name exactly the modalities ['m0', 'm1', 'm2', 'm3'], got ['m0', 'm1']; "
            "or give one value for all",
        ),
        ({"noise": -0.5}, "noise must be finite and at least 0, got -0.5"),
        (
            {"noise": {"m0": 0.1, "m1": float("nan"), "m2": 0.1, "m3": 0.1}},
            "noise.m1 must be finite and at least 0, got nan",
        ),
        ({"class_spread": float("inf")}, "class_spread must be finite and at least 0, got inf"),
        ({"class_shift": 1.5}, "class_shift must lie in [0, 1], got 1.5"),
        (
            {"split_fractions": (0.5, 0.5)},
            "split_fractions must be three positive train/val/test fractions, got (0.5, 0.5)",
        ),
        (
            {"datasets": {"first": {"modalities": ["m0", "m4"]}}},
            "dataset 'first': unknown modalities ['m4']; available: ['m0', 'm1', 'm2', 'm3']",
        ),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key_and_the_range(overrides, message):
    with pytest.raises(ConfigError) as error:
        make_synthetic(**overrides)
    assert str(error.value) == message


def test_the_shared_latent_is_recoverable_from_every_modality_and_a_private_latent_only_from_its_own():
    """Affine regression fitted on a dataset's training split, scored on its test split: at low noise the shared
    latent is recovered from every modality (a random nonlinear map keeps most of it linearly readable) and each
    private latent from its modality but not from another (they are independent); at a noise 30 times the signal
    nothing is. The data are fixed by the seed, so the margins hold deterministically."""
    for noise, low in ((0.1, True), (30.0, False)):
        dm = make_synthetic(noise=noise)
        dm.setup()
        train, test = dm.splits["first"]["train"], dm.splits["first"]["test"]
        (shared, private), (shared_test, private_test) = dm.latents(train.index), dm.latents(test.index)
        for m in MODALITIES:
            x, x_test = train.features[m], test.features[m]
            recovered = held_out_r2(x, shared, x_test, shared_test), held_out_r2(x, private[m], x_test, private_test[m])
            assert all(r > 0.8 for r in recovered) if low else all(r < 0.05 for r in recovered), (m, noise, recovered)
        other = held_out_r2(train.features["m0"], private["m1"], test.features["m0"], private_test["m1"])
        assert other < 0.05, (noise, other)


def test_cli_fits_the_synthetic_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fitted = cli(["fit", "--config", str(ROOT / "experiments" / "synthetic.yaml"), "--trainer.fast_dev_run=true"])
    assert fitted.trainer.state.finished
    assert fitted.trainer.global_step == 1  # fast_dev_run: one training batch of every dataset
    assert isinstance(fitted.datamodule, SyntheticDataModule)
