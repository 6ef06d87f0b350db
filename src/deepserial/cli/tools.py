"""Looking around: ``info`` (a model file's manifest), ``models`` (what the registries hold) and
``data cifar-digits`` (the stand-in 32x32 colour data the tests and reports use)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from deepserial.artifacts import read_manifest
from deepserial.cli.common import Seed, refuse_overwrite
from deepserial.data import available_datasets
from deepserial.data.synthetic import write_cifar_digits
from deepserial.nets import available_models


def info(model: Annotated[Path, typer.Argument(help="Model file.")]) -> None:
    """Print a model file's verified manifest (no secrets are stored in it)."""
    typer.echo(json.dumps(read_manifest(model), indent=2))


def models() -> None:
    """List the registered networks and data sets."""
    for k, v in available_models().items():
        typer.echo(f"network  {k:12s} {v}")
    for k, v in available_datasets().items():
        typer.echo(f"dataset  {k:12s} {v}")


def data_cifar_digits(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the CIFAR-10 style pickles.")] = Path(
        "cifar-digits"
    ),
    seed: Seed = 0,
    force: bool = False,
) -> None:
    """Write mnist5k's 5,000 real digits as 32x32 colour images in CIFAR-10's python-pickle layout
    (a stand-in for 32x32x3 data where CIFAR-10 / GTSRB cannot be fetched)."""
    refuse_overwrite(out / "data_batch_1", out / "test_batch", out / "batches.meta", force=force)
    write_cifar_digits(out, seed=seed)
    typer.echo(f"wrote {out}/data_batch_1 (4,000 images), {out}/test_batch (1,000), {out}/batches.meta")
