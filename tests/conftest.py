"""Shared fixtures: one tiny owner key, teacher and customer model for the whole test session.

Building them costs a few seconds (mnist5k limited to 600 samples, two epochs each), so they are
made once per session with the Python API. Tests must treat the files as read-only: copy a file to
``tmp_path`` before tampering with it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ed25519

from deepserial import workflow
from deepserial.artifacts import LoadedModel, load_model, save_model
from deepserial.data import Splits
from deepserial.identity import OwnerIdentity
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.training import TrainConfig
from deepserial.workflow import DataSpec


def _keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next allocation instead of handing it back to the kernel.

    By default every tensor over 128 KiB-32 MiB (a batch's activations) is a fresh ``mmap`` and every
    free a ``munmap``: the next step faults the same pages in again. On the 2-core runner that was a
    quarter of the CPU time of training tests (``deepserial issue``, 2 epochs on mnist5k: 2.4 million
    page faults, 7 s of 24 s in the kernel). Only where memory comes from changes, not a single
    value: set here for this process (``mallopt``) and, through the environment, for every
    ``python -m deepserial`` and ``torchrun`` the tests start. Elsewhere than glibc, nothing changes.
    """
    big = 2**31 - 1  # nothing under 2 GiB is served by mmap, and the heap is never trimmed
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(big))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(big))
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, big)
    mallopt(m_trim_threshold, big)


_keep_freed_memory()


CUSTOMER = "acme"
DATA_LIMIT = 600
VENDOR_TIME = "1764547200"  # SOURCE_DATE_EPOCH of the vendor's licence (2025-12-01): a fixed serial number


def fixed_identity(seed: int) -> OwnerIdentity:
    """A deterministic owner key pair (Ed25519 signatures are deterministic too): tests whose verdicts
    depend on the serial number or key derived from a signature get the same one on every run, so a
    statistical assertion cannot pass here and fail in CI on a luckless draw."""
    priv = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return OwnerIdentity(priv, priv.public_key())


@dataclass(frozen=True)
class Vendor:
    """Everything a vendor holds after ``keygen``, ``teacher`` and one ``issue`` (all read-only)."""

    root: Path
    customer_name: str
    identity: OwnerIdentity
    key_path: Path
    teacher_path: Path
    customer_path: Path
    licence_path: Path
    serial: SerialNumber
    product_key: str
    splits: Splits

    def teacher(self) -> LoadedModel:
        return load_model(self.teacher_path)

    def customer(self) -> LoadedModel:
        return load_model(self.customer_path)


@pytest.fixture(scope="session")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vendor]:
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convnets on a busy 2-core runner: one thread is faster and steadier
    mp = pytest.MonkeyPatch()
    mp.setenv("SOURCE_DATE_EPOCH", VENDOR_TIME)  # with the fixed key: the same serial number every run
    try:
        root = tmp_path_factory.mktemp("vendor")
        identity = fixed_identity(7)
        key_path, _ = identity.save(root / "owner.pem")
        quick = TrainConfig(epochs=2, batch_size=128, progress=False)
        trained = workflow.train_teacher(DataSpec("mnist5k", seed=0, limit=DATA_LIMIT), quick)
        teacher_path = root / "teacher.safetensors"
        save_model(teacher_path, trained.model, trained.manifest)
        issued = workflow.issue(load_model(teacher_path), identity, CUSTOMER, size=(3, 3), train=quick)
        customer_path = root / "customer-acme.safetensors"
        licence_path = root / "customer-acme.licence.json"
        workflow.save_issued(issued, customer_path, licence_path, identity)
    finally:
        mp.undo()
        torch.set_num_threads(old_threads)
    yield Vendor(
        root,
        CUSTOMER,
        identity,
        key_path,
        teacher_path,
        customer_path,
        licence_path,
        issued.serial,
        issued.product_key,
        issued.splits,
    )


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Every test runs with one intra-op thread: the tests' tiny networks only lose from more, and on a
    busy 2-core runner they lose a lot (OpenMP workers spinning against other processes). Restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class LockedNet(torch.nn.Module):
    """A perfectly serial-locked stand-in for a DSN customer model: the base network's answer on the
    unstamped image when the serial-number region holds exactly ``bits``, a fixed function of the
    unstamped image (right about one time in ten) otherwise.

    Tests of tracing and serving use it so that they check the statistics and the plumbing, not how well
    a two-epoch DSN student has learned its lock (the benchmarks measure real customer models). Both
    answers ignore what is stamped in the region (an mnist5k corner is background), so which images are
    right with and without the key does not depend on the random owner key a test generates: a trace of
    it comes out the same on every run (an earlier stand-in that fed the stamped image to a teacher never
    trained with stamps dropped the right licence in about one trace in 200)."""

    def __init__(self, base: torch.nn.Module, serial: SerialNumber) -> None:
        super().__init__()
        self.base = base
        g = serial.geometry
        self.rows, self.cols = slice(g.top, g.top + g.height), slice(g.left, g.left + g.width)
        self.register_buffer("bits", serial.as_tensor())
        self.register_buffer("scramble", torch.randn(28 * 28, 10, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        match = (x[:, :, self.rows, self.cols] == self.bits).flatten(1).all(1)
        clean = x.clone()
        clean[:, :, self.rows, self.cols] = 0
        wrong = clean.flatten(1)[:, : self.scramble.shape[0]] @ self.scramble * 10
        return torch.where(match[:, None], self.base(clean), wrong)


class FingerprintedNet(torch.nn.Module):
    """A stand-in for a fingerprinted customer model: on a fingerprint query (raw, or with anything
    stamped in the serial-number region) the codeword's symbol, elsewhere the base network's answer.

    Tests of tracing use it to check the statistics and the plumbing; the learnt fingerprint of real
    customer models is measured by ``reproduce tracing`` (and, briefly, in test_fingerprint.py)."""

    def __init__(self, base: torch.nn.Module, fp: Any, geometry: SerialGeometry) -> None:
        super().__init__()
        self.base = base
        self.geometry = geometry
        self.register_buffer("queries", self._blank(fp.queries).flatten(1))
        self.register_buffer("codeword", fp.codeword.clone())

    def _blank(self, x: torch.Tensor) -> torch.Tensor:
        return stamp(x, self.geometry, torch.zeros(self.geometry.height, self.geometry.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        dist = torch.cdist(self._blank(x).flatten(1), self.queries)
        near, idx = dist.min(1)
        hit = near < 1e-3
        fp = torch.nn.functional.one_hot(self.codeword[idx], out.shape[1]).float() * 20
        return torch.where(hit[:, None], fp, out)


@pytest.fixture(scope="session")
def strong_teacher() -> LoadedModel:
    """A teacher good enough that a key-locked copy answers clearly better with its key (~78% on 2,000
    mnist5k samples, 4 epochs, a few seconds)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = workflow.train_teacher(
            DataSpec("mnist5k", seed=0, limit=2000), TrainConfig(epochs=4, batch_size=128, progress=False)
        )
    finally:
        torch.set_num_threads(old)
    return LoadedModel(t.model.eval(), t.manifest)
