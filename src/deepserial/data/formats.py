"""Readers for the on-disk formats users bring their own data in.

Each reader turns one format into :class:`RawArrays` (numpy, NCHW, uint8 or float in ``[0, 1]``) and
raises :class:`~deepserial.errors.DatasetError` with a one-line message when the files are missing,
truncated or not what their names claim. Conversion to torch and the checks common to every format live
in :mod:`deepserial.data.loading`, so each reader only has to know its own format.

Supported formats:

* IDX (MNIST, Fashion-MNIST, EMNIST, KMNIST...): ``train-images-idx3-ubyte[.gz]`` and friends.
* CIFAR-10 / CIFAR-100 "python version" pickles.
* A directory of class folders of images (GTSRB style), optionally split into ``train/`` and ``test/``.
* A ``.npz`` with arrays ``x`` and ``y`` (optionally ``x_test`` and ``y_test``).
"""

from __future__ import annotations

import gzip
import math
import pickle
import re
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepserial.errors import DatasetError

ACCEPTED_FORMATS = (
    "a directory of IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]), "
    "a directory of CIFAR-10/100 python pickles, a directory of class folders of images, "
    "or a .npz with arrays x and y"
)


@dataclass(frozen=True)
class RawArrays:
    """A data set as numpy arrays, before conversion to torch.

    Images are ``(N, C, H, W)``, either ``uint8`` (0-255) or floating point in ``[0, 1]``; labels are
    ``int64`` of shape ``(N,)``. ``num_classes`` is set when the format knows it (class folders), otherwise
    ``None`` and the caller derives it from the labels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str
    num_classes: int | None = None


def _entries(directory: Path) -> list[Path]:
    """The entries of ``directory``, sorted, or a DatasetError when it cannot be listed."""
    try:
        return sorted(directory.iterdir())
    except OSError as exc:
        raise DatasetError(f"cannot list {directory}: {_one_line(exc)}; check the path and its permissions") from exc


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's text, so wrapped errors stay one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------- IDX

# IDX type codes (third magic byte) -> big-endian numpy dtype, per the IDX specification.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_IDX_NAME = re.compile(
    r"^(?P<prefix>.*?)(?P<split>train|t10k|test)-(?P<kind>images|labels)[-.]idx(?P<ndim>[13])-ubyte"
    r"(?P<gz>\.gz)?$"
)


def read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip data (decided by content, not by name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {_one_line(exc)}; check the path and its permissions") from exc
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path} is a damaged or truncated gzip file ({_one_line(exc)}); download it again") from exc


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array of its declared shape and a native dtype.

    Validates the magic number, the type code and that the data length matches the declared dimensions
    exactly, because a silently short file would otherwise yield misaligned images and labels.
    """
    data = read_maybe_gzip(path)
    if len(data) < 4:
        raise DatasetError(f"{path} has only {len(data)} bytes, not an IDX header; the file is truncated")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path} has magic 0x{data[:4].hex()} which is not an IDX magic number (0x0000TTDD); "
            "point at real IDX files such as train-images-idx3-ubyte"
        )
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{path} has an incomplete IDX header ({ndim} dimensions); the file is truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = math.prod(dims)
    expected = count * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise DatasetError(
            f"{path} holds {actual} data bytes but its header declares {dims} ({expected} bytes); "
            "the file is truncated, download it again"
        )
    if actual > expected:
        raise DatasetError(
            f"{path} has {actual - expected} bytes after the {dims} array its header declares; "
            "the file is corrupt or not IDX, download it again"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _idx_sets(directory: Path) -> dict[str, dict[tuple[str, str], Path]]:
    """IDX files in ``directory`` grouped by name prefix (``""`` for MNIST, ``"emnist-digits-"`` ...).

    Keys of the inner dict are ``("train" | "test", "images" | "labels")``. Uncompressed files win over
    ``.gz`` ones when both exist, as they are faster to read.
    """
    sets: dict[str, dict[tuple[str, str], Path]] = {}
    for path in _entries(directory):
        match = _IDX_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        split = "train" if match["split"] == "train" else "test"
        key = (split, match["kind"])
        files = sets.setdefault(match["prefix"], {})
        if key not in files or (files[key].suffix == ".gz" and match["gz"] is None):
            files[key] = path
    return {prefix: files for prefix, files in sets.items() if ("train", "images") in files}


def has_idx(directory: Path) -> bool:
    """Whether ``directory`` holds at least one set of IDX training images."""
    return bool(_idx_sets(directory))


def idx_prefix_of(path: Path) -> str | None:
    """The IDX set ``path`` designates inside its parent directory, or ``None``.

    Lets users pick one set of a multi-set directory (EMNIST) by naming one of its files, such as
    ``.../emnist-digits-train-images-idx3-ubyte.gz``, or its prefix, such as ``.../emnist-digits``.
    """
    match = _IDX_NAME.match(path.name)
    if path.is_file() and match is not None:
        prefix = match["prefix"]
    elif not path.exists() and path.parent.is_dir():
        prefix = path.name + "-"
    else:
        return None
    return prefix if prefix in _idx_sets(path.parent) else None


def load_idx(directory: Path, prefix: str | None = None) -> RawArrays:
    """Load MNIST-family IDX files from ``directory``.

    ``prefix`` selects one set when the directory holds several (EMNIST ships ``emnist-balanced-``,
    ``emnist-digits-``, ...). EMNIST stores images transposed relative to MNIST; they are returned as
    stored, not transposed, so models see exactly what is in the files.
    """
    sets = _idx_sets(directory)
    if prefix is not None:
        if prefix not in sets:
            raise DatasetError(f"no IDX files named {prefix}train-images-idx3-ubyte[.gz] in {directory}")
        chosen = prefix
    elif len(sets) == 1:
        chosen = next(iter(sets))
    else:
        names = ", ".join(str(directory / p.rstrip("-")) for p in sorted(sets))
        raise DatasetError(f"{directory} holds several IDX data sets; pass one of them as a path prefix: {names}")
    files = sets[chosen]
    if ("train", "labels") not in files:
        raise DatasetError(
            f"{files[('train', 'images')]} has no matching {chosen}train-labels-idx1-ubyte[.gz] in "
            f"{directory}; add the labels file"
        )
    x_train, y_train = _idx_pair(files[("train", "images")], files[("train", "labels")])
    x_test = y_test = None
    if ("test", "images") in files or ("test", "labels") in files:
        if ("test", "images") not in files or ("test", "labels") not in files:
            present = files.get(("test", "images")) or files.get(("test", "labels"))
            raise DatasetError(
                f"{present} has no matching test images/labels file in {directory}; add it or remove {present}"
            )
        x_test, y_test = _idx_pair(files[("test", "images")], files[("test", "labels")])
    where = f"{directory / chosen}*" if chosen else str(directory)
    return RawArrays(x_train, y_train, x_test, y_test, source=f"IDX files in {where}")


def _idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 1, H, W)`` and labels ``(N,)`` from one images file and one labels file."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DatasetError(f"{images_path} holds an array of shape {images.shape}, expected (N, H, W) images (idx3)")
    if labels.ndim != 1:
        raise DatasetError(f"{labels_path} holds an array of shape {labels.shape}, expected (N,) labels (idx1)")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{labels_path.name} has {labels.shape[0]} labels but {images_path.name} has {images.shape[0]} "
            "images; use files that belong together"
        )
    return images[:, None, :, :], labels


