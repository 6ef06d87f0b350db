"""Benchmark: the licence ledger under 8 concurrent issuers and under ``kill -9``.

Run: ``python benchmarks/bench_ledger.py`` (writes ``benchmarks/results/bench_ledger.{json,md}``).

Concurrency: ``--processes`` Python processes start at once and each issues ``--licences`` licences
through ``deepserial issue --ledger`` (the CLI's own function, called in a loop so the interpreter and
torch are imported once per process) into one ledger that does not exist yet. The customer models are
distilled from a tiny teacher (mnist5k, 600 samples, 1 epoch) for ``--epochs`` epochs (default 0: no
training, which changes nothing on the ledger and file path under test and keeps 400 issuances
affordable on 2 cores). Reported: rows, duplicates, integrity check, lock errors and failed issuances,
every row's files (present, digest as recorded) and files without a row, every printed product key
against the serial number re-derived from the ledger, and how long the write lock was waited for and
held (each worker times the ledger's transactions; the issuance path itself is not changed).

Crash safety: one process imports deepserial once and forks an issuer per trial; each issuer announces
the steps of the issuance protocol (pending row committed, files written under temporary names, model
renamed into place, licence renamed into place, row final) and is killed with SIGKILL right after a
given step (``--kills-per-step`` times each), or at a uniformly random moment (``--random-kills``: half
of them over a whole issuance, half over its pending window, from the pending row to the final row).
After each kill: every file without a licence row must be named by a pending row that ``deepserial
ledger check`` lists (exit 1); ``ledger check --repair`` must leave rows and files in exact agreement
(every licence with both files, no other file, no pending row).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

import deepserial
from deepserial import workflow
from deepserial.artifacts import read_manifest, save_model
from deepserial.cli import main as cli
from deepserial.identity import OwnerIdentity
from deepserial.ledger import Ledger
from deepserial.report import environment, mark_start, markdown_table, write_json, write_text
from deepserial.training import TrainConfig
from deepserial.workflow import DataSpec

OUT = Path(__file__).resolve().parent / "results"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join([str(Path(deepserial.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
}
ENV.pop("SOURCE_DATE_EPOCH", None)

# One concurrent issuer: issues argv[2] licences in a loop through the CLI, one JSON line per issuance.
ISSUER = textwrap.dedent("""
    import contextlib, io, json, sys, time
    import deepserial.ledger as ledger
    from deepserial.cli import main

    args, n = json.loads(sys.argv[1]), int(sys.argv[2])
    waits, holds = [], []
    real = ledger.Ledger.transaction

    @contextlib.contextmanager
    def timed(self):  # the lock's wait and hold times, around the ledger's own transaction
        t0 = time.perf_counter()
        with real(self) as tx:
            t1 = time.perf_counter()
            yield tx
        waits.append(t1 - t0)
        holds.append(time.perf_counter() - t1)

    ledger.Ledger.transaction = timed
    for i in range(n):
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([a.replace("{i}", str(i)) for a in args])
            except BaseException as e:
                rc, err = "exception", io.StringIO(repr(e))
        rec = {"rc": rc, "s": time.perf_counter() - t0, "out": out.getvalue(), "err": err.getvalue()}
        sys.stdout.write(json.dumps(rec) + "\\n")
        sys.stdout.flush()
    sys.stdout.write(json.dumps({"waits": waits, "holds": holds}) + "\\n")
""")

# Imports deepserial once, then forks one issuer per line read; the issuer announces each protocol step
# and, at the step it was given, waits to be killed.
ZYGOTE = textwrap.dedent("""
    import json, os, sys, time
    import deepserial.cli as cli
    import deepserial.ledger as ledger
    import deepserial.workflow as workflow

    args = json.loads(sys.argv[1])
    pause_at = None

    def say(text):
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
STEPS = ["begun", "written", "placed-model", "placed-licence", "completed"]


def issue_args(teacher: Path, key: Path, customer: str, out: Path, ledger: Path, epochs: int) -> list[str]:
    return [
        "issue",
        "--customer",
        customer,
        "--teacher",
        str(teacher),
        "--key",
        str(key),
        "--out",
        str(out),
        "--size",
        "3x3",
        "--epochs",
        str(epochs),
        "--quiet",
        "--ledger",
        str(ledger),
    ]


