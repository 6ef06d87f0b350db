"""The licence ledger: records, secrets kept out, migration, concurrency, crash safety, CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from deepserial.cli import main
from deepserial.errors import ConfigError, IdentityError, IntegrityError
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import MIGRATIONS, SCHEMA_VERSION, Ledger, sn_fingerprint
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
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO owners VALUES (1, 'fp', 'pem', 't')")
    db.execute("INSERT INTO customers VALUES (1, 'acme', 't')")
    db.execute(
        "INSERT INTO licences (owner_id, customer_id, scheme, verifier, geometry, sn_fingerprint, "
        "fingerprint_kdf, issued_at) VALUES (1, 1, 'dsn', '{}', '{}', 'f', 'scrypt-log2n:10', 't')"
    )
    db.commit()
    db.close()
    with Ledger(path) as led:
        assert led.version == SCHEMA_VERSION == 2
        assert [lic.customer for lic in led.licences()] == ["acme"]
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
    with pytest.raises(ConfigError, match="directory"):
        Ledger(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, really" * 10)
    with pytest.raises(IntegrityError, match="not a SQLite database"):
        Ledger(junk)
    assert junk.read_bytes().startswith(b"not a database")


WORKER = textwrap.dedent("""
    import sys
    from deepserial.identity import OwnerIdentity, VerifierString
    from deepserial.ledger import Ledger
    from deepserial.serial import SerialGeometry, SerialNumber
    path, worker, n, cost, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    ident = OwnerIdentity.load(key)
    led = Ledger(path)
    for i in range(n):
        v = VerifierString(ident.fingerprint(), f"w{worker}-c{i}", f"2026-01-01T00:00:00+00:00", "dsn")
        sig = ident.sign(v)
        sn = SerialNumber.from_signature(sig, SerialGeometry(6, 6, 0, 0))
        with led.transaction() as tx:  # the slow fingerprint inside the lock: a kill lands mid-transaction
            lid = led.record(ident, v, sn, signature=sig, fingerprint_cost=cost, db=tx)
        print(lid, flush=True)
""")


def test_eight_processes_issue_fifty_licences_each(tmp_path: Path) -> None:
    ident = OwnerIdentity.generate()
    key, _ = ident.save(tmp_path / "owner.pem")
    path = tmp_path / "l.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), str(w), "50", "10", str(key)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(8)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    with Ledger(path) as led:
        lics = led.licences()
        assert len(lics) == 400 and len({lic.id for lic in lics}) == 400
        assert len({lic.customer for lic in lics}) == 400 and len({lic.sn_fingerprint for lic in lics}) == 400
        assert sorted(int(x) for o, _ in outs for x in o.split()) == sorted(lic.id for lic in lics)
        assert led.integrity_check() == "ok"


def test_a_process_killed_mid_issuance_leaves_no_partial_licence(tmp_path: Path) -> None:
    ident = OwnerIdentity.generate()
    key, _ = ident.save(tmp_path / "owner.pem")
    path = tmp_path / "l.db"
    p = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), "0", "1000", "14", str(key)], stdout=subprocess.PIPE, text=True
    )
    committed = []
    deadline = time.monotonic() + 120
    while len(committed) < 5 and time.monotonic() < deadline:
        committed.append(int(p.stdout.readline()))
    time.sleep(0.03)  # into the next transaction's fingerprint (80 ms inside the write lock)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    committed += [int(x) for x in p.stdout.read().split()]
    with Ledger(path) as led:
        assert led.integrity_check() == "ok"
        lics = led.licences()
        # every row is whole (joined to its owner and customer) and each one re-derives to its fingerprint
        n_rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM licences").fetchone()[0]
        assert n_rows == len(lics) and len(committed) <= len(lics) <= len(committed) + 1
        for lic in lics:
            led.serial(lic, ident)
        # the ledger still takes new licences after the crash
        record(led, ident, "after-crash", 59)


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


def test_issue_records_into_the_ledger(vendor: Vendor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deepserial.artifacts import read_manifest

    path, out = tmp_path / "l.db", tmp_path / "cust.safetensors"
    args = [
        "issue",
        "--customer",
        "zeta",
        "--teacher",
        str(vendor.teacher_path),
        "--key",
        str(vendor.key_path),
        "--out",
        str(out),
        "--size",
        "3x3",
        "--epochs",
        "1",
        "--quiet",
        "--ledger",
        str(path),
    ]
    assert main(args) == 0
    product_key = capsys.readouterr().out.split("(shown once): ")[1].strip()
    with Ledger(path) as led:
        (lic,) = led.licences()
        assert lic.customer == "zeta" and lic.model_sha256 == read_manifest(out)["integrity"]["sha256"]
        assert led.serial(lic, vendor.identity).to_product_key() == product_key
    # an RSA owner without a ledger passphrase is refused before any training, and nothing is written
    rsa_key, _ = OwnerIdentity.generate("rsa").save(tmp_path / "rsa.pem")
    out2 = tmp_path / "cust2.safetensors"
    bad = [*args[:6], str(rsa_key), "--out", str(out2), *args[9:]]
    assert main(bad) == 2
    assert "seal-passphrase-env" in capsys.readouterr().err and not out2.exists()
    # an unreadable ledger is refused before training
    (tmp_path / "bad.db").write_text("garbage " * 20)
    assert main([*args[:8], str(out2), *args[9:-1], str(tmp_path / "bad.db")]) == 2
    assert "not a SQLite database" in capsys.readouterr().err and not out2.exists()
