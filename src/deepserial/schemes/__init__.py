"""Protection schemes, one module each; importing this package registers them all by name."""

from deepserial.schemes import dsn, null_embedding  # noqa: F401
