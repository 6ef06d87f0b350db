"""Run ``reproduce tracing`` with the models issued in a work folder.

``python benchmarks/run_tracing.py WORK [LOCK_EVAL_SAMPLES] [DATASET]``: the settings of ``deepserial
reproduce tracing --dataset DATASET --work WORK`` (default mnist5k), except that the twins' random and
Hamming-2 keys may be scored on fewer test images (the full test set took about five minutes per model
on a shared 2-core machine). The models (on mnist5k 40 student epochs each, about five minutes on one
CPU thread) may be issued beforehand in several processes with
:func:`deepserial.experiments.tracing.issue_models` and ``only``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepserial.experiments.tracing import for_dataset, run
from deepserial.report import mark_start

if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else None
    dataset = sys.argv[3] if len(sys.argv) > 3 else "mnist5k"
    cfg = for_dataset(dataset, lock_eval_samples=samples)
    print(run(cfg, Path(__file__).resolve().parents[1] / "reports", work=work))
