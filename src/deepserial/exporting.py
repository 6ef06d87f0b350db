"""Exporting a model to ONNX, checked against PyTorch before the file is in place.

:func:`deepserial.artifacts.export_onnx` writes the graph and its manifest; :func:`export_checked` (what
``deepserial export`` runs) writes it under a temporary name, runs it in onnxruntime beside PyTorch on
the model's test split (:func:`onnx_parity`) and renames it into place only when both agree, so a
file at the output path is always an export that answers like the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from deepserial.artifacts import LoadedModel, export_onnx
from deepserial.errors import ConfigError
from deepserial.serial import SerialGeometry, stamp
from deepserial.suspect import ONNXSuspect
from deepserial.training import predict_logits
from deepserial.workflow import DataSpec

__all__ = ["Parity", "export_checked", "onnx_parity"]

#: The largest |logit| difference between onnxruntime and PyTorch an export may show.
MAX_LOGIT_DIFF = 1e-4


@dataclass(frozen=True)
class Parity:
    """How an ONNX export answered beside PyTorch: the largest |logit| difference, and on how many of
    ``images`` test images both chose the same label."""

    max_diff: float
    agree: int
    images: int

    @property
    def holds(self) -> bool:
        """Whether the export may ship: logits within :data:`MAX_LOGIT_DIFF` and every label the same."""
        return not (self.max_diff > MAX_LOGIT_DIFF or self.agree < self.images)


def onnx_parity(m: LoadedModel, onnx_path: Path) -> tuple[float, int, int]:
    """Largest |logit| difference and label agreement of torch and onnxruntime on the model's test split
    (stamped with a random pattern where the model takes a serial number, so both regimes are covered)."""
    x = DataSpec.from_manifest(m.manifest).load().test.x
    if "serial_geometry" in m.manifest:
        g = SerialGeometry.from_dict(m.manifest["serial_geometry"])
        half = len(x) // 2
        x = torch.cat([x[:half], stamp(x[half:], g, torch.randint(0, 2, (g.height, g.width)))])
    ref = predict_logits(m.model, x).numpy()
    got = ONNXSuspect(onnx_path).logits(x)
    return float(abs(ref - got).max()), int((ref.argmax(1) == got.argmax(1)).sum()), len(x)


def export_checked(m: LoadedModel, out: Path, check: bool = True) -> Parity | None:
    """Export ``m`` to ONNX at ``out`` atomically; with ``check``, only when onnxruntime agrees with
    PyTorch on the test split (ConfigError, nothing written, otherwise). Returns the parity measured,
    or None without ``check``."""
    tmp = out.with_name(f".{out.name}.export{os.getpid()}")
    parity = None
    try:
        export_onnx(tmp, m)
        if check:
            parity = Parity(*onnx_parity(m, tmp))
            if not parity.holds:
                raise ConfigError(
                    f"ONNX export differs from PyTorch (max |logit diff| {parity.max_diff:.2e}, "
                    f"{parity.agree}/{parity.images} labels agree); not written"
                )
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return parity
