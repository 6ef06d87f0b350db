"""The ``deepserial`` command.

Every user mistake ends as one line on stderr (``deepserial: error: ...``) and exit status 2, and
no command leaves a partial output file behind: every output path is checked for writability before
the work starts, and outputs are written atomically after it, the files of one command all or none
(:mod:`deepserial.files`).

The commands only parse and print; what they do lives in the library. Their functions are grouped
in modules (options and helpers they share in :mod:`~deepserial.cli.common`):

- :mod:`~deepserial.cli.vendor`: keygen, teacher, issue, predict, evaluate, demo;
- :mod:`~deepserial.cli.protection`: attack and ``watermark embed / verify / schemes``;
- :mod:`~deepserial.cli.licensing`: trace, serve, export and ``ledger list / show / export / check``;
- :mod:`~deepserial.cli.tools`: info, models and ``data cifar-digits``;
- :mod:`~deepserial.cli.reproduce`: ``reproduce dsn / attacks / neural-cleanse / dsn-security / tracing / <scheme>``.

This module is the table of contents: it names every command and registers it, in the order
``--help`` lists them, and it is the entry point (``deepserial.cli:main``) that runs one, under
torchrun too.
"""

from __future__ import annotations

import os
import sys

import typer

from deepserial import distributed
from deepserial.cli import licensing, protection, reproduce, tools, vendor
from deepserial.errors import ConfigError, DeepSerialError
from deepserial.experiments.watermarks import reproductions
from deepserial.report import mark_start

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Serial numbers and ownership watermarks for neural networks.",
)
reproduce_app = typer.Typer(no_args_is_help=True, help="Reproduce the papers' tables beside our numbers.")
app.add_typer(reproduce_app, name="reproduce")


@reproduce_app.callback()
def _reproduce_starts() -> None:
    # a report names the commit its run started from, not the one the tree holds an hour later
    mark_start()


watermark_app = typer.Typer(no_args_is_help=True, help="Ownership watermarks: embed while training, verify a suspect.")
app.add_typer(watermark_app, name="watermark")
ledger_app = typer.Typer(no_args_is_help=True, help="The licence ledger: every issued serial number, no secret.")
app.add_typer(ledger_app, name="ledger")
data_app = typer.Typer(no_args_is_help=True, help="Data sets: write the stand-in data the tests and reports use.")
app.add_typer(data_app, name="data")

# ----- the vendor's pipeline -------------------------------------------------------------------------
app.command()(vendor.keygen)
app.command()(vendor.teacher)
app.command()(vendor.issue)
app.command()(vendor.predict)
app.command()(vendor.evaluate)
app.command()(vendor.demo)
# ----- attacks and watermarks ------------------------------------------------------------------------
app.command()(protection.attack)
watermark_app.command("embed")(protection.watermark_embed)
watermark_app.command("verify")(protection.watermark_verify)
watermark_app.command("schemes")(protection.watermark_schemes)
# ----- licensing in practice: tracing, serving, export, the ledger ------------------------------------
app.command()(licensing.trace)
app.command()(licensing.serve)
app.command()(licensing.export)
ledger_app.command("list")(licensing.ledger_list)
ledger_app.command("show")(licensing.ledger_show)
ledger_app.command("export")(licensing.ledger_export)
ledger_app.command("check")(licensing.ledger_check)
# ----- looking around ----------------------------------------------------------------------------------
app.command()(tools.info)
app.command()(tools.models)
data_app.command("cifar-digits")(tools.data_cifar_digits)
# ----- the papers' tables ------------------------------------------------------------------------------
reproduce_app.command("dsn")(reproduce.reproduce_dsn)
reproduce_app.command("attacks")(reproduce.reproduce_attacks)
reproduce_app.command("neural-cleanse")(reproduce.reproduce_neural_cleanse)
reproduce_app.command("dsn-security")(reproduce.reproduce_dsn_security)
reproduce_app.command("tracing")(reproduce.reproduce_tracing)
for _scheme, _help in reproductions().items():  # one per registered watermark scheme
    reproduce_app.command(_scheme, help=_help)(reproduce.reproduce_scheme(_scheme))

# Commands that serve, trace or keep the ledger run in one process; under torchrun they are refused.
_SINGLE_PROCESS = {"serve", "trace", "ledger", "export"}


def _option(argv: list[str], name: str) -> str | None:
    """The value of option ``name`` in ``argv`` (``--name VALUE`` or ``--name=VALUE``), read before the
    command parses it (the device a torchrun rank joins the process group on)."""
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
    process group (:mod:`deepserial.distributed`); only rank 0 prints. A torchrun worker then leaves
    without the interpreter's teardown: Gloo's worker threads can still hold work objects there and
    abort a rank after a successful run ("terminate called without an active exception", SIGABRT; seen
    here under load, pytorch/pytorch#190489), which torchrun reports as the whole job failing.
    """
    code = _run(list(sys.argv[1:] if argv is None else argv))
    if argv is None and distributed.launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(args: list[str]) -> int:
    """The command's exit status (user errors: one line, status 2)."""
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
