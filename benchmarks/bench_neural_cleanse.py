"""Benchmark: wall time of a Neural Cleanse scan of a 10-class mnist5k model (the budget: within 2
minutes on 2 cores, so that every protection can be scanned in a reproduction).

Run: ``python benchmarks/bench_neural_cleanse.py`` (writes ``benchmarks/results/bench_neural_cleanse.{json,md,png}``).

The mnist5k teacher (``dsn_mnist``, the DSN Table 7 net, seed 0, ``--epochs`` epochs) is trained once,
then scanned with the default settings (400 joint steps over all 10 labels, 24 images per label and
step) at each thread count of ``--threads``; the machine should be otherwise idle, or ``--note`` should
say it was not. Scan time only: training the model is not counted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from deepserial.attacks.neural_cleanse import NeuralCleanseConfig, scan
from deepserial.report import environment, mark_start, markdown_table, write_report
from deepserial.training import TrainConfig
from deepserial.workflow import DataSpec, train_teacher

OUT = Path(__file__).resolve().parent / "results"
LIMIT_S = 120.0  # the budget for one scan on 2 cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20, help="Teacher epochs (the attack reproduction's 20).")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", default="", help="Conditions worth recording (e.g. other load on the machine).")
    args = ap.parse_args()
    data = DataSpec("mnist5k")
    teacher = train_teacher(data, TrainConfig(epochs=args.epochs, seed=0, progress=False))
    clean = teacher.splits.attacker
    cfg = NeuralCleanseConfig()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        rep = scan(teacher.model, clean, cfg, seed=0)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "threads": threads,
                "wall_s": wall,
                "steps": rep.steps,
                "forward_samples": rep.forward_samples,
                "max_anomaly_index": max(rep.anomaly_index),
                "flagged": rep.flagged,
                "within_limit": wall <= LIMIT_S,
            }
        )
        print(rows[-1], flush=True)
    out = {
        "benchmark": "neural_cleanse",
        "model": "mnist5k teacher (dsn_mnist)",
        "teacher_epochs": args.epochs,
        "teacher_test_acc": teacher.manifest["test_acc"],
        "config": cfg.model_dump(),
        "limit_s": LIMIT_S,
        "rows": rows,
        "note": args.note,
        "environment": environment(),
    }
    env = out["environment"]
    md = (
        "# Neural Cleanse scan time\n\n"
        f"`python benchmarks/bench_neural_cleanse.py`: one scan of the mnist5k teacher (`dsn_mnist`, "
        f"{args.epochs} epochs, seed 0, test accuracy {teacher.manifest['test_acc']:.1f}%) with the default "
        f"settings ({cfg.steps} joint steps, {cfg.images_per_label} images per label and step, 10 labels), "
        f"on the attacker's clean split. Budget: {LIMIT_S:.0f} s on 2 cores.\n\n"
        + markdown_table(
            ["threads", "scan wall (s)", "forward samples", "max anomaly index", "flagged", f"within {LIMIT_S:.0f} s"],
            [
                [
                    r["threads"],
                    f"{r['wall_s']:.1f}",
                    r["forward_samples"],
                    f"{r['max_anomaly_index']:.2f}",
                    r["flagged"] or "none",
                    "yes" if r["within_limit"] else "no",
                ]
                for r in rows
            ],
        )
        + "\n\n"
        + (f"{args.note}\n\n" if args.note else "")
        + f"{env.get('cpu', '')} ({env.get('cpu_count', '?')} cores), torch {env.get('torch')}, "
        f"Python {env.get('python')}.\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([str(r["threads"]) for r in rows], [r["wall_s"] for r in rows])
    ax.axhline(LIMIT_S, color="r", ls=":", label=f"budget {LIMIT_S:.0f} s")
    ax.set_xlabel("threads")
    ax.set_ylabel("scan wall time (s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    for p in write_report(args.out / "bench_neural_cleanse", out, md, fig):
        print(f"wrote {p}")
    print(md)


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
