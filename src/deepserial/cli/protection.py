"""Watermarks and attacks: ``watermark embed``, ``watermark verify``, ``watermark schemes``, ``attack``.

The schemes and attacks are chosen by name from their registries (:data:`deepserial.schemes.base.SCHEMES`,
:data:`deepserial.attacks.base.ATTACKS`), whose names every help text here lists; the work is
:func:`deepserial.workflow.embed_watermark`, :func:`~deepserial.workflow.verify_watermark` and
:func:`~deepserial.workflow.attack_model`, called through the module so that a test that replaces one
there is obeyed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from deepserial import workflow
from deepserial.artifacts import encode_key, encode_model, load_key, load_model
from deepserial.attacks.base import AttackBudget, get_attack
from deepserial.attacks.input_preprocessing import transforms_inputs
from deepserial.cli.common import Device, Limit, Quiet, Seed, SplitSeed, passphrase, refuse_overwrite, registered
from deepserial.errors import ConfigError
from deepserial.files import atomic_write_all
from deepserial.identity import OwnerIdentity
from deepserial.report import json_bytes
from deepserial.schemes.base import SCHEMES, get_scheme
from deepserial.serial import SerialGeometry, SerialNumber
from deepserial.suspect import open_suspect
from deepserial.training import TrainConfig


def watermark_embed(
    scheme: Annotated[str, typer.Option(help=f"Scheme: {registered('schemes')} (see `deepserial watermark schemes`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Watermarked model file (.safetensors).")],
    key_out: Annotated[
        Path | None, typer.Option("--key-out", help="Ownership key file (secret; default OUT with .key).")
    ] = None,
    key: Annotated[Path, typer.Option(help="Owner private key file.")] = Path("owner.pem"),
    dataset: Annotated[str, typer.Option(help=f"{registered('datasets')}, or a path to your data.")] = "mnist5k",
    arch: Annotated[
        str, typer.Option(help=f"Network: {registered('models')} (see `deepserial models`).")
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
    key_out = key_out or out.with_name(out.name.removesuffix(".safetensors") + ".key")
    refuse_overwrite(out, key_out, force=force)
    sch = get_scheme(scheme, workflow.parse_settings(setting))
    ident = OwnerIdentity.load(key, passphrase(passphrase_env))
    base_model = load_model(base) if base is not None else None
    data = (
        workflow.DataSpec.from_manifest(base_model.manifest)
        if base_model is not None
        else workflow.DataSpec(dataset, split_seed, limit=limit)
    )
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, progress=not quiet)
    m = workflow.embed_watermark(
        sch, ident, data, train, arch=arch, subject=subject, owner_id=owner_id, base=base_model
    )
    key_bytes, _ = encode_key(m.key, owner=ident)
    atomic_write_all([(key_out, key_bytes, 0o600), (out, encode_model(m.model, m.manifest, owner=ident)[0], None)])
    typer.echo(
        f"{scheme}: test accuracy {m.manifest['test_acc']:.2f}%, {m.log.wall_s:.1f} s; wrote {out} and "
        f"ownership key {key_out} (keep it secret)"
    )


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
        typer.Option(help=f"Refuse a key of any other scheme ({registered('schemes')}; default: the key's own)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="URL suspect: seconds one request may take, all told.")] = 30.0,
    total_timeout: Annotated[
        float, typer.Option(help="URL suspect: seconds all requests to the server may take together.")
    ] = 600.0,
) -> None:
    """Test whether SUSPECT carries the watermark of KEY. Exit status 0: it does; 1: it does not."""
    if scheme is not None:
        get_scheme(scheme)  # an unknown name is refused before any file is read
    k = load_key(key)
    if scheme is not None and k.scheme != scheme:
        raise ConfigError(
            f"{key} is a {k.scheme} key, not a {scheme} key: give the key written by "
            f"`watermark embed --scheme {scheme}` (or leave out --scheme)"
        )
    s = open_suspect(suspect, budget=budget, timeout=timeout, total_timeout=total_timeout)
    v = workflow.verify_watermark(k, s, fpr=fpr)
    typer.echo(json.dumps(v.to_dict(), indent=2) if as_json else v.summary())
    if not v.decision:
        raise typer.Exit(1)


def watermark_schemes() -> None:
    """List the registered schemes and the paper of each."""
    for name, cls in SCHEMES.items():
        box = "white-box" if cls.white_box else "black-box"
        typer.echo(f"{name:18s} {box}  {cls.citation}")


def attack(
    name: Annotated[str, typer.Argument(help=f"Attack: {registered('attacks')}.")],
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
    refuse_overwrite(*(p for p in (out, report) if p is not None), force=force)
    atk = get_attack(name, workflow.parse_settings(setting))
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
    attacked, rep = workflow.attack_model(target, atk, budget, fraction=fraction, key=k, serial=sn, fpr=fpr)
    outputs = []
    if out is not None:
        man = workflow.attacked_manifest(target, attacked, rep, name=name, source=str(model))
        outputs.append((out, encode_model(attacked, man)[0], None))
    if report is not None:
        outputs.append((report, json_bytes(rep), None))
    atomic_write_all(outputs)
    if as_json:
        typer.echo(json.dumps(rep, indent=2, default=str))
        return
    for line in workflow.attack_summary(rep, name):
        typer.echo(line)
    if out is not None:
        typer.echo(f"wrote {out}")
