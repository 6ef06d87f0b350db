"""Work folders: what lets a reproduction of hours resume where an interruption stopped it.

A dsn-security seed, the tracing run and a WRT suite on full fashion-mnist each take hours of one CPU
core, longer than a session or a CI job may last. Each keeps its fixed facts and every finished stage in
a work folder (``--work``). The first invocation records its configuration and signing time in
``run.json``; every later one must have the same configuration (a folder of another one is refused,
never mixed) and signs at the recorded time, so the keys it re-creates are those the kept stages were
measured with. A stage is kept whole or not at all (:func:`deepserial.files.atomic_write`), and a model
re-created on resume is checked against the weights the kept stages saw (:func:`same_weights`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from deepserial.errors import ConfigError
from deepserial.files import atomic_write
from deepserial.report import json_bytes
from deepserial.schemes.dsn import DSNConfig


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two recorded configurations are the same run's. A ``recipe`` entry (the DSN recipe the
    customer models train with) is compared as a :class:`DSNConfig`, so a recipe option added later, off
    by default, does not make an earlier record look like another configuration; beside a recipe, the
    ``dsn`` overrides it was resolved from are not compared (a research recipe that becomes the shipped
    default is the same recipe, reached without overrides)."""
    a, b = dict(a), dict(b)
    ra, rb = a.pop("recipe", None), b.pop("recipe", None)
    if ra is not None and rb is not None:
        a.pop("dsn", None)
        b.pop("dsn", None)
    if a != b or (ra is None) != (rb is None):
        return False
    try:
        return ra is None or DSNConfig(**ra) == DSNConfig(**rb)
    except (ValidationError, TypeError):
        return False


def start(work: Path, config: dict[str, Any], what: str) -> str:
    """The signing time ``work`` recorded for ``config`` (recorded now, from ``SOURCE_DATE_EPOCH`` or the
    clock, when the folder is new); ``what`` names the reproduction in errors."""
    path = work / "run.json"
    config = json.loads(json.dumps(config))  # the form it is compared in once read back
    if not path.exists():
        epoch = str(int(os.environ.get("SOURCE_DATE_EPOCH") or time.time()))
        work.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json_bytes({"config": config, "signed_at_epoch": int(epoch)}))
        return epoch
    try:
        state = json.loads(path.read_text())
        same = same_config(state["config"], config)
        epoch = str(int(state["signed_at_epoch"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a {what} work record; use another --work folder") from None
    if not same:
        raise ConfigError(f"{work} holds a run of another configuration; remove it or use another --work folder")
    return epoch


def stage_path(work: Path, name: str) -> Path:
    """Where stage ``name`` is kept: one JSON file, its name reduced to letters, digits, dots and dashes
    (a ``/`` in ``name`` makes a subfolder)."""
    parts = [re.sub(r"[^a-z0-9.]+", "-", p.lower()).strip("-.") or "-" for p in name.split("/")]
    return work.joinpath(*parts[:-1], parts[-1] + ".json")  # not with_suffix: "0.5" is no suffix


def stage(work: Path | None, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Stage ``name``'s record: read back when an earlier invocation finished it, else computed now and
    kept (without ``work``: computed)."""
    if work is None:
        return compute()
    path = stage_path(work, name)
    if path.exists():
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict):
                raise ValueError
        except (OSError, ValueError):
            raise ConfigError(f"{path} is damaged; remove it to run that stage again") from None
        return rec
    rec = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json_bytes(rec))
    return rec


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over ``model``'s parameters and buffers, by name."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def same_weights(work: Path | None, name: str, model: torch.nn.Module) -> None:
    """Refuse to resume with a re-created model ``name`` whose weights differ from those the kept stages
    were measured on (training that is not bit-reproducible on this machine, another library version):
    the digest is recorded the first time and compared afterwards."""
    if work is None:
        return
    digest = weights_digest(model)
    kept = stage(work, f"weights/{name}", lambda: {"sha256": digest})
    if kept.get("sha256") != digest:
        raise ConfigError(
            f"the {name} model re-created for {work} has other weights than the one its kept stages measured; "
            "remove the folder to start afresh"
        )
