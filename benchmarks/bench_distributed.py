"""Benchmark: training throughput with 1 and 2 processes (torchrun, gloo on CPU), and on a GPU if present.

Run: ``python benchmarks/bench_distributed.py`` (writes ``benchmarks/results/bench_distributed.{json,md,png}``).

For each configuration the same job runs from scratch on mnist5k with the same seed and global batch
(128): a teacher (``--teacher-epochs``) and a DSN customer model distilled from it
(``--student-epochs``), through :mod:`deepserial.workflow`, i.e. the code ``deepserial teacher`` and
``deepserial issue`` run. Reported per configuration: forward samples per second of each training
(rank 0's count of the whole world's samples over its wall time), and the final accuracies, so the
single- and multi-process runs can be compared (DSN accuracies on the 2,600 images training never
saw: test and attacker splits). Configurations: 1 process with 1 and with all CPU threads, N
processes with 1 thread each (``torchrun --nproc_per_node N``), and the GPU (bf16 autocast,
channels_last) when one is present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deepserial.report import mark_start

OUT = Path(__file__).resolve().parent / "results"
EPOCH = "1764547200"


def worker(args: argparse.Namespace) -> None:
    """One configuration (possibly one rank of several): train, measure, rank 0 writes the JSON."""
    import torch

    from deepserial import distributed, workflow
    from deepserial.data import TensorData
    from deepserial.identity import OwnerIdentity
    from deepserial.serial import stamp
    from deepserial.training import TrainConfig, predict_logits

    distributed.init_from_env(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = workflow.DataSpec("mnist5k", seed=0)
    cfg = dict(batch_size=128, seed=0, progress=False, device=args.device)
    tr = workflow.train_teacher(data, TrainConfig(epochs=args.teacher_epochs, **cfg))
    ident = OwnerIdentity.load(args.owner)
    iss = workflow.issue(
        workflow.loaded(tr.model, tr.manifest), ident, "bench", train=TrainConfig(epochs=args.student_epochs, **cfg)
    )
    sp = iss.splits
    held = TensorData(torch.cat([sp.test.x, sp.attacker.x]), torch.cat([sp.test.y, sp.attacker.y]))

    def acc(x: torch.Tensor) -> float:
        return 100.0 * float((predict_logits(iss.student, x).argmax(1) == held.y).float().mean())

    g = iss.serial.geometry
    row = {
        "world_size": distributed.world()[1],
        "threads": torch.get_num_threads(),
        "device": str(next(iss.student.parameters()).device),
        "teacher_samples_per_s": tr.log.forward_samples / tr.log.wall_s,
        "teacher_wall_s": tr.log.wall_s,
        "student_samples_per_s": iss.log.forward_samples / iss.log.wall_s,
        "student_wall_s": iss.log.wall_s,
        "teacher_test_acc": tr.manifest["test_acc"],
        "product_key": iss.product_key,
        "dsn_valid_acc": acc(stamp(held.x, g, iss.serial.as_tensor())),
        "dsn_raw_acc": acc(held.x),
    }
    if torch.cuda.is_available() and row["device"].startswith("cuda"):
        row["gpu"] = torch.cuda.get_device_name()
    if distributed.is_main_process():
        Path(args.result).write_text(json.dumps(row))
    distributed.shutdown()


def run_config(
    label: str, nproc: int, threads: int, device: str, args: argparse.Namespace, owner: Path, tmp: Path
) -> dict:
    result = tmp / f"{label}.json"
    cmd = [
        __file__,
        "--worker",
        "--threads",
        str(threads),
        "--device",
        device,
        "--owner",
        str(owner),
        "--result",
        str(result),
        "--teacher-epochs",
        str(args.teacher_epochs),
        "--student-epochs",
        str(args.student_epochs),
    ]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run(launcher + cmd, check=True, env=env)
    row = json.loads(result.read_text()) | {"config": label, "processes": nproc, "total_s": time.perf_counter() - t0}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--owner", default="")
    ap.add_argument("--result", default="")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student-epochs", type=int, default=30)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    from deepserial.identity import OwnerIdentity
    from deepserial.report import environment, markdown_table, write_report

    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        owner = tmp / "owner.pem"
        OwnerIdentity.generate().save(owner)
        rows.append(run_config("1 process, 1 thread", 1, 1, "cpu", args, owner, tmp))
        if cores > 1:
            rows.append(run_config(f"1 process, {cores} threads", 1, cores, "cpu", args, owner, tmp))
        rows.append(
            run_config(f"{args.processes} processes x 1 thread (gloo)", args.processes, 1, "cpu", args, owner, tmp)
        )
        if torch.cuda.is_available():
            rows.append(run_config("1 process, GPU", 1, 1, "cuda", args, owner, tmp))
    base = rows[0]
    for r in rows:
        r["teacher_speedup"] = r["teacher_samples_per_s"] / base["teacher_samples_per_s"]
        r["student_speedup"] = r["student_samples_per_s"] / base["student_samples_per_s"]
    rep = {
        "benchmark": "distributed",
        "teacher_epochs": args.teacher_epochs,
        "student_epochs": args.student_epochs,
        "batch_size": 128,
        "seed": 0,
        "rows": rows,
        "same_serial_number": len({r["product_key"] for r in rows}) == 1,
        "environment": environment(),
    }
    env = rep["environment"]
    table = markdown_table(
        [
            "configuration",
            "device",
            "teacher samples/s",
            "x",
            "DSN student samples/s",
            "x",
            "teacher test acc",
            "DSN acc with SN",
            "DSN acc raw",
        ],
        [
            [
                r["config"],
                r.get("gpu", r["device"]),
                f"{r['teacher_samples_per_s']:.0f}",
                f"{r['teacher_speedup']:.2f}",
                f"{r['student_samples_per_s']:.0f}",
                f"{r['student_speedup']:.2f}",
                r["teacher_test_acc"],
                r["dsn_valid_acc"],
                r["dsn_raw_acc"],
            ]
            for r in rows
        ],
        digits=2,
    )
    md = (
        f"# Training throughput with 1 and {args.processes} processes\n\n"
        f"`python benchmarks/bench_distributed.py`: mnist5k, seed 0, global batch 128; teacher "
        f"{args.teacher_epochs} epochs, DSN student {args.student_epochs} epochs, from scratch in every "
        "configuration. Samples/s: forward samples of the whole world per second of rank 0's training wall "
        "time (the DSN student forwards 3 inputs per image). DSN accuracies (%) on the 2,600 images "
        "training never saw, with the same serial number in every run"
        f" ({'yes' if rep['same_serial_number'] else 'NO'}: `SOURCE_DATE_EPOCH` fixes the licence time).\n\n"
        + table
        + "\n\n"
        + (
            "No GPU on this machine: the GPU row is measured where one is present.\n\n"
            if not torch.cuda.is_available()
            else ""
        )
        + f"{env.get('cpu', '')} ({env.get('cpu_count', '?')} cores), torch {env.get('torch')}, Python "
        f"{env.get('python')}.\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["teacher_samples_per_s"] for r in rows], 0.4, label="teacher")
    ax.bar([x + 0.2 for x in xs], [r["student_samples_per_s"] for r in rows], 0.4, label="DSN student")
    ax.set_xticks(list(xs), [r["config"] for r in rows], fontsize=7)
    ax.set_ylabel("forward samples / s")
    ax.legend()
    fig.tight_layout()
    for p in write_report(args.out / "bench_distributed", rep, md, fig):
        print(f"wrote {p}")
    print(md)


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
