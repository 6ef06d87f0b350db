"""Every command's help lists what it can be given by name: the attacks, schemes, networks and data sets
of the registries (:mod:`deepserial.registry`), or the configurations of the reproduction it runs.

The lists are generated when the commands are built, so a name registered before then (a plug-in's
network or attack) shows in ``--help`` without editing the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import click
import pytest
import typer

import deepserial as ds
from deepserial.cli import app, main
from deepserial.experiments import attack_configs, dsn_security, watermarks


def _commands() -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command of ``deepserial`` with its path (``("watermark", "embed")``), groups included."""

    def walk(cmd: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, (*path, name))

    yield from walk(typer.main.get_command(app), ())


def _expected(path: tuple[str, ...], param: str) -> list[str] | None:
    """The names the help of option (or argument) ``param`` of command ``path`` must list, or None
    when the option takes no name from a list."""
    reproduction = path[1] if path[:1] == ("reproduce",) and len(path) > 1 else None
    if param == "arch":
        return ds.list_models()
    if param == "dataset":
        if reproduction in ("attacks", "neural-cleanse"):
            return list(attack_configs.CONFIGS)
        if reproduction == "dsn-security":
            return list(dsn_security.CONFIGS)
        if reproduction not in (None, "dsn"):  # reproduce <scheme>
            return list(watermarks.CONFIGS)
        return ds.list_datasets()
    if param == "scheme":
        return [*attack_configs.PLANS] if reproduction == "attacks" else ds.list_schemes()
    if param == "schemes":
        return [*attack_configs.PLANS]
    if param == "name" and path == ("attack",):
        return ds.list_attacks()
    return None


def test_every_option_that_takes_a_name_lists_the_names() -> None:
    checked = set()
    for path, cmd in _commands():
        for p in cmd.params:
            want = _expected(path, p.name or "")
            if want is None:
                continue
            text = getattr(p, "help", None) or ""
            missing = [name for name in want if name not in text]
            assert want and not missing, f"`deepserial {' '.join(path)} --help`: {p.name} lacks {missing}: {text!r}"
            checked.add((" ".join(path), p.name))
    # the commands whose options name registry entries, each seen (a renamed option is not skipped)
    assert {
        ("attack", "name"),
        ("teacher", "dataset"),
        ("teacher", "arch"),
        ("watermark embed", "scheme"),
        ("watermark embed", "dataset"),
        ("watermark embed", "arch"),
        ("watermark verify", "scheme"),
        ("trace", "dataset"),
        ("reproduce dsn", "dataset"),
        ("reproduce dsn", "arch"),
        ("reproduce attacks", "scheme"),
        ("reproduce attacks", "dataset"),
        ("reproduce neural-cleanse", "schemes"),
        ("reproduce dsn-security", "dataset"),
        ("reproduce uchida", "dataset"),
    } <= checked


def test_a_reproduction_exists_for_every_registered_watermark_scheme() -> None:
    reproduce = dict(_commands())[("reproduce",)]
    assert set(ds.list_schemes()) - {"dsn"} <= set(reproduce.commands)  # type: ignore[attr-defined]


def test_names_registered_before_the_command_is_built_show_in_its_help() -> None:
    """A plug-in's network and attack appear in ``--help`` with no change to the CLI."""
    ds.MODELS.register("zz_help_net", lambda shape, classes: None, doc="a network registered by a test")
    ds.ATTACKS.register("zz-help-attack", object, doc="an attack registered by a test")
    try:
        helps = {path: {p.name: getattr(p, "help", "") or "" for p in cmd.params} for path, cmd in _commands()}
        assert "zz_help_net" in helps[("teacher",)]["arch"]
        assert "zz_help_net" in helps[("watermark", "embed")]["arch"]
        assert "zz-help-attack" in helps[("attack",)]["name"]
    finally:
        ds.MODELS.unregister("zz_help_net")
        ds.ATTACKS.unregister("zz-help-attack")


@pytest.mark.parametrize(("argv", "names"), [(["attack"], ds.list_attacks), (["watermark", "embed"], ds.list_schemes)])
def test_the_printed_help_lists_them(
    capsys: pytest.CaptureFixture[str], argv: list[str], names: Callable[[], list[str]]
) -> None:
    assert main([*argv, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in names():
        assert name in text
