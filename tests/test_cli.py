"""Tests of the ``deepserial`` command: in-process through ``cli.main`` (fast), plus the installed script.

Every user mistake must end with exit status 2, exactly one stderr line ``deepserial: error: ...`` that
names the problem, and no output file created or changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from conftest import VENDOR_TIME
from PIL import Image

from deepserial.artifacts import load_model, read_manifest
from deepserial.cli import main
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.schemes import dsn
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.training import predict_logits
from deepserial.workflow import REPORT_FIELDS, serial_from_licence

if TYPE_CHECKING:
    from conftest import Vendor

ERROR_PREFIX = "deepserial: error: "


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient passphrase, serial or data directory; run in an empty folder so defaults land there."""
    for name in ("DEEPSERIAL_PASSPHRASE", "DEEPSERIAL_SERIAL", "DEEPSERIAL_FASHION_MNIST_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def file_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (hidden temporaries included), by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_ok(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run a command that must succeed; returns its stdout."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, f"{argv} failed with {rc}: {err}"
    assert ERROR_PREFIX not in err
    return out


def run_err(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run a command that must fail as a user error; returns the one error line."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, f"{argv} returned {rc}; stdout {out!r}, stderr {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {err!r}"
    line = lines[0]
    assert line.startswith(ERROR_PREFIX), line
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def tensor_data_offset(raw: bytes) -> int:
    """Where the tensor bytes of a safetensors file start (after the 8-byte length and the JSON header)."""
    return 8 + int.from_bytes(raw[:8], "little")


def stamped_predictions(model_path: Path, serial: SerialNumber, x: torch.Tensor) -> tuple[list[int], list[float]]:
    m = load_model(model_path)
    probs = torch.softmax(predict_logits(m.model, stamp(x, serial.geometry, serial.as_tensor())), 1)
    conf, pred = probs.max(1)
    return pred.tolist(), conf.tolist()


def parse_json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.strip().splitlines()]


# ----- keygen ----------------------------------------------------------------------------------------
def test_keygen_writes_key_pair(capsys, tmp_path: Path) -> None:
    out = run_ok(capsys, ["keygen", "--out", str(tmp_path / "k.pem")])
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    assert b"-----BEGIN PRIVATE KEY-----" in priv.read_bytes()
    assert b"-----BEGIN PUBLIC KEY-----" in pub.read_bytes()
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    ident = OwnerIdentity.load(priv)
    assert ident.fingerprint() in out
    assert OwnerIdentity.load(pub).fingerprint() == ident.fingerprint()


def test_keygen_refuses_to_overwrite_without_force(capsys, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    run_ok(capsys, ["keygen", "--out", str(key)])
    before = file_digests(tmp_path)
    run_err(capsys, ["keygen", "--out", str(key)], "exists", "--force")
    assert file_digests(tmp_path) == before
    # The public half alone also blocks a new key pair (it would no longer match the private key).
    key.unlink()
    pub_only = file_digests(tmp_path)
    run_err(capsys, ["keygen", "--out", str(key)], "k.pub.pem", "--force")
    assert file_digests(tmp_path) == pub_only
    run_ok(capsys, ["keygen", "--out", str(key), "--force"])
    assert OwnerIdentity.load(key).fingerprint() == OwnerIdentity.load(tmp_path / "k.pub.pem").fingerprint()


def test_keygen_default_path_is_in_current_directory(capsys, tmp_path: Path) -> None:
    run_ok(capsys, ["keygen"])
    assert sorted(file_digests(tmp_path)) == ["owner.pem", "owner.pub.pem"]


def test_keygen_passphrase_encrypts_and_issue_with_wrong_passphrase_fails(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vendor: Vendor
) -> None:
    monkeypatch.setenv("MY_PASS", "correct horse battery staple")
    key = tmp_path / "enc.pem"
    run_ok(capsys, ["keygen", "--out", str(key), "--passphrase-env", "MY_PASS"])
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    assert (
        OwnerIdentity.load(key, "correct horse battery staple").fingerprint()
        == OwnerIdentity.load(tmp_path / "enc.pub.pem").fingerprint()
    )

    monkeypatch.setenv("BAD_PASS", "wrong horse")
    out, lic = tmp_path / "c.safetensors", tmp_path / "c.licence.json"
    before = file_digests(tmp_path)
    common = [
        "issue",
        "--customer",
        "acme",
        "--teacher",
        str(vendor.teacher_path),
        "--key",
        str(key),
        "--out",
        str(out),
        "--licence",
        str(lic),
        "--size",
        "3x3",
        "--epochs",
        "1",
        "-q",
    ]
    run_err(capsys, [*common, "--passphrase-env", "BAD_PASS"], "wrong passphrase")
    # Without any passphrase the key cannot be used either, and the message says how to give one.
    run_err(capsys, common, "encrypted", "passphrase")
    assert file_digests(tmp_path) == before


def test_keygen_unset_passphrase_variable_fails(capsys, tmp_path: Path) -> None:
    run_err(
        capsys,
        ["keygen", "--out", str(tmp_path / "k.pem"), "--passphrase-env", "UNSET_VAR_FOR_TEST"],
        "UNSET_VAR_FOR_TEST",
        "not set",
    )
    assert file_digests(tmp_path) == {}


def test_keygen_unknown_algorithm_fails(capsys, tmp_path: Path) -> None:
    run_err(capsys, ["keygen", "--out", str(tmp_path / "k.pem"), "--algorithm", "dsa"], "dsa")
    assert file_digests(tmp_path) == {}


# ----- teacher ---------------------------------------------------------------------------------------
def test_teacher_unknown_dataset_fails_without_output(capsys, tmp_path: Path) -> None:
    run_err(
        capsys,
        ["teacher", "--dataset", "no-such-data", "--out", str(tmp_path / "t.safetensors"), "--epochs", "1", "-q"],
        "no-such-data",
    )
    assert file_digests(tmp_path) == {}


def test_teacher_missing_fashion_mnist_says_how_to_install(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DEEPSERIAL_FASHION_MNIST_DIR", str(empty))
    run_err(
        capsys,
        ["teacher", "--dataset", "fashion-mnist", "--out", str(tmp_path / "t.safetensors"), "--epochs", "1", "-q"],
        "apt-get install -y dataset-fashion-mnist",
    )
    assert file_digests(tmp_path) == {}


def test_teacher_trains_records_limit_and_refuses_overwrite(capsys, tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    out = run_ok(capsys, ["teacher", "--out", str(path), "--limit", "200", "--epochs", "1", "-q"])
    assert str(path) in out and "test accuracy" in out
    man = read_manifest(path)
    assert man["role"] == "teacher" and man["arch"] == "dsn_mnist"
    assert man["dataset"]["name"] == "mnist5k" and man["dataset"]["limit"] == 200
    before = file_digests(tmp_path)
    run_err(capsys, ["teacher", "--out", str(path), "--limit", "200", "--epochs", "1", "-q"], "--force")
    assert file_digests(tmp_path) == before


def test_teacher_with_same_seed_is_reproducible(capsys, tmp_path: Path) -> None:
    """Two runs with --seed 0 (fresh processes start from different torch random states) give one model."""
    paths = []
    for state in (1, 2):
        torch.manual_seed(state)  # what a fresh process would have: some unrelated global random state
        path = tmp_path / f"t{state}.safetensors"
        run_ok(capsys, ["teacher", "--out", str(path), "--limit", "100", "--epochs", "0", "--seed", "0", "-q"])
        paths.append(path)
    a, b = (load_model(p).model.state_dict() for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----- predict ---------------------------------------------------------------------------------------
@pytest.fixture
def test_npz(tmp_path: Path, vendor: Vendor) -> tuple[Path, torch.Tensor]:
    x = vendor.splits.test.x[:16]
    path = tmp_path / "images.npz"
    np.savez(path, x=x.numpy())
    return path, x


def test_predict_with_product_key_matches_python(capsys, vendor: Vendor, test_npz) -> None:
    path, x = test_npz
    out = run_ok(
        capsys, ["predict", str(path), "--model", str(vendor.customer_path), "--serial", vendor.product_key, "--json"]
    )
    rows = parse_json_lines(out)
    pred, conf = stamped_predictions(vendor.customer_path, vendor.serial, x)
    assert [r["index"] for r in rows] == list(range(len(x)))
    assert [r["class"] for r in rows] == pred
    assert np.allclose([r["confidence"] for r in rows], conf, atol=2e-6)
    # The stamp really is applied: the unstamped model gives other probabilities.
    raw_conf = torch.softmax(predict_logits(vendor.customer().model, x), 1).max(1).values
    assert float((raw_conf - torch.tensor(conf)).abs().max()) > 1e-4


def test_predict_plain_output_and_key_from_environment(
    capsys, vendor: Vendor, test_npz, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, x = test_npz
    # Product keys are typed by people: lower case and no hyphens must work too.
    monkeypatch.setenv("DEEPSERIAL_SERIAL", vendor.product_key.lower().replace("-", ""))
    out = run_ok(capsys, ["predict", str(path), "--model", str(vendor.customer_path)])
    lines = [line.split("\t") for line in out.strip().splitlines()]
    pred, conf = stamped_predictions(vendor.customer_path, vendor.serial, x)
    assert [int(i) for i, _, _ in lines] == list(range(len(x)))
    assert [int(c) for _, c, _ in lines] == pred
    assert np.allclose([float(p) for _, _, p in lines], conf, atol=1e-4)


def one_char_typo(key: str, expect: SerialGeometry) -> str:
    """The key with one character (in the bits/checksum part) replaced, such that parsing fails."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    pos = len(key) - 4
    for ch in alphabet:
        if ch == key[pos]:
            continue
        typo = key[:pos] + ch + key[pos + 1 :]
        try:
            SerialNumber.from_product_key(typo, expect=expect)
        except Exception:
            return typo
    raise AssertionError("every typo parsed")  # pragma: no cover


@pytest.mark.parametrize("kind", ["bad_char", "truncated", "typo", "empty"])
def test_predict_malformed_product_key(capsys, vendor: Vendor, test_npz, kind: str) -> None:
    path, _ = test_npz
    key = vendor.product_key
    if kind == "bad_char":
        key, needles = "U" + key[1:], ("'U'", "not allowed")
    elif kind == "truncated":
        key, needles = key[:-4], ("characters",)
    elif kind == "typo":
        key, needles = one_char_typo(key, vendor.serial.geometry), ("typo",)
    else:
        key, needles = "", ("no serial number",)
    before = file_digests(path.parent)
    run_err(capsys, ["predict", str(path), "--model", str(vendor.customer_path), "--serial", key], *needles)
    assert file_digests(path.parent) == before


def test_predict_key_of_another_geometry(capsys, vendor: Vendor, test_npz) -> None:
    path, _ = test_npz
    bits = np.indices((6, 6)).sum(0) % 2  # a balanced 6x6 checkerboard
    other = SerialNumber(SerialGeometry(6, 6, 20, 20), bits).to_product_key()
    run_err(
        capsys,
        ["predict", str(path), "--model", str(vendor.customer_path), "--serial", other],
        "6x6",
        "model expects",
        "3x3",
    )


def test_predict_without_serial_fails(capsys, vendor: Vendor, test_npz) -> None:
    path, _ = test_npz
    run_err(capsys, ["predict", str(path), "--model", str(vendor.customer_path)], "--serial", "DEEPSERIAL_SERIAL")


def test_predict_refuses_wrong_image_shape(capsys, vendor: Vendor, tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    np.savez(path, x=np.zeros((2, 32, 32), dtype=np.float32))
    run_err(
        capsys,
        ["predict", str(path), "--model", str(vendor.customer_path), "--serial", vendor.product_key],
        "shape",
        "32, 32",
        "28, 28",
    )


def test_predict_refuses_values_above_one(capsys, vendor: Vendor, tmp_path: Path) -> None:
    path = tmp_path / "scaled.npz"
    np.savez(path, x=np.full((2, 28, 28), 255.0, dtype=np.float32))
    run_err(
        capsys, ["predict", str(path), "--model", str(vendor.customer_path), "--serial", vendor.product_key], "[0, 1]"
    )


def test_predict_npz_without_x_and_missing_file(capsys, vendor: Vendor, tmp_path: Path) -> None:
    path = tmp_path / "noimages.npz"
    np.savez(path, images=np.zeros((2, 28, 28), dtype=np.float32))
    base = ["--model", str(vendor.customer_path), "--serial", vendor.product_key]
    run_err(capsys, ["predict", str(path), *base], "no array 'x'", "images")
    run_err(capsys, ["predict", str(tmp_path / "nothere.png"), *base], "does not exist")


def test_predict_png_images(capsys, vendor: Vendor, tmp_path: Path) -> None:
    x = vendor.splits.test.x[:2]
    pixels = (x[:, 0] * 255).round().to(torch.uint8).numpy()
    paths = []
    for i, img in enumerate(pixels):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray(img, mode="L").save(p)
        paths.append(str(p))
    out = run_ok(
        capsys, ["predict", *paths, "--model", str(vendor.customer_path), "--serial", vendor.product_key, "--json"]
    )
    rows = parse_json_lines(out)
    pred, conf = stamped_predictions(
        vendor.customer_path, vendor.serial, torch.from_numpy(pixels.astype(np.float32) / 255.0)[:, None]
    )
    assert [r["class"] for r in rows] == pred
    assert np.allclose([r["confidence"] for r in rows], conf, atol=2e-6)

    wrong = tmp_path / "big.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8), mode="L").save(wrong)
    run_err(
        capsys,
        ["predict", str(wrong), "--model", str(vendor.customer_path), "--serial", vendor.product_key],
        "shape",
        "32, 32",
    )


def test_predict_refuses_a_teacher(capsys, vendor: Vendor, test_npz) -> None:
    path, _ = test_npz
    run_err(
        capsys,
        ["predict", str(path), "--model", str(vendor.teacher_path), "--serial", vendor.product_key],
        "not a serial-number protected model",
    )


# ----- corrupt and tampered model files --------------------------------------------------------------
@pytest.fixture
def tampered_model(tmp_path: Path, vendor: Vendor) -> Path:
    raw = bytearray(vendor.customer_path.read_bytes())
    start = tensor_data_offset(bytes(raw))
    raw[start + (len(raw) - start) // 2] ^= 0x01  # one bit of one weight
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(bytes(raw))
    return path


def test_tampered_weights_refused_by_every_command(
    capsys, vendor: Vendor, tampered_model: Path, test_npz, tmp_path: Path
) -> None:
    npz, _ = test_npz
    report = tmp_path / "r.json"
    before = file_digests(tmp_path)
    run_err(capsys, ["predict", str(npz), "--model", str(tampered_model), "--serial", vendor.product_key], "integrity")
    run_err(
        capsys,
        ["evaluate", "--model", str(tampered_model), "--serial", vendor.product_key, "--out", str(report)],
        "integrity",
    )
    run_err(capsys, ["info", str(tampered_model)], "integrity")
    assert file_digests(tmp_path) == before


def test_tampered_manifest_refused(capsys, vendor: Vendor, tmp_path: Path) -> None:
    raw = vendor.customer_path.read_bytes()
    header_end = tensor_data_offset(raw)
    header = raw[:header_end]
    assert b'\\"customer\\": \\"acme\\"' in header and vendor.customer_name == "acme"
    path = tmp_path / "renamed.safetensors"
    path.write_bytes(header.replace(b'\\"customer\\": \\"acme\\"', b'\\"customer\\": \\"acne\\"') + raw[header_end:])
    run_err(capsys, ["info", str(path)], "integrity")


def test_truncated_model_refused(capsys, vendor: Vendor, tmp_path: Path, test_npz) -> None:
    npz, _ = test_npz
    raw = vendor.customer_path.read_bytes()
    path = tmp_path / "short.safetensors"
    path.write_bytes(raw[: len(raw) - 1000])
    run_err(capsys, ["info", str(path)], "truncated")
    run_err(capsys, ["predict", str(npz), "--model", str(path), "--serial", vendor.product_key], "truncated")
    run_err(capsys, ["info", str(tmp_path / "missing.safetensors")], "cannot read model file")


# ----- evaluate --------------------------------------------------------------------------------------
def tampered_licence(vendor: Vendor, tmp_path: Path, what: str) -> Path:
    rec = json.loads(vendor.licence_path.read_text())
    if what == "customer":
        rec["verifier"]["customer"] = "someone else"
    else:
        sig = rec["signature"]
        rec["signature"] = ("1" if sig[0] != "1" else "2") + sig[1:]
    path = tmp_path / f"licence-{what}.json"
    path.write_text(json.dumps(rec))
    return path


@pytest.mark.parametrize("what", ["customer", "signature"])
def test_evaluate_refuses_tampered_licence(capsys, vendor: Vendor, tmp_path: Path, what: str) -> None:
    licence = tampered_licence(vendor, tmp_path, what)
    report = tmp_path / "r.json"
    run_err(
        capsys,
        [
            "evaluate",
            "--model",
            str(vendor.customer_path),
            "--licence",
            str(licence),
            "--out",
            str(report),
            "--n-wrong",
            "50",
            "--wrong-samples",
            "100",
        ],
        "signature does not verify",
    )
    assert not report.exists()


def test_evaluate_refuses_unreadable_licence_and_missing_serial(capsys, vendor: Vendor, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    report = tmp_path / "r.json"
    base = ["evaluate", "--model", str(vendor.customer_path), "--out", str(report)]
    run_err(capsys, [*base, "--licence", str(broken)], "cannot read licence record")
    run_err(capsys, base, "--serial", "--licence")
    assert not report.exists()


def test_evaluate_refuses_licence_for_another_geometry(capsys, vendor: Vendor, tmp_path: Path) -> None:
    """A genuine licence of the same owner, but for a 6x6 serial number: the model expects 3x3."""
    rec = json.loads(vendor.licence_path.read_text())
    verifier = VerifierString.now(rec["verifier"]["owner"], "other customer", dsn.SCHEME)
    rec["verifier"] = verifier.to_dict()
    rec["signature"] = vendor.identity.sign(verifier).hex()
    rec["geometry"] = SerialGeometry(6, 6, 20, 20).to_dict()
    licence = tmp_path / "other.licence.json"
    licence.write_text(json.dumps(rec))
    report = tmp_path / "r.json"
    run_err(
        capsys,
        ["evaluate", "--model", str(vendor.customer_path), "--licence", str(licence), "--out", str(report)],
        "6x6",
        "expects",
        "3x3",
    )
    assert not report.exists()


def test_evaluate_writes_report(capsys, vendor: Vendor, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    out = run_ok(
        capsys,
        [
            "evaluate",
            "--model",
            str(vendor.customer_path),
            "--serial",
            vendor.product_key,
            "--teacher",
            str(vendor.teacher_path),
            "--n-wrong",
            "50",
            "--wrong-samples",
            "100",
            "--out",
            str(report),
        ],
    )
    assert "customer model, valid serial number" in out and f"wrote {report}" in out
    rep = json.loads(report.read_text())
    for name in [*REPORT_FIELDS, "seed", "sizes", "timings", "environment"]:
        assert name in rep, name
    for name in REPORT_FIELDS:
        assert 0.0 <= rep[name] <= 100.0, (name, rep[name])
    assert rep["wrong_sn_count"] == 50 and rep["wrong_sn_eval_samples"] == 100
    assert rep["hamming1_count"] == 9 and rep["hamming2_count"] == 36  # 3x3 = 9 bits: 9 and C(9, 2)
    assert rep["hamming1_mean"] <= rep["hamming1_max"] and rep["wrong_sn_mean"] <= rep["wrong_sn_max"]
    assert rep["seed"] == 0 and rep["serial_bits"] == 9 and rep["mode"] == "default"
    assert rep["sizes"] == vendor.splits.sizes()
    assert rep["timings"]["evaluate_s"] > 0 and rep["environment"]["torch"] == torch.__version__

    # The numbers are those of the models on the recorded test split.
    test = vendor.splits.test
    customer = vendor.customer()
    valid = dsn.key_accuracies(customer.model, test.x, test.y, vendor.serial.geometry, vendor.serial.as_tensor()[None])
    raw = 100.0 * float((predict_logits(customer.model, test.x).argmax(1) == test.y).float().mean())
    assert rep["valid_sn_acc"] == pytest.approx(float(valid[0]), abs=1e-4)
    assert rep["raw_acc"] == pytest.approx(raw, abs=1e-4)
    assert rep["teacher_acc"] == pytest.approx(vendor.teacher().manifest["test_acc"], abs=1e-4)


# ----- issue -----------------------------------------------------------------------------------------
def issue_args(vendor: Vendor, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "issue",
        "--customer",
        "beta corp",
        "--teacher",
        str(vendor.teacher_path),
        "--key",
        str(vendor.key_path),
        "--out",
        str(tmp_path / "beta.safetensors"),
        "--licence",
        str(tmp_path / "beta.licence.json"),
        "--epochs",
        "1",
        "-q",
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--size", "3x3", "--position", "25,25"], ("never reach", "rows 0-25")),
        (["--size", "3x3", "--position", "26,26"], ("does not fit", "28x28")),
        (["--size", "3x3", "--position", "middle"], ("position", "ROW,COL")),
        (["--size", "0x3"], ("0x3", "positive")),
        (["--size", "abc"], ("abc", "HxW")),
        (["--size", "30x30"], ("30x30",)),
        (["--size", "3x3", "--mode", "nonsense"], ("nonsense", "default", "paper")),
    ],
)
def test_issue_refuses_bad_options_without_output(
    capsys, vendor: Vendor, tmp_path: Path, extra: list[str], needles: tuple[str, ...]
) -> None:
    run_err(capsys, issue_args(vendor, tmp_path, *extra), *needles)
    assert file_digests(tmp_path) == {}


def test_issue_refuses_empty_customer_and_missing_key(capsys, vendor: Vendor, tmp_path: Path) -> None:
    args = issue_args(vendor, tmp_path, "--size", "3x3")
    args[args.index("beta corp")] = "   "
    run_err(capsys, args, "customer name")
    args = issue_args(vendor, tmp_path, "--size", "3x3")
    args[args.index(str(vendor.key_path))] = str(tmp_path / "no-key.pem")
    run_err(capsys, args, "cannot read key file", "keygen")
    assert file_digests(tmp_path) == {}


def test_issue_prints_product_key_once(capsys, vendor: Vendor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fixed vendor key and a fixed time: the same serial number on every run, checked to differ from
    # acme's (at random, two 3x3 serial numbers coincide once in 420)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", VENDOR_TIME)
    model, licence = tmp_path / "beta.safetensors", tmp_path / "beta.licence.json"
    out = run_ok(capsys, issue_args(vendor, tmp_path, "--size", "3x3"))
    serial = serial_from_licence(licence)
    key = serial.to_product_key()
    assert out.count(key) == 1
    assert f"product key for beta corp (shown once): {key}" in out
    assert SerialNumber.from_product_key(key) == serial
    # The files: a customer model signed by the owner and an owner-only licence record.
    assert stat.S_IMODE(licence.stat().st_mode) == 0o600
    customer = load_model(model, owner=vendor.identity)
    assert customer.manifest["licence"]["customer"] == "beta corp"
    assert SerialGeometry.from_dict(customer.manifest["serial_geometry"]) == serial.geometry
    assert json.loads(licence.read_text())["model_sha256"] == customer.manifest["integrity"]["sha256"]
    assert serial != vendor.serial  # another customer, another serial number
    # Issuing again to the same files is refused and leaves them as they are.
    before = file_digests(tmp_path)
    run_err(capsys, issue_args(vendor, tmp_path, "--size", "3x3"), "--force")
    assert file_digests(tmp_path) == before


# ----- info and models -------------------------------------------------------------------------------
def _keys(obj: object) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_info_prints_manifest_without_secrets(capsys, vendor: Vendor) -> None:
    out = run_ok(capsys, ["info", str(vendor.customer_path)])
    man = json.loads(out)
    assert man == read_manifest(vendor.customer_path)
    assert man["role"] == "customer" and man["licence"]["customer"] == vendor.customer_name
    assert SerialGeometry.from_dict(man["serial_geometry"]) == vendor.serial.geometry
    assert "sha256" in man["integrity"] and "signature" in man["integrity"]  # owner's signature over the digest
    licence = json.loads(vendor.licence_path.read_text())
    assert "signature" not in man["licence"]
    assert licence["signature"] not in out
    assert vendor.product_key not in out and vendor.product_key.replace("-", "") not in out
    assert "bits" not in _keys(man) and "serial" not in _keys(man)


def test_models_lists_networks_and_datasets(capsys) -> None:
    out = run_ok(capsys, ["models"])
    lines = out.splitlines()
    assert any(line.startswith("network") and "dsn_mnist" in line for line in lines)
    assert any(line.startswith("dataset") and "mnist5k" in line for line in lines)
    assert any(line.startswith("dataset") and "fashion-mnist" in line for line in lines)


# ----- usage errors (click/typer level) --------------------------------------------------------------


def test_missing_required_option_is_a_usage_error(capsys, tmp_path: Path) -> None:
    rc = main(["predict", str(tmp_path / "x.npz")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "--model" in err


def test_unknown_command_is_a_usage_error(capsys) -> None:
    rc = main(["no-such-command"])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "no-such-command" in err


@pytest.mark.parametrize("content", ["truncated", "empty"])
def test_predict_unreadable_npz(capsys, vendor: Vendor, test_npz, content: str) -> None:
    good, _ = test_npz
    path = good.parent / "bad.npz"
    raw = good.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if content == "truncated" else b"")
    run_err(
        capsys, ["predict", str(path), "--model", str(vendor.customer_path), "--serial", vendor.product_key], "bad.npz"
    )


# ----- the installed console script ------------------------------------------------------------------
def _script() -> list[str]:
    exe = shutil.which("deepserial") or str(Path(sys.executable).parent / "deepserial")
    assert os.access(exe, os.X_OK), "the deepserial console script is not installed"
    return [exe]


def test_console_script_help() -> None:
    res = subprocess.run([*_script(), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for cmd in ("keygen", "teacher", "issue", "predict", "evaluate", "info", "models"):
        assert cmd in res.stdout


def test_console_script_user_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [*_script(), "info", str(tmp_path / "missing.safetensors")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX) and "cannot read model file" in lines[0]


# ----- watermark embed / verify ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory, vendor: Vendor) -> Path:
    """A null-embedding model and its key written by `watermark embed` (tiny: 600 images, 2 epochs)."""
    root = tmp_path_factory.mktemp("wm")
    rc = main(
        [
            "watermark",
            "embed",
            "--scheme",
            "null-embedding",
            "--out",
            str(root / "m.safetensors"),
            "--key",
            str(vendor.key_path),
            "--limit",
            "600",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--quiet",
            "--set",
            "threshold=0.5",
        ]
    )
    assert rc == 0
    return root


def test_watermark_embed_writes_model_and_secret_key(marked: Path) -> None:
    man = read_manifest(marked / "m.safetensors")
    assert man["scheme"] == "null-embedding" and man["role"] == "watermarked" and "signature" in man["integrity"]
    assert stat.S_IMODE((marked / "m.key").stat().st_mode) == 0o600


def test_watermark_verify_exit_status_follows_the_verdict(capsys, marked: Path, vendor: Vendor) -> None:
    key = str(marked / "m.key")
    rc = main(["watermark", "verify", str(marked / "m.safetensors"), "--key", key, "--json"])
    out, _ = capsys.readouterr()
    verdict = json.loads(out)
    assert verdict["scheme"] == "null-embedding" and verdict["queries"] > 0
    assert rc == (0 if verdict["decision"] else 1)
    rc = main(["watermark", "verify", str(vendor.teacher_path), "--key", key])
    out, _ = capsys.readouterr()
    assert rc == 1 and "does NOT carry" in out  # an unmarked model


def test_watermark_bad_inputs(capsys, marked: Path, vendor: Vendor, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    raw = bytearray((marked / "m.key").read_bytes())
    raw[-5] ^= 0xFF
    bad.write_bytes(bytes(raw))
    run_err(capsys, ["watermark", "verify", str(marked / "m.safetensors"), "--key", str(bad)], "integrity")
    run_err(
        capsys,
        ["watermark", "verify", str(marked / "m.safetensors"), "--key", str(tmp_path / "none.key")],
        "cannot read",
    )
    run_err(
        capsys,
        ["watermark", "verify", str(marked / "m.safetensors"), "--key", str(marked / "m.key"), "--budget", "10"],
        "budget",
    )
    before = file_digests(tmp_path)
    out = str(tmp_path / "x.safetensors")
    run_err(
        capsys,
        ["watermark", "embed", "--scheme", "nope", "--out", out, "--key", str(vendor.key_path)],
        "unknown scheme",
    )
    run_err(
        capsys,
        [
            "watermark",
            "embed",
            "--scheme",
            "null-embedding",
            "--out",
            out,
            "--key",
            str(vendor.key_path),
            "--set",
            "pattern_size",
        ],
        "name=value",
    )
    run_err(
        capsys,
        [
            "watermark",
            "embed",
            "--scheme",
            "null-embedding",
            "--out",
            out,
            "--key",
            str(vendor.key_path),
            "--set",
            "no_such=1",
        ],
        "null-embedding",
    )
    run_err(
        capsys,
        [
            "watermark",
            "embed",
            "--scheme",
            "dsn",
            "--out",
            out,
            "--key",
            str(vendor.key_path),
            "--limit",
            "300",
            "--epochs",
            "1",
        ],
        "deepserial issue",
    )
    assert file_digests(tmp_path) == before  # nothing written by any failure
    run_err(
        capsys,
        [
            "watermark",
            "embed",
            "--scheme",
            "null-embedding",
            "--out",
            str(marked / "m.safetensors"),
            "--key",
            str(vendor.key_path),
        ],
        "exists",
    )


def test_watermark_verify_refuses_a_key_of_another_scheme_and_a_mismatched_suspect(
    capsys, marked: Path, tmp_path: Path
) -> None:
    from deepserial.artifacts import save_model
    from deepserial.nets import create_model

    model, key = str(marked / "m.safetensors"), str(marked / "m.key")
    run_err(
        capsys,
        ["watermark", "verify", model, "--key", key, "--scheme", "uchida"],
        "null-embedding key, not a uchida key",
    )
    run_err(capsys, ["watermark", "verify", model, "--key", key, "--scheme", "nope"], "unknown scheme")
    # a suspect that answers 11 labels where the key's task has 10
    man = read_manifest(marked / "m.safetensors")
    odd = tmp_path / "odd.safetensors"
    save_model(
        odd,
        create_model(man["arch"], tuple(man["input_shape"]), 11),
        {"arch": man["arch"], "input_shape": man["input_shape"], "num_classes": 11},
    )
    before = file_digests(tmp_path)
    run_err(capsys, ["watermark", "verify", str(odd), "--key", key], "11 outputs")
    assert file_digests(tmp_path) == before


# ----- attack ---------------------------------------------------------------------------------------------
def test_attack_fine_tunes_a_watermarked_model_and_reports_before_and_after(
    capsys, marked: Path, tmp_path: Path
) -> None:
    out, rep = tmp_path / "attacked.safetensors", tmp_path / "attack.json"
    text = run_ok(
        capsys,
        [
            "attack",
            "fine-tuning",
            "--model",
            str(marked / "m.safetensors"),
            "--key",
            str(marked / "m.key"),
            "--fraction",
            "0.1",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--report",
            str(rep),
            "--quiet",
            "--set",
            "mode=FTLL",
        ],
    )
    assert "before" in text and "after" in text and "watermark" in text
    r = json.loads(rep.read_text())
    assert r["attacker_samples"] == 48  # 10% of the 480 training images of the 600-image sample
    assert r["log"]["epochs"] == 1 and r["log"]["budget"]["config"]["mode"] == "FTLL"
    assert "p_value" in r["before"]["verdict"] and "p_value" in r["after"]["verdict"]
    man = read_manifest(out)
    assert man["role"] == "attacked" and man["attack"]["name"] == "fine-tuning" and "signature" not in man["integrity"]


def test_attack_a_dsn_model_reports_accuracy_with_the_serial_number(capsys, vendor: Vendor) -> None:
    text = run_ok(
        capsys,
        [
            "attack",
            "pruning",
            "--model",
            str(vendor.customer_path),
            "--serial",
            vendor.product_key,
            "--epochs",
            "0",
            "--set",
            "rate=0.3",
            "--json",
        ],
    )
    r = json.loads(text)
    # both accuracies, before and after (the tiny fixture model is barely trained: no claim on their values)
    assert all(0 <= r[w][k] <= 100 for w in ("before", "after") for k in ("with_serial_acc", "test_acc"))
    assert r["log"]["details"]["zero_weight_fraction"] == pytest.approx(0.3, abs=1e-3)


def test_attack_bad_inputs(capsys, marked: Path, vendor: Vendor, tmp_path: Path) -> None:
    m = str(marked / "m.safetensors")
    out = str(tmp_path / "x.safetensors")
    before = file_digests(tmp_path)
    run_err(capsys, ["attack", "nope", "--model", m, "--out", out], "unknown attack", "fine-tuning")
    run_err(capsys, ["attack", "fine-tuning", "--model", m, "--out", out, "--set", "mode=XX"], "mode")
    run_err(capsys, ["attack", "fine-tuning", "--model", m, "--out", out, "--fraction", "0.5"], "attacker's split")
    run_err(capsys, ["attack", "fine-tuning", "--model", m, "--out", out, "--optimizer", "rmsprop"], "optimizer")
    run_err(
        capsys,
        ["attack", "fine-tuning", "--model", m, "--out", out, "--serial", vendor.product_key],
        "not a serial-number protected model",
    )
    run_err(
        capsys,
        ["attack", "pruning", "--model", str(vendor.customer_path), "--out", out, "--serial", "XXXX"],
        "product key",
    )
    assert file_digests(tmp_path) == before  # nothing written by any failure


def test_attack_out_after_retraining_another_network_saves_a_file_that_loads(
    capsys, vendor: Vendor, tmp_path: Path
) -> None:
    from deepserial.attacks.distillation import architecture_signature

    teacher = load_model(vendor.teacher_path)
    steps = json.dumps([{"attack": "weight-shifting"}, {"attack": "cross-architecture-retraining"}])
    for name, extra in (("cross-architecture-retraining", []), ("combined", ["--set", f"steps={steps}"])):
        out, rep = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.json"
        common = ["--fraction", "0.1", "--epochs", "2", "--quiet", "--report", str(rep)]
        run_ok(capsys, ["attack", name, "--model", str(vendor.teacher_path), "--out", str(out), *common, *extra])
        details = json.loads(rep.read_text())["log"]["details"]
        student = details["steps"][-1]["details"]["student_arch"] if name == "combined" else details["student_arch"]
        assert student != teacher.manifest["arch"]
        loaded = load_model(out)  # built as the student's own network, not the victim's
        assert loaded.manifest["arch"] == student
        assert architecture_signature(loaded.model) != architecture_signature(teacher.model)
        x = torch.rand(4, *teacher.manifest["input_shape"])
        assert predict_logits(loaded.model, x).shape == (4, teacher.manifest["num_classes"])


def test_attack_out_refuses_an_input_transformation_and_writes_nothing(capsys, vendor: Vendor, tmp_path: Path) -> None:
    m, out = str(vendor.teacher_path), str(tmp_path / "x.safetensors")
    before = file_digests(tmp_path)
    run_err(capsys, ["attack", "input-preprocessing", "--model", m, "--out", out], "transforms the inputs", "--out")
    run_err(
        capsys,
        ["attack", "combined", "--model", m, "--out", out, "--set", "preset=wrt-combined1"],
        "transforms the inputs",
    )
    assert file_digests(tmp_path) == before
    text = run_ok(capsys, ["attack", "input-preprocessing", "--model", m, "--fraction", "0.1", "--quiet"])
    assert "after" in text  # without --out the attack runs and reports


def test_watermark_schemes_lists_the_registry(capsys) -> None:
    out = run_ok(capsys, ["watermark", "schemes"])
    assert "null-embedding" in out and "dsn" in out and "arXiv" in out


def test_reproduce_attacks_seeds_bad_input_writes_nothing(capsys, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path)]
    run_err(capsys, ["reproduce", "attacks", "--seeds", "0,x", *out], "comma-separated integers", "'0,x'")
    run_err(capsys, ["reproduce", "attacks", "--seeds", "4", *out], "two or more different seeds")
    run_err(capsys, ["reproduce", "attacks", "--scheme", "adi", "--seeds", "0,1", *out], "--scheme dsn")
    run_err(capsys, ["reproduce", "attacks", "--seeds", "0,1", "--tries", "10", *out], "without --tries")
    run_err(capsys, ["reproduce", "attacks", "--seeds", "0,1", "--seed", "3", *out], "without --seed")
    run_err(capsys, ["reproduce", "attacks", "--seeds", "0,-1", *out], "non-negative")
    run_err(capsys, ["reproduce", "attacks", "--seeds", "0,1", "--dataset", "cifar-100", *out], "cifar-100")
    run_err(capsys, ["reproduce", "attacks", "--suite", "nope", *out], "unknown attack suite", "wrt")
    run_err(capsys, ["reproduce", "attacks", "--suite", "wrt", "--seeds", "0,1", *out], "--suite wrt")
    assert not list(tmp_path.iterdir())


def test_reproduce_neural_cleanse_bad_input_writes_nothing(capsys, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path)]
    run_err(capsys, ["reproduce", "neural-cleanse", "--schemes", "adi,nope", *out], "unknown watermark scheme", "nope")
    run_err(capsys, ["reproduce", "neural-cleanse", "--dataset", "cifar-100", *out], "cifar-100")
    assert not list(tmp_path.iterdir())


def test_reproduce_dsn_partial_rerun_needs_a_known_run_and_an_existing_report(capsys, tmp_path: Path) -> None:
    run_err(capsys, ["reproduce", "dsn", "--runs", "nope", "--out", str(tmp_path)], "unknown run", "default-6x6")
    run_err(
        capsys, ["reproduce", "dsn", "--runs", "default-6x6", "--out", str(tmp_path)], "missing", "whole reproduction"
    )
    (tmp_path / "dsn_mnist5k.json").write_text(json.dumps({"seed": 7, "runs": {}}))
    run_err(capsys, ["reproduce", "dsn", "--runs", "default-6x6", "--out", str(tmp_path)], "seed 7")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dsn_mnist5k.json"]
