"""Licensing in practice: ``trace``, ``serve``, ``export`` and the ``ledger`` commands.

The ledger (:mod:`deepserial.ledger`) keeps every issued licence; ``trace`` names the customer whose
licence a leaked model carries (:func:`deepserial.tracing.trace_ledger`); ``serve`` puts a model behind
HTTP (:mod:`deepserial.serve`); ``export`` writes a checked ONNX file (:mod:`deepserial.exporting`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from deepserial.artifacts import load_model
from deepserial.cli.common import Seed, passphrase, refuse_overwrite, registered, secret_env
from deepserial.errors import ConfigError
from deepserial.exporting import export_checked
from deepserial.identity import OwnerIdentity, atomic_write
from deepserial.ledger import Ledger, LedgerBusyError, LedgerError
from deepserial.serial import SerialGeometry, SerialNumber
from deepserial.suspect import open_suspect
from deepserial.tracing import trace_ledger

LedgerPath = Annotated[Path, typer.Option(help="Ledger file.")]


def trace(
    suspect: Annotated[
        str,
        typer.Argument(help="Leaked model: a file (.safetensors, .onnx) or the URL of a prediction server."),
    ],
    ledger: LedgerPath = Path("ledger.db"),
    key: Annotated[
        Path, typer.Option(help="Owner private key file (re-derives queries, codewords and serial numbers).")
    ] = Path("owner.pem"),
    fpr: Annotated[float, typer.Option(help="Family-wise false-positive rate over all licences.")] = 1e-3,
    method: Annotated[
        str,
        typer.Option(
            help="fingerprint: send the owner's query set, which carries no serial number (default); serial: "
            "stamp every licence's serial number on labelled images (licences issued without a fingerprint)."
        ),
    ] = "fingerprint",
    reveal_serials: Annotated[
        bool, typer.Option(help="With --method serial against a URL: send the serial numbers anyway.")
    ] = False,
    budget: Annotated[int | None, typer.Option(help="Most queries the trace may spend.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help=f"--method serial: labelled images to query with: {registered('datasets')} or a path to your "
            "data (default: the data set the licences record)."
        ),
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
    ident = OwnerIdentity.load(key, passphrase(passphrase_env))
    seal = secret_env(seal_passphrase_env, "ledger passphrase") if seal_passphrase_env else None
    with Ledger(ledger, create=False) as led:
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
    # Lazy: fastapi and uvicorn take about 0.6 s to import, which every other command would pay.
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


def export(
    model: Annotated[Path, typer.Argument(help="Model file (.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx.")] = "onnx",
    check: Annotated[bool, typer.Option(help="Compare onnxruntime with PyTorch on the model's test split.")] = True,
    force: bool = False,
) -> None:
    """Export a model to ONNX (the network only: a customer still stamps their serial number)."""
    if fmt != "onnx":
        raise ConfigError(f"unknown export format {fmt!r}; only onnx is supported")
    refuse_overwrite(out, force=force)
    parity = export_checked(load_model(model), out, check=check)
    msg = (
        f"; parity on {parity.images} test images: max |logit diff| {parity.max_diff:.2e}, labels identical"
        if parity is not None
        else ""
    )
    typer.echo(f"wrote {out}{msg}")


def ledger_list(
    ledger: LedgerPath = Path("ledger.db"),
    customer: Annotated[str | None, typer.Option(help="Only this customer's licences.")] = None,
) -> None:
    """One line per issued licence: id, customer, scheme, time, model digest, serial-number fingerprint."""
    with Ledger(ledger, create=False) as led:
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


def ledger_show(
    licence_id: Annotated[int, typer.Argument(help="Licence id (see `ledger list`).")],
    ledger: LedgerPath = Path("ledger.db"),
) -> None:
    """Everything the ledger holds about one licence, as JSON (no secret)."""
    with Ledger(ledger, create=False) as led:
        typer.echo(json.dumps(led.get(licence_id).to_dict(), indent=2))


def ledger_export(
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    ledger: LedgerPath = Path("ledger.db"),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here (default: stdout).")] = None,
    force: bool = False,
) -> None:
    """Every licence as CSV or JSON."""
    if out is not None:
        refuse_overwrite(out, force=force)
    with Ledger(ledger, create=False) as led:
        text = led.export(fmt)
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write(out, text.encode())
        typer.echo(f"wrote {out}", err=True)


def ledger_check(
    ledger: LedgerPath = Path("ledger.db"),
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
    try:
        led = Ledger(ledger, create=False)
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
