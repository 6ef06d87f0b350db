"""The vendor's DSN workflow as functions: train a teacher, issue a customer model, evaluate it.

The CLI, the demo and the reproductions all call these, so the three never drift apart. Files:

- teacher / customer models: safetensors + embedded manifest (:mod:`deepserial.artifacts`); the
  manifest records the data set, split seed and fractions, so later steps use the same split;
- licence record (``*.licence.json``, mode 0600, owner-only): the verifier string, the owner's
  signature, the serial-number geometry and the owner's public key. The signature is the secret the
  serial number is derived from; the customer receives only the product key.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepserial.artifacts import LoadedModel, encode_model
from deepserial.attacks.base import Attack, AttackBudget, attacker_share, resulting_arch
from deepserial.data import Splits, TensorData, load_dataset, split
from deepserial.errors import ConfigError, DeepSerialError, IdentityError, IntegrityError
from deepserial.files import atomic_write_all
from deepserial.fingerprint import DEFAULT_QUERIES, Fingerprint
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.nets import SplitNet, check_visible, create_model
from deepserial.ownership import OwnershipKey, Provenance, Verdict
from deepserial.report import environment
from deepserial.schema import LicenceDoc, validate
from deepserial.schemes import dsn
from deepserial.schemes.base import Scheme, get_scheme
from deepserial.serial import SerialGeometry, SerialNumber, scale_for, stamp
from deepserial.suspect import ModuleSuspect, Suspect
from deepserial.training import (
    TrainConfig,
    TrainLog,
    accuracy,
    fit,
    predict_logits,
    seed_everything,
    supervised_loss,
)

LICENCE_FORMAT = "deepserial-licence/1"
DEFAULT_SN_SIZE = (6, 6)
PAPER_SN_SIZE = (3, 3)


@dataclass(frozen=True)
class DataSpec:
    """Which data and which split: recorded in every manifest so later steps see the same parts."""

    name: str = "mnist5k"
    seed: int = 0
    test_fraction: float = 0.2
    attacker_fraction: float = 0.4
    limit: int | None = None

    def load(self) -> Splits:
        bundle = load_dataset(self.name, limit=self.limit)
        return split(bundle, self.seed, test_fraction=self.test_fraction, attacker_fraction=self.attacker_fraction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "attacker_fraction": self.attacker_fraction,
            "limit": self.limit,
        }

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> DataSpec:
        d = manifest.get("dataset")
        if not isinstance(d, dict) or "name" not in d:
            raise IntegrityError("model manifest does not record its data set; pass --dataset explicitly")
        return cls(
            name=d["name"],
            seed=int(d["seed"]),
            test_fraction=float(d["test_fraction"]),
            attacker_fraction=float(d["attacker_fraction"]),
            limit=d.get("limit"),
        )


def parse_size(text: str) -> tuple[int, int]:
    """``"6x6"`` -> (6, 6)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"serial-number size {text!r} must look like HxW, e.g. 6x6") from None
    if h < 1 or w < 1:
        raise ConfigError(f"serial-number size {text!r} must be positive")
    return h, w


def parse_position(text: str | None) -> tuple[int, int] | None:
    """``"auto"``/None -> None (choose inside the visible field); ``"20,20"`` -> (20, 20)."""
    if text in (None, "", "auto"):
        return None
    try:
        r, c = (int(v) for v in str(text).split(","))
    except ValueError:
        raise ConfigError(f"position {text!r} must be 'auto' or ROW,COL, e.g. 20,20") from None
    return r, c


