"""The Scheme interface every protection method implements, with its ownership key and verdict.

A scheme makes an ownership key (from the owner's signature where its paper does so), embeds it while
a model trains or is fine-tuned (a per-batch loss plugged into :func:`deepserial.training.fit`; no
scheme writes its own loop), and verifies a suspect with a hypothesis test whose null is "this
suspect does not carry the key" (:mod:`deepserial.stats`). Ownership keys are saved beside, never
inside, the shipped model (:func:`deepserial.artifacts.save_key`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ValidationError

from deepserial.data import TensorData
from deepserial.errors import ConfigError, IdentityError, IntegrityError
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.nets import SplitNet
from deepserial.registry import Registry
from deepserial.suspect import Suspect
from deepserial.training import TrainConfig, TrainLog


@dataclass
class OwnershipKey:
    """Everything a scheme needs to verify later: JSON-able ``meta`` and named tensors.

    ``meta`` always holds ``scheme``; schemes derived from a signature also keep the verifier string,
    the signature (hex) and the owner's public key, so a third party can check them (null embedding's
    Algorithm 3 starts with that check).
    """

    scheme: str
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensor(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ConfigError(
                f"ownership key for {self.scheme!r} lacks tensor {name!r}; was it made by another version or scheme?"
            ) from None


@dataclass
class Verdict:
    """The outcome of a verification: a statistic, its threshold at the requested false-positive
    rate, the p-value under "the suspect does not carry the key", the decision, and the queries spent."""

    scheme: str
    statistic: float
    statistic_name: str
    threshold: float
    p_value: float
    fpr: float
    decision: bool
    queries: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        word = "CARRIES the key" if self.decision else "does NOT carry the key"
        return (
            f"{self.scheme}: suspect {word} ({self.statistic_name} = {self.statistic:.4g}, threshold "
            f"{self.threshold:.4g}, p-value {self.p_value:.3g} at false-positive rate {self.fpr:g}, "
            f"{self.queries} queries)"
        )


@dataclass(frozen=True)
class Provenance:
    """Who made a key: the verifier string, the owner's signature over it, the owner's public key.

    Kept in every key's ``meta`` (``verifier``, ``signature``, ``owner_public_key``) so a third party
    can check that the key's secrets really derive from the owner's signature (null embedding's
    Algorithm 3 begins with that check; the CLI does it for every scheme).
    """

    verifier: VerifierString
    signature: bytes
    owner_public_key: str

    @classmethod
    def sign(cls, identity: OwnerIdentity, owner_id: str, subject: str, scheme: str) -> Provenance:
        verifier = VerifierString.now(owner_id, subject, scheme)
        return cls(verifier, identity.sign(verifier), identity.public_pem().decode())

    def to_meta(self) -> dict[str, Any]:
        return {
            "verifier": self.verifier.to_dict(),
            "signature": self.signature.hex(),
            "owner_public_key": self.owner_public_key,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Provenance:
        try:
            return cls(
                VerifierString.from_dict(meta["verifier"]),
                bytes.fromhex(meta["signature"]),
                str(meta["owner_public_key"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise IdentityError(
                "ownership key lacks a readable verifier string, signature or owner public key; "
                "it was not made with an owner identity"
            ) from None

    def check(self) -> bytes:
        """The signature, after checking it is the owner's over the verifier string (IdentityError if not)."""
        try:
            pub = serialization.load_pem_public_key(self.owner_public_key.encode())
            owner = OwnerIdentity(None, pub)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            raise IdentityError("the ownership key's owner public key is not a valid PEM public key") from None
        owner.verify(self.verifier, self.signature)
        return self.signature


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
    import numpy as np

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
