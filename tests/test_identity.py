"""Tests for deepserial.identity: key pairs, signatures over verifier strings, PEM files, derivation."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from deepserial import identity as identity_module
from deepserial.errors import ConfigError, DeepSerialError, IdentityError
from deepserial.identity import (
    OwnerIdentity,
    VerifierString,
    atomic_write,
    derive,
    derive_rng,
    public_key_path,
)

MESSAGE = VerifierString(owner="acme", customer="cust-42", timestamp="2024-01-02T03:04:05+00:00", scheme="dsn")


@contextmanager
def raises(match: str | None = None) -> Iterator[pytest.ExceptionInfo[IdentityError]]:
    """Expect an IdentityError (matching ``match``) whose message is one non-empty line."""
    with pytest.raises(IdentityError, match=match) as excinfo:
        yield excinfo
    text = str(excinfo.value)
    assert text.strip() and "\n" not in text, f"not a one-line message: {text!r}"
    assert isinstance(excinfo.value, DeepSerialError)


@pytest.fixture(scope="module")
def ed() -> OwnerIdentity:
    return OwnerIdentity.generate("ed25519")


@pytest.fixture(scope="module")
def rsa_id() -> OwnerIdentity:
    # RSA 3072 key generation takes a second or more: once per module.
    return OwnerIdentity.generate("rsa")


@pytest.fixture(scope="module", params=["ed25519", "rsa"])
def ident(request: pytest.FixtureRequest, ed: OwnerIdentity, rsa_id: OwnerIdentity) -> OwnerIdentity:
    return ed if request.param == "ed25519" else rsa_id


# ------------------------------------------------------------------------------------------ verifier string


def test_verifier_string_bytes_are_canonical_sorted_compact_json() -> None:
    assert MESSAGE.to_bytes() == (
        b'{"customer":"cust-42","owner":"acme","scheme":"dsn","timestamp":"2024-01-02T03:04:05+00:00"}'
    )
    assert VerifierString.from_dict(MESSAGE.to_dict()) == MESSAGE


def test_verifier_string_from_dict_missing_field() -> None:
    d = MESSAGE.to_dict()
    del d["scheme"]
    with raises("scheme"):
        VerifierString.from_dict(d)


def test_verifier_string_now_is_utc_without_microseconds() -> None:
    v = VerifierString.now("o", "c", "dsn")
    assert v.timestamp.endswith("+00:00")
    assert "." not in v.timestamp
    assert (v.owner, v.customer, v.scheme) == ("o", "c", "dsn")


# ------------------------------------------------------------------------------------------ sign / verify


def test_algorithm_property(ed: OwnerIdentity, rsa_id: OwnerIdentity) -> None:
    assert ed.algorithm == "ed25519"
    assert rsa_id.algorithm == "rsa"


def test_unknown_algorithm() -> None:
    with raises("unknown key algorithm"):
        OwnerIdentity.generate("dsa")  # type: ignore[arg-type]


def test_sign_verify_roundtrip(ident: OwnerIdentity) -> None:
    sig = ident.sign(MESSAGE)
    ident.verify(MESSAGE, sig)  # does not raise
    # A VerifierString and its canonical bytes are the same message.
    ident.verify(MESSAGE.to_bytes(), sig)
    ident.verify(MESSAGE, ident.sign(MESSAGE.to_bytes()))


def test_signature_lengths(ed: OwnerIdentity, rsa_id: OwnerIdentity) -> None:
    assert len(ed.sign(MESSAGE)) == 64
    assert len(rsa_id.sign(MESSAGE)) == 3072 // 8


def test_ed25519_is_deterministic_rsa_pss_is_randomised(ed: OwnerIdentity, rsa_id: OwnerIdentity) -> None:
    assert ed.sign(MESSAGE) == ed.sign(MESSAGE)
    s1, s2 = rsa_id.sign(MESSAGE), rsa_id.sign(MESSAGE)
    assert s1 != s2
    rsa_id.verify(MESSAGE, s1)
    rsa_id.verify(MESSAGE, s2)


@pytest.mark.parametrize("field", ["owner", "customer", "timestamp", "scheme"])
def test_tampered_message_fails(ident: OwnerIdentity, field: str) -> None:
    sig = ident.sign(MESSAGE)
    d = MESSAGE.to_dict()
    d[field] = d[field] + "x"
    with raises("does not verify"):
        ident.verify(VerifierString.from_dict(d), sig)


@pytest.mark.parametrize("pos", [0, 17, -1])
def test_tampered_signature_fails(ident: OwnerIdentity, pos: int) -> None:
    sig = bytearray(ident.sign(MESSAGE))
    sig[pos] ^= 0x01
    with raises("does not verify"):
        ident.verify(MESSAGE, bytes(sig))


def test_signature_of_other_key_fails(ed: OwnerIdentity, rsa_id: OwnerIdentity) -> None:
    other = OwnerIdentity.generate("ed25519")
    with raises("does not verify"):
        ed.verify(MESSAGE, other.sign(MESSAGE))
    with raises("does not verify"):
        rsa_id.verify(MESSAGE, ed.sign(MESSAGE))  # wrong length for RSA


def test_fingerprint_is_stable_hex_and_distinct(ed: OwnerIdentity, rsa_id: OwnerIdentity) -> None:
    fp = ed.fingerprint()
    assert fp == ed.fingerprint()
    assert len(fp) == 16 and all(c in "0123456789abcdef" for c in fp)
    assert fp != rsa_id.fingerprint()
    assert fp != OwnerIdentity.generate().fingerprint()


# ------------------------------------------------------------------------------------------------- files


def test_public_key_path() -> None:
    assert public_key_path("/a/owner.pem") == Path("/a/owner.pub.pem")
    assert public_key_path("/a/owner.key") == Path("/a/owner.key.pub.pem")


@pytest.mark.parametrize("passphrase", [None, "correct horse"])
def test_save_load_roundtrip(ident: OwnerIdentity, tmp_path: Path, passphrase: str | None) -> None:
    priv_path, pub_path = ident.save(tmp_path / "keys" / "owner.pem", passphrase=passphrase)
    assert priv_path == tmp_path / "keys" / "owner.pem"
    assert pub_path == tmp_path / "keys" / "owner.pub.pem"
    pem = priv_path.read_bytes()
    assert pem.startswith(b"-----BEGIN ")
    assert (b"ENCRYPTED" in pem) == (passphrase is not None)

    loaded = OwnerIdentity.load(priv_path, passphrase=passphrase)
    assert loaded.algorithm == ident.algorithm
    assert loaded.fingerprint() == ident.fingerprint()
    # The loaded key signs messages the original verifies, and vice versa.
    ident.verify(MESSAGE, loaded.sign(MESSAGE))
    loaded.verify(MESSAGE, ident.sign(MESSAGE))
    if ident.algorithm == "ed25519":
        assert loaded.sign(MESSAGE) == ident.sign(MESSAGE)


def test_private_key_file_mode_is_0600(ed: OwnerIdentity, tmp_path: Path) -> None:
    priv_path, pub_path = ed.save(tmp_path / "owner.pem")
    assert stat.S_IMODE(os.stat(priv_path).st_mode) == 0o600
    assert b"PRIVATE KEY" in priv_path.read_bytes()
    assert b"PUBLIC KEY" in pub_path.read_bytes()


def test_private_key_is_never_on_disk_with_wider_mode(
    ed: OwnerIdentity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the key bytes are written (before the rename), the file is already private."""
    seen: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(identity_module.os, "fsync", spy)
    old = os.umask(0o022)
    try:
        ed.save(tmp_path / "owner.pem")
    finally:
        os.umask(old)
    assert seen, "atomic_write no longer fsyncs"
    assert seen[0] == 0o600, f"private key bytes were written to a file of mode {oct(seen[0])}"


