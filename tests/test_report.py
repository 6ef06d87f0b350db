"""Every report records its provenance: command line, git commit and dirty state, seed, signing time,
versions (deepserial.report)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from deepserial import report
from deepserial.report import (
    PROVENANCE,
    command_line,
    git_state,
    missing_provenance,
    with_provenance,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]


def _figure():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    return fig


def test_write_report_records_every_provenance_field(tmp_path: Path) -> None:
    paths = write_report(
        tmp_path / "r", {"experiment": "x", "seed": 3, "signed_at_epoch": 1764633600}, "# r\n", _figure()
    )
    rep = json.loads(paths[1].read_text())
    assert missing_provenance(rep) == []
    env = rep["environment"]
    assert rep["seed"] == 3 and rep["signed_at_epoch"] == 1764633600
    assert env["argv"] == command_line() and env["torch"] and env["deepserial"] and env["time_utc"]
    assert env["git_dirty"] in (True, False, None)
    commit, dirty = git_state()
    assert (env["git_commit"], env["git_dirty"]) == (commit, dirty)
    if (ROOT / ".git").exists() and Path(report.__file__).resolve().parent == ROOT / "src" / "deepserial":
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        assert env["git_commit"] == head.stdout.strip()  # the checkout the code ran from


def test_a_run_that_signs_nothing_says_so() -> None:
    rep = with_provenance({"experiment": "benchmark"})
    assert rep["seed"] is None and rep["signed_at_epoch"] is None and missing_provenance(rep) == []
    several = with_provenance({"seeds": [0, 1], "signed_at_epoch": 5})
    assert "seed" not in several and missing_provenance(several) == []


def test_missing_provenance_names_what_an_older_report_lacks() -> None:
    old = {
        "seed": 0,
        "environment": {"deepserial": "0.1.0", "python": "3.11", "torch": "2", "numpy": "2", "time_utc": "t"},
    }
    assert missing_provenance(old) == [
        "signed_at_epoch",
        "environment.argv",
        "environment.git_commit",
        "environment.git_dirty",
    ]
    assert set(missing_provenance({})) == {"seed", "signed_at_epoch", "environment"}
    assert set(PROVENANCE) >= {"seed", "signed_at_epoch", "environment.argv", "environment.git_dirty"}


def test_command_line_hides_the_product_key() -> None:
    argv = ["deepserial", "evaluate", "--serial", "0G3K2-ABCDE", "--model", "m", "--serial=0G3K2-ABCDE"]
    assert command_line(argv) == [
        "deepserial",
        "evaluate",
        "--serial",
        "<redacted>",
        "--model",
        "m",
        "--serial=<redacted>",
    ]
    assert command_line(["deepserial", "reproduce", "dsn"]) == ["deepserial", "reproduce", "dsn"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_sees_commit_and_uncommitted_changes(tmp_path: Path) -> None:
    assert git_state(tmp_path) == (None, None)  # not a checkout

    def git(*args: str) -> str:
        cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "new.txt").write_text("an output the run wrote\n")
    assert git_state(tmp_path) == (head, False)  # untracked outputs do not make the tree dirty
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (head, True)


def test_reproduce_dsn_records_its_signing_time_and_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DSN reproduction signs at one recorded time with a seed-derived owner, like the others."""
    from deepserial.experiments import dsn

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764633600")
    cfg = dsn.ExperimentConfig(
        dataset="mnist5k",
        teacher_epochs=1,
        student_epochs=1,
        n_wrong=5,
        wrong_eval_samples=50,
        runs=[dsn.RunSpec(name="default-3x3", mode="default", size=(3, 3))],
    )
    rep = json.loads(dsn.run("mnist5k", tmp_path, progress=False, config=cfg)[1].read_text())
    assert missing_provenance(rep) == [] and rep["signed_at_epoch"] == 1764633600
    assert rep["runs"]["default-3x3"]["signed_at_epoch"] == 1764633600


def test_a_report_names_the_git_state_its_run_started_from(monkeypatch: pytest.MonkeyPatch) -> None:
    states = iter([("a" * 40, False), ("b" * 40, True)])
    monkeypatch.setattr(report, "git_state", lambda where=None: next(states))
    monkeypatch.setattr(report, "_started", None)
    report.mark_start()  # the run starts on commit a, clean; the tree is at b, dirty, when it writes
    env = report.with_provenance({"x": 1})["environment"]
    assert (env["git_commit"], env["git_dirty"]) == ("a" * 40, False)


def test_a_report_names_the_sources_that_ran(tmp_path: Path) -> None:
    """A copy of the tree whose git base is older than its files (a device machine's copy) still names
    its code: the digest changes with any byte of any source file and is the same for an identical copy."""
    pkg = Path(report.__file__).resolve().parent
    env = report.with_provenance({"x": 1})["environment"]
    assert env["source_sha256"] == report.source_digest(pkg) and len(env["source_sha256"]) == 64
    copy = tmp_path / "deepserial"
    for f in pkg.rglob("*.py"):
        (copy / f.relative_to(pkg)).parent.mkdir(parents=True, exist_ok=True)
        (copy / f.relative_to(pkg)).write_bytes(f.read_bytes())
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.py").write_bytes(b"not source")  # nor is an editor's hidden file
    (copy / ".#report.py").symlink_to(tmp_path / "no-such-file")
    assert report.source_digest(copy) == report.source_digest(pkg)
    (copy / "report.py").write_bytes((pkg / "report.py").read_bytes() + b"\n")
    assert report.source_digest(copy) != report.source_digest(pkg)
    (copy / "report.py").chmod(0)
    if os.geteuid() != 0:  # root reads any file
        assert report.source_digest(copy) is None  # unreadable: no digest, and the report is still written


def test_a_report_names_the_sources_its_run_started_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "_started_source", "c" * 64)
    assert report.with_provenance({"x": 1})["environment"]["source_sha256"] == "c" * 64
    # a report of an earlier run, written again (gathered, its summary recomputed), keeps its own record
    old = {"environment": {"argv": ["x"], "git_commit": "a" * 40, "git_dirty": False}}
    assert "source_sha256" not in report.with_provenance(old)["environment"]


def test_a_probe_line_carries_its_provenance(tmp_path: Path) -> None:
    """Probes append one JSON line per model; each line names its command, commit and versions."""
    out = tmp_path / "results" / "probe.jsonl"
    for seed in (0, 1):
        report.append_result(out, {"label": "m", "seed": seed, "value": np.float32(0.5)})
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["seed"] for x in lines] == [0, 1] and lines[0]["value"] == 0.5
    env = lines[0]["environment"]
    assert env["argv"] and "git_commit" in env and env["torch"] == torch.__version__
    assert report.missing_provenance(lines[1]) == []
