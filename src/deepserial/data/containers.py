"""Immutable containers that every other part of deepserial passes around.

Images are always ``float32`` tensors of shape ``(N, C, H, W)`` with values in ``[0, 1]`` and labels are
``int64`` tensors of shape ``(N,)``, so networks, serial-number stamping and attacks never have to guess a
layout or a scale. The containers check shapes and dtypes (cheap) on construction but not the value range
(a full pass over the data); the loaders in :mod:`deepserial.data` guarantee the range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepserial.errors import DatasetError


@dataclass(frozen=True)
class TensorData:
    """A labelled set of images held in memory.

    ``x`` is ``float32`` of shape ``(N, C, H, W)`` with values in ``[0, 1]``; ``y`` is ``int64`` of shape
    ``(N,)``. ``N`` may be 0 (an empty part of a split).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        """Reject tensors of the wrong kind early, where the mistake is made, not deep inside training."""
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DatasetError(
                f"TensorData needs torch tensors, got x={type(self.x).__name__}, y={type(self.y).__name__}; "
                "convert with torch.as_tensor first"
            )
        if self.x.dtype != torch.float32 or self.x.dim() != 4:
            raise DatasetError(
                f"TensorData.x must be float32 of shape (N, C, H, W), got {self.x.dtype} of shape "
                f"{tuple(self.x.shape)}; convert with x.float() and add missing dimensions"
            )
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise DatasetError(
                f"TensorData.y must be int64 of shape (N,), got {self.y.dtype} of shape "
                f"{tuple(self.y.shape)}; convert with y.long().flatten()"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise DatasetError(
                f"TensorData has {self.x.shape[0]} images but {self.y.shape[0]} labels; pass one label per image"
            )

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor | np.ndarray) -> TensorData:
        """The samples at ``idx`` (integer indices or a boolean mask), in that order, as new tensors."""
        index = torch.as_tensor(idx)
        if index.dtype != torch.bool:
            index = index.long()
        return TensorData(self.x[index], self.y[index])


@dataclass(frozen=True)
class DatasetBundle:
    """A loaded data set: its training part, the official test part when the source has one, and metadata.

    ``name`` is the registered name (``"mnist5k"``) or the path the user gave; ``source`` says in words where
    the data came from, for reports and model cards.
    """

    name: str
    train: TensorData
    test: TensorData | None
    num_classes: int
    source: str

    def __post_init__(self) -> None:
        """Catch bundles whose parts do not fit together (labels out of range, different image shapes)."""
        if self.num_classes < 2:
            raise DatasetError(
                f"data set {self.name!r} has num_classes={self.num_classes}; a classifier needs at least 2 classes"
            )
        for part_name, part in (("train", self.train), ("test", self.test)):
            if part is None or len(part) == 0:
                continue
            low, high = int(part.y.min()), int(part.y.max())
            if low < 0 or high >= self.num_classes:
                raise DatasetError(
                    f"data set {self.name!r} has {part_name} labels in [{low}, {high}] but num_classes="
                    f"{self.num_classes}; labels must lie in [0, num_classes)"
                )
        if self.test is not None and tuple(self.test.x.shape[1:]) != tuple(self.train.x.shape[1:]):
            raise DatasetError(
                f"data set {self.name!r} has train images of shape {tuple(self.train.x.shape[1:])} but test "
                f"images of shape {tuple(self.test.x.shape[1:])}; both parts need the same (C, H, W)"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image, what a network must accept."""
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True)
class Splits:
    """The three disjoint parts an ownership experiment needs.

    ``owner`` trains the watermarked model, ``attacker`` is the data an adversary holds for fine-tuning or
    distillation attacks, ``test`` measures accuracy. ``seed`` is the seed the split was drawn with, so it
    can be recorded and redrawn.
    """

    owner: TensorData
    attacker: TensorData
    test: TensorData
    seed: int

    def sizes(self) -> dict[str, int]:
        """Number of samples in each part, for logs and reports."""
        return {"owner": len(self.owner), "attacker": len(self.attacker), "test": len(self.test)}
