import pytest

from datamodules import MfeatDataModule

TWO_DATASETS = {"support": {"modalities": ["pix", "zer"]}, "evaluation": {"modalities": ["fou", "pix"]}}
FLOW = [{"dataset": "evaluation", "flow": "fou->pix->zer"}]


def make_mfeat(**overrides) -> MfeatDataModule:
    args = {"datasets": TWO_DATASETS, "pivot": "pix", "flows": FLOW, "batch_size": 32}
    return MfeatDataModule(**{**args, **overrides})


@pytest.fixture
def seeded(monkeypatch) -> None:
    """The run's seed, as Lightning's seed_everything records it (PL_GLOBAL_SEED): training loaders need one."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")


@pytest.fixture
def mfeat() -> MfeatDataModule:
    dm = make_mfeat()
    dm.setup()
    return dm
