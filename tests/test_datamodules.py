import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import brokenbind
import datamodules
from brokenbind.errors import ConfigError
from brokenbind.pairing import PairedData
from datamodules.mfeat import NUM_CLASSES, load_mfeat
from datamodules.splits import cut_stratum

from .conftest import TWO_DATASETS, make_mfeat


def test_mfeat_views_are_aligned_and_complete():
    views, labels = load_mfeat()
    dims = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
    assert {k: v.shape for k, v in views.items()} == {k: (2000, d) for k, d in dims.items()}
    assert np.bincount(labels).tolist() == [200] * NUM_CLASSES


def test_splits_are_disjoint_and_cover_every_instance(mfeat):
    ids = [split.index for splits in mfeat.splits.values() for split in splits.values()]
    everything = torch.cat(ids)
    assert len(everything) == 2000
    assert len(torch.unique(everything)) == 2000


def test_split_sizes_follow_fractions(mfeat):
    sizes = {name: {s: len(d) for s, d in splits.items()} for name, splits in mfeat.splits.items()}
    assert sizes == {n: {"train": 600, "val": 200, "test": 200} for n in ("support", "evaluation")}


def test_strata_laid_out_together_are_cut_at_the_layout_boundaries():
    """Five classes of 3 at 0.6 / 0.2 / 0.2: one class alone rounds to 2 / 0 / 1 (val empty); laid out one after
    another (the manifest's assignment) the classes take turns and the splits hold exactly 9 / 3 / 3."""
    alone = [len(part) for part in cut_stratum(np.arange(3), (0.6, 0.2, 0.2))]
    assert alone == [2, 0, 1]
    laid_out = [[len(part) for part in cut_stratum(np.arange(3), (0.6, 0.2, 0.2), start=3 * k)] for k in range(5)]
    assert laid_out == [[2, 0, 1], [2, 1, 0], [1, 1, 1], [2, 1, 0], [2, 0, 1]]
    assert np.sum(laid_out, axis=0).tolist() == [9, 3, 3]


def test_split_fractions_must_sum_to_one_as_for_manifests():
    with pytest.raises(ConfigError, match=r"^split_fractions \[3, 1, 1\] sum to 5; give train/val/test fractions"):
        make_mfeat(split_fractions=(3, 1, 1))
    with pytest.raises(ConfigError, match="split_fractions must be three positive"):
        make_mfeat(split_fractions=(0.5, 0.5))


def test_class_prior_shift():
    def share_of_low_digits(dm):
        labels = torch.cat([d.label for d in dm.splits["support"].values()])
        return (labels < 5).float().mean().item()

    shifted, uniform, disjoint = make_mfeat(class_shift=0.5), make_mfeat(class_shift=0.0), make_mfeat(class_shift=1.0)
    for dm in (shifted, uniform, disjoint):
        dm.setup()
    assert share_of_low_digits(shifted) == pytest.approx(0.75)
    assert share_of_low_digits(uniform) == pytest.approx(0.5)
    assert share_of_low_digits(disjoint) == 1.0


def test_hidden_target_only_in_evaluation_splits(mfeat):
    assert sorted(mfeat.splits["evaluation"]["train"].features) == ["fou", "pix"]
    assert sorted(mfeat.splits["evaluation"]["test"].features) == ["fou", "pix", "zer"]
    assert sorted(mfeat.splits["support"]["train"].features) == ["pix", "zer"]
    assert not mfeat.graph.observed_together("fou", "zer")
    assert mfeat.graph.observed_together("pix", "zer")


def test_class_pairing_shuffles_each_training_view_within_its_class_and_keeps_evaluation_pairs(mfeat):
    paired = make_mfeat(pairing="class")
    paired.setup()
    for name, splits in paired.splits.items():
        for split, data in splits.items():
            instance = mfeat.splits[name][split]
            assert torch.equal(data.index, instance.index) and torch.equal(data.label, instance.label)
            for m, rows in data.features.items():
                if split != "train":
                    assert torch.equal(rows, instance.features[m])
                    continue
                # each class's rows hold the views of that class's instances, each once, mostly not the row's own
                for c in data.label.unique():
                    shuffled, own = rows[data.label == c].tolist(), instance.features[m][data.label == c].tolist()
                    assert sorted(shuffled) == sorted(own)
                    assert np.mean([a == b for a, b in zip(shuffled, own, strict=True)]) < 0.2
    train = paired.splits["evaluation"]["train"]
    # within a row the two views come from different instances: few rows hold a (fou, pix) pair that one instance has
    instance_pairs = {tuple(f + p) for f, p in zip(*(mfeat.splits["evaluation"]["train"].features[m].tolist()
                                                  for m in ("fou", "pix")), strict=True)}  # fmt: skip
    rows = zip(train.features["fou"].tolist(), train.features["pix"].tolist(), strict=True)
    assert np.mean([tuple(f + p) in instance_pairs for f, p in rows]) < 0.2
    different = (train.features["fou"] != mfeat.splits["evaluation"]["train"].features["fou"]).any(1)
    again = make_mfeat(pairing="class")
    again.setup()  # a function of split_seed: the same shuffle every time
    assert different.any() and torch.equal(again.splits["evaluation"]["train"].features["fou"], train.features["fou"])
    with pytest.raises(ConfigError, match="pairing"):
        make_mfeat(pairing="label")


