"""The licence ledger: the vendor's durable record of every issued serial number.

One SQLite file (the standard library's ``sqlite3``) that the vendor chooses. Tables: ``owners``
(public key and fingerprint), ``customers``, ``licences`` (one row per issued serial number) and, from
schema version 2, ``traces`` (every ``deepserial trace`` answer, for a later dispute). The schema is
versioned with ``PRAGMA user_version`` and migrated forward on open; a file written by a newer
deepserial is refused rather than guessed at. Version 3 gives each licence a ``state`` (``pending``
while its files are being written, ``issued`` once they are final), the licence file's path, and, for
a pending row, who is writing which temporary files (``pending``, JSON).

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

Concurrency. The file is in WAL mode (readers never block the writer). Every write is one short
``BEGIN IMMEDIATE`` transaction: the slow work of an issuance (training, the scrypt fingerprint, the
sealing key, serialising and signing the model) is done before the write lock is taken, and the lock
is held only for an insert or an update. A busy lock is waited for (SQLite's busy timeout, then
retries with backoff) up to ``timeout`` seconds, after which :class:`LedgerBusyError` says so in one
line. A new ledger is built in a temporary file and hard-linked into place, so concurrent first
issuers never see a half-initialised (or zero-length) file; an existing zero-length file is refused.
This module never opens the database file other than through SQLite: closing any other descriptor of
it would drop the POSIX locks SQLite holds in this process, and another process could then checkpoint
and delete the write-ahead log under a live connection (committed licences lost; measured before this
rule with 8 processes issuing in loops).

Crash safety of an issuance (:meth:`Ledger.begin_issue`, then the caller's file writes, then
:meth:`Ledger.complete_issue`): (1) a ``pending`` row is committed naming the final paths and the
temporary files about to be written, with the issuing process (pid, host, start time); (2) the model
and licence files are written to those temporary names in their final directories; (3) they are
renamed into place (``os.replace``, atomic); (4) the row becomes ``issued``; only then is the product
key shown. A failure in the process removes what it wrote and deletes its row. A process killed
(``kill -9``, power loss) between (1) and (4) leaves a pending row that says exactly which files may
exist: :meth:`Ledger.check` lists it and, with ``repair``, removes the row, its temporary files and
any final file that carries this licence's verifier string (a file that another issuance wrote is
left alone). Pending rows are never listed, exported or traced, so after a repair there is no
licence row without its files and no issued file without its row.

Damage. Every SQLite error, every row that does not parse (bad JSON, missing fields) and every
foreign file becomes a one-line :class:`LedgerError`; :meth:`Ledger.check` reports damage
(``PRAGMA integrity_check``, foreign keys, rows that do not parse) instead of raising.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import secrets
import socket
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from deepserial.errors import ConfigError, DeepSerialError, IdentityError, IntegrityError
from deepserial.files import stray_temps
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.serial import SerialGeometry, SerialNumber


class LedgerError(IntegrityError):
    """The ledger file cannot be used as it is: damaged, not a ledger, unreadable or unwritable."""


class LedgerBusyError(LedgerError):
    """Another process held the ledger's write lock for longer than the timeout."""


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
    """
    ALTER TABLE licences ADD COLUMN state TEXT NOT NULL DEFAULT 'issued' CHECK (state IN ('pending', 'issued'));
    ALTER TABLE licences ADD COLUMN licence_path TEXT;
    ALTER TABLE licences ADD COLUMN pending TEXT;
    CREATE INDEX licences_state ON licences(state);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: scrypt cost of serial-number fingerprints (n = 2**14, r = 8, p = 1: about 80 ms and 16 MiB a try).
DEFAULT_FINGERPRINT_COST = 14
_SEAL_COST = 15  # scrypt n = 2**15 for the sealing key: a passphrase guess costs ~0.2 s
#: A pending row older than this is abandoned even when its issuer's liveness cannot be checked (another
#: host): the pending window spans only the writing of two files, seconds even for a large model.
STALE_AFTER_S = 3600.0
#: Suffix of the temporary files an issuance writes before renaming them into place.
TEMP_SUFFIX = ".issuing"


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
    licence_path: str | None = None

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
        if name != "scrypt-log2n" or not 10 <= int(n) <= 20:
            raise ValueError
        return int(n)
    except (ValueError, AttributeError):
        raise IntegrityError(f"unknown fingerprint function {kdf!r} in the ledger") from None


_LICENCE_SELECT = """
    SELECT l.id, c.name, o.fingerprint, l.scheme, l.verifier, l.geometry, l.sn_fingerprint, l.fingerprint_kdf,
           l.sealed_signature IS NOT NULL, l.model_sha256, l.model_path, l.dataset, l.issued_at, l.licence_path
    FROM licences l JOIN customers c ON c.id = l.customer_id JOIN owners o ON o.id = l.owner_id
