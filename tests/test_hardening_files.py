"""Hostile files and paths through the library and the ``deepserial`` command.

Each class of problem found by probing the command from outside is re-tried here: a pickle that runs
code, output paths that cannot be written, empty batches, manifests, keys and licence records
rewritten with a recomputed digest, damaged PEM files, empty passphrases, secrets in reports, and
failures half-way through writing. The promise under test is the same for all: no traceback (exit
status 2 and one ``deepserial: error:`` line), no code executed, nothing partial left on disk.
The property tests at the end fuzz the command's input parsing with hypothesis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from deepserial import files, workflow
from deepserial.artifacts import _digest, encode_model, load_key, load_model, read_manifest, save_key
from deepserial.cli import main
from deepserial.data import TensorData
from deepserial.errors import ConfigError, DeepSerialError, IdentityError, IntegrityError
from deepserial.files import atomic_write_all, check_writable
from deepserial.identity import OwnerIdentity
from deepserial.nets import create_model
from deepserial.schemes.base import OwnershipKey
from deepserial.training import TrainConfig, fit, supervised_loss
from deepserial.workflow import parse_pixels_per_bit, parse_position, parse_size, serial_from_licence

if TYPE_CHECKING:
    from conftest import Vendor

ERROR_PREFIX = "deepserial: error: "
FUZZ = settings(
    max_examples=int(os.environ.get("DEEPSERIAL_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient passphrase or serial; run in an empty folder so default outputs land there."""
    for name in ("DEEPSERIAL_PASSPHRASE", "DEEPSERIAL_SERIAL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def listing(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden temporaries included) with its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """Run the command in-process: it must return an int, never raise; a failure is exactly one line."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert isinstance(rc, int)
    assert "Traceback" not in err
    if rc == 2 and err.startswith(ERROR_PREFIX):
        assert len(err.strip().splitlines()) == 1, f"not one line: {err!r}"
    return rc, out, err


def user_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run a command that must fail as a user error: exit status 2 and one line naming the problem."""
    rc, out, err = cli(capsys, argv)
    assert rc == 2, f"{argv} returned {rc}: {out!r} {err!r}"
    assert err.startswith(ERROR_PREFIX) and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle.lower() in err.lower(), f"{needle!r} not in {err!r}"
    return err.strip()


def forbid(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    """Make ``target.name`` fail the test if called: the command must stop before that work."""

    def called(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} ran although the output path was bad")

    monkeypatch.setattr(target, name, called)


def manifest_of(raw: bytes) -> dict[str, Any]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["deepserial"])


def forge(src: Path, dst: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Rewrite a model or key file with an edited manifest and a *recomputed* digest, as an attacker
    who knows the format would: only the owner signature (dropped here) could tell."""
    raw = src.read_bytes()
    tensors = st_load(raw)
    man = manifest_of(raw)
    edit(man)
    man["integrity"] = {"sha256": _digest(man, tensors)}
    dst.write_bytes(st_save(tensors, metadata={"deepserial": json.dumps(man)}))


@pytest.fixture
def npz(vendor: Vendor, tmp_path: Path) -> Path:
    path = tmp_path / "x.npz"
    np.savez(path, x=vendor.splits.test.x[:3].numpy())
    return path


# ----- code execution --------------------------------------------------------------------------------
class _RunsCode:
    """A pickle payload: unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def malicious_checkpoints(tmp_path: Path, marker: Path) -> list[Path]:
    """The payload as a bare pickle and in torch.save's zip container (what ``--checkpoint`` used to load)."""
    payload = _RunsCode(marker)
    pickle.loads(pickle.dumps(payload))  # proof that the payload is live: it does create the marker
    assert marker.exists()
    marker.unlink()
    bare = tmp_path / "bare.ckpt"
    bare.write_bytes(pickle.dumps({"model": payload, "epoch": 0}))
    zipped = tmp_path / "zipped.ckpt"
    torch.save({"model": payload, "epoch": 0}, zipped)
    return [bare, zipped]


def test_a_malicious_pickle_checkpoint_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = TensorData(torch.rand(32, 1, 12, 12), torch.randint(0, 4, (32,)))
    for ckpt in malicious_checkpoints(tmp_path, marker):
        before = ckpt.read_bytes()
        model = create_model("dsn_mnist", (1, 12, 12), 4)
        with pytest.raises(ConfigError, match="cannot resume") as e:
            fit(model, data, supervised_loss, TrainConfig(epochs=1, batch_size=16, progress=False, checkpoint=ckpt))
        assert "\n" not in str(e.value)
        assert not marker.exists(), "unpickling the checkpoint ran code"
        assert ckpt.read_bytes() == before


def test_the_cli_refuses_a_malicious_checkpoint_without_running_it(capsys, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for ckpt in malicious_checkpoints(tmp_path, marker):
        out = tmp_path / f"t-{ckpt.stem}.safetensors"
        argv = ["teacher", "--out", str(out), "--limit", "100", "--epochs", "1", "--checkpoint", str(ckpt), "-q"]
        user_error(capsys, argv, "cannot resume", str(ckpt))
        assert not marker.exists()
        assert not out.exists()


def test_a_checkpoint_is_safetensors_and_a_forged_one_is_refused(tmp_path: Path) -> None:
    data = TensorData(torch.rand(32, 1, 12, 12), torch.randint(0, 4, (32,)))
    ckpt = tmp_path / "run.ckpt"
    fit(
        create_model("dsn_mnist", (1, 12, 12), 4),
        data,
        supervised_loss,
        TrainConfig(epochs=1, progress=False, checkpoint=ckpt),
    )
    raw = ckpt.read_bytes()
    state = manifest_of(raw)  # a safetensors header, no pickle anywhere
    assert state["format"] == "deepserial-checkpoint/1" and state["epoch"] == 0
    assert any(k.startswith("optimizer/") for k in st_load(raw))
    for bad in ({"epoch": "0"}, {"epoch": -1}, {"log": []}, {"optimizer": {"param_groups": "x"}}):
        tensors = st_load(raw)
        ckpt.write_bytes(st_save(tensors, metadata={"deepserial": json.dumps(state | bad)}))
        with pytest.raises(ConfigError, match="cannot resume"):
            fit(
                create_model("dsn_mnist", (1, 12, 12), 4),
                data,
                supervised_loss,
                TrainConfig(epochs=2, progress=False, checkpoint=ckpt),
            )


# ----- output paths ----------------------------------------------------------------------------------
def test_check_writable(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "deeper" / "file.json", None)  # creatable: fine, and nothing created
    check_writable(tmp_path / "new-folder", directory=True)
    assert listing(tmp_path) == {} and not (tmp_path / "new").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for path, kw, needle in [
        (blocker / "out.json", {}, "is a file, not a folder"),
        (blocker / "sub" / "out.json", {}, "is a file, not a folder"),
        (tmp_path, {}, "is a folder"),
        (blocker, {"directory": True}, "is a file, not a folder"),
    ]:
        with pytest.raises(ConfigError, match=needle) as e:
            check_writable(path, **kw)
        assert "\n" not in str(e.value)
    assert listing(tmp_path) == {"a-file": hashlib.sha256(b"x").hexdigest()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_check_writable_where_no_file_can_be_created() -> None:
    """/proc refuses new files even to root: the probe file, not a permission bit, decides."""
    with pytest.raises(ConfigError, match="cannot write /proc/deepserial-test.json"):
        check_writable(Path("/proc/deepserial-test.json"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_check_writable_permission_denied(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="Permission denied"):
            check_writable(locked / "out.json")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    ("argv", "module", "work"),
    [
        (["keygen", "--out", "{bad}/k.pem"], None, None),
        (["teacher", "--out", "{bad}/t.safetensors"], workflow, "train_teacher"),
        (["teacher", "--out", "t.safetensors", "--checkpoint", "{bad}/c.ckpt"], workflow, "train_teacher"),
        (
            ["evaluate", "--model", "{customer}", "--serial", "{key}", "--out", "{bad}/r.json"],
            workflow,
            "evaluate_customer",
        ),
        (["demo", "--out", "{bad}/demo"], workflow, "train_teacher"),
        (["watermark", "embed", "--scheme", "uchida", "--out", "{bad}/m.safetensors"], workflow, "embed_watermark"),
        (
            ["watermark", "embed", "--scheme", "uchida", "--out", "m.safetensors", "--key-out", "{bad}/m.key"],
            workflow,
            "embed_watermark",
        ),
        (["attack", "fine-tuning", "--model", "{customer}", "--out", "{bad}/a.safetensors"], workflow, "attack_model"),
        (["attack", "fine-tuning", "--model", "{customer}", "--report", "{bad}/a.json"], workflow, "attack_model"),
        (["export", "{customer}", "--out", "{bad}/m.onnx"], None, None),
        (["reproduce", "dsn", "--out", "{bad}/reports"], None, None),
        (["reproduce", "uchida", "--out", "{bad}/reports"], None, None),
        (["data", "cifar-digits", "--out", "{bad}/cifar"], None, None),
    ],
    ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None,
)
def test_an_unwritable_output_fails_before_the_work(
    capsys,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    vendor: Vendor,
    argv: list[str],
    module: Any,
    work: str | None,
) -> None:
    """A parent that is a file is refused in a second with one line, before any training or evaluation
    (the work is replaced by a function that fails the test), and nothing is written."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    if module is not None:
        forbid(monkeypatch, module, work)
    before = listing(tmp_path)
    fill = {"bad": str(blocker), "customer": str(vendor.customer_path), "key": vendor.product_key}
    user_error(capsys, [a.format(**fill) for a in argv], "cannot write", "blocker")
    assert listing(tmp_path) == before


# ----- nothing partial on disk -----------------------------------------------------------------------
def test_a_failed_group_write_leaves_none_of_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "old.json"
    old.write_text("old")
    real_replace = os.replace
    calls: list[object] = []

    def second_fails(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", second_fails)
    with pytest.raises(ConfigError, match="No space left on device") as e:
        atomic_write_all(
            [(tmp_path / "new.bin", b"new", None), (old, b"replaced", None), (tmp_path / "c", b"c", 0o600)]
        )
    assert "\n" not in str(e.value)
    assert listing(tmp_path) == {"old.json": hashlib.sha256(b"old").hexdigest()}  # no new file, no temporary


def test_stray_temps_names_exactly_what_a_killed_write_of_that_path_leaves(tmp_path: Path) -> None:
    """What ``ledger check --repair`` deletes after a crash: the temporary files a write of that path
    made (as ``_temp_copy`` names them), never another path's, whatever characters the name holds."""
    target = tmp_path / "c[1].safetensors"
    left = files._temp_copy(target, b"half a model", None)  # what a write killed before its rename leaves
    neighbours = [
        files._temp_copy(tmp_path / "c[1].safetensors.bak", b"x", None),  # another file's write
        files._temp_copy(tmp_path / "c1.safetensors", b"x", None),
        tmp_path / f".{target.name}.notahex0000.tmp",
        tmp_path / f".{target.name}.tmp",
    ]
    for p in neighbours[2:]:
        p.write_bytes(b"x")
    assert files.stray_temps(target) == [left]
    assert files.stray_temps(tmp_path / "missing" / "c1.safetensors") == []
    assert files.stray_temps(left / "inside-a-file") == []


def test_a_key_pair_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def public_half_fails(src: object, dst: object) -> None:
        if str(dst).endswith(".pub.pem"):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", public_half_fails)
    with pytest.raises(ConfigError, match="owner.pub.pem"):
        OwnerIdentity.generate().save(tmp_path / "owner.pem")
    assert listing(tmp_path) == {}


def test_a_customer_model_and_its_licence_are_written_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vendor: Vendor
) -> None:
    issued = workflow.Issued(
        vendor.customer().model,
        vendor.serial,
        vendor.customer().manifest,
        json.loads(vendor.licence_path.read_text()),
        None,
        None,
    )  # type: ignore[arg-type]
    real_replace = os.replace

    def licence_fails(src: object, dst: object) -> None:
        if str(dst).endswith(".licence.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", licence_fails)
    with pytest.raises(ConfigError, match="licence.json"):
        workflow.save_issued(issued, tmp_path / "c.safetensors", tmp_path / "c.licence.json", vendor.identity)
    assert listing(tmp_path) == {}


def test_demo_writes_nothing_when_it_fails_and_keeps_the_product_key_out_of_its_report(
    capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def teacher_fails(*args: object, **kwargs: object) -> None:
        raise ConfigError("simulated failure while training")

    with monkeypatch.context() as m:
        m.setattr(workflow, "train_teacher", teacher_fails)
        user_error(capsys, ["demo", "--out", "demo", "-q"], "simulated failure")
    assert listing(tmp_path) == {}  # no owner key left behind from before the failure

    @dataclasses.dataclass(frozen=True)
    class SmallData(workflow.DataSpec):
        limit: int | None = 600

    monkeypatch.setattr(workflow, "DataSpec", SmallData)
    argv = ["demo", "--out", "demo", "--size", "3x3", "--teacher-epochs", "1", "--epochs", "1", "--n-wrong", "3"]
    rc, out, _ = cli(capsys, [*argv, "--wrong-samples", "10", "-q"])
    assert rc == 0
    key = out.strip().splitlines()[-1].rsplit(" ", 1)[1]
    assert out.count(key) == 1  # shown once, on the terminal
    written = {p.name: p.read_bytes() for p in (tmp_path / "demo").iterdir()}
    assert sorted(written) == sorted(
        ["owner.pem", "owner.pub.pem", "teacher.safetensors", "customer.safetensors", "customer.licence.json"]
        + ["dsn_report.json", "dsn_report.md"]
    )
    bare = key.replace("-", "").encode()
    for name, data in written.items():
        assert key.encode() not in data and bare not in data, f"{name} holds the product key"
    assert "product_key" not in json.loads(written["dsn_report.json"])
    for secret in ("owner.pem", "customer.licence.json"):
        assert (tmp_path / "demo" / secret).stat().st_mode & 0o077 == 0
    assert serial_from_licence(tmp_path / "demo" / "customer.licence.json").to_product_key() == key


# ----- inputs ----------------------------------------------------------------------------------------
def test_predict_on_an_empty_batch_is_one_line(capsys, vendor: Vendor, tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 1, 28, 28), np.float32))
    argv = ["predict", str(empty), "--model", str(vendor.customer_path), "--serial", vendor.product_key]
    user_error(capsys, argv, "no images", "empty.npz")


# ----- manifests, keys and licence records rewritten with a recomputed digest ------------------------
FORGED_MANIFESTS: dict[str, Callable[[dict[str, Any]], object]] = {
    "num_classes is text": lambda m: m.update(num_classes="ten"),
    "num_classes is a bool": lambda m: m.update(num_classes=True),
    "num_classes is huge": lambda m: m.update(num_classes=10**6),
    "input_shape too short": lambda m: m.update(input_shape=[1, 28]),
    "input_shape of text": lambda m: m.update(input_shape=["1", "28", "28"]),
    "input_shape enormous": lambda m: m.update(input_shape=[64, 8192, 8192]),
    "input_shape of another net": lambda m: m.update(input_shape=[3, 32, 32]),
    "unknown network": lambda m: m.update(arch="no-such-net"),
    "serial geometry negative": lambda m: m["serial_geometry"].update(height=-1),
    "serial geometry as text": lambda m: m["serial_geometry"].update(top="20"),
    "serial geometry off the image": lambda m: m["serial_geometry"].update(top=27),
    "serial geometry missing a field": lambda m: m["serial_geometry"].pop("width"),
    "serial geometry is a list": lambda m: m.update(serial_geometry=[3, 3]),
    "dataset is a list": lambda m: m.update(dataset=[]),
    "dataset fraction out of range": lambda m: m["dataset"].update(test_fraction=7),
    "dsn_config is null": lambda m: m.update(dsn_config=None),
    "task_classes is text": lambda m: m.update(task_classes="10"),
}


@pytest.mark.parametrize("edit", FORGED_MANIFESTS.values(), ids=FORGED_MANIFESTS.keys())
def test_a_forged_manifest_is_refused_by_every_command(
    capsys, vendor: Vendor, tmp_path: Path, npz: Path, edit: Callable[[dict[str, Any]], object]
) -> None:
    forged = tmp_path / "forged.safetensors"
    forge(vendor.customer_path, forged, edit)
    with pytest.raises(IntegrityError, match="forged.safetensors") as e:
        load_model(forged)
    assert "\n" not in str(e.value)
    with pytest.raises(IntegrityError):
        read_manifest(forged)
    uchida = tmp_path / "plain.key"
    save_key(uchida, OwnershipKey("uchida", {}, {"bits": torch.ones(4)}))
    before = listing(tmp_path)
    for argv in (
        ["info", str(forged)],
        ["predict", str(npz), "--model", str(forged), "--serial", vendor.product_key],
        ["evaluate", "--model", str(forged), "--serial", vendor.product_key, "--out", "r.json"],
        ["watermark", "verify", str(forged), "--key", str(uchida)],
        ["attack", "fine-tuning", "--model", str(forged), "--out", "a.safetensors"],
        ["export", str(forged), "--out", "m.onnx"],
    ):
        user_error(capsys, argv, "forged.safetensors")
    assert listing(tmp_path) == before


def test_a_manifest_the_reader_would_refuse_is_never_written(tmp_path: Path, vendor: Vendor) -> None:
    m = vendor.customer()
    with pytest.raises(ValueError, match="serial_geometry"):
        encode_model(m.model, dict(m.manifest, serial_geometry={"height": 0, "width": 3, "top": 0, "left": 0}))


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(meta=[]),
        lambda m: m.update(scheme=5),
        lambda m: m.update(scheme=""),
        lambda m: m["meta"].update(config=[1]),
        lambda m: m["meta"].update(signature="not hex"),
        lambda m: m["meta"].update(verifier={"owner": 1}),
    ],
)
def test_a_forged_ownership_key_is_refused(
    capsys, tmp_path: Path, vendor: Vendor, edit: Callable[[dict[str, Any]], object]
) -> None:
    plain = tmp_path / "plain.key"
    save_key(plain, OwnershipKey("uchida", {"config": {}}, {"bits": torch.ones(4)}))
    forged = tmp_path / "forged.key"
    forge(plain, forged, edit)
    with pytest.raises(IntegrityError, match="forged.key"):
        load_key(forged)
    user_error(capsys, ["watermark", "verify", str(vendor.customer_path), "--key", str(forged)], "forged.key")


