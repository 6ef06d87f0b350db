"""Larger inputs: CIFAR-format 32x32x3 data, DSN's GTSRB network, serial numbers scaled with the input,
and the scale training options (precision, memory format)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepserial.artifacts import load_model
from deepserial.cli import main
from deepserial.data import TensorData, load_dataset
from deepserial.data.synthetic import cifar_digits, write_cifar_digits
from deepserial.errors import ConfigError, GeometryError
from deepserial.schemes.null_embedding import transform
from deepserial.serial import SerialNumber, stamp
from deepserial.training import TrainConfig, autocast_dtype, fit, supervised_loss, use_channels_last
from deepserial.workflow import serial_from_licence


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar_digits(tmp_path_factory.mktemp("cifar-digits"))


def test_cifar_digits_are_read_by_the_cifar_loader(cifar_dir: Path) -> None:
    b = load_dataset(str(cifar_dir))
    assert "CIFAR-10 python pickles" in b.source
    assert tuple(b.train.x.shape) == (4000, 3, 32, 32) and b.test is not None and len(b.test) == 1000
    assert b.num_classes == 10 and float(b.train.x.min()) >= 0 and float(b.train.x.max()) <= 1
    # the colour channels differ (not a gray image copied three times) and every class is present
    assert float((b.train.x[:, 0] - b.train.x[:, 1]).abs().mean()) > 0.05
    assert set(b.train.y.tolist()) == set(range(10))
    with open(cifar_dir / "batches.meta", "rb") as f:
        assert pickle.load(f)[b"label_names"] == [str(d).encode() for d in range(10)]
    x, y = cifar_digits(seed=0)
    x2, _ = cifar_digits(seed=0)
    assert np.array_equal(x, x2) and len(y) == 5000  # deterministic per seed


def test_dsn_on_32x32_colour_with_the_gtsrb_net_and_a_scaled_serial_number(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    data = str(cifar_dir)
    assert main(["keygen", "--out", "o.pem"]) == 0
    assert (
        main(
            [
                "teacher",
                "--dataset",
                data,
                "--arch",
                "dsn_gtsrb",
                "--limit",
                "300",
                "--epochs",
                "1",
                "-q",
                "--out",
                "t.safetensors",
            ]
        )
        == 0
    )
    # a batch of 16: the shipped recipe's mining round scores ~360 keys on the first 32 images of a batch,
    # most of this test's time on the GTSRB net; 16 still draws every kind of invalid input each step
    assert (
        main(
            [
                "issue",
                "--customer",
                "c",
                "--teacher",
                "t.safetensors",
                "--key",
                "o.pem",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "-q",
                "--pixels-per-bit",
                "2",
                "--out",
                "c.safetensors",
            ]
        )
        == 0
    )
    key = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    m = load_model("c.safetensors")
    sn = SerialNumber.from_product_key(key)
    assert sn == serial_from_licence("c.licence.json")
    g = sn.geometry
    assert (g.height, g.width, g.scale) == (6, 6, 2) and m.manifest["arch"] == "dsn_gtsrb"
    assert (g.top + g.pixel_height, g.left + g.pixel_width) == (32, 32)  # the bottom-right corner, 12x12 pixels
    x = load_dataset(data).test.x[:4]
    assert m.model(stamp(x, g, sn.as_tensor())).shape == (4, 10)
    assert (
        main(
            [
                "issue",
                "--customer",
                "d",
                "--teacher",
                "t.safetensors",
                "--key",
                "o.pem",
                "--epochs",
                "1",
                "-q",
                "--pixels-per-bit",
                "0",
                "--out",
                "d.safetensors",
            ]
        )
        == 2
    )
    assert "--pixels-per-bit" in capsys.readouterr().err
    assert not Path("d.safetensors").exists()


def test_reproduce_dsn_settings_are_for_user_data_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["reproduce", "dsn", "--dataset", "mnist5k", "--arch", "dsn_gtsrb", "--out", str(tmp_path)]) == 2
    assert "path to your data" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_null_embedding_pattern_scales_with_the_input() -> None:
    sig = bytes(range(64))
    small = transform(sig, (3, 48, 48), 10)
    big = transform(sig, (3, 224, 224), 10, scale=4)
    assert small.geometry.scale == 1 and (big.geometry.pixel_height, big.geometry.pixel_width) == (24, 24)
    assert np.array_equal(small.bits, big.bits)  # the same 36 bits, 16 pixels each
    with pytest.raises(GeometryError, match="pixel pattern does not fit"):
        transform(sig, (3, 32, 32), 10, scale=6)


def test_precision_and_memory_format_follow_the_device() -> None:
    cpu = torch.device("cpu")
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))
    assert autocast_dtype(TrainConfig(), cpu) is None  # auto: fp32 on CPU
    assert autocast_dtype(TrainConfig(precision="bf16"), cpu) is torch.bfloat16
    assert not use_channels_last(TrainConfig(), net, cpu)
    assert use_channels_last(TrainConfig(channels_last=True), net, cpu)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    # bf16 autocast and channels_last run through the loop on CPU too (forced), and still learn
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()
    torch.manual_seed(0)
    log = fit(
        net,
        TensorData(x, y),
        supervised_loss,
        TrainConfig(epochs=15, batch_size=32, lr=1e-2, precision="bf16", channels_last=True, progress=False),
    )
    assert log.epochs[-1]["acc"] > 80.0
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_option_reaches_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "teacher",
                "--limit",
                "300",
                "--epochs",
                "1",
                "-q",
                "--channels-last",
                "--precision",
                "bf16",
                "--out",
                "t.safetensors",
            ]
        )
        == 0
    )
    assert load_model("t.safetensors").model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert (
        main(["teacher", "--limit", "300", "--epochs", "1", "-q", "--precision", "fp16", "--out", "u.safetensors"]) == 2
    )
    assert not Path("u.safetensors").exists()
