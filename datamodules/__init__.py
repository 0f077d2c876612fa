"""LightningDataModules: datasets paired through shared modalities, one module per data source."""

from datamodules.base import DatasetSpec, Flow, PairedDataModule
from datamodules.mfeat import MfeatDataModule

__all__ = ["DatasetSpec", "Flow", "MfeatDataModule", "PairedDataModule"]
