"""Writing output files: checked before the work, written atomically, all or nothing.

Every file deepserial writes (models, keys, licences, reports, checkpoints, exports) goes through
this module, so that three promises hold everywhere:

- :func:`check_writable` refuses an output path that cannot be written (permission denied, a parent
  that is a file, a path that is a folder) with one line, *before* a command spends minutes training
  or evaluating;
- :func:`atomic_write` writes a temporary file in the target's folder, flushes it to disk and
  renames it over the target: a reader sees the old file or the whole new one, never a part;
- :func:`atomic_write_all` does that for several files that belong together (a private key and its
  public half, a customer model and its licence record, a report's JSON and Markdown): every file
  is written to a temporary first and only then renamed into place, so a failure leaves none of
  the new files on disk.

A write that fails anyway (disk full, a folder made read-only meanwhile) raises
:class:`~deepserial.errors.ConfigError` with one line naming the path.

Under torchrun the writers are collective: rank 0 writes (or, inside
:func:`deepserial.distributed.solo`, the rank running the job) and every rank waits until the files
are there.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path

from deepserial import distributed
from deepserial.errors import ConfigError

#: One file to write: its path, its bytes and its mode (None: the default mode under the umask).
FileSpec = tuple[str | Path, bytes, int | None]


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` for a relative path with no existing part)."""
    p = path
    while True:
        try:
            p.stat()
            return p
        except FileNotFoundError:
            if p.parent == p:
                return p
            p = p.parent
        except NotADirectoryError:  # a component above is a file: step up until it is the one that exists
            p = p.parent


def check_writable(*paths: str | Path | None, directory: bool = False) -> None:
    """Raise :class:`ConfigError` unless every path can be created or replaced by this process.

    A file path must not be an existing folder, and its nearest existing ancestor must be a folder in
    which a file can be created (checked by creating and removing a probe file, so the answer holds
    for root, ACLs and read-only mounts alike). With ``directory=True`` the paths are output
    *folders*: each must be a folder if it exists, and files must be creatable in it. Nothing is
    left on disk. ``None`` entries are skipped (optional outputs).
    """
    for raw in paths:
        if raw is None:
            continue
        path = Path(raw)
        try:
            if path.is_dir() and not directory:
                raise ConfigError(f"cannot write {path}: it is a folder; give a file path")
            if path.exists() and directory and not path.is_dir():
                raise ConfigError(f"cannot write into {path}: it is a file, not a folder")
            base = _nearest_existing(path if directory else path.parent)
        except OSError as e:
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
        if not base.is_dir():
            raise ConfigError(f"cannot write {path}: {base} is a file, not a folder")
        try:
            with tempfile.NamedTemporaryFile(dir=base, prefix=".deepserial-probe-"):
                pass
        except OSError as e:
            raise ConfigError(f"cannot write {path}: {e.strerror or e} in {base}") from None


#: Random bytes in a temporary file's name (:func:`_temp_copy`), written as twice as many hex digits.
_TEMP_TOKEN_BYTES = 6


def stray_temps(path: str | Path) -> list[Path]:
    """The temporary files a write of ``path`` killed midway left beside it (exactly :func:`_temp_copy`'s
    names for ``path``, nothing a write of another path leaves), for whoever cleans up after a crash
    (``ledger check --repair``)."""
    path = Path(path)
    name = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{{2 * _TEMP_TOKEN_BYTES}}}\.tmp")
    try:
        return sorted(p for p in path.parent.iterdir() if name.fullmatch(p.name) and p.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _temp_copy(path: Path, data: bytes, mode: int | None) -> Path:
    """``data`` in a new temporary file beside ``path``, flushed to disk; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(_TEMP_TOKEN_BYTES)}.tmp")
    # A file with an explicit mode (a secret) is created 0600 and given its mode before any byte is
    # written: a private key never sits on disk readable by others, not even for a moment. Others get
    # the usual 0666 under the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_files_here(files: Sequence[FileSpec]) -> None:
    """Write ``files`` all or nothing from this process alone (no collective; see :func:`atomic_write_all`).

    Every file goes to a temporary beside its target first; only when all are on disk are they renamed
    into place. On any failure the temporaries are removed, as is every target this call created.
    """
    staged: list[tuple[Path, Path, bool]] = []
    done: list[tuple[Path, bool]] = []
    current = Path(files[0][0]) if files else Path()
    try:
        for raw, data, mode in files:
            current = Path(raw)
            staged.append((_temp_copy(current, data, mode), current, current.exists()))
        for tmp, path, existed in staged:
            current = path
            os.replace(tmp, path)
            done.append((path, existed))
    except OSError as e:
        for path, existed in done:
            if not existed:
                path.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {current}: {e.strerror or e}") from None
    finally:
        for tmp, _, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def atomic_write_all(files: Sequence[FileSpec]) -> None:
    """Write several files that belong together, all or nothing (:func:`write_files_here`).

    Collective under torchrun: the writing rank writes, every rank waits until the files are there, and
    a failed write is every rank's error (no rank is left waiting).
    """
    distributed.main_only(lambda: write_files_here(files))


def atomic_write(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    ``mode`` (e.g. 0o600 for a secret) is the file's mode from its creation on. Collective under
    torchrun, like :func:`atomic_write_all`.
    """
    atomic_write_all([(path, data, mode)])
