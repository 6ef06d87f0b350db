"""How much does the thief's data matter to reverse engineering a serial number?

``reproduce dsn-security`` gives the thief 10% of the data: 400 images on mnist5k, 6,000 on full
fashion-mnist, where its reverse engineering recovered the shipped recipe's key. This reruns the same
search (:func:`deepserial.attacks.adaptive.key_recovery`, relaxed pattern, restarts, bit search, the
thief's own stopping rule) on a kept customer model with a chosen number of the thief's images.

    python benchmarks/dsn_recovery_probe.py WORK/seed0/student.safetensors --seed 0 --images 400

WORK is a ``reproduce dsn-security --work`` folder (its owner is ``OwnerIdentity.for_experiment(seed,
"owner")``; the thief's images are the first of the same attacker share the report draws). One line of
JSON is appended to ``benchmarks/results/dsn_recovery_probe.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from deepserial.attacks.adaptive import key_recovery
from deepserial.attacks.base import attacker_share
from deepserial.data import TensorData
from deepserial.experiments.dsn_security import kept_customer
from deepserial.report import environment
from deepserial.workflow import DataSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--seed", type=int, required=True, help="the seed of the dsn-security run (its owner)")
    ap.add_argument("--images", type=int, required=True, help="the thief's images")
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument(
        "--method",
        default="reverse-engineer",
        choices=("reverse-engineer", "locate"),
        help="locate: the search is not told where the serial number is (what a secret position would leave)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dsn_recovery_probe.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    m, sn = kept_customer(a.model, a.seed)
    g = sn.geometry
    splits = DataSpec.from_manifest(m.manifest).load()
    share = attacker_share(splits.attacker, 0.1, len(splits.owner) + len(splits.attacker), a.seed)
    if a.images > len(share):
        raise SystemExit(f"the 10% share holds {len(share)} images; ask for at most that many")
    thief = TensorData(share.x[: a.images], share.y[: a.images])
    rec = key_recovery(
        m.model.eval(),
        g,
        thief,
        test=splits.test,
        serial=sn,
        methods=(a.method,),
        options={a.method: {"restarts": a.restarts, "steps": a.steps}},
        seed=a.seed,
    )[a.method]
    ev = rec["evaluation"]
    line = {
        "model_sha256": hashlib.sha256(a.model.read_bytes()).hexdigest(),
        "dataset": m.manifest["dataset"]["name"],
        "seed": a.seed,
        "images": a.images,
        "restarts": a.restarts,
        "steps": a.steps,
        "method": a.method,
        "evaluation": {k: v for k, v in ev.items() if k != "restarts"},
        "relaxed_losses": sorted(round(r["relaxed_loss"], 3) for r in rec["details"].get("restarts", [])),
        "wall_s": rec["wall_s"],
        "command": "python benchmarks/dsn_recovery_probe.py " + " ".join(f"{k}={v}" for k, v in vars(a).items()),
        "environment": environment(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps({k: line[k] for k in ("images", "method", "evaluation", "wall_s")}))


if __name__ == "__main__":
    main()