def test_a_forged_onnx_manifest_is_refused(tmp_path: Path, vendor: Vendor) -> None:
    import onnx

    from deepserial.artifacts import _ONNX_DIGEST, _ONNX_MANIFEST, _onnx_digest, export_onnx, load_onnx

    path = tmp_path / "t.onnx"
    export_onnx(path, vendor.teacher())
    proto = onnx.load(str(path))
    man = json.loads({p.key: p.value for p in proto.metadata_props}[_ONNX_MANIFEST])
    man["num_classes"] = "ten"
    del proto.metadata_props[:]
    proto.metadata_props.add(key=_ONNX_MANIFEST, value=json.dumps(man))
    proto.metadata_props.add(key=_ONNX_DIGEST, value=_onnx_digest(man, proto))
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(IntegrityError, match="num_classes"):
        load_onnx(path)


BAD_LICENCES: dict[str, object] = {
    "a list": [],
    "a string": "licence",
    "null": None,
    "a number": 3,
    "an empty object": {},
}


def licence_variants(vendor: Vendor) -> dict[str, object]:
    good = json.loads(vendor.licence_path.read_text())
    return BAD_LICENCES | {
        "verifier is a list": good | {"verifier": []},
        "verifier lacks a field": good | {"verifier": {k: v for k, v in good["verifier"].items() if k != "owner"}},
        "signature odd hex": good | {"signature": good["signature"][:-1]},
        "signature not hex": good | {"signature": "zz" * 32},
        "geometry as text": good | {"geometry": dict(good["geometry"], height="3")},
        "geometry out of range": good | {"geometry": dict(good["geometry"], height=999)},
        "owner key garbage": good
        | {"owner_public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"},
        "owner key not text": good | {"owner_public_key": 7},
        "owner key non-ascii": good | {"owner_public_key": "\udcff\u00e9"},
    }


