"""The ``deepserial`` command.

Every user mistake ends as one line on stderr (``deepserial: error: ...``) and exit status 2, and
no command leaves a partial output file behind: every output path is checked for writability before
the work starts, and outputs are written atomically after it, the files of one command all or none
(:mod:`deepserial.files`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from deepserial.errors import ConfigError, DeepSerialError, IdentityError, InputError
from deepserial.files import check_writable
from deepserial.identity import OwnerIdentity, public_key_path

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Serial numbers and ownership watermarks for neural networks.",
)
reproduce_app = typer.Typer(no_args_is_help=True, help="Reproduce the papers' tables beside our numbers.")
app.add_typer(reproduce_app, name="reproduce")
watermark_app = typer.Typer(no_args_is_help=True, help="Ownership watermarks: embed while training, verify a suspect.")
app.add_typer(watermark_app, name="watermark")
ledger_app = typer.Typer(no_args_is_help=True, help="The licence ledger: every issued serial number, no secret.")
app.add_typer(ledger_app, name="ledger")

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


def _registered(kind: str) -> str:
    """What a registry holds (``attacks``, ``schemes``, ``models``, ``datasets``), for a help text: generated,
    so a new network, data set, scheme or attack shows in ``--help`` without editing this file."""
    import deepserial

    return ", ".join(getattr(deepserial, f"list_{kind}")())


def _passphrase(env: str | None) -> str | None:
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


def _refuse_overwrite(*paths: Path, force: bool) -> None:
    """Check a command's output files before its work: each must not exist (unless ``force``) and must
    be writable (:func:`deepserial.files.check_writable`), so a bad path fails in a second, not after
    an hour of training."""
    for p in paths:
        if p.exists() and not force:
            raise ConfigError(f"{p} exists; pass --force to overwrite it")
    check_writable(*paths)


def _dsn_config(mode: str, epochs: int, batch_size: int, seed: int, quiet: bool):
    from deepserial.schemes.dsn import DSNConfig
    from deepserial.training import TrainConfig

    if mode not in ("default", "paper"):
        raise ConfigError(f"unknown DSN mode {mode!r}; use 'default' or 'paper'")
    cfg = DSNConfig.default() if mode == "default" else DSNConfig.paper()
    return cfg, TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, progress=not quiet)


@app.command()
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
    _refuse_overwrite(out, public_key_path(out), force=force)
    ident = OwnerIdentity.generate(algorithm)  # type: ignore[arg-type]
    priv, pub = ident.save(out, _passphrase(passphrase_env))
    typer.echo(f"wrote {priv} (private, keep it secret) and {pub} (public); owner fingerprint {ident.fingerprint()}")


@app.command()
def teacher(
    out: Annotated[Path, typer.Option("--out", "-o", help="Teacher model file (.safetensors).")] = Path(
        "teacher.safetensors"
    ),
    dataset: Annotated[str, typer.Option(help=f"{_registered('datasets')}, or a path to your data.")] = "mnist5k",
    arch: Annotated[
        str, typer.Option(help=f"Network: {_registered('models')} (see `deepserial models`).")
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
    from deepserial.artifacts import save_model
    from deepserial.training import TrainConfig
    from deepserial.workflow import DataSpec, train_teacher

    _refuse_overwrite(out, force=force)
    check_writable(checkpoint)
    t = train_teacher(
        DataSpec(dataset, split_seed, limit=limit),
        TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            precision=precision,
            channels_last=channels_last,
            checkpoint=checkpoint,
            progress=not quiet,
        ),
        arch,
    )
    save_model(out, t.model, t.manifest)
    typer.echo(
        f"teacher: test accuracy {t.manifest['test_acc']:.2f}% on {len(t.splits.test)} images, "
        f"{t.log.wall_s:.1f} s; wrote {out}"
    )


@app.command()
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
    from deepserial.artifacts import load_model
    from deepserial.distributed import is_main_process
    from deepserial.workflow import issue as do_issue
    from deepserial.workflow import parse_position, parse_size

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in customer)
    out = out or Path(f"customer-{safe}.safetensors")
    licence = licence or out.with_name(out.name.removesuffix(".safetensors") + ".licence.json")
    _refuse_overwrite(out, licence, force=force)
    _check_issue_outputs(out, licence, ledger)
    ident = OwnerIdentity.load(key, _passphrase(passphrase_env))
    seal = _secret_env(seal_passphrase_env, "ledger passphrase") if seal_passphrase_env else None
    if ledger is None and seal is not None:
        raise ConfigError("--seal-passphrase-env needs --ledger: the sealed signature is kept in the ledger")
    if ledger is not None and ident.algorithm != "ed25519" and seal is None:
        raise ConfigError(
            "an RSA owner key signs non-deterministically: give --seal-passphrase-env so the ledger "
            "can re-derive this serial number for tracing"
        )
    scale = _pixels_per_bit(pixels_per_bit)
    # An existing ledger is opened and its write lock tried before training; a missing one is created
    # only when the licence is recorded. Under torchrun only rank 0 opens it (one row per licence).
    records = ledger is not None and is_main_process()
    led = _open_ledger(ledger, create=False) if records and (ledger.exists() or ledger.is_symlink()) else None
    try:
        if led is not None:
            led.check_writable()
        t = load_model(teacher_path)
        cfg, train = _dsn_config(mode, epochs, batch_size, seed, quiet)
        train = dataclasses.replace(
            train, device=device, precision=precision, channels_last=channels_last, checkpoint=checkpoint
        )
        issued = do_issue(
            t,
            ident,
            customer,
            owner_id=owner_id,
            size=parse_size(size),
            position=parse_position(position),
            config=cfg,
            train=train,
            scale=scale,
        )
        if records:
            led = led or _open_ledger(ledger)
            _issue_into_ledger(led, issued, out, licence, ident, seal)
        else:
            _write_issued_files(issued, out, licence, ident)
    finally:
        if led is not None:
            led.close()
    typer.echo(
        f"customer model: {out}\nlicence record (owner only, secret): {licence}\n"
        f"serial number: {issued.serial.geometry.describe()}"
    )
    typer.echo(f"product key for {customer} (shown once): {issued.product_key}")


def _pixels_per_bit(text: str) -> int | None:
    if text in ("", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 32:
        raise ConfigError(f"--pixels-per-bit {text!r} must be 'auto' or a whole number 1..32")
    return n


def _secret_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set or empty; export it with the {what}")
    return value


def _open_ledger(path: Path, create: bool = True):  # noqa: ANN202
    """The ledger at ``path``; only ``issue`` creates one (``create``), and only where no file is."""
    from deepserial.ledger import Ledger

    return Ledger(path, create=create)


def _check_issue_outputs(*paths: Path | None) -> None:
    """Refuse, before any training, outputs of ``issue`` that could not be written: the same path given
    twice, a directory, a parent that is a file, a directory where no file can be created (probed by
    creating and removing a file there, which permissions, read-only mounts and quotas all answer)."""
    import tempfile

    given = [p for p in paths if p is not None]
    resolved = [p.resolve() for p in given]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("the customer model, licence record and ledger must be three different files")
    for p in given:
        if p.is_dir():
            raise ConfigError(f"{p} is a directory; give a file name")
        d = p.parent
        while not d.exists() and d != d.parent:  # directories still missing are created when writing
            d = d.parent
        if not d.is_dir():
            raise ConfigError(f"cannot write {p}: {d} is not a directory")
        try:
            fd, probe = tempfile.mkstemp(dir=d, prefix=".deepserial-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"cannot write {p}: {e.strerror} in {d}") from None


def _place_issued(
    issued,  # noqa: ANN001
    out: Path,
    licence: Path,
    ident: OwnerIdentity,
    temps: list[Path],
    placed: list[Path],
) -> dict:
    """Write the customer model and licence record under ``temps`` (hidden names in the final
    directories, each written atomically), then rename both into place, appending each final path to
    ``placed`` as it lands; returns the model's manifest. Under torchrun every rank calls this (the
    writes are collective) and rank 0 writes and renames."""
    from deepserial.distributed import writes_here
    from deepserial.workflow import save_issued

    try:
        manifest = save_issued(issued, temps[0], temps[1], ident)
        if writes_here():
            for tmp, final in zip(temps, (out, licence), strict=True):
                os.replace(tmp, final)
                placed.append(final)
            for d in {out.parent, licence.parent}:
                fd = os.open(d, os.O_RDONLY)  # the renames survive a power cut before the ledger says final
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except OSError as e:  # a full disk, a directory made read-only since the check before training
        raise ConfigError(f"cannot write the issued files: {e.strerror or e} ({e.filename or out.parent})") from None
    return manifest


def _discard(paths: list[Path]) -> None:
    """Remove what a failed issuance wrote (best effort: the error being raised is the one to show)."""
    from contextlib import suppress

    for p in paths:
        with suppress(OSError):
            p.unlink(missing_ok=True)


def _write_issued_files(issued, out: Path, licence: Path, ident: OwnerIdentity) -> None:  # noqa: ANN001
    """``issue`` without a ledger: both files or neither (a failure removes what was written)."""
    from deepserial.ledger import issue_temp_path

    temps, placed = [issue_temp_path(out), issue_temp_path(licence)], []
    try:
        _place_issued(issued, out, licence, ident, temps, placed)
    except BaseException:
        _discard([*temps, *placed])
        raise


def _issue_into_ledger(
    led,
    issued,
    out: Path,
    licence: Path,
    ident: OwnerIdentity,  # noqa: ANN001
    seal: str | None,
) -> None:
    """Record the licence and write its files so that a row and its files exist together or not at
    all (the protocol of :mod:`deepserial.ledger`): a pending row naming the files (its fingerprint and
    sealed signature computed before the write lock), the files under temporary names, renamed into
    place, the row made final. The write lock is held only for the two short updates. On a failure
    the pending row is deleted and the files removed; if even that fails (or the process is killed),
    the pending row remains for `deepserial ledger check --repair`."""
    from deepserial.identity import VerifierString
    from deepserial.ledger import issue_temp_path

    temps, placed = [issue_temp_path(out), issue_temp_path(licence)], []
    lid = led.begin_issue(
        ident,
        VerifierString.from_dict(issued.licence["verifier"]),
        issued.serial,
        model_path=out,
        licence_path=licence,
        temp_paths=temps,
        dataset=issued.manifest.get("dataset"),
        signature=bytes.fromhex(issued.licence["signature"]),
        seal_passphrase=seal,
    )
    try:
        manifest = _place_issued(issued, out, licence, ident, temps, placed)
        led.complete_issue(lid, manifest["integrity"]["sha256"])
    except BaseException:
        try:
            gone = led.abandon_issue(lid)
        except Exception:  # the pending row names every file: `ledger check --repair` finishes the job
            gone = False
        if gone:
            _discard([*temps, *placed])
        raise


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or an .npz with array x.")],
    model: Annotated[Path, typer.Option(help="Customer model file.")],
    serial: Annotated[str | None, typer.Option(help="Product key (or set DEEPSERIAL_SERIAL).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Predict classes with a customer model, stamping your serial number on every input."""
    from deepserial.artifacts import load_model
    from deepserial.inputs import load_inputs
    from deepserial.serial import SerialGeometry, SerialNumber, stamp
    from deepserial.training import predict_logits

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
    probs = torch.softmax(predict_logits(m.model, stamp(x, sn.geometry, sn.as_tensor())), 1)
    conf, pred = probs.max(1)
    for i, (p, c) in enumerate(zip(pred.tolist(), conf.tolist(), strict=True)):
        if as_json:
            typer.echo(json.dumps({"index": i, "class": p, "confidence": round(c, 6)}))
        else:
            typer.echo(f"{i}\t{p}\t{c:.4f}")