def test_split_depends_only_on_split_seed():
    a, b, c = make_mfeat(), make_mfeat(), make_mfeat(split_seed=1)
    np.random.seed(1)
    first = a.assignment()["support"]["train"]
    np.random.seed(2)  # the global RNG (seed_everything) must not move the split
    assert np.array_equal(first, b.assignment()["support"]["train"])
    assert not np.array_equal(a.assignment()["support"]["train"], c.assignment()["support"]["train"])


def test_train_batches_pair_every_dataset_with_equal_sizes(mfeat, seeded):
    loader = mfeat.train_dataloader()
    batches = list(iter(loader))
    assert len(batches) == 600 // 32  # min_size with drop_last: the remainder is dropped
    for batch, _, _ in batches:
        assert sorted(batch) == ["evaluation", "support"]
        assert {len(b["index"]) for b in batch.values()} == {32}
        assert sorted(batch["evaluation"]["x"]) == ["fou", "pix"]
        assert batch["support"]["x"]["zer"].dtype == torch.float32


def test_training_order_is_a_function_of_the_run_seed(mfeat, monkeypatch):
    def first_batch(seed: str) -> torch.Tensor:
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)  # what seed_everything records
        batch, _, _ = next(iter(mfeat.train_dataloader()))
        return batch["support"]["index"]

    assert torch.equal(first_batch("3"), first_batch("3"))
    assert not torch.equal(first_batch("3"), first_batch("4"))
    monkeypatch.delenv("PL_GLOBAL_SEED")
    with pytest.raises(ConfigError, match=r"^the training order is a function of the run's seed, and no seed is set"):
        mfeat.train_dataloader()


def test_max_size_cycle_is_an_explicit_policy(seeded):
    dm = make_mfeat(sampling="max_size_cycle")
    dm.setup()
    assert dm.train_dataloader()._mode == "max_size_cycle"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pivot": "fou"}, "pivot 'fou' must be observed by every dataset it links"),
        ({"datasets": {**TWO_DATASETS, "support": {"modalities": ["pix", "xyz"]}}}, "unknown modalities ['xyz']"),
        ({"datasets": {**TWO_DATASETS, "support": {"modalities": []}}}, "observes no modality"),
        ({"flows": [{"dataset": "nowhere", "flow": "fou->pix->zer"}]}, "unknown dataset 'nowhere'"),
        ({"flows": [{"dataset": "evaluation", "flow": "fou->pix->zer->kar"}]}, "must read 'query->pivot->target'"),
        (
            {
                "datasets": {"paired": {"modalities": ["fou", "zer"]}},
                "flows": [{"dataset": "paired", "flow": "fou->zer"}],
            },
            "pivot 'pix': a pivot links datasets, and this experiment has one ('paired')",
        ),
        ({"flows": [{"dataset": "evaluation", "flow": "fou->pix->abc"}]}, "unknown modality 'abc'"),
        ({"flows": [{"dataset": "evaluation", "flow": "fou->pix->kar"}]}, "'kar' is observed by no training dataset"),
        ({"flows": [{"dataset": "evaluation", "flow": "fou->zer->pix"}]}, "'zer' is not a configured pivot"),
        ({"flows": []}, "no evaluation flow"),
        ({"class_shift": 1.5}, "class_shift must lie in [0, 1]"),
    ],
)
def test_pairing_validation_rejects_bad_configs(overrides, message):
    with pytest.raises(ConfigError) as error:
        make_mfeat(**overrides)
    assert message in str(error.value)


def test_batch_larger_than_a_dataset_is_an_error():
    dm = make_mfeat(batch_size=601)
    with pytest.raises(ConfigError, match="fewer than batch_size 601"):
        dm.setup()


def test_modality_info_fits_on_training_inputs_only(mfeat):
    info = mfeat.modality_info()
    assert sorted(info) == ["fou", "pix", "zer"]
    assert info["zer"].shape == (47,)
    assert len(info["zer"].train_inputs) == 600  # zer is observed by the support dataset only
    assert len(info["pix"].train_inputs) == 1200


THREE_DATASETS = {
    "evaluation": {"modalities": ["fou", "pix"]},
    "bridge": {"modalities": ["pix", "kar"]},
    "support": {"modalities": ["kar", "zer"]},
}