def test_a_malformed_licence_record_is_one_line(capsys, vendor: Vendor, tmp_path: Path) -> None:
    for name, rec in licence_variants(vendor).items():
        path = tmp_path / "bad.licence.json"
        path.write_text(json.dumps(rec))
        with pytest.raises(IntegrityError, match="bad.licence.json") as e:
            serial_from_licence(path)
        assert "\n" not in str(e.value), name
    path.write_text("[]")
    user_error(capsys, ["evaluate", "--model", str(vendor.customer_path), "--licence", str(path)], "bad.licence.json")


# ----- key files and passphrases ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("pems")
    out: dict[str, bytes] = {}
    for alg in ("ed25519", "rsa"):
        priv, pub = OwnerIdentity.generate(alg).save(root / f"{alg}.pem")  # type: ignore[arg-type]
        out[f"{alg} private"], out[f"{alg} public"] = priv.read_bytes(), pub.read_bytes()
    return out


def test_every_flipped_byte_of_an_ed25519_key_is_loaded_or_refused_in_one_line(
    tmp_path: Path, pems: dict[str, bytes]
) -> None:
    path = tmp_path / "k.pem"
    for kind in ("ed25519 private", "ed25519 public"):
        data = pems[kind]
        for i in range(len(data)):
            flipped = bytearray(data)
            flipped[i] ^= 0x01
            path.write_bytes(bytes(flipped))
            try:
                OwnerIdentity.load(path)
            except IdentityError as e:
                assert "\n" not in str(e) and "k.pem" in str(e)


