"""Where do the thief's relaxed searches that reach the key come from, and where do the others go?

The product's reverse engineering (:func:`deepserial.attacks.serial_search.reverse_engineer`) runs
restarts of a relaxed search (Adam at 0.1 on the cross-entropy of stamped images, logits started at
N(0, 0.25)), rounds each, refines it by a bit search and keeps the lowest loss on held-out images. This
reruns its relaxed stage alone (same start, step and batch; on all the thief's images, no held-out part,
no bit search) on a kept customer model and records each restart's path: every 25 steps the share of its
pattern's bits on the key's side of 0.5 and its loss, and whether its rounded end is the exact key. It
tells a defence where the searches that succeed climb; the report's full search decides what a thief gets.

    python benchmarks/dsn_search_paths.py WORK/seed0/student.safetensors --seed 0 --restarts 40 --label L

WORK is a ``reproduce dsn-security --work`` folder; the thief's images are the first 400 of the 10% attacker
share (the report's ``recovery_fraction``) drawn as the report draws it. One line of JSON (every path) is appended to
``benchmarks/results/dsn_search_paths.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from deepserial.attacks.base import attacker_share
from deepserial.attacks.serial_search import _frozen, _stamp_soft
from deepserial.experiments.dsn_security import kept_customer
from deepserial.report import append_result, mark_start
from deepserial.workflow import DataSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--seed", type=int, required=True, help="the seed of the dsn-security run (its owner)")
    ap.add_argument("--restarts", type=int, default=40)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--label", required=True, help="names the recipe in the result line")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dsn_search_paths.jsonl"))
    a = ap.parse_args()
    mark_start()
    torch.set_num_threads(1)
    kept, sn = kept_customer(a.model, a.seed)
    g, model = sn.geometry, kept.model.eval()
    splits = DataSpec.from_manifest(kept.manifest).load()
    share = attacker_share(splits.attacker, 0.1, len(splits.owner) + len(splits.attacker), a.seed)
    x, y = share.x[: a.images], share.y[: a.images]
    key = sn.as_tensor().float().view(g.height, g.width)
    gen = torch.Generator().manual_seed(a.seed)
    paths = []
    t0 = time.perf_counter()
    with _frozen(model):
        for _ in range(a.restarts):
            theta = (torch.randn(g.height, g.width, generator=gen) * 0.5).requires_grad_(True)
            opt = torch.optim.Adam([theta], lr=0.1)
            path = []
            for step in range(a.steps):
                idx = torch.randint(0, len(x), (128,), generator=gen)
                loss = F.cross_entropy(model(_stamp_soft(x[idx], g, torch.sigmoid(theta))), y[idx])
                if step % 25 == 0:
                    agree = float(((theta.detach() > 0).float() == key).float().mean())
                    path.append([step, round(agree, 3), round(float(loss.detach()), 3)])
                opt.zero_grad()
                loss.backward()
                opt.step()
            end = (theta.detach() > 0).float()
            paths.append(
                {"path": path, "exact": bool((end == key).all()), "end_agree": float((end == key).float().mean())}
            )
    line = {
        "label": a.label,
        "model_sha256": hashlib.sha256(a.model.read_bytes()).hexdigest(),
        "seed": a.seed,
        "geometry": g.to_dict(),
        "images": a.images,
        "steps": a.steps,
        "restarts": a.restarts,
        "exact": sum(p["exact"] for p in paths),
        "end_agree_mean": sum(p["end_agree"] for p in paths) / len(paths),
        "paths": paths,
        "wall_s": time.perf_counter() - t0,
    }
    append_result(a.out, line)
    print({k: line[k] for k in ("label", "exact", "restarts", "end_agree_mean", "wall_s")})


if __name__ == "__main__":
    main()
