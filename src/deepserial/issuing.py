"""Issuing a customer model to files and the ledger: both files or neither, and a ledger row only with them.

:func:`deepserial.workflow.issue` trains a customer model in memory; this module is the transaction
around it that ``deepserial issue`` runs. Every output is checked writable before training
(:func:`check_issue_outputs`); the customer model and the owner's licence record are written under
temporary names and renamed into place; with a ledger (:mod:`deepserial.ledger`) a pending row naming
those files comes first and the licence is final only after both files are, so an issuer killed midway
leaves a pending row that ``deepserial ledger check --repair`` removes with its files.

The workflow's ``issue`` and ``save_issued`` are looked up on :mod:`deepserial.workflow` at call time
(``workflow.issue``), not bound at import, so that a test (or a plug-in) that replaces them there is
obeyed here too.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

from deepserial import workflow
from deepserial.artifacts import load_model
from deepserial.distributed import is_main_process, writes_here
from deepserial.errors import ConfigError
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import Ledger, issue_temp_path
from deepserial.schemes.dsn import DSNConfig
from deepserial.training import TrainConfig

__all__ = ["check_issue_outputs", "issue_into_ledger", "issue_to_files", "write_issued_files"]


def check_issue_outputs(*paths: Path | None) -> None:
    """Refuse, before any training, outputs of ``issue`` that could not be written: the same path given
    twice, a directory, a parent that is a file, a directory where no file can be created (probed by
    creating and removing a file there, which permissions, read-only mounts and quotas all answer)."""
    given = [p for p in paths if p is not None]
    resolved = [p.resolve() for p in given]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("the customer model, licence record and ledger must be three different files")
    for p in given:
        if p.is_dir():
            raise ConfigError(f"{p} is a directory; give a file name")
        d = p.parent
        while not d.exists() and d != d.parent:  # directories still missing are created when writing
            d = d.parent
        if not d.is_dir():
            raise ConfigError(f"cannot write {p}: {d} is not a directory")
        try:
            fd, probe = tempfile.mkstemp(dir=d, prefix=".deepserial-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"cannot write {p}: {e.strerror} in {d}") from None


def _place_issued(
    issued: workflow.Issued,
    out: Path,
    licence: Path,
    ident: OwnerIdentity,
    temps: list[Path],
    placed: list[Path],
) -> dict[str, Any]:
    """Write the customer model and licence record under ``temps`` (hidden names in the final
    directories, each written atomically), then rename both into place, appending each final path to
    ``placed`` as it lands; returns the model's manifest. Under torchrun every rank calls this (the
    writes are collective) and rank 0 writes and renames."""
    try:
        manifest = workflow.save_issued(issued, temps[0], temps[1], ident)
        if writes_here():
            for tmp, final in zip(temps, (out, licence), strict=True):
                os.replace(tmp, final)
                placed.append(final)
            for d in {out.parent, licence.parent}:
                fd = os.open(d, os.O_RDONLY)  # the renames survive a power cut before the ledger says final
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except OSError as e:  # a full disk, a directory made read-only since the check before training
        raise ConfigError(f"cannot write the issued files: {e.strerror or e} ({e.filename or out.parent})") from None
    return manifest


def _discard(paths: list[Path]) -> None:
    """Remove what a failed issuance wrote (best effort: the error being raised is the one to show)."""
    for p in paths:
        with suppress(OSError):
            p.unlink(missing_ok=True)


def write_issued_files(issued: workflow.Issued, out: Path, licence: Path, ident: OwnerIdentity) -> None:
    """``issue`` without a ledger: both files or neither (a failure removes what was written)."""
    temps, placed = [issue_temp_path(out), issue_temp_path(licence)], []
    try:
        _place_issued(issued, out, licence, ident, temps, placed)
    except BaseException:
        _discard([*temps, *placed])
        raise


def issue_into_ledger(
    led: Ledger,
    issued: workflow.Issued,
    out: Path,
    licence: Path,
    ident: OwnerIdentity,
    seal: str | None,
) -> None:
    """Record the licence and write its files so that a row and its files exist together or not at
    all (the protocol of :mod:`deepserial.ledger`): a pending row naming the files (its fingerprint and
    sealed signature computed before the write lock), the files under temporary names, renamed into
    place, the row made final. The write lock is held only for the two short updates. On a failure
    the pending row is deleted and the files removed; if even that fails (or the process is killed),
    the pending row remains for `deepserial ledger check --repair`."""
    temps, placed = [issue_temp_path(out), issue_temp_path(licence)], []
    lid = led.begin_issue(
        ident,
        VerifierString.from_dict(issued.licence["verifier"]),
        issued.serial,
        model_path=out,
        licence_path=licence,
        temp_paths=temps,
        dataset=issued.manifest.get("dataset"),
        signature=bytes.fromhex(issued.licence["signature"]),
        seal_passphrase=seal,
    )
    try:
        manifest = _place_issued(issued, out, licence, ident, temps, placed)
        led.complete_issue(lid, manifest["integrity"]["sha256"])
    except BaseException:
        try:
            gone = led.abandon_issue(lid)
        except Exception:  # the pending row names every file: `ledger check --repair` finishes the job
            gone = False
        if gone:
            _discard([*temps, *placed])
        raise


def issue_to_files(
    teacher: Path,
    ident: OwnerIdentity,
    customer: str,
    *,
    out: Path,
    licence: Path,
    ledger: Path | None = None,
    seal: str | None = None,
    owner_id: str | None = None,
    size: tuple[int, int] = workflow.DEFAULT_SN_SIZE,
    position: tuple[int, int] | None = None,
    config: DSNConfig | None = None,
    train: TrainConfig | None = None,
    scale: int | None = None,
) -> workflow.Issued:
    """Issue ``customer`` a model distilled from the teacher file ``teacher`` and write it to ``out``
    with the owner's licence record at ``licence``, recorded in ``ledger`` when given (a pending row
    first; see the module docstring). ``seal`` keeps the licence signature encrypted in the ledger
    under that passphrase (required for RSA owner keys, whose signatures cannot be re-derived).

    The caller checks the outputs first (:func:`check_issue_outputs`); here the ledger rules come
    before training, and an existing ledger is opened and its write lock tried before training too (a
    missing one is created only when the licence is recorded). Under torchrun every rank trains and
    writes (collectively) and only rank 0 opens the ledger, so a licence gets one row.
    """
    if ledger is None and seal is not None:
        raise ConfigError("--seal-passphrase-env needs --ledger: the sealed signature is kept in the ledger")
    if ledger is not None and ident.algorithm != "ed25519" and seal is None:
        raise ConfigError(
            "an RSA owner key signs non-deterministically: give --seal-passphrase-env so the ledger "
            "can re-derive this serial number for tracing"
        )
    records = ledger is not None and is_main_process()
    led = Ledger(ledger, create=False) if records and (ledger.exists() or ledger.is_symlink()) else None
    try:
        if led is not None:
            led.check_writable()
        issued = workflow.issue(
            load_model(teacher),
            ident,
            customer,
            owner_id=owner_id,
            size=size,
            position=position,
            config=config,
            train=train,
            scale=scale,
        )
        if records:
            led = led or Ledger(ledger)
            issue_into_ledger(led, issued, out, licence, ident, seal)
        else:
            write_issued_files(issued, out, licence, ident)
    finally:
        if led is not None:
            led.close()
    return issued
