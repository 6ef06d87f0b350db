"""Benchmark: bf16 autocast and channels_last against plain fp32 training, on this machine's device.

Run: ``python benchmarks/bench_precision.py`` (writes ``benchmarks/results/bench_precision.{json,md,png}``).

The mnist5k teacher (``dsn_mnist``) trained from the same seed for ``--epochs`` epochs at batch 128
in each setting, on the CPU with ``--threads`` threads (and on the GPU as well when one is present):
forward samples per second and the final training accuracy. This is what decided the defaults of
``--precision`` and ``--channels-last`` (docs/decisions.md, "Scale").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from deepserial.nets import create_model
from deepserial.report import environment, mark_start, markdown_table, write_report
from deepserial.training import TrainConfig, fit, seed_everything, supervised_loss
from deepserial.workflow import DataSpec

OUT = Path(__file__).resolve().parent / "results"
SETTINGS = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", default="", help="Conditions worth recording (e.g. other load on the machine).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    owner = DataSpec("mnist5k").load().owner
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        for prec, cl in SETTINGS:
            seed_everything(0)
            model = create_model("dsn_mnist", (1, 28, 28), 10)
            log = fit(
                model,
                owner,
                supervised_loss,
                TrainConfig(
                    epochs=args.epochs, batch_size=128, precision=prec, channels_last=cl, device=dev, progress=False
                ),
            )
            rows.append(
                {
                    "device": dev,
                    "precision": prec,
                    "channels_last": cl,
                    "samples_per_s": log.forward_samples / log.wall_s,
                    "train_acc": log.epochs[-1]["acc"],
                }
            )
            print(rows[-1], flush=True)
    for r in rows:
        base = next(
            b for b in rows if b["device"] == r["device"] and b["precision"] == "fp32" and not b["channels_last"]
        )
        r["speedup"] = r["samples_per_s"] / base["samples_per_s"]
    rep = {
        "benchmark": "precision",
        "epochs": args.epochs,
        "threads": args.threads,
        "batch_size": 128,
        "seed": 0,
        "rows": rows,
        "note": args.note,
        "environment": environment(),
    }
    env = rep["environment"]
    md = (
        "# bf16 autocast and channels_last against fp32\n\n"
        f"`python benchmarks/bench_precision.py --epochs {args.epochs} --threads {args.threads}`: the mnist5k "
        f"teacher (`dsn_mnist`, batch 128, seed 0) trained {args.epochs} epochs in each setting.\n\n"
        + markdown_table(
            ["device", "precision", "memory format", "samples/s", "x fp32", "train acc (%)"],
            [
                [
                    r["device"],
                    r["precision"],
                    "channels_last" if r["channels_last"] else "contiguous",
                    f"{r['samples_per_s']:.0f}",
                    f"{r['speedup']:.2f}",
                    r["train_acc"],
                ]
                for r in rows
            ],
        )
        + "\n\n"
        + ("" if torch.cuda.is_available() else "No GPU on this machine.\n\n")
        + (f"{args.note}\n\n" if args.note else "")
        + f"{env.get('cpu', '')} ({env.get('cpu_count', '?')} cores, {args.threads} thread(s) used), torch "
        f"{env.get('torch')}, Python {env.get('python')}.\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(rows)), [r["samples_per_s"] for r in rows])
    ax.set_xticks(
        range(len(rows)),
        [f"{r['device']}\n{r['precision']}\n{'CL' if r['channels_last'] else 'NCHW'}" for r in rows],
        fontsize=7,
    )
    ax.set_ylabel("forward samples / s")
    fig.tight_layout()
    for p in write_report(args.out / "bench_precision", rep, md, fig):
        print(f"wrote {p}")
    print(md)


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
