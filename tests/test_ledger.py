"""The licence ledger: records, secrets kept out, migration, concurrency, crash safety, CLI."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import save as st_save

from deepserial import files
from deepserial.cli import main
from deepserial.errors import ConfigError, IdentityError, IntegrityError
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import (
    MIGRATIONS,
    SCHEMA_VERSION,
    STALE_AFTER_S,
    Ledger,
    LedgerBusyError,
    LedgerError,
    issue_temp_path,
    sn_fingerprint,
)
from deepserial.serial import SerialGeometry, SerialNumber

if TYPE_CHECKING:
    from conftest import Vendor

GEOMETRY = SerialGeometry(6, 6, 0, 0)
FAST = 10


def record(led: Ledger, ident: OwnerIdentity, customer: str, i: int = 0, **kw) -> tuple[int, SerialNumber]:  # noqa: ANN003
    v = VerifierString(ident.fingerprint(), customer, f"2026-01-01T00:00:{i:02d}+00:00", "dsn")
    sig = ident.sign(v)
    sn = SerialNumber.from_signature(sig, GEOMETRY)
    return led.record(ident, v, sn, signature=sig, fingerprint_cost=FAST, model_sha256="ab" * 32, **kw), sn


def test_record_list_show_export_and_no_secret_in_clear(tmp_path: Path) -> None:
    ident = OwnerIdentity.generate()
    with Ledger(tmp_path / "l.db") as led:
        ids = [record(led, ident, c, i)[0] for i, c in enumerate(["acme", "beta", "acme"])]
        sns = [led.serial(lic, ident) for lic in led.licences()]
        assert led.version == SCHEMA_VERSION and led.integrity_check() == "ok"
        assert [lic.id for lic in led.licences(customer="acme")] == [ids[0], ids[2]]
        assert led.get(ids[1]).customer == "beta"
        rows = json.loads(led.export("json"))
        assert len(rows) == 3 and {r["customer"] for r in rows} == {"acme", "beta"}
        assert led.export("csv").count("\n") == 4
        with pytest.raises(ConfigError, match="csv or json"):
            led.export("xml")
        with pytest.raises(ConfigError, match="no licence 99"):
            led.get(99)
        with pytest.raises(IntegrityError, match="already holds"):
            v = VerifierString.from_dict(led.get(ids[0]).verifier)
            led.record(ident, v, sns[0], fingerprint_cost=FAST)
        assert len(led.licences()) == 3  # the refused duplicate left nothing behind
    raw = (tmp_path / "l.db").read_bytes()
    for sn in sns:  # neither the serial number's product key nor the signature is stored
        assert sn.to_product_key().encode() not in raw
    for lic_sig in (ident.sign(VerifierString.from_dict(r["verifier"])) for r in rows):
        assert lic_sig not in raw and lic_sig.hex().encode() not in raw


def test_fingerprint_is_salted_and_checked(tmp_path: Path) -> None:
    ident = OwnerIdentity.generate()
    led = Ledger(tmp_path / "l.db")
    _, sn = record(led, ident, "acme")
    lic = led.licences()[0]
    v = VerifierString.from_dict(lic.verifier)
    assert lic.sn_fingerprint == sn_fingerprint(sn, v, FAST)
    assert sn_fingerprint(sn, VerifierString(v.owner, "other", v.timestamp, v.scheme), FAST) != lic.sn_fingerprint
    with pytest.raises(IdentityError, match="issued by owner"):
        led.serial(lic, OwnerIdentity.generate())
    # an edited row (another geometry) no longer re-derives to its fingerprint
    db = sqlite3.connect(tmp_path / "l.db")
    db.execute("UPDATE licences SET geometry = ?", (json.dumps(SerialGeometry(6, 6, 1, 1).to_dict()),))
    db.commit()
    db.close()
    with pytest.raises(IntegrityError, match="was edited"):
        led.serial(led.licences()[0], ident)


def test_rsa_owner_must_seal_and_unseal_needs_the_passphrase(tmp_path: Path) -> None:
    ident = OwnerIdentity.generate("rsa")
    led = Ledger(tmp_path / "l.db")
    with pytest.raises(ConfigError, match="RSA"):
        record(led, ident, "acme")
    _, sn = record(led, ident, "acme", seal_passphrase="correct horse")
    lic = led.licences()[0]
    assert lic.sealed
    assert led.serial(lic, ident, "correct horse") == sn
    with pytest.raises(IdentityError, match="wrong ledger passphrase"):
        led.serial(lic, ident, "wrong")
    with pytest.raises(IdentityError, match="sealed"):
        led.serial(lic, ident)


def test_migrates_a_version_1_ledger_and_refuses_a_newer_one(tmp_path: Path) -> None:
    ident = OwnerIdentity.generate()
    v = VerifierString(ident.fingerprint(), "acme", "2026-01-01T00:00:00+00:00", "dsn")
    sn = SerialNumber.from_signature(ident.sign(v), GEOMETRY)
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO owners VALUES (1, ?, ?, 't')", (ident.fingerprint(), ident.public_pem().decode()))
    db.execute("INSERT INTO customers VALUES (1, 'acme', 't')")
    db.execute(
        "INSERT INTO licences (owner_id, customer_id, scheme, verifier, geometry, sn_fingerprint, "
        "fingerprint_kdf, issued_at) VALUES (1, 1, 'dsn', ?, ?, ?, 'scrypt-log2n:10', 't')",
        (v.to_bytes().decode(), json.dumps(GEOMETRY.to_dict()), sn_fingerprint(sn, v, FAST)),
    )
    db.commit()
    db.close()
    with Ledger(path) as led:
        assert led.version == SCHEMA_VERSION == 3
        (lic,) = led.licences()  # a row written before version 3 is an issued licence
        assert lic.customer == "acme" and lic.licence_path is None and led.serial(lic, ident) == sn
        assert led.unfinished() == [] and led.check().sound
        led.record_trace("suspect.onnx", 1, 1e-9, 1e-3, 120, {"why": "test"})
        assert led.traces()[0]["queries"] == 120
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(IntegrityError, match="upgrade deepserial"):
        Ledger(path)


def test_bad_ledger_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ledger"):
        Ledger(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(ConfigError, match="directory"):
        Ledger(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, really" * 10)
    with pytest.raises(IntegrityError, match="not a SQLite database"):
        Ledger(junk)
    assert junk.read_bytes().startswith(b"not a database")
    # an empty file is not silently made into a ledger, not even where creating one is allowed
    empty = tmp_path / "empty.db"
    empty.touch()
    for create in (True, False):
        with pytest.raises(LedgerError, match="empty file"):
            Ledger(empty, create=create)
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "junk.db"]


def test_a_second_connection_in_one_process_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    """Opening a ledger must not open and close the database file outside SQLite: closing any descriptor
    of it drops every POSIX lock this process holds on it, and another process closing its connection
    then takes itself for the last one and deletes the write-ahead log under our live connection (8
    processes issuing in loops lost 2 of 32 committed licences that way)."""
    ident = OwnerIdentity.generate()
    key, _ = ident.save(tmp_path / "owner.pem")
    path = tmp_path / "l.db"
    first = Ledger(path)
    record(first, ident, "a", 1)
    second = Ledger(path)
    child = textwrap.dedent(f"""
        from deepserial.identity import OwnerIdentity, VerifierString
        from deepserial.ledger import Ledger
        from deepserial.serial import SerialGeometry, SerialNumber
        ident = OwnerIdentity.load({str(key)!r})
        v = VerifierString(ident.fingerprint(), "child", "2026-01-01T00:00:02+00:00", "dsn")
        sig = ident.sign(v)
        with Ledger({str(path)!r}) as led:
            led.record(ident, v, SerialNumber.from_signature(sig, SerialGeometry(6, 6, 0, 0)), fingerprint_cost=10)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", child], check=True, env=env, timeout=120)
    assert path.with_name("l.db-wal").exists()  # the child knew it was not the last connection
    record(first, ident, "a2", 3)
    first.close()
    second.close()
    with Ledger(path) as led:
        assert sorted(lic.customer for lic in led.licences()) == ["a", "a2", "child"]


