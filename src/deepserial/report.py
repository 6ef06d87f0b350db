"""Reports: the JSON + Markdown (+ PNG) that every reproduction, evaluation and benchmark writes.

Every report records its provenance beside its numbers, so a reader can tell what produced them and
rerun it: the command line, the git commit of the code and whether the working tree had uncommitted
changes, the seed, the signing time of its keys, the library versions and the machine
(:func:`environment`; :func:`write_report` fills in what a report left out). :data:`PROVENANCE`
names those fields and :func:`missing_provenance` lists the ones an older report lacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepserial._version import __version__
from deepserial.files import atomic_write, atomic_write_all

# What every report records about how it was made: a top-level ``seed`` (or ``seeds``) and
# ``signed_at_epoch`` (None when the run draws nothing from a seed or signs nothing), and these
# ``environment`` fields.
PROVENANCE_ENVIRONMENT = ("argv", "git_commit", "git_dirty", "deepserial", "python", "torch", "numpy", "time_utc")
PROVENANCE = ("seed", "signed_at_epoch", "environment", *(f"environment.{k}" for k in PROVENANCE_ENVIRONMENT))


def git_state(where: str | Path | None = None) -> tuple[str | None, bool | None]:
    """The commit of the checkout the code runs from, and whether tracked files differ from it.

    ``where`` defaults to this package, which counts only when it sits at ``src/deepserial`` of the
    repository's top level (an editable install or a checkout on ``PYTHONPATH``), so a wheel installed
    inside some other repository does not report that repository's commit. ``(None, None)`` otherwise,
    or without git. Untracked files are not counted: reproductions write their outputs into the tree,
    and counting them would call every such run dirty.
    """
    package = Path(__file__).resolve().parent
    cwd = Path(where) if where is not None else package

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or (where is None and Path(top.strip()).resolve() / "src" / "deepserial" != package):
        return None, None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def source_digest(root: str | Path | None = None) -> str | None:
    """SHA-256 over the package's Python sources (each ``*.py`` file's path relative to ``root`` and its
    bytes, in path order; hidden files and ``__pycache__`` left out): names the package code a run used
    where the git state cannot, in a copy of the tree whose git base is older than its files or in a dirty
    checkout. It covers ``src/deepserial`` only, not the script that called it nor the libraries. ``root``
    defaults to this package; give it ``src/deepserial`` of a checkout of some commit to tell whether that
    commit is the code that ran. None when a source cannot be read: a report is never lost to it."""
    base = Path(root) if root is not None else Path(__file__).resolve().parent
    h = hashlib.sha256()
    try:
        rels = (f.relative_to(base) for f in base.rglob("*.py") if f.is_file() and not f.is_symlink())
        kept = (r.as_posix() for r in rels if not any(p.startswith(".") or p == "__pycache__" for p in r.parts))
        for rel in sorted(kept):
            name, data = rel.encode(), (base / rel).read_bytes()
            h.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big") + data)
    except OSError:
        return None
    return h.hexdigest()


# Options whose value is a secret: kept out of the command line a report records.
SECRET_OPTIONS = ("--serial",)


def command_line(argv: list[str] | None = None) -> list[str]:
    """``argv`` (default: this process's) with the values of :data:`SECRET_OPTIONS` replaced by
    ``<redacted>``: a report is shared, a product key must not be."""
    args = list(sys.argv if argv is None else argv)
    out: list[str] = []
    hide = False
    for a in args:
        if hide:
            out.append("<redacted>")
            hide = False
        elif a in SECRET_OPTIONS:
            out.append(a)
            hide = True
        elif any(a.startswith(o + "=") for o in SECRET_OPTIONS):
            out.append(a.split("=", 1)[0] + "=<redacted>")
        else:
            out.append(a)
    return out


def environment() -> dict[str, Any]:
    """Library versions, machine and time: the ``environment`` block of reports and model manifests.

    Model manifests travel to customers, so the command line and the git state are not here:
    :func:`write_report` adds them to a report's block (:func:`with_provenance`).
    """
    import safetensors

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "deepserial": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time_utc": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """A GitHub Markdown table; floats printed with ``digits`` decimals, ``None`` as a dash."""

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_bytes(data: dict[str, Any]) -> bytes:
    """A report as the bytes :func:`write_json` writes (indented JSON, numpy scalars and paths made plain)."""
    return (json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n").encode()


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write a report as JSON, atomically."""
    atomic_write(path, json_bytes(data))


def append_result(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` with its provenance (:func:`with_provenance`: environment, command line, git
    state) as one line of JSON to ``path``: the result files of probes that add one line per model."""
    line = json.dumps(_jsonable(with_provenance(record)), sort_keys=False) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(line)


def write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8), atomically."""
    atomic_write(path, text.encode())


def _png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig: Any, path: str | Path) -> None:
    """Save a matplotlib figure atomically as PNG and close it."""
    atomic_write(path, _png(fig))


_started: tuple[str | None, bool | None] | None = None
_started_source: str | None = None


def mark_start() -> None:
    """Record the git state and the sources' digest (:func:`source_digest`) now, for every report this
    process writes later: a reproduction runs for an hour or more, and the tree it ends on is not always
    the one it started from."""
    global _started, _started_source
    _started = git_state()
    _started_source = source_digest()


def with_provenance(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with every :data:`PROVENANCE` field present: an environment when it has none, this
    process's command line (:func:`command_line`) and git state (:func:`git_state`, as
    :func:`mark_start` recorded it when it was called) in it, with the digest of the sources
    (:func:`source_digest`, from :func:`mark_start` too when it was called; not one of
    :data:`PROVENANCE`, which reports written before it existed lack), and
    ``seed`` and ``signed_at_epoch`` as None when the run did not record them (it drew nothing from a
    seed, or signed nothing)."""
    out = dict(report)
    env = dict(out.get("environment") or environment())
    if any(k not in env for k in ("argv", "git_commit", "git_dirty")):
        commit, dirty = _started if _started is not None else git_state()
        env.setdefault("argv", command_line())
        env.setdefault("git_commit", commit)
        env.setdefault("git_dirty", dirty)
        # with this process's git state only: a report written again keeps what its own run recorded
        env.setdefault("source_sha256", _started_source or source_digest())
    out["environment"] = env
    if "seeds" not in out:
        out.setdefault("seed", None)
    out.setdefault("signed_at_epoch", None)
    return out


def missing_provenance(report: dict[str, Any]) -> list[str]:
    """The :data:`PROVENANCE` fields ``report`` lacks (empty for every report written since they
    exist); ``seeds`` stands for ``seed`` in a report over several seeds."""
    env = report.get("environment")
    missing = []
    for name in PROVENANCE:
        if name.startswith("environment."):
            if isinstance(env, dict) and name.split(".", 1)[1] not in env:
                missing.append(name)
        elif name == "seed":
            if "seed" not in report and "seeds" not in report:
                missing.append(name)
        elif name not in report:
            missing.append(name)
    return missing


def write_report(stem: Path, report: dict[str, Any], markdown: str, figure: Any) -> list[Path]:
    """A reproduction's three files, ``stem.{md,json,png}`` (the folder is created), all or none;
    returns their paths. The JSON gets every provenance field (:func:`with_provenance`). The figure is
    rendered before anything is written, so a plotting error leaves no partial report."""
    report = with_provenance(report)
    png = _png(figure)
    paths = [stem.with_suffix(s) for s in (".md", ".json", ".png")]
    atomic_write_all([(paths[0], markdown.encode(), None), (paths[1], json_bytes(report), None), (paths[2], png, None)])
    return paths