def test_public_only_identity_verifies_but_cannot_sign(ident: OwnerIdentity, tmp_path: Path) -> None:
    _, pub_path = ident.save(tmp_path / "owner.pem")
    pub = OwnerIdentity.load(pub_path)
    assert pub.algorithm == ident.algorithm
    assert pub.fingerprint() == ident.fingerprint()
    pub.verify(MESSAGE, ident.sign(MESSAGE))
    with raises("does not verify"):
        pub.verify(MESSAGE, OwnerIdentity.generate().sign(MESSAGE))
    with raises("only a public key"):
        pub.sign(MESSAGE)
    with raises("only the public key"):
        pub.save(tmp_path / "again.pem")
    assert not (tmp_path / "again.pem").exists()


def test_wrong_passphrase(ed: OwnerIdentity, tmp_path: Path) -> None:
    path, _ = ed.save(tmp_path / "owner.pem", passphrase="right")
    with raises("wrong passphrase"):
        OwnerIdentity.load(path, passphrase="wrong")


def test_missing_passphrase_for_encrypted_key(ed: OwnerIdentity, tmp_path: Path) -> None:
    path, _ = ed.save(tmp_path / "owner.pem", passphrase="right")
    with raises("is encrypted; give its passphrase"):
        OwnerIdentity.load(path)


def test_passphrase_for_unencrypted_key(ed: OwnerIdentity, tmp_path: Path) -> None:
    path, _ = ed.save(tmp_path / "owner.pem")
    with raises("not encrypted; drop the passphrase"):
        OwnerIdentity.load(path, passphrase="something")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello, this is not a key\n",
        np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes(),
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
    ids=["empty", "text", "random", "bad-pem"],
)
def test_garbage_private_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "owner.pem"
    path.write_bytes(content.replace(b"PUBLIC KEY", b"PUBLIC-KEY"))
    with raises("not a valid PEM private key"):
        OwnerIdentity.load(path)


