"""Bring your own model and data: a small ResNet of your own on CIFAR-format data, protected end to end.

Everything goes through the public API (``import deepserial as ds``):

1. your network: :class:`TinyResNet`, a plain ``nn.Module`` whose last layer is ``nn.Linear`` ``fc``.
   ``ds.register_model`` makes it available by name; deepserial splits it there with
   ``ds.as_split_net`` into features (DSN's Ge, the activations DeepSigns reads) and classifier (Gy);
2. your data on disk: a tiny CIFAR-10 "python version" folder (``data_batch_1``, ``test_batch``,
   ``batches.meta``), the format ``--dataset DIR`` and :func:`deepserial.load_dataset` read. Its toy
   images (a colour per class, stripes, noise) stand in for yours;
3. DSN: train a teacher, issue a customer model locked by a serial number, evaluate it with and
   without the number (and with wrong ones);
4. ownership: fine-tune the teacher so its weights carry the owner's watermark (Uchida et al.'s,
   64 bits derived from the owner's signature) and verify it: a verdict with a p-value. Any
   registered scheme goes the same way (``ds.list_schemes()``); DeepSigns, for one, writes its bits
   into the activations of the split's features.

Run it (under a minute of CPU time with the defaults; more data and epochs give better models)::

    python examples/byo_resnet_cifar.py [--train 600] [--side 32] [--width 8] [--epochs 6] [--student-epochs 24]
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import deepserial as ds

ARCH = "tiny_resnet"


# ----- 1. the user's network: nothing deepserial-specific in it --------------------------------------
class Block(nn.Module):
    """A ResNet basic block (He et al. 2016): two 3x3 convolutions with batch norm and a skip."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class TinyResNet(nn.Module):
    """A small ResNet for 32x32 colour images: stem, three stages (``width``, 2x, 4x channels), pooling, ``fc``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(Block(width, width), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def build_tiny_resnet(input_shape: tuple[int, int, int], num_classes: int, width: int = 16) -> nn.Module:
    """The builder deepserial calls (to train, and to rebuild a saved model): a TinyResNet sized to the data."""
    return TinyResNet(input_shape[0], num_classes, width)


# ----- 2. the user's data, written as CIFAR-10 python pickles ------------------------------------------
def write_cifar10(
    directory: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Path:
    """Write uint8 images ``(N, 3, S, S)`` and labels in CIFAR-10's "python version" layout."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("data_batch_1", x_train, y_train), ("test_batch", x_test, y_test)):
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": x.reshape(len(x), -1)}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [str(c).encode() for c in range(10)], b"num_cases_per_batch": len(x_train)}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return directory


