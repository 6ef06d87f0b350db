"""The licence ledger: the vendor's durable record of every issued serial number.

One SQLite file (the standard library's ``sqlite3``) that the vendor chooses. Tables: ``owners``
(public key and fingerprint), ``customers``, ``licences`` (one row per issued serial number) and, from
schema version 2, ``traces`` (every ``deepserial trace`` answer, for a later dispute). The schema is
versioned with ``PRAGMA user_version`` and migrated forward on open; a file written by a newer
deepserial is refused rather than guessed at.

What a licence row keeps, and what it never keeps:

- the **verifier string** (public text: owner, customer, time, scheme), the serial number's
  **geometry**, the dataset the customer model was trained on, the model file's SHA-256 and path;
- a **fingerprint** of the serial number: scrypt over its geometry and bits, salted with the verifier
  string. A plain hash of a 36-bit serial number could be inverted by trying all 2^36 patterns in
  hours; scrypt at the default cost (n = 2^14, about 80 ms a try on one core) makes that centuries.
- never the serial number or the signature in clear. The owner re-derives a serial number when it
  is needed (tracing): an Ed25519 signature is deterministic, so signing the stored verifier string
  again gives the same signature and the same serial number. RSA-PSS signatures are randomised, so
  for RSA owners (or on request) the signature is *sealed*: AES-256-GCM under a key that scrypt derives
  from a passphrase the vendor holds; the row keeps only the salt, nonce and ciphertext.

Concurrency: every write is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock, waited for
with a timeout), the file is in WAL mode, and a licence row with its customer and owner rows is
committed all at once or not at all: a process killed mid-issuance leaves no partial licence.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from deepserial.errors import ConfigError, IdentityError, IntegrityError
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.serial import SerialGeometry, SerialNumber

#: Forward migrations: entry ``i`` brings a database from version ``i`` to ``i + 1``.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE owners (
        id INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL UNIQUE,
        public_key_pem TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE customers (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE licences (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER NOT NULL REFERENCES owners(id),
        customer_id INTEGER NOT NULL REFERENCES customers(id),
        scheme TEXT NOT NULL,
        verifier TEXT NOT NULL UNIQUE,
        geometry TEXT NOT NULL,
        sn_fingerprint TEXT NOT NULL UNIQUE,
        fingerprint_kdf TEXT NOT NULL,
        sealed_signature BLOB,
        model_sha256 TEXT,
        model_path TEXT,
        dataset TEXT,
        issued_at TEXT NOT NULL
    );
    CREATE INDEX licences_customer ON licences(customer_id);
    """,
    """
    CREATE TABLE traces (
        id INTEGER PRIMARY KEY,
        suspect TEXT NOT NULL,
        licence_id INTEGER REFERENCES licences(id),
        p_value REAL NOT NULL,
        fpr REAL NOT NULL,
        queries INTEGER NOT NULL,
        details TEXT NOT NULL,
        traced_at TEXT NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: scrypt cost of serial-number fingerprints (n = 2**14, r = 8, p = 1: about 80 ms and 16 MiB a try).
DEFAULT_FINGERPRINT_COST = 14
_SEAL_COST = 15  # scrypt n = 2**15 for the sealing key: a passphrase guess costs ~0.2 s


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def sn_fingerprint(serial: SerialNumber, verifier: VerifierString, cost: int = DEFAULT_FINGERPRINT_COST) -> str:
    """scrypt(geometry + bits, salt = SHA-256 of the verifier string): identifies a serial number in the
    ledger without revealing it, and is expensive to invert by trying every pattern."""
    if not 10 <= cost <= 20:
        raise ConfigError(f"fingerprint cost must be 10..20 (scrypt n = 2**cost), got {cost}")
    g = serial.geometry
    msg = json.dumps(g.to_dict(), sort_keys=True).encode() + b"\x00" + serial.bits.reshape(-1).tobytes()
    salt = hashlib.sha256(b"deepserial/ledger/sn-fingerprint\x00" + verifier.to_bytes()).digest()
    return hashlib.scrypt(msg, salt=salt, n=2**cost, r=8, p=1, maxmem=2**26, dklen=32).hex()


def _seal_key(passphrase: str, salt: bytes) -> bytes:
    return hashlib.scrypt(passphrase.encode(), salt=salt, n=2**_SEAL_COST, r=8, p=1, maxmem=2**27, dklen=32)


def seal(signature: bytes, passphrase: str, verifier: VerifierString) -> bytes:
    """AES-256-GCM encryption of a signature under a passphrase, bound to its verifier string (the
    associated data), as ``salt(16) | nonce(12) | ciphertext``."""
    if not passphrase:
        raise ConfigError("sealing a signature needs a non-empty passphrase")
    salt, nonce = os.urandom(16), os.urandom(12)
    return salt + nonce + AESGCM(_seal_key(passphrase, salt)).encrypt(nonce, signature, verifier.to_bytes())


def unseal(blob: bytes, passphrase: str, verifier: VerifierString) -> bytes:
    """The signature :func:`seal` encrypted; a wrong passphrase or an edited row is refused."""
    if len(blob) < 16 + 12 + 16:
        raise IntegrityError("sealed signature in the ledger is truncated")
    try:
        return AESGCM(_seal_key(passphrase, blob[:16])).decrypt(blob[16:28], blob[28:], verifier.to_bytes())
    except InvalidTag:
        raise IdentityError(
            "cannot unseal the licence signature: wrong ledger passphrase, or the ledger row was edited"
        ) from None


@dataclass(frozen=True)
class Licence:
    """One issued licence as the ledger records it (no secret in clear)."""

    id: int
    customer: str
    owner_fingerprint: str
    scheme: str
    verifier: dict[str, str]
    geometry: dict[str, Any]
    sn_fingerprint: str
    fingerprint_kdf: str
    sealed: bool
    model_sha256: str | None
    model_path: str | None
    dataset: dict[str, Any] | None
    issued_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def serial(
        self, identity: OwnerIdentity, passphrase: str | None = None, sealed_signature: bytes | None = None
    ) -> SerialNumber:
        """Re-derive this licence's serial number with the owner's private key (Ed25519 re-signs the
        verifier string) or by unsealing the stored signature; the result must match the fingerprint."""
        if identity.fingerprint() != self.owner_fingerprint:
            raise IdentityError(
                f"licence {self.id} was issued by owner {self.owner_fingerprint}, not by the key "
                f"given ({identity.fingerprint()}); load that owner's key"
            )
        verifier = VerifierString.from_dict(self.verifier)
        if sealed_signature is not None and passphrase:
            signature = unseal(sealed_signature, passphrase, verifier)
        elif identity.algorithm == "ed25519":
            signature = identity.sign(verifier)
        elif sealed_signature is not None:
            raise IdentityError(
                f"licence {self.id} is sealed: give the ledger passphrase to re-derive its serial "
                "number (RSA signatures are randomised and cannot be re-made)"
            )
        else:
            raise IdentityError(
                f"licence {self.id} cannot be re-derived: RSA signatures are randomised and the "
                "ledger holds no sealed signature (issue with --seal-passphrase-env)"
            )
        identity.verify(verifier, signature)
        serial = SerialNumber.from_signature(signature, SerialGeometry.from_dict(self.geometry))
        if sn_fingerprint(serial, verifier, _cost(self.fingerprint_kdf)) != self.sn_fingerprint:
            raise IntegrityError(
                f"licence {self.id}: the re-derived serial number does not match the ledger's "
                "fingerprint; the row was edited"
            )
        return serial


def _cost(kdf: str) -> int:
    try:
        name, n = kdf.split(":")
        if name != "scrypt-log2n":
            raise ValueError
        return int(n)
    except ValueError:
        raise IntegrityError(f"unknown fingerprint function {kdf!r} in the ledger") from None


_LICENCE_SELECT = """
    SELECT l.id, c.name, o.fingerprint, l.scheme, l.verifier, l.geometry, l.sn_fingerprint, l.fingerprint_kdf,
           l.sealed_signature IS NOT NULL, l.model_sha256, l.model_path, l.dataset, l.issued_at
    FROM licences l JOIN customers c ON c.id = l.customer_id JOIN owners o ON o.id = l.owner_id
