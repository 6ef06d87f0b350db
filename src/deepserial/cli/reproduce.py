"""The ``reproduce`` commands: the papers' tables beside our numbers, one command per reproduction.

Each command checks its output folder before hours of work and calls one ``run`` of
:mod:`deepserial.experiments`; the data sets and schemes a reproduction accepts are listed in its help
from that reproduction's own configurations. ``reproduce <scheme>`` exists for every registered
watermark scheme (:func:`deepserial.experiments.watermarks.reproductions`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from deepserial.cli.common import Quiet, Seed, one_of, registered, wrote
from deepserial.errors import ConfigError
from deepserial.experiments import attacks, dsn, dsn_security, neural_cleanse, tracing, watermarks
from deepserial.experiments.attack_configs import CONFIGS as ATTACK_CONFIGS
from deepserial.experiments.attack_configs import PLANS
from deepserial.files import check_writable
from deepserial.workflow import parse_pixels_per_bit

Out = Annotated[Path, typer.Option("--out", "-o", help="Reports folder.")]


def _security_datasets() -> str:
    """The data sets of ``reproduce dsn-security``, with where an alternative serial number sits."""
    notes = [
        f"{name}: a {c.size[0]}x{c.size[1]} serial number at rows {c.position[0]}, columns {c.position[1]}"
        for name, c in dsn_security.CONFIGS.items()
        if c.position is not None
    ]
    return one_of(dsn_security.CONFIGS) + (f" ({'; '.join(notes)})" if notes else "") + "."


def _seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2] (one model per seed)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers such as 0,1,2; got {text!r}") from None


def reproduce_dsn(
    dataset: Annotated[str, typer.Option(help=f"{registered('datasets')}, or a path to your data.")] = "mnist5k",
    out: Out = Path("reports"),
    runs: Annotated[
        str | None,
        typer.Option(
            help="Re-run only these configurations (comma-separated, e.g. "
            "default-6x6) and merge them into the existing report."
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(help=f"Network, for a path to your data: {registered('models')} (dsn_gtsrb for 32x32 colour)."),
    ] = None,
    teacher_epochs: Annotated[int | None, typer.Option(help="For a path to your data (default 10).")] = None,
    student_epochs: Annotated[int | None, typer.Option(help="For a path to your data (default 20).")] = None,
    n_wrong: Annotated[int | None, typer.Option(help="Random wrong serial numbers (default 1000).")] = None,
    pixels_per_bit: Annotated[
        str,
        typer.Option(
            help="For a path to your data: 'auto' or N, or several (comma-separated, e.g. auto,2): one run each."
        ),
    ] = "auto",
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """DSN Table 2 (accuracy with / without the serial number) beside ours, with wrong and near keys.

    --dataset also takes a path to your data (IDX, CIFAR pickles, class folders, .npz): the default
    36-bit recipe runs on it with --arch and the epochs given, into reports/dsn_<folder name>.*."""
    only = [r.strip() for r in runs.split(",") if r.strip()] if runs else None
    scales = [parse_pixels_per_bit(v.strip()) for v in pixels_per_bit.split(",")]
    custom = {"arch": arch, "teacher_epochs": teacher_epochs, "student_epochs": student_epochs, "n_wrong": n_wrong}
    config = dsn.config_for(dataset, scales, **custom)
    command = (
        "deepserial reproduce dsn --dataset "
        + dataset
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in custom.items() if v is not None)
        + (f" --pixels-per-bit {pixels_per_bit}" if scales != [None] else "")
    )
    check_writable(out, directory=True)  # before hours of work
    typer.echo(wrote(dsn.run(dataset, out, seed=seed, progress=not quiet, only=only, config=config, command=command)))


def reproduce_attacks(
    scheme: Annotated[
        str, typer.Option(help=f"The protection attacked: dsn or a watermark scheme ({', '.join(PLANS)}).")
    ] = "dsn",
    dataset: Annotated[str, typer.Option(help=f"{one_of(ATTACK_CONFIGS)}.")] = "mnist5k",
    out: Out = Path("reports"),
    tries: Annotated[int | None, typer.Option(help="Brute-force serial numbers (default 100000).")] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="DSN only: comma-separated seeds, one customer model each; "
            "writes attacks_dsn_<dataset>_seeds (Tables 3-6 and pruning)."
        ),
    ] = None,
    suite: Annotated[
        str,
        typer.Option(
            help="papers: the attacks of the protection's papers (attacks_<scheme>_<dataset>); "
            "wrt: the WRT removal attacks (wrt_<scheme>_<dataset>)."
        ),
    ] = "papers",
    seed: Seed = 0,
    quiet: Quiet = False,
    work: Annotated[
        Path | None,
        typer.Option(help="--suite wrt: folder keeping every finished attack, so an interrupted run resumes."),
    ] = None,
) -> None:
    """The papers' robustness tables beside ours. DSN: Tables 3-6 and Fig. 2 (fine-tuning, from scratch,
    transfer, overwriting, pruning, serial-number search, Neural Cleanse). A watermark scheme: the attacks
    its paper evaluates, with the owner's verdict after each. --suite wrt: the removal attacks of the
    Watermark-Robustness-Toolbox (Lukas et al., IEEE S&P 2022) against either."""
    if suite != "papers" and (seeds is not None or tries is not None):
        raise ConfigError("--seeds and --tries are for the papers' suite; leave them out with --suite wrt")
    if work is not None and suite != "wrt":
        raise ConfigError("--work is for --suite wrt")
    if seeds is not None:
        if scheme != "dsn" or tries is not None or seed != 0:
            raise ConfigError(
                "--seeds is for --scheme dsn, without --tries (the seeds study runs no serial search) "
                "and without --seed (--seeds names every seed)"
            )
        values = _seeds(seeds)
        check_writable(out, directory=True)  # before hours of work
        typer.echo(wrote(attacks.run_seeds(dataset, values, out, progress=not quiet)))
        return
    over = {"brute_force_tries": tries} if tries is not None else None
    check_writable(out, directory=True)  # before hours of work
    typer.echo(
        wrote(attacks.run(scheme, dataset, out, seed=seed, progress=not quiet, overrides=over, suite=suite, work=work))
    )


def reproduce_neural_cleanse(
    dataset: Annotated[str, typer.Option(help=f"{one_of(ATTACK_CONFIGS)}.")] = "mnist5k",
    out: Out = Path("reports"),
    schemes: Annotated[
        str | None, typer.Option(help=f"Comma-separated watermark schemes (default: all: {', '.join(PLANS)}).")
    ] = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Neural Cleanse's anomaly index for a clean model, a DSN customer model and one model per watermark
    scheme, with the owner's verdict after its unlearning: reports/neural_cleanse_<dataset>."""
    names = None if schemes is None else [v.strip() for v in schemes.split(",") if v.strip()]
    check_writable(out, directory=True)  # before hours of work
    typer.echo(wrote(neural_cleanse.run(dataset, out, seed=seed, progress=not quiet, schemes=names)))