@app.command()
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
    from deepserial.artifacts import load_model
    from deepserial.report import write_json
    from deepserial.serial import SerialGeometry, SerialNumber
    from deepserial.workflow import evaluate_customer, serial_from_licence

    check_writable(out)
    m = load_model(model)
    if "serial_geometry" not in m.manifest:
        raise ConfigError(f"{model} is not a serial-number protected model")
    expect = SerialGeometry.from_dict(m.manifest["serial_geometry"])
    if serial:
        sn = SerialNumber.from_product_key(serial, expect=expect)
    elif licence:
        sn = serial_from_licence(licence)
    else:
        raise ConfigError("pass --serial KEY or --licence FILE")
    t = load_model(teacher_path) if teacher_path else None
    rep = evaluate_customer(m, sn, teacher=t, n_wrong=n_wrong, wrong_eval_samples=wrong_samples, seed=seed)
    typer.echo(dsn_markdown(rep))
    if out:
        write_json(out, rep)
        typer.echo(f"wrote {out}")


def dsn_markdown(rep: dict) -> str:
    """The DSN evaluation as a Markdown table."""
    from deepserial.report import markdown_table

    rows = [
        ("teacher (no serial number)", rep.get("teacher_acc")),
        ("customer model, valid serial number", rep["valid_sn_acc"]),
        ("customer model, no serial number (raw)", rep["raw_acc"]),
        (f"random wrong serial numbers, mean of {rep['wrong_sn_count']}", rep["wrong_sn_mean"]),
        ("random wrong serial numbers, max", rep["wrong_sn_max"]),
        (f"one bit away (Hamming 1), mean of {rep['hamming1_count']}", rep["hamming1_mean"]),
        ("one bit away, max", rep["hamming1_max"]),
        (f"two bits away (Hamming 2), mean of {rep['hamming2_count']}", rep["hamming2_mean"]),
        ("two bits away, max", rep["hamming2_max"]),
        ("linear probe on features of raw inputs", rep["probe_acc"]),
    ]
    return markdown_table(["test accuracy (%)", "value"], rows)


