"""Protection schemes, one module each; importing this package registers them all by name."""

from deepserial.schemes import (
    adi,  # noqa: F401
    deepsigns,  # noqa: F401
    dsn,  # noqa: F401
    new_label,  # noqa: F401
    null_embedding,  # noqa: F401
    uchida,  # noqa: F401
    zhang,  # noqa: F401
)