def reproduce_dsn_security(
    dataset: Annotated[str, typer.Option(help=_security_datasets())] = "mnist5k",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one customer model each.")] = "0,1,2,3,4",
    out: Out = Path("reports"),
    quiet: Quiet = False,
    gather: Annotated[
        list[Path] | None,
        typer.Option(help="Only gather the runs of these reports (seeds run elsewhere) into this one; no training."),
    ] = None,
    work: Annotated[
        Path | None,
        typer.Option(help="Folder keeping each seed's customer model and finished stages: an interrupted run resumes."),
    ] = None,
) -> None:
    """The DSN lock against an adaptive thief, per customer model: every near key, reverse engineering
    with bit search, label-only hill climbing, and a fine-tuning / transfer sweep against from scratch
    at 10-40% of the data: reports/dsn_security_<dataset>. Seeds run apart gather into one report."""
    check_writable(out, directory=True)  # before hours of work
    if gather:
        typer.echo(wrote(dsn_security.gather(dataset, out, gather)))
        return
    values = _seeds(seeds)
    command = " ".join(["deepserial", *sys.argv[1:]])
    typer.echo(wrote(dsn_security.run(dataset, out, values, progress=not quiet, command=command, work=work)))


def reproduce_tracing(
    dataset: Annotated[str, typer.Option(help=f"{registered('datasets')}.")] = "mnist5k",
    customers: Annotated[
        int | None,
        typer.Option(help="Customer models issued and recorded in the ledger (default 20; fashion-mnist 10)."),
    ] = None,
    student_epochs: Annotated[
        int | None,
        typer.Option(
            help="DSN student epochs of every customer model (default: the `reproduce dsn-security` schedule)."
        ),
    ] = None,
    seed: Seed = 0,
    work: Annotated[
        Path | None,
        typer.Option(help="Folder caching the issued models (default OUT/.work/tracing_DATASET): a run resumes."),
    ] = None,
    out: Out = Path("reports"),
    quiet: Quiet = False,
) -> None:
    """Fingerprint tracing: every customer named through a stamping and a raw-input server, after
    fine-tuning and pruning, and when two or three collude; nobody named for unissued models or the teacher; what
    the fingerprint costs: reports/tracing_<dataset>."""
    cfg = tracing.for_dataset(dataset, customers=customers, student_epochs=student_epochs, seed=seed)
    check_writable(out, directory=True)  # before hours of work
    typer.echo(wrote(tracing.run(cfg, out, work=work, progress=not quiet)))


def reproduce_scheme(name: str) -> Callable[..., None]:
    """The command ``reproduce <name>``: the watermark reproduction of scheme ``name``."""

    def command(
        dataset: Annotated[str, typer.Option(help=f"{one_of(watermarks.CONFIGS)}.")] = "mnist5k",
        out: Out = Path("reports"),
        n_models: Annotated[int | None, typer.Option(help="Independently keyed models (default 10).")] = None,
        n_random_keys: Annotated[
            int | None, typer.Option(help="Random keys for false positives (default 1000).")
        ] = None,
        epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the data set's config).")] = None,
        seed: Seed = 0,
        quiet: Quiet = False,
    ) -> None:
        over = {
            k: v
            for k, v in {"n_models": n_models, "n_random_keys": n_random_keys, "epochs": epochs}.items()
            if v is not None
        }
        check_writable(out, directory=True)  # before hours of work
        typer.echo(wrote(watermarks.run(name, dataset, out, seed=seed, progress=not quiet, overrides=over)))

    return command