@app.command()
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
    from deepserial.artifacts import decode_model, encode_model
    from deepserial.files import atomic_write_all
    from deepserial.report import json_bytes
    from deepserial.training import TrainConfig
    from deepserial.workflow import DataSpec, evaluate_customer, licence_bytes, parse_size, train_teacher
    from deepserial.workflow import issue as do_issue

    sn_size = parse_size(size)
    cfg, train = _dsn_config("default", epochs, 128, seed, quiet)
    teacher_train = TrainConfig(epochs=teacher_epochs, batch_size=128, seed=seed, progress=not quiet)
    check_writable(out, directory=True)
    t0 = time.perf_counter()
    say = (lambda s: None) if quiet else (lambda s: typer.echo(s, err=True))
    ident = OwnerIdentity.generate()
    files = [
        (out / "owner.pem", ident.private_pem(), 0o600),
        (public_key_path(out / "owner.pem"), ident.public_pem(), None),
    ]
    say("[1/4] owner key generated")
    t = train_teacher(DataSpec("mnist5k", seed), teacher_train)
    teacher_bytes, _ = encode_model(t.model, t.manifest)
    files.append((out / "teacher.safetensors", teacher_bytes, None))
    say(f"[2/4] teacher: {t.manifest['test_acc']:.2f}% test accuracy ({t.log.wall_s:.0f} s)")
    teacher_m = decode_model(teacher_bytes, out / "teacher.safetensors")
    issued = do_issue(teacher_m, ident, "demo-customer", owner_id="demo-owner", size=sn_size, config=cfg, train=train)
    customer_bytes, man = encode_model(issued.student, issued.manifest, owner=ident)
    files.append((out / "customer.safetensors", customer_bytes, None))
    files.append((out / "customer.licence.json", licence_bytes(issued, man["integrity"]["sha256"]), 0o600))
    say(f"[3/4] customer model issued ({issued.log.wall_s:.0f} s)")
    customer = decode_model(customer_bytes, out / "customer.safetensors", owner=ident)
    rep = evaluate_customer(
        customer,
        issued.serial,
        teacher=teacher_m,
        splits=issued.splits,
        n_wrong=n_wrong,
        wrong_eval_samples=wrong_samples,
        seed=seed,
    )
    rep["timings"]["demo_total_s"] = time.perf_counter() - t0
    rep["schedule"] = {"teacher_epochs": teacher_epochs, "student_epochs": epochs, "reproduce_dsn_student_epochs": 40}
    md = (
        f"# DSN demo on mnist5k\n\nSerial number {issued.serial.geometry.describe()} "
        f"({issued.serial.geometry.nbits} bits), seed {seed}, teacher {teacher_epochs} and student {epochs} "
        f"epochs (a short schedule: `reproduce dsn` trains the student 40), "
        f"total {rep['timings']['demo_total_s']:.0f} s.\n\n{dsn_markdown(rep)}\n"
    )
    files += [(out / "dsn_report.json", json_bytes(rep), None), (out / "dsn_report.md", md.encode(), None)]
    atomic_write_all(files)
    say(f"[4/4] evaluated; wrote {len(files)} files to {out} (owner.pem and customer.licence.json are secret)")
    typer.echo(md)
    typer.echo(f"product key for demo-customer (shown once): {issued.product_key}")


def _scheme_settings(items: list[str] | None) -> dict:
    """``--set name=value`` pairs -> a dict (values parsed as JSON when they are, else strings)."""
    out: dict = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set {item!r} must look like name=value, e.g. --set alpha=0.01")
        try:
            out[name] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON (JSONDecodeError), or nested beyond the parser
            out[name] = value
    return out


