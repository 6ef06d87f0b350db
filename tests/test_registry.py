"""Tests of the one registry class (deepserial.registry) and of the four registries built on it:
networks, data sets, schemes and attacks, their public listings and the CLI help generated from them."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import typer

import deepserial as ds
from deepserial.errors import ConfigError, DatasetError
from deepserial.registry import Registry


def test_register_get_and_list() -> None:
    r: Registry[int] = Registry("widget")
    r.register("b", 2, doc="the second\n  widget")
    assert r.register("a", 1) == 1

    @r.register("c")
    def c() -> None:
        """Third widget.

        More text that is not the one-line description."""

    assert r.get("b") == 2 and r["a"] == 1 and r.get("c") is c
    assert r.names() == ["a", "b", "c"] and list(r) == ["a", "b", "c"] and len(r) == 3
    assert r.docs() == {"a": "", "b": "the second widget", "c": "Third widget."}
    assert r.doc("c") == "Third widget." and r.choices() == "a, b, c"
    assert "a" in r and "z" not in r and 3 not in r
    assert dict(r.items()) == {"a": 1, "b": 2, "c": c} and list(r.keys()) == ["a", "b", "c"]


def test_unknown_name_is_one_line_listing_what_exists() -> None:
    r: Registry[int] = Registry("widget")
    r.register("alpha", 1)
    r.register("beta", 2)
    with pytest.raises(ConfigError, match=r"unknown widget 'gamma'; choose one of alpha, beta$") as exc:
        r.get("gamma")
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="unknown widget"):
        r["gamma"]
    with pytest.raises(ConfigError, match="none is registered"):
        Registry("widget").get("x")
    with pytest.raises(DatasetError, match="unknown data set"):
        Registry("data set", error=DatasetError).get("x")


def test_a_name_is_not_taken_twice_by_accident() -> None:
    r: Registry[object] = Registry("widget")
    first, second = object(), object()
    r.register("w", first, doc="first")
    r.register("w", first)  # the same object again: a no-op
    with pytest.raises(ConfigError, match="'w' is already registered \\(first\\); .*replace=True"):
        r.register("w", second)
    r.register("w", second, replace=True)
    assert r.get("w") is second
    assert r.unregister("w") is second and "w" not in r
    with pytest.raises(ConfigError, match="unknown widget"):
        r.unregister("w")
    with pytest.raises(ConfigError, match="non-empty name"):
        r.register(" ", first)


def test_closures_of_one_factory_are_different_definitions() -> None:
    r: Registry[object] = Registry("widget")

    def make(v: int):  # noqa: ANN202
        return lambda: v

    r.register("f", make(1))
    with pytest.raises(ConfigError, match="already registered"):
        r.register("f", make(2))


def test_normalise() -> None:
    r: Registry[int] = Registry("data set", normalise=lambda n: n.lower().replace("_", "-"))
    r.register("Fashion_MNIST", 1)
    assert r.names() == ["fashion-mnist"] and r.get("FASHION-mnist") == 1 and "fashion_mnist" in r


def test_populate_imports_the_registering_module_before_the_first_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = types.ModuleType("ds_registry_holder")
    holder.R = Registry("plug-in", populate="ds_registry_plugin")  # type: ignore[attr-defined]
    holder.imports = []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ds_registry_holder", holder)
    (tmp_path / "ds_registry_plugin.py").write_text(
        "import ds_registry_holder as h\nh.imports.append(1)\nh.R.register('x', 1, doc='from the plug-in')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ds_registry_plugin", raising=False)
    assert holder.R.names() == ["x"] and holder.R.get("x") == 1 and holder.imports == [1]
    assert len(holder.R) == 1 and holder.imports == [1]  # imported once


def test_a_clash_with_a_built_in_is_reported_where_the_user_registers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = types.ModuleType("ds_registry_holder2")
    holder.R = Registry("plug-in", populate="ds_registry_plugin2")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ds_registry_holder2", holder)
    (tmp_path / "ds_registry_plugin2.py").write_text("import ds_registry_holder2 as h\nh.R.register('x', 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ds_registry_plugin2", raising=False)
    with pytest.raises(ConfigError, match="'x' is already registered"):
        holder.R.register("x", 2)  # before any read: the built-in entries are loaded first
    assert holder.R.get("x") == 1


def test_package_registries_and_listings() -> None:
    attacks = ds.list_attacks()
    assert {"fine-tuning", "from-scratch", "pruning", "transfer-learning", "extraction", "neural-cleanse"} <= set(
        attacks
    )
    assert {"serial-search", "dsn-overwrite", "piracy", "watermark-overwrite"} <= set(attacks)
    assert attacks == sorted(attacks) == ds.ATTACKS.names()
    assert {"null-embedding", "new-label", "deepsigns-hidden", "uchida", "adi", "zhang-noise"} <= set(ds.list_schemes())
    assert {"dsn_mnist", "resnet18", "vgg16"} <= set(ds.list_models())
    assert {"mnist5k", "fashion-mnist"} <= set(ds.list_datasets())
    assert all(doc for doc in ds.ATTACKS.docs().values())  # each attack described by its paper
    assert ds.SCHEMES.doc("uchida").startswith("Uchida")
    assert isinstance(ds.get_attack("pruning", {"rate": 0.5}), ds.Attack)
    assert isinstance(ds.get_scheme("uchida"), ds.Scheme)
    with pytest.raises(ConfigError, match="unknown attack 'nope'; choose one of .*fine-tuning"):
        ds.get_attack("nope")
    with pytest.raises(ConfigError, match="unknown scheme 'nope'; choose one of .*uchida"):
        ds.get_scheme("nope")
    with pytest.raises(ConfigError, match="unknown network 'nope'; choose one of .*dsn_mnist"):
        ds.create_model("nope", (1, 28, 28), 10)


def test_cli_help_lists_what_the_registries_hold() -> None:
    from deepserial.cli import app

    def help_of(*path: str) -> dict[str, str]:
        cmd = typer.main.get_command(app)
        for name in path:
            cmd = cmd.commands[name]  # type: ignore[attr-defined]
        return {p.name: p.help or "" for p in cmd.params}  # type: ignore[misc]

    attack = help_of("attack")
    assert all(name in attack["name"] for name in ds.list_attacks())
    for path in (("watermark", "embed"), ("watermark", "verify")):
        assert all(name in help_of(*path)["scheme"] for name in ds.list_schemes())
    for path in (("teacher",), ("watermark", "embed"), ("reproduce", "dsn")):
        opts = help_of(*path)
        assert all(name in opts["arch"] for name in ds.list_models())
        assert all(name in opts["dataset"] for name in ds.list_datasets())