def test_keygen_refuses_an_empty_passphrase_variable(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPTY_PASS", "")
    user_error(capsys, ["keygen", "--out", "k.pem", "--passphrase-env", "EMPTY_PASS"], "EMPTY_PASS", "empty")
    user_error(capsys, ["keygen", "--out", "k.pem", "--passphrase-env", "UNSET_PASS"], "UNSET_PASS", "not set")
    monkeypatch.setenv("DEEPSERIAL_PASSPHRASE", "")
    user_error(capsys, ["keygen", "--out", "k.pem"], "DEEPSERIAL_PASSPHRASE", "empty")
    assert listing(tmp_path) == {}
    with pytest.raises(IdentityError, match="empty"):
        OwnerIdentity.generate().save(tmp_path / "k.pem", passphrase="")
    assert listing(tmp_path) == {}


# ----- property tests: the command's input parsing ---------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(key=st.text(max_size=40) | st.from_regex(r"[0-9A-Z\-]{10,30}", fullmatch=True))
def test_fuzz_product_keys(capsys, vendor: Vendor, npz: Path, key: str) -> None:
    rc, out, err = cli(capsys, ["predict", str(npz), "--model", str(vendor.customer_path), f"--serial={key}"])
    assert rc in (0, 2), err
    if rc == 0:
        assert len(out.strip().splitlines()) == 3


@FUZZ
@given(
    items=st.lists(
        st.text(max_size=30) | st.builds("{}={}".format, st.text(max_size=10), JSON.map(json.dumps)), max_size=3
    )
)
def test_fuzz_scheme_settings(capsys, tmp_path: Path, items: list[str]) -> None:
    """``--set`` items reach the scheme's settings; the missing key file then stops the command before
    any training, so every example ends as one line."""
    argv = [
        "watermark",
        "embed",
        "--scheme",
        "uchida",
        "--out",
        str(tmp_path / "m.safetensors"),
        "--key",
        "missing.pem",
    ]
    rc, _, err = cli(capsys, argv + [f"--set={item}" for item in items])
    assert rc == 2 and err.startswith(ERROR_PREFIX), err
    assert not (tmp_path / "m.safetensors").exists()


@FUZZ
@given(size=st.text(max_size=12) | st.from_regex(r"-?[0-9]{1,4}[xX]-?[0-9]{1,4}", fullmatch=True))
def test_fuzz_sizes_through_the_cli(capsys, tmp_path: Path, size: str) -> None:
    """``demo`` parses its size first, then meets an unwritable folder: one line either way, no work."""
    (tmp_path / "blocker").write_text("x")
    rc, _, err = cli(capsys, ["demo", f"--size={size}", "--out", str(tmp_path / "blocker" / "demo")])
    assert rc == 2 and err.startswith(ERROR_PREFIX), err


@FUZZ
@given(
    text=st.text(max_size=16)
    | st.from_regex(r"-?[0-9]{1,5}[x,]-?[0-9]{1,5}", fullmatch=True)
    | st.from_regex(r"[0-9]{1,3}", fullmatch=True)
)
def test_fuzz_sizes_positions_and_scales(text: str) -> None:
    for parse in (parse_size, parse_position, parse_pixels_per_bit):
        try:
            parse(text)
        except DeepSerialError as e:
            assert "\n" not in str(e)


@FUZZ
@given(
    field=st.sampled_from(
        ["num_classes", "input_shape", "arch", "serial_geometry", "dataset", "scheme", "licence", "new"]
    ),
    value=JSON,
)
def test_fuzz_manifest_fields(capsys, vendor: Vendor, npz: Path, tmp_path: Path, field: str, value: object) -> None:
    forged = tmp_path / "fuzzed.safetensors"
    forge(vendor.customer_path, forged, lambda m: m.update({field: value}))
    for argv in (["info", str(forged)], ["predict", str(npz), "--model", str(forged), "--serial", vendor.product_key]):
        rc, _, err = cli(capsys, argv)
        assert rc in (0, 2), err


@FUZZ
@given(data=st.data())
def test_fuzz_pem_bytes(capsys, tmp_path: Path, pems: dict[str, bytes], data: st.DataObject) -> None:
    """Damaged key files (flipped, cut, spliced bytes) through a command that loads the key and then
    stops on a missing base model: one line, whatever the bytes."""
    pem = bytearray(data.draw(st.sampled_from(sorted(pems.values()))))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(pem) - 1))
        pem[i] = data.draw(st.integers(0, 255))
    pem = pem[: data.draw(st.integers(0, len(pem)))] if data.draw(st.booleans()) else pem
    key = tmp_path / "fuzzed.pem"
    key.write_bytes(bytes(pem))
    argv = ["watermark", "embed", "--scheme", "uchida", "--out", str(tmp_path / "m.safetensors")]
    rc, _, err = cli(capsys, argv + ["--key", str(key), "--base", "missing.safetensors", "--force"])
    assert rc == 2 and err.startswith(ERROR_PREFIX), err


