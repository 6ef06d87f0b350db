"""Progress output that suits where it goes: a live bar on a terminal, one plain line per epoch elsewhere.

A progress bar redraws itself with carriage returns; written to a log file or a CI console it leaves
thousands of partial lines. Training therefore draws bars only when standard error is a terminal
(:func:`on_terminal`) and otherwise prints :func:`epoch_line` once per epoch, which reads the same
in a log as on screen.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def epoch_line(desc: str, epoch_log: dict[str, Any], epochs: int) -> str:
    """One line for a finished epoch: ``desc epoch/epochs: loss, learning rate, seconds`` and any
    metric the loss reported (e.g. ``acc``)."""
    parts = [f"loss {epoch_log['loss']:.4f}", f"lr {epoch_log['lr']:.2g}", f"{epoch_log['wall_s']:.1f} s"]
    skip = {"epoch", "loss", "lr", "samples", "wall_s", "world_size"}
    parts += [f"{k} {v:.4g}" for k, v in epoch_log.items() if k not in skip and isinstance(v, int | float)]
    return f"{desc} {epoch_log['epoch']}/{epochs}: " + ", ".join(parts)


def print_epoch(desc: str, epoch_log: dict[str, Any], epochs: int, stream: TextIO | None = None) -> None:
    """Write :func:`epoch_line` to ``stream`` (default: ``sys.stderr``) and flush it."""
    stream = sys.stderr if stream is None else stream
    print(epoch_line(desc, epoch_log, epochs), file=stream, flush=True)
