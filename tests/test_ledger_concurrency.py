"""The ledger under several processes at once and under ``kill -9``.

Scaled-down versions of the acceptance run of ``benchmarks/bench_ledger.py`` (8 processes x 50
licences through ``deepserial issue``, and kills at every step of an issuance): here 8 x 2 through the
CLI, 8 x 50 ledger records through the library, and a dozen kills.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

import deepserial
from deepserial.artifacts import read_manifest
from deepserial.cli import main
from deepserial.files import stray_temps
from deepserial.identity import OwnerIdentity
from deepserial.ledger import Ledger

if TYPE_CHECKING:
    from conftest import Vendor

# Subprocesses import this checkout's deepserial, whatever is installed.
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(Path(deepserial.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
}
ENV.pop("SOURCE_DATE_EPOCH", None)  # every licence its own time stamp

RECORDER = textwrap.dedent("""
    import sys
    from deepserial.identity import OwnerIdentity, VerifierString
    from deepserial.ledger import Ledger
    from deepserial.serial import SerialGeometry, SerialNumber
    path, key = sys.argv[1:3]
    ident = OwnerIdentity.load(key)
    led = Ledger(path)
    for i in range(1000):
        v = VerifierString(ident.fingerprint(), f"c{i}", f"2026-01-01T00:00:00+00:00", "dsn")
        sig = ident.sign(v)
        sn = SerialNumber.from_signature(sig, SerialGeometry(6, 6, 0, 0))
        with led.transaction() as tx:  # the slow fingerprint inside the lock: a kill lands mid-transaction
            lid = led.record(ident, v, sn, signature=sig, fingerprint_cost=14, db=tx)
        print(lid, flush=True)
