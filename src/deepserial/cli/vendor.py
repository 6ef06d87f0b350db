"""The vendor's commands: ``keygen``, ``teacher``, ``issue``, ``predict``, ``evaluate``, ``demo``.

Each parses its options, checks its outputs before any work and calls the library
(:mod:`deepserial.workflow`, :mod:`deepserial.issuing`, :mod:`deepserial.experiments.demo`). The
workflow's functions are called through the module (``workflow.train_teacher``) so that a test that
replaces one there is obeyed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from deepserial import workflow
from deepserial.artifacts import load_model, save_model
from deepserial.cli.common import (
    ChannelsLast,
    Checkpoint,
    Device,
    Limit,
    Precision,
    Quiet,
    Seed,
    SplitSeed,
    passphrase,
    refuse_overwrite,
    registered,
    secret_env,
)
from deepserial.errors import ConfigError, InputError
from deepserial.experiments.demo import run_demo
from deepserial.experiments.dsn import dsn_markdown
from deepserial.files import check_writable
from deepserial.identity import OwnerIdentity, public_key_path
from deepserial.inputs import load_inputs
from deepserial.issuing import check_issue_outputs, issue_to_files
from deepserial.report import write_json
from deepserial.schemes.dsn import DSNConfig
from deepserial.serial import SerialGeometry, SerialNumber
from deepserial.training import TrainConfig


def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Private key file (the public key goes beside it).")] = Path(
        "owner.pem"
    ),
    algorithm: Annotated[str, typer.Option(help="ed25519 (default) or rsa (RSA-PSS 3072).")] = "ed25519",
    passphrase_env: Annotated[
        str | None,
        typer.Option(
            help="Encrypt with the passphrase in this environment variable (default: DEEPSERIAL_PASSPHRASE if set)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing key files.")] = False,
) -> None:
    """Generate the owner's key pair: the root of every serial number and watermark."""
    refuse_overwrite(out, public_key_path(out), force=force)
    ident = OwnerIdentity.generate(algorithm)  # type: ignore[arg-type]
    priv, pub = ident.save(out, passphrase(passphrase_env))
    typer.echo(f"wrote {priv} (private, keep it secret) and {pub} (public); owner fingerprint {ident.fingerprint()}")


def teacher(
    out: Annotated[Path, typer.Option("--out", "-o", help="Teacher model file (.safetensors).")] = Path(
        "teacher.safetensors"
    ),
    dataset: Annotated[str, typer.Option(help=f"{registered('datasets')}, or a path to your data.")] = "mnist5k",
    arch: Annotated[
        str, typer.Option(help=f"Network: {registered('models')} (see `deepserial models`).")
    ] = "dsn_mnist",
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: Seed = 0,
    split_seed: SplitSeed = 0,
    limit: Limit = None,
    device: Device = "auto",
    precision: Precision = "auto",
    channels_last: ChannelsLast = None,
    checkpoint: Checkpoint = None,
    quiet: Quiet = False,
    force: bool = False,
) -> None:
    """Train the owner's private teacher on the owner part of the data."""
    refuse_overwrite(out, force=force)
    check_writable(checkpoint)
    train = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        precision=precision,
        channels_last=channels_last,
        checkpoint=checkpoint,
        progress=not quiet,
    )
    t = workflow.train_teacher(workflow.DataSpec(dataset, split_seed, limit=limit), train, arch)
    save_model(out, t.model, t.manifest)
    typer.echo(
        f"teacher: test accuracy {t.manifest['test_acc']:.2f}% on {len(t.splits.test)} images, "
        f"{t.log.wall_s:.1f} s; wrote {out}"
    )


