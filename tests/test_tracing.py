"""Traitor tracing over the ledger: the right customer named, nobody named for unissued models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import LockedNet

from deepserial import stats
from deepserial.artifacts import LoadedModel
from deepserial.errors import ConfigError
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import Ledger
from deepserial.serial import SerialGeometry, SerialNumber
from deepserial.suspect import ModuleSuspect
from deepserial.tracing import DEFAULT_LOOKS
from deepserial.tracing import trace_by_serial as trace
from deepserial.workflow import DataSpec

GEOMETRY = SerialGeometry(6, 6, 0, 0)
FAST = 10  # scrypt cost of the tests' fingerprints (the default 14 is for real ledgers)


def issue_records(led: Ledger, ident: OwnerIdentity, customers: list[str]) -> list[SerialNumber]:
    """Ledger rows for ``customers`` as ``deepserial issue`` writes them (without training a model)."""
    serials = []
    for i, name in enumerate(customers):
        v = VerifierString(ident.fingerprint(), name, f"2026-01-01T00:00:{i:02d}+00:00", "dsn")
        sig = ident.sign(v)
        sn = SerialNumber.from_signature(sig, GEOMETRY)
        led.record(ident, v, sn, signature=sig, dataset={"name": "mnist5k"}, fingerprint_cost=FAST)
        serials.append(sn)
    return serials


@pytest.fixture(scope="module")
def test_images():  # noqa: ANN201
    return DataSpec("mnist5k", seed=0, limit=2000).load().test


def test_trace_names_each_customer_and_nobody_for_unissued(
    tmp_path: Path, strong_teacher: LoadedModel, test_images
) -> None:  # noqa: ANN001
    ident = OwnerIdentity.generate()
    led = Ledger(tmp_path / "l.db")
    serials = issue_records(led, ident, [f"c{i}" for i in range(5)])
    cands = [(lic, led.serial(lic, ident)) for lic in led.licences()]
    assert [sn for _, sn in cands] == serials  # re-derived from the owner key, not stored
    level_images = []
    for i, sn in enumerate(serials):
        s = ModuleSuspect(LockedNet(strong_teacher.model, sn), (1, 28, 28))
        res = trace(s, cands, test_images, fpr=1e-3)
        assert res.found and res.licence.customer == f"c{i}", res.candidates
        assert res.p_value <= 1e-3
        assert res.queries == s.queries
        assert res.queries < 2 * DEFAULT_LOOKS[-1] * len(cands)  # well under a fixed-size test of every licence
        level_images.append(res.images)
        named = [c for c in res.candidates if c["outcome"] == "named"]
        assert len(named) == 1 and named[0]["b"] > named[0]["c"]
    assert max(level_images) <= 40
    # an unissued serial number, and a plain model: nobody is named
    other = SerialNumber.from_signature(OwnerIdentity.generate().sign(b"unissued"), GEOMETRY)
    for net in (LockedNet(strong_teacher.model, other), strong_teacher.model):
        res = trace(ModuleSuspect(net, (1, 28, 28)), cands, test_images, fpr=1e-3)
        assert not res.found and "no issued licence matches" in res.summary()
        assert res.p_value > 1e-3
        assert res.queries <= DEFAULT_LOOKS[0] * (len(cands) + 1) * 2


def test_trace_level_is_bonferroni_over_licences_and_looks(
    tmp_path: Path, strong_teacher: LoadedModel, test_images
) -> None:  # noqa: ANN001
    ident = OwnerIdentity.generate()
    led = Ledger(tmp_path / "l.db")
    serials = issue_records(led, ident, ["a", "b"])
    cands = [(lic, led.serial(lic, ident)) for lic in led.licences()]
    res = trace(ModuleSuspect(LockedNet(strong_teacher.model, serials[1]), (1, 28, 28)), cands, test_images, fpr=1e-3)
    row = next(c for c in res.candidates if c["outcome"] == "named")
    assert row["p_value"] == pytest.approx(stats.binom_tail(row["b"], row["b"] + row["c"], 0.5))
    assert row["p_value"] <= 1e-3 / (2 * len(DEFAULT_LOOKS))
    assert res.p_value == pytest.approx(min(1.0, row["p_value"] * 2 * len(DEFAULT_LOOKS)))


def test_trace_bad_settings(test_images) -> None:  # noqa: ANN001
    s = ModuleSuspect(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), (1, 28, 28))
    with pytest.raises(ConfigError, match="no DSN licence"):
        trace(s, [], test_images)
    ident = OwnerIdentity.generate()
    v = VerifierString("o", "c", "t", "dsn")
    from deepserial.ledger import Licence

    lic = Licence(
        1,
        "c",
        ident.fingerprint(),
        "dsn",
        v.to_dict(),
        GEOMETRY.to_dict(),
        "x",
        "scrypt-log2n:10",
        False,
        None,
        None,
        None,
        "t",
    )
    sn = SerialNumber.from_signature(ident.sign(v), GEOMETRY)
    with pytest.raises(ConfigError, match="looks"):
        trace(s, [(lic, sn)], test_images, looks=(10, 5))
    with pytest.raises(ConfigError, match="false-positive"):
        trace(s, [(lic, sn)], test_images, fpr=0)


def test_trace_cli_names_the_customer_of_a_leaked_onnx_file(
    tmp_path: Path, strong_teacher: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepserial.artifacts import export_onnx
    from deepserial.cli import main

    ident = OwnerIdentity.generate()
    key, _ = ident.save(tmp_path / "owner.pem")
    led = Ledger(tmp_path / "l.db")
    data = DataSpec("mnist5k", seed=0, limit=2000).to_dict()
    serials = []
    for i, name in enumerate(["acme", "beta"]):
        v = VerifierString(ident.fingerprint(), name, f"t{i}", "dsn")
        sig = ident.sign(v)
        serials.append(SerialNumber.from_signature(sig, GEOMETRY))
        led.record(ident, v, serials[-1], signature=sig, dataset=data, fingerprint_cost=FAST)
    manifest = dict(strong_teacher.manifest, serial_geometry=GEOMETRY.to_dict())
    export_onnx(tmp_path / "leak.onnx", LoadedModel(LockedNet(strong_teacher.model, serials[1]).eval(), manifest))
    base = ["--ledger", str(tmp_path / "l.db"), "--key", str(key), "--method", "serial"]
    assert main(["trace", str(tmp_path / "leak.onnx"), *base]) == 0
    assert "the suspect is unlocked by licence 2 of customer 'beta'" in capsys.readouterr().out
    # the teacher itself (no lock): nobody; exit status 1, and both answers are kept in the ledger
    export_onnx(tmp_path / "plain.onnx", LoadedModel(strong_teacher.model, manifest))
    assert main(["trace", str(tmp_path / "plain.onnx"), *base, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["found"] is False
    assert [t["licence_id"] for t in Ledger(tmp_path / "l.db").traces()] == [2, None]
    # errors: another owner's key, a missing ledger, a missing suspect
    other, _ = OwnerIdentity.generate().save(tmp_path / "other.pem")
    for args, msg in [
        (
            ["trace", str(tmp_path / "leak.onnx"), "--ledger", str(tmp_path / "l.db"), "--key", str(other)],
            "no DSN licence issued with",
        ),
        (["trace", str(tmp_path / "leak.onnx"), "--ledger", str(tmp_path / "no.db"), "--key", str(key)], "no ledger"),
        (["trace", str(tmp_path / "none.onnx"), *base], "does not exist"),
        # stamping serial numbers against somebody's server is refused before anything is sent
        (["trace", "http://127.0.0.1:9", *base], "whoever runs that server can rebuild their product keys"),
        (["trace", str(tmp_path / "leak.onnx"), *base[:4], "--method", "guess"], "unknown trace method"),
    ]:
        capsys.readouterr()
        assert main(args) == 2
        assert msg in capsys.readouterr().err
