"""Tests for deepserial.artifacts: safetensors model files with a verified, optionally signed manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from deepserial.artifacts import FORMAT, _digest, load_model, read_manifest, save_model
from deepserial.errors import IntegrityError
from deepserial.identity import OwnerIdentity
from deepserial.nets import SplitNet, create_model

SHAPE = (1, 12, 12)  # the smallest input the DSN MNIST net accepts: a tiny, fast model


@contextmanager
def raises(match: str | None = None) -> Iterator[pytest.ExceptionInfo[IntegrityError]]:
    with pytest.raises(IntegrityError, match=match) as excinfo:
        yield excinfo
    text = str(excinfo.value)
    assert text.strip() and "\n" not in text, f"not a one-line message: {text!r}"


def make_model(seed: int = 0) -> SplitNet:
    torch.manual_seed(seed)
    return create_model("dsn_mnist", SHAPE, 4)


def manifest(**extra: Any) -> dict[str, Any]:
    return {
        "arch": "dsn_mnist",
        "input_shape": list(SHAPE),
        "num_classes": 4,
        "scheme": "dsn",
        "geometry": {"height": 3, "width": 3, "top": 2, "left": 2, "channels": []},
        "provenance": {"dataset": "mnist5k", "seed": 7},
        **extra,
    }


@pytest.fixture(scope="module")
def owner() -> OwnerIdentity:
    return OwnerIdentity.generate()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, SplitNet]:
    model = make_model()
    path = tmp_path / "model.safetensors"
    save_model(path, model, manifest())
    return path, model


def header_len(raw: bytes) -> int:
    return int.from_bytes(raw[:8], "little")


def rewrite(path: Path, edit: Any, tensors_edit: Any = None) -> None:
    """Rewrite a model file with safetensors itself, editing the manifest (and optionally the tensors)."""
    raw = path.read_bytes()
    tensors = st_load(raw)
    man = json.loads(json.loads(raw[8 : 8 + header_len(raw)])["__metadata__"]["deepserial"])
    man = edit(man)
    if tensors_edit is not None:
        tensors = tensors_edit(tensors)
    path.write_bytes(st_save(tensors, metadata={"deepserial": json.dumps(man, sort_keys=True)}))


# --------------------------------------------------------------------------------------------- round trip


def test_roundtrip_identical_outputs(saved: tuple[Path, SplitNet]) -> None:
    path, model = saved
    loaded = load_model(path)
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert not loaded.model.training
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    assert loaded.input_shape == SHAPE


def test_manifest_fields_kept(saved: tuple[Path, SplitNet]) -> None:
    path, _ = saved
    man = load_model(path).manifest
    for k, v in manifest().items():
        assert man[k] == v
    assert man["format"] == FORMAT
    assert len(man["integrity"]["sha256"]) == 64
    assert "signature" not in man["integrity"]
    assert read_manifest(path) == man


def test_save_returns_written_manifest_and_does_not_mutate_input(tmp_path: Path) -> None:
    m = manifest(integrity={"sha256": "stale"})
    before = json.dumps(m, sort_keys=True)
    written = save_model(tmp_path / "m.safetensors", make_model(), m)
    assert json.dumps(m, sort_keys=True) == before
    assert written["integrity"]["sha256"] != "stale"
    assert read_manifest(tmp_path / "m.safetensors") == written


def test_manifest_with_tuples_and_floats_roundtrips(tmp_path: Path) -> None:
    """Values that JSON changes in form (tuples -> lists) or writes approximately still verify."""
    path = tmp_path / "m.safetensors"
    m = manifest(input_shape=SHAPE, normalisation={"mean": (0.1307,), "std": (1 / 3,)}, lam=2000.0)
    save_model(path, make_model(), m)
    loaded = load_model(path)
    assert loaded.input_shape == SHAPE
    assert loaded.manifest["normalisation"] == {"mean": [0.1307], "std": [1 / 3]}


def test_save_requires_core_fields(tmp_path: Path) -> None:
    for key in ("arch", "input_shape", "num_classes"):
        m = manifest()
        del m[key]
        with pytest.raises(ValueError, match=key):
            save_model(tmp_path / "m.safetensors", make_model(), m)
    assert not (tmp_path / "m.safetensors").exists()


def test_save_is_atomic_no_temp_left(tmp_path: Path) -> None:
    save_model(tmp_path / "m.safetensors", make_model(0), manifest())
    save_model(tmp_path / "m.safetensors", make_model(1), manifest())
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m.safetensors").model(x), make_model(1).eval()(x))


# -------------------------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_flipped_byte_in_tensor_data(saved: tuple[Path, SplitNet], where: float) -> None:
    path, _ = saved
    raw = bytearray(path.read_bytes())
    start = 8 + header_len(bytes(raw))
    pos = min(start + int((len(raw) - start) * where), len(raw) - 1)
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))
    with raises("integrity check"):
        load_model(path)
    with raises("integrity check"):
        read_manifest(path)


@pytest.mark.parametrize("keep", [0, 4, 8, 50, 0.5, -1])
def test_truncated_file(saved: tuple[Path, SplitNet], keep: float) -> None:
    path, _ = saved
    raw = path.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(raw) + keep)
    path.write_bytes(raw[:n])
    with raises():
        load_model(path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m | {"num_classes": 5},
        lambda m: m | {"scheme": "null_embedding"},
        lambda m: m | {"geometry": m["geometry"] | {"top": 3}},
        lambda m: m | {"extra": "field"},
        lambda m: {k: v for k, v in m.items() if k != "provenance"},
    ],
    ids=["num_classes", "scheme", "geometry", "added", "removed"],
)
def test_edited_manifest_same_tensors(saved: tuple[Path, SplitNet], edit: Any) -> None:
    path, _ = saved
    rewrite(path, edit)
    with raises("integrity check"):
        load_model(path)


def test_rewrite_with_unchanged_manifest_still_loads(saved: tuple[Path, SplitNet]) -> None:
    """The rewrite helper itself does not break files: only the edits do."""
    path, _ = saved
    rewrite(path, lambda m: m)
    load_model(path)


def test_replaced_weights_same_manifest(saved: tuple[Path, SplitNet]) -> None:
    path, _ = saved

    def zero_bias(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        name = sorted(k for k in t if k.endswith("bias"))[0]
        return t | {name: torch.zeros_like(t[name])}

    rewrite(path, lambda m: m, zero_bias)
    with raises("integrity check"):
        load_model(path)


def test_renamed_or_missing_tensor(saved: tuple[Path, SplitNet]) -> None:
    path, _ = saved
    rewrite(path, lambda m: m, lambda t: {k: v for k, v in list(t.items())[1:]})
    with raises("integrity check"):
        load_model(path)


def test_missing_integrity_block(saved: tuple[Path, SplitNet]) -> None:
    path, _ = saved
    rewrite(path, lambda m: {k: v for k, v in m.items() if k != "integrity"})
    with raises("integrity check"):
        load_model(path)


def test_wrong_format_tag(saved: tuple[Path, SplitNet]) -> None:
    path, _ = saved
    rewrite(path, lambda m: m | {"format": "something-else/9"})
    with raises("format"):
        load_model(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world, not a model", b"\x00" * 64, b"PK\x03\x04" + bytes(range(200))],
    ids=["empty", "text", "zeros", "zip"],
)
def test_non_safetensors_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with raises("not a deepserial model file"):
        load_model(path)


def test_safetensors_without_manifest(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    path.write_bytes(st_save(make_model().state_dict()))
    with raises("not a deepserial model file"):
        load_model(path)
    path.write_bytes(st_save(make_model().state_dict(), metadata={"other": "x"}))
    with raises("not a deepserial model file"):
        load_model(path)
    path.write_bytes(st_save(make_model().state_dict(), metadata={"deepserial": "{not json"}))
    with raises("not a deepserial model file"):
        load_model(path)


@pytest.mark.parametrize("text", ["[1, 2]", "5", "null", '"str"', '{"format": "deepserial-model/1", "integrity": 3}'])
def test_manifest_of_wrong_json_type(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(st_save(make_model().state_dict(), metadata={"deepserial": text}))
    with raises():
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with raises("cannot read model file"):
        load_model(tmp_path / "absent.safetensors")


def test_weights_for_another_network(tmp_path: Path) -> None:
    """A correctly hashed file whose tensors belong to another network is refused, not half-loaded."""
    path = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    other = create_model("dsn_mnist", (1, 14, 14), 4)
    save_model(path, other, manifest())  # manifest claims 12x12 input: first FC layer has another size
    with raises("do not match network"):
        load_model(path)


# ---------------------------------------------------------------------------------------------- signing


def test_signed_by_owner(tmp_path: Path, owner: OwnerIdentity) -> None:
    path = tmp_path / "m.safetensors"
    written = save_model(path, make_model(), manifest(), owner=owner)
    assert written["integrity"]["owner_fingerprint"] == owner.fingerprint()
    owner.verify(bytes.fromhex(written["integrity"]["sha256"]), bytes.fromhex(written["integrity"]["signature"]))
    loaded = load_model(path, owner=owner)
    assert loaded.manifest == written
    load_model(path)  # the signature does not stop an unchecked load


def test_signed_verified_with_public_key_only(tmp_path: Path, owner: OwnerIdentity) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, make_model(), manifest(), owner=owner)
    _, pub_path = owner.save(tmp_path / "owner.pem")
    load_model(path, owner=OwnerIdentity.load(pub_path))


def test_signed_by_other_owner(tmp_path: Path, owner: OwnerIdentity) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, make_model(), manifest(), owner=owner)
    with raises("signature does not verify"):
        load_model(path, owner=OwnerIdentity.generate())


def test_unsigned_with_owner(saved: tuple[Path, SplitNet], owner: OwnerIdentity) -> None:
    path, _ = saved
    with raises("no owner signature"):
        load_model(path, owner=owner)


def test_rewritten_with_recomputed_digest_keeps_old_signature(tmp_path: Path, owner: OwnerIdentity) -> None:
    """Someone who edits the manifest and recomputes the digest passes the digest check but not the owner's."""
    path = tmp_path / "m.safetensors"
    save_model(path, make_model(), manifest(), owner=owner)

    def forge(m: dict[str, Any]) -> dict[str, Any]:
        m = m | {"provenance": {"dataset": "stolen", "seed": 0}}
        tensors = st_load(path.read_bytes())
        m["integrity"] = m["integrity"] | {"sha256": _digest(m, tensors)}
        return m

    rewrite(path, forge)
    assert load_model(path).manifest["provenance"]["dataset"] == "stolen"
    with raises("signature does not verify"):
        load_model(path, owner=owner)


def test_tampered_signature(tmp_path: Path, owner: OwnerIdentity) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, make_model(), manifest(), owner=owner)

    def flip(m: dict[str, Any]) -> dict[str, Any]:
        sig = bytearray(bytes.fromhex(m["integrity"]["signature"]))
        sig[0] ^= 1
        m["integrity"] = m["integrity"] | {"signature": sig.hex()}
        return m

    rewrite(path, flip)
    load_model(path)  # the signature is outside the digest
    with raises("signature does not verify"):
        load_model(path, owner=owner)


def test_signature_not_hex(tmp_path: Path, owner: OwnerIdentity) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, make_model(), manifest(), owner=owner)
    rewrite(path, lambda m: m | {"integrity": m["integrity"] | {"signature": "zz-not-hex"}})
    with raises():
        load_model(path, owner=owner)
