"""The package version, in a module of its own: :mod:`deepserial` re-exports it, and modules that record
it (:mod:`deepserial.report`) import it from here rather than from the package that lazily imports them."""

__version__ = "0.1.0"
