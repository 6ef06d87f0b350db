"""The Scheme interface every protection method implements, with its ownership key and verdict.

A scheme makes an ownership key (from the owner's signature where its paper does so), embeds it while
a model trains or is fine-tuned (a per-batch loss plugged into :func:`deepserial.training.fit`; no
scheme writes its own loop), and verifies a suspect with a hypothesis test whose null is "this
suspect does not carry the key" (:mod:`deepserial.stats`). Ownership keys are saved beside, never
inside, the shipped model (:func:`deepserial.artifacts.save_key`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ValidationError

from deepserial.data import TensorData
from deepserial.errors import ConfigError, IntegrityError
from deepserial.nets import SplitNet
from deepserial.ownership import OwnershipKey, Provenance, Verdict
from deepserial.registry import Registry
from deepserial.suspect import Suspect
from deepserial.training import TrainConfig, TrainLog

# The key, verdict and provenance types live in :mod:`deepserial.ownership`, below the artifacts that
# store keys and the suspects that verdicts are about; they are re-exported here, where schemes use them.
__all__ = [
    "SCHEMES",
    "OwnershipKey",
    "Provenance",
    "Scheme",
    "Verdict",
    "check_derived",
    "get_scheme",
    "key_signature",
    "register_scheme",
]


class Scheme(ABC):
    """One protection method: keys, embedding, verification. Subclasses cite their paper."""

    name: ClassVar[str]
    citation: ClassVar[str]
    white_box: ClassVar[bool] = False
    #: embedded by fine-tuning an already trained model (DeepSigns' output layer), not while training
    fine_tunes: ClassVar[bool] = False
    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel | dict[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            try:
                config = self.Config(**config)
            except ValidationError as e:
                raise ConfigError(f"invalid {self.name} settings: {_one_line(e)}") from None
        elif not isinstance(config, self.Config):
            raise ConfigError(
                f"{self.name} settings must be a {self.Config.__name__} or a dict, got {type(config).__name__}"
            )
        self.config = config

    def num_outputs(self, num_classes: int) -> int:
        """Outputs the marked network needs for a task of ``num_classes`` (new label: C + 1)."""
        return num_classes

    @abstractmethod
    def make_key(
        self, signature: bytes, data: TensorData, num_classes: int, model: SplitNet | None = None
    ) -> OwnershipKey:
        """Derive the ownership key from ``signature``; ``data`` is the owner's training data (schemes
        that pick key samples from it), ``model`` a trained model for schemes that need one."""

    @abstractmethod
    def embed(self, model: SplitNet, data: TensorData, key: OwnershipKey, train: TrainConfig) -> TrainLog:
        """Train (or fine-tune) ``model`` in place so it carries ``key``; may finalise ``key``."""

    @abstractmethod
    def verify(self, suspect: Suspect, key: OwnershipKey, fpr: float = 1e-3) -> Verdict:
        """Test whether ``suspect`` carries ``key`` at false-positive rate ``fpr``."""

    def make_signed_key(
        self, provenance: Provenance, data: TensorData, num_classes: int, model: SplitNet | None = None
    ) -> OwnershipKey:
        """:meth:`make_key` from a checked signature, with the provenance recorded in the key."""
        key = self.make_key(provenance.check(), data, num_classes, model)
        key.meta.update(provenance.to_meta())
        key.meta.setdefault("config", self.config.model_dump())  # verify rebuilds the scheme from it
        return key

    def null_key(
        self, provenance: Provenance, data: TensorData, num_classes: int, model: SplitNet | None = None
    ) -> OwnershipKey:
        """A complete key that was never embedded anywhere: what a false-positive study verifies against
        models that do not carry it. Schemes whose keys are finalised during embedding override this."""
        return self.make_signed_key(provenance, data, num_classes, model)

    def check_key(self, key: OwnershipKey) -> None:
        if key.scheme != self.name:
            raise ConfigError(f"ownership key is for scheme {key.scheme!r}, not {self.name!r}")


def check_derived(key: OwnershipKey, name: str, expected: Any) -> None:
    """Refuse a key whose tensor ``name`` is not what its signature derives (IntegrityError).

    Verifying re-derives every secret the signature determines instead of trusting the stored copy:
    an owner must not be able to pick bits or projections after the fact to fit someone else's model.
    """
    stored = key.tensor(name).detach().cpu().numpy()
    want = np.asarray(expected)
    if stored.shape != want.shape or not np.array_equal(stored.astype(want.dtype), want):
        raise IntegrityError(
            f"ownership key for {key.scheme!r}: {name} is not what the key's signature derives; the key was altered"
        )


def key_signature(key: OwnershipKey) -> bytes:
    """The signature bytes a key's secrets derive from (ConfigError when the key has none).

    When the key records its provenance (verifier string and owner public key), the owner's signature
    over the verifier is checked first (IdentityError when it fails): every scheme's ``verify`` then
    refuses a key whose signature was swapped, not only the CLI's ``verify_watermark``.
    """
    if "verifier" in key.meta or "owner_public_key" in key.meta:
        return Provenance.from_meta(key.meta).check()
    try:
        return bytes.fromhex(key.meta["signature"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"ownership key for {key.scheme!r} holds no readable signature") from None


SCHEMES: Registry[type[Scheme]] = Registry("scheme", populate="deepserial.schemes")


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    """Class decorator: make a scheme available by name to the CLI and the reproductions."""
    return SCHEMES.register(cls.name, cls, doc=cls.citation)


def get_scheme(name: str, config: dict[str, Any] | None = None) -> Scheme:
    """A scheme instance by name, with validated settings."""
    return SCHEMES.get(name)(config)


def _one_line(e: ValidationError) -> str:
    errs = e.errors()
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in errs[:3])
