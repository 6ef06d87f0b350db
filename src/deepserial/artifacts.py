"""Saving and loading models: one safetensors file whose header carries a JSON manifest.

A shipped model is a single ``.safetensors`` file (a format that cannot execute code on load, unlike
pickle). Its metadata holds the manifest: network name, input shape, class count, normalisation,
scheme, serial-number geometry, provenance (dataset, seed, versions) and an integrity block:

- ``sha256``: SHA-256 over the canonical manifest (without the integrity block) and every tensor's
  name, dtype, shape and bytes. Any change to weights or manifest, and any truncation, is refused on
  load with :class:`~deepserial.errors.IntegrityError`.
- ``signature`` (optional): the owner's signature over that digest. A digest alone stops accidents
  and naive edits; someone who rewrites the file can recompute it, so a party who holds the owner's
  public key checks the signature too (``load_model(..., owner=identity)``).

Files are written atomically: a reader sees the previous file or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from deepserial.errors import IdentityError, IntegrityError
from deepserial.identity import OwnerIdentity, atomic_write
from deepserial.nets import SplitNet, create_model

if TYPE_CHECKING:
    from deepserial.schemes.base import OwnershipKey

FORMAT = "deepserial-model/1"


@dataclass
class LoadedModel:
    """A model read back from disk with its verified manifest."""

    model: SplitNet
    manifest: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["input_shape"])  # type: ignore[return-value]


def _digest(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\x00{name}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(
    path: str | Path, model: SplitNet, manifest: dict[str, Any], owner: OwnerIdentity | None = None
) -> dict[str, Any]:
    """Write ``model`` with ``manifest`` (which must name ``arch``, ``input_shape``, ``num_classes``)
    to ``path``; sign the digest when ``owner`` is given. Returns the manifest as written."""
    for key in ("arch", "input_shape", "num_classes"):
        if key not in manifest:
            raise ValueError(f"manifest lacks {key!r}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    man = dict(manifest, format=FORMAT)
    man.pop("integrity", None)
    digest = _digest(man, tensors)
    man["integrity"] = {"sha256": digest}
    if owner is not None:
        man["integrity"]["signature"] = owner.sign(bytes.fromhex(digest)).hex()
        man["integrity"]["owner_fingerprint"] = owner.fingerprint()
    atomic_write(path, st_save(tensors, metadata={"deepserial": json.dumps(man, sort_keys=True)}))
    return man


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a model file, after checking the file's integrity."""
    return _read(path)[0]


