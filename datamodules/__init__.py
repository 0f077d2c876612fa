"""LightningDataModules: datasets paired through shared modalities, one module per data source."""

from datamodules.base import DatasetSpec, Flow, PairedDataModule
from datamodules.digits import DigitsDataModule
from datamodules.manifest import ManifestDataModule, ManifestDataset
from datamodules.mfeat import MfeatDataModule

__all__ = [
    "DatasetSpec",
    "DigitsDataModule",
    "Flow",
    "ManifestDataModule",
    "ManifestDataset",
    "MfeatDataModule",
    "PairedDataModule",
]
