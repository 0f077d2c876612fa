from pathlib import Path

import pytest

from datamodules import MfeatDataModule
from tests.helpers import free_port

TWO_DATASETS = {"support": {"modalities": ["pix", "zer"]}, "evaluation": {"modalities": ["fou", "pix"]}}
FLOW = [{"dataset": "evaluation", "flow": "fou->pix->zer"}]


def make_mfeat(**overrides) -> MfeatDataModule:
    args = {"datasets": TWO_DATASETS, "pivot": "pix", "flows": FLOW, "batch_size": 32}
    return MfeatDataModule(**{**args, **overrides})


@pytest.fixture(autouse=True)
def master_port(monkeypatch) -> None:
    """Every DDP job a test starts (Lightning's launcher reads MASTER_PORT) gets a free port outside the ephemeral
    range, not one Lightning draws from it (``tests.helpers.free_port`` says why)."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))


@pytest.fixture
def seeded(monkeypatch) -> None:
    """The run's seed, as Lightning's seed_everything records it (PL_GLOBAL_SEED): training loaders need one."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")


@pytest.fixture
def mfeat() -> MfeatDataModule:
    dm = make_mfeat()
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def two_dataset_run(tmp_path_factory) -> Path:
    """``last.ckpt`` of three short epochs (2 batches each, no test) of experiments/two_dataset.yaml, trained once per
    session in its own working directory, for the tests that only read the checkpoint or check that a refused command
    leaves its run as it was (each compares the run before and after itself)."""
    from brokenbind.cli import cli

    work = tmp_path_factory.mktemp("two_dataset_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        cli(["fit", "--config", str(Path(__file__).resolve().parents[1] / "experiments" / "two_dataset.yaml"),
             "--trainer.max_epochs=3", "--trainer.limit_train_batches=2", "--test_after_fit=false",
             "--trainer.enable_progress_bar=false"])  # fmt: skip
    return work / "logs" / "two_dataset" / "version_0" / "checkpoints" / "last.ckpt"