""")

# Runs ``WORKERS`` copies of a Python snippet at once, each in its own process: imports are paid once and
# the workers are forked from here (separate processes, separate SQLite connections, none opened before
# the fork), which keeps 8-process tests affordable on a 2-core runner. A worker's ``w`` is its number;
# it prints its results on stdout; the last line is the exit status of every worker.
FORKER = textwrap.dedent("""
    import json, os, sys, traceback
    import deepserial.cli
    workers, body = int(sys.argv[1]), sys.argv[2]
    pids = []
    for w in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                exec(body, {"w": w, "argv": sys.argv[3:]})
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    print("statuses", json.dumps([os.waitpid(pid, 0)[1] for pid in pids]), flush=True)
""")


def run_forked(workers: int, body: str, *args: str, timeout: float = 600) -> tuple[list[str], str]:
    """Run ``body`` in ``workers`` processes at once (:data:`FORKER`); returns the lines they printed
    and their standard error, after checking that every worker exited 0."""
    res = subprocess.run(
        [sys.executable, "-c", FORKER, str(workers), textwrap.dedent(body), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    *lines, last = res.stdout.splitlines()
    assert last.startswith("statuses ") and json.loads(last.split(" ", 1)[1]) == [0] * workers, res.stderr[-3000:]
    return lines, res.stderr


def test_eight_processes_record_fifty_licences_each(tmp_path: Path) -> None:
    ident = OwnerIdentity.generate()
    key, _ = ident.save(tmp_path / "owner.pem")
    path = tmp_path / "l.db"
    body = """
        import sys
        from deepserial.identity import OwnerIdentity, VerifierString
        from deepserial.ledger import Ledger
        from deepserial.serial import SerialGeometry, SerialNumber
        ident = OwnerIdentity.load(argv[1])
        with Ledger(argv[0]) as led:
            for i in range(50):
                v = VerifierString(ident.fingerprint(), f"w{w}-c{i}", "2026-01-01T00:00:00+00:00", "dsn")
                sig = ident.sign(v)
                sn = SerialNumber.from_signature(sig, SerialGeometry(6, 6, 0, 0))
                lid = led.record(ident, v, sn, signature=sig, fingerprint_cost=10)
                sys.stdout.write(f"{lid}\\n")  # one write: lines of 8 processes never interleave
                sys.stdout.flush()
    """
    lines, err = run_forked(8, body, str(path), str(key))
    assert "locked" not in err
    with Ledger(path) as led:
        lics = led.licences()
        assert len(lics) == 400 and len({lic.id for lic in lics}) == 400
        assert len({lic.customer for lic in lics}) == 400 and len({lic.sn_fingerprint for lic in lics}) == 400
        assert sorted(int(x) for x in lines) == sorted(lic.id for lic in lics)
        assert led.integrity_check() == "ok"


def test_a_process_killed_mid_transaction_leaves_no_partial_licence(tmp_path: Path) -> None:
    ident = OwnerIdentity.generate()
    key, _ = ident.save(tmp_path / "owner.pem")
    path = tmp_path / "l.db"
    p = subprocess.Popen(
        [sys.executable, "-c", RECORDER, str(path), str(key)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    committed = []
    deadline = time.monotonic() + 120
    while len(committed) < 5 and time.monotonic() < deadline:
        committed.append(int(p.stdout.readline()))
    time.sleep(0.03)  # into the next transaction's fingerprint (80 ms inside the write lock)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    committed += [int(x) for x in p.stdout.read().split()]
    with Ledger(path) as led:
        assert led.integrity_check() == "ok"
        lics = led.licences()
        # every row is whole (joined to its owner and customer) and each one re-derives to its fingerprint
        n_rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM licences").fetchone()[0]
        assert n_rows == len(lics) and len(committed) <= len(lics) <= len(committed) + 1
        for lic in lics:
            led.serial(lic, ident)


def issue_command(vendor: Vendor, customer: str, out: Path, ledger: Path) -> list[str]:
    """``deepserial issue`` as a vendor runs it, minus the training (``--epochs 0``): the ledger and file
    path is what is under test, and it is the same whatever the training did."""
    return [
        "issue",
        "--customer",
        customer,
        "--teacher",
        str(vendor.teacher_path),
        "--key",
        str(vendor.key_path),
        "--out",
        str(out),
        "--size",
        "3x3",
        "--epochs",
        "0",
        "--quiet",
        "--ledger",
        str(ledger),
    ]


def assert_rows_and_files_agree(ledger: Path, out_dir: Path) -> list:
    """No licence row without both its files, no file in ``out_dir`` without its row (no temporary file
    either), no unfinished issuance, a sound ledger. Returns the licences."""
    with Ledger(ledger) as led:
        report = led.check()
        assert report.sound and report.unfinished == [], report.lines()
        lics = led.licences()
    named = set()
    for lic in lics:
        model, licence = Path(lic.model_path), Path(lic.licence_path)
        assert read_manifest(model)["integrity"]["sha256"] == lic.model_sha256
        assert json.loads(licence.read_text())["verifier"] == lic.verifier
        named |= {model.name, licence.name}
    assert {p.name for p in out_dir.iterdir()} == named
    return lics


def test_eight_cli_issuers_at_once(vendor: Vendor, tmp_path: Path) -> None:
    """8 processes issue through `deepserial issue --ledger` into one new ledger at once: every licence
    recorded once, with its files, no lock error, and each printed product key is the ledger's."""
    out, ledger, n = tmp_path / "out", tmp_path / "vendor.db", 2
    out.mkdir()
    body = """
        import json
        from deepserial.cli import main
        for i in range(int(argv[1])):
            args = [a.replace("{w}", str(w)).replace("{i}", str(i)) for a in json.loads(argv[0])]
            assert main(args) == 0
    """
    command = issue_command(vendor, "w{w}-c{i}", out / "w{w}-c{i}.safetensors", ledger)
    lines, err = run_forked(8, body, json.dumps(command), str(n))
    assert "locked" not in err and "Traceback" not in err, err[-3000:]
    keys = dict(
        line.split("product key for ", 1)[1].split(" (shown once): ")
        for line in lines
        if line.startswith("product key for ")
    )
    lics = assert_rows_and_files_agree(ledger, out)
    assert len(lics) == 8 * n and len({lic.customer for lic in lics}) == 8 * n and len(keys) == 8 * n
    with Ledger(ledger) as led:
        assert {lic.customer: led.serial(lic, vendor.identity).to_product_key() for lic in lics} == keys