def make_images(n: int, side: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` toy colour images ``(n, 3, side, side)`` uint8 of 10 classes, and their labels: the stand-in
    for your data. Class k is a colour of its own, shaded, with stripes of random phase and pixel noise,
    so a small network learns it in an epoch or two and the example runs in seconds."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).uniform(0.15, 0.85, size=(10, 3))
    y = rng.integers(0, 10, size=n)
    rows = np.arange(side)[None, :, None] / side
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * rows + rng.uniform(0, 1, size=(n, 1, 1))))
    shade = rng.uniform(0.7, 1.0, size=(n, 1, 1, 1))
    img = palette[y][:, :, None, None] * shade * (0.75 + 0.25 * stripes[:, None])
    img = img + rng.normal(0, 0.06, size=(n, 3, side, side))
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), y.astype(np.int64)


def make_cifar_folder(directory: Path, n_train: int, n_test: int, side: int = 32, seed: int = 0) -> Path:
    """A tiny CIFAR-10 folder of ``n_train`` + ``n_test`` toy images (see :func:`make_images`)."""
    x, y = make_images(n_train + n_test, side, seed)
    return write_cifar10(directory, x[:n_train], y[:n_train], x[n_train:], y[n_train:])


# ----- 3 and 4. protect it ---------------------------------------------------------------------------
@dataclass
class Protected:
    """What the walk-through produced: the teacher's accuracy, the customer model's DSN report
    (``valid_sn_acc``, ``raw_acc``, ``wrong_sn_mean``, ...), its product key and the watermark verdict."""

    teacher_acc: float
    dsn: dict[str, Any]
    product_key: str
    verdict: Any  # ds.Verdict


def protect(
    workdir: str | Path,
    *,
    n_train: int = 600,
    n_test: int = 200,
    side: int = 32,
    width: int = 8,
    epochs: int = 6,
    student_epochs: int = 24,
    batch_size: int = 16,
    serial_size: tuple[int, int] = (3, 3),
    wrong_samples: int = 50,
    owner: ds.OwnerIdentity | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Protected:
    """Write the data, register the network, then teacher -> customer model -> evaluation -> watermark.

    ``n_train`` / ``n_test`` images of ``side`` pixels; a TinyResNet ``width`` channels wide; ``epochs`` for
    the teacher and the watermark, ``student_epochs`` for the customer model; a serial number of
    ``serial_size`` bits (the DSN paper's 3x3: on this small network a 6x6 key, the product default,
    did not lock within 24 epochs at 32x32), random wrong keys scored on ``wrong_samples`` test
    images; ``owner`` a fresh key pair unless given.
    """
    workdir = Path(workdir)
    folder = make_cifar_folder(workdir / "cifar", n_train, n_test, side, seed)
    # from here on "tiny_resnet" is a network name like "resnet18" (replace: a second run in one process)
    ds.register_model(ARCH, partial(build_tiny_resnet, width=width), replace=True)
    data = ds.DataSpec(str(folder), seed=seed)  # owner / attacker / test parts, recorded in every manifest
    owner = owner or ds.OwnerIdentity.generate()  # in practice: ds.OwnerIdentity.load("owner.pem")
    train = ds.TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, progress=progress)

    # DSN: the teacher stays with the vendor; the customer model answers only inputs stamped with its serial number
    t = ds.train_teacher(data, train, arch=ARCH)
    ds.save_model(workdir / "teacher.safetensors", t.model, t.manifest, owner=owner)
    teacher = ds.load_model(workdir / "teacher.safetensors")  # rebuilt by name through the registry
    student_train = ds.TrainConfig(epochs=student_epochs, batch_size=batch_size, seed=seed, progress=progress)
    acme = ds.issue(teacher, owner, "acme", size=serial_size, train=student_train)
    customer = ds.loaded(acme.student, acme.manifest)
    dsn = ds.evaluate_customer(customer, acme.serial, teacher=teacher, n_wrong=100, wrong_eval_samples=wrong_samples)

    # ownership: the owner's bits go into the weights of a convolution while the teacher is fine-tuned;
    # lam 0.1 (the paper: 0.01 over a whole training) embeds them in these few epochs
    wm_train = ds.TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, progress=progress)
    scheme = ds.get_scheme("uchida", {"bits": 64, "lam": 0.1})
    marked = ds.embed_watermark(scheme, owner, data, wm_train, base=teacher)
    verdict = ds.verify_watermark(marked.key, ds.ModuleSuspect(marked.model, teacher.input_shape), fpr=1e-3)
    return Protected(float(t.manifest["test_acc"]), dsn, acme.product_key, verdict)


def main(argv: list[str] | None = None) -> Protected:
    """Parse the sizes, run :func:`protect` in a temporary folder, print what came out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=600, help="training images written to the CIFAR folder")
    parser.add_argument("--test", type=int, default=200, help="test images written to the CIFAR folder")
    parser.add_argument("--side", type=int, default=32, help="image side in pixels (CIFAR-10: 32)")
    parser.add_argument("--width", type=int, default=8, help="channels of the TinyResNet's first stage")
    parser.add_argument("--epochs", type=int, default=6, help="teacher and watermark epochs")
    parser.add_argument("--student-epochs", type=int, default=24, help="customer-model epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = protect(
            tmp,
            n_train=args.train,
            n_test=args.test,
            side=args.side,
            width=args.width,
            epochs=args.epochs,
            student_epochs=args.student_epochs,
            seed=args.seed,
            progress=True,
        )
    print(f"teacher accuracy {out.teacher_acc:.1f}%; product key of acme: {out.product_key}")
    print(
        f"customer model: {out.dsn['valid_sn_acc']:.1f}% with its serial number, {out.dsn['raw_acc']:.1f}% without, "
        f"{out.dsn['wrong_sn_mean']:.1f}% with random wrong ones"
    )
    print(out.verdict.summary())
    return out


if __name__ == "__main__":
    main()