@FUZZ
@given(
    field=st.sampled_from(["format", "verifier", "signature", "geometry", "owner_public_key", "model_sha256"]),
    value=JSON,
)
def test_fuzz_licence_fields(vendor: Vendor, tmp_path: Path, field: str, value: object) -> None:
    rec = json.loads(vendor.licence_path.read_text()) | {field: value}
    path = tmp_path / "fuzzed.licence.json"
    path.write_text(json.dumps(rec))
    try:
        serial = serial_from_licence(path)
    except DeepSerialError as e:
        assert "\n" not in str(e)
    else:
        assert serial.geometry == vendor.serial.geometry  # only a harmless field changed


def test_user_input_in_an_error_stays_one_line(capsys, tmp_path: Path) -> None:
    """A setting whose name holds a line break or a terminal escape, and a value nested beyond the JSON
    parser's recursion limit: one escaped line each."""
    argv = ["watermark", "embed", "--scheme", "uchida", "--out", str(tmp_path / "m.safetensors")]
    line = user_error(capsys, [*argv, "--set", "bad\nname\x1b[2J=1"], "bad\\nname\\x1b[2J")
    assert "\x1b" not in line
    user_error(capsys, [*argv, "--set", "alpha=" + "[" * 100_000, "--key", "missing.pem"], "uchida")
