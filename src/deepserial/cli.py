"""The ``deepserial`` command.

Every user mistake ends as one line on stderr (``deepserial: error: ...``) and exit status 2, and
no command leaves a partial output file behind (outputs are written atomically, after the work).
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

from deepserial.errors import ConfigError, DeepSerialError, IdentityError
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
    name = env or "DEEPSERIAL_PASSPHRASE"
    value = os.environ.get(name)
    if env and value is None:
        raise IdentityError(f"environment variable {env} is not set; export it with the key's passphrase")
    return value


def _refuse_overwrite(*paths: Path, force: bool) -> None:
    for p in paths:
        if p.exists() and not force:
            raise ConfigError(f"{p} exists; pass --force to overwrite it")


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

    Prints the product key once: hand it to the customer with the model file. With --ledger, the
    licence row and the files are committed together: the key is printed only after both are final.
    """
    from deepserial.artifacts import load_model
    from deepserial.workflow import issue as do_issue
    from deepserial.workflow import parse_position, parse_size, save_issued

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in customer)
    out = out or Path(f"customer-{safe}.safetensors")
    licence = licence or out.with_name(out.name.removesuffix(".safetensors") + ".licence.json")
    _refuse_overwrite(out, licence, force=force)
    ident = OwnerIdentity.load(key, _passphrase(passphrase_env))
    seal = _secret_env(seal_passphrase_env, "ledger passphrase") if seal_passphrase_env else None
    if ledger is None and seal is not None:
        raise ConfigError("--seal-passphrase-env needs --ledger: the sealed signature is kept in the ledger")
    from deepserial.distributed import is_main_process

    scale = _pixels_per_bit(pixels_per_bit)
    # a bad ledger is refused before training; under torchrun only rank 0 opens it (one row per licence)
    led = _open_ledger(ledger) if ledger is not None and is_main_process() else None
    if led is not None and ident.algorithm != "ed25519" and seal is None:
        raise ConfigError(
            "an RSA owner key signs non-deterministically: give --seal-passphrase-env so the ledger "
            "can re-derive this serial number for tracing"
        )
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
    if led is None:
        save_issued(issued, out, licence, ident)
    else:
        _issue_into_ledger(led, issued, out, licence, ident, seal)
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
    from deepserial.ledger import Ledger

    return Ledger(path, create=create)


