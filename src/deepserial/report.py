"""Reports: the JSON + Markdown (+ PNG) that every reproduction, evaluation and benchmark writes.

Every report records the machine, library versions, seed and configuration beside its numbers, so a
reader can tell what produced them and rerun it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepserial import __version__
from deepserial.files import atomic_write, atomic_write_all


def environment() -> dict[str, Any]:
    """Machine and versions, for the provenance block of every report."""
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


def write_report(stem: Path, report: dict[str, Any], markdown: str, figure: Any) -> list[Path]:
    """A reproduction's three files, ``stem.{md,json,png}`` (the folder is created), all or none;
    returns their paths. The figure is rendered before anything is written."""
    png = _png(figure)
    paths = [stem.with_suffix(s) for s in (".md", ".json", ".png")]
    atomic_write_all([(paths[0], markdown.encode(), None), (paths[1], json_bytes(report), None), (paths[2], png, None)])
    return paths
