"""Recompute the summary of a committed DSN seeds report from the runs it records.

The per-seed runs (every accuracy, curve and cost) are the measurement; the summary rows (mean, sd,
runs that worked, median cost) are arithmetic on them. When that arithmetic changes, e.g. the rule for
when an attack worked (``deepserial.experiments.attacks.WORKED_RULE``), this rewrites the summary and
the Markdown of a report without rerunning hours of training.

Usage: ``python scripts/resummarise_seeds.py reports/attacks_dsn_mnist5k_seeds.json``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code

from deepserial.experiments.attacks import resummarise_seeds  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="attacks_dsn_<dataset>_seeds.json files")
    for path in ap.parse_args().reports:
        for p in resummarise_seeds(path):
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
