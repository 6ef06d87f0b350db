"""Owner identity: key pairs, signatures over verifier strings, and secrets derived from signatures.

The piracy-resistant watermark paper (Li et al., Algorithm 1) and DSN (Tang et al., §2.2 "Serial
Number Space") both root every secret in a signature of the owner over a public *verifier string*:
anyone holding the public key can check that a serial number or watermark was produced by the owner,
and nobody without the private key can forge one. This module provides exactly that, with the
``cryptography`` package: Ed25519 (default) or RSA-PSS 3072 keys, PEM files with an optional
passphrase, and :func:`derive`, a SHA-256 derivation with one domain tag per purpose so that two
secrets taken from one signature never coincide.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from cryptography.exceptions import InternalError, InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from deepserial import distributed
from deepserial.errors import IdentityError
from deepserial.files import atomic_write as atomic_write  # re-exported: the writer many modules import from here
from deepserial.files import atomic_write_all

Algorithm = Literal["ed25519", "rsa"]
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey

_RSA_BITS = 3072
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
# What cryptography's PEM readers raise on a damaged file: bad base64 or DER, a flipped byte in the
# algorithm identifier (UnsupportedAlgorithm), or key material OpenSSL itself rejects (InternalError).
CORRUPT_KEY = (ValueError, UnsupportedAlgorithm, InternalError)


@dataclass(frozen=True)
class VerifierString:
    """The public text an owner signs: who, for whom, when, and for which scheme.

    Its canonical byte form (sorted-key compact JSON) is what is signed, so the same fields always
    give the same bytes on every machine.
    """

    owner: str
    customer: str
    timestamp: str
    scheme: str

    @classmethod
    def now(cls, owner: str, customer: str, scheme: str) -> VerifierString:
        """A verifier string stamped with the current UTC time (rank 0's, under torchrun).

        ``SOURCE_DATE_EPOCH`` (the reproducible-builds convention: seconds since 1970), when set,
        replaces the clock, so that a re-run with the same seed issues the same serial number.
        """
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch:
            try:
                when = datetime.fromtimestamp(int(epoch), timezone.utc)
            except (ValueError, OverflowError, OSError):
                raise IdentityError(
                    f"SOURCE_DATE_EPOCH={epoch!r} is not a whole number of seconds since 1970; unset it or fix it"
                ) from None
        else:
            when = datetime.now(timezone.utc)
        ts = distributed.broadcast(when.replace(microsecond=0).isoformat())
        return cls(owner=owner, customer=customer, timestamp=ts, scheme=scheme)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> VerifierString:
        try:
            return cls(**{k: str(d[k]) for k in ("owner", "customer", "timestamp", "scheme")})
        except KeyError as e:
            raise IdentityError(f"verifier string lacks field {e.args[0]!r}; re-issue the licence") from None


class OwnerIdentity:
    """An owner's key pair (or only the public half, for third parties who verify)."""

    def __init__(self, private: PrivateKey | None, public: PublicKey) -> None:
        self._private = private
        self.public = public

    @property
    def algorithm(self) -> Algorithm:
        return "ed25519" if isinstance(self.public, ed25519.Ed25519PublicKey) else "rsa"

    @classmethod
    def generate(cls, algorithm: Algorithm = "ed25519") -> OwnerIdentity:
        """A fresh key pair: Ed25519 by default, RSA-PSS 3072 as the papers use RSA."""
        if algorithm == "ed25519":
            priv: PrivateKey = ed25519.Ed25519PrivateKey.generate()
        elif algorithm == "rsa":
            priv = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
        else:
            raise IdentityError(f"unknown key algorithm {algorithm!r}; use 'ed25519' or 'rsa'")
        if distributed.active():  # every rank must hold the same owner: rank 0's key pair
            pem = distributed.broadcast(
                priv.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            priv = serialization.load_pem_private_key(pem, None)  # type: ignore[assignment]
        return cls(priv, priv.public_key())

    @classmethod
    def for_experiment(cls, seed: int, label: str) -> OwnerIdentity:
        """An Ed25519 key pair fixed by ``(seed, label)``, for reproductions only.

        A reproduction draws hundreds of owners (the keyed models', random keys', pirates'); deriving
        them from the run's seed makes every key of a report re-creatable, so a false positive it
        records can be inspected afterwards. Never use it for a real owner: whoever knows the seed
        and label holds the private key. Every torchrun rank derives the same pair.
        """
        material = derive(f"{int(seed)}\x1f{label}".encode(), "experiment-identity")
        priv = ed25519.Ed25519PrivateKey.from_private_bytes(material)
        return cls(priv, priv.public_key())

    def sign(self, message: VerifierString | bytes) -> bytes:
        """Sign a verifier string. Ed25519 is deterministic; RSA-PSS is randomised (so under torchrun
        every rank takes rank 0's signature)."""
        if self._private is None:
            raise IdentityError("this identity holds only a public key; load the private key file to sign")
        data = message.to_bytes() if isinstance(message, VerifierString) else message
        if isinstance(self._private, ed25519.Ed25519PrivateKey):
            return self._private.sign(data)
        return distributed.broadcast(self._private.sign(data, _PSS, hashes.SHA256()))

    def verify(self, message: VerifierString | bytes, signature: bytes) -> None:
        """Raise :class:`IdentityError` unless ``signature`` is the owner's over ``message``."""
        data = message.to_bytes() if isinstance(message, VerifierString) else message
        try:
            if isinstance(self.public, ed25519.Ed25519PublicKey):
                self.public.verify(signature, data)
            else:
                self.public.verify(signature, data, _PSS, hashes.SHA256())
        except InvalidSignature:
            raise IdentityError(
                "signature does not verify against the owner's public key: the licence was altered "
                "or signed by another key"
            ) from None

    def fingerprint(self) -> str:
        """SHA-256 of the public key (DER), hex: a short, stable owner id."""
        der = self.public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()[:16]

    def secret(self, purpose: str, nbytes: int = 32) -> bytes:
        """Secret bytes for one ``purpose``, derived from the private key itself: the same on every call
        and machine for Ed25519 and RSA alike (unlike an RSA signature), and out of reach of anyone
        without the private key. The fingerprint's queries and codewords come from here."""
        if self._private is None:
            raise IdentityError("this needs the owner's private key; the identity holds only the public key")
        der = self._private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return derive(der, "owner-secret/" + purpose, nbytes)

    # ----- files -----------------------------------------------------------------------------------
    def private_pem(self, passphrase: str | None = None) -> bytes:
        """The private key as PEM (PKCS8), encrypted with ``passphrase`` when one is given.

        An empty passphrase is refused rather than taken as "no passphrase": a key its owner meant to
        encrypt must never be written in the clear because a variable turned out empty.
        """
        if self._private is None:
            raise IdentityError("cannot save a private key: this identity holds only the public key")
        if passphrase is not None and not passphrase:
            raise IdentityError("the passphrase is empty; give a non-empty passphrase or none")
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
        )
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    def save(self, path: str | Path, passphrase: str | None = None) -> tuple[Path, Path]:
        """Write the private key (PEM, PKCS8, encrypted when a passphrase is given, mode 0600) and
        the public key beside it as ``<stem>.pub.pem``. Both files appear whole, or neither does."""
        path = Path(path)
        pub_path = public_key_path(path)
        atomic_write_all([(path, self.private_pem(passphrase), 0o600), (pub_path, self.public_pem(), None)])
        return path, pub_path

    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def from_public_pem(cls, pem: bytes | str, where: str = "public key") -> OwnerIdentity:
        """A verify-only identity from a PEM public key (a key file, a licence record, an ownership key);
        :class:`IdentityError` naming ``where`` if the PEM is damaged or not an Ed25519/RSA key."""
        if isinstance(pem, str):  # from JSON: anything outside ASCII cannot be PEM and fails to parse below
            pem = pem.encode("ascii", "replace")
        try:
            pub = serialization.load_pem_public_key(pem)
        except CORRUPT_KEY:
            raise IdentityError(f"{where} is not a valid PEM public key (corrupt or unsupported key data)") from None
        if not isinstance(pub, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
            raise IdentityError(f"{where}: only Ed25519 and RSA keys are supported")
        return cls(None, pub)

    @classmethod
    def load(cls, path: str | Path, passphrase: str | None = None) -> OwnerIdentity:
        """Load a private key file, or a public key file (then only :meth:`verify` works)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise IdentityError(f"cannot read key file {path}: {e.strerror}; run 'deepserial keygen'") from None
        if b"PUBLIC KEY" in data:
            return cls.from_public_pem(data, str(path))
        try:
            priv = serialization.load_pem_private_key(data, passphrase.encode() if passphrase else None)
        except TypeError:
            if passphrase:
                raise IdentityError(f"{path} is not encrypted; drop the passphrase") from None
            raise IdentityError(
                f"{path} is encrypted; give its passphrase (--passphrase-env VAR or DEEPSERIAL_PASSPHRASE)"
            ) from None
        except CORRUPT_KEY:
            if passphrase:
                raise IdentityError(f"wrong passphrase for {path} (or the file is corrupt)") from None
            raise IdentityError(f"{path} is not a valid PEM private key (corrupt or unsupported key data)") from None
        if not isinstance(priv, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
            raise IdentityError(f"{path}: only Ed25519 and RSA keys are supported")
        return cls(priv, priv.public_key())


def public_key_path(private_path: str | Path) -> Path:
    """Where the public half of a private key file lives: ``owner.pem`` -> ``owner.pub.pem``."""
    p = Path(private_path)
    return p.with_name(p.name[: -len(".pem")] + ".pub.pem" if p.name.endswith(".pem") else p.name + ".pub.pem")


def derive(signature: bytes, purpose: str, nbytes: int = 32) -> bytes:
    """Deterministic secret bytes for one ``purpose`` (a domain tag) from a signature.

    SHA-256 in counter mode over ``b"deepserial/v1/" + purpose + 0x00 + counter + signature``: each
    purpose gets independent bytes, the same inputs always give the same output on every platform
    (unlike Python's ``hash()``), and the signature cannot be recovered from the output.
    """
    if not purpose or "\x00" in purpose:
        raise ValueError("purpose must be a non-empty tag without NUL bytes")
    out = bytearray()
    counter = 0
    prefix = b"deepserial/v1/" + purpose.encode() + b"\x00"
    while len(out) < nbytes:
        out += hashlib.sha256(prefix + counter.to_bytes(4, "big") + signature).digest()
        counter += 1
    return bytes(out[:nbytes])


def derive_rng(signature: bytes, purpose: str) -> np.random.Generator:
    """A numpy generator seeded from :func:`derive`, for secrets that need many random draws."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(derive(signature, purpose, 32), "big")))