def _issue_into_ledger(
    led,
    issued,
    out: Path,
    licence: Path,
    ident: OwnerIdentity,  # noqa: ANN001
    seal: str | None,
) -> None:
    """Write the customer files and the ledger row in one transaction: if anything fails before the commit,
    the row is rolled back and the files just written are removed."""
    from deepserial.identity import VerifierString
    from deepserial.workflow import save_issued

    existed = {p: p.exists() for p in (out, licence)}
    try:
        with led.transaction() as tx:
            manifest = save_issued(issued, out, licence, ident)
            led.record(
                ident,
                VerifierString.from_dict(issued.licence["verifier"]),
                issued.serial,
                model_sha256=manifest["integrity"]["sha256"],
                model_path=str(out.resolve()),
                dataset=issued.manifest.get("dataset"),
                signature=bytes.fromhex(issued.licence["signature"]),
                seal_passphrase=seal,
                db=tx,
            )
    except BaseException:
        for p, was in existed.items():
            if not was and p.exists():
                p.unlink()
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
    epochs: Annotated[int, typer.Option(help="Student epochs.")] = 30,
    n_wrong: int = 1000,
    wrong_samples: Annotated[int, typer.Option(help="Test images per random/Hamming-2 wrong key.")] = 300,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """The whole vendor pipeline on the embedded mnist5k data: key, teacher, customer model, report."""
    from deepserial.artifacts import load_model, save_model
    from deepserial.report import write_json, write_text
    from deepserial.training import TrainConfig
    from deepserial.workflow import DataSpec, evaluate_customer, parse_size, save_issued, train_teacher
    from deepserial.workflow import issue as do_issue

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda s: None) if quiet else (lambda s: typer.echo(s, err=True))
    ident = OwnerIdentity.generate()
    ident.save(out / "owner.pem")
    say("[1/4] owner key: written")
    t = train_teacher(
        DataSpec("mnist5k", seed), TrainConfig(epochs=teacher_epochs, batch_size=128, seed=seed, progress=not quiet)
    )
    save_model(out / "teacher.safetensors", t.model, t.manifest)
    say(f"[2/4] teacher: {t.manifest['test_acc']:.2f}% test accuracy ({t.log.wall_s:.0f} s)")
    cfg, train = _dsn_config("default", epochs, 128, seed, quiet)
    teacher_m = load_model(out / "teacher.safetensors")
    issued = do_issue(
        teacher_m, ident, "demo-customer", owner_id="demo-owner", size=parse_size(size), config=cfg, train=train
    )
    save_issued(issued, out / "customer.safetensors", out / "customer.licence.json", ident)
    say(f"[3/4] customer model issued ({issued.log.wall_s:.0f} s); product key {issued.product_key}")
    customer = load_model(out / "customer.safetensors", owner=ident)
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
    rep["product_key"] = issued.product_key
    write_json(out / "dsn_report.json", rep)
    md = (
        f"# DSN demo on mnist5k\n\nSerial number {issued.serial.geometry.describe()} "
        f"({issued.serial.geometry.nbits} bits), seed {seed}, "
        f"total {rep['timings']['demo_total_s']:.0f} s.\n\n{dsn_markdown(rep)}\n"
    )
    write_text(out / "dsn_report.md", md)
    say(f"[4/4] evaluated; wrote {out / 'dsn_report.json'} and {out / 'dsn_report.md'}")
    typer.echo(md)


def _scheme_settings(items: list[str] | None) -> dict:
    """``--set name=value`` pairs -> a dict (values parsed as JSON when they are, else strings)."""
    out: dict = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set {item!r} must look like name=value, e.g. --set alpha=0.01")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
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
    from deepserial.artifacts import load_model, save_key, save_model
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
    save_key(key_out, m.key, owner=ident)
    save_model(out, m.model, m.manifest, owner=ident)
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
    s = open_suspect(suspect, budget=budget)
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
    from deepserial.artifacts import load_key, load_model, save_model
    from deepserial.attacks.base import AttackBudget, get_attack
    from deepserial.report import write_json
    from deepserial.serial import SerialGeometry, SerialNumber
    from deepserial.workflow import attack_model

    _refuse_overwrite(*(p for p in (out, report) if p is not None), force=force)
    atk = get_attack(name, _scheme_settings(setting))
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
    if out is not None:
        man = {k_: v for k_, v in target.manifest.items() if k_ not in ("integrity", "format")}
        man |= {
            "role": "attacked",
            "num_classes": int(attacked.classifier.out_features),
            "attack": {"name": name, "budget": rep["log"]["budget"], "fraction": fraction, "source": str(model)},
            "test_acc": rep["after"]["test_acc"],
        }
        save_model(out, attacked, man)
    if report is not None:
        write_json(report, rep)
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
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """The papers' robustness tables beside ours. DSN: Tables 3-6 and Fig. 2 (fine-tuning, from scratch,
    transfer, overwriting, pruning, serial-number search, Neural Cleanse). A watermark scheme: the attacks
    its paper evaluates, with the owner's verdict after each."""
    from deepserial.experiments.attacks import run, run_seeds

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
        paths = run_seeds(dataset, values, out, progress=not quiet)
        typer.echo("wrote " + ", ".join(str(p) for p in paths))
        return
    over = {"brute_force_tries": tries} if tries is not None else None
    paths = run(scheme, dataset, out, seed=seed, progress=not quiet, overrides=over)
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
    paths = run(dataset, out, seed=seed, progress=not quiet, schemes=names)
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
        for lic in rows:
            typer.echo(
                f"{lic.id}\t{lic.customer}\t{lic.scheme}\t{lic.issued_at}\t"
                f"model {(lic.model_sha256 or '-')[:16]}\tsn {lic.sn_fingerprint[:16]}"
                + ("\tsealed" if lic.sealed else "")
            )
        typer.echo(f"{len(rows)} licence(s) in {ledger}", err=True)


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
def ledger_check(ledger: Annotated[Path, typer.Option(help="Ledger file.")] = Path("ledger.db")) -> None:
    """SQLite's integrity check and the schema version. Exit status 1 when the file is damaged."""
    with _open_ledger(ledger, create=False) as led:
        res = led.integrity_check()
        typer.echo(f"{ledger}: schema {led.version}, {len(led.licences())} licence(s), integrity {res}")
    if res != "ok":
        raise typer.Exit(1)


