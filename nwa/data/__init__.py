"""LightningDataModules over zoos."""

from nwa.data.module import ModelZooDataModule, WeightDataset

__all__ = ["ModelZooDataModule", "WeightDataset"]
