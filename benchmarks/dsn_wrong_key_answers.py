"""What does a DSN customer model answer under random wrong keys, on a small subset and on all test images?

``reproduce dsn-security`` screens 10,000 random wrong keys on 50 test images. A locked model often
answers one class to every wrong key, and its accuracy is then the share of that class among the images
it is scored on: a subset that over-represents the class reads above the whole test set. This probe
scores random wrong keys on the first 50 images of the seeded permutation the key-space measure used
before it stratified its subsets, and on the whole test set, and counts the classes answered.

    python benchmarks/dsn_wrong_key_answers.py WORK/seed1/student.safetensors --seed 1 --label amp6-searched64

WORK is a ``reproduce dsn-security --work`` folder (its owner is ``OwnerIdentity.for_experiment(seed,
"owner")``). One line of JSON per model is appended to ``benchmarks/results/dsn_wrong_key_answers.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from deepserial.attacks.keyspace import balanced_order
from deepserial.experiments.dsn_security import kept_customer
from deepserial.report import append_result, mark_start
from deepserial.serial import stamp_many
from deepserial.workflow import DataSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--seed", type=int, required=True, help="the seed of the dsn-security run (its owner)")
    ap.add_argument("--label", required=True, help="what the model is, for the results line")
    ap.add_argument("--keys", type=int, default=200, help="random wrong keys on the 50-image subsets")
    ap.add_argument("--whole-keys", type=int, default=20, help="random wrong keys on every test image")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dsn_wrong_key_answers.jsonl"))
    a = ap.parse_args()
    mark_start()
    torch.set_num_threads(1)
    m, sn = kept_customer(a.model, a.seed)
    model = m.model.eval()
    test = DataSpec.from_manifest(m.manifest).load().test
    wrong = sn.random_wrong(max(a.keys, a.whole_keys), np.random.default_rng(a.seed + 1))
    classes = int(test.y.max()) + 1

    def score(idx: torch.Tensor, keys: torch.Tensor) -> dict[str, object]:
        x, y = test.x[idx], test.y[idx]
        preds = []
        with torch.no_grad():
            for i in range(0, len(x), 250):
                preds.append(model(stamp_many(x[i : i + 250], sn.geometry, keys)).argmax(1).view(len(keys), -1))
        p = torch.cat(preds, 1)
        acc = 100.0 * (p == y).float().mean(1)
        return {
            "images": len(idx),
            "keys": len(keys),
            "mean": round(float(acc.mean()), 2),
            "max": round(float(acc.max()), 2),
            "answered": torch.bincount(p.flatten(), minlength=classes).tolist(),
            "labels": torch.bincount(y, minlength=classes).tolist(),
        }

    rng = np.random.default_rng(a.seed)  # as keyspace_measures draws its order
    old = torch.from_numpy(rng.permutation(len(test)))[:50]
    new = balanced_order(test.y, np.random.default_rng(a.seed))[:50]
    rec = {
        "label": a.label,
        "model_sha256": hashlib.sha256(a.model.read_bytes()).hexdigest(),
        "dataset": m.manifest["dataset"]["name"],
        "seed": a.seed,
        "unstratified_50": score(old, wrong[: a.keys]),
        "stratified_50": score(new, wrong[: a.keys]),
        "whole_test_set": score(torch.arange(len(test)), wrong[: a.whole_keys]),
    }
    append_result(a.out, rec)  # with the command line, commit and versions
    print(json.dumps({k: rec[k] for k in ("label", "unstratified_50", "stratified_50", "whole_test_set")}))


if __name__ == "__main__":
    main()
