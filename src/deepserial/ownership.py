"""What ownership is made of: the key a scheme verifies with, the verdict it returns, who made the key.

These types sit below everything that handles them (:mod:`deepserial.artifacts` writes and reads keys,
:mod:`deepserial.schemes.base` makes and verifies them, :mod:`deepserial.suspect` is what a verdict is
about) and import none of those modules, so none of them needs another to define its types.
:mod:`deepserial.schemes.base` re-exports them under their historical names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from cryptography.hazmat.primitives import serialization

from deepserial.errors import ConfigError, IdentityError
from deepserial.identity import OwnerIdentity, VerifierString

__all__ = ["OwnershipKey", "Provenance", "Verdict"]


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
