"""Benchmark: forward-pass time of ``dsn_mnist`` by batch size and torch thread count, on busy cores.

Run: ``python benchmarks/bench_threads.py [--busy K ...]`` (writes
``benchmarks/results/bench_threads.{json,md,png}``).

Why: the reproductions run next to other jobs on 2 shared cores, and evaluation, queries to a
suspect and the serial-number search pass many small or mid-size batches. Two questions decide the
settings: how many threads a job should take when the cores are busy (README's advice: one), and
which evaluation batch is fastest on one thread (``training.EVAL_BATCH``). For each K of ``--busy``,
K one-thread processes multiply matrices while that part is timed, to stand in for other jobs; the
load average at the start is recorded, since other work on the machine also counts. The network is
untrained: the time of a forward pass does not depend on the weights.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch

from deepserial.nets import create_model
from deepserial.report import environment, mark_start, markdown_table, write_report

OUT = Path(__file__).resolve().parent / "results"


def _spin(stop: mp.synchronize.Event) -> None:
    """One thread of steady matrix work until ``stop`` is set: another job on the machine."""
    torch.set_num_threads(1)
    a = torch.rand(256, 256)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def _time_forward(model: torch.nn.Module, batch: int, samples: int) -> float:
    """Seconds per 1,000 samples in batches of ``batch`` (after a warm-up)."""
    x = torch.rand(batch, 1, 28, 28)
    n = max(1, samples // batch)
    with torch.no_grad():
        for _ in range(min(n, 5)):
            model(x)
        t0 = time.perf_counter()
        for _ in range(n):
            model(x)
    return (time.perf_counter() - t0) / (n * batch) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 10, 64, 256, 2048])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--samples", type=int, default=4096, help="Samples timed per batch size and thread count.")
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="One-thread busy processes alongside.")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", default="", help="Conditions worth recording (e.g. other jobs on the machine).")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    model = create_model("dsn_mnist", (1, 28, 28), 10).eval()
    rows = []
    for busy in args.busy:
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            for batch in args.batches:
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    ms = _time_forward(model, batch, args.samples)
                    rows.append({"busy": busy, "batch": batch, "threads": threads, "s_per_1000": ms})
                    print(rows[-1], flush=True)
        finally:
            stop.set()
            for p in spinners:
                p.join(5)
    out = {
        "benchmark": "threads",
        "model": "dsn_mnist (untrained), 1x28x28 inputs",
        "busy_processes": args.busy,
        "load_average_1min_at_start": load,
        "samples": args.samples,
        "rows": rows,
        "note": args.note,
        "environment": environment(),
    }
    by = {(r["busy"], r["batch"], r["threads"]): r["s_per_1000"] for r in rows}
    head = ["busy processes", "batch"] + [f"{t} thread(s): s per 1,000 images" for t in args.threads]
    body = [[k, b] + [f"{by[(k, b, t)]:.3f}" for t in args.threads] for k in args.busy for b in args.batches]
    env = out["environment"]
    md = (
        "# Forward-pass time by batch size and thread count\n\n"
        f"`python benchmarks/bench_threads.py --busy {' '.join(map(str, args.busy))}`: `dsn_mnist` forward "
        f"passes, {args.samples} images per cell, beside 'busy processes' one-thread matrix loops; 1-minute "
        f"load average at the start {load:.2f}.\n\n"
        + markdown_table(head, body)
        + "\n\n"
        + (f"{args.note}\n\n" if args.note else "")
        + f"{env.get('cpu', '')} ({env.get('cpu_count', '?')} cores), torch {env.get('torch')}, "
        f"Python {env.get('python')}.\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for k in args.busy:
        for t in args.threads:
            ax.plot(args.batches, [by[(k, b, t)] for b in args.batches], marker="o", label=f"{t} thread(s), {k} busy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("s per 1,000 images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    for p in write_report(args.out / "bench_threads", out, md, fig):
        print(f"wrote {p}")
    print(md)


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
