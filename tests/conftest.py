import pytest

from datamodules import MfeatDataModule

TWO_DATASETS = {"support": {"modalities": ["pix", "zer"]}, "evaluation": {"modalities": ["fou", "pix"]}}
FLOW = [{"dataset": "evaluation", "flow": "fou->pix->zer"}]


def make_mfeat(**overrides) -> MfeatDataModule:
    args = {"datasets": TWO_DATASETS, "pivot": "pix", "flows": FLOW, "batch_size": 32}
    return MfeatDataModule(**{**args, **overrides})


@pytest.fixture
def mfeat() -> MfeatDataModule:
    dm = make_mfeat()
    dm.setup()
    return dm
