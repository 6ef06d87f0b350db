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

Because a rewritten file can carry any manifest, every manifest (model, ownership key, ONNX export)
is also validated field by field against :mod:`deepserial.schema` when it is read, and the network it
names is sized on PyTorch's ``meta`` device and compared with the stored weights before any memory is
allocated for it. Files are written atomically (:mod:`deepserial.files`): a reader sees the previous
file or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from deepserial.errors import ConfigError, IdentityError, IntegrityError
from deepserial.files import atomic_write
from deepserial.identity import OwnerIdentity
from deepserial.nets import SplitNet, create_model
from deepserial.ownership import OwnershipKey
from deepserial.schema import KeyManifest, ModelManifest, OnnxManifest, validate

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


def encode_model(
    model: SplitNet, manifest: dict[str, Any], owner: OwnerIdentity | None = None
) -> tuple[bytes, dict[str, Any]]:
    """The bytes of a model file for ``model`` with ``manifest`` (which must name ``arch``,
    ``input_shape``, ``num_classes``), signed by ``owner`` when given, and the manifest as written.

    Separate from :func:`save_model` so that a model can be written together with other files, all
    or nothing (:func:`deepserial.files.atomic_write_all`)."""
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
    text = json.dumps(man, sort_keys=True)
    try:  # never write a file that load_model would refuse
        validate(ModelManifest, json.loads(text), "the manifest to write", "model manifest")
    except IntegrityError as e:
        raise ValueError(str(e)) from None
    return st_save(tensors, metadata={"deepserial": text}), man


