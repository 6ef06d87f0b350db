"""Immutable containers that every other part of deepserial passes around.

Images are always ``float32`` tensors of shape ``(N, C, H, W)`` with values in ``[0, 1]`` and labels are
``int64`` tensors of shape ``(N,)``, so networks, serial-number stamping and attacks never have to guess a
layout or a scale. The containers check shapes and dtypes (cheap) on construction but not the value range
(a full pass over the data); the loaders in :mod:`deepserial.data` guarantee the range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    @classmethod
    def from_arrays(cls, x: Any, y: Any, *, channels_last: bool | None = None) -> TensorData:
        """Your images and labels (numpy arrays, tensors or nested lists) in deepserial's layout.

        ``x`` may be ``(N, H, W)`` (grey), ``(N, C, H, W)``, or ``(N, H, W, C)`` as PIL, OpenCV and Keras
        store images; ``channels_last`` None takes the last layout when the last axis has 1, 3 or 4
        entries and the second more than 4. Integer images are 0-255 and divided by 255; float (and
        bool) images must already lie in ``[0, 1]`` (checked: no ``Normalize`` with ImageNet means, as
        the serial number and every trigger are stamped in that range). ``y`` holds one integer class
        index per image, ``(N,)`` or ``(N, 1)``. The result owns its memory (a copy).

        Example::

            >>> data = TensorData.from_arrays(np.zeros((8, 32, 32, 3), np.uint8), np.arange(8) % 2)
            >>> data.x.shape  # torch.Size([8, 3, 32, 32])
        """
        xs = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        ys = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if xs.ndim == 3:
            xs = xs[:, None]
        if xs.ndim != 4 or 0 in xs.shape[1:]:
            raise DatasetError(f"images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {xs.shape}")
        if channels_last is None:
            channels_last = xs.shape[-1] in (1, 3, 4) and xs.shape[1] > 4
        if channels_last:
            xs = xs.transpose(0, 3, 1, 2)
        if xs.dtype.kind in "iu":
            if xs.size and (int(xs.min()) < 0 or int(xs.max()) > 255):
                raise DatasetError(
                    f"integer images must hold 0-255, got {int(xs.min())} to {int(xs.max())}; "
                    "store uint8 pixels or floats in [0, 1]"
                )
            xs = xs.astype(np.float32) / 255.0
        elif xs.dtype.kind in "fb":
            xs = xs.astype(np.float32)
            if xs.size and not (np.isfinite(xs).all() and float(xs.min()) >= 0.0 and float(xs.max()) <= 1.0):
                raise DatasetError(
                    f"float images must lie in [0, 1], got {float(np.nanmin(xs)):.4g} to {float(np.nanmax(xs)):.4g}; "
                    "scale them to [0, 1] (and leave out any Normalize transform)"
                )
        else:
            raise DatasetError(f"images of dtype {xs.dtype} are not numbers; pass uint8 pixels or floats in [0, 1]")
        if ys.ndim == 2 and ys.shape[1] == 1:
            ys = ys[:, 0]
        if ys.ndim != 1 or ys.dtype.kind not in "iu":
            raise DatasetError(
                f"labels must be integer class indices of shape (N,), got {ys.dtype} of shape {ys.shape}"
            )
        if ys.size and int(ys.min()) < 0:
            raise DatasetError(f"labels include {int(ys.min())}; class indices must be >= 0")
        return cls(torch.from_numpy(np.ascontiguousarray(xs)), torch.from_numpy(ys.astype(np.int64)))

    @classmethod
    def from_dataset(cls, dataset: Any, *, limit: int | None = None) -> TensorData:
        """Every ``(image, label)`` pair of a ``torch.utils.data.Dataset`` (or any sized sequence of pairs).

        Images may be tensors (``(C, H, W)`` from ``ToTensor``), numpy arrays or PIL images, all of one
        shape; they go through :meth:`from_arrays`, so the same layouts and ranges apply. ``limit``
        keeps the first that many pairs. The whole set is read into memory once.

        Example::

            >>> data = TensorData.from_dataset(torchvision.datasets.CIFAR10(root, transform=ToTensor()))
        """
        try:
            n = len(dataset)
        except TypeError:
            raise DatasetError(f"{type(dataset).__name__} has no length; pass a map-style Dataset") from None
        n = n if limit is None else min(n, int(limit))
        if n < 1:
            raise DatasetError(f"{type(dataset).__name__} holds no sample")
        images, labels = [], []
        for i in range(n):
            item = dataset[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise DatasetError(f"sample {i} of {type(dataset).__name__} is not an (image, label) pair")
            img, label = item[0], item[1]
            images.append(img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img))
            labels.append(int(label))
        shapes = {a.shape for a in images}
        if len(shapes) != 1:
            raise DatasetError(
                f"images of {type(dataset).__name__} differ in shape {sorted(shapes)}; resize them alike"
            )
        return cls.from_arrays(np.stack(images), np.asarray(labels, dtype=np.int64))

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