def test_chain_of_three_datasets_is_accepted_and_a_broken_chain_is_not():
    dm = make_mfeat(datasets=THREE_DATASETS, pivot=["pix", "kar"])
    assert dm.graph.reachable("evaluation") == {"fou", "pix", "kar", "zer"}
    broken = {**THREE_DATASETS, "support": {"modalities": ["mor", "zer"]}, "other": {"modalities": ["mor", "fac"]}}
    with pytest.raises(ConfigError, match="no chain of datasets linked by shared modalities leads from 'evaluation'"):
        make_mfeat(datasets=broken, pivot=["pix", "mor"])


def test_oracle_makes_the_hidden_target_observable_without_touching_the_config():
    datasets = {name: dict(spec) for name, spec in TWO_DATASETS.items()}
    dm = make_mfeat(datasets=datasets, oracle=True)
    dm.setup()
    assert sorted(dm.splits["evaluation"]["train"].features) == ["fou", "pix", "zer"]
    assert dm.graph.observed_together("fou", "zer")
    assert datasets["evaluation"]["modalities"] == ["fou", "pix"]


def test_dataset_flow_is_the_shortest_chain_to_the_target():
    assert make_mfeat(datasets=THREE_DATASETS, pivot=["pix", "kar"]).graph.chain("evaluation", "zer") == [
        "support",
        "bridge",
        "evaluation",
    ]
    assert make_mfeat().graph.chain("evaluation", "zer") == ["support", "evaluation"]
    assert make_mfeat(oracle=True).graph.chain("evaluation", "zer") == ["support", "evaluation"]


def test_importing_datamodules_imports_no_backbone_family():
    """Datamodules need only ``brokenbind.modality``: importing them imports no backbone, so no timm, open_clip or
    peft, and no transformers beyond what lightning itself imports (torchmetrics imports it when it is installed)."""
    code = """import json, sys
import lightning.pytorch
before = set(sys.modules)
import datamodules
absent = ("timm", "open_clip", "peft", "brokenbind.backbones")
added = sorted(m for m in set(sys.modules) - before if m.startswith((*absent, "transformers")))
print(json.dumps({"added": added, "loaded": sorted(m for m in absent if m in sys.modules)}))
"""
    path = os.pathsep.join(str(Path(p.__file__).parents[1]) for p in (brokenbind, datamodules))
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": path}, capture_output=True,
                          text=True, timeout=300, check=True)  # fmt: skip
    assert json.loads(done.stdout) == {"added": [], "loaded": []}


def test_datamodules_are_what_the_model_methods_and_callbacks_read(mfeat):
    """Every attribute the LightningModule, the model, the methods and the callbacks read from a datamodule (as ``dm``
    or ``datamodule``) is a member of ``PairedData``, and the datamodules have them all."""
    members = {name for name in vars(PairedData) if not name.startswith("_")}
    package = Path(brokenbind.__file__).parent
    readers = [
        package / "module.py",
        package / "model.py",
        *package.glob("callbacks/*.py"),
        *package.glob("methods/*.py"),
    ]
    read = {name for path in readers for name in re.findall(r"\b(?:dm|datamodule)\.(\w+)", path.read_text())}
    assert read == members
    assert isinstance(mfeat, PairedData)
    assert not isinstance(object(), PairedData)
    # every shipped datamodule is a PairedDataModule, which implements them once for all
    shipped = [getattr(datamodules, name) for name in datamodules.__all__ if name.endswith("DataModule")]
    assert len(shipped) == 8 and all(issubclass(cls, datamodules.PairedDataModule) for cls in shipped)


def test_one_dataset_is_an_experiment_with_query_to_target_flows():
    """One fully paired dataset: no pivot, flows of two modalities, every split carrying the dataset's modalities."""
    dm = make_mfeat(
        datasets={"paired": {"modalities": ["fou", "pix", "zer"]}},
        pivot=None,
        flows=[{"dataset": "paired", "flow": "fou->zer"}, {"dataset": "paired", "flow": "pix->fou"}],
    )
    assert dm.pivots == [] and [f.modalities for f in dm.flows] == [("fou", None, "zer"), ("pix", None, "fou")]
    assert [f.name for f in dm.flows] == ["fou->zer", "pix->fou"]
    assert dm.graph.observed_together("fou", "zer") and dm.graph.chain("paired", "zer") == ["paired"]
    dm.setup()
    assert {split: sorted(d.features) for split, d in dm.splits["paired"].items()} == {
        split: ["fou", "pix", "zer"] for split in ("train", "val", "test")
    }
    assert sum(len(d) for d in dm.splits["paired"].values()) == 2000  # one dataset holds every instance