def save_model(
    path: str | Path, model: SplitNet, manifest: dict[str, Any], owner: OwnerIdentity | None = None
) -> dict[str, Any]:
    """Write ``model`` with ``manifest`` to ``path`` atomically (:func:`encode_model`); returns the
    manifest as written."""
    data, man = encode_model(model, manifest, owner)
    atomic_write(path, data)
    return man


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a model file, after checking the file's integrity and every manifest field."""
    return _read(_read_bytes(Path(path), "model file"), path)[0]


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _parse(raw: bytes, where: object, what: str, hint: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """The manifest (as parsed JSON) and tensors of a deepserial safetensors file, or one-line errors."""
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        man = json.loads(json.loads(raw[8 : 8 + header_len])["__metadata__"]["deepserial"])
    except (SafetensorError, ValueError, KeyError, TypeError, RecursionError):  # JSONDecodeError is a ValueError
        raise IntegrityError(f"{where} is not a deepserial {what} or is truncated/corrupt{hint}") from None
    return man, tensors


_FRESH_COPY = "; ask the vendor for a fresh copy"


def _read(raw: bytes, where: object) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The verified manifest and tensors of a model file's bytes (``where`` names it in errors)."""
    man, tensors = _parse(raw, where, "model file", _FRESH_COPY)
    if not isinstance(man, dict) or not isinstance(man.get("integrity", {}), dict):
        raise IntegrityError(
            f"{where} is not a deepserial model file or is corrupt (manifest is not a JSON object){_FRESH_COPY}"
        )
    if man.get("format") != FORMAT:
        raise IntegrityError(f"{where} has format {man.get('format')!r:.60}, expected {FORMAT!r}")
    want = man.get("integrity", {}).get("sha256")
    if not want or _digest(man, tensors) != want:
        raise IntegrityError(
            f"{where} failed its integrity check (weights or manifest were modified); do not use this file"
        )
    validate(ModelManifest, man, where, "model manifest", _FRESH_COPY)
    _check_network(where, man, tensors)
    return man, tensors


def _check_network(where: object, man: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a manifest whose network does not hold exactly the stored tensors.

    The network is built on the ``meta`` device (no memory, no random numbers drawn) and its shapes
    compared with the stored ones, so a manifest naming a huge input or class count is refused without
    allocating for it, and :func:`read_manifest` (``deepserial info``) refuses what :func:`load_model`
    would."""
    arch, shape, classes = man["arch"], man["input_shape"], int(man["num_classes"])
    try:
        with torch.device("meta"):
            skeleton = create_model(arch, shape, classes)
    except ConfigError as e:  # unknown network, input too small for it
        raise IntegrityError(f"{where}: {e}") from None
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if want != {k: tuple(v.shape) for k, v in tensors.items()}:
        raise IntegrityError(
            f"{where}: weights do not match network {arch!r} for input {tuple(shape)} and {classes} classes"
        )


def _build(where: object, man: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SplitNet:
    """The network of a verified manifest (:func:`_read`), holding ``tensors``."""
    model = create_model(man["arch"], man["input_shape"], int(man["num_classes"]))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError:
        raise IntegrityError(f"{where}: weights do not match network {man['arch']!r}") from None
    return model


def load_model(path: str | Path, owner: OwnerIdentity | None = None) -> LoadedModel:
    """Load and verify a model file; with ``owner``, also require the owner's signature on it."""
    return decode_model(_read_bytes(Path(path), "model file"), path, owner)


def decode_model(raw: bytes, where: object, owner: OwnerIdentity | None = None) -> LoadedModel:
    """:func:`load_model` on a model file's bytes (from :func:`encode_model`, before they are written);
    ``where`` names the file in errors."""
    man, tensors = _read(raw, where)
    if owner is not None:
        sig = man["integrity"].get("signature")
        if not sig:
            raise IntegrityError(f"{where} carries no owner signature; it was not issued by this owner")
        try:
            owner.verify(bytes.fromhex(man["integrity"]["sha256"]), bytes.fromhex(sig))
        except IdentityError:
            raise IntegrityError(
                f"{where}: the owner signature does not verify; the file was not issued by this owner or was re-written"
            ) from None
    model = _build(where, man, tensors)
    model.eval()
    return LoadedModel(model, man)


# ----- ownership keys ------------------------------------------------------------------------------
KEY_FORMAT = "deepserial-key/1"


def encode_key(key: OwnershipKey, owner: OwnerIdentity | None = None) -> tuple[bytes, dict[str, Any]]:
    """The bytes of an ownership-key file (safetensors + manifest, with the same digest and optional
    owner signature as models) and the manifest as written."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in key.tensors.items()}
    man: dict[str, Any] = {"format": KEY_FORMAT, "scheme": key.scheme, "meta": key.meta}
    digest = _digest(man, tensors)
    man["integrity"] = {"sha256": digest}
    if owner is not None:
        man["integrity"]["signature"] = owner.sign(bytes.fromhex(digest)).hex()
        man["integrity"]["owner_fingerprint"] = owner.fingerprint()
    return st_save(tensors, metadata={"deepserial": json.dumps(man, sort_keys=True)}), man


def save_key(path: str | Path, key: OwnershipKey, owner: OwnerIdentity | None = None) -> dict[str, Any]:
    """Write an ownership key atomically with mode 0600 (it is the owner's secret); returns the
    manifest as written."""
    data, man = encode_key(key, owner)
    atomic_write(path, data, mode=0o600)
    return man


def load_key(path: str | Path) -> OwnershipKey:
    """Read and integrity-check an ownership key file."""
    path = Path(path)
    man, tensors = _parse(_read_bytes(path, "ownership key"), path, "ownership key")
    if not isinstance(man, dict) or man.get("format") != KEY_FORMAT:
        raise IntegrityError(f"{path} is not a deepserial ownership key ({KEY_FORMAT})")
    integrity = man.get("integrity") if isinstance(man.get("integrity"), dict) else {}
    want = integrity.get("sha256")
    if not want or _digest(man, tensors) != want:
        raise IntegrityError(f"{path} failed its integrity check (the key was modified); do not use it")
    doc = validate(KeyManifest, man, path, "ownership key manifest")
    meta = man["meta"]
    if doc.meta.owner_public_key is not None:
        # A key that names its owner must carry that owner's signature over its digest: otherwise anyone
        # could edit its bits or labels, recompute the digest and "verify" any suspect in the owner's name.
        sig = doc.integrity.signature
        if not sig:
            raise IntegrityError(f"{path} names an owner but carries no owner signature; it cannot be trusted")
        try:
            owner = OwnerIdentity.from_public_pem(doc.meta.owner_public_key)
            owner.verify(bytes.fromhex(doc.integrity.sha256), bytes.fromhex(sig))
        except IdentityError:
            raise IntegrityError(
                f"{path}: the owner's signature over the key does not verify; the key was "
                "modified or re-written by someone else"
            ) from None
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
    raw = _read_bytes(path, "ONNX file")
    try:
        proto = onnx.load_from_string(raw)
        meta = {p.key: p.value for p in proto.metadata_props}
        man = json.loads(meta[_ONNX_MANIFEST])
        want = meta[_ONNX_DIGEST]
    except (DecodeError, KeyError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
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
    validate(OnnxManifest, man, path, "ONNX manifest", "; export it again with `deepserial export --format onnx`")
    return raw, man