@watermark_app.command("embed")
def watermark_embed(
    scheme: Annotated[
        str, typer.Option(help=f"Scheme: {_registered('schemes')} (see `deepserial watermark schemes`).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Watermarked model file (.safetensors).")],
    key_out: Annotated[
        Path | None, typer.Option("--key-out", help="Ownership key file (secret; default OUT with .key).")
    ] = None,
    key: Annotated[Path, typer.Option(help="Owner private key file.")] = Path("owner.pem"),
    dataset: Annotated[str, typer.Option(help=f"{_registered('datasets')}, or a path to your data.")] = "mnist5k",
    arch: Annotated[
        str, typer.Option(help=f"Network: {_registered('models')} (see `deepserial models`).")
    ] = "dsn_mnist",
    base: Annotated[
        Path | None,
        typer.Option(
            help="Fine-tune this trained model instead of training from scratch (schemes embedded after training)."
        ),
    ] = None,
    subject: Annotated[
        str, typer.Option(help="What the watermark is for (goes into the signed verifier string).")
    ] = "model",
    owner_id: Annotated[str | None, typer.Option(help="Owner name in the verifier string.")] = None,
    setting: Annotated[list[str] | None, typer.Option("--set", help="Scheme setting name=value (repeat).")] = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: Seed = 0,
    split_seed: SplitSeed = 0,
    limit: Limit = None,
    device: Device = "auto",
    passphrase_env: Annotated[str | None, typer.Option(help="Env variable holding the key's passphrase.")] = None,
    quiet: Quiet = False,
    force: bool = False,
) -> None:
    """Train (or fine-tune) a model carrying an ownership watermark; write the model and its key."""
    from deepserial.artifacts import encode_key, encode_model, load_model
    from deepserial.files import atomic_write_all
    from deepserial.schemes.base import get_scheme
    from deepserial.training import TrainConfig
    from deepserial.workflow import DataSpec, embed_watermark

    key_out = key_out or out.with_name(out.name.removesuffix(".safetensors") + ".key")
    _refuse_overwrite(out, key_out, force=force)
    sch = get_scheme(scheme, _scheme_settings(setting))
    ident = OwnerIdentity.load(key, _passphrase(passphrase_env))
    base_model = load_model(base) if base is not None else None
    data = (
        DataSpec.from_manifest(base_model.manifest)
        if base_model is not None
        else DataSpec(dataset, split_seed, limit=limit)
    )
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, progress=not quiet)
    m = embed_watermark(sch, ident, data, train, arch=arch, subject=subject, owner_id=owner_id, base=base_model)
    key_bytes, _ = encode_key(m.key, owner=ident)
    atomic_write_all([(key_out, key_bytes, 0o600), (out, encode_model(m.model, m.manifest, owner=ident)[0], None)])
    typer.echo(
        f"{scheme}: test accuracy {m.manifest['test_acc']:.2f}%, {m.log.wall_s:.1f} s; wrote {out} and "
        f"ownership key {key_out} (keep it secret)"
    )


