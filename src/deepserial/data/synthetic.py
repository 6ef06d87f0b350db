"""Colour 32x32 data in CIFAR-10's file format, made from the embedded real digits.

No CIFAR-10 or GTSRB can be fetched here, yet DSN's GTSRB network and the CIFAR reader need 32x32x3
inputs to be exercised end to end. :func:`write_cifar_digits` writes mnist5k's 5,000 real handwritten
digits as 32x32 colour images (each digit in a random bright colour, at a random offset, on a random
dark background with noise) in the layout of the CIFAR-10 "python version" (``data_batch_1``,
``test_batch``, ``batches.meta``), so ``--dataset DIR`` reads it through the same loader as a real
CIFAR-10 download. It is a stand-in for shape and format, not a claim about CIFAR-10 accuracy.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from deepserial.data.loading import load_dataset
from deepserial.errors import DatasetError
from deepserial.identity import atomic_write

LABEL_NAMES = [str(d) for d in range(10)]


def cifar_digits(side: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """mnist5k as ``(5000, 3, side, side)`` uint8 colour images and their labels (deterministic per seed)."""
    if side < 28:
        raise DatasetError(f"side {side} is smaller than the 28x28 digits; use 28 or more")
    bundle = load_dataset("mnist5k")
    parts = [bundle.train] + ([bundle.test] if bundle.test is not None else [])
    digits = np.concatenate([p.x.numpy()[:, 0] for p in parts])  # (N, 28, 28) in [0, 1]
    labels = np.concatenate([p.y.numpy() for p in parts])
    n = len(digits)
    rng = np.random.default_rng(seed)
    fg = rng.uniform(0.55, 1.0, size=(n, 3, 1, 1))
    bg = rng.uniform(0.0, 0.35, size=(n, 3, 1, 1))
    img = np.broadcast_to(bg, (n, 3, side, side)) + rng.normal(0.0, 0.04, size=(n, 3, side, side))
    img = img.copy()
    offs = rng.integers(0, side - 28 + 1, size=(n, 2))
    for i in range(n):
        r, c = offs[i]
        ink = digits[i][None]
        patch = img[i, :, r : r + 28, c : c + 28]
        img[i, :, r : r + 28, c : c + 28] = patch * (1 - ink) + fg[i] * ink
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_cifar_digits(directory: str | Path, test_fraction: float = 0.2, side: int = 32, seed: int = 0) -> Path:
    """Write :func:`cifar_digits` as CIFAR-10 python pickles in ``directory``; returns the directory.

    The first ``1 - test_fraction`` of a seeded permutation is ``data_batch_1``, the rest ``test_batch``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test fraction must be in (0, 1), got {test_fraction}")
    x, y = cifar_digits(side, seed)
    order = np.random.default_rng(seed + 1).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    out = Path(directory)
    for name, idx in (("data_batch_1", order[n_test:]), ("test_batch", order[:n_test])):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in y[idx]],
            b"data": x[idx].reshape(len(idx), -1),
            b"filenames": [f"{i}.png".encode() for i in idx],
        }
        atomic_write(out / name, pickle.dumps(batch, protocol=2))
    meta = {
        b"label_names": [s.encode() for s in LABEL_NAMES],
        b"num_cases_per_batch": len(x) - n_test,
        b"num_vis": 3 * side * side,
    }
    atomic_write(out / "batches.meta", pickle.dumps(meta, protocol=2))
    return out
