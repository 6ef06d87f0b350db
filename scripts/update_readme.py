"""Rewrite README's generated result sections (watermarks, attacks) from the committed reports.

The tables between ``<!-- wm-table -->`` (mnist5k) and ``<!-- wm-fashion-table -->`` (fashion-mnist)
and their closing markers are generated from ``reports/<scheme>_<dataset>.json``, those between
``<!-- wm-attack-table -->`` / ``<!-- wm-fashion-attack-table -->`` from
``reports/attacks_<scheme>_<dataset>.json``, and those between ``<!-- attack-table -->`` /
``<!-- dsn-fashion-attack-table -->`` from ``reports/attacks_dsn_<dataset>.json``, and Neural
Cleanse's ``<!-- nc-table -->`` from ``reports/neural_cleanse_mnist5k.json``, and the DSN seeds
study's ``<!-- dsn-seeds-table -->`` from ``reports/attacks_dsn_mnist5k_seeds.json``, so that README
shows every scheme that has a report, with the figures the report holds and nothing typed by hand.

Usage: ``python scripts/update_readme.py`` (``--check`` exits 1 when README is out of date).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEADER = [
    "scheme",
    "unmarked acc",
    "marked acc (mean)",
    "largest drop",
    "own keys verified at 1e-3",
    "queries (mean)",
    "FP / 1,000 vs unmarked at 1e-3",
    "FP / 1,000 vs other key at 1e-3",
    "at 1e-4: own verified; FP unmarked, other",
]
TABLES = {"wm-table": "mnist5k", "wm-fashion-table": "fashion-mnist"}
ATTACK_TABLES = {"wm-attack-table": "mnist5k", "wm-fashion-attack-table": "fashion-mnist"}
DSN_TABLES = {"attack-table": "mnist5k", "dsn-fashion-attack-table": "fashion-mnist"}
NC_TABLES = {"nc-table": "mnist5k"}
SEEDS_TABLES = {"dsn-seeds-table": "mnist5k"}
ATTACK_HEADER = [
    "scheme",
    "marked model",
    "fine-tuning (FTAL, Adam) 10/20/30/40%",
    "FTAL, SGD",
    "from scratch (control)",
    "40%: FTLL RTLL RTAL",
    "largest global L1 pruning rate still verified (accuracy)",
    "overwriting: acc, owner / adversary",
]
NOT_RUN = "not run"


def _count(rep: dict[str, Any], suspect: str, level: float) -> str:
    """Random keys of ``suspect`` (unmarked / other_key) with p-value <= ``level``; reports older than
    the per-key p-value lists give it only when their smallest p-value says it is 0."""
    ps = rep.get(f"random_p_{suspect}")
    if ps is not None:
        return str(sum(p <= level for p in ps))
    return "0" if rep[f"random_p_min_{suspect}"] > level else "?"


def _row(rep: dict[str, Any]) -> list[str]:
    own = sum(p <= 1e-4 for p in rep["own_p_values"])
    fu, fo = _count(rep, "unmarked", 1e-4), _count(rep, "other_key", 1e-4)
    queries = sum(rep["own_queries"]) / len(rep["own_queries"])
    return [
        rep["scheme"],
        f"{rep['reference_acc']:.2f}",
        f"{rep['marked_acc_mean']:.2f}",
        f"{rep['acc_drop_max']:.2f}",
        f"{rep['verified']}/{rep['n_models']}",
        f"{queries:.0f}",
        str(rep["false_positives_unmarked"]),
        str(rep["false_positives_other_key"]),
        f"{own}/{rep['n_models']}; {fu}, {fo}",
    ]


def _mark(cell: dict[str, Any] | None) -> str:
    return "✓" if cell and cell.get("decision") else "✗"


def _acc(cell: dict[str, Any]) -> str:
    return f"{cell['test_acc']:.1f}{_mark(cell['verdict'])}"


def _pruning(rows: list[dict[str, Any]], which: str) -> str:
    kept = [r for r in rows if r.get(which) and r[which]["verdict"]["decision"]]
    if not kept:
        return "never"
    best = max(kept, key=lambda r: r["rate"])
    return f"{100 * best['rate']:.0f}% ({best[which]['test_acc']:.1f}%)"


def _attack_row(rep: dict[str, Any]) -> list[str]:
    ft = rep.get("fine_tuning") or {}
    fr = sorted(ft, key=float)

    def col(name: str) -> str:
        if not fr or any(name not in ft[f] for f in fr):
            return NOT_RUN if fr else "–"
        return " / ".join(_acc(ft[f][name]) for f in fr)

    last = ft[fr[-1]] if fr else {}
    variants = " ".join(f"{v} {_mark(last[v]['verdict'])}" for v in ("FTLL", "RTLL", "RTAL") if v in last) or "–"
    prune = rep.get("pruning")
    pruning = f"{_pruning(prune, 'pruned')}; +FT {_pruning(prune, 'pruned_fine_tuned')}" if prune else "–"
    if fr and all("overwrite" in ft[f] for f in fr):
        overwrite = " / ".join(
            f"{ft[f]['overwrite']['test_acc']:.1f} own{_mark(ft[f]['overwrite']['verdict'])} "
            f"adv{_mark(ft[f]['overwrite'].get('adversary_verdict'))}"
            for f in fr
        )
    else:
        overwrite = "–"
    victim = rep["victim"]
    return [
        rep["scheme"],
        _acc(victim),
        col("FTAL"),
        col("FTAL_sgd"),
        col("from_scratch"),
        variants,
        pruning,
        overwrite,
    ]


def attack_table(reports: Path, dataset: str) -> str:
    """The Markdown table of every watermark-scheme attack report of ``dataset`` in ``reports``."""
    rows = []
    for p in sorted(reports.glob(f"attacks_*_{dataset}.json")):
        rep = json.loads(p.read_text())
        if rep.get("dataset") == dataset and rep.get("scheme") != "dsn" and "victim" in rep:
            rows.append(_attack_row(rep))
    lines = ["| " + " | ".join(ATTACK_HEADER) + " |", "|" + "---|" * len(ATTACK_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if any(NOT_RUN in r for r in rows):
        lines += [
            "",
            '"not run": that report predates the SGD column (the runs were cut for time); run the command to add it.',
        ]
    return "\n".join(lines)


def table(reports: Path, dataset: str) -> str:
    """The Markdown table of every watermark report of ``dataset`` in ``reports``."""
    rows = []
    for p in sorted(reports.glob(f"*_{dataset}.json")):
        rep = json.loads(p.read_text())
        if rep.get("experiment") == "watermark" and rep.get("dataset") == dataset:
            rows.append(_row(rep))
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _costs(costs: list[dict[str, Any]]) -> str:
    """Cost ratios of one attack across the fractions ('failed': never 5 points above chance)."""
    return " / ".join(
        "failed" if c.get("failed") else "–" if c["ratio"] is None else f"{c['ratio']:.2f}x" for c in costs
    )


def _report(path: Path) -> dict[str, Any] | None:
    """A committed report, or None when that reproduction has not been run yet."""
    return json.loads(path.read_text()) if path.exists() else None


def dsn_attack_table(reports: Path, dataset: str) -> str:
    """DSN's robustness section (Tables 3-6, serial-number search, Neural Cleanse) of ``dataset``."""
    rep = _report(reports / f"attacks_dsn_{dataset}.json")
    if rep is None:
        return f"No report yet: run `deepserial reproduce attacks --scheme dsn --dataset {dataset}`."
    fr = list(rep["fractions"])
    paper = rep["paper"]

    def accs(key: str, field: str) -> str:
        return " / ".join(f"{rep['fractions'][f][key][field]:.1f}" for f in fr)

    def cost(key: str) -> str:
        return _costs([rep["fractions"][f][key]["cost"] for f in fr])

    def nums(key: str) -> str:
        on_paper = dict(zip(("0.1", "0.2", "0.3", "0.4"), paper[key], strict=True))
        return " / ".join(f"{on_paper[f]:.1f}" if f in on_paper else "–" for f in fr)

    shares = " / ".join(f"{100 * float(f):g}" for f in fr)
    lines = [
        f"| attack (attacker data {shares}%) | ours | paper (MNIST) | cost vs from scratch |",
        "|---|---|---|---|",
        f"| fine-tuning (FTAL), accuracy without the SN | {accs('fine_tuning', 'raw_acc')} | "
        f"{nums('fine_tuning')} | {cost('fine_tuning')} |",
        f"| from scratch on the same data (the * row) | {accs('from_scratch', 'raw_acc')} | "
        f"{nums('from_scratch')} | 1 (reference) |",
        f"| transfer learning (new dense layers), without the SN | {accs('transfer', 'raw_acc')} | "
        f"{nums('transfer')} | {cost('transfer')} |",
        f"| overwriting, accuracy with the new SN | {accs('overwrite', 'new_sn_acc')} | {nums('overwrite')} | "
        f"{cost('overwrite')} |",
        "",
    ]
    prune = ", ".join(f"{100 * p['rate']:.0f}%: {p['with_sn_acc']:.1f} / {p['raw_acc']:.1f}" for p in rep["pruning"])
    paper_prune = " / ".join(
        f"{min(v):.1f}" if min(v) == max(v) else f"{min(v):.1f}-{max(v):.1f}"
        for v in (paper["pruning_with_sn"], paper["pruning_without_sn"])
    )
    lines += [f"Pruning (global L1, no fine-tuning), with SN / without: {prune} (paper, 10-40%: {paper_prune}).", ""]
    if "serial_search" in rep:
        ss = rep["serial_search"]
        bf = ss["brute_force"]
        best = bf["candidate_confirm_accuracy_max"]
        rev = []
        for region in ("known", "unknown"):
            r = ss[f"reverse_{region}"]
            rev.append(
                f"{region} region {100 * r['accuracy_mean']:.1f} +/- {100 * r['accuracy_std']:.1f}% (best "
                f"{100 * r['accuracy_best']:.1f}%, {len(r['per_restart'])} restarts)"
            )
        at = "" if best is None else f", best candidate at confirmation {100 * best:.1f}%"
        lines += [
            f"Serial-number search: brute force **{bf['unlocks']} unlocks in {bf['tries']:,} tries** "
            f"({bf['queries']:,} queries: {bf['candidates']} tries passed the 10-image screen, "
            f"{bf['unlocks']} the {bf['confirm_images']}-image confirmation{at}; {bf['wall_s']:.0f} s); "
            f"reverse engineering, {rev[0]}, {rev[1]}; paper: {paper['reverse_engineered']}.",
            "",
        ]
    nc = {k: v for k, v in rep.get("neural_cleanse", {}).items() if isinstance(v, dict)}
    if nc:
        scans = ", ".join(
            f"{name} {r['max_anomaly_index']:.2f} ({', '.join(map(str, r['flagged'])) or 'none'})"
            for name, r in nc.items()
        )
        secs = [r["wall_s"] for r in nc.values()]
        lines += [
            f"Neural Cleanse, max anomaly index (flagged labels): {scans}; the Zhang content backdoor's target "
            f"is label {rep['neural_cleanse'].get('zhang_content_target')}; scans took {min(secs):.0f}-"
            f"{max(secs):.0f} s.",
            "",
        ]
    env = rep["environment"]
    lines.append(
        f"Teacher {rep['teacher_acc']:.1f}%, customer model {rep['student_with_sn']:.1f}% with its "
        f"{rep['geometry']['height']}x{rep['geometry']['width']} serial number, {rep['student_raw']:.1f}% "
        f"without; {rep['config']['attack_epochs']} attack epochs at Adam {rep['config']['attack_lr']:g}; "
        f"seed {rep['seed']}; wall {rep['wall_s']:.0f} s on {env['cpu_count']} cores, "
        f"{env['torch_threads']} torch thread(s)."
    )
    return "\n".join(lines)