def _parse(path: Path, what: str, hint: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """The manifest (as parsed JSON) and tensors of a deepserial safetensors file, or one-line errors."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        man = json.loads(json.loads(raw[8 : 8 + header_len])["__metadata__"]["deepserial"])
    except (SafetensorError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise IntegrityError(f"{path} is not a deepserial {what} or is truncated/corrupt{hint}") from None
    return man, tensors


def _read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    man, tensors = _parse(path, "model file", "; ask the vendor for a fresh copy")
    if not isinstance(man, dict) or not isinstance(man.get("integrity", {}), dict):
        raise IntegrityError(
            f"{path} is not a deepserial model file or is corrupt (manifest is not a JSON object); "
            "ask the vendor for a fresh copy"
        )
    if man.get("format") != FORMAT:
        raise IntegrityError(f"{path} has format {man.get('format')!r}, expected {FORMAT!r}")
    want = man.get("integrity", {}).get("sha256")
    if not want or _digest(man, tensors) != want:
        raise IntegrityError(
            f"{path} failed its integrity check (weights or manifest were modified); do not use this file"
        )
    return man, tensors


def load_model(path: str | Path, owner: OwnerIdentity | None = None) -> LoadedModel:
    """Load and verify a model file; with ``owner``, also require the owner's signature on it."""
    man, tensors = _read(path)
    if owner is not None:
        sig = man["integrity"].get("signature")
        if not sig:
            raise IntegrityError(f"{path} carries no owner signature; it was not issued by this owner")
        try:
            owner.verify(bytes.fromhex(man["integrity"]["sha256"]), bytes.fromhex(sig))
        except (IdentityError, ValueError, TypeError):  # ValueError/TypeError: signature is not a hex string
            raise IntegrityError(
                f"{path}: the owner signature does not verify; the file was not issued by this owner or was re-written"
            ) from None
    model = create_model(man["arch"], man["input_shape"], int(man["num_classes"]))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError:
        raise IntegrityError(f"{path}: weights do not match network {man['arch']!r}") from None
    model.eval()
    return LoadedModel(model, man)


# ----- ownership keys ------------------------------------------------------------------------------
KEY_FORMAT = "deepserial-key/1"


def save_key(path: str | Path, key: OwnershipKey, owner: OwnerIdentity | None = None) -> dict[str, Any]:
    """Write an ownership key (mode 0600: it is the owner's secret) as safetensors + manifest, with the
    same digest and optional owner signature as models. Returns the manifest as written."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in key.tensors.items()}
    man: dict[str, Any] = {"format": KEY_FORMAT, "scheme": key.scheme, "meta": key.meta}
    digest = _digest(man, tensors)
    man["integrity"] = {"sha256": digest}
    if owner is not None:
        man["integrity"]["signature"] = owner.sign(bytes.fromhex(digest)).hex()
        man["integrity"]["owner_fingerprint"] = owner.fingerprint()
    atomic_write(path, st_save(tensors, metadata={"deepserial": json.dumps(man, sort_keys=True)}), mode=0o600)
    return man


def load_key(path: str | Path) -> OwnershipKey:
    """Read and integrity-check an ownership key file."""
    path = Path(path)
    man, tensors = _parse(path, "ownership key")
    if not isinstance(man, dict) or man.get("format") != KEY_FORMAT:
        raise IntegrityError(f"{path} is not a deepserial ownership key ({KEY_FORMAT})")
    integrity = man.get("integrity") if isinstance(man.get("integrity"), dict) else {}
    want = integrity.get("sha256")
    if not want or _digest(man, tensors) != want:
        raise IntegrityError(f"{path} failed its integrity check (the key was modified); do not use it")
    meta = man.get("meta")
    if not isinstance(meta, dict) or not isinstance(man.get("scheme"), str):
        raise IntegrityError(f"{path} is not a deepserial ownership key (no scheme or meta)")
    if "owner_public_key" in meta:
        # A key that names its owner must carry that owner's signature over its digest: otherwise anyone
        # could edit its bits or labels, recompute the digest and "verify" any suspect in the owner's name.
        sig = integrity.get("signature")
        if not sig:
            raise IntegrityError(f"{path} names an owner but carries no owner signature; it cannot be trusted")
        try:
            from cryptography.hazmat.primitives import serialization

            owner = OwnerIdentity(None, serialization.load_pem_public_key(meta["owner_public_key"].encode()))
            owner.verify(bytes.fromhex(want), bytes.fromhex(sig))
        except (IdentityError, ValueError, TypeError, AttributeError):
            raise IntegrityError(
                f"{path}: the owner's signature over the key does not verify; the key was "
                "modified or re-written by someone else"
            ) from None
    from deepserial.schemes.base import OwnershipKey

    return OwnershipKey(man["scheme"], dict(meta), dict(tensors))


# ----- ONNX ----------------------------------------------------------------------------------------
ONNX_FORMAT = "deepserial-onnx/1"
_ONNX_MANIFEST = "deepserial"
_ONNX_DIGEST = "deepserial_sha256"


def _onnx_digest(manifest: dict[str, Any], model_proto: Any) -> str:
    """SHA-256 over the canonical manifest and the ONNX graph (nodes and weights), opset and IR version."""
    h = hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    h.update(f"\x00ir{model_proto.ir_version}\x00".encode())
    for op in model_proto.opset_import:
        h.update(f"{op.domain}:{op.version}\x00".encode())
    h.update(model_proto.graph.SerializeToString(deterministic=True))
    return h.hexdigest()


def export_onnx(path: str | Path, loaded: LoadedModel, opset: int = 18) -> dict[str, Any]:
    """Write ``loaded`` as an ONNX file (input ``x`` (N, C, H, W) float32 in [0, 1], output ``logits``)
    whose metadata carries the deepserial manifest and a digest over manifest and graph, so the file is
    checked on load like a safetensors model. Returns the manifest as written.

    The network alone is exported: a customer model still needs its serial number stamped on every
    input (the serial number never goes inside a shipped model)."""
    import logging
    import tempfile
    import warnings

    import onnx

    model = loaded.model.eval().cpu()
    example = torch.zeros(2, *loaded.input_shape)
    quiet = logging.getLogger("torch.onnx")  # the exporter warns about torchvision ops it cannot register
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = Path(tmp) / "model.onnx"
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                (example,),
                str(out),
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: batch}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
                external_data=False,
            )
            proto = onnx.load(str(out))
    finally:
        quiet.setLevel(level)
    src = loaded.manifest.get("integrity", {})
    man = {k: v for k, v in loaded.manifest.items() if k != "integrity"}
    man.update(format=ONNX_FORMAT, source_sha256=src.get("sha256"))
    del proto.metadata_props[:]
    proto.metadata_props.add(key=_ONNX_MANIFEST, value=json.dumps(man, sort_keys=True))
    proto.metadata_props.add(key=_ONNX_DIGEST, value=_onnx_digest(man, proto))
    atomic_write(path, proto.SerializeToString())
    return man


def load_onnx(path: str | Path) -> tuple[bytes, dict[str, Any]]:
    """The bytes and verified manifest of an ONNX file written by :func:`export_onnx`."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"cannot read ONNX file {path}: {e.strerror}") from None
    try:
        proto = onnx.load_from_string(raw)
        meta = {p.key: p.value for p in proto.metadata_props}
        man = json.loads(meta[_ONNX_MANIFEST])
        want = meta[_ONNX_DIGEST]
    except (DecodeError, KeyError, ValueError, json.JSONDecodeError):
        raise IntegrityError(
            f"{path} is not a deepserial ONNX export or is truncated/corrupt; export it again "
            "with `deepserial export --format onnx`"
        ) from None
    if not isinstance(man, dict) or man.get("format") != ONNX_FORMAT or not proto.graph.node:
        raise IntegrityError(f"{path} is not a deepserial ONNX export ({ONNX_FORMAT})")
    if _onnx_digest(man, proto) != want:
        raise IntegrityError(
            f"{path} failed its integrity check (graph, weights or manifest were modified); do not use this file"
        )
    return raw, man