# -------------------------------------------------------------------------------------------------- CIFAR


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals a CIFAR pickle needs (numpy array reconstruction).

    Defence in depth against malicious pickles, not a guarantee: only open pickles from sources you trust.
    """

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global; refuse everything else rather than run arbitrary code."""
        if (module, name) not in self._ALLOWED:
            raise DatasetError(
                f"refusing to unpickle {module}.{name} from a CIFAR file (only numpy arrays are expected); "
                "use the official CIFAR python pickles or convert your data to .npz"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _unpickle(path: Path) -> dict[bytes, Any]:
    """Load one CIFAR pickle (``encoding="bytes"``, as the files were written by Python 2)."""
    try:
        with path.open("rb") as handle:
            obj = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as exc:  # any failure inside a foreign pickle is a data problem
        raise DatasetError(
            f"cannot read CIFAR pickle {path} ({_one_line(exc)}); download the python version again"
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict; check the file")
    return obj


def _field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    """``batch[key]`` accepting bytes keys (original files) and str keys (files re-pickled by Python 3)."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    found = ", ".join(sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch))
    raise DatasetError(f"{path} has no {key!r} entry (found: {found}); it is not a CIFAR batch file")


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, S, S)`` uint8 and labels ``(N,)`` from one CIFAR batch file."""
    batch = _unpickle(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, label_key, path))
    side = math.isqrt(data.shape[1] // 3) if data.ndim == 2 else 0
    if data.dtype != np.uint8 or data.ndim != 2 or 3 * side * side != data.shape[1] or side == 0:
        raise DatasetError(
            f"{path} has data of dtype {data.dtype} and shape {data.shape}; CIFAR batches hold uint8 rows of "
            "3*S*S pixels (3072 for 32x32)"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DatasetError(f"{path} has {labels.size} {label_key} for {data.shape[0]} images; the file is corrupt")
    return data.reshape(-1, 3, side, side), labels


def has_cifar(directory: Path) -> bool:
    """Whether ``directory`` looks like extracted CIFAR-10 or CIFAR-100 python pickles."""
    return (directory / "data_batch_1").is_file() or (directory / "train").is_file()


def load_cifar(directory: Path) -> RawArrays:
    """Load CIFAR-10 (``data_batch_*``, ``test_batch``) or CIFAR-100 (``train``, ``test``, fine labels).

    Pickles can run arbitrary code when loaded. Only load CIFAR directories from a source you trust; the
    reader refuses pickled globals other than numpy's array constructors, which blocks the common attacks
    but is not a security guarantee.
    """
    if (directory / "data_batch_1").is_file():
        kind, label_key, test_name = "CIFAR-10", "labels", "test_batch"
        train_files = sorted(
            (p for p in directory.glob("data_batch_*") if p.name[len("data_batch_") :].isdigit()),
            key=lambda p: int(p.name[len("data_batch_") :]),
        )
    else:
        kind, label_key, test_name = "CIFAR-100", "fine_labels", "test"
        train_files = [directory / "train"]
    parts = [_cifar_batch(p, label_key) for p in train_files]
    shapes = {x.shape[1:] for x, _ in parts}
    if len(shapes) != 1:
        raise DatasetError(f"CIFAR batches in {directory} have different image shapes {sorted(shapes)}")
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    x_test = y_test = None
    if (directory / test_name).is_file():
        x_test, y_test = _cifar_batch(directory / test_name, label_key)
    return RawArrays(x_train, y_train, x_test, y_test, source=f"{kind} python pickles in {directory}")


# ---------------------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff"})


def _class_dirs(root: Path) -> list[Path]:
    """Visible subdirectories of ``root``, numerically sorted when all names are integers, else by name."""
    dirs = [p for p in _entries(root) if p.is_dir() and not p.name.startswith(".")]
    if dirs and all(p.name.isdigit() for p in dirs):
        return sorted(dirs, key=lambda p: (int(p.name), p.name))
    return sorted(dirs, key=lambda p: p.name)


def _images_in(directory: Path) -> list[Path]:
    """Image files directly inside ``directory`` (not recursive), sorted by name."""
    return [
        p
        for p in _entries(directory)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]


def has_class_folders(directory: Path) -> bool:
    """Whether ``directory`` has subdirectories that could be class folders (or ``train``/``test``)."""
    return bool(_class_dirs(directory))


def load_image_folders(root: Path) -> RawArrays:
    """Load ``root/<class>/<image>`` (or ``root/train/<class>/...`` plus ``root/test/<class>/...``).

    Classes are the folder names in sorted order (numeric order when every name is an integer); label
    ``k`` is the ``k``-th class of the training folders, whatever the folder is called. Images stay
    grayscale when every image is grayscale, otherwise all become RGB, and every image is resized
    (bilinear) to the most common size so that they stack into one tensor.
    """
    from PIL import Image, UnidentifiedImageError

    split_layout = (root / "train").is_dir() and (root / "test").is_dir()
    train_root = root / "train" if split_layout else root
    classes = _class_dirs(train_root)
    if len(classes) < 2:
        raise DatasetError(
            f"{train_root} has {len(classes)} class folder(s); put each class's images in its own subfolder "
            "(at least 2)"
        )
    names = [c.name for c in classes]
    label_of = {name: k for k, name in enumerate(names)}
    train_files: list[tuple[Path, int]] = []
    for class_dir in classes:
        images = _images_in(class_dir)
        if not images:
            raise DatasetError(
                f"class folder {class_dir} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "add images or remove the folder"
            )
        train_files.extend((p, label_of[class_dir.name]) for p in images)
    test_files: list[tuple[Path, int]] = []
    if split_layout:
        for class_dir in _class_dirs(root / "test"):
            if class_dir.name not in label_of:
                raise DatasetError(
                    f"test class folder {class_dir} has no counterpart in {train_root}; use the same class "
                    "folder names in train/ and test/"
                )
            test_files.extend((p, label_of[class_dir.name]) for p in _images_in(class_dir))

    modes: list[str] = []
    sizes: list[tuple[int, int]] = []
    for path, _ in train_files + test_files:
        try:
            with Image.open(path) as image:
                modes.append(image.mode)
                sizes.append(image.size)
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"cannot read image {path} ({_one_line(exc)}); remove or replace it") from exc
    mode = "L" if all(m in ("L", "1") for m in modes) else "RGB"
    width, height = Counter(sizes).most_common(1)[0][0]
    channels = 1 if mode == "L" else 3

    def read_all(files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((len(files), height, width, channels), dtype=np.uint8)
        for i, (path, _) in enumerate(files):
            try:
                with Image.open(path) as image:
                    converted = image.convert(mode)
                    if converted.size != (width, height):
                        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
                    x[i] = np.asarray(converted).reshape(height, width, channels)
            except (OSError, UnidentifiedImageError) as exc:
                raise DatasetError(f"cannot read image {path} ({_one_line(exc)}); remove or replace it") from exc
        y = np.array([label for _, label in files], dtype=np.int64)
        return x.transpose(0, 3, 1, 2), y

    x_train, y_train = read_all(train_files)
    x_test = y_test = None
    if test_files:
        x_test, y_test = read_all(test_files)
    layout = "train/ and test/ class folders" if split_layout else "class folders"
    return RawArrays(x_train, y_train, x_test, y_test, source=f"{layout} of images in {root}", num_classes=len(names))


# -------------------------------------------------------------------------------------------------- npz


def npz_images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``x`` as ``(N, C, H, W)``: adds a channel to ``(N, H, W)`` and moves a trailing 1/3 channel axis."""
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4:
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            return x.transpose(0, 3, 1, 2)
        return x
    raise DatasetError(
        f"{path}: array {key!r} has shape {x.shape}; store images as (N, H, W), (N, H, W, C) or (N, C, H, W)"
    )


def load_npz(path: Path) -> RawArrays:
    """Load a ``.npz`` with ``x`` and ``y`` (and optionally ``x_test`` and ``y_test``).

    Pickled object arrays are refused (``allow_pickle=False``), so an ``.npz`` is safe to open.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read {path} as .npz ({_one_line(exc)}); save it with numpy.savez") from exc
    found = ", ".join(sorted(arrays)) or "nothing"
    for key in ("x", "y"):
        if key not in arrays:
            raise DatasetError(
                f"{path} has no array {key!r} (found: {found}); save it with numpy.savez(path, x=images, y=labels)"
            )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DatasetError(f"{path} has only one of x_test and y_test (found: {found}); store both or neither")
    x_test = y_test = None
    if "x_test" in arrays:
        x_test, y_test = npz_images(arrays["x_test"], path, "x_test"), arrays["y_test"]
    return RawArrays(npz_images(arrays["x"], path, "x"), arrays["y"], x_test, y_test, source=f"numpy archive {path}")