# A process that imports deepserial (and torch) once, then forks one issuer per line read: each issuer
# announces every step of the issuance protocol on stdout, and pauses after the step it was asked to,
# so the test can `kill -9` it exactly there (or at a random moment).
ZYGOTE = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import deepserial.cli as cli
    import deepserial.ledger as ledger
    import deepserial.workflow as workflow

    args = json.loads(sys.argv[1])
    pause_at = None

    def say(text):  # one write a line (print makes two when unbuffered): lines of two processes never mix
        sys.stdout.write(text + "\\n")
        sys.stdout.flush()

    def announce(tag):
        say(tag)
        if tag == pause_at:
            time.sleep(60)

    def after(owner, name, tag):
        real = getattr(owner, name)
        def wrapped(*a, **k):
            result = real(*a, **k)
            announce(tag)
            return result
        setattr(owner, name, wrapped)

    after(ledger.Ledger, "begin_issue", "begun")
    after(workflow, "save_issued", "written")
    after(ledger.Ledger, "complete_issue", "completed")
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if str(src).endswith(ledger.TEMP_SUFFIX):
            announce("placed-licence" if str(dst).endswith(".licence.json") else "placed-model")
    os.replace = replace

    for line in sys.stdin:
        n, phase = line.split()
        pid = os.fork()
        if pid == 0:
            pause_at = phase
            rc = cli.main([x.replace("{n}", n) for x in args])
            sys.stdout.flush()
            os._exit(rc)
        say(f"child {pid}")
        say(f"reaped {pid} {os.waitpid(pid, 0)[1]}")
""")
PHASES = ["begun", "written", "placed-model", "placed-licence", "completed"]


class Zygote:
    """The test's handle on :data:`ZYGOTE`."""

    def __init__(self, args: list[str], log: IO[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=ENV,
        )

    def line(self) -> str:
        text = self.proc.stdout.readline()
        assert text, "the issuing process died; see its log"
        return text.strip()

    def issue(self, n: int, pause_at: str = "none", kill_after: float | None = None) -> tuple[list[str], float]:
        """Fork issuer ``n``; kill it when it reaches ``pause_at``, or ``kill_after`` seconds after it
        started. Returns what it printed and how long it lived."""
        self.proc.stdin.write(f"{n} {pause_at}\n")
        self.proc.stdin.flush()
        head = self.line()
        assert head.startswith("child "), head
        pid, t0, said = int(head.split()[1]), time.monotonic(), []
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):  # it may have finished first
                os.kill(pid, signal.SIGKILL)
        while True:
            text = self.line()
            if text.startswith(f"reaped {pid}"):
                return said, time.monotonic() - t0
            said.append(text)
            if text == pause_at:
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def test_kill_9_at_every_step_of_an_issuance(
    vendor: Vendor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An issuer killed at each step of the protocol, then at random moments: afterwards every file in
    the output directory that has no licence row is named by a pending row that `ledger check` lists
    (exit 1), and after `ledger check --repair` rows and files agree exactly."""
    out, ledger = tmp_path / "out", tmp_path / "vendor.db"
    out.mkdir()
    rng = random.Random(0)
    with open(tmp_path / "zygote.log", "w") as log:
        z = Zygote(issue_command(vendor, "c{n}", out / "c{n}.safetensors", ledger), log)
        try:
            said, full = z.issue(0)  # one whole issuance: how long the random kills may wait
            assert any(s.startswith("product key for c0") for s in said), said
            trials = [(phase, None) for phase in PHASES] + [("none", rng.uniform(0, full)) for _ in range(6)]
            outcomes = []
            for n, (phase, delay) in enumerate(trials, start=1):
                said, _ = z.issue(n, phase, delay)
                if delay is None:  # killed at a step, before the key was shown
                    assert said[-1] == phase and not any(s.startswith("product key") for s in said), said
                with Ledger(ledger) as led:
                    issued = {p for lic in led.licences() for p in (lic.model_path, lic.licence_path)}
                    pending = led.unfinished()
                claimed = {Path(p).name for u in pending for p in (u.model_path, u.licence_path, *u.temps)}
                for f in out.iterdir():  # a file without a row is one a pending row names (or atomic_write's temp)
                    if str(f) not in issued:
                        assert f.name in claimed or any(f in stray_temps(out / c) for c in claimed), f
                capsys.readouterr()
                assert main(["ledger", "check", "--ledger", str(ledger)]) == (1 if pending else 0)
                assert main(["ledger", "check", "--repair", "--ledger", str(ledger)]) == 0
                outcomes.append(
                    (phase, round(delay or 0, 2), said[-1] if said else "-", len(pending), "completed" in said)
                )
                assert_rows_and_files_agree(ledger, out)
        finally:
            z.close()
    # the steps between the pending row and the final row left a pending row each; the last one none
    assert [o[3] for o in outcomes[: len(PHASES)]] == [1, 1, 1, 1, 0], outcomes
    # and the ledger still issues after all that: one licence per issuance that got as far as its final row
    capsys.readouterr()
    assert main(issue_command(vendor, "after", out / "after.safetensors", ledger)) == 0
    finished = 1 + sum(o[4] for o in outcomes) + 1
    assert len(assert_rows_and_files_agree(ledger, out)) == finished
