"""How much does the thief's data matter to reverse engineering a serial number?

``reproduce dsn-security`` gives the thief 10% of the data: 400 images on mnist5k, 6,000 on full
fashion-mnist, where its reverse engineering recovered the shipped recipe's key. This reruns the same
search (:func:`deepserial.attacks.adaptive.key_recovery`, relaxed pattern, restarts, bit search, the
thief's own stopping rule) on a kept customer model with a chosen number of the thief's images.

    python benchmarks/dsn_recovery_probe.py WORK/seed0/student.safetensors --seed 0 --images 400

WORK is a ``reproduce dsn-security --work`` folder (its owner is ``OwnerIdentity.for_experiment(seed,
"owner")``; the thief's images are the first of the same attacker share the report draws). One line of
JSON is appended to ``benchmarks/results/dsn_recovery_probe.jsonl``.

``--method locate`` runs the search that is not told the position (what a secret position would leave a
thief); ``--option`` passes any other search option, e.g. a thief that knows the key's size and scans
every position with it::

    python benchmarks/dsn_recovery_probe.py MODEL --seed 0 --images 400 --method locate \
        --option 'locate="grid"' --option 'sizes=[[6,6]]' --option stride=1

For a locate run the line also says where the true region ranked among the regions scanned.
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
from deepserial.report import append_result, mark_start
from deepserial.serial import SerialGeometry
from deepserial.workflow import DataSpec


def _scan_summary(details: dict, truth: SerialGeometry) -> dict | None:
    """Where a locate run ranked the true region among the regions it proposed (None for other methods)."""
    cands = details.get("candidates")
    if not cands:
        return None
    where = (truth.height, truth.width, truth.top, truth.left)
    keys = [tuple(c["geometry"][k] for k in ("height", "width", "top", "left")) for c in cands]
    return {
        "regions": len(cands),
        "true_region_rank": keys.index(where) + 1 if where in keys else None,
        "best_scan_losses": [round(c["scan_loss"], 3) for c in cands[:5]],
        "true_region_scan_loss": round(cands[keys.index(where)]["scan_loss"], 3) if where in keys else None,
        "searched": [{k: r[k] for k in ("geometry", "loss", "accuracy")} for r in details.get("searched", [])],
    }


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
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help='any other SerialSearchConfig option, e.g. locate="grid" sizes=[[6,6]] stride=1',
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dsn_recovery_probe.jsonl"))
    a = ap.parse_args()
    mark_start()
    extra = {}
    for item in a.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option {item!r}: expected KEY=JSON")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            raise SystemExit(
                f"--option {item!r}: the value is not JSON (strings need quotes: 'locate=\"grid\"')"
            ) from None
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
        options={a.method: {"restarts": a.restarts, "steps": a.steps} | extra},
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
        "options": extra,
        "evaluation": {k: v for k, v in ev.items() if k != "restarts"},
        "relaxed_losses": sorted(round(r["relaxed_loss"], 3) for r in rec["details"].get("restarts", [])),
        "scan": _scan_summary(rec["details"], g),
        "wall_s": rec["wall_s"],
    }
    append_result(a.out, line)  # with the command line, commit and versions
    print(json.dumps({k: line[k] for k in ("images", "method", "evaluation", "wall_s")}))


if __name__ == "__main__":
    main()