def test_the_write_lock_is_held_only_for_the_insert_and_a_busy_lock_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deepserial.ledger as ledger_mod

    ident = OwnerIdentity.generate()
    path = tmp_path / "l.db"
    led = Ledger(path, timeout=0.5)
    real = ledger_mod.sn_fingerprint

    def fingerprint_outside_the_lock(*args: object, **kw: object) -> str:
        assert not led._db.in_transaction, "the slow fingerprint ran while holding the write lock"
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger_mod, "sn_fingerprint", fingerprint_outside_the_lock)
    record(led, ident, "a", 1)
    model = tmp_path / "m.safetensors"
    v = VerifierString(ident.fingerprint(), "b", "2026-01-01T00:00:02+00:00", "dsn")
    sig = ident.sign(v)
    lid = led.begin_issue(
        ident,
        v,
        SerialNumber.from_signature(sig, GEOMETRY),
        model_path=model,
        licence_path=tmp_path / "m.licence.json",
        temp_paths=[issue_temp_path(model)],
        signature=sig,
        fingerprint_cost=FAST,
    )
    led.complete_issue(lid, "ab" * 32)
    # another process holds the write lock for longer than the timeout: one line, after the timeout
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    with pytest.raises(LedgerBusyError, match="stayed locked by another process for over 0.5 s") as e:
        record(led, ident, "c", 3)
    assert 0.5 <= time.monotonic() - t0 < 5 and "\n" not in str(e.value)
    other.execute("ROLLBACK")
    record(led, ident, "c", 3)  # and once the lock is free, the same record goes in
    assert [lic.customer for lic in led.licences()] == ["a", "b", "c"]
    led.close()
    other.close()