@app.command()
def trace(
    suspect: Annotated[
        str,
        typer.Argument(
            help="Leaked model: a file (.safetensors, .onnx) or the URL of a "
            "prediction server that passes inputs through unstamped."
        ),
    ],
    ledger: Annotated[Path, typer.Option(help="Ledger file.")] = Path("ledger.db"),
    key: Annotated[Path, typer.Option(help="Owner private key file (re-derives the serial numbers).")] = Path(
        "owner.pem"
    ),
    fpr: Annotated[float, typer.Option(help="Family-wise false-positive rate over all licences.")] = 1e-3,
    budget: Annotated[int | None, typer.Option(help="Most queries the trace may spend.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Labelled images to query with (default: the data set the licences record).")
    ] = None,
    passphrase_env: Annotated[str | None, typer.Option(help="Env variable holding the key's passphrase.")] = None,
    seal_passphrase_env: Annotated[
        str | None, typer.Option(help="Env variable with the ledger passphrase (sealed licences).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    seed: Seed = 0,
) -> None:
    """Name the customer whose licence unlocks a leaked model. Exit status 0: one does; 1: none does."""
    from deepserial.suspect import open_suspect
    from deepserial.tracing import trace as do_trace
    from deepserial.workflow import DataSpec

    ident = OwnerIdentity.load(key, _passphrase(passphrase_env))
    seal = _secret_env(seal_passphrase_env, "ledger passphrase") if seal_passphrase_env else None
    with _open_ledger(ledger, create=False) as led:
        lics = [lic for lic in led.licences(owner_fingerprint=ident.fingerprint()) if lic.scheme == "dsn"]
        if not lics:
            raise ConfigError(f"{ledger} holds no DSN licence issued with {key}; trace with the key that issued them")
        candidates = [(lic, led.serial(lic, ident, seal)) for lic in lics]
        specs = {json.dumps(lic.dataset, sort_keys=True) for lic in lics if lic.dataset}
        if dataset is not None:
            data = DataSpec(dataset)
        elif len(specs) == 1:
            d = json.loads(specs.pop())
            data = DataSpec(
                d["name"], int(d["seed"]), float(d["test_fraction"]), float(d["attacker_fraction"]), d.get("limit")
            )
        else:
            raise ConfigError("the licences record several data sets (or none): choose one with --dataset")
        s = open_suspect(suspect, budget=budget)
        res = do_trace(s, candidates, data.load().test, fpr=fpr, seed=seed)
        led.record_trace(suspect, res.licence.id if res.licence else None, res.p_value, fpr, res.queries, res.to_dict())
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
    app_ = create_app(m, serial, raw_inputs=raw_inputs, max_batch=max_batch, max_body=max_body_bytes)
    sock = bind(host, port)
    typer.echo(
        f"serving {model} on http://{host}:{sock.getsockname()[1]} "
        f"({'stamping the serial number' if serial is not None else 'inputs as sent'}); Ctrl-C stops",
        err=True,
    )
    server(app_, log_level).run(sockets=[sock])


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

    _refuse_overwrite(out / "data_batch_1", out / "test_batch", force=force)
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
            typer.echo(f"deepserial: error: {e}", err=True)
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
