"""Benchmark: the embedding cost of every ownership watermark against plain training of the same net.

Run: ``python benchmarks/bench_watermarks.py`` (writes ``benchmarks/results/bench_watermarks.{json,md}``).

For each scheme, in one process and on the same ``mnist5k`` owner split, with the batch size that
``deepserial reproduce <scheme> --dataset mnist5k`` uses: plain supervised training of the network from
scratch, then the scheme's ``embed`` of a fresh network for the same number of epochs (schemes embedded
by fine-tuning, DeepSigns' output layer, fine-tune the plain model just trained, as the paper does).
Reported: wall seconds per epoch of each, their ratio (DeepSigns' claim: overhead near 1x),
forward samples per epoch (trigger schemes add their key samples to the batches), and the wall time
of making the key (DeepSigns' output layer profiles the trained model and selects keys then).
Rounds alternate the order of plain and watermarked training; medians are reported. The paper's
DeepSigns figure (Fig. 9) is a different measure, time to reach the same accuracy; per epoch is what
a user budgeting a training run needs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from deepserial.experiments.watermarks import CONFIGS
from deepserial.identity import OwnerIdentity
from deepserial.nets import create_model
from deepserial.report import environment, mark_start, markdown_table, with_provenance, write_json, write_text
from deepserial.schemes.base import SCHEMES, Provenance, get_scheme
from deepserial.training import TrainConfig, fit, supervised_loss
from deepserial.workflow import DataSpec

OUT = Path(__file__).resolve().parent / "results"


def bench_scheme(name: str, splits, epochs: int, rounds: int, seed: int) -> dict:  # noqa: ANN001
    """Median per-epoch wall time of plain and watermarked training for one scheme."""
    cfg = CONFIGS["mnist5k"]
    batch = cfg.per_scheme.get(name, {}).get("batch_size", cfg.batch_size)
    train = TrainConfig(epochs=epochs, batch_size=batch, seed=seed, progress=False)
    scheme = get_scheme(name)
    owner = splits.owner
    shape = tuple(owner.x.shape[1:])
    C = int(owner.y.max()) + 1
    identity = OwnerIdentity.generate()
    plain_s, marked_s, key_s, plain_fw, marked_fw = [], [], [], [], []
    for r in range(rounds):
        plain = create_model(cfg.arch, shape, scheme.num_outputs(C))
        marked = None if scheme.fine_tunes else create_model(cfg.arch, shape, scheme.num_outputs(C))
        # a fine-tuning scheme needs the trained plain model first; the others alternate the order
        order = ("plain", "marked") if scheme.fine_tunes or r % 2 == 0 else ("marked", "plain")
        for which in order:
            if which == "plain":
                log = fit(plain, owner, supervised_loss, train)
                plain_s.append(log.wall_s / epochs)
                plain_fw.append(log.forward_samples / epochs)
                continue
            if marked is None:
                marked = copy.deepcopy(plain)
            prov = Provenance.sign(identity, "bench", f"bench-{r}", name)
            t0 = time.perf_counter()
            key = scheme.make_signed_key(prov, owner, C, model=marked)
            key_s.append(time.perf_counter() - t0)
            log = scheme.embed(marked, owner, key, train)
            marked_s.append(log.wall_s / epochs)
            marked_fw.append(log.forward_samples / epochs)
    p, m = statistics.median(plain_s), statistics.median(marked_s)
    return {
        "scheme": name,
        "batch_size": batch,
        "epochs": epochs,
        "rounds": rounds,
        "plain_s_per_epoch": p,
        "marked_s_per_epoch": m,
        "ratio": m / p,
        "plain_forward_per_epoch": statistics.median(plain_fw),
        "marked_forward_per_epoch": statistics.median(marked_fw),
        "key_s": statistics.median(key_s),
        "fine_tunes": scheme.fine_tunes,
        "plain_runs_s": plain_s,
        "marked_runs_s": marked_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--schemes",
        default=",".join(n for n in SCHEMES if n != "dsn"),
        help="comma-separated scheme names (default: every watermark)",
    )
    a = ap.parse_args()
    names = [n.strip() for n in a.schemes.split(",") if n.strip()]
    for n in names:
        get_scheme(n)  # an unknown name fails before any training
    splits = DataSpec("mnist5k", a.seed).load()
    rows = [bench_scheme(n, splits, a.epochs, a.rounds, a.seed) for n in names]
    res = {
        "benchmark": "watermark-embedding-cost",
        "dataset": "mnist5k",
        "seed": a.seed,
        "owner_samples": len(splits.owner),
        "results": rows,
        "environment": environment(),
    }
    OUT.mkdir(exist_ok=True)
    write_json(OUT / "bench_watermarks.json", with_provenance(res))
    env = res["environment"]
    table = [
        (
            r["scheme"],
            r["batch_size"],
            f"{r['plain_s_per_epoch']:.2f}",
            f"{r['marked_s_per_epoch']:.2f}",
            f"{r['ratio']:.2f}x",
            f"{r['marked_forward_per_epoch'] / r['plain_forward_per_epoch']:.2f}x",
            f"{r['key_s']:.2f}" + (" (fine-tunes)" if r["fine_tunes"] else ""),
        )
        for r in rows
    ]
    md = [
        "# Watermark embedding cost",
        "",
        f"Wall seconds per epoch on {res['owner_samples']} `mnist5k` owner images, the same network "
        f"trained plainly and with each watermark in the same process; median of {a.rounds} rounds of "
        f"{a.epochs} epochs, seed {a.seed}.",
        "",
        markdown_table(
            [
                "scheme",
                "batch",
                "plain s/epoch",
                "watermarked s/epoch",
                "ratio",
                "forward samples ratio",
                "key making s",
            ],
            table,
        ),
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} threads), "
        f"Python {env['python']}, {env['time_utc']}.",
        "",
        f"Run: `python benchmarks/bench_watermarks.py --epochs {a.epochs} --rounds {a.rounds} --seed {a.seed}`.",
        "",
        "Ratios near 1x need a quiet machine: a second process on the same cores moves them by tenths. "
        "Trigger schemes pay for their key samples in every batch (the forward samples ratio); DeepSigns' "
        "output layer adds its 64 key images to each batch of 128 while it fine-tunes.",
        "",
    ]
    write_text(OUT / "bench_watermarks.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    torch.manual_seed(0)
    main()
