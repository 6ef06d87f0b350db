"""Run ``reproduce tracing`` on mnist5k with the models issued in a work folder (``--work``)."""

from __future__ import annotations

import sys
from pathlib import Path

from deepserial.experiments.tracing import TracingConfig, run

if __name__ == "__main__":
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    print(run(TracingConfig(), Path(__file__).resolve().parents[1] / "reports", work=work))