def rows_and_files(ledger: Path, out_dir: Path) -> dict[str, Any]:
    """How the ledger's licences and the files in ``out_dir`` agree."""
    with Ledger(ledger) as led:
        check = led.check()
        lics = led.licences()
    missing = bad_digest = 0
    named = set()
    for lic in lics:
        model, licence = Path(lic.model_path), Path(lic.licence_path)
        named |= {model.name, licence.name}
        if not (model.is_file() and licence.is_file()):
            missing += 1
        elif read_manifest(model)["integrity"]["sha256"] != lic.model_sha256:
            bad_digest += 1
    files = {p.name for p in out_dir.iterdir()}
    return {
        "licences": lics,
        "rows_without_files": missing,
        "rows_with_wrong_digest": bad_digest,
        "files_without_row": sorted(files - named),
        "unfinished": len(check.unfinished),
        "integrity": "; ".join(check.integrity),
        "check_sound": check.sound,
    }


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def concurrency(root: Path, teacher: Path, key: Path, ident: OwnerIdentity, args: argparse.Namespace) -> dict:
    out, ledger = root / "out", root / "vendor.db"
    out.mkdir()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                ISSUER,
                json.dumps(
                    issue_args(teacher, key, f"w{w}-c{{i}}", out / f"w{w}-c{{i}}.safetensors", ledger, args.epochs)
                ),
                str(args.licences),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for w in range(args.processes)
    ]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    records, waits, holds, crashed = [], [], [], []
    for p, (so, se) in zip(procs, outs, strict=True):
        lines = [json.loads(line) for line in so.splitlines() if line.startswith("{")]
        if p.returncode != 0 or not lines or "waits" not in lines[-1]:
            crashed.append(se[-2000:])
        else:
            waits += lines[-1]["waits"]
            holds += lines[-1]["holds"]
            lines = lines[:-1]
        records += lines
    failed = [r for r in records if r["rc"] != 0]
    lock_errors = [r for r in records if "locked" in r["err"] or "busy" in r["err"].lower()]
    keys = {}
    for r in records:
        for line in r["out"].splitlines():
            if line.startswith("product key for "):
                name, key_text = line.removeprefix("product key for ").split(" (shown once): ")
                keys[name] = key_text
    state = rows_and_files(ledger, out)
    lics = state.pop("licences")
    with Ledger(ledger) as led:
        wrong_keys = sum(keys.get(lic.customer) != led.serial(lic, ident).to_product_key() for lic in lics) + len(
            set(keys) - {lic.customer for lic in lics}
        )
    issue_s = [r["s"] for r in records]
    return {
        "processes": args.processes,
        "licences_per_process": args.licences,
        "issuances": len(records),
        "failed_issuances": len(failed),
        "failures": [r["err"][-300:] for r in failed[:5]],
        "crashed_processes": len(crashed),
        "crash_logs": crashed[:2],
        "lock_errors": len(lock_errors),
        "rows": len(lics),
        "duplicate_customers": len(lics) - len({lic.customer for lic in lics}),
        "duplicate_verifiers": len(lics) - len({json.dumps(lic.verifier, sort_keys=True) for lic in lics}),
        "duplicate_fingerprints": len(lics) - len({lic.sn_fingerprint for lic in lics}),
        "product_keys_printed": len(keys),
        "product_keys_not_matching_ledger": wrong_keys,
        **state,
        "wall_s": wall,
        "issuances_per_s": len(records) / wall,
        "issue_s": {"p50": statistics.median(issue_s), "p99": pct(issue_s, 99), "max": max(issue_s)},
        "lock_wait_ms": {"p50": pct(waits, 50) * 1e3, "p99": pct(waits, 99) * 1e3, "max": max(waits) * 1e3},
        "lock_hold_ms": {"p50": pct(holds, 50) * 1e3, "p99": pct(holds, 99) * 1e3, "max": max(holds) * 1e3},
        "transactions": len(holds),
    }


