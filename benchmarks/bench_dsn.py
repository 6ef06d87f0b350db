"""Benchmark: DSN student training throughput against plain training, and the demo's wall time.

Run: ``python benchmarks/bench_dsn.py`` (writes ``benchmarks/results/bench_dsn.{json,md}``).

Both runs train the same network on the same owner split of ``mnist5k`` in the same process, with
the same number of samples per forward pass (plain: 384 images; DSN default: 128 images stamped with
the valid serial number + 256 invalid inputs, ``invalid_ratio`` 2), and count every sample that goes
through a forward pass.
The DSN teacher's outputs are computed once before training (they do not depend on the student), so
the comparison is student work against student work. Rounds alternate the order of the two to cancel
drift (thermal, other load); the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepserial.nets import create_model
from deepserial.report import environment, mark_start, markdown_table, with_provenance, write_json, write_text
from deepserial.schemes.dsn import DSNConfig, default_geometry, train_student
from deepserial.serial import SerialNumber
from deepserial.training import TrainConfig, fit, supervised_loss
from deepserial.workflow import DataSpec

OUT = Path(__file__).resolve().parent / "results"


def throughput(rounds: int, epochs: int, seed: int) -> dict:
    splits = DataSpec("mnist5k", seed).load()
    owner = splits.owner
    shape = tuple(owner.x.shape[1:])
    teacher = create_model("dsn_mnist", shape, 10)
    fit(teacher, owner, supervised_loss, TrainConfig(epochs=2, batch_size=128, seed=seed, progress=False))
    cfg = DSNConfig.default()
    forward_batch = int(round(128 * (1 + cfg.invalid_ratio)))
    plain_rates, dsn_rates = [], []
    for r in range(rounds):
        order = ("plain", "dsn") if r % 2 == 0 else ("dsn", "plain")
        for which in order:
            model = create_model("dsn_mnist", shape, 10)
            if which == "plain":
                log = fit(
                    model,
                    owner,
                    supervised_loss,
                    TrainConfig(epochs=epochs, batch_size=forward_batch, seed=seed, progress=False),
                )
                plain_rates.append(log.forward_samples / log.wall_s)
            else:
                geo = default_geometry(model, shape, 6, 6)
                sn = SerialNumber.from_signature(b"benchmark", geo)
                log = train_student(
                    model,
                    teacher,
                    owner,
                    sn,
                    cfg,
                    TrainConfig(epochs=epochs, batch_size=128, seed=seed, progress=False),
                )
                dsn_rates.append(log.forward_samples / log.wall_s)
    p, d = statistics.median(plain_rates), statistics.median(dsn_rates)
    return {
        "plain_samples_per_s": p,
        "dsn_samples_per_s": d,
        "ratio": d / p,
        "rounds": rounds,
        "epochs_per_round": epochs,
        "plain_rates": plain_rates,
        "dsn_rates": dsn_rates,
        "owner_samples": len(owner),
        "forward_batch": forward_batch,
    }


def demo_time() -> dict:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "deepserial", "demo", "--out", d, "--quiet"], check=True, stdout=subprocess.DEVNULL
        )
        wall = time.perf_counter() - t0
        import json

        rep = json.loads((Path(d) / "dsn_report.json").read_text())
    return {
        "demo_wall_s": wall,
        "demo_report": {
            k: rep[k]
            for k in (
                "teacher_acc",
                "valid_sn_acc",
                "raw_acc",
                "wrong_sn_mean",
                "wrong_sn_max",
                "hamming1_mean",
                "hamming1_max",
                "hamming2_mean",
                "hamming2_max",
                "probe_acc",
            )
        },
        "demo_timings": rep["timings"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-demo", action="store_true")
    a = ap.parse_args()
    res = {"benchmark": "dsn-throughput", "seed": a.seed, "torch_threads": torch.get_num_threads()}
    res |= throughput(a.rounds, a.epochs, a.seed)
    if not a.skip_demo:
        res |= demo_time()
    res["environment"] = environment()
    OUT.mkdir(exist_ok=True)
    write_json(OUT / "bench_dsn.json", with_provenance(res))
    env = res["environment"]
    rows = [
        ("plain supervised training", res["plain_samples_per_s"], 1.0),
        ("DSN student training (default mode)", res["dsn_samples_per_s"], res["ratio"]),
    ]
    md = [
        "# DSN training throughput",
        "",
        f"Forward samples per second, median of {a.rounds} alternating rounds of {a.epochs} epochs on "
        f"{res['owner_samples']} `mnist5k` owner images, {res['forward_batch']} samples per forward pass, "
        f"seed {a.seed}.",
        "",
        markdown_table(["run", "samples/s", "ratio"], [(n, round(s), f"{r:.2f}x") for n, s, r in rows]),
        "",
    ]
    if "demo_wall_s" in res:
        md += [
            f"`deepserial demo` total wall time: **{res['demo_wall_s']:.0f} s** "
            f"(teacher {res['demo_timings']['teacher_train_s']:.0f} s, student "
            f"{res['demo_timings']['student_train_s']:.0f} s, "
            f"evaluation {res['demo_timings']['evaluate_s']:.0f} s).",
            "",
        ]
    md += [
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} threads), "
        f"Python {env['python']}, {env['time_utc']}.",
        "",
        "Run: `python benchmarks/bench_dsn.py`.",
        "",
    ]
    write_text(OUT / "bench_dsn.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
