"""`reproduce dsn-security` with a research recipe: the product's attacks on customer models trained
with DSN options the shipped recipe leaves off.

    python benchmarks/dsn_security_research.py --base mnist5k --name mnist5k-amp6-scaled --seeds 0 \
        --set amplitude=6 mix_scaled=0.15 --out /tmp/amp_scaled0 --work /tmp/amp_scaled0/work

The report (``OUT/dsn_security_NAME.{md,json,png}``) records the full configuration and recipe, so a
run of another recipe is never gathered with it; ``--work`` makes an interrupted run resume. The reports
in ``benchmarks/results/dsn_security_amp6/`` named ``*-scaled*`` were made by one-off scripts that made
exactly this call (their JSON holds the configuration). ``--size`` and ``--position`` measure a
geometry no configuration names (a held-out one). ``--gather SRC...`` merges reports of the same recipe
run elsewhere (other seeds) into ``OUT/dsn_security_NAME`` without training (``--seeds`` is then unused).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from deepserial.experiments import dsn_security
from deepserial.report import mark_start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, choices=sorted(dsn_security.CONFIGS), help="configuration to start from")
    ap.add_argument("--name", required=True, help="report name: OUT/dsn_security_NAME")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--set", nargs="*", default=[], help="DSNConfig options name=value over the shipped recipe")
    ap.add_argument("--size", type=int, nargs=2, default=None, help="serial-number rows, columns (held out)")
    ap.add_argument("--position", type=int, nargs=2, default=None, help="serial-number top-left row and column")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument(
        "--gather", type=Path, nargs="+", default=None, help="reports of this recipe run elsewhere: merge, no training"
    )
    a = ap.parse_args()
    mark_start()
    torch.set_num_threads(1)
    dsn = {k: float(v) if "." in v or "e" in v else int(v) for k, v in (item.split("=", 1) for item in a.set)}
    update: dict[str, object] = {"dsn": dsn}
    if a.size:
        update["size"] = tuple(a.size)
    if a.position:
        update["position"] = tuple(a.position)
    cfg = dsn_security.CONFIGS[a.base].model_copy(update=update)
    if a.gather:
        paths = dsn_security.gather(a.name, a.out, a.gather, config=cfg)
    else:
        paths = dsn_security.run(a.name, a.out, a.seeds, config=cfg, work=a.work, command=" ".join(sys.argv))
    print("wrote " + ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
