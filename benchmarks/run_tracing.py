"""Run ``reproduce tracing`` on mnist5k with the models issued in a work folder.

``python benchmarks/run_tracing.py WORK [LOCK_EVAL_SAMPLES]``: the settings of ``deepserial reproduce
tracing --work WORK``, except that the twins' random and Hamming-2 keys may be scored on fewer test
images (the full test set took about five minutes per model on a shared 2-core machine). The models
(40 student epochs each, about nine minutes on one CPU thread) may be issued beforehand in several
processes with :func:`deepserial.experiments.tracing.issue_models` and ``only``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepserial.experiments.tracing import TracingConfig, run
from deepserial.report import mark_start

if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(run(TracingConfig(lock_eval_samples=samples), Path(__file__).resolve().parents[1] / "reports", work=work))
