"""One registry for everything deepserial looks up by name: networks, data sets, schemes, attacks.

The CLI, the reproductions and user code all say ``"fine-tuning"``, ``"null-embedding"`` or
``"resnet18"`` and need the same three things from each kind of entry: registration by decorator,
a look-up whose failure is one line naming what exists, and the list of names with a one-line
description each (``--help`` texts, ``deepserial models``, :func:`deepserial.list_attacks`). Before this
module each kind kept its own dict and its own copy of that code; now each is a :class:`Registry`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from typing import Generic, TypeVar, overload

from deepserial.errors import ConfigError, DeepSerialError

T = TypeVar("T")

__all__ = ["Registry"]


def _first_line(obj: object) -> str:
    """The first line of the docstring of a class or function (of the wrapped one for a ``partial``), or
    ``""``: an instance would only show its type's docstring."""
    target = obj.func if isinstance(obj, functools.partial) else obj
    if not (inspect.isclass(target) or inspect.isroutine(target)):
        return ""
    doc = inspect.getdoc(target) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry(Generic[T]):
    """Named entries of one kind (builders, classes, loaders), each with a one-line description.

    It reads like a read-only mapping (``name in r``, ``r[name]``, ``r.items()``, iteration in sorted
    order) so code written for the dicts it replaced keeps working, with two differences on purpose:
    an unknown name raises ``error`` (a one-line :class:`~deepserial.errors.DeepSerialError` that
    lists every registered name) from both ``r[name]`` and :meth:`get`, and a name cannot be taken
    twice by accident (``replace=True`` says it is meant).

    Arguments:
        kind: what one entry is, in words (``"attack"``, ``"network"``); messages and help texts use it.
        populate: a module to import before the first read, whose import registers the built-in
            entries (``"deepserial.attacks"``): the registry is complete however it was reached.
        error: the exception raised for an unknown or doubly registered name.
        normalise: maps a name to its key on registration and look-up (data set names ignore case
            and ``_`` versus ``-``); the identity by default.

    Example::

        >>> NETS = Registry("network")
        >>> NETS.register("tiny", lambda shape, classes: ..., doc="two layers")
    """

    def __init__(
        self,
        kind: str,
        *,
        populate: str | None = None,
        error: type[DeepSerialError] = ConfigError,
        normalise: Callable[[str], str] | None = None,
    ) -> None:
        self.kind = kind
        self._populate = populate
        self._error = error
        self._normalise = normalise or (lambda name: name)
        self._entries: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    # ----- registration ------------------------------------------------------------------------
    @overload
    def register(
        self, name: str, obj: None = None, *, doc: str | None = None, replace: bool = False
    ) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, doc: str | None = None, replace: bool = False) -> T: ...

    def register(
        self, name: str, obj: T | None = None, *, doc: str | None = None, replace: bool = False
    ) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; without ``obj``, a decorator that registers what it decorates.

        ``doc`` is the one-line description (default: the first line of ``obj``'s docstring). Taking
        a registered name raises ``error`` unless ``replace`` is True, or the new entry is the same
        object or the same definition re-imported (same module and qualified name).
        """
        if obj is None:

            def deco(o: T) -> T:
                self.register(name, o, doc=doc, replace=replace)
                return o

            return deco
        if not isinstance(name, str) or not name.strip():
            raise self._error(f"a {self.kind} needs a non-empty name, got {name!r}")
        self._load()  # the built-in entries first: a clash is then reported here, not when they import
        key = self._normalise(name)
        old = self._entries.get(key)
        if old is not None and not replace and old is not obj and not _same_definition(old, obj):
            raise self._error(
                f"{self.kind} {key!r} is already registered ({self._docs[key] or repr(old)}); "
                "choose another name or pass replace=True"
            )
        if doc is None and old is obj:
            return obj  # the same entry again, described as before
        self._entries[key] = obj
        self._docs[key] = " ".join((doc if doc is not None else _first_line(obj)).split())
        return obj

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what it held (tests and plug-ins that clean up after themselves)."""
        self._load()
        key = self._normalise(name)
        if key not in self._entries:
            raise self._unknown(name)
        self._docs.pop(key)
        return self._entries.pop(key)

    # ----- look-up -----------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The entry registered as ``name``; ``error`` with the list of registered names otherwise.

        Unlike ``dict.get`` there is no default: an unknown name is always a user's mistake to report.
        """
        self._load()
        key = self._normalise(name) if isinstance(name, str) else name
        try:
            return self._entries[key]
        except (KeyError, TypeError):
            raise self._unknown(name) from None

    __getitem__ = get

    def doc(self, name: str) -> str:
        """The one-line description of ``name``."""
        self.get(name)
        return self._docs[self._normalise(name)]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._entries)

    def docs(self) -> dict[str, str]:
        """Every registered name, sorted, mapped to its one-line description."""
        return {name: self._docs[name] for name in self.names()}

    def choices(self) -> str:
        """The registered names as one comma-separated line, for help texts and error messages."""
        return ", ".join(self.names())

    # ----- the read-only mapping protocol ------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and self._normalise(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def keys(self) -> KeysView[str]:
        return {name: None for name in self.names()}.keys()

    def values(self) -> ValuesView[T]:
        return {name: self._entries[name] for name in self.names()}.values()

    def items(self) -> ItemsView[str, T]:
        return {name: self._entries[name] for name in self.names()}.items()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {self.choices()})"

    # ----- internals ---------------------------------------------------------------------------
    def _load(self) -> None:
        """Import the populating module once (the flag is set first: that module's own imports read
        the registry while it is half built, and must not import it again)."""
        if self._populate is not None:
            module, self._populate = self._populate, None
            importlib.import_module(module)

    def _unknown(self, name: object) -> DeepSerialError:
        listed = self.choices() or "none is registered"
        return self._error(f"unknown {self.kind} {name!r}; choose one of {listed}")


def _same_definition(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` are one definition imported twice (a module reloaded), not a clash.

    Functions made inside a function (closures, lambdas) share a qualified name across calls, so
    they never count as the same definition."""
    ma, mb = getattr(a, "__module__", None), getattr(b, "__module__", None)
    qa, qb = getattr(a, "__qualname__", None), getattr(b, "__qualname__", None)
    if not isinstance(qa, str) or "<" in qa:
        return False
    return ma is not None and (ma, qa) == (mb, qb)
