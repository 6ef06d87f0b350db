"""One schema for every JSON document deepserial reads back from disk.

Model manifests, ONNX manifests, ownership-key manifests, licence records and training-checkpoint
state are validated here, field by field, the moment they are read. A digest stops accidents and
naive edits, not someone who rewrites a file and recomputes it; without this check a manifest with
``"num_classes": "ten"`` or a serial-number geometry of ``-1`` rows passes the digest and crashes
later (``TypeError`` in ``predict``) or, worse, is printed by ``info`` as if it were fine. With it,
a bad field is refused as one line naming the field, before anything uses it.

The models are strict (no ``"3"`` for 3, no ``true`` for 1) and allow extra fields, so a newer
writer's additions do not make older readers refuse a file. Validation never changes a document:
callers keep the dict they read (its digest is over those exact bytes) once :func:`validate` passes.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from deepserial.errors import DeepSerialError, IntegrityError
from deepserial.serial import SerialGeometry

#: An owner signature or other binary value as lower- or upper-case hex of whole bytes.
Hex = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-fA-F]{2})+$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# Bounds a real network and data set never come near, low enough that nothing is allocated for a
# forged shape before the weights are compared with it.
Side = Annotated[int, Field(ge=1, le=8192)]
MAX_CHANNELS = 64
Classes = Annotated[int, Field(ge=2, le=1_000_000)]

D = TypeVar("D", bound=BaseModel)


class _Doc(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class GeometryDoc(_Doc):
    """A serial-number geometry (:class:`deepserial.serial.SerialGeometry`); its ranges are checked by
    constructing one, so the schema and the class can never disagree."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    height: int
    width: int
    top: int
    left: int
    channels: list[int] = []
    scale: int = 1
    guard: int = 0
    amplitude: int = 0

    @model_validator(mode="after")
    def _in_range(self) -> GeometryDoc:
        self.geometry()
        return self

    def geometry(self) -> Any:  # SerialGeometry (imported lazily: serial imports torch machinery)
        try:
            return SerialGeometry(
                self.height,
                self.width,
                self.top,
                self.left,
                tuple(self.channels),
                self.scale,
                self.guard,
                self.amplitude,
            )
        except DeepSerialError as e:
            raise ValueError(str(e)) from None


class VerifierDoc(_Doc):
    """The signed verifier string: exactly its four text fields (their bytes are what was signed)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    owner: str
    customer: str
    timestamp: str
    scheme: str


class IntegrityDoc(_Doc):
    sha256: Sha256
    signature: Hex | None = None
    owner_fingerprint: str | None = None


class DataSetDoc(_Doc):
    """The data set and split a model was trained on (:class:`deepserial.workflow.DataSpec`)."""

    name: Name
    seed: Annotated[int, Field(ge=0)]
    test_fraction: Fraction
    attacker_fraction: Fraction
    limit: Annotated[int, Field(ge=1)] | None = None


class _ManifestBase(_Doc):
    """The fields of a model manifest that readers use.

    Optional fields come in two kinds. Those a writer may set to null are typed ``X | None``. The
    others (``task_classes``, ``serial_geometry``, ``dsn_config``, ``environment``) may be absent but
    never null, because readers test ``"serial_geometry" in manifest`` (or ``.get`` with a default) and
    then use the value: their default is ``None`` typed as ``X``, which pydantic does not validate, so
    absence passes and an explicit null does not.
    """

    format: str
    arch: Name
    input_shape: Annotated[list[Side], Field(min_length=3, max_length=3)]  # (C, H, W)
    num_classes: Classes
    task_classes: Classes = None  # type: ignore[assignment]
    normalisation: str | dict[str, Any] | None = None
    role: str | None = None
    scheme: str | None = None
    serial_geometry: GeometryDoc = None  # type: ignore[assignment]
    licence: VerifierDoc | None = None
    owner_fingerprint: str | None = None
    dataset: DataSetDoc | None = None
    dsn_config: dict[str, Any] = None  # type: ignore[assignment]
    train_seed: int | None = None
    train_epochs: Annotated[int, Field(ge=0)] | None = None
    train_wall_s: Annotated[float, Field(ge=0.0)] | None = None
    test_acc: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    environment: dict[str, Any] = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _shape_and_serial(self) -> _ManifestBase:
        if self.input_shape[0] > MAX_CHANNELS:
            raise ValueError(f"input_shape has {self.input_shape[0]} channels, at most {MAX_CHANNELS} are supported")
        if self.serial_geometry is not None:
            try:
                self.serial_geometry.geometry().check_fits(self.input_shape)
            except DeepSerialError as e:
                raise ValueError(str(e)) from None
        return self


class ModelManifest(_ManifestBase):
    """The manifest in a model file's safetensors header (:mod:`deepserial.artifacts`)."""

    integrity: IntegrityDoc


class OnnxManifest(_ManifestBase):
    """The manifest in an ONNX export's metadata: a model manifest without its integrity block (the
    export carries its own digest) and with the digest of the model it was exported from."""

    source_sha256: Sha256 | None = None


class KeyMetaDoc(_Doc):
    """The parts of an ownership key's ``meta`` every scheme shares: its provenance and settings."""

    verifier: VerifierDoc | None = None
    signature: Hex | None = None
    owner_public_key: str | None = None
    config: dict[str, Any] | None = None


class KeyManifest(_Doc):
    """The manifest in an ownership-key file (:func:`deepserial.artifacts.save_key`)."""

    format: str
    scheme: Name
    meta: KeyMetaDoc
    integrity: IntegrityDoc


class LicenceDoc(_Doc):
    """The owner's licence record of one customer model (:func:`deepserial.workflow.save_issued`)."""

    format: str
    scheme: str
    verifier: VerifierDoc
    signature: Hex
    geometry: GeometryDoc
    owner_public_key: str
    model_sha256: Sha256 | None = None


class CheckpointLog(_Doc):
    epochs: list[dict[str, Any]]
    forward_samples: Annotated[int, Field(ge=0)]
    wall_s: Annotated[float, Field(ge=0.0)]


class CheckpointDoc(_Doc):
    """The JSON half of a training checkpoint (:mod:`deepserial.training`): everything but tensors."""

    format: str
    epoch: Annotated[int, Field(ge=0)]
    log: CheckpointLog
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]


def validate(doc_type: type[D], data: Any, where: object, what: str, hint: str = "") -> D:
    """``data`` as a ``doc_type`` or :class:`IntegrityError` naming ``where`` and the first bad field.

    ``what`` says what the document is ("model manifest", "licence record"); ``hint`` (starting with
    "; ") says how to get a good one. The message is one line whatever the input holds.
    """
    if not isinstance(data, dict):
        raise IntegrityError(f"{where}: the {what} is not a JSON object{hint}")
    try:
        return doc_type.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = " ".join(str(err["msg"]).removeprefix("Value error, ").split())[:200]
        if not err["loc"]:
            raise IntegrityError(f"{where}: {what} is invalid ({msg}){hint}") from None
        field = ".".join(str(p) for p in err["loc"])
        raise IntegrityError(f"{where}: {what} field {field!r} is invalid ({msg}){hint}") from None