def _damage(path: Path, kind: str) -> None:
    """Damage a closed ledger (all of it in the main file) the way a disk, a copy or a hand edit does."""
    if kind in ("non-JSON row", "row without fields"):
        db = sqlite3.connect(path)
        bad = '{"height": 6, "wid' if kind == "non-JSON row" else "{}"
        db.execute("UPDATE licences SET geometry = ? WHERE id = 18", (bad,))
        db.execute("INSERT INTO traces VALUES (1, 's', 18, 0.5, 0.001, 10, 'not json', 't')")
        db.commit()
        db.close()
        return
    data = bytearray(path.read_bytes())
    if kind == "flipped bytes":  # the low bit of every byte of one customer's verifier, table and index
        needle = b'"customer":"cust-17"'
        starts = [i for i in range(len(data)) if data.startswith(needle, i)]
        assert len(starts) >= 2
        for i in starts:
            for j in range(i, i + len(needle)):
                data[j] ^= 1
    elif kind == "zeroed page":
        db = sqlite3.connect(path)
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'licences'").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        db.close()
        data[(root - 1) * size : root * size] = bytes(size)
    elif kind == "flipped header":
        data[:16] = bytes(b ^ 0xFF for b in data[:16])
    elif kind == "empty file":
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "kind", ["non-JSON row", "row without fields", "flipped bytes", "zeroed page", "flipped header", "empty file"]
)
def test_a_damaged_ledger_gives_one_line_errors_and_check_reports_it(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ident = OwnerIdentity.generate()
    key, _ = ident.save(tmp_path / "owner.pem")
    path = tmp_path / "l.db"
    with Ledger(path) as led:
        for i in range(40):
            record(led, ident, f"cust-{i:02d}", i)
    assert not path.with_name("l.db-wal").exists()  # the last connection checkpointed: one file to damage
    _damage(path, kind)
    before = path.read_bytes()
    led_opt = ["--ledger", str(path)]
    for args in (
        ["ledger", "list", *led_opt],
        ["ledger", "show", "18", *led_opt],
        ["ledger", "export", "--format", "json", *led_opt],
        ["ledger", "export", "--format", "csv", *led_opt],
        ["trace", str(tmp_path / "leak.onnx"), *led_opt, "--key", str(key)],
    ):
        capsys.readouterr()
        assert main(args) == 2, args
        out = capsys.readouterr()
        assert out.err.startswith("deepserial: error: ") and out.err.count("\n") == 1, (args, out.err)
        assert "Traceback" not in out.err
    capsys.readouterr()
    assert main(["ledger", "check", *led_opt]) == 1
    lines = capsys.readouterr().out.splitlines()
    report = "\n".join(lines)
    assert lines and (not lines[0].endswith("integrity ok") or len(lines) > 1), report  # damage named
    if kind in ("non-JSON row", "row without fields"):
        assert "licence row 18 does not parse" in report and "trace row 1 does not parse" in report
        assert "39 licence(s)" in report
    if kind == "empty file":
        assert "empty file" in report
    # nothing looked at the damage and "fixed" it: the file is as damaged as it was
    assert path.read_bytes() == before


def _model_file(path: Path, verifier: VerifierString) -> None:
    """A stand-in for a customer model file: what repair reads of one is its verifier string."""
    path.write_bytes(
        st_save({"w": torch.zeros(1)}, metadata={"deepserial": json.dumps({"licence": verifier.to_dict()})})
    )


def test_unfinished_issuances_are_hidden_listed_and_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ident = OwnerIdentity.generate()
    path, out = tmp_path / "l.db", tmp_path / "out"
    out.mkdir()
    led = Ledger(path)
    done, _ = record(led, ident, "done", 0)
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)

    def begin(name: str, i: int) -> tuple[int, VerifierString, list[Path], Path, Path]:
        v = VerifierString(ident.fingerprint(), name, f"2026-01-01T00:00:{i:02d}+00:00", "dsn")
        sig = ident.sign(v)
        model, lic = out / f"{name}.safetensors", out / f"{name}.licence.json"
        temps = [issue_temp_path(model), issue_temp_path(lic)]
        lid = led.begin_issue(
            ident,
            v,
            SerialNumber.from_signature(sig, GEOMETRY),
            model_path=model,
            licence_path=lic,
            temp_paths=temps,
            signature=sig,
            fingerprint_cost=FAST,
        )
        return lid, v, temps, model, lic

    def set_issuer(lid: int, **kw: object) -> None:
        pending = json.loads(led._db.execute("SELECT pending FROM licences WHERE id = ?", (lid,)).fetchone()[0])
        led._db.execute("UPDATE licences SET pending = ? WHERE id = ?", (json.dumps({**pending, **kw}), lid))

    # killed right after its pending row
    a = begin("a", 1)
    # killed with both temporary files written (and atomic_write's own temporary file of one of them)
    b = begin("b", 2)
    _model_file(b[2][0], b[1])
    b[2][1].write_text(json.dumps({"verifier": b[1].to_dict()}))
    b_inner = files._temp_copy(b[2][0], b"half a model", None)  # as a write killed before its rename leaves it
    # killed after its model was renamed into place
    c = begin("c", 3)
    _model_file(c[3], c[1])
    c[2][1].write_text(json.dumps({"verifier": c[1].to_dict()}))
    # killed after both renames, before the row was final
    d = begin("d", 4)
    _model_file(d[3], d[1])
    d[4].write_text(json.dumps({"verifier": d[1].to_dict()}))
    # killed before its renames while issuing over (--force) another licence's files: those stay
    e = begin("e", 5)
    _model_file(e[3], VerifierString(ident.fingerprint(), "e", "2025-01-01T00:00:00+00:00", "dsn"))
    e[4].write_text(json.dumps({"verifier": {"customer": "someone else"}}))
    _model_file(e[2][0], e[1])
    for lid in (a[0], b[0], c[0], d[0], e[0]):
        set_issuer(lid, pid=dead_pid)
    # abandoned on another host long ago; in progress on another host; in progress here
    f = begin("f", 6)
    set_issuer(f[0], host="elsewhere", since=time.time() - 2 * STALE_AFTER_S)
    g = begin("g", 7)
    set_issuer(g[0], host="elsewhere")
    h = begin("h", 8)
    _model_file(h[2][0], h[1])

    # pending rows are not licences: not listed, shown, exported or traced
    assert [lic.id for lic in led.licences()] == [done] and len(json.loads(led.export("json"))) == 1
    with pytest.raises(ConfigError, match=f"no licence {a[0]}"):
        led.get(a[0])
    stale = {u.id: u.stale for u in led.unfinished()}
    assert stale == {a[0]: True, b[0]: True, c[0]: True, d[0]: True, e[0]: True, f[0]: True, g[0]: False, h[0]: False}
    lo = ["--ledger", str(path)]
    assert main(["ledger", "list", *lo]) == 0
    assert "8 unfinished issuance(s)" in capsys.readouterr().err
    assert main(["ledger", "check", *lo]) == 1
    report = capsys.readouterr().out
    assert report.count("unfinished issuance: ") == 8 and f"issuer process {dead_pid} is gone" in report
    assert f"issuer process {os.getpid()} is running" in report and "pending for 2.0 h" in report
    assert main(["ledger", "check", "--repair", *lo]) == 0  # what runs elsewhere or here is not damage
    report = capsys.readouterr().out
    assert report.count("removed unfinished licence row") == 6 and report.count("unfinished issuance: ") == 2

    for item in (a, b, c, d, e, f):
        assert not any(p.exists() for p in item[2])
    assert not b_inner.exists() and not c[3].exists() and not d[3].exists() and not d[4].exists()
    assert e[3].exists() and e[4].exists()  # another licence's files are not this issuance's to remove
    assert h[2][0].exists()  # a live issuance keeps its files and its row
    assert {u.id for u in led.unfinished()} == {g[0], h[0]}
    assert led.check().sound and led.integrity_check() == "ok"
    # the live issuer finishes; one whose row was removed under it is told so and cleans up itself
    led.complete_issue(h[0], "ab" * 32)
    assert [lic.id for lic in led.licences()] == [done, h[0]]
    with pytest.raises(LedgerError, match="is gone"):
        led.complete_issue(a[0], "ab" * 32)
    assert led.abandon_issue(a[0]) is True and led.abandon_issue(h[0]) is False
    led.close()


