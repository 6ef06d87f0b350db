"""The adaptive fine-tuning / transfer sweep against one student saved by ``dsn_lock_research.py``.

Usage: ``python benchmarks/dsn_lock_sweep.py STUDENT.pt SEED FRACTION``: the grid of
:func:`deepserial.attacks.adaptive.fine_tuning_sweep` (Adam and SGD, learning rates 1e-4..1e-2, FTAL,
RTAL, fresh dense layers on frozen or trained features) on the seed's stratified attacker share, the
attacker's pick by its own held-out data, against the same grid from scratch. Appends one JSON line to
``benchmarks/results/dsn_lock_sweeps.jsonl``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from deepserial.attacks.adaptive import fine_tuning_sweep
from deepserial.attacks.base import attacker_share
from deepserial.nets import create_model
from deepserial.workflow import DataSpec

OUT = Path(__file__).parent / "results" / "dsn_lock_sweeps.jsonl"


def main() -> None:
    torch.set_num_threads(1)
    path, seed, frac = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    splits = DataSpec("mnist5k", seed).load()
    model = create_model("dsn_mnist", (1, 28, 28), 10)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    data = attacker_share(splits.attacker, frac, len(splits.owner) + len(splits.attacker), seed)
    rep = fine_tuning_sweep(model, data, splits.test, seed=seed)
    slim = {k: rep[k] for k in ("chosen", "oracle", "scratch_chosen", "scratch_oracle", "gain_over_scratch")}
    slim["settings"] = [
        {k: s[k] for k in ("optimizer", "lr", "mode", "select_acc", "test_acc")} for s in rep["settings"]
    ]
    slim["model"] = Path(path).name
    slim["fraction"] = frac
    print(json.dumps(slim))
    with OUT.open("a") as f:
        f.write(json.dumps(slim) + "\n")


if __name__ == "__main__":
    main()
