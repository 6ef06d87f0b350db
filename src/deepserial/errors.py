"""User-facing errors.

Every mistake a user can make (a malformed serial number, a missing dataset, a tampered file) raises a
subclass of :class:`DeepSerialError` whose message is one line saying what is wrong and how to fix it.
The CLI prints that line and exits non-zero; library users catch the class.
"""

from __future__ import annotations


class DeepSerialError(Exception):
    """Base class of every error meant to be shown to a user as one line."""

    exit_code = 2


class SerialNumberError(DeepSerialError):
    """A product key or serial number is malformed, or does not fit the model."""


class DatasetError(DeepSerialError):
    """A dataset is missing, unreadable or of the wrong format."""


class IntegrityError(DeepSerialError):
    """A model, key or manifest file is corrupt, truncated or tampered with."""


class IdentityError(DeepSerialError):
    """A key file cannot be read (wrong passphrase, wrong format) or a signature does not verify."""


class GeometryError(DeepSerialError):
    """A serial-number geometry does not fit the network's input or its receptive field."""


class InputError(DeepSerialError):
    """An input batch has the wrong shape, dtype or value range for a model."""


class ConfigError(DeepSerialError):
    """A configuration value is invalid."""