"""


def _json_object(text: Any, what: str, optional: bool = False) -> dict[str, Any] | None:
    """A JSON object stored in a row, or ValueError saying why it is not one."""
    if text is None and optional:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{what}: {type(text).__name__}, not JSON text")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{what}: not JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: not a JSON object")
    return value


def _licence(row: tuple) -> Licence:
    """A licence from a row of :data:`_LICENCE_SELECT`; ValueError (with the reason) when the row does
    not parse: a flipped byte in a JSON column or an edited field must not reach tracing as garbage."""
    if len(row) != 14 or not isinstance(row[0], int):
        raise ValueError("the row has the wrong shape")
    for i, what in ((1, "customer"), (2, "owner fingerprint"), (3, "scheme"), (6, "fingerprint"), (12, "time")):
        if not isinstance(row[i], str) or not row[i]:
            raise ValueError(f"the {what} is missing or not text")
    for i, what in ((9, "model digest"), (10, "model path"), (13, "licence path")):
        if row[i] is not None and not isinstance(row[i], str):
            raise ValueError(f"the {what} is not text")
    verifier = _json_object(row[4], "the verifier string")
    geometry = _json_object(row[5], "the geometry")
    dataset = _json_object(row[11], "the data set", optional=True)
    try:
        VerifierString.from_dict(verifier)  # type: ignore[arg-type]
        SerialGeometry.from_dict(geometry)  # type: ignore[arg-type]
        _cost(row[7])
    except KeyError as e:
        raise ValueError(f"the geometry lacks {e}") from None
    except (DeepSerialError, TypeError, ValueError) as e:
        raise ValueError(str(e).split(";")[0]) from None
    return Licence(
        row[0],
        row[1],
        row[2],
        row[3],
        verifier,  # type: ignore[arg-type]
        geometry,  # type: ignore[arg-type]
        row[6],
        row[7],
        bool(row[8]),
        row[9],
        row[10],
        dataset,
        row[12],
        row[13],
    )


@dataclass(frozen=True)
class Unfinished:
    """A pending licence row: an issuance that has not (yet) made its files final.

    ``stale`` is True when its issuer is known to be gone (its process no longer runs on this host, or
    the row is older than :data:`STALE_AFTER_S`): :meth:`Ledger.check` with ``repair`` removes it."""

    id: int
    customer: str
    model_path: str | None
    licence_path: str | None
    temps: list[str]
    pid: int | None
    host: str | None
    since: float | None
    stale: bool
    reason: str

    def describe(self) -> str:
        files = ", ".join(p for p in (self.model_path, self.licence_path) if p)
        return f"unfinished issuance: licence row {self.id} (customer {self.customer!r}; {files}): {self.reason}"


@dataclass
class LedgerCheck:
    """What :meth:`Ledger.check` found (and, with ``repair``, removed)."""

    path: str
    schema: int | None = None
    licences: int | None = 0  # None: the licences could not be read
    integrity: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unfinished: list[Unfinished] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        """No damage and no abandoned issuance left (one still running on this host is not damage)."""
        return self.integrity == ["ok"] and not self.problems and not any(u.stale for u in self.unfinished)

    def lines(self) -> list[str]:
        n = "unreadable" if self.licences is None else self.licences
        head = f"{self.path}: schema {self.schema}, {n} licence(s), integrity {'; '.join(self.integrity)}"
        return [
            head,
            *self.problems,
            *(u.describe() for u in self.unfinished),
            *self.repaired,
        ]


def _busy(e: sqlite3.OperationalError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), or None where unknown: with the
    pid it identifies a process even after its pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return start is None or _process_start(pid) in (None, start)


def _model_verifier(path: Path) -> dict[str, Any] | None:
    """The verifier string a deepserial model file was issued under (from its safetensors header, read
    without torch), or None when the file is not one."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100 * 2**20:
                return None
            header = json.loads(f.read(n))
        manifest = json.loads(header["__metadata__"]["deepserial"])
        licence = manifest.get("licence")
        return licence if isinstance(licence, dict) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _licence_file_verifier(path: Path) -> dict[str, Any] | None:
    """The verifier string of a licence record file, or None when the file is not one."""
    try:
        value = json.loads(path.read_bytes()).get("verifier")
        return value if isinstance(value, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create(path: Path) -> None:
    """Create an empty ledger at ``path`` (schema current, WAL mode) all at once: it is built under a
    temporary name and hard-linked into place, so another process never sees a half-made file; when
    ``path`` appeared meanwhile (another first issuer), that file is used and ours discarded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.creating")
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN EXCLUSIVE")
            for migration in MIGRATIONS:
                for stmt in migration.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        finally:
            db.close()  # the last connection: checkpoints and removes the temporary -wal
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system: rename unless someone was first
            if not path.exists():
                os.replace(tmp, path)
        _fsync_dir(path.parent)
    except sqlite3.DatabaseError as e:
        raise LedgerError(f"cannot create the ledger {path}: {e}") from None
    except OSError as e:
        raise LedgerError(f"cannot create the ledger {path}: {e.strerror or e}") from None
    finally:
        for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            if p.exists():
                p.unlink()


class Ledger:
    """A licence ledger in one SQLite file (created when missing if ``create``; migrated on open).

    ``timeout`` bounds how long one write waits for another process's write lock before
    :class:`LedgerBusyError`. Only a path that does not exist is created: an existing file must be a
    deepserial ledger (an empty or foreign file is refused, never initialised).
    """

    def __init__(self, path: str | Path, *, timeout: float = 60.0, create: bool = True) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        if self.path.is_dir():
            raise ConfigError(f"ledger path {self.path} is a directory; give a file name such as vendor.db")
        if not self.path.exists():
            if not create:
                raise ConfigError(f"no ledger at {self.path}; issue a licence with --ledger {self.path} to create it")
            _create(self.path)
        try:
            size = self.path.stat().st_size
        except OSError as e:
            raise LedgerError(f"cannot read the ledger {self.path}: {e.strerror}") from None
        if size == 0:
            raise LedgerError(
                f"{self.path} is an empty file, not a ledger; remove it if it is a leftover, or restore "
                "the ledger from a backup"
            )
        # mode=rw: SQLite must never create the file (that is _create's job); no other descriptor of
        # the file is ever opened in this process (see the module docstring: POSIX locks).
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=rw"
        try:
            self._db = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"cannot open the ledger {self.path}: {e}") from None
        try:
            with self._sql("read the ledger"):
                self._db.execute("PRAGMA foreign_keys = ON")
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    # ----- errors, locks and transactions -----------------------------------------------------------
    @contextmanager
    def _sql(self, what: str) -> Iterator[None]:
        """Turn SQLite's errors into one-line ledger errors that say what was being done."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            msg = " ".join(str(e).split())[:200]  # one line, bounded: a damaged row's text may follow
            if isinstance(e, sqlite3.OperationalError) and _busy(e):
                raise LedgerBusyError(
                    f"the ledger {self.path} stayed locked by another process for over {self.timeout:g} s "
                    f"(while trying to {what}); try again"
                ) from None
            if "readonly" in msg or "read-only" in msg:
                raise LedgerError(f"cannot write the ledger {self.path} ({msg}); check its permissions") from None
            if "not a database" in msg:
                raise LedgerError(
                    f"{self.path} is not a SQLite database (a deepserial ledger), or its header is damaged; "
                    "check the path"
                ) from None
            raise LedgerError(
                f"cannot {what}: the ledger {self.path} is damaged or unreadable ({msg}); run `deepserial "
                "ledger check` and restore it from a backup"
            ) from None

    def _retry(self, fn: Any) -> Any:
        """``fn()``, retried with backoff while SQLite answers busy without waiting (WAL recovery, a
        lock another connection is upgrading), up to ``timeout`` seconds; then the busy error."""
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(2 * delay, 0.25)

    def _query(self, sql: str, args: tuple | list = (), what: str = "read the ledger") -> list[tuple]:
        with self._sql(what):
            return self._retry(lambda: self._db.execute(sql, args).fetchall())

    @property
    def version(self) -> int:
        with self._sql("read the schema version"):
            return int(self._retry(lambda: self._db.execute("PRAGMA user_version").fetchone()[0]))

    def _migrate(self) -> None:
        if self.version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} has ledger schema {self.version}; this deepserial knows up to "
                f"{SCHEMA_VERSION}: upgrade deepserial"
            )
        if self.version == SCHEMA_VERSION:
            return
        if self._retry(lambda: self._db.execute("PRAGMA journal_mode").fetchone()[0]) != "wal":
            self._retry(lambda: self._db.execute("PRAGMA journal_mode = WAL"))  # readers never block the writer
        self._retry(lambda: self._db.execute("BEGIN EXCLUSIVE"))  # two processes migrating: one does, one waits
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
        """One write transaction (SQLite's write lock taken at once, waited for up to ``timeout``): all
        of it commits, or none. Keep slow work out of it: every other writer waits meanwhile."""
        with self._sql("take the write lock"):
            self._retry(lambda: self._db.execute("BEGIN IMMEDIATE"))
        try:
            yield self._db
            with self._sql("commit"):
                self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    def check_writable(self) -> None:
        """Raise :class:`LedgerError` unless this process can take the write lock (a read-only file or
        directory, a damaged header): checked before an issuance trains for minutes."""
        with self._sql("take the write lock"):
            self._retry(lambda: self._db.execute("BEGIN IMMEDIATE"))
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- writing ---------------------------------------------------------------------------------
    @staticmethod
    def _prepare(
        identity: OwnerIdentity,
        verifier: VerifierString,
        serial: SerialNumber,
        signature: bytes | None,
        seal_passphrase: str | None,
        fingerprint_cost: int,
    ) -> tuple[str, bytes | None]:
        """The checks and the slow part of a record (scrypt fingerprint, sealing key): done before the
        write lock is taken, so other issuers are not kept waiting."""
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
        fp = sn_fingerprint(serial, verifier, fingerprint_cost)
        sealed = seal(signature, seal_passphrase, verifier) if seal_passphrase and signature else None
        return fp, sealed

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
        licence_path: str | None = None,
        db: sqlite3.Connection | None = None,
    ) -> int:
        """Record one issued licence whose files (if any) are already final; returns its id. Inside
        :meth:`transaction` pass its ``db`` so the row commits together with the caller's other work;
        otherwise the record is its own short transaction (the fingerprint is computed before it).

        ``seal_passphrase`` (with ``signature``) keeps the signature encrypted in the row; RSA owners
        must seal, since their signatures cannot be re-made for tracing. Issuing files and a row
        together, crash-safely, is :meth:`begin_issue` / :meth:`complete_issue`.
        """
        fp, sealed = self._prepare(identity, verifier, serial, signature, seal_passphrase, fingerprint_cost)
        fields = _Row(fp, fingerprint_cost, sealed, model_sha256, model_path, licence_path, dataset, "issued", None)
        if db is None:
            with self.transaction() as tx:
                return self._insert(tx, identity, verifier, serial, fields)
        return self._insert(db, identity, verifier, serial, fields)

    def begin_issue(
        self,
        identity: OwnerIdentity,
        verifier: VerifierString,
        serial: SerialNumber,
        *,
        model_path: str | Path,
        licence_path: str | Path,
        temp_paths: list[str | Path],
        dataset: dict[str, Any] | None = None,
        signature: bytes | None = None,
        seal_passphrase: str | None = None,
        fingerprint_cost: int = DEFAULT_FINGERPRINT_COST,
    ) -> int:
        """Step 1 of a crash-safe issuance (module docstring): commit a ``pending`` row naming the final
        files and the temporary ones about to be written, and this process (pid, host, start time).
        Returns the row id for :meth:`complete_issue` or :meth:`abandon_issue`. Nothing may be written
        to any of those paths before this returns."""
        fp, sealed = self._prepare(identity, verifier, serial, signature, seal_passphrase, fingerprint_cost)
        pending = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _process_start(os.getpid()),
            "since": time.time(),
            "temps": [str(Path(p).absolute()) for p in temp_paths],
        }
        fields = _Row(
            fp,
            fingerprint_cost,
            sealed,
            None,
            str(Path(model_path).absolute()),
            str(Path(licence_path).absolute()),
            dataset,
            "pending",
            json.dumps(pending, sort_keys=True),
        )
        with self.transaction() as tx:
            return self._insert(tx, identity, verifier, serial, fields)

    def complete_issue(self, licence_id: int, model_sha256: str) -> None:
        """Step 4: the files are final, so the pending row becomes an issued licence. Refused when the
        row is no longer pending (``ledger check --repair`` judged the issuer dead and removed it)."""
        with self.transaction() as tx, self._sql("complete the licence"):
            n = tx.execute(
                "UPDATE licences SET state = 'issued', model_sha256 = ?, pending = NULL, issued_at = ? "
                "WHERE id = ? AND state = 'pending'",
                (model_sha256, _now(), licence_id),
            ).rowcount
            if n != 1:
                raise LedgerError(
                    f"pending licence row {licence_id} is gone from {self.path} (removed by `deepserial ledger "
                    "check --repair`?); the licence was not issued"
                )

    def abandon_issue(self, licence_id: int) -> bool:
        """Delete a pending row whose issuance failed. Returns whether the caller may remove its files:
        True unless the row is (already) an issued licence, whose files must stay."""
        with self.transaction() as tx, self._sql("remove the unfinished licence"):
            if tx.execute("DELETE FROM licences WHERE id = ? AND state = 'pending'", (licence_id,)).rowcount:
                return True
            return tx.execute("SELECT 1 FROM licences WHERE id = ?", (licence_id,)).fetchone() is None

    def _insert(
        self,
        db: sqlite3.Connection,
        identity: OwnerIdentity,
        verifier: VerifierString,
        serial: SerialNumber,
        row: _Row,
    ) -> int:
        now = _now()
        with self._sql("record the licence"):
            db.execute(
                "INSERT OR IGNORE INTO owners (fingerprint, public_key_pem, created_at) VALUES (?, ?, ?)",
                (identity.fingerprint(), identity.public_pem().decode(), now),
            )
            db.execute("INSERT OR IGNORE INTO customers (name, created_at) VALUES (?, ?)", (verifier.customer, now))
            owner_id = db.execute("SELECT id FROM owners WHERE fingerprint = ?", (identity.fingerprint(),)).fetchone()
            cust_id = db.execute("SELECT id FROM customers WHERE name = ?", (verifier.customer,)).fetchone()
            try:
                cur = db.execute(
                    "INSERT INTO licences (owner_id, customer_id, scheme, verifier, geometry, sn_fingerprint, "
                    "fingerprint_kdf, sealed_signature, model_sha256, model_path, dataset, issued_at, state, "
                    "licence_path, pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        owner_id[0],
                        cust_id[0],
                        verifier.scheme,
                        verifier.to_bytes().decode(),
                        json.dumps(serial.geometry.to_dict(), sort_keys=True),
                        row.fingerprint,
                        f"scrypt-log2n:{row.cost}",
                        row.sealed,
                        row.model_sha256,
                        row.model_path,
                        json.dumps(row.dataset, sort_keys=True) if row.dataset else None,
                        now,
                        row.state,
                        row.licence_path,
                        row.pending,
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
        with self.transaction() as tx, self._sql("record the trace"):
            cur = tx.execute(
                "INSERT INTO traces (suspect, licence_id, p_value, fpr, queries, details, traced_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (suspect, licence_id, float(p_value), float(fpr), int(queries), json.dumps(details), _now()),
            )
            return int(cur.lastrowid)

    # ----- reading ---------------------------------------------------------------------------------
    def _parse(self, row: tuple) -> Licence:
        try:
            return _licence(row)
        except ValueError as e:
            rid = row[0] if row else "?"
            raise LedgerError(
                f"licence row {rid} in {self.path} is damaged ({e}); run `deepserial ledger check`"
            ) from None

    def licences(self, customer: str | None = None, owner_fingerprint: str | None = None) -> list[Licence]:
        """Every issued licence (of one customer, of one owner), oldest first; pending rows (an issuance
        still writing its files, or abandoned) are not licences and are left out."""
        where, args = ["l.state = 'issued'"], []
        if customer is not None:
            where.append("c.name = ?")
            args.append(customer)
        if owner_fingerprint is not None:
            where.append("o.fingerprint = ?")
            args.append(owner_fingerprint)
        sql = _LICENCE_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY l.id"
        return [self._parse(r) for r in self._query(sql, args, "list the licences")]

    def get(self, licence_id: int) -> Licence:
        rows = self._query(_LICENCE_SELECT + " WHERE l.id = ? AND l.state = 'issued'", (licence_id,), "read a licence")
        if not rows:
            raise ConfigError(f"no licence {licence_id} in {self.path}; see `deepserial ledger list`")
        return self._parse(rows[0])

    def sealed_signature(self, licence_id: int) -> bytes | None:
        rows = self._query("SELECT sealed_signature FROM licences WHERE id = ?", (licence_id,), "read a licence")
        if not rows or rows[0][0] is None:
            return None
        if not isinstance(rows[0][0], bytes):
            raise LedgerError(f"licence row {licence_id} in {self.path} is damaged (the sealed signature is not bytes)")
        return bytes(rows[0][0])

    def serial(self, licence: Licence, identity: OwnerIdentity, passphrase: str | None = None) -> SerialNumber:
        """A licence's serial number, re-derived (see :meth:`Licence.serial`)."""
        return licence.serial(identity, passphrase, self.sealed_signature(licence.id))

    def traces(self) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT id, suspect, licence_id, p_value, fpr, queries, details, traced_at FROM traces ORDER BY id",
            (),
            "read the traces",
        )
        out = []
        for r in rows:
            try:
                details = _json_object(r[6], "its details")
            except ValueError as e:
                raise LedgerError(f"trace row {r[0]} in {self.path} is damaged ({e})") from None
            out.append(
                {
                    "id": r[0],
                    "suspect": r[1],
                    "licence_id": r[2],
                    "p_value": r[3],
                    "fpr": r[4],
                    "queries": r[5],
                    "details": details,
                    "traced_at": r[7],
                }
            )
        return out

    def integrity_check(self) -> str:
        """SQLite's own ``PRAGMA integrity_check`` ("ok" when the file is sound; else its first
        findings, joined)."""
        return "; ".join(self._integrity())

    def _integrity(self, limit: int = 20) -> list[str]:
        return [str(r[0]) for r in self._query(f"PRAGMA integrity_check({int(limit)})", (), "check integrity")]

    def export(self, fmt: str) -> str:
        """Every licence as CSV or JSON (no secret: sealed signatures are shown as a flag)."""
        if fmt not in ("csv", "json"):
            raise ConfigError(f"unknown export format {fmt!r}; use csv or json")
        rows = [lic.to_dict() for lic in self.licences()]
        if fmt == "json":
            return json.dumps(rows, indent=2) + "\n"
        buf = io.StringIO()
        fields = list(Licence.__dataclass_fields__)
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in r.items()})
        return buf.getvalue()

    # ----- unfinished issuances, damage --------------------------------------------------------------
    def unfinished(self) -> list[Unfinished]:
        """Every pending row, judged: still being issued by a live process, or abandoned (``stale``)."""
        rows = self._query(
            "SELECT l.id, c.name, l.model_path, l.licence_path, l.pending FROM licences l "
            "LEFT JOIN customers c ON c.id = l.customer_id WHERE l.state = 'pending' ORDER BY l.id",
            (),
            "list unfinished issuances",
        )
        host, now = socket.gethostname(), time.time()
        out = []
        for rid, customer, model_path, licence_path, pending in rows:
            try:
                p = _json_object(pending, "pending") or {}
                pid, since = p.get("pid"), p.get("since")
                temps = [str(t) for t in p.get("temps", [])]
                pid = int(pid) if pid is not None else None
                since = float(since) if since is not None else None
            except (ValueError, TypeError):
                p, pid, since, temps = {}, None, None, []
            age = now - since if since is not None else None
            if age is not None and age > STALE_AFTER_S:
                stale, reason = True, f"abandoned (pending for {age / 3600:.1f} h)"
            elif pid is None:
                stale, reason = True, "abandoned (its issuer is not recorded)"
            elif p.get("host") == host and not _alive(pid, p.get("start")):
                stale, reason = True, f"abandoned (issuer process {pid} is gone)"
            elif p.get("host") == host:
                stale, reason = False, f"in progress (issuer process {pid} is running)"
            else:
                stale, reason = False, f"in progress? (issuer process {pid} on host {p.get('host')})"
            out.append(
                Unfinished(
                    rid,
                    str(customer),
                    model_path,
                    licence_path,
                    temps,
                    pid,
                    p.get("host"),
                    since,
                    stale,
                    reason,
                )
            )
        return out

    def repair(self, item: Unfinished) -> list[str]:
        """Remove an abandoned issuance: its temporary files, every final file that carries its verifier
        string (written by it, not by another issuance), then its row. Returns the files removed. Done
        under the write lock, re-reading the row first, so an issuer that completes meanwhile wins."""
        removed: list[str] = []
        with self.transaction() as tx, self._sql("repair the unfinished issuance"):
            row = tx.execute("SELECT verifier, state FROM licences WHERE id = ?", (item.id,)).fetchone()
            if row is None or row[1] != "pending":
                return removed
            try:
                verifier = json.loads(row[0])
            except (TypeError, ValueError):
                verifier = None
            for t in map(Path, item.temps):
                for p in [t, *stray_temps(t)]:  # and atomic_write's own temporary file
                    if p.is_file():
                        p.unlink()
                        removed.append(str(p))
            finals = [(item.model_path, _model_verifier), (item.licence_path, _licence_file_verifier)]
            for final, read in finals:
                if final and verifier is not None and Path(final).is_file() and read(Path(final)) == verifier:
                    Path(final).unlink()
                    removed.append(final)
            tx.execute("DELETE FROM licences WHERE id = ? AND state = 'pending'", (item.id,))
        return removed

    def check(self, repair: bool = False) -> LedgerCheck:
        """Examine the ledger without raising on damage: SQLite's integrity check, foreign keys, every
        licence and trace row parsed, and unfinished issuances (removed by :meth:`repair` when ``repair``)."""
        rep = LedgerCheck(str(self.path))

        def query(sql: str) -> list[tuple]:
            return self._retry(lambda: self._db.execute(sql).fetchall())

        def failed(what: str, e: sqlite3.DatabaseError) -> str:
            return f"cannot {what}: {' '.join(str(e).split())[:200]}"

        try:
            rep.schema = int(query("PRAGMA user_version")[0][0])
            rep.integrity = [str(r[0]) for r in query("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as e:
            rep.integrity = [f"not checked ({failed('read the file', e)})"]
        try:
            for r in query("PRAGMA foreign_key_check"):
                rep.problems.append(f"row {r[1]} of table {r[0]} points at a missing row of {r[2]}")
        except sqlite3.DatabaseError as e:
            rep.problems.append(failed("check foreign keys", e))
        try:
            for row in query(_LICENCE_SELECT.replace(" JOIN ", " LEFT JOIN ") + " WHERE l.state = 'issued'"):
                try:
                    _licence(row)
                    rep.licences = (rep.licences or 0) + 1
                except ValueError as e:
                    rep.problems.append(f"licence row {row[0]} does not parse ({e})")
        except sqlite3.DatabaseError as e:
            rep.licences = None
            rep.problems.append(failed("read the licences", e))
        try:
            for rid, details in query("SELECT id, details FROM traces"):
                try:
                    _json_object(details, "its details")
                except ValueError as e:
                    rep.problems.append(f"trace row {rid} does not parse ({e})")
        except sqlite3.DatabaseError as e:
            rep.problems.append(failed("read the traces", e))
        try:
            rep.unfinished = self.unfinished()
        except LedgerError as e:
            rep.problems.append(str(e))
        if repair:
            kept = []
            for item in rep.unfinished:
                if not item.stale:
                    kept.append(item)
                    continue
                try:
                    files = self.repair(item)
                except (LedgerError, OSError) as e:
                    kept.append(item)
                    rep.problems.append(f"could not repair licence row {item.id}: {e}")
                    continue
                what = f" and {len(files)} file(s): {', '.join(files)}" if files else " (no file of it was on disk)"
                rep.repaired.append(f"removed unfinished licence row {item.id} (customer {item.customer!r}){what}")
            rep.unfinished = kept
        return rep


@dataclass(frozen=True)
class _Row:
    """The columns of a licence row beyond what the verifier string and serial number give."""

    fingerprint: str
    cost: int
    sealed: bytes | None
    model_sha256: str | None
    model_path: str | None
    licence_path: str | None
    dataset: dict[str, Any] | None
    state: str
    pending: str | None


def issue_temp_path(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` for an issuance to write to before renaming into place; its
    suffix (:data:`TEMP_SUFFIX`) marks it as deepserial's."""
    p = Path(path)
    return p.with_name(f".{p.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
