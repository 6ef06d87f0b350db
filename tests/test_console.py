"""Progress output: a live bar only on a terminal, one plain line per epoch in logs (deepserial.console
and the training loop)."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from torch import nn

from deepserial.console import epoch_line, on_terminal
from deepserial.data import TensorData
from deepserial.training import TrainConfig, fit, supervised_loss


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _train(progress: bool) -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.rand(64, 1, 4, 4, generator=g), torch.randint(0, 2, (64,), generator=g))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    cfg = TrainConfig(epochs=2, batch_size=16, progress=progress)
    fit(model, data, supervised_loss, cfg, desc="tiny", on_epoch_end=lambda _e, _m: {"probe": 0.5})


def test_a_log_gets_one_plain_line_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    _train(progress=True)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[0].startswith("tiny 1/2: loss ") and lines[1].startswith("tiny 2/2: loss ")
    assert "probe 0.5" in lines[1]  # what an epoch callback measured is on the line too


def test_a_terminal_gets_the_bar_and_no_epoch_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    _train(progress=True)
    out = tty.getvalue()
    assert "\r" in out and "tiny 1/2" in out  # tqdm redraws its bar in place
    assert "1/2: loss" not in out


@pytest.mark.parametrize("stream", [io.StringIO(), Terminal()])
def test_progress_off_prints_nothing(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO) -> None:
    monkeypatch.setattr(sys, "stderr", stream)
    _train(progress=False)
    assert stream.getvalue() == ""


def test_on_terminal_and_epoch_line() -> None:
    assert on_terminal(Terminal()) and not on_terminal(io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert not on_terminal(closed)
    line = epoch_line(
        "teacher", {"epoch": 3, "loss": 0.12345, "lr": 1e-3, "wall_s": 2.04, "samples": 9, "acc": 97.5}, 20
    )
    assert line == "teacher 3/20: loss 0.1235, lr 0.001, 2.0 s, acc 97.5"
