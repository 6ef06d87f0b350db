"""What every command module of the CLI shares: the common options and the helpers that turn
command-line input (paths to write, passphrases in the environment, names to choose from) into
checked values.

The command modules import this one; :mod:`deepserial.cli` imports them and registers their commands.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from deepserial.attacks.base import ATTACKS
from deepserial.data import DATASETS
from deepserial.errors import ConfigError, IdentityError
from deepserial.files import check_writable
from deepserial.nets import MODELS
from deepserial.registry import Registry
from deepserial.schemes.base import SCHEMES

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Seed = Annotated[int, typer.Option(help="Random seed of training and evaluation.")]
SplitSeed = Annotated[int, typer.Option(help="Seed of the owner/attacker/test split.")]
Limit = Annotated[int | None, typer.Option(help="Use only this many training samples.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N (under torchrun: auto/cuda = this rank's GPU).")]
Precision = Annotated[str, typer.Option(help="auto (bf16 autocast on a CUDA GPU, fp32 on CPU), fp32 or bf16.")]
ChannelsLast = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last", help="Memory format (default: on for conv nets on CUDA, off on CPU)."
    ),
]
Checkpoint = Annotated[
    Path | None,
    typer.Option(help="Save the training state here after every epoch and resume from it (any number of processes)."),
]

_REGISTRIES: dict[str, Registry] = {"attacks": ATTACKS, "schemes": SCHEMES, "models": MODELS, "datasets": DATASETS}


def registered(kind: str) -> str:
    """What a registry holds (``attacks``, ``schemes``, ``models``, ``datasets``), for a help text.

    Help texts call this inside their annotations, which Typer evaluates when it builds the commands
    (every run, before parsing): a network, data set, scheme or attack registered before then, a
    plug-in's included, shows in ``--help`` without editing the CLI."""
    return _REGISTRIES[kind].choices()


def one_of(names: Iterable[str]) -> str:
    """``"a"``, ``"a or b"``, ``"a, b or c"``: names to choose from, for a help text."""
    names = list(names)
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def passphrase(env: str | None) -> str | None:
    """The key passphrase from ``--passphrase-env VAR`` (which must be set and non-empty) or else from
    DEEPSERIAL_PASSPHRASE when that is set (non-empty too). An empty value is refused, never read as
    "no passphrase": keygen would otherwise write in the clear a key its owner meant to encrypt."""
    name = env or "DEEPSERIAL_PASSPHRASE"
    value = os.environ.get(name)
    if env and value is None:
        raise IdentityError(f"environment variable {env} is not set; export it with the key's passphrase")
    if value is not None and not value:
        fix = "" if env else " or unset it"
        raise IdentityError(f"environment variable {name} is empty; export it with the key's passphrase{fix}")
    return value


def secret_env(name: str, what: str) -> str:
    """The secret held in the environment variable ``name`` (a ledger passphrase), which must be set
    and non-empty; ``what`` names the secret in the error."""
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set or empty; export it with the {what}")
    return value


def refuse_overwrite(*paths: Path, force: bool) -> None:
    """Check a command's output files before its work: each must not exist (unless ``force``) and must
    be writable (:func:`deepserial.files.check_writable`), so a bad path fails in a second, not after
    an hour of training."""
    for p in paths:
        if p.exists() and not force:
            raise ConfigError(f"{p} exists; pass --force to overwrite it")
    check_writable(*paths)


def wrote(paths: Iterable[Path]) -> str:
    """The line a reproduction prints when it is done: the files it wrote."""
    return "wrote " + ", ".join(str(p) for p in paths)
