"""ONNX export of customer models: parity with PyTorch, integrity on load, ONNX suspects."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from deepserial.artifacts import export_onnx, load_onnx
from deepserial.cli import main
from deepserial.errors import IntegrityError
from deepserial.schemes.dsn import DSNScheme
from deepserial.serial import stamp
from deepserial.suspect import ModuleSuspect, ONNXSuspect, open_suspect
from deepserial.training import predict_logits

if TYPE_CHECKING:
    from conftest import Vendor


@pytest.fixture(scope="module")
def exported(vendor: Vendor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "customer.onnx"
    assert main(["export", str(vendor.customer_path), "--format", "onnx", "-o", str(out)]) == 0
    return out


def test_onnx_parity_on_the_test_split(vendor: Vendor, exported: Path) -> None:
    m = vendor.customer()
    x = vendor.splits.test.x
    for batch in (x, stamp(x, vendor.serial.geometry, vendor.serial.as_tensor())):
        ref = predict_logits(m.model, batch).numpy()
        got = ONNXSuspect(exported).logits(batch)
        assert np.abs(ref - got).max() <= 1e-4
        assert (ref.argmax(1) == got.argmax(1)).all()
    _, man = load_onnx(exported)
    assert man["serial_geometry"] == m.manifest["serial_geometry"]
    assert man["source_sha256"] == m.manifest["integrity"]["sha256"]


def test_onnx_suspect_verifies_like_the_module(vendor: Vendor, exported: Path) -> None:
    from deepserial.identity import VerifierString

    lic = __import__("json").loads(vendor.licence_path.read_text())
    sig = vendor.identity.sign(VerifierString.from_dict(lic["verifier"]))
    key = DSNScheme().make_key(sig, vendor.splits.test, 10, model=vendor.customer().model)
    onnx_s = open_suspect(exported)
    assert isinstance(onnx_s, ONNXSuspect) and onnx_s.module is None
    v_onnx = DSNScheme().verify(onnx_s, key)
    v_mod = DSNScheme().verify(ModuleSuspect.from_loaded(vendor.customer()), key)
    assert v_onnx.to_dict() == v_mod.to_dict() and v_onnx.queries == onnx_s.queries == 2 * len(key.tensor("x"))


def test_tampered_truncated_and_foreign_onnx_files_are_refused(exported: Path, tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(exported))
    init = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    arr = np.frombuffer(init.raw_data, dtype=np.float32).copy()
    arr[0] += 0.5
    init.raw_data = arr.tobytes()
    (tmp_path / "tampered.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(IntegrityError, match="integrity check"):
        ONNXSuspect(tmp_path / "tampered.onnx")
    raw = exported.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IntegrityError, match="truncated|corrupt|integrity"):
        load_onnx(tmp_path / "cut.onnx")
    plain = onnx.load(str(exported))
    del plain.metadata_props[:]
    (tmp_path / "foreign.onnx").write_bytes(plain.SerializeToString())
    with pytest.raises(IntegrityError, match="not a deepserial ONNX export"):
        load_onnx(tmp_path / "foreign.onnx")
    with pytest.raises(IntegrityError, match="cannot read"):
        load_onnx(tmp_path / "missing.onnx")


def test_export_cli_errors_write_nothing(
    vendor: Vendor, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    cases = [
        (["export", str(vendor.customer_path), "--format", "tflite", "-o", str(out)], "only onnx"),
        (["export", str(tmp_path / "none.safetensors"), "-o", str(out)], "cannot read"),
    ]
    shutil.copy(exported, tmp_path / "exists.onnx")
    cases.append((["export", str(vendor.customer_path), "-o", str(tmp_path / "exists.onnx")], "exists"))
    for args, msg in cases:
        capsys.readouterr()
        assert main(args) == 2
        assert msg in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*export*"))
    assert (tmp_path / "exists.onnx").read_bytes() == exported.read_bytes()


def test_export_writes_a_loadable_file_directly(vendor: Vendor, tmp_path: Path) -> None:
    man = export_onnx(tmp_path / "m.onnx", vendor.customer())
    s = ONNXSuspect(tmp_path / "m.onnx")
    assert s.input_shape == (1, 28, 28) and s.num_outputs == man["num_classes"] == 10
    assert s.predict(torch.zeros(3, 1, 28, 28)).shape == (3,) and s.queries == 3
