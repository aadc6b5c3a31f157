"""Data: labelled collections, the shipped Omniglot, and regression task families."""

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.data.regression import LinearTasks, SinusoidTasks

__all__ = ["LabelledDataset", "LinearTasks", "SinusoidTasks"]