def parse_pixels_per_bit(text: str) -> int | None:
    """``"auto"``/``""`` -> None (:func:`deepserial.serial.scale_for` decides from the input size);
    ``"4"`` -> 4. The pixels per bit side of a serial number, 1..32."""
    if text in ("", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 32:
        raise ConfigError(f"--pixels-per-bit {text!r} must be 'auto' or a whole number 1..32")
    return n


def parse_settings(items: list[str] | None) -> dict[str, Any]:
    """``name=value`` pairs (a scheme's or an attack's ``--set``) -> a dict; values are parsed as JSON
    when they are JSON (``0.01``, ``true``, ``[1, 2]``), else kept as strings (``mode=RTAL``). The
    scheme or attack validates the result against its own settings model."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set {item!r} must look like name=value, e.g. --set alpha=0.01")
        try:
            out[name] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON (JSONDecodeError), or nested beyond the parser
            out[name] = value
    return out


# ----- teacher ---------------------------------------------------------------------------------------
@dataclass
class Trained:
    model: SplitNet
    manifest: dict[str, Any]
    log: TrainLog
    splits: Splits


def train_teacher(data: DataSpec, train: TrainConfig, arch: str = "dsn_mnist") -> Trained:
    """Train the owner's private teacher on the owner part of the split (plain cross-entropy)."""
    splits = data.load()
    shape = tuple(splits.owner.x.shape[1:])
    num_classes = int(max(splits.owner.y.max(), splits.test.y.max())) + 1
    seed_everything(train.seed)  # initial weights too, not only the training order
    model = create_model(arch, shape, num_classes)
    log = fit(model, splits.owner, supervised_loss, train, desc="teacher")
    manifest = {
        "arch": arch,
        "input_shape": list(shape),
        "num_classes": num_classes,
        "normalisation": "[0,1]",
        "role": "teacher",
        "scheme": None,
        "dataset": data.to_dict(),
        "train_seed": train.seed,
        "test_acc": accuracy(model, splits.test),
        "train_wall_s": log.wall_s,
        "environment": environment(),
    }
    return Trained(model, manifest, log, splits)


# ----- issuing -------------------------------------------------------------------------------------
@dataclass
class Issued:
    """A freshly issued customer model with everything the vendor needs to hand over and keep."""

    student: SplitNet
    serial: SerialNumber
    manifest: dict[str, Any]
    licence: dict[str, Any]
    log: TrainLog
    splits: Splits
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def product_key(self) -> str:
        return self.serial.to_product_key()


def choose_geometry(
    model: SplitNet,
    input_shape: tuple[int, int, int],
    size: tuple[int, int],
    position: tuple[int, int] | None,
    margin: int | None = None,
    scale: int | None = None,
    amplitude: int = 0,
) -> SerialGeometry:
    """The serial-number geometry: an explicit position (checked against the visible field) or the
    default corner inside the visible field. ``scale`` (pixels per bit side) defaults to
    :func:`deepserial.serial.scale_for` of the input: 1 up to 95 pixels, so MNIST-size keys are unscaled.
    ``amplitude``: how loudly the bits are written (the recipe's ``DSNConfig.amplitude``)."""
    scale = scale_for(input_shape) if scale is None else int(scale)
    if position is None:
        if margin is None:
            margin = 3 if size[0] * size[1] <= 9 else 0
        return dsn.default_geometry(model, input_shape, size[0], size[1], margin * scale, scale, amplitude)
    g = SerialGeometry(size[0], size[1], position[0], position[1], scale=scale, amplitude=amplitude)
    check_visible(model, g, input_shape)
    return g


def issue(
    teacher: LoadedModel,
    identity: OwnerIdentity,
    customer: str,
    *,
    owner_id: str | None = None,
    size: tuple[int, int] = DEFAULT_SN_SIZE,
    position: tuple[int, int] | None = None,
    config: dsn.DSNConfig | None = None,
    train: TrainConfig | None = None,
    arch: str | None = None,
    scale: int | None = None,
    fingerprint_queries: int = DEFAULT_QUERIES,
) -> Issued:
    """Sign a verifier string for ``customer``, derive its serial number and distil a customer model
    carrying the licence's tracing fingerprint (:mod:`deepserial.fingerprint`; ``fingerprint_queries``
    0 leaves it out).

    The geometry is validated against the student network before any training starts.
    """
    if not customer.strip():
        raise ConfigError("customer name must not be empty")
    config = config or dsn.DSNConfig.default()
    train = train or TrainConfig()
    data = DataSpec.from_manifest(teacher.manifest)
    shape = teacher.input_shape
    arch = arch or teacher.manifest["arch"]
    seed_everything(train.seed)  # initial weights too, not only the training order
    student = create_model(arch, shape, int(teacher.manifest["num_classes"]))
    geometry = choose_geometry(student, shape, size, position, scale=scale, amplitude=config.amplitude)
    verifier = VerifierString.now(owner_id or identity.fingerprint(), customer, dsn.SCHEME)
    signature = identity.sign(verifier)
    serial = SerialNumber.from_signature(signature, geometry)
    splits = data.load()
    classes = int(teacher.manifest["num_classes"])
    fp = (
        Fingerprint.for_licence(identity, verifier, shape, classes, fingerprint_queries)
        if fingerprint_queries
        else None
    )
    log = dsn.train_student(student, teacher.model, splits.owner, serial, config, train, fingerprint=fp)
    manifest = {
        "arch": arch,
        "input_shape": list(shape),
        "num_classes": int(teacher.manifest["num_classes"]),
        "normalisation": "[0,1]",
        "role": "customer",
        "scheme": dsn.SCHEME,
        "serial_geometry": geometry.to_dict(),
        "licence": verifier.to_dict(),
        "owner_fingerprint": identity.fingerprint(),
        "dataset": data.to_dict(),
        "dsn_config": config.model_dump(),
        "fingerprint": fp.describe() if fp else None,
        "train_seed": train.seed,
        "train_epochs": train.epochs,
        "train_wall_s": log.wall_s,
        "environment": environment(),
    }
    licence = {
        "format": LICENCE_FORMAT,
        "scheme": dsn.SCHEME,
        "verifier": verifier.to_dict(),
        "signature": signature.hex(),
        "geometry": geometry.to_dict(),
        "owner_public_key": identity.public_pem().decode(),
    }
    return Issued(student, serial, manifest, licence, log, splits)


def licence_bytes(issued: Issued, model_sha256: str) -> bytes:
    """The owner's licence record of ``issued`` as written to disk (JSON), bound to the model's digest."""
    return (json.dumps(dict(issued.licence, model_sha256=model_sha256), indent=2) + "\n").encode()


def save_issued(
    issued: Issued, model_path: str | Path, licence_path: str | Path, identity: OwnerIdentity
) -> dict[str, Any]:
    """Write the customer model (signed by the owner) and the owner's licence record (mode 0600), both
    or neither; returns the model's manifest as written."""
    data, man = encode_model(issued.student, issued.manifest, owner=identity)
    atomic_write_all(
        [(model_path, data, None), (licence_path, licence_bytes(issued, man["integrity"]["sha256"]), 0o600)]
    )
    return man


def read_licence(path: str | Path) -> LicenceDoc:
    """The owner's licence record at ``path``, validated field by field (one-line IntegrityError if
    it cannot be read, is not JSON, or any field has the wrong type or range)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise IntegrityError(f"cannot read licence record {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise IntegrityError(f"cannot read licence record {path}: not JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(rec, dict) and rec.get("format") != LICENCE_FORMAT:
        raise IntegrityError(f"{path} is not a deepserial licence record ({LICENCE_FORMAT})")
    return validate(LicenceDoc, rec, path, "licence record", "; use the licence record written by `deepserial issue`")


def serial_from_licence(path: str | Path) -> SerialNumber:
    """Re-derive a customer's serial number from the owner's licence record, checking its signature."""
    rec = read_licence(path)
    try:
        owner = OwnerIdentity.from_public_pem(rec.owner_public_key, f"the owner key in licence record {path}")
    except IdentityError as e:
        raise IntegrityError(str(e)) from None
    signature = bytes.fromhex(rec.signature)
    verifier = VerifierString(**rec.verifier.model_dump())
    owner.verify(verifier, signature)
    return SerialNumber.from_signature(signature, rec.geometry.geometry())


# ----- evaluation ----------------------------------------------------------------------------------
def evaluate_customer(
    customer: LoadedModel,
    serial: SerialNumber,
    *,
    teacher: LoadedModel | None = None,
    splits: Splits | None = None,
    n_wrong: int = 1000,
    wrong_eval_samples: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The DSN evaluation report of a customer model (fields of ``dsn_report.json``)."""
    expect = SerialGeometry.from_dict(customer.manifest["serial_geometry"])
    if serial.geometry != expect:
        raise IdentityError(
            f"serial number is for {serial.geometry.describe()} but the model expects {expect.describe()}"
        )
    data = DataSpec.from_manifest(customer.manifest)
    splits = splits or data.load()
    t0 = time.perf_counter()
    res = dsn.evaluate(
        customer.model,
        serial,
        splits.test,
        splits.attacker,
        teacher=teacher.model if teacher else None,
        n_wrong=n_wrong,
        wrong_eval_samples=wrong_eval_samples,
        seed=seed,
    )
    return {
        **res,
        "serial_bits": serial.geometry.nbits,
        "serial_geometry": serial.geometry.to_dict(),
        "mode": customer.manifest.get("dsn_config", {}).get("mode"),
        "seed": seed,
        "dataset": data.to_dict(),
        "sizes": splits.sizes(),
        "timings": {
            "student_train_s": customer.manifest.get("train_wall_s"),
            "teacher_train_s": teacher.manifest.get("train_wall_s") if teacher else None,
            "evaluate_s": time.perf_counter() - t0,
        },
        "environment": environment(),
    }


REPORT_FIELDS = [
    "teacher_acc",
    "valid_sn_acc",
    "raw_acc",
    "wrong_sn_mean",
    "wrong_sn_max",
    "hamming1_mean",
    "hamming1_max",
    "hamming2_mean",
    "hamming2_max",
    "probe_acc",
]


def loaded(model: SplitNet, manifest: dict[str, Any]) -> LoadedModel:
    """Wrap an in-memory model and its manifest like a model read from disk."""
    return LoadedModel(model, manifest)


def torch_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads (None: PyTorch's default)."""
    if n:
        torch.set_num_threads(n)


def classify(customer: LoadedModel, serial: SerialNumber, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes a customer model predicts for the images ``x`` stamped with ``serial``, and the
    softmax confidence of each (what ``deepserial predict`` prints)."""
    probs = torch.softmax(predict_logits(customer.model, stamp(x, serial.geometry, serial.as_tensor())), 1)
    conf, pred = probs.max(1)
    return pred, conf


# ----- ownership watermarks ------------------------------------------------------------------------
@dataclass
class Marked:
    """A model that carries an ownership watermark, with its key and provenance."""

    model: SplitNet
    manifest: dict[str, Any]
    key: OwnershipKey
    log: TrainLog
    splits: Splits


def embed_watermark(
    scheme: Scheme,
    identity: OwnerIdentity,
    data: DataSpec,
    train: TrainConfig,
    *,
    arch: str = "dsn_mnist",
    subject: str = "model",
    owner_id: str | None = None,
    base: LoadedModel | None = None,
) -> Marked:
    """Sign a verifier string for ``subject``, derive the scheme's key from the signature and train a
    network from scratch with it (or fine-tune ``base``, for schemes embedded after training)."""
    splits = data.load()
    shape = tuple(splits.owner.x.shape[1:])
    num_classes = int(max(splits.owner.y.max(), splits.test.y.max())) + 1
    seed_everything(train.seed)
    if base is None and getattr(scheme, "fine_tunes", False):
        raise ConfigError(
            f"{scheme.name} is embedded by fine-tuning a trained model: pass it as --base "
            "(train one with `deepserial teacher`)"
        )
    if base is not None:
        if int(base.manifest.get("task_classes", base.manifest["num_classes"])) != num_classes:
            raise ConfigError(f"base model has {base.manifest['num_classes']} classes, the data {num_classes}")
        model, arch = base.model, base.manifest["arch"]
    else:
        model = create_model(arch, shape, scheme.num_outputs(num_classes))
    prov = Provenance.sign(identity, owner_id or identity.fingerprint(), subject, scheme.name)
    key = scheme.make_signed_key(prov, splits.owner, num_classes, model=model)
    log = scheme.embed(model, splits.owner, key, train)
    manifest = {
        "arch": arch,
        "input_shape": list(shape),
        "num_classes": int(scheme.num_outputs(num_classes)),
        "task_classes": num_classes,
        "normalisation": "[0,1]",
        "role": "watermarked",
        "scheme": scheme.name,
        "owner_fingerprint": identity.fingerprint(),
        "dataset": data.to_dict(),
        "train_seed": train.seed,
        "train_epochs": train.epochs,
        "train_wall_s": log.wall_s,
        "test_acc": accuracy(model, splits.test),
        "environment": environment(),
    }
    key.meta.setdefault("config", scheme.config.model_dump())
    return Marked(model, manifest, key, log, splits)


def verify_watermark(key: OwnershipKey, suspect: Suspect, fpr: float = 1e-3, check_signature: bool = True) -> Verdict:
    """The verdict of ``key``'s scheme on ``suspect``; first checks the key's owner signature when it
    carries one (a key without provenance is verified as is when ``check_signature`` is False)."""
    if check_signature:
        Provenance.from_meta(key.meta).check()
    scheme = get_scheme(key.scheme, key.meta.get("config"))
    return scheme.verify(suspect, key, fpr=fpr)


# ----- attacks ---------------------------------------------------------------------------------------
def measure_model(
    model: SplitNet,
    splits: Splits,
    *,
    task_classes: int | None = None,
    key: OwnershipKey | None = None,
    serial: SerialNumber | None = None,
    fpr: float = 1e-3,
) -> dict[str, Any]:
    """What an attack report states about a model: test accuracy (raw inputs), accuracy with the
    serial number stamped (DSN), and the ownership verdict of ``key``. A model whose outputs no longer
    match the task (transfer to other labels) gets None for the accuracies and the refusal as verdict."""
    out_features = int(model.classifier.out_features)
    same_task = task_classes is None or out_features >= task_classes
    rep: dict[str, Any] = {"outputs": out_features, "test_acc": accuracy(model, splits.test) if same_task else None}
    if serial is not None:
        stamped = TensorData(stamp(splits.test.x, serial.geometry, serial.as_tensor()), splits.test.y)
        rep["with_serial_acc"] = accuracy(model, stamped) if same_task else None
    if key is not None:
        shape = tuple(int(s) for s in splits.test.x.shape[1:])
        try:
            rep["verdict"] = verify_watermark(key, ModuleSuspect(model, shape), fpr=fpr).to_dict()
        except DeepSerialError as e:  # e.g. the attacked model answers other labels: no verdict possible
            rep["verdict"] = {"decision": False, "error": str(e)}
    return rep


def attack_model(
    target: LoadedModel,
    attack: Attack,
    budget: AttackBudget,
    *,
    fraction: float | None = None,
    key: OwnershipKey | None = None,
    serial: SerialNumber | None = None,
    data: DataSpec | None = None,
    fpr: float = 1e-3,
) -> tuple[SplitNet, dict[str, Any]]:
    """Run ``attack`` (an :class:`deepserial.attacks.base.Attack`) on ``target`` with the attacker's
    split of the data the model was trained on (``fraction`` of the training data, else all of the
    attacker's split) and report the model before and after (:func:`measure_model`)."""
    splits = (data or DataSpec.from_manifest(target.manifest)).load()
    attacker = splits.attacker
    if fraction is not None:
        attacker = attacker_share(attacker, fraction, len(splits.owner) + len(splits.attacker), budget.seed)
    classes = int(target.manifest.get("task_classes", target.manifest["num_classes"]))
    before = measure_model(target.model, splits, task_classes=classes, key=key, serial=serial, fpr=fpr)
    attacked, log = attack.run(target.model, attacker, budget)
    after = measure_model(attacked, splits, task_classes=classes, key=key, serial=serial, fpr=fpr)
    report = {
        "attack": attack.name,
        "citation": attack.citation,
        "fraction": fraction,
        "attacker_samples": len(attacker),
        "before": before,
        "after": after,
        "log": log.to_dict(),
    }
    return attacked, report


def attacked_manifest(
    target: LoadedModel, attacked: SplitNet, report: dict[str, Any], *, name: str, source: str
) -> dict[str, Any]:
    """The manifest of a file holding ``attacked``, the model :func:`attack_model` returned for ``target``
    (read from ``source``) with the attack registered as ``name``: the target's provenance, the network
    the attack left (a retrained student names its own), its outputs, the attack with its budget, and
    its test accuracy."""
    man = {k: v for k, v in target.manifest.items() if k not in ("integrity", "format")}
    return man | {
        "arch": resulting_arch(target.manifest["arch"], report["log"]),
        "role": "attacked",
        "num_classes": int(attacked.classifier.out_features),
        "attack": {
            "name": name,
            "budget": report["log"]["budget"],
            "fraction": report["fraction"],
            "source": source,
        },
        "test_acc": report["after"]["test_acc"],
    }


def attack_summary(report: dict[str, Any], name: str) -> list[str]:
    """The lines ``deepserial attack`` prints for a report of :func:`attack_model` by the attack
    registered as ``name``: what it spent, then accuracy, accuracy with the serial number and the
    watermark verdict before and after."""
    log = report["log"]
    lines = [
        f"{name}: {report['attacker_samples']} attacker samples, {log['epochs']} epochs, "
        f"{log['forward_samples']} forward samples, {log['queries']} queries, {log['wall_s']:.1f} s"
    ]
    for when in ("before", "after"):
        r = report[when]
        parts = [f"test acc {r['test_acc']:.2f}%" if r["test_acc"] is not None else "test acc n/a (other labels)"]
        if "with_serial_acc" in r and r["with_serial_acc"] is not None:
            parts.append(f"with serial number {r['with_serial_acc']:.2f}%")
        if "verdict" in r:
            v = r["verdict"]
            parts.append(
                "watermark "
                + ("verified" if v.get("decision") else "NOT verified")
                + (f" (p = {v['p_value']:.3g})" if v.get("p_value") is not None else f" ({v.get('error')})")
            )
        lines.append(f"  {when:6s} " + "; ".join(parts))
    return lines
