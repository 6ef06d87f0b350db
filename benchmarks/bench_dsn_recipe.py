"""Benchmark: training time of the shipped DSN recipe against the previous default.

Run: ``python benchmarks/bench_dsn_recipe.py [--epochs 3 --rounds 2]`` (writes
``benchmarks/results/bench_dsn_recipe.{json,md}``; the committed one is ``--epochs 40 --rounds 1``, the
product's mnist5k schedule: keys are mined every 40th step, so a run of a few epochs of 19 steps holds
one or two mining rounds, more or fewer per epoch than the full schedule does). ``--candidate NAME --set
option=value ...`` times a research recipe (DSN options over the shipped one) as a third row and writes
``bench_dsn_recipe_NAME.{json,md}`` instead, so a recipe's cost is known before it is shipped.
Every recipe trains the same student on the same owner split of ``mnist5k`` with the same teacher
outputs, batch 128, one thread; rounds alternate the order of the recipes to cancel drift, and the
median wall time per epoch of the whole ``train_student`` call is reported (reports made before commit
c2f049e, ``approach-ir2-e4``'s among them, timed the training loop alone), beside two measures that
machine load moves less: the process's CPU time per epoch (time waiting for a core is left out; a shared
cache still slows it) and the samples the training loop forwarded per epoch (load cannot move it; it
depends on the seed, as mining forwards the keys it finds, and it does not weigh backward passes, which
cost about two forwards each: mining's forwards have none). The shipped recipe (docs/decisions.md item
21) forwards as many invalid inputs per batch as the previous default (2 per valid one), steps the
thief's relaxed search every fourth step, mines keys every 40 steps and simulates the thief's fine-tuning
every second step; the ratio is what that costs. Reports written before 2026-12-04 time the recipe shipped
until then (3 invalid inputs per valid one, keys mined every 20 steps, no searched patterns).
"""

from __future__ import annotations

import argparse
import statistics
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidate", default=None, help="name of a research recipe to time as well")
    ap.add_argument("--set", nargs="*", default=[], help="the candidate's DSN options, name=value")
    a = ap.parse_args()
    if a.set and not a.candidate:
        ap.error("--set needs --candidate NAME")
    torch.set_num_threads(1)
    owner = DataSpec("mnist5k", a.seed).load().owner
    shape = tuple(owner.x.shape[1:])
    teacher = create_model("dsn_mnist", shape, 10)
    fit(teacher, owner, supervised_loss, TrainConfig(epochs=2, batch_size=128, seed=a.seed, progress=False))
    recipes = {"previous default": DSNConfig.previous_default(), "shipped default": DSNConfig.default()}
    if a.candidate:  # pydantic validates each value against its option's type
        recipes[a.candidate] = DSNConfig.default(**dict(item.split("=", 1) for item in a.set))
    per_epoch: dict[str, list[float]] = {k: [] for k in recipes}
    cpu_per_epoch: dict[str, list[float]] = {k: [] for k in recipes}
    samples_per_epoch: dict[str, list[float]] = {k: [] for k in recipes}
    for r in range(a.rounds):
        for name in list(recipes) if r % 2 == 0 else list(recipes)[::-1]:
            model = create_model("dsn_mnist", shape, 10)
            geometry = default_geometry(model, shape, 6, 6, amplitude=recipes[name].amplitude)
            sn = SerialNumber.from_signature(b"benchmark", geometry)
            wall0, cpu0 = time.perf_counter(), time.process_time()  # both over the same call
            log = train_student(
                model, teacher, owner, sn, recipes[name], TrainConfig(epochs=a.epochs, batch_size=128, seed=a.seed)
            )
            cpu_per_epoch[name].append((time.process_time() - cpu0) / a.epochs)
            per_epoch[name].append((time.perf_counter() - wall0) / a.epochs)
            samples_per_epoch[name].append(log.forward_samples / a.epochs)
    med = {k: statistics.median(v) for k, v in per_epoch.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_per_epoch.items()}
    ratio = med["shipped default"] / med["previous default"]
    ratios = {k: v / med["previous default"] for k, v in med.items()}
    cpu_ratios = {k: v / cpu_med["previous default"] for k, v in cpu_med.items()}
    samples_med = {k: statistics.median(v) for k, v in samples_per_epoch.items()}
    sample_ratios = {k: v / samples_med["previous default"] for k, v in samples_med.items()}
    rep = with_provenance(
        {
            "benchmark": "dsn-recipe",
            "seed": a.seed,
            "signed_at_epoch": None,
            "epochs_per_round": a.epochs,
            "rounds": a.rounds,
            "seconds_per_epoch": per_epoch,
            "median_seconds_per_epoch": med,
            "ratio": ratio,
            "ratio_to_previous": ratios,
            "cpu_seconds_per_epoch": cpu_per_epoch,
            "median_cpu_seconds_per_epoch": cpu_med,
            "cpu_ratio_to_previous": cpu_ratios,
            "forward_samples_per_epoch": samples_per_epoch,
            "median_forward_samples_per_epoch": samples_med,
            "forward_samples_ratio_to_previous": sample_ratios,
            "candidate": {"name": a.candidate, "options": a.set} if a.candidate else None,
            "environment": environment(),
        }
    )
    OUT.mkdir(exist_ok=True)
    stem = f"bench_dsn_recipe_{a.candidate}" if a.candidate else "bench_dsn_recipe"
    write_json(OUT / f"{stem}.json", rep)
    rows = [
        [k, med[k], ratios[k], cpu_med[k], cpu_ratios[k], round(samples_med[k]), sample_ratios[k], len(v)]
        for k, v in per_epoch.items()
    ]
    head = ["recipe", "median wall s / epoch", "x previous", "median CPU s / epoch", "x previous (CPU)"]
    md = (
        "# DSN recipe training time (mnist5k, one thread)\n\n"
        + (f"Candidate `{a.candidate}`: `{' '.join(a.set)}` over the shipped recipe.\n\n" if a.candidate else "")
        + markdown_table([*head, "forwarded samples / epoch", "x previous (samples)", "runs"], rows, digits=2)
        + f"\n\nShipped / previous: **{ratio:.2f}x** wall, **{cpu_ratios['shipped default']:.2f}x** CPU, "
        + f"**{sample_ratios['shipped default']:.2f}x** forwarded samples.\n"
    )
    write_text(OUT / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
