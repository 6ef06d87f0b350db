"""Protection schemes, one module each; importing this package registers them all by name."""

from deepserial.schemes import dsn  # noqa: F401