def kills(root: Path, teacher: Path, key: Path, args: argparse.Namespace) -> dict:
    out, ledger = root / "kill-out", root / "kill.db"
    out.mkdir()
    rng = random.Random(args.seed)
    log = open(root / "zygote.log", "w")  # noqa: SIM115 (closed below)
    z = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ZYGOTE,
            json.dumps(issue_args(teacher, key, "c{n}", out / "c{n}.safetensors", ledger, args.epochs)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=ENV,
    )

    def line() -> str:
        text = z.stdout.readline()
        if not text:
            raise RuntimeError(f"the issuing process died; see {root / 'zygote.log'}")
        return text.strip()

    def trial(n: int, step: str, delay: float | None) -> tuple[list[str], dict[str, float]]:
        """Issuance ``n``, killed right after ``step``, or ``delay`` s after it started (``step`` "none")
        or after it announced its pending row (``step`` "window"). Returns what it said and when."""
        z.stdin.write(f"{n} {step if step in STEPS else 'none'}\n")
        z.stdin.flush()
        pid, t0, said, at = int(line().split()[1]), time.monotonic(), [], {}

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):  # it may have finished first
                os.kill(pid, signal.SIGKILL)

        if step == "none" and delay is not None:
            time.sleep(delay)
            kill()
        while True:
            text = line()
            at[text.split()[0]] = time.monotonic() - t0
            if text.startswith(f"reaped {pid}"):
                return said, at
            said.append(text)
            if text == step:
                kill()
            if step == "window" and text == "begun":
                time.sleep(delay)
                kill()

    results = []
    try:
        full = [trial(i, "none", None)[1] for i in range(3)]  # whole issuances: the random kills' ranges
        span = statistics.median(t["reaped"] for t in full)
        window = statistics.median(t["completed"] - t["begun"] for t in full)
        plan = [(s, None) for s in STEPS for _ in range(args.kills_per_step)]
        plan += [("none", rng.uniform(0, span)) for _ in range(args.random_kills // 2)]
        plan += [("window", rng.uniform(0, window)) for _ in range(args.random_kills - args.random_kills // 2)]
        rng.shuffle(plan)
        for n, (step, delay) in enumerate(plan, start=3):
            said, _ = trial(n, step, delay)
            steps = [s for s in said if s in STEPS]
            with Ledger(ledger) as led:
                issued = {p for lic in led.licences() for p in (lic.model_path, lic.licence_path)}
                pending = led.unfinished()
            claimed = {Path(p).name for u in pending for p in (u.model_path, u.licence_path, *u.temps)}
            unclaimed = [
                f.name
                for f in out.iterdir()
                if str(f) not in issued
                and f.name not in claimed
                and not any(f.name.startswith(f".{c}.tmp") for c in claimed)
            ]
            with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
                rc_check = cli(["ledger", "check", "--ledger", str(ledger)])
                rc_repair = cli(["ledger", "check", "--repair", "--ledger", str(ledger)])
            after = rows_and_files(ledger, out)
            results.append(
                {
                    "target": step if delay is None else f"{step} +{delay:.3f} s",
                    "last_step": steps[-1] if steps else "before the pending row",
                    "key_printed": any(s.startswith("product key") for s in said),
                    "pending_rows": len(pending),
                    "unclaimed_files": unclaimed,
                    "check_exit": rc_check,
                    "repair_exit": rc_repair,
                    "after_repair_consistent": after["rows_without_files"] == 0
                    and after["rows_with_wrong_digest"] == 0
                    and not after["files_without_row"]
                    and after["unfinished"] == 0
                    and after["check_sound"],
                }
            )
    finally:
        z.stdin.close()
        z.wait(timeout=120)
        log.close()
    by_step: dict[str, dict[str, int]] = {}
    for r in results:
        s = by_step.setdefault(r["last_step"], {"kills": 0, "pending_rows": 0, "check_exit_1": 0, "consistent": 0})
        s["kills"] += 1
        s["pending_rows"] += r["pending_rows"]
        s["check_exit_1"] += r["check_exit"] == 1
        s["consistent"] += r["after_repair_consistent"]
    final = rows_and_files(ledger, out)
    return {
        "trials": len(results),
        "full_issuance_s": span,
        "pending_window_s": window,
        "by_last_step": by_step,
        "unclaimed_files": sum(len(r["unclaimed_files"]) for r in results),
        "check_missed_an_orphan": sum(r["pending_rows"] > 0 and r["check_exit"] != 1 for r in results),
        "repair_failed": sum(r["repair_exit"] != 0 for r in results),
        "inconsistent_after_repair": sum(not r["after_repair_consistent"] for r in results),
        "final_licences": len(final["licences"]),
        "final_integrity": final["integrity"],
        "trial_log": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--licences", type=int, default=50, help="per process")
    ap.add_argument("--epochs", type=int, default=0, help="student training epochs per licence")
    ap.add_argument("--kills-per-step", type=int, default=4)
    ap.add_argument("--random-kills", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ident = OwnerIdentity.generate()
        key, _ = ident.save(root / "owner.pem")
        teacher = root / "teacher.safetensors"
        t = workflow.train_teacher(DataSpec("mnist5k", limit=600), TrainConfig(epochs=1, progress=False))
        save_model(teacher, t.model, t.manifest)
        conc = concurrency(root, teacher, key, ident, args)
        print(json.dumps({k: v for k, v in conc.items() if k not in ("failures", "crash_logs")}, indent=1))
        crash = kills(root, teacher, key, args)
    rep = {
        "concurrency": conc,
        "kill9": crash,
        "epochs": args.epochs,
        "seed": args.seed,
        "sqlite": sqlite3.sqlite_version,
        "total_s": time.perf_counter() - t_all,
        "environment": environment(),
    }
    md = markdown(rep)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench_ledger.json", rep)
    write_text(args.out / "bench_ledger.md", md)
    print(md)


def markdown(rep: dict) -> str:
    c, k, env = rep["concurrency"], rep["kill9"], rep["environment"]
    rows = [
        ["issuances (processes x licences)", f"{c['issuances']} ({c['processes']} x {c['licences_per_process']})"],
        ["failed issuances / crashed processes", f"{c['failed_issuances']} / {c['crashed_processes']}"],
        ["lock errors", c["lock_errors"]],
        ["licence rows", c["rows"]],
        [
            "duplicates (customer / verifier / SN fingerprint)",
            f"{c['duplicate_customers']} / {c['duplicate_verifiers']} / {c['duplicate_fingerprints']}",
        ],
        ["PRAGMA integrity_check; `ledger check`", f"{c['integrity']}; {'sound' if c['check_sound'] else 'NOT sound'}"],
        [
            "rows without their files / with another digest",
            f"{c['rows_without_files']} / {c['rows_with_wrong_digest']}",
        ],
        ["files without a row (incl. temporary files)", len(c["files_without_row"])],
        [
            "product keys printed / not the ledger's",
            f"{c['product_keys_printed']} / {c['product_keys_not_matching_ledger']}",
        ],
        ["wall time (s); issuances per s", f"{c['wall_s']:.0f}; {c['issuances_per_s']:.2f}"],
        ["one issuance p50 / p99 / max (s)", "{p50:.2f} / {p99:.2f} / {max:.2f}".format(**c["issue_s"])],
        [
            f"write lock held, {c['transactions']} transactions: p50 / p99 / max (ms)",
            "{p50:.1f} / {p99:.1f} / {max:.1f}".format(**c["lock_hold_ms"]),
        ],
        [
            "write lock waited for: p50 / p99 / max (ms)",
            "{p50:.1f} / {p99:.1f} / {max:.1f}".format(**c["lock_wait_ms"]),
        ],
    ]
    steps = [
        [
            s,
            v["kills"],
            v["pending_rows"],
            v["check_exit_1"],
            v["consistent"],
        ]
        for s, v in sorted(k["by_last_step"].items(), key=lambda kv: [*STEPS_ORDER, kv[0]].index(kv[0]))
    ]
    return (
        "\n".join(
            [
                "# Licence ledger: 8 concurrent issuers and kill -9",
                "",
                f"`python benchmarks/bench_ledger.py`: {c['processes']} processes start at once and each "
                f"issues {c['licences_per_process']} licences through `deepserial issue --ledger` (the CLI "
                "function in a loop) into one new ledger; customer models from a tiny mnist5k teacher, "
                f"{rep['epochs']} student epochs (the ledger and file path is the same whatever the training did).",
                "",
                markdown_table(["measure", "value"], rows),
                "",
                f"**kill -9.** {k['trials']} issuances killed with SIGKILL, right after each step of the "
                f"protocol and at random moments (half over a whole {k['full_issuance_s']:.2f} s issuance, half "
                f"over its {k['pending_window_s'] * 1e3:.0f} ms from pending row to final row); after each, "
                "`ledger check` and `ledger check --repair`. By the last step the issuer had announced:",
                "",
                markdown_table(
                    [
                        "killed after",
                        "kills",
                        "pending rows left",
                        "`ledger check` exit 1",
                        "consistent after --repair",
                    ],
                    steps,
                ),
                "",
                f"- files on disk that no row (issued or pending) named: **{k['unclaimed_files']}**; pending rows that "
                f"`ledger check` did not flag: **{k['check_missed_an_orphan']}**; repairs that failed: "
                f"**{k['repair_failed']}**; trials inconsistent after repair: **{k['inconsistent_after_repair']}**",
                f"- the ledger afterwards: {k['final_licences']} licences, integrity {k['final_integrity']}",
                "- a kill that lands after the final row is committed but before the issuer announces it counts under "
                "the step before, with no pending row left: the licence is issued and its files are in place.",
                "",
                f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores), torch {env.get('torch', '?')}, "
                f"Python {env.get('python', '?')}, SQLite {rep['sqlite']}; total {rep['total_s']:.0f} s.",
            ]
        )
        + "\n"
    )


STEPS_ORDER = ["before the pending row", *STEPS]

if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
