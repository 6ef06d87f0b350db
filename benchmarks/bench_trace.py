"""Benchmark: traitor tracing by serial number (``trace --method serial``) with 20 issued customers on mnist5k.

The default tracing, by fingerprint, is measured by ``deepserial reproduce tracing``
(``reports/tracing_mnist5k``); this benchmark keeps the serial-number test's cost on record.

Run: ``python benchmarks/bench_trace.py`` (writes ``benchmarks/results/bench_trace.{json,md,png}``).

One teacher, ``--customers`` DSN customer models issued from it and recorded in a ledger (the same
path as ``deepserial issue --ledger``), plus ``--unissued`` customer models issued with the same owner
key but never recorded, and the teacher itself. Every model is then traced as a leaked file would
be: the ledger's licences are re-derived from the owner key and tested with the sequential test of
:func:`deepserial.tracing.trace_by_serial`. Reported per model: who was named, the adjusted p-value, the queries and
images spent, and each customer model's accuracy with its serial number, without it and with random
wrong ones (the lock the trace relies on). ``--via-http`` also traces every model through
``deepserial serve --raw-inputs`` on loopback.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from deepserial import workflow
from deepserial.artifacts import LoadedModel, load_model, save_model
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import Ledger
from deepserial.report import environment, mark_start, markdown_table, write_report
from deepserial.serial import stamp
from deepserial.suspect import ModuleSuspect
from deepserial.tracing import trace_by_serial as trace
from deepserial.training import TrainConfig, predict_logits
from deepserial.workflow import DataSpec

OUT = Path(__file__).resolve().parent / "results"


def accuracies(model: torch.nn.Module, sn, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:  # noqa: ANN001
    def acc(xx: torch.Tensor) -> float:
        return 100.0 * float((predict_logits(model, xx).argmax(1) == y).float().mean())

    g = sn.geometry
    rnd = torch.randint(0, 2, (len(x), g.height, g.width), generator=torch.Generator().manual_seed(0))
    return {"key": acc(stamp(x, g, sn.as_tensor())), "raw": acc(x), "random_key": acc(stamp(x, g, rnd))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=20)
    ap.add_argument("--unissued", type=int, default=2)
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student-epochs", type=int, default=20)
    ap.add_argument("--fpr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--via-http", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t_all = time.perf_counter()
    ident = OwnerIdentity.generate()
    data = DataSpec("mnist5k", seed=args.seed)
    tr = workflow.train_teacher(
        data, TrainConfig(epochs=args.teacher_epochs, batch_size=128, seed=args.seed, progress=False)
    )
    teacher = LoadedModel(tr.model, tr.manifest)
    test = data.load().test
    models = []  # (label, true customer or None, path)
    issue_s = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_model(root / "teacher.safetensors", tr.model, tr.manifest)
        led = Ledger(root / "ledger.db")
        for i in range(args.customers + args.unissued):
            name = f"customer-{i:02d}" if i < args.customers else f"unissued-{i - args.customers}"
            t0 = time.perf_counter()
            iss = workflow.issue(
                teacher,
                ident,
                name,
                train=TrainConfig(epochs=args.student_epochs, batch_size=128, seed=args.seed + i, progress=False),
            )
            path = root / f"{name}.safetensors"
            with led.transaction() as tx:
                man = workflow.save_issued(iss, path, root / f"{name}.licence.json", ident)
                if i < args.customers:
                    led.record(
                        ident,
                        VerifierString.from_dict(iss.licence["verifier"]),
                        iss.serial,
                        model_sha256=man["integrity"]["sha256"],
                        model_path=str(path),
                        dataset=iss.manifest["dataset"],
                        signature=bytes.fromhex(iss.licence["signature"]),
                        db=tx,
                    )
            issue_s.append(time.perf_counter() - t0)
            models.append(
                (name, name if i < args.customers else None, path, accuracies(iss.student, iss.serial, test.x, test.y))
            )
            print(f"{name}: issued in {issue_s[-1]:.0f} s, {models[-1][3]}", flush=True)
        models.append(("teacher", None, root / "teacher.safetensors", None))
        t0 = time.perf_counter()
        cands = [(lic, led.serial(lic, ident)) for lic in led.licences()]
        derive_s = time.perf_counter() - t0
        rows = []
        for label, truth, path, acc in models:
            m = load_model(path)
            t0 = time.perf_counter()
            res = trace(ModuleSuspect.from_loaded(m), cands, test, fpr=args.fpr, seed=args.seed)
            row = {
                "model": label,
                "true_customer": truth,
                "named": res.licence.customer if res.licence else None,
                "p_adjusted": res.p_value,
                "queries": res.queries,
                "images": res.images,
                "trace_s": time.perf_counter() - t0,
                "accuracy": acc,
            }
            if args.via_http:
                row["http"] = trace_http(m, cands, test, args)
            row["correct"] = row["named"] == truth
            rows.append(row)
            print(f"{label}: named {row['named']} (p {res.p_value:.2g}, {res.queries} queries)", flush=True)
    issued = [r for r in rows if r["true_customer"]]
    rep = {
        "benchmark": "trace",
        "customers": args.customers,
        "unissued": args.unissued,
        "fpr": args.fpr,
        "seed": args.seed,
        "teacher_epochs": args.teacher_epochs,
        "student_epochs": args.student_epochs,
        "teacher_acc": tr.manifest["test_acc"],
        "rows": rows,
        "named_correctly": sum(r["correct"] for r in issued),
        "named_wrongly": sum(1 for r in rows if r["named"] and r["named"] != r["true_customer"]),
        "unissued_named": sum(1 for r in rows if not r["true_customer"] and r["named"]),
        "queries_issued_mean": sum(r["queries"] for r in issued) / max(1, len(issued)),
        "queries_issued_max": max((r["queries"] for r in issued), default=0),
        "queries_unissued_max": max((r["queries"] for r in rows if not r["true_customer"]), default=0),
        "derive_licences_s": derive_s,
        "issue_s_mean": sum(issue_s) / len(issue_s),
        "total_s": time.perf_counter() - t_all,
        "environment": environment(),
    }
    md = markdown(rep)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(
        range(len(rows)), [r["queries"] for r in rows], color=["tab:green" if r["correct"] else "tab:red" for r in rows]
    )
    ax.set_xticks(range(len(rows)), [r["model"].replace("customer-", "c") for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("queries to decide")
    ax.set_title(f"trace over {args.customers} licences (green: right answer)")
    fig.tight_layout()
    for p in write_report(args.out / "bench_trace", rep, md, fig):
        print(f"wrote {p}")
    print(md)


def trace_http(m: LoadedModel, cands, test, args) -> dict:  # noqa: ANN001
    import threading

    from deepserial.serve import bind, create_app, server
    from deepserial.suspect import HTTPSuspect

    sock = bind("127.0.0.1", 0)
    srv = server(create_app(m, raw_inputs=True))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.02)
    try:
        s = HTTPSuspect(f"http://127.0.0.1:{sock.getsockname()[1]}")
        res = trace(s, cands, test, fpr=args.fpr, seed=args.seed)
        return {
            "named": res.licence.customer if res.licence else None,
            "queries": res.queries,
            "requests": s.requests,
            "p_adjusted": res.p_value,
        }
    finally:
        srv.should_exit = True
        th.join(10)


def markdown(rep: dict) -> str:
    env = rep["environment"]
    rows = []
    for r in rep["rows"]:
        a = r["accuracy"] or {}
        rows.append(
            [
                r["model"],
                r["true_customer"] or "none",
                r["named"] or "none",
                "yes" if r["correct"] else "NO",
                f"{r['p_adjusted']:.2g}",
                r["queries"],
                r["images"],
                a.get("key"),
                a.get("raw"),
                a.get("random_key"),
            ]
            + ([(r["http"]["named"] or "none") + f", {r['http']['queries']}"] if "http" in r else [])
        )
    head = [
        "model",
        "issued to",
        "named",
        "right",
        "adjusted p",
        "queries",
        "images",
        "acc key",
        "acc raw",
        "acc random key",
    ] + (["via HTTP: named, queries"] if rep["rows"] and "http" in rep["rows"][0] else [])
    return (
        f"# Traitor tracing over {rep['customers']} issued licences\n\n"
        f"`python benchmarks/bench_trace.py --customers {rep['customers']} --unissued {rep['unissued']}`: "
        f"one mnist5k teacher ({rep['teacher_epochs']} epochs, {rep['teacher_acc']:.1f}%), "
        f"{rep['customers']} customer models issued from it and recorded in a ledger, {rep['unissued']} issued "
        f"with the same owner key but not recorded, and the teacher; students trained {rep['student_epochs']} "
        "epochs (the reproduction's 40 would take hours for 22 models). Each model is traced as a leaked file: "
        f"family-wise false-positive rate {rep['fpr']:g} over all licences and looks.\n\n"
        f"- right customer named: **{rep['named_correctly']} / {rep['customers']}**; wrong customer named: "
        f"{rep['named_wrongly']}; a customer named for an unissued model or the teacher: "
        f"{rep['unissued_named']} / {rep['unissued'] + 1}\n"
        f"- queries per trace of an issued model: mean {rep['queries_issued_mean']:.0f}, max "
        f"{rep['queries_issued_max']} (a fixed test of 100 image pairs per licence would spend "
        f"{(rep['customers'] + 1) * 100}); unissued models: at most {rep['queries_unissued_max']}\n"
        f"- re-deriving the {rep['customers']} serial numbers from the owner key and checking their ledger "
        f"fingerprints: {rep['derive_licences_s']:.1f} s\n\n"
        + markdown_table(head, rows)
        + "\n\nAccuracies (%) on the test split: with the customer's serial number, "
        "raw, and with random wrong serial numbers.\n\n"
        f"{env.get('cpu', '')} ({env.get('cpu_count', '?')} cores), torch {env.get('torch')}, Python "
        f"{env.get('python')}, seed {rep['seed']}; total {rep['total_s']:.0f} s (issuing "
        f"{rep['issue_s_mean']:.0f} s per customer).\n"
    )


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