def issue(
    customer: Annotated[str, typer.Option(help="Customer name or id (goes into the signed verifier string).")],
    teacher_path: Annotated[Path, typer.Option("--teacher", help="Teacher model file.")] = Path("teacher.safetensors"),
    key: Annotated[Path, typer.Option(help="Owner private key file.")] = Path("owner.pem"),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Customer model file.")] = None,
    licence: Annotated[Path | None, typer.Option(help="Owner's licence record (secret).")] = None,
    owner_id: Annotated[str | None, typer.Option(help="Owner name in the verifier string.")] = None,
    size: Annotated[str, typer.Option(help="Serial-number size HxW (default 6x6 = 36 bits; paper 3x3).")] = "6x6",
    position: Annotated[str, typer.Option(help="'auto' (inside the visible field) or ROW,COL.")] = "auto",
    pixels_per_bit: Annotated[
        str,
        typer.Option(
            help="Pixels per bit side: 'auto' (1 up to 95-pixel inputs, 4 at 224: the pattern grows with the "
            "input, DSN §3.2) or N."
        ),
    ] = "auto",
    mode: Annotated[str, typer.Option(help="default (rejects wrong/near keys) or paper (GRL head only).")] = "default",
    epochs: int = 30,
    batch_size: int = 128,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    channels_last: ChannelsLast = None,
    checkpoint: Checkpoint = None,
    passphrase_env: Annotated[str | None, typer.Option(help="Env variable holding the key's passphrase.")] = None,
    ledger: Annotated[
        Path | None, typer.Option(help="Record the licence in this ledger (SQLite; created if missing).")
    ] = None,
    seal_passphrase_env: Annotated[
        str | None,
        typer.Option(
            help="Env variable with a ledger passphrase: keep the licence signature encrypted in the ledger "
            "(required for RSA owner keys)."
        ),
    ] = None,
    quiet: Quiet = False,
    force: bool = False,
) -> None:
    """Issue a customer model that works only with that customer's serial number.

    Prints the product key once: hand it to the customer with the model file. Every output (model,
    licence record, ledger) is checked writable before training; the files are written under temporary
    names and renamed into place, so a failure leaves nothing partial. With --ledger, a pending row
    comes first and the licence is final only after the files are: the key is printed after that, and
    an issuer killed midway leaves a pending row that `deepserial ledger check --repair` removes with
    its files.
    """
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in customer)
    out = out or Path(f"customer-{safe}.safetensors")
    licence = licence or out.with_name(out.name.removesuffix(".safetensors") + ".licence.json")
    refuse_overwrite(out, licence, force=force)
    check_issue_outputs(out, licence, ledger)
    ident = OwnerIdentity.load(key, passphrase(passphrase_env))
    seal = secret_env(seal_passphrase_env, "ledger passphrase") if seal_passphrase_env else None
    train = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        precision=precision,
        channels_last=channels_last,
        checkpoint=checkpoint,
        progress=not quiet,
    )
    issued = issue_to_files(
        teacher_path,
        ident,
        customer,
        out=out,
        licence=licence,
        ledger=ledger,
        seal=seal,
        owner_id=owner_id,
        size=workflow.parse_size(size),
        position=workflow.parse_position(position),
        config=DSNConfig.for_mode(mode),
        train=train,
        scale=workflow.parse_pixels_per_bit(pixels_per_bit),
    )
    typer.echo(
        f"customer model: {out}\nlicence record (owner only, secret): {licence}\n"
        f"serial number: {issued.serial.geometry.describe()}"
    )
    typer.echo(f"product key for {customer} (shown once): {issued.product_key}")


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or an .npz with array x.")],
    model: Annotated[Path, typer.Option(help="Customer model file.")],
    serial: Annotated[str | None, typer.Option(help="Product key (or set DEEPSERIAL_SERIAL).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Predict classes with a customer model, stamping your serial number on every input."""
    key = serial or os.environ.get("DEEPSERIAL_SERIAL")
    if not key:
        raise ConfigError("no serial number: pass --serial KEY or set DEEPSERIAL_SERIAL")
    m = load_model(model)
    if "serial_geometry" not in m.manifest:
        raise ConfigError(f"{model} is not a serial-number protected model (no serial geometry in its manifest)")
    sn = SerialNumber.from_product_key(key, expect=SerialGeometry.from_dict(m.manifest["serial_geometry"]))
    x = load_inputs(inputs, m.input_shape)
    if not len(x):
        raise InputError(f"no images in {', '.join(map(str, inputs))}; give at least one input")
    pred, conf = workflow.classify(m, sn, x)
    for i, (p, c) in enumerate(zip(pred.tolist(), conf.tolist(), strict=True)):
        if as_json:
            typer.echo(json.dumps({"index": i, "class": p, "confidence": round(c, 6)}))
        else:
            typer.echo(f"{i}\t{p}\t{c:.4f}")


def evaluate(
    model: Annotated[Path, typer.Option(help="Customer model file.")],
    serial: Annotated[str | None, typer.Option(help="Its product key.")] = None,
    licence: Annotated[Path | None, typer.Option(help="Or: the owner's licence record.")] = None,
    teacher_path: Annotated[Path | None, typer.Option("--teacher", help="Teacher model, for teacher_acc.")] = None,
    n_wrong: Annotated[int, typer.Option(help="Random wrong serial numbers to try.")] = 1000,
    wrong_samples: Annotated[
        int | None, typer.Option(help="Test images per random/Hamming-2 wrong key (default: all).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the report JSON here.")] = None,
    seed: Seed = 0,
) -> None:
    """Accuracy with the valid serial number, without it, with wrong and near-miss ones; linear probe."""
    check_writable(out)
    m = load_model(model)
    if "serial_geometry" not in m.manifest:
        raise ConfigError(f"{model} is not a serial-number protected model")
    expect = SerialGeometry.from_dict(m.manifest["serial_geometry"])
    if serial:
        sn = SerialNumber.from_product_key(serial, expect=expect)
    elif licence:
        sn = workflow.serial_from_licence(licence)
    else:
        raise ConfigError("pass --serial KEY or --licence FILE")
    t = load_model(teacher_path) if teacher_path else None
    rep = workflow.evaluate_customer(m, sn, teacher=t, n_wrong=n_wrong, wrong_eval_samples=wrong_samples, seed=seed)
    typer.echo(dsn_markdown(rep))
    if out:
        write_json(out, rep)
        typer.echo(f"wrote {out}")


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo"),
    size: Annotated[str, typer.Option(help="Serial-number size HxW.")] = "6x6",
    teacher_epochs: int = 20,
    epochs: Annotated[
        int, typer.Option(help="Student epochs (a short schedule: `reproduce dsn` trains 40 on the same data).")
    ] = 12,
    n_wrong: int = 1000,
    wrong_samples: Annotated[int, typer.Option(help="Test images per random/Hamming-2 wrong key.")] = 300,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """The whole vendor pipeline on the embedded mnist5k data: key, teacher, customer model, report.

    Every file is written at the end, all or none; the report holds no secret (the product key is
    printed once, like `issue` does)."""
    result = run_demo(
        out,
        size=workflow.parse_size(size),
        teacher_epochs=teacher_epochs,
        epochs=epochs,
        n_wrong=n_wrong,
        wrong_samples=wrong_samples,
        seed=seed,
        progress=not quiet,
        say=(lambda s: None) if quiet else (lambda s: typer.echo(s, err=True)),
    )
    typer.echo(result.markdown)
    typer.echo(f"product key for demo-customer (shown once): {result.product_key}")