def nc_table(reports: Path, dataset: str) -> str:
    """Neural Cleanse's row per model scanned (``reproduce neural-cleanse``) of ``dataset``."""
    rep = _report(reports / f"neural_cleanse_{dataset}.json")
    if rep is None:
        return f"No report yet: run `deepserial reproduce neural-cleanse --dataset {dataset}`."
    lines = [
        "| model | test acc (%) | max anomaly index | flagged labels (watermark target) | owner's verdict "
        "before / after unlearning |",
        "|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        sc = r["scan"]
        flagged = ", ".join(map(str, sc["flagged"])) or "none"
        if r.get("target") is not None:
            flagged += f" ({r['target']})"
        if "before" not in r:
            verdict = "–"
        elif not r.get("unlearned"):
            verdict = f"{_mark(r['before'])} / nothing to unlearn"
        else:
            verdict = f"{_mark(r['before'])} / {_mark(r['after']['verdict'])} at {r['after']['test_acc']:.1f}%"
        lines.append(f"| {r['model']} | {r['test_acc']:.1f} | {sc['max_anomaly_index']:.2f} | {flagged} | {verdict} |")
    env = rep["environment"]
    lines += [
        "",
        f"{rep['config']['nc_steps']} joint steps per scan; seed {rep['seed']}; wall {rep['wall_s']:.0f} s "
        f"on {env['cpu_count']} cores, {env['torch_threads']} torch thread(s).",
    ]
    return "\n".join(lines)


def seeds_table(reports: Path, dataset: str) -> str:
    """The DSN seeds study's summary: per attack and fraction, mean +/- sd, runs that worked, cost."""
    rep = _report(reports / f"attacks_dsn_{dataset}_seeds.json")
    if rep is None:
        return f"No report yet: run `deepserial reproduce attacks --scheme dsn --dataset {dataset} --seeds 0,1,2,3,4`."
    summ, n = rep["summary"], len(rep["runs"])
    fr = list(summ["fine_tuning"])
    shares = " / ".join(f"{100 * float(f):g}" for f in fr)
    lines = [
        f"| attack (attacker data {shares}%) | mean +/- sd over {n} seeds | runs that worked | median cost vs "
        "from scratch |",
        "|---|---|---|---|",
    ]
    labels = {
        "fine_tuning": "fine-tuning (FTAL), without the SN",
        "from_scratch": "from scratch (the * row)",
        "transfer": "transfer learning, without the SN",
        "overwrite": "overwriting, with the new SN",
    }
    for key, label in labels.items():
        cells = [summ[key][f] for f in fr]
        acc = " / ".join(f"{c['mean']:.1f} +/- {c['std']:.1f}" for c in cells)
        if key == "from_scratch":
            lines.append(f"| {label} | {acc} | – | 1 (reference) |")
            continue
        worked = " / ".join(f"{c['worked']}/{n}" for c in cells)
        cost = " / ".join("–" if c["cost_ratio_median"] is None else f"{c['cost_ratio_median']:.2f}x" for c in cells)
        lines.append(f"| {label} | {acc} | {worked} | {cost} |")
    ft = [[r["fractions"][f]["fine_tuning"]["raw_acc"] for f in fr] for r in rep["runs"]]
    lines += [
        "",
        "Fine-tuning per seed ("
        + ", ".join(
            f"seed {r['seed']}: " + " / ".join(f"{v:.1f}" for v in row) for r, row in zip(rep["runs"], ft, strict=True)
        )
        + f"); wall {rep['wall_s']:.0f} s, {rep['environment']['torch_threads']} torch thread(s).",
    ]
    return "\n".join(lines)


def update(text: str, reports: Path) -> str:
    """``text`` with each marked table replaced by the one the reports give."""
    makers = [(m, d, table) for m, d in TABLES.items()] + [(m, d, attack_table) for m, d in ATTACK_TABLES.items()]
    makers += [(m, d, dsn_attack_table) for m, d in DSN_TABLES.items()]
    makers += [(m, d, nc_table) for m, d in NC_TABLES.items()]
    makers += [(m, d, seeds_table) for m, d in SEEDS_TABLES.items()]
    for marker, dataset, make in makers:
        start, end = f"<!-- {marker} -->\n", f"\n<!-- /{marker} -->"
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            raise SystemExit(f"README has no {start.strip()} ... {end.strip()} section")
        text = text[: i + len(start)] + make(reports, dataset) + text[j:]
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README differs from the reports")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = update(old, ROOT / "reports")
    if args.check:
        return int(new != old)
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
