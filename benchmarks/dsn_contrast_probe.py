"""Does a DSN customer model accept its own key at another contrast?

A relaxed reverse-engineering search (``deepserial.attacks.serial_search``) starts from a pattern near
the midpoint of the bit levels and follows the gradient. If the model answers the key at reduced
contrast (the levels' midpoint plus alpha times the key's offset from it, alpha < 1), that search has a
ramp to climb from a blank pattern to the key. This probe measures the ramp on a kept customer model:
test accuracy for each alpha, and for keys whose bits each keep a random share of their contrast.

    python benchmarks/dsn_contrast_probe.py WORK/seed0/student.safetensors --seed 0 --label amp6

WORK is a ``reproduce dsn-security --work`` folder (its owner is ``OwnerIdentity.for_experiment(seed,
"owner")``). One line of JSON per model is appended to ``benchmarks/results/dsn_contrast_probe.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from deepserial.experiments.dsn_security import kept_customer
from deepserial.report import append_result, mark_start
from deepserial.workflow import DataSpec

ALPHAS = (0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0)
#: Lowest share of its contrast each bit keeps, uniformly up to all of it (five keys each).
PER_BIT = (0.3, 0.6, 0.8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--seed", type=int, required=True, help="the seed of the dsn-security run (its owner)")
    ap.add_argument("--label", required=True, help="what the model is, for the results line")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dsn_contrast_probe.jsonl"))
    a = ap.parse_args()
    mark_start()
    torch.set_num_threads(1)
    m, sn = kept_customer(a.model, a.seed)
    g = sn.geometry
    test = DataSpec.from_manifest(m.manifest).load().test
    x, y = test.x[: a.images], test.y[: a.images]
    lo, hi = g.levels
    mid, full = (lo + hi) / 2, lo + (hi - lo) * sn.as_tensor().float()
    rows, cols = g.region()
    model = m.model.eval()

    def acc(pixels: torch.Tensor) -> float:
        xx = x.clone()
        xx[:, :, rows, cols] = g.upsample(pixels)
        with torch.no_grad():
            return round(100.0 * float((model(xx).argmax(1) == y).float().mean()), 1)

    gen = torch.Generator().manual_seed(a.seed)
    per_bit = {}
    for low in PER_BIT:
        accs = [acc(mid + (low + (1 - low) * torch.rand(full.shape, generator=gen)) * (full - mid)) for _ in range(5)]
        per_bit[f"{low:g}"] = {"mean": round(sum(accs) / len(accs), 1), "max": max(accs)}
    rec = {
        "label": a.label,
        "model_sha256": hashlib.sha256(a.model.read_bytes()).hexdigest(),
        "dataset": m.manifest["dataset"]["name"],
        "seed": a.seed,
        "amplitude": g.amplitude,
        "images": len(y),
        "alpha": {f"{al:g}": acc(mid + al * (full - mid)) for al in ALPHAS},
        "per_bit_share": per_bit,
        "dsn_config": {k: v for k, v in m.manifest["dsn_config"].items() if k in ("amplitude", "mix_scaled")},
    }
    append_result(a.out, rec)  # with the command line, commit and versions
    print(json.dumps({k: rec[k] for k in ("label", "alpha", "per_bit_share")}))


if __name__ == "__main__":
    main()