def test_ledger_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ident = OwnerIdentity.generate()
    path = tmp_path / "l.db"
    with Ledger(path) as led:
        record(led, ident, "acme")
    assert main(["ledger", "list", "--ledger", str(path)]) == 0
    out = capsys.readouterr()
    assert "acme" in out.out and "1 licence(s)" in out.err
    assert main(["ledger", "show", "1", "--ledger", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["customer"] == "acme"
    assert main(["ledger", "export", "--format", "json", "--ledger", str(path), "-o", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x.json").read_text())[0]["customer"] == "acme"
    assert main(["ledger", "check", "--ledger", str(path)]) == 0
    assert "integrity ok" in capsys.readouterr().out
    for args, msg in [
        (["ledger", "list", "--ledger", str(tmp_path / "none.db")], "no ledger"),
        (["ledger", "show", "7", "--ledger", str(path)], "no licence 7"),
        (["ledger", "export", "--format", "xml", "--ledger", str(path)], "csv or json"),
        (["ledger", "export", "--ledger", str(path), "-o", str(tmp_path / "x.json")], "exists"),
    ]:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("deepserial: error: ") and msg in err, err
    assert not (tmp_path / "none.db").exists()


def issue_args(vendor: Vendor, customer: str, out: Path, *extra: str, epochs: int = 0) -> list[str]:
    """``deepserial issue`` of a 3x3 serial number from the session's tiny teacher (no training at
    ``epochs=0``: these tests are about the files and the ledger, not the model)."""
    return [
        "issue",
        "--customer",
        customer,
        "--teacher",
        str(vendor.teacher_path),
        "--key",
        str(vendor.key_path),
        "--out",
        str(out),
        "--size",
        "3x3",
        "--epochs",
        str(epochs),
        "--quiet",
        *extra,
    ]


def test_issue_records_into_the_ledger(vendor: Vendor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deepserial.artifacts import read_manifest
    from deepserial.workflow import serial_from_licence

    path, out = tmp_path / "l.db", tmp_path / "cust.safetensors"
    args = issue_args(vendor, "zeta", out, "--ledger", str(path), epochs=1)
    assert main(args) == 0
    product_key = capsys.readouterr().out.split("(shown once): ")[1].strip()
    licence = tmp_path / "cust.licence.json"
    with Ledger(path) as led:
        (lic,) = led.licences()
        assert lic.customer == "zeta" and lic.model_sha256 == read_manifest(out)["integrity"]["sha256"]
        assert lic.model_path == str(out.absolute()) and lic.licence_path == str(licence.absolute())
        assert led.serial(lic, vendor.identity).to_product_key() == product_key
        assert serial_from_licence(licence).to_product_key() == product_key
        assert led.unfinished() == [] and led.check().sound
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cust.licence.json", "cust.safetensors", "l.db"]
    # an RSA owner without a ledger passphrase is refused before any training, and nothing is written
    rsa_key, _ = OwnerIdentity.generate("rsa").save(tmp_path / "rsa.pem")
    out2 = tmp_path / "cust2.safetensors"
    bad = issue_args(vendor, "zeta", out2, "--ledger", str(path))
    bad[bad.index("--key") + 1] = str(rsa_key)
    assert main(bad) == 2
    assert "seal-passphrase-env" in capsys.readouterr().err and not out2.exists()


def test_issue_checks_every_output_before_training(
    vendor: Vendor, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepserial import workflow

    def no_training(*args: object, **kw: object) -> None:
        raise AssertionError("issue trained before finding that an output cannot be written")

    monkeypatch.setattr(workflow, "issue", no_training)
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "empty.db").touch()
    (tmp_path / "junk.db").write_text("garbage " * 20)
    out = tmp_path / "cust.safetensors"
    cases = [
        (
            issue_args(vendor, "c", out, "--licence", str(tmp_path / "a-file" / "c.json")),
            "a-file is not a directory|a-file is a file, not a folder",
        ),
        (issue_args(vendor, "c", tmp_path / "a-dir", "--force"), "a-dir is a directory|a-dir: it is a folder"),
        (issue_args(vendor, "c", out, "--licence", str(out)), "three different files"),
        (
            issue_args(vendor, "c", out, "--ledger", str(tmp_path / "a-file" / "l.db")),
            "a-file is not a directory|a-file is a file, not a folder",
        ),
        (
            issue_args(vendor, "c", out, "--ledger", str(tmp_path / "a-dir")),
            "a-dir is a directory|a-dir: it is a folder",
        ),
        (issue_args(vendor, "c", out, "--ledger", str(tmp_path / "empty.db")), "empty file"),
        (issue_args(vendor, "c", out, "--ledger", str(tmp_path / "junk.db")), "not a SQLite database"),
    ]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for args, msg in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        # the shared output check or the issue path's own may speak first: either names the culprit
        assert err.startswith("deepserial: error: ") and err.count("\n") == 1, (msg, err)
        assert any(m in err for m in msg.split("|")), (msg, err)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before and sorted(p.name for p in (tmp_path / "a-dir").iterdir()) == []


@pytest.mark.parametrize("with_ledger", [True, False])
def test_a_failed_write_leaves_nothing_and_prints_no_key(
    with_ledger: bool,
    vendor: Vendor,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The licence record cannot be written (disk full) after the model was: no model, no licence, no
    temporary file, no ledger row, no product key; the same issuance then succeeds."""
    from deepserial import files

    real = files._temp_copy

    def disk_full_for_licences(path: Path, data: bytes, mode: int | None = None) -> Path:
        if ".licence.json" in Path(path).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, mode)

    out, path = tmp_path / "out" / "cust.safetensors", tmp_path / "l.db"
    (tmp_path / "out").mkdir()
    Ledger(path).close()  # an existing ledger, so the directory listing below is only the issue's doing
    args = issue_args(vendor, "zeta", out, *(["--ledger", str(path)] if with_ledger else []))
    monkeypatch.setattr(files, "_temp_copy", disk_full_for_licences)  # the model's temporary is written first
    capsys.readouterr()
    assert main(args) == 2
    res = capsys.readouterr()
    assert "No space left on device" in res.err and res.err.count("\n") == 1
    assert "product key" not in res.out
    assert list((tmp_path / "out").iterdir()) == []
    with Ledger(path) as led:
        assert led.licences() == [] and led.unfinished() == [] and led.check().sound
    monkeypatch.setattr(files, "_temp_copy", real)
    assert main(args) == 0
    assert "product key for zeta" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cust.licence.json", "cust.safetensors"]
    with Ledger(path) as led:
        assert len(led.licences()) == (1 if with_ledger else 0) and led.check().sound
