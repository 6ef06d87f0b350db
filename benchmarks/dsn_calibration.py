"""DSN recipe calibration: variants of the default recipe on one teacher, near-miss figures per bit.

Run: ``python benchmarks/dsn_calibration.py --size 6x6 --variants base,margin2,h1-80`` (writes
``benchmarks/results/dsn_calibration_<size>.json`` and prints a Markdown row per variant, the rows of
``reports/dsn_research.md``).

Each variant trains a student from the same teacher, split and seed and reports valid / raw accuracy,
random wrong keys (``--n-wrong`` keys on 300 test images), and the accuracy with every Hamming-1
neighbour on the whole test set, laid out as the serial-number grid so a reader sees which bit flips
still unlock the model. Hamming-2 and the linear probe are left to ``deepserial reproduce dsn``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from deepserial.nets import create_model
from deepserial.report import environment, mark_start, with_provenance, write_json
from deepserial.schemes.dsn import DSNConfig, key_accuracies, train_student
from deepserial.serial import SerialNumber
from deepserial.training import TrainConfig, seed_everything
from deepserial.workflow import DataSpec, choose_geometry, loaded, parse_size, train_teacher

OUT = Path(__file__).resolve().parent / "results"

# name -> (DSNConfig overrides, student epochs multiplier, serial-number margin from the visible corner)
VARIANTS: dict[str, tuple[dict, float, int]] = {
    "base": ({}, 1.0, 0),
    "margin2": ({}, 1.0, 2),
    "margin4": ({}, 1.0, 4),
    "h1-80": ({"mix_raw": 0.05, "mix_random": 0.05, "mix_hamming1": 0.8, "mix_hamming2": 0.1}, 1.0, 0),
    "ratio3": ({"invalid_ratio": 3.0}, 1.0, 0),
    "epochs2x": ({}, 2.0, 0),
    "margin2-ratio3": ({"invalid_ratio": 3.0}, 1.0, 2),
    "hard50": ({"hard_hamming1": 0.5}, 1.0, 0),
    "ring50": ({"ring_noise": 0.5}, 1.0, 0),
    "hard50-ring50": ({"hard_hamming1": 0.5, "ring_noise": 0.5}, 1.0, 0),
    "margin2-h1-80": ({"mix_raw": 0.05, "mix_random": 0.05, "mix_hamming1": 0.8, "mix_hamming2": 0.1}, 1.0, 2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="6x6")
    ap.add_argument("--variants", default="base,margin2,h1-80,ratio3")
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument("--student-epochs", type=int, default=40)
    ap.add_argument("--n-wrong", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    size = parse_size(args.size)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    data = DataSpec("mnist5k", args.seed)
    tr = train_teacher(data, TrainConfig(epochs=args.teacher_epochs, batch_size=128, seed=args.seed, progress=False))
    teacher = loaded(tr.model, tr.manifest)
    signature = hashlib.sha256(f"calibration seed {args.seed}".encode()).digest()  # fixed, stands in for one
    test = tr.splits.test
    rng = np.random.default_rng(args.seed)
    sel = torch.from_numpy(rng.choice(len(test), 300, replace=False))
    out = {
        "size": args.size,
        "teacher_acc": tr.manifest["test_acc"],
        "seed": args.seed,
        "variants": {},
        "environment": environment(),
    }
    print(f"teacher {tr.manifest['test_acc']:.1f}")
    for name in names:
        over, mult, margin = VARIANTS[name]
        cfg = DSNConfig.default(**over)
        epochs = int(round(args.student_epochs * mult))
        t0 = time.perf_counter()
        shape = teacher.input_shape
        seed_everything(args.seed)
        s = create_model("dsn_mnist", shape, 10)
        g = choose_geometry(s, shape, size, None, margin=margin)
        serial = SerialNumber.from_signature(signature, g)  # the same bits for every variant
        train_student(
            s,
            teacher.model,
            tr.splits.owner,
            serial,
            cfg,
            TrainConfig(epochs=epochs, batch_size=128, seed=args.seed, progress=False),
        )
        valid = float(key_accuracies(s, test.x, test.y, g, serial.as_tensor()[None])[0])
        with torch.no_grad():
            s.eval()
            raw = 100.0 * float((s(test.x).argmax(1) == test.y).float().mean())
        wrong = key_accuracies(s, test.x[sel], test.y[sel], g, serial.random_wrong(args.n_wrong, rng))
        h1 = key_accuracies(s, test.x, test.y, g, serial.hamming_neighbours(1))
        rec = {
            "config": cfg.model_dump(),
            "epochs": epochs,
            "geometry": g.to_dict(),
            "bits": serial.bits.tolist(),
            "valid": valid,
            "raw": raw,
            "wrong_mean": float(wrong.mean()),
            "wrong_max": float(wrong.max()),
            "h1_mean": float(h1.mean()),
            "h1_max": float(h1.max()),
            "h1_grid": [[round(float(v), 1) for v in row] for row in h1.reshape(size)],
            "wall_s": time.perf_counter() - t0,
        }
        out["variants"][name] = rec
        print(
            f"| {name} | {epochs} | ({g.top},{g.left}) | {valid:.1f} | {raw:.1f} | {rec['wrong_mean']:.1f} | "
            f"{rec['wrong_max']:.1f} | {rec['h1_mean']:.1f} | {rec['h1_max']:.1f} | {rec['wall_s']:.0f} s |"
        )
        print("  H1 grid:", json.dumps(rec["h1_grid"]))
        OUT.mkdir(parents=True, exist_ok=True)
        write_json(OUT / f"dsn_calibration_{args.size}.json", with_provenance(out))


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
