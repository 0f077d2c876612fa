"""LightningDataModules: datasets paired through shared modalities, one module per data source."""

from datamodules.base import DatasetSpec, Flow, PairedDataModule
from datamodules.digit_views import DigitViewsDataModule
from datamodules.digits import DigitsDataModule
from datamodules.fashion_views import FashionViewsDataModule
from datamodules.manifest import ManifestDataModule, ManifestDataset
from datamodules.mfeat import MfeatDataModule
from datamodules.shards import ShardDataModule
from datamodules.synthetic import SyntheticDataModule

__all__ = [
    "DatasetSpec",
    "DigitViewsDataModule",
    "DigitsDataModule",
    "FashionViewsDataModule",
    "Flow",
    "ManifestDataModule",
    "ManifestDataset",
    "MfeatDataModule",
    "PairedDataModule",
    "ShardDataModule",
    "SyntheticDataModule",
]