@watermark_app.command("verify")
def watermark_verify(
    suspect: Annotated[
        str,
        typer.Argument(
            help="Suspect: a model file (.safetensors, .onnx) or the URL of a prediction server (http://host:port)."
        ),
    ],
    key: Annotated[Path, typer.Option("--key", help="Ownership key file written by `watermark embed`.")],
    fpr: Annotated[float, typer.Option(help="False-positive rate the decision is taken at.")] = 1e-3,
    budget: Annotated[int | None, typer.Option(help="Most queries the verification may spend.")] = None,
    scheme: Annotated[
        str | None,
        typer.Option(help=f"Refuse a key of any other scheme ({_registered('schemes')}; default: the key's own)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="URL suspect: seconds one request may take, all told.")] = 30.0,
    total_timeout: Annotated[
        float, typer.Option(help="URL suspect: seconds all requests to the server may take together.")
    ] = 600.0,
) -> None:
    """Test whether SUSPECT carries the watermark of KEY. Exit status 0: it does; 1: it does not."""
    from deepserial.artifacts import load_key
    from deepserial.schemes.base import get_scheme
    from deepserial.suspect import open_suspect
    from deepserial.workflow import verify_watermark

    if scheme is not None:
        get_scheme(scheme)  # an unknown name is refused before any file is read
    k = load_key(key)
    if scheme is not None and k.scheme != scheme:
        raise ConfigError(
            f"{key} is a {k.scheme} key, not a {scheme} key: give the key written by "
            f"`watermark embed --scheme {scheme}` (or leave out --scheme)"
        )
    s = open_suspect(suspect, budget=budget, timeout=timeout, total_timeout=total_timeout)
    v = verify_watermark(k, s, fpr=fpr)
    typer.echo(json.dumps(v.to_dict(), indent=2) if as_json else v.summary())
    if not v.decision:
        raise typer.Exit(1)


@watermark_app.command("schemes")
def watermark_schemes() -> None:
    """List the registered schemes and the paper of each."""
    import deepserial.schemes  # noqa: F401
    from deepserial.schemes.base import SCHEMES

    for name, cls in sorted(SCHEMES.items()):
        box = "white-box" if cls.white_box else "black-box"
        typer.echo(f"{name:18s} {box}  {cls.citation}")


@app.command()
def attack(
    name: Annotated[
        str,
        typer.Argument(help=f"Attack: {_registered('attacks')}."),
    ],
    model: Annotated[Path, typer.Option(help="The model to attack (.safetensors).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the attacked model here.")] = None,
    key: Annotated[Path | None, typer.Option(help="Ownership key: verify the watermark before and after.")] = None,
    serial: Annotated[
        str | None, typer.Option(help="Product key of a DSN model: accuracy with it before and after.")
    ] = None,
    fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of the training data the attacker holds, e.g. 0.1 (default: the whole attacker split, 40%)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Attacker's training epochs.")] = 10,
    lr: Annotated[float | None, typer.Option(help="Attacker's learning rate (default 1e-3).")] = None,
    batch_size: int = 128,
    optimizer: Annotated[str, typer.Option(help="adam or sgd.")] = "adam",
    queries: Annotated[int | None, typer.Option(help="Most queries to the victim (extraction).")] = None,
    setting: Annotated[
        list[str] | None, typer.Option("--set", help="Attack option name=value (repeat), e.g. --set mode=RTAL.")
    ] = None,
    fpr: Annotated[float, typer.Option(help="False-positive rate of the watermark verdicts.")] = 1e-3,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
    seed: Seed = 0,
    device: Device = "auto",
    quiet: Quiet = False,
    force: bool = False,
) -> None:
    """Attack a protected model with an explicit budget; report accuracy, serial-number accuracy and the
    ownership verdict before and after, and what the attack spent."""
    from deepserial.artifacts import encode_model, load_key, load_model
    from deepserial.attacks.base import AttackBudget, get_attack, resulting_arch
    from deepserial.attacks.input_preprocessing import transforms_inputs
    from deepserial.files import atomic_write_all
    from deepserial.report import json_bytes
    from deepserial.serial import SerialGeometry, SerialNumber
    from deepserial.workflow import attack_model

    _refuse_overwrite(*(p for p in (out, report) if p is not None), force=force)
    atk = get_attack(name, _scheme_settings(setting))
    if out is not None and transforms_inputs(atk):
        raise ConfigError(
            f"{name} transforms the inputs, which is not a weight change a model file can hold; leave out --out"
        )
    budget = AttackBudget.parse(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        queries=queries,
        seed=seed,
        device=None if device == "auto" else device,
        progress=not quiet,
    )
    target = load_model(model)
    k = load_key(key) if key is not None else None
    sn = None
    if serial is not None:
        if "serial_geometry" not in target.manifest:
            raise ConfigError(f"{model} is not a serial-number protected model; leave out --serial")
        sn = SerialNumber.from_product_key(serial, expect=SerialGeometry.from_dict(target.manifest["serial_geometry"]))
    attacked, rep = attack_model(target, atk, budget, fraction=fraction, key=k, serial=sn, fpr=fpr)
    outputs = []
    if out is not None:
        man = {k_: v for k_, v in target.manifest.items() if k_ not in ("integrity", "format")}
        man |= {
            "arch": resulting_arch(target.manifest["arch"], rep["log"]),  # a retrained student's own network
            "role": "attacked",
            "num_classes": int(attacked.classifier.out_features),
            "attack": {"name": name, "budget": rep["log"]["budget"], "fraction": fraction, "source": str(model)},
            "test_acc": rep["after"]["test_acc"],
        }
        outputs.append((out, encode_model(attacked, man)[0], None))
    if report is not None:
        outputs.append((report, json_bytes(rep), None))
    atomic_write_all(outputs)
    if as_json:
        typer.echo(json.dumps(rep, indent=2, default=str))
        return
    log = rep["log"]
    typer.echo(
        f"{name}: {rep['attacker_samples']} attacker samples, {log['epochs']} epochs, "
        f"{log['forward_samples']} forward samples, {log['queries']} queries, {log['wall_s']:.1f} s"
    )
    for when in ("before", "after"):
        r = rep[when]
        parts = [f"test acc {r['test_acc']:.2f}%" if r["test_acc"] is not None else "test acc n/a (other labels)"]
        if "with_serial_acc" in r and r["with_serial_acc"] is not None:
            parts.append(f"with serial number {r['with_serial_acc']:.2f}%")
        if "verdict" in r:
            v = r["verdict"]
            parts.append(
                "watermark "
                + ("verified" if v.get("decision") else "NOT verified")
                + (f" (p = {v['p_value']:.3g})" if v.get("p_value") is not None else f" ({v.get('error')})")
            )
        typer.echo(f"  {when:6s} " + "; ".join(parts))
    if out is not None:
        typer.echo(f"wrote {out}")


@reproduce_app.command("dsn")
def reproduce_dsn(
    dataset: Annotated[str, typer.Option(help=f"{_registered('datasets')}, or a path to your data.")] = "mnist5k",
    out: Annotated[Path, typer.Option("--out", "-o", help="Reports folder.")] = Path("reports"),
    runs: Annotated[
        str | None,
        typer.Option(
            help="Re-run only these configurations (comma-separated, e.g. "
            "default-6x6) and merge them into the existing report."
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(help=f"Network, for a path to your data: {_registered('models')} (dsn_gtsrb for 32x32 colour)."),
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
    from deepserial.experiments.dsn import CONFIGS, path_config, run

    only = [r.strip() for r in runs.split(",") if r.strip()] if runs else None
    scales = [_pixels_per_bit(v.strip()) for v in pixels_per_bit.split(",")]
    custom = {"arch": arch, "teacher_epochs": teacher_epochs, "student_epochs": student_epochs, "n_wrong": n_wrong}
    config = None
    if dataset not in CONFIGS:
        config = path_config(dataset, scales, **custom)
    elif any(v is not None for v in custom.values()) or scales != [None]:
        raise ConfigError(
            f"--arch, --teacher-epochs, --student-epochs, --n-wrong and --pixels-per-bit are for a "
            f"path to your data; {dataset} has its fixed reproduction settings"
        )
    command = (
        "deepserial reproduce dsn --dataset "
        + dataset
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in custom.items() if v is not None)
        + (f" --pixels-per-bit {pixels_per_bit}" if scales != [None] else "")
    )
    check_writable(out, directory=True)  # before hours of work
    paths = run(dataset, out, seed=seed, progress=not quiet, only=only, config=config, command=command)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


@reproduce_app.command("attacks")
def reproduce_attacks(
    scheme: Annotated[str, typer.Option(help="The protection attacked: dsn or a watermark scheme.")] = "dsn",
    dataset: Annotated[str, typer.Option(help="mnist5k or fashion-mnist.")] = "mnist5k",
    out: Annotated[Path, typer.Option("--out", "-o", help="Reports folder.")] = Path("reports"),
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
) -> None:
    """The papers' robustness tables beside ours. DSN: Tables 3-6 and Fig. 2 (fine-tuning, from scratch,
    transfer, overwriting, pruning, serial-number search, Neural Cleanse). A watermark scheme: the attacks
    its paper evaluates, with the owner's verdict after each. --suite wrt: the removal attacks of the
    Watermark-Robustness-Toolbox (Lukas et al., IEEE S&P 2022) against either."""
    from deepserial.experiments.attacks import run, run_seeds

    if suite != "papers" and (seeds is not None or tries is not None):
        raise ConfigError("--seeds and --tries are for the papers' suite; leave them out with --suite wrt")
    if seeds is not None:
        if scheme != "dsn" or tries is not None or seed != 0:
            raise ConfigError(
                "--seeds is for --scheme dsn, without --tries (the seeds study runs no serial search) "
                "and without --seed (--seeds names every seed)"
            )
        try:
            values = [int(v) for v in seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds takes comma-separated integers such as 0,1,2; got {seeds!r}") from None
        check_writable(out, directory=True)  # before hours of work
        paths = run_seeds(dataset, values, out, progress=not quiet)
        typer.echo("wrote " + ", ".join(str(p) for p in paths))
        return
    over = {"brute_force_tries": tries} if tries is not None else None
    check_writable(out, directory=True)  # before hours of work
    paths = run(scheme, dataset, out, seed=seed, progress=not quiet, overrides=over, suite=suite)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


@reproduce_app.command("neural-cleanse")
def reproduce_neural_cleanse(
    dataset: Annotated[str, typer.Option(help="mnist5k or fashion-mnist.")] = "mnist5k",
    out: Annotated[Path, typer.Option("--out", "-o", help="Reports folder.")] = Path("reports"),
    schemes: Annotated[str | None, typer.Option(help="Comma-separated watermark schemes (default: all).")] = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Neural Cleanse's anomaly index for a clean model, a DSN customer model and one model per watermark
    scheme, with the owner's verdict after its unlearning: reports/neural_cleanse_<dataset>."""
    from deepserial.experiments.neural_cleanse import run

    names = None if schemes is None else [v.strip() for v in schemes.split(",") if v.strip()]
    check_writable(out, directory=True)  # before hours of work
    paths = run(dataset, out, seed=seed, progress=not quiet, schemes=names)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


@reproduce_app.command("dsn-security")
def reproduce_dsn_security(
    dataset: Annotated[
        str, typer.Option(help="mnist5k, mnist5k-alt (a 5x7 serial number at rows 8, columns 12) or fashion-mnist.")
    ] = "mnist5k",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one customer model each.")] = "0,1,2,3,4",
    out: Annotated[Path, typer.Option("--out", "-o", help="Reports folder.")] = Path("reports"),
    quiet: Quiet = False,
) -> None:
    """The DSN lock against an adaptive thief, per customer model: every near key, reverse engineering
    with bit search, label-only hill climbing, and a fine-tuning / transfer sweep against from scratch
    at 10-40% of the data: reports/dsn_security_<dataset>."""
    from deepserial.experiments.dsn_security import run

    try:
        values = [int(v) for v in seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers such as 0,1,2; got {seeds!r}") from None
    check_writable(out, directory=True)  # before hours of work
    paths = run(dataset, out, values, progress=not quiet, command=" ".join(["deepserial", *sys.argv[1:]]))
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


def _reproduce_command(name: str):  # noqa: ANN202
    def command(
        dataset: Annotated[str, typer.Option(help="mnist5k or fashion-mnist.")] = "mnist5k",
        out: Annotated[Path, typer.Option("--out", "-o", help="Reports folder.")] = Path("reports"),
        n_models: Annotated[int | None, typer.Option(help="Independently keyed models (default 10).")] = None,
        n_random_keys: Annotated[
            int | None, typer.Option(help="Random keys for false positives (default 1000).")
        ] = None,
        epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the data set's config).")] = None,
        seed: Seed = 0,
        quiet: Quiet = False,
    ) -> None:
        from deepserial.experiments.watermarks import run

        over = {
            k: v
            for k, v in {"n_models": n_models, "n_random_keys": n_random_keys, "epochs": epochs}.items()
            if v is not None
        }
        check_writable(out, directory=True)  # before hours of work
        paths = run(name, dataset, out, seed=seed, progress=not quiet, overrides=over)
        typer.echo("wrote " + ", ".join(str(p) for p in paths))

    return command


def _register_reproductions() -> None:
    import deepserial.schemes  # noqa: F401  (registers every scheme)
    from deepserial.schemes.base import SCHEMES

    for name, cls in sorted(SCHEMES.items()):
        if name != "dsn":
            reproduce_app.command(name, help=f"{cls.citation}: accuracy, verification, false positives.")(
                _reproduce_command(name)
            )


_register_reproductions()


# ----- licensing in practice: ledger, tracing, serving, export --------------------------------------
@ledger_app.command("list")
def ledger_list(
    ledger: Annotated[Path, typer.Option(help="Ledger file.")] = Path("ledger.db"),
    customer: Annotated[str | None, typer.Option(help="Only this customer's licences.")] = None,
) -> None:
    """One line per issued licence: id, customer, scheme, time, model digest, serial-number fingerprint."""
    with _open_ledger(ledger, create=False) as led:
        rows = led.licences(customer=customer)
        unfinished = led.unfinished()
        for lic in rows:
            typer.echo(
                f"{lic.id}\t{lic.customer}\t{lic.scheme}\t{lic.issued_at}\t"
                f"model {(lic.model_sha256 or '-')[:16]}\tsn {lic.sn_fingerprint[:16]}"
                + ("\tsealed" if lic.sealed else "")
            )
        note = f" ({len(unfinished)} unfinished issuance(s): see `deepserial ledger check`)" if unfinished else ""
        typer.echo(f"{len(rows)} licence(s) in {ledger}{note}", err=True)


@ledger_app.command("show")
def ledger_show(
    licence_id: Annotated[int, typer.Argument(help="Licence id (see `ledger list`).")],
    ledger: Annotated[Path, typer.Option(help="Ledger file.")] = Path("ledger.db"),
) -> None:
    """Everything the ledger holds about one licence, as JSON (no secret)."""
    with _open_ledger(ledger, create=False) as led:
        typer.echo(json.dumps(led.get(licence_id).to_dict(), indent=2))


@ledger_app.command("export")
def ledger_export(
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    ledger: Annotated[Path, typer.Option(help="Ledger file.")] = Path("ledger.db"),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here (default: stdout).")] = None,
    force: bool = False,
) -> None:
    """Every licence as CSV or JSON."""
    from deepserial.identity import atomic_write

    if out is not None:
        _refuse_overwrite(out, force=force)
    with _open_ledger(ledger, create=False) as led:
        text = led.export(fmt)
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write(out, text.encode())
        typer.echo(f"wrote {out}", err=True)


@ledger_app.command("check")
def ledger_check(
    ledger: Annotated[Path, typer.Option(help="Ledger file.")] = Path("ledger.db"),
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Remove abandoned issuances (an issuer killed while writing its files): their pending "
            "rows, temporary files and the files they wrote.",
        ),
    ] = False,
) -> None:
    """SQLite's integrity check, foreign keys, every row parsed, and unfinished issuances.

    Exit status 1 when the file is damaged or an abandoned issuance is left (see --repair); an issuance
    still running in another process is listed but is not damage.
    """
    from deepserial.ledger import LedgerBusyError, LedgerError

    try:
        led = _open_ledger(ledger, create=False)
    except LedgerBusyError:
        raise
    except LedgerError as e:
        typer.echo(f"{ledger}: damaged: {e}")
        raise typer.Exit(1) from None
    with led:
        report = led.check(repair=repair)
    for line in report.lines():
        typer.echo(line)
    if not report.sound:
        raise typer.Exit(1)


@app.command()
def trace(
    suspect: Annotated[
        str,
        typer.Argument(help="Leaked model: a file (.safetensors, .onnx) or the URL of a prediction server."),
    ],
    ledger: Annotated[Path, typer.Option(help="Ledger file.")] = Path("ledger.db"),
    key: Annotated[
        Path, typer.Option(help="Owner private key file (re-derives queries, codewords, serial numbers).")
    ] = Path("owner.pem"),
    fpr: Annotated[float, typer.Option(help="Family-wise false-positive rate over all licences.")] = 1e-3,
    method: Annotated[
        str,
        typer.Option(
            help="fingerprint: send the owner's query set, which carries no serial number (default); serial: stamp "
            "every licence's serial number on labelled images (for licences issued without a fingerprint)."
        ),
    ] = "fingerprint",
    reveal_serials: Annotated[
        bool, typer.Option(help="With --method serial against a URL: send the serial numbers anyway.")
    ] = False,
    budget: Annotated[int | None, typer.Option(help="Most queries the trace may spend.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="--method serial: labelled images to query with (default: the licences' data set)."),
    ] = None,
    passphrase_env: Annotated[str | None, typer.Option(help="Env variable holding the key's passphrase.")] = None,
    seal_passphrase_env: Annotated[
        str | None, typer.Option(help="Env variable with the ledger passphrase (sealed licences).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    seed: Seed = 0,
    timeout: Annotated[float, typer.Option(help="URL suspect: seconds one request may take, all told.")] = 30.0,
    total_timeout: Annotated[
        float, typer.Option(help="URL suspect: seconds all requests to the server may take together.")
    ] = 600.0,
) -> None:
    """Name the customer whose licence a leaked model carries. Exit status 0: one is named; 1: none is."""
    from deepserial.suspect import open_suspect
    from deepserial.tracing import trace_ledger

    ident = OwnerIdentity.load(key, _passphrase(passphrase_env))
    seal = _secret_env(seal_passphrase_env, "ledger passphrase") if seal_passphrase_env else None
    with _open_ledger(ledger, create=False) as led:
        res = trace_ledger(
            lambda: open_suspect(suspect, budget=budget, timeout=timeout, total_timeout=total_timeout),
            suspect,
            led,
            ident,
            method=method,
            reveal_serials=reveal_serials,
            fpr=fpr,
            dataset=dataset,
            seal_passphrase=seal,
            seed=seed,
            warn=lambda m: typer.echo(m, err=True),
        )
    typer.echo(json.dumps(res.to_dict(), indent=2) if as_json else res.summary())
    if not res.found:
        raise typer.Exit(1)


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="Model file to serve.")],
    serial_file: Annotated[
        Path | None, typer.Option(help="File holding the product key (or set DEEPSERIAL_SERIAL).")
    ] = None,
    raw_inputs: Annotated[bool, typer.Option(help="Stamp nothing: clients send inputs already stamped.")] = False,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, printed).")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most inputs per request.")] = 256,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 8 * 2**20,
    header_timeout: Annotated[float, typer.Option(help="Seconds a client has to send complete headers.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a client has to send the body after them.")] = 30.0,
    max_connections: Annotated[int, typer.Option(help="Open connections before requests get 503.")] = 1000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level (info logs each request line).")] = "warning",
) -> None:
    """Serve a model over HTTP: /v1/predict, /v1/health, /v1/info. The serial number is never logged."""
    from deepserial.artifacts import load_model
    from deepserial.serial import SerialGeometry, SerialNumber
    from deepserial.serve import bind, create_app, server

    m = load_model(model)
    serial = None
    if serial_file is not None:
        try:
            text = serial_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read serial file {serial_file}: {e.strerror}") from None
    elif "serial_geometry" in m.manifest:  # the environment's serial number only for a model that takes one
        text = os.environ.get("DEEPSERIAL_SERIAL", "").strip()
    else:
        text = ""
    if text and not raw_inputs:
        expect = SerialGeometry.from_dict(m.manifest["serial_geometry"]) if "serial_geometry" in m.manifest else None
        serial = SerialNumber.from_product_key(text, expect=expect)
    app_ = create_app(
        m, serial, raw_inputs=raw_inputs, max_batch=max_batch, max_body=max_body_bytes, body_timeout=body_timeout
    )
    srv = server(app_, log_level, header_timeout=header_timeout, max_connections=max_connections)
    sock = bind(host, port)
    typer.echo(
        f"serving {model} on http://{host}:{sock.getsockname()[1]} "
        f"({'stamping the serial number' if serial is not None else 'inputs as sent'}); Ctrl-C stops",
        err=True,
    )
    srv.run(sockets=[sock])


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Model file (.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx.")] = "onnx",
    check: Annotated[bool, typer.Option(help="Compare onnxruntime with PyTorch on the model's test split.")] = True,
    force: bool = False,
) -> None:
    """Export a model to ONNX (the network only: a customer still stamps their serial number)."""
    from deepserial.artifacts import export_onnx, load_model

    if fmt != "onnx":
        raise ConfigError(f"unknown export format {fmt!r}; only onnx is supported")
    _refuse_overwrite(out, force=force)
    m = load_model(model)
    tmp = out.with_name(f".{out.name}.export{os.getpid()}")
    try:
        export_onnx(tmp, m)
        if check:
            diff, agree, n = onnx_parity(m, tmp)
            if diff > 1e-4 or agree < n:
                raise ConfigError(
                    f"ONNX export differs from PyTorch (max |logit diff| {diff:.2e}, {agree}/{n} labels "
                    "agree); not written"
                )
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    msg = f"; parity on {n} test images: max |logit diff| {diff:.2e}, labels identical" if check else ""
    typer.echo(f"wrote {out}{msg}")


def onnx_parity(m, onnx_path: Path) -> tuple[float, int, int]:  # noqa: ANN001 (LoadedModel)
    """Largest |logit| difference and label agreement of torch and onnxruntime on the model's test split
    (stamped with a random pattern where the model takes a serial number, so both regimes are covered)."""
    from deepserial.suspect import ONNXSuspect
    from deepserial.training import predict_logits
    from deepserial.workflow import DataSpec

    x = DataSpec.from_manifest(m.manifest).load().test.x
    if "serial_geometry" in m.manifest:
        from deepserial.serial import SerialGeometry, stamp

        g = SerialGeometry.from_dict(m.manifest["serial_geometry"])
        half = len(x) // 2
        x = torch.cat([x[:half], stamp(x[half:], g, torch.randint(0, 2, (g.height, g.width)))])
    ref = predict_logits(m.model, x).numpy()
    got = ONNXSuspect(onnx_path).logits(x)
    return float(abs(ref - got).max()), int((ref.argmax(1) == got.argmax(1)).sum()), len(x)


data_app = typer.Typer(no_args_is_help=True, help="Data sets: write the stand-in data the tests and reports use.")
app.add_typer(data_app, name="data")


@data_app.command("cifar-digits")
def data_cifar_digits(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the CIFAR-10 style pickles.")] = Path(
        "cifar-digits"
    ),
    seed: Seed = 0,
    force: bool = False,
) -> None:
    """Write mnist5k's 5,000 real digits as 32x32 colour images in CIFAR-10's python-pickle layout
    (a stand-in for 32x32x3 data where CIFAR-10 / GTSRB cannot be fetched)."""
    from deepserial.data.synthetic import write_cifar_digits

    _refuse_overwrite(out / "data_batch_1", out / "test_batch", out / "batches.meta", force=force)
    write_cifar_digits(out, seed=seed)
    typer.echo(f"wrote {out}/data_batch_1 (4,000 images), {out}/test_batch (1,000), {out}/batches.meta")


@app.command()
def info(model: Annotated[Path, typer.Argument(help="Model file.")]) -> None:
    """Print a model file's verified manifest (no secrets are stored in it)."""
    from deepserial.artifacts import read_manifest

    typer.echo(json.dumps(read_manifest(model), indent=2))


@app.command()
def models() -> None:
    """List the registered networks and data sets."""
    from deepserial.data import available_datasets
    from deepserial.nets import available_models

    for k, v in available_models().items():
        typer.echo(f"network  {k:12s} {v}")
    for k, v in available_datasets().items():
        typer.echo(f"dataset  {k:12s} {v}")


# Commands that serve, trace or keep the ledger run in one process; under torchrun they are refused.
_SINGLE_PROCESS = {"serve", "trace", "ledger", "export"}


def _option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _one_line(message: str) -> str:
    """``message`` with every line break and other unprintable character escaped (``\\n``, ``\\x1b``):
    an error that quotes user input (a ``--set`` name, a file name) stays one line and cannot move the
    terminal's cursor."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in message)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command, turning user errors into one line and exit status 2.

    Under torchrun (``torchrun --nproc_per_node N -m deepserial ...``) the process first joins the
    process group (:mod:`deepserial.distributed`); only rank 0 prints.
    """
    from deepserial import distributed

    args = list(sys.argv[1:] if argv is None else argv)
    cmd = typer.main.get_command(app)
    try:
        if distributed.launched():
            if args and args[0] in _SINGLE_PROCESS:
                raise ConfigError(f"`deepserial {args[0]}` runs in one process; start it without torchrun")
            distributed.init_from_env(_option(args, "--device"))
            if not distributed.is_main_process():
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        rc = cmd.main(args=args, prog_name="deepserial", standalone_mode=False)
        distributed.shutdown()
    except DeepSerialError as e:
        if distributed.is_main_process():  # under torchrun every rank fails alike: one line, from rank 0
            typer.echo(f"deepserial: error: {_one_line(str(e))}", err=True)
        return e.exit_code
    except Exception as e:
        # Usage errors and exits come from click or from the copy of click that typer bundles;
        # both carry ``exit_code`` (and usage errors ``show``), so they are matched by shape.
        if type(e).__name__ == "Abort":
            typer.echo("deepserial: aborted", err=True)
            return 1
        if hasattr(e, "exit_code") and hasattr(e, "show"):
            e.show()
            return int(e.exit_code)
        if hasattr(e, "exit_code"):
            return int(e.exit_code)
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