"""


def _licence(row: tuple) -> Licence:
    return Licence(
        int(row[0]),
        row[1],
        row[2],
        row[3],
        json.loads(row[4]),
        json.loads(row[5]),
        row[6],
        row[7],
        bool(row[8]),
        row[9],
        row[10],
        json.loads(row[11]) if row[11] else None,
        row[12],
    )


class Ledger:
    """A licence ledger in one SQLite file (created and migrated on open)."""

    def __init__(self, path: str | Path, *, timeout: float = 60.0, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise ConfigError(f"no ledger at {self.path}; issue a licence with --ledger {self.path} to create it")
        if self.path.exists() and self.path.is_dir():
            raise ConfigError(f"ledger path {self.path} is a directory; give a file name such as vendor.db")
        if self.path.exists() and self.path.stat().st_size and not _is_sqlite(self.path):
            raise IntegrityError(f"{self.path} is not a SQLite database (a deepserial ledger); check the path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise IntegrityError(f"{self.path} is not a readable deepserial ledger ({e})") from None

    # ----- schema ----------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        if self.version > SCHEMA_VERSION:
            raise IntegrityError(
                f"{self.path} has ledger schema {self.version}; this deepserial knows up to "
                f"{SCHEMA_VERSION}: upgrade deepserial"
            )
        if self.version == SCHEMA_VERSION:
            return
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._db.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        self._db.execute("BEGIN EXCLUSIVE")  # two processes opening a new file: one migrates, one waits
        try:
            for v in range(self.version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (SQLite's write lock taken at once): all of it commits, or none."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- writing ---------------------------------------------------------------------------------
    def record(
        self,
        identity: OwnerIdentity,
        verifier: VerifierString,
        serial: SerialNumber,
        *,
        model_sha256: str | None = None,
        model_path: str | None = None,
        dataset: dict[str, Any] | None = None,
        signature: bytes | None = None,
        seal_passphrase: str | None = None,
        fingerprint_cost: int = DEFAULT_FINGERPRINT_COST,
        db: sqlite3.Connection | None = None,
    ) -> int:
        """Record one issued licence; returns its id. Inside :meth:`transaction` pass its ``db`` so the
        row commits together with the caller's other work; otherwise the record is its own transaction.

        ``seal_passphrase`` (with ``signature``) keeps the signature encrypted in the row; RSA owners
        must seal, since their signatures cannot be re-made for tracing.
        """
        if identity.algorithm != "ed25519" and not seal_passphrase:
            raise ConfigError(
                "an RSA owner key signs non-deterministically: give a ledger passphrase "
                "(--seal-passphrase-env) so tracing can re-derive this serial number"
            )
        if seal_passphrase and signature is None:
            raise ConfigError("sealing needs the licence signature")
        if signature is not None:
            identity.verify(verifier, signature)
            if SerialNumber.from_signature(signature, serial.geometry) != serial:
                raise IdentityError("the serial number was not derived from this signature")
        fp = sn_fingerprint(serial, verifier, fingerprint_cost)  # slow on purpose: outside the write lock
        sealed = seal(signature, seal_passphrase, verifier) if seal_passphrase and signature else None
        if db is None:
            with self.transaction() as tx:
                return self._insert(
                    tx, identity, verifier, serial, fp, fingerprint_cost, sealed, model_sha256, model_path, dataset
                )
        return self._insert(
            db, identity, verifier, serial, fp, fingerprint_cost, sealed, model_sha256, model_path, dataset
        )

    @staticmethod
    def _insert(
        db: sqlite3.Connection,
        identity: OwnerIdentity,
        verifier: VerifierString,
        serial: SerialNumber,
        fp: str,
        cost: int,
        sealed: bytes | None,
        model_sha256: str | None,
        model_path: str | None,
        dataset: dict[str, Any] | None,
    ) -> int:
        now = _now()
        db.execute(
            "INSERT OR IGNORE INTO owners (fingerprint, public_key_pem, created_at) VALUES (?, ?, ?)",
            (identity.fingerprint(), identity.public_pem().decode(), now),
        )
        db.execute("INSERT OR IGNORE INTO customers (name, created_at) VALUES (?, ?)", (verifier.customer, now))
        owner_id = db.execute("SELECT id FROM owners WHERE fingerprint = ?", (identity.fingerprint(),)).fetchone()[0]
        cust_id = db.execute("SELECT id FROM customers WHERE name = ?", (verifier.customer,)).fetchone()[0]
        try:
            cur = db.execute(
                "INSERT INTO licences (owner_id, customer_id, scheme, verifier, geometry, sn_fingerprint, "
                "fingerprint_kdf, sealed_signature, model_sha256, model_path, dataset, issued_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    owner_id,
                    cust_id,
                    verifier.scheme,
                    verifier.to_bytes().decode(),
                    json.dumps(serial.geometry.to_dict(), sort_keys=True),
                    fp,
                    f"scrypt-log2n:{cost}",
                    sealed,
                    model_sha256,
                    model_path,
                    json.dumps(dataset, sort_keys=True) if dataset else None,
                    now,
                ),
            )
        except sqlite3.IntegrityError:
            raise IntegrityError(
                f"the ledger already holds this licence (customer {verifier.customer!r}, "
                f"{verifier.timestamp}); a licence is recorded once"
            ) from None
        return int(cur.lastrowid)

    def record_trace(
        self, suspect: str, licence_id: int | None, p_value: float, fpr: float, queries: int, details: dict[str, Any]
    ) -> int:
        """Keep a trace answer (schema version 2) for a later dispute."""
        with self.transaction() as tx:
            cur = tx.execute(
                "INSERT INTO traces (suspect, licence_id, p_value, fpr, queries, details, traced_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (suspect, licence_id, float(p_value), float(fpr), int(queries), json.dumps(details), _now()),
            )
            return int(cur.lastrowid)

    # ----- reading ---------------------------------------------------------------------------------
    def licences(self, customer: str | None = None, owner_fingerprint: str | None = None) -> list[Licence]:
        """Every licence (of one customer, of one owner), oldest first."""
        where, args = [], []
        if customer is not None:
            where.append("c.name = ?")
            args.append(customer)
        if owner_fingerprint is not None:
            where.append("o.fingerprint = ?")
            args.append(owner_fingerprint)
        sql = _LICENCE_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY l.id"
        return [_licence(r) for r in self._db.execute(sql, args)]

    def get(self, licence_id: int) -> Licence:
        row = self._db.execute(_LICENCE_SELECT + " WHERE l.id = ?", (licence_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no licence {licence_id} in {self.path}; see `deepserial ledger list`")
        return _licence(row)

    def sealed_signature(self, licence_id: int) -> bytes | None:
        row = self._db.execute("SELECT sealed_signature FROM licences WHERE id = ?", (licence_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def serial(self, licence: Licence, identity: OwnerIdentity, passphrase: str | None = None) -> SerialNumber:
        """A licence's serial number, re-derived (see :meth:`Licence.serial`)."""
        return licence.serial(identity, passphrase, self.sealed_signature(licence.id))

    def traces(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, suspect, licence_id, p_value, fpr, queries, details, traced_at FROM traces ORDER BY id"
        )
        return [
            {
                "id": r[0],
                "suspect": r[1],
                "licence_id": r[2],
                "p_value": r[3],
                "fpr": r[4],
                "queries": r[5],
                "details": json.loads(r[6]),
                "traced_at": r[7],
            }
            for r in rows
        ]

    def integrity_check(self) -> str:
        """SQLite's own ``PRAGMA integrity_check`` ("ok" when the file is sound)."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def export(self, fmt: str) -> str:
        """Every licence as CSV or JSON (no secret: sealed signatures are shown as a flag)."""
        rows = [lic.to_dict() for lic in self.licences()]
        if fmt == "json":
            return json.dumps(rows, indent=2) + "\n"
        if fmt == "csv":
            buf = io.StringIO()
            fields = list(Licence.__dataclass_fields__)
            w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in r.items()})
            return buf.getvalue()
        raise ConfigError(f"unknown export format {fmt!r}; use csv or json")


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"