def test_garbage_public_key_file(tmp_path: Path) -> None:
    path = tmp_path / "owner.pub.pem"
    path.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64 at all!\n-----END PUBLIC KEY-----\n")
    with raises("not a valid PEM public key"):
        OwnerIdentity.load(path)


def test_truncated_private_key_file(ed: OwnerIdentity, tmp_path: Path) -> None:
    path, _ = ed.save(tmp_path / "owner.pem")
    path.write_bytes(path.read_bytes()[:40])
    with raises():
        OwnerIdentity.load(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with raises("cannot read key file") as excinfo:
        OwnerIdentity.load(tmp_path / "nope.pem")
    assert "nope.pem" in str(excinfo.value)
    assert "keygen" in str(excinfo.value)


def test_save_overwrites_atomically(ed: OwnerIdentity, tmp_path: Path) -> None:
    other = OwnerIdentity.generate()
    path = tmp_path / "owner.pem"
    ed.save(path)
    other.save(path)
    assert OwnerIdentity.load(path).fingerprint() == other.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owner.pem", "owner.pub.pem"]


# ------------------------------------------------------------------------------------------- atomic_write


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "file.bin"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write(target, b"second, longer", mode=0o640)
    assert target.read_bytes() == b"second, longer"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file.bin"
    atomic_write(target, b"old")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(identity_module.os, "replace", boom)
    with pytest.raises(ConfigError, match="cannot write .*file.bin: disk on fire"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


# ------------------------------------------------------------------------------------------------ derive


def _reference_derive(signature: bytes, purpose: str, nbytes: int) -> bytes:
    """The documented construction: SHA-256 counter mode over prefix + 0x00 + counter + signature."""
    out = b""
    counter = 0
    while len(out) < nbytes:
        block = b"deepserial/v1/" + purpose.encode() + b"\x00" + counter.to_bytes(4, "big") + signature
        out += hashlib.sha256(block).digest()
        counter += 1
    return out[:nbytes]


def test_derive_known_answer() -> None:
    sig = bytes(range(64))
    for nbytes in (1, 16, 32, 33, 80):
        assert derive(sig, "serial-number/bits/0", nbytes) == _reference_derive(sig, "serial-number/bits/0", nbytes)
    # Pin the first block literally, so a change of the construction is caught even if the reference moves.
    expected = hashlib.sha256(b"deepserial/v1/test\x00\x00\x00\x00\x00" + b"sig").hexdigest()
    assert derive(b"sig", "test").hex() == expected


def test_derive_deterministic_and_length() -> None:
    sig = b"\x01" * 64
    assert derive(sig, "a") == derive(sig, "a")
    for n in (0, 1, 5, 31, 32, 33, 64, 100):
        assert len(derive(sig, "a", n)) == n
    # Longer outputs extend shorter ones (counter mode).
    assert derive(sig, "a", 100)[:32] == derive(sig, "a", 32)
    assert derive(sig, "a", 32) == derive(sig, "a")


def test_derive_differs_per_purpose_and_signature() -> None:
    sig = b"\x01" * 64
    outs = {derive(sig, p) for p in ("a", "b", "serial-number/bits/0", "serial-number/bits/1", "ab")}
    assert len(outs) == 5
    assert derive(sig, "a") != derive(b"\x02" + sig[1:], "a")
    assert derive(sig, "a") != derive(sig + b"\x00", "a")


def test_derive_rejects_bad_purpose() -> None:
    with pytest.raises(ValueError):
        derive(b"sig", "")
    with pytest.raises(ValueError):
        derive(b"sig", "a\x00b")


def test_derive_from_real_signature(ed: OwnerIdentity) -> None:
    sig = ed.sign(MESSAGE)
    assert derive(sig, "x") == _reference_derive(sig, "x", 32)


def test_derive_rng_is_deterministic_per_purpose() -> None:
    a = derive_rng(b"sig", "p").integers(0, 2**31, size=8)
    b = derive_rng(b"sig", "p").integers(0, 2**31, size=8)
    c = derive_rng(b"sig", "q").integers(0, 2**31, size=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_experiment_identity_is_fixed_by_seed_and_label() -> None:
    a, b = OwnerIdentity.for_experiment(0, "random-7"), OwnerIdentity.for_experiment(0, "random-7")
    assert a.fingerprint() == b.fingerprint()
    assert a.sign(MESSAGE) == b.sign(MESSAGE)  # Ed25519: the same signature, so the same derived key
    others = {
        OwnerIdentity.for_experiment(s, lab).fingerprint()
        for s, lab in ((1, "random-7"), (0, "random-8"), (0, "owner"), (10, "random-7"))
    }
    assert len(others) == 4 and a.fingerprint() not in others
    b.verify(MESSAGE, a.sign(MESSAGE))  # does not raise: a real Ed25519 pair
