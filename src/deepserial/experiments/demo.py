"""The whole vendor pipeline on the embedded mnist5k data, as ``deepserial demo`` runs it.

Owner key, teacher, one customer model, its evaluation: every file is built in memory and written at
the end, all or none (:func:`deepserial.files.atomic_write_all`), so a failure leaves no owner key
behind. The report holds no secret; the product key is returned for the caller to show once, as
``deepserial issue`` does.

The workflow's functions are looked up on :mod:`deepserial.workflow` at call time
(``workflow.train_teacher``), so that a test that replaces one there (a smaller data set, a failure
midway) is obeyed here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepserial import workflow
from deepserial.artifacts import decode_model, encode_model
from deepserial.experiments.dsn import dsn_markdown
from deepserial.files import atomic_write_all, check_writable
from deepserial.identity import OwnerIdentity, public_key_path
from deepserial.report import json_bytes
from deepserial.schemes.dsn import DSNConfig
from deepserial.training import TrainConfig

__all__ = ["Demo", "run_demo"]

#: The student epochs of ``reproduce dsn`` on the same data, which the demo's short schedule is set beside.
REPRODUCE_STUDENT_EPOCHS = 40


@dataclass(frozen=True)
class Demo:
    """What a demo run leaves to show: the report as Markdown, the product key (shown once, written
    nowhere) and the files written."""

    markdown: str
    product_key: str
    files: list[Path]


def run_demo(
    out: Path,
    *,
    size: tuple[int, int] = workflow.DEFAULT_SN_SIZE,
    teacher_epochs: int = 20,
    epochs: int = 12,
    n_wrong: int = 1000,
    wrong_samples: int | None = 300,
    seed: int = 0,
    progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> Demo:
    """Generate an owner key, train a teacher and issue ``demo-customer`` a model with a ``size`` serial
    number, evaluate it and write everything to the folder ``out`` (checked writable before any work).
    ``say`` receives one line per finished step."""
    cfg = DSNConfig.for_mode("default")
    train = TrainConfig(epochs=epochs, batch_size=128, seed=seed, progress=progress)
    teacher_train = TrainConfig(epochs=teacher_epochs, batch_size=128, seed=seed, progress=progress)
    check_writable(out, directory=True)
    t0 = time.perf_counter()
    ident = OwnerIdentity.generate()
    files = [
        (out / "owner.pem", ident.private_pem(), 0o600),
        (public_key_path(out / "owner.pem"), ident.public_pem(), None),
    ]
    say("[1/4] owner key generated")
    t = workflow.train_teacher(workflow.DataSpec("mnist5k", seed), teacher_train)
    teacher_bytes, _ = encode_model(t.model, t.manifest)
    files.append((out / "teacher.safetensors", teacher_bytes, None))
    say(f"[2/4] teacher: {t.manifest['test_acc']:.2f}% test accuracy ({t.log.wall_s:.0f} s)")
    teacher_m = decode_model(teacher_bytes, out / "teacher.safetensors")
    issued = workflow.issue(
        teacher_m, ident, "demo-customer", owner_id="demo-owner", size=size, config=cfg, train=train
    )
    customer_bytes, man = encode_model(issued.student, issued.manifest, owner=ident)
    files.append((out / "customer.safetensors", customer_bytes, None))
    files.append((out / "customer.licence.json", workflow.licence_bytes(issued, man["integrity"]["sha256"]), 0o600))
    say(f"[3/4] customer model issued ({issued.log.wall_s:.0f} s)")
    customer = decode_model(customer_bytes, out / "customer.safetensors", owner=ident)
    rep = workflow.evaluate_customer(
        customer,
        issued.serial,
        teacher=teacher_m,
        splits=issued.splits,
        n_wrong=n_wrong,
        wrong_eval_samples=wrong_samples,
        seed=seed,
    )
    rep["timings"]["demo_total_s"] = time.perf_counter() - t0
    rep["schedule"] = {
        "teacher_epochs": teacher_epochs,
        "student_epochs": epochs,
        "reproduce_dsn_student_epochs": REPRODUCE_STUDENT_EPOCHS,
    }
    md = (
        f"# DSN demo on mnist5k\n\nSerial number {issued.serial.geometry.describe()} "
        f"({issued.serial.geometry.nbits} bits), seed {seed}, teacher {teacher_epochs} and student {epochs} "
        f"epochs (a short schedule: `reproduce dsn` trains the student {REPRODUCE_STUDENT_EPOCHS}), "
        f"total {rep['timings']['demo_total_s']:.0f} s.\n\n{dsn_markdown(rep)}\n"
    )
    files += [(out / "dsn_report.json", json_bytes(rep), None), (out / "dsn_report.md", md.encode(), None)]
    atomic_write_all(files)
    say(f"[4/4] evaluated; wrote {len(files)} files to {out} (owner.pem and customer.licence.json are secret)")
    return Demo(md, issued.product_key, [path for path, _, _ in files])
