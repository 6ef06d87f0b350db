"""Protection schemes, one module each; importing this package registers them all by name."""

from deepserial.schemes import deepsigns, dsn, null_embedding, uchida  # noqa: F401
