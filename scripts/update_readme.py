"""Generate README's headline tables and the whole of docs/results.md from the committed reports.

Every number README and docs/results.md show is read here from a JSON report in ``reports/`` (and, for
the benchmark summary of docs/results.md, ``benchmarks/results/``); nothing is typed by hand, so a
figure cannot drift from the report it came from. README keeps one headline table per family between
markers (``<!-- dsn-headline -->``, ``<!-- wm-headline -->``, ``<!-- attack-headline -->``,
``<!-- wrt-headline -->`` and their closing ``<!-- /... -->``); docs/results.md is written whole.

When an attack "worked" is decided by one rule, :func:`deepserial.experiments.attacks.attack_worked`;
which provenance fields a report should carry by :data:`deepserial.report.PROVENANCE`.

Usage: ``python scripts/update_readme.py`` (``--check`` exits 1 when README or docs/results.md is out
of date; tests/test_readme.py runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the rules of this checkout, not of some installed copy

from deepserial.experiments.attacks import HEADLINE, WORKED_RULE, attack_worked  # noqa: E402
from deepserial.experiments.dsn_security import ACCEPTANCE, checks  # noqa: E402
from deepserial.experiments.wrt_attacks import (  # noqa: E402
    LOCK_MARGIN,
    REMOVAL_MARGIN,
    SOK,
    TRACE_LEDGER,
    controls_verified,
    outcome,
    protected_acc,
)
from deepserial.report import missing_provenance  # noqa: E402
from deepserial.schemes.dsn import DSNConfig  # noqa: E402

Report = dict[str, Any]
DATASETS = ("mnist5k", "fashion-mnist")
# Classes of each data set reproduced (the reports do not record it); chance accuracy is 100 / classes.
CLASSES = {"mnist5k": 10, "fashion-mnist": 10, "cifar-digits": 10}
FRACTION_ATTACKS = {"fine_tuning": "fine-tuning (FTAL)", "transfer": "transfer learning", "overwrite": "overwriting"}
NOT_RUN = "not run"


# ----- reading and formatting -------------------------------------------------------------------------
def _report(path: Path) -> Report | None:
    """A committed report, or None when that reproduction has not been run yet."""
    return json.loads(path.read_text()) if path.exists() else None


def _watermark_reports(reports: Path, dataset: str) -> list[Report]:
    """Every watermark reproduction of ``dataset``, by scheme name."""
    out = []
    for p in sorted(reports.glob(f"*_{dataset}.json")):
        rep = json.loads(p.read_text())
        if rep.get("experiment") == "watermark" and rep.get("dataset") == dataset:
            out.append(rep)
    return out


def _attack_reports(reports: Path, dataset: str) -> list[Report]:
    """Every watermark-scheme attack reproduction of ``dataset``, by scheme name."""
    out = []
    for p in sorted(reports.glob(f"attacks_*_{dataset}.json")):
        rep = json.loads(p.read_text())
        if rep.get("dataset") == dataset and rep.get("scheme") != "dsn" and "victim" in rep:
            out.append(rep)
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _p(p: float) -> str:
    """A p-value in one significant digit (1e-95, 3e-04)."""
    return f"{p:.0e}".replace("e-0", "e-").replace("e+00", "")


def _sci(x: float) -> str:
    """A rate as people write it: 1e-3, 2.5e-4; 0.5 and above as is."""
    if x == 0 or x >= 0.01:
        return f"{x:g}"
    mantissa, exp = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exp)}"


def _span(values: list[float], digits: int = 1) -> str:
    """``a`` when all values round alike, else ``lo-hi``."""
    lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return lo if lo == hi else f"{lo}-{hi}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _shares(fractions: list[str]) -> str:
    return " / ".join(f"{100 * float(f):g}" for f in fractions)


def _mark(cell: dict[str, Any] | None) -> str:
    return "✓" if cell and cell.get("decision") else "✗"


def _chance(dataset: str) -> float | None:
    """Chance accuracy (%) on ``dataset``: 100 / classes; None for a data set not in :data:`CLASSES`."""
    return 100.0 / CLASSES[dataset] if dataset in CLASSES else None


# ----- DSN: the serial-number lock (reproduce dsn) ----------------------------------------------------
DSN_ROWS = [
    ("teacher (no SN)", "teacher_acc", None, "teacher"),
    ("valid SN", "valid_sn_acc", None, "with_sn"),
    ("no SN (raw)", "raw_acc", None, "without_sn"),
    ("random wrong SN, mean / max", "wrong_sn_mean", "wrong_sn_max", "wrong"),
    ("one bit off (Hamming-1), mean / max", "hamming1_mean", "hamming1_max", None),
    ("two bits off (Hamming-2), mean / max", "hamming2_mean", "hamming2_max", None),
    ("linear probe on raw-input features", "probe_acc", None, None),
]


def _dsn_reports(reports: Path) -> list[Report]:
    """Every ``reproduce dsn`` report: the registered data sets first, then the others by name."""
    reps = [json.loads(p.read_text()) for p in sorted(reports.glob("dsn_*.json"))]
    reps = [r for r in reps if r.get("experiment") == "dsn-table2"]
    order = {d: i for i, d in enumerate(DATASETS)}
    return sorted(reps, key=lambda r: (order.get(r["dataset"], len(order)), r["dataset"]))


def _paper_column(rep: Report) -> tuple[str, dict[str, float]] | None:
    """The paper's Table 2 column that matches the report's task: MNIST for mnist5k, GTSRB for DSN's
    GTSRB network; None where the paper has no counterpart."""
    if rep["dataset"] == "mnist5k":
        return "MNIST", rep["paper_table2"]["MNIST"] | {
            "wrong": rep["paper_2023_wrong_2x2"]["mean"],
            "wrong_max": rep["paper_2023_wrong_2x2"]["max"],
        }
    if rep["config"].get("arch") == "dsn_gtsrb":
        return "GTSRB", rep["paper_table2"]["GTSRB"]
    return None


def _run_epochs(rep: Report, run: dict[str, Any]) -> int:
    return int(run.get("student_epochs") or rep["config"]["student_epochs"])


def _run_label(rep: Report, name: str) -> str:
    run = rep["runs"][name]
    geo = run["serial_geometry"]
    scale = geo.get("scale", 1)
    label = f"{name} ({run['serial_bits']} bits"
    label += f", {scale}x{scale} pixels per bit" if scale != 1 else ""
    return label + f", {_run_epochs(rep, run)} epochs)"


def dsn_lock_table(rep: Report) -> str:
    """DSN Table 2 beside ours for one ``reproduce dsn`` report: one column per run."""
    paper = _paper_column(rep)
    names = list(rep["runs"])
    header = ["figure"] + ([f"paper ({paper[0]})"] if paper else []) + [_run_label(rep, n) for n in names]
    rows = []
    for label, key, key_max, pkey in DSN_ROWS:
        row = [label]
        if paper:
            p = paper[1]
            if pkey == "wrong" and "wrong" in p:
                row.append(f"{p['wrong']:.1f} / {p['wrong_max']:.1f}")
            elif pkey in p:
                row.append(f"{p[pkey]:.1f}")
            else:
                row.append("–")
        for n in names:
            run = rep["runs"][n]
            row.append(f"{run[key]:.1f}" + (f" / {run[key_max]:.1f}" if key_max else ""))
        rows.append(row)
    return _table(header, rows)


def _border_interior(run: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """Hamming-1 accuracies split into the pattern's border bits and its interior bits (row-major)."""
    geo, each = run["serial_geometry"], run.get("hamming1_each") or []
    h, w = geo["height"], geo["width"]
    if len(each) != h * w or h < 3 or w < 3:
        return None
    border = [each[i * w + j] for i in range(h) for j in range(w) if i in (0, h - 1) or j in (0, w - 1)]
    inner = [each[i * w + j] for i in range(1, h - 1) for j in range(1, w - 1)]
    return border, inner


def dsn_lock_section(rep: Report) -> str:
    """One data set's DSN lock: setup, table, near misses by position, reruns."""
    d = rep["dataset"]
    first = next(iter(rep["runs"].values()))
    sizes = first["sizes"]
    epochs = sorted({_run_epochs(rep, r) for r in rep["runs"].values()})
    command = rep.get("command") or f"deepserial reproduce dsn --dataset {d}"
    counts = sorted({(r["serial_bits"], r["wrong_sn_count"]) for r in rep["runs"].values()})
    wrong = ", ".join(f"{n:,} keys for {bits} bits" + (" (all)" if n == 2**bits - 1 else "") for bits, n in counts)
    lines = [
        f"### `{d}`",
        "",
        f"`{command}` → `reports/dsn_{d}.md`. Owner {sizes['owner']:,} / attacker {sizes['attacker']:,} / "
        f"test {sizes['test']:,} images; network `{rep['config'].get('arch', 'dsn_mnist')}`; teacher "
        f"{rep['config']['teacher_epochs']} epochs, students {' or '.join(map(str, epochs))}; seed {rep['seed']}. "
        f"Test accuracy in %. Random wrong keys: {wrong} on {first['wrong_sn_eval_samples']} test images each; "
        f"two bits off: every neighbour on {first['hamming2_eval_samples']} images; one bit off: every "
        "neighbour on every test image.",
        "",
        dsn_lock_table(rep),
        "",
    ]
    notes = []
    for name, run in rep["runs"].items():
        split = _border_interior(run)
        if split and run["serial_bits"] > 9:
            border, inner = split
            notes.append(
                f"{name}: a key one bit off on the pattern's border unlocks {_span(border)}% of test images "
                f"(mean {sum(border) / len(border):.1f}), one bit off inside it {_span(inner)}% "
                f"(mean {sum(inner) / len(inner):.1f})"
            )
    if notes:
        lines += ["Near misses by position: " + "; ".join(notes) + ".", ""]
    if rep.get("rerun"):
        lines += [
            f"Rerun after the first report and merged into it (`--runs`): {', '.join(rep['rerun'])}; the report "
            "holds only the current runs.",
            "",
        ]
    return "\n".join(lines)


def dsn_headline(reports: Path) -> str:
    """README: the default 36-bit serial number on every data set reproduced."""
    rows = []
    for rep in _dsn_reports(reports):
        run = rep["runs"].get("default-6x6")
        if run is None:
            continue
        rows.append(
            [
                f"`{rep['dataset']}`",
                f"{run['teacher_acc']:.1f}",
                f"{run['valid_sn_acc']:.1f}",
                f"{run['raw_acc']:.1f}",
                f"{run['wrong_sn_mean']:.1f} / {run['wrong_sn_max']:.1f}",
                f"{run['hamming1_mean']:.1f} / {run['hamming1_max']:.1f}",
                f"{run['probe_acc']:.1f}",
            ]
        )
    if not rows:
        return "No report yet: run `deepserial reproduce dsn --dataset mnist5k`."
    bits = sorted(
        {r["runs"]["default-6x6"]["serial_bits"] for r in _dsn_reports(reports) if "default-6x6" in r["runs"]}
    )
    caption = f"The default {'/'.join(map(str, bits))}-bit serial number; test accuracy in %.\n\n"
    header = [
        "data set",
        "teacher",
        "with its SN",
        "without SN",
        "random wrong SN, mean / max",
        "one bit off, mean / max",
        "linear probe, raw features",
    ]
    return caption + _table(header, rows)


def dsn_thief(reports: Path) -> str:
    """README: what an adaptive thief gets from a leaked customer model: the shipped recipe's reproductions,
    the fashion-mnist runs still under way, and the research recipes measured beside them."""
    results = reports.parent / "benchmarks" / "results"
    parts = ["With the shipped recipe (docs/decisions.md item 21):"]
    for name in ("mnist5k", "mnist5k-alt", "fashion-mnist"):
        security = reports / f"dsn_security_{name}.json"
        if not security.exists():
            continue
        rep = json.loads(security.read_text())
        summary, cfg, runs = rep["summary"], rep["config"], list(rep["runs"].values())
        where = f"at rows/columns {cfg['position'][0]}/{cfg['position'][1]}" if cfg["position"] else "in the corner"
        failing = [f"{k} {v['worst']:.1f}" for k, v in summary.items() if v["held"] < v["of"]]
        old = "" if _is_current(cfg.get("recipe")) else "measured with another recipe, "
        exact = _keys_lost(r["checks"] for r in runs)
        parts.append(
            f"`deepserial reproduce dsn-security --dataset {name}` ({old}{cfg['size'][0]}x{cfg['size'][1]} {where}, "
            f"seeds {', '.join(map(str, rep['seeds']))}, `reports/dsn_security_{name}.md`): "
            f"{sum(v['held'] == v['of'] for v in summary.values())} of {len(summary)} acceptance checks hold on "
            "every seed"
            + (f"; failing (worst value): {', '.join(failing)}" if failing else "")
            + f"; **exact key recovered by reverse engineering in {exact} of {len(runs)}**."
        )
        gains = {
            k.removeprefix("finetune_gain_"): [r["checks"][k]["value"] for r in runs]
            for k in summary
            if k.startswith("finetune_gain_")
        }
        if gains:
            listed = ", ".join(f"{float(f):.0%} {max(v):.1f} / {sum(v) / len(v):.1f}" for f, v in gains.items())
            lead = "**What the leaked model is worth to a thief**" if name == "mnist5k" else "Its worth to a thief"
            parts.append(
                f"{lead} (points its best fine-tuning or transfer setting, picked on its own data, gains over "
                f"training from scratch on the same data, worst / mean over seeds, by share of the data): {listed}."
            )
    if not (reports / "dsn_security_fashion-mnist.json").exists():
        parts += _fashion_partial(results)
    parts.append(_research_recipes(results))
    parts.append("The table above was measured with an earlier recipe.")
    return " ".join(p for p in parts if p)


def _keys_lost(checked: Iterable[dict]) -> int:
    """How many customer models (their dsn-security checks) gave their exact key to reverse engineering."""
    return sum(c["exact_key_recovered"]["value"] > 0 for c in checked)


def _fashion_partial(results: Path) -> list[str]:
    """One sentence per folder of unfinished fashion-mnist runs: their recipe, and what the stages they
    finished show (records copied out of CPU runs, and work folders of runs made on a GPU)."""
    out = []
    for folder in sorted(results.glob("dsn_security_fashion-mnist*_partial")):
        runs = sorted(folder.glob("run.json")) + sorted(folder.glob("seed*_run.json"))
        runs += sorted(folder.glob("gpu/work*/run.json"))
        recipes = [json.loads(p.read_text())["config"].get("recipe") for p in runs]
        found = sorted(folder.glob("seed*_record.json")) + sorted(folder.glob("gpu/work*/seed*/record.json"))
        kept = [(p, r) for p, r in ((p, json.loads(p.read_text())) for p in found) if "recovery" in r]
        if not kept or not recipes:
            continue
        shipped = all(_is_current(r) for r in recipes)
        label = "shipped recipe" if shipped else "another recipe"
        checked = [checks(r | {"finetune": r.get("finetune", {})}) for _, r in kept]
        exact = _keys_lost(checked)
        gpu = sum("gpu" in p.parts for p, _ in kept)

        def each(key: str, checked: list[dict] = checked) -> str:
            return " / ".join(f"{c[key]['value']:.1f}" for c in checked)

        done = sorted(set.intersection(*({k for k in c if k.startswith("finetune_gain_")} for c in checked)))
        out.insert(
            0 if shipped else len(out),
            f"Full fashion-mnist, {label} ({len(kept)} customer model{'s' if len(kept) > 1 else ''}, the stages "
            "finished so far, "
            f"`{folder.relative_to(results.parents[1])}/`"
            + (f", {gpu} trained on a GPU" if gpu else "")
            + f"): exact key recovered in {exact} of {len(kept)} (the thief's pick {each('recovered_max')}% on "
            f"test), one bit off at most {each('hamming1_max')}%, valid gap {each('valid_gap')} points"
            + "".join(f", fine-tuning gain at {float(k.removeprefix('finetune_gain_')):.0%} {each(k)}" for k in done)
            + ".",
        )
    return out


def _research_recipes(results: Path) -> str:
    """The research recipes' reproductions on mnist5k, by geometry: how often the key was recovered."""
    by_geometry: dict[str, list[tuple[str, str, dict]]] = {}
    for path in sorted(results.glob("dsn_security_amp6*/dsn_security_*.json")):
        rep = json.loads(path.read_text())
        cfg = rep["config"]
        where = f"{cfg['size'][0]}x{cfg['size'][1]}" + (" at {}/{}".format(*cfg["position"]) if cfg["position"] else "")
        for seed, r in rep["runs"].items():
            by_geometry.setdefault(where, []).append((rep["name"], seed, r["checks"]))
    found = []
    for where, runs in by_geometry.items():
        exact = _keys_lost(c for _, _, c in runs)
        locked = sum(all(v["holds"] for k, v in c.items() if not k.startswith("finetune_gain")) for _, _, c in runs)
        lo, hi = (f(c["hamming1_max"]["value"] for _, _, c in runs) for f in (min, max))
        found.append(
            f"{where}: {len(runs)} run{'s' if len(runs) > 1 else ''}, exact key recovered in {exact}, one bit "
            f"off {lo:.1f}" + (f"-{hi:.1f}" if hi > lo else "") + f"%, every check but fine-tuning held in {locked}"
        )
    previous = results / "dsn_security_recipe_until_2026-12-04"
    before = []
    for path in sorted(previous.glob("dsn_security_*.json")):
        rep = json.loads(path.read_text())
        runs = list(rep["runs"].values())
        h1 = [r["checks"]["hamming1_max"]["value"] for r in runs]
        exact = _keys_lost(r["checks"] for r in runs)
        before.append(f"`{rep['name']}` one bit off {min(h1):.1f}-{max(h1):.1f}%, exact key in {exact} of {len(runs)}")
    return (
        "Research recipes (`benchmarks/results/dsn_security_amp6*/`, items 15-20): " + "; ".join(found) + ". "
        if found
        else ""
    ) + (
        f"The recipe shipped before (`{previous.relative_to(results.parents[1])}/`): " + "; ".join(before) + "."
        if before
        else ""
    )


def _is_current(recipe: dict | None) -> bool:
    """Whether a report's recorded DSN recipe is the shipped one (compared as a DSNConfig, so an option
    added since at its default changes nothing)."""
    try:
        return recipe is not None and DSNConfig(**recipe) == DSNConfig.default()
    except ValueError:  # a recorded option this checkout does not know
        return False


def trace_headline(reports: Path) -> str:
    """README: fingerprint tracing of leaked customer models (``reproduce tracing``)."""
    path = reports / "tracing_mnist5k.json"
    if not path.exists():
        return "No tracing report yet: run `deepserial reproduce tracing --dataset mnist5k`."
    rep = json.loads(path.read_text())
    s = rep["summary"]
    rows = [
        [
            k,
            f"{r['right']}/{r['traces']}",
            f"{r['innocent_named']}/{r['traces']}",
            f"{r['valid_acc_mean']:.1f}",
            f"{r['right_worth_serving']}/{r['worth_serving']}" if "worth_serving" in r else "not counted",
        ]
        for k, r in s["rows"].items()
    ]
    cost = s.get("fingerprint_cost", {})
    return "\n".join(
        [
            f"`mnist5k`, {s['customers']} fingerprinted customer models (`reports/tracing_mnist5k.md`"
            + ("" if _is_current(rep["config"].get("recipe")) else "; measured with another recipe")
            + f"), at most "
            f"{s['max_queries']} queries per trace, {rep.get('decoder', 'plain match count').split(' (')[0]}, "
            f"family-wise false-positive rate {rep['config']['fpr']:g}; "
            f"models that must name nobody (the teacher, {len(rep['innocents']) - 1} unissued): "
            f"{len(s['innocents_named'])} named.",
            "",
            _table(
                [
                    "leaked model",
                    "right customer named",
                    "an innocent named",
                    "accuracy with key",
                    "named, of those worth serving",
                ],
                rows,
            ),
            "",
            *(
                [
                    "Worth serving: accuracy with the key above the thief's best model trained from scratch on "
                    f"the same data ({max(rep['from_scratch'].values()):.1f}%).",
                    "",
                ]
                if rep.get("from_scratch")
                else []
            ),
            "The fingerprint's cost (fingerprinted minus the same licence issued without one, "
            f"{len(rep['twins'])} customers; + on a wrong-key figure is a weaker lock): accuracy with the key "
            f"{-cost.get('valid_sn_acc', float('nan')):+.2f} points, one-bit-off mean "
            f"{-cost.get('hamming1_mean', float('nan')):+.2f} and max "
            f"{-cost.get('hamming1_max', float('nan')):+.2f}, random wrong keys max "
            f"{-cost.get('wrong_sn_max', float('nan')):+.2f}. At {rep['config']['student_epochs']} student "
            "epochs one bit off reaches "
            + " and ".join(
                f"{max(t[w]['hamming1_max'] for t in rep['twins']):.1f}% {w}" for w in ("fingerprinted", "plain")
            )
            + f" (the DSN lock's bound: {ACCEPTANCE['hamming_max']:g}%).",
        ]
    )


# ----- ownership watermarks (reproduce <scheme>) ------------------------------------------------------
# A stricter level than the reproductions' own, at which the tables also count verdicts: how many
# false positives are the test's size, and how many would pass any reasonable level.
STRICT = 1e-4


def _one(values: list[Any], fmt: str = "{}") -> str:
    """The one value every report shares, formatted, or the distinct ones joined by '/'."""
    return "/".join(fmt.format(v) for v in sorted(set(values)))


def _fpr(reps: list[Report]) -> str:
    """The false-positive rate the reports' verdicts were taken at (an attack report's: its victim's)."""
    return "/".join(_sci(v) for v in sorted({r["config"].get("fpr") or r["victim"]["verdict"]["fpr"] for r in reps}))


def wm_header(reps: list[Report]) -> list[str]:
    fpr, keys = _fpr(reps), _one([r["n_random_keys"] for r in reps], "{:,}")
    return [
        "scheme",
        "unmarked acc",
        "marked acc (mean)",
        "largest drop",
        f"own keys verified at {fpr}",
        "queries (mean)",
        f"FP / {keys} vs unmarked at {fpr}",
        f"FP / {keys} vs other key at {fpr}",
        f"at {_sci(STRICT)}: own verified; FP unmarked, other",
    ]


def _fp(rep: Report, suspect: str, level: float) -> str:
    """Random keys of ``suspect`` (unmarked / other_key) with p-value <= ``level``; reports older than
    the per-key p-value lists give it only when their smallest p-value says it is 0."""
    ps = rep.get(f"random_p_{suspect}")
    if ps is not None:
        return str(sum(p <= level for p in ps))
    return "0" if rep[f"random_p_min_{suspect}"] > level else "?"


def _wm_row(rep: Report) -> list[str]:
    own = sum(p <= STRICT for p in rep["own_p_values"])
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
        f"{own}/{rep['n_models']}; {_fp(rep, 'unmarked', STRICT)}, {_fp(rep, 'other_key', STRICT)}",
    ]


def wm_table(reports: Path, dataset: str) -> str:
    """The Markdown table of every watermark report of ``dataset``."""
    reps = _watermark_reports(reports, dataset)
    return _table(wm_header(reps), [_wm_row(r) for r in reps])


def _training(rep: Report) -> str:
    cfg = rep["config"]
    own = cfg.get("per_scheme", {}).get(rep["scheme"], {})
    epochs, batch = own.get("epochs", cfg["epochs"]), own.get("batch_size", cfg["batch_size"])
    settings = own.get("scheme_settings") or {}
    extra = ", " + ", ".join(f"{k} {v}" for k, v in settings.items()) if settings else ""
    return f"{epochs} epochs at batch {batch}{extra}"


def _verified_random_keys(rep: Report) -> list[str]:
    """Each random key verified at the report's false-positive rate, with its p-value."""
    out = []
    fpr = rep["config"]["fpr"]
    for suspect, label in (("unmarked", "unmarked model"), ("other_key", "model marked with another key")):
        ps = rep.get(f"random_p_{suspect}")
        if ps is None:
            continue
        hits = sorted(p for p in ps if p <= fpr)
        if hits:
            shown = ", ".join(_p(p) for p in hits[:4]) + (", ..." if len(hits) > 4 else "")
            out.append(f"{len(hits)} against the {label} (p = {shown})")
    return out


def _scheme_notes(rep: Report) -> list[str]:
    """Generated remarks on one scheme's reproduction: what its report measures beyond the table."""
    name, extra, verdicts = rep["scheme"], rep.get("extra") or {}, rep["own_verdicts"]
    notes = []
    keys = _verified_random_keys(rep)
    if keys:
        notes.append(f"random keys verified at {_sci(rep['config']['fpr'])}: " + "; ".join(keys))
    if name == "new-label" and "queries_to_first_delta_mean" in extra:
        paper = rep.get("paper", {})
        notes.append(
            f"first Delta answer after {extra['queries_to_first_delta_mean']:.2f} queries on average over a random "
            f"query order (Delta hit rate {100 * extra['delta_hit_rate_mean']:.0f}%; "
            f"paper: {paper.get('queries', '–')})"
        )
    if name == "deepsigns-output" and "eq5_threshold_k20" in extra:
        paper = rep.get("paper", {})
        notes.append(
            f"Eq. 5 mismatch thresholds {extra['eq5_threshold_k20']} and {extra['eq5_threshold_k30']} "
            "for K = 20 and 30 "
            f"(paper's Table 4: {paper.get('eq5_threshold_k20', '–')} and {paper.get('eq5_threshold_k30', '–')}); "
            f"largest mismatch count on an own model {extra['own_mismatches_max']:.0f}"
        )
    bers = [v["details"]["ber"] for v in verdicts if "ber" in v.get("details", {})]
    if bers:
        notes.append(f"bit error rate of the own models at most {max(bers):.3g}")
    if name == "null-embedding":
        notes.append(f"own verdicts at p <= {_p(max(rep['own_p_values']))}")
        fpk = rep.get("false_positive_keys") or {}
        named = [f"{i}" for s in ("unmarked", "other_key") for i in fpk.get(s, [])]
        if named:
            recreate = (
                f"re-creatable with SOURCE_DATE_EPOCH={rep['signed_at_epoch']}"
                if rep.get("signed_at_epoch") is not None
                else "not re-creatable: the report does not record the signing time its keys derive from"
            )
            notes.append(f"the report names the verified random keys (index {', '.join(named)}), {recreate}")
    return notes


def _piracy(rep: Report) -> str | None:
    """Null embedding's piracy experiment (§7.2) of one report, generated from its runs."""
    extra = rep.get("extra") or {}
    runs = extra.get("piracy_runs")
    if not runs or "paper" not in runs:
        return None
    chance = _chance(rep["dataset"])
    paper = rep.get("paper", {})

    def group(key: str) -> dict[str, Any]:
        rs = runs[key]
        after = [r["nc_after"] for r in rs]
        return {
            "n": len(rs),
            "after": after,
            "mean": sum(after) / len(after),
            "at_chance": None if chance is None else sum(round(a, 1) <= chance for a in after),
            "owner": sum(r["owner_verified"] for r in rs),
            "pirate": sum(r["pirate_verified"] for r in rs),
            "lr": rs[0]["lr"],
            "opt": rs[0]["optimizer"],
            "warmup": "lambda at full strength from the first step"
            if not rs[0].get("lam_warmup_epochs")
            else f"lambda warmed up over {rs[0]['lam_warmup_epochs']} epochs",
        }

    p = group("paper")
    text = (
        f"**Piracy (§7.2), `{rep['dataset']}`.** The paper's attacker ({p['opt'].upper()} at {_sci(p['lr'])}, "
        f"{p['warmup']}) on {p['n']} pirated copies of a marked model "
        f"({extra['piracy_nc_before']:.1f}%): "
        f"accuracy after the attack {_span(p['after'])}% (mean {p['mean']:.1f}%; paper "
        f"{paper.get('piracy_paper_nc_after_mean', float('nan')):.1f}%)"
        + ("" if chance is None else f", {p['at_chance']} of {p['n']} at or below chance ({chance:.0f}%)")
        + f"; the owner's watermark still verified in {p['owner']} of {p['n']}, the pirate's in "
        f"{p['pirate']} of {p['n']}."
    )
    if "paper_on_unmarked" in runs:
        u = group("paper_on_unmarked")
        text += (
            f" The same attack on the unmarked reference ({extra['piracy_unmarked_nc_before']:.1f}%) leaves "
            f"{_span(u['after'])}%"
            + ("" if chance is None else f" ({u['at_chance']} of {u['n']} at or below chance)")
            + "."
        )
    for key, label in (("adam", "Adam"), ("adam_warmup", "Adam with lambda warm-up")):
        if key in runs:
            a = group(key)
            text += (
                f" With {label} at {_sci(a['lr'])}: {_span(a['after'])}%, the owner's watermark verified in "
                f"{a['owner']} of {a['n']}, the pirate's in {a['pirate']} of {a['n']}."
            )
    return text


def wm_section(reports: Path, dataset: str) -> str:
    reps = _watermark_reports(reports, dataset)
    if not reps:
        return f"No report yet: run `deepserial reproduce <scheme> --dataset {dataset}`."
    cfg = reps[0]["config"]
    lines = [
        f"### `{dataset}`",
        "",
        f"`deepserial reproduce <scheme> --dataset {dataset}` → `reports/<scheme>_{dataset}.md`, compared in "
        f"`reports/schemes_{dataset}.md`. Network `{cfg['arch']}`, seed {reps[0]['seed']}; per scheme "
        f"{cfg['n_models']} independently keyed models and {cfg['n_random_keys']:,} random keys (each from a fresh "
        "owner identity) against the unmarked reference and against a model marked with another key; the "
        "reference is trained with the scheme's own budget.",
        "",
        wm_table(reports, dataset),
        "",
        "Training and what each report adds:",
        "",
    ]
    for rep in reps:
        notes = [_training(rep)] + _scheme_notes(rep)
        lines.append(f"- **{rep['scheme']}**: " + "; ".join(notes) + ".")
    lines.append("")
    strict = [
        f"{r['scheme']} {_fp(r, 'unmarked', STRICT)}, {_fp(r, 'other_key', STRICT)}"
        for r in reps
        if _fp(r, "other_key", STRICT) not in ("0", "?") or _fp(r, "unmarked", STRICT) not in ("0", "?")
    ]
    fpr, n = cfg["fpr"], cfg["n_random_keys"]
    lines += [
        f"At {_sci(STRICT)} the random keys that still verify (against the unmarked model, against the other-key "
        "model): " + ("; ".join(strict) if strict else "none") + f". A test at {_sci(fpr)} admits about "
        f"{fpr * n:g} false positive(s) per {n:,} random keys by construction.",
        "",
    ]
    for rep in reps:
        piracy = _piracy(rep)
        if piracy:
            lines += [piracy, ""]
    return "\n".join(lines)


def wm_headline(reports: Path) -> str:
    """README: per scheme, accuracy cost, own keys verified and false positives on both data sets."""
    per = {d: {r["scheme"]: r for r in _watermark_reports(reports, d)} for d in DATASETS}
    schemes = sorted(set().union(*per.values()))
    if not schemes:
        return "No report yet: run `deepserial reproduce <scheme> --dataset mnist5k`."
    present = [d for d in DATASETS if per[d]]

    def cells(s: str, make: Callable[[Report], str]) -> str:
        return " / ".join(make(per[d][s]) if s in per[d] else "–" for d in present)

    rows = [
        [
            s,
            cells(s, lambda r: f"{r['acc_drop_max']:.2f}"),
            cells(s, lambda r: f"{r['verified']}/{r['n_models']}"),
            cells(s, lambda r: f"{sum(r['own_queries']) / len(r['own_queries']):.0f}"),
            cells(s, lambda r: f"{r['false_positives_unmarked']}, {r['false_positives_other_key']}"),
        ]
        for s in schemes
    ]
    on = " / ".join(f"`{d}`" for d in present)
    reps = [r for d in present for r in per[d].values()]
    models, keys = sorted({r["n_models"] for r in reps}), sorted({r["n_random_keys"] for r in reps})
    caption = (
        f"Per scheme and data set ({on}): {'/'.join(map(str, models))} independently keyed models, "
        f"{'/'.join(f'{k:,}' for k in keys)} random keys against the unmarked model and against a model marked "
        "with another key.\n\n"
    )
    header = [
        "scheme",
        f"largest accuracy drop, points ({on})",
        f"own keys verified at {_fpr(reps)}",
        "queries per verdict (mean)",
        "random keys verified: vs unmarked, vs other key",
    ]
    return caption + _table(header, rows)


# ----- attacks on DSN (reproduce attacks --scheme dsn) ------------------------------------------------
def _costs(costs: list[dict[str, Any]]) -> str:
    """Cost ratios of one attack across the fractions ('at chance': never 5 points above chance)."""
    return " / ".join(
        "at chance" if c.get("failed") else "–" if c["ratio"] is None else f"{c['ratio']:.2f}x" for c in costs
    )


def _dsn_worked(rep: Report, key: str) -> list[bool]:
    """Per attacker fraction, whether attack ``key`` worked on this customer model (:func:`attack_worked`)."""
    return [attack_worked(row[key][HEADLINE[key]], row["from_scratch"]["raw_acc"]) for row in rep["fractions"].values()]


def dsn_attack_section(reports: Path, dataset: str) -> str:
    """DSN's robustness (Tables 3-6, serial-number search, Neural Cleanse) of ``dataset``, one customer model."""
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

    def worked(key: str) -> str:
        return " / ".join("yes" if w else "no" for w in _dsn_worked(rep, key))

    lines = [
        f"### `{dataset}`, one customer model",
        "",
        f"`deepserial reproduce attacks --scheme dsn --dataset {dataset}` → `reports/attacks_dsn_{dataset}.md`.",
        "",
        f"| attack (attacker data {_shares(fr)}%) | ours | worked | paper (MNIST) | cost vs from scratch |",
        "|---|---|---|---|---|",
        f"| fine-tuning (FTAL), accuracy without the SN | {accs('fine_tuning', 'raw_acc')} | {worked('fine_tuning')} | "
        f"{nums('fine_tuning')} | {cost('fine_tuning')} |",
        f"| from scratch on the same data (the * row) | {accs('from_scratch', 'raw_acc')} | – | "
        f"{nums('from_scratch')} | 1 (reference) |",
        f"| transfer learning (new dense layers), without the SN | {accs('transfer', 'raw_acc')} | "
        f"{worked('transfer')} | {nums('transfer')} | {cost('transfer')} |",
        f"| overwriting, accuracy with the new SN | {accs('overwrite', 'new_sn_acc')} | {worked('overwrite')} | "
        f"{nums('overwrite')} | {cost('overwrite')} |",
        "",
    ]
    prune = ", ".join(f"{100 * p['rate']:.0f}%: {p['with_sn_acc']:.1f} / {p['raw_acc']:.1f}" for p in rep["pruning"])
    paper_prune = " / ".join(
        f"{min(v):.1f}" if min(v) == max(v) else f"{min(v):.1f}-{max(v):.1f}"
        for v in (paper["pruning_with_sn"], paper["pruning_without_sn"])
    )
    rates = _span([100 * r for r in paper["pruning_rates"]], 0)
    lines += [f"Pruning (global L1, no fine-tuning), with SN / without: {prune} (paper, {rates}%: {paper_prune}).", ""]
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
        screen = (bf["queries"] - bf["candidates"] * bf["confirm_images"]) / bf["tries"]
        lines += [
            f"Serial-number search: brute force **{bf['unlocks']} unlocks in {bf['tries']:,} tries** "
            f"({bf['queries']:,} queries: {bf['candidates']} tries passed the {screen:g}-image screen, "
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
        lines += [
            f"Neural Cleanse, max anomaly index (flagged labels, above 2): {scans}; the Zhang content backdoor's "
            f"target is label {rep['neural_cleanse'].get('zhang_content_target')}. These scans do not check that "
            "the backdoor model's watermark verifies; the Neural Cleanse reproduction below does.",
            "",
        ]
    env = rep["environment"]
    lines.append(
        f"Teacher {rep['teacher_acc']:.1f}%, customer model {rep['student_with_sn']:.1f}% with its "
        f"{rep['geometry']['height']}x{rep['geometry']['width']} serial number, {rep['student_raw']:.1f}% "
        f"without; {rep['config']['attack_epochs']} attack epochs at Adam {_sci(rep['config']['attack_lr'])}; "
        f"seed {rep['seed']}; wall {rep['wall_s']:.0f} s on {env['cpu_count']} cores, "
        f"{env['torch_threads']} torch thread(s)."
    )
    return "\n".join(lines)


def seeds_section(reports: Path, dataset: str) -> str:
    """The DSN seeds study: per attack and fraction, mean +/- sd, runs that worked, cost; per seed."""
    rep = _report(reports / f"attacks_dsn_{dataset}_seeds.json")
    if rep is None:
        return f"No report yet: run `deepserial reproduce attacks --scheme dsn --dataset {dataset} --seeds 0,1,2,3,4`."
    summ, runs = rep["summary"], rep["runs"]
    n = len(runs)
    fr = list(summ["fine_tuning"])
    lines = [
        f"### `{dataset}`, {n} customer models",
        "",
        f"`deepserial reproduce attacks --scheme dsn --dataset {dataset} --seeds {','.join(map(str, rep['seeds']))}` → "
        f"`reports/attacks_dsn_{dataset}_seeds.md`; each seed its own split, teacher, serial number and customer "
        "model.",
        "",
        f"| attack (attacker data {_shares(fr)}%) | mean +/- sd over {n} seeds | runs that worked | median cost vs "
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
    per_seed = []
    for r in runs:
        ft = [r["fractions"][f]["fine_tuning"] for f in fr]
        sc = [r["fractions"][f]["from_scratch"]["raw_acc"] for f in fr]
        marks = [
            f"{e['raw_acc']:.1f}{'' if attack_worked(e['raw_acc'], s) else '*'}" for e, s in zip(ft, sc, strict=True)
        ]
        per_seed.append(f"seed {r['seed']}: " + " / ".join(marks))
    held = [str(r["seed"]) for r in runs if not any(_dsn_worked(r, "fine_tuning"))]
    raw_max = max(p["raw_acc"] for r in runs for p in r["pruning"])
    lines += [
        "",
        "Fine-tuning per seed, final accuracy without the SN (* did not work): " + "; ".join(per_seed) + ".",
        "",
        f"Fine-tuning never worked on seed(s) {', '.join(held) or 'none'}; transfer learning worked in "
        f"{sum(summ['transfer'][f]['worked'] for f in fr)} of {n * len(fr)} runs, overwriting in "
        f"{sum(summ['overwrite'][f]['worked'] for f in fr)} of {n * len(fr)}, fine-tuning in "
        f"{sum(summ['fine_tuning'][f]['worked'] for f in fr)} of {n * len(fr)}. Pruning (global L1 at "
        f"{_span([100 * p['rate'] for p in runs[0]['pruning']], 0)}%, no fine-tuning) left at most {raw_max:.1f}% "
        f"without the serial number on any seed. Wall {rep['wall_s']:.0f} s, "
        f"{rep['environment']['torch_threads']} torch thread(s).",
    ]
    return "\n".join(lines)


# ----- Neural Cleanse (reproduce neural-cleanse) ------------------------------------------------------
def nc_section(reports: Path, dataset: str) -> str:
    """Neural Cleanse's row per model scanned (``reproduce neural-cleanse``) of ``dataset``."""
    rep = _report(reports / f"neural_cleanse_{dataset}.json")
    if rep is None:
        return f"No report yet: run `deepserial reproduce neural-cleanse --dataset {dataset}`."
    rows = []
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
        rows.append([r["model"], f"{r['test_acc']:.1f}", f"{sc['max_anomaly_index']:.2f}", flagged, verdict])
    header = [
        "model",
        "test acc (%)",
        "max anomaly index",
        "flagged labels (watermark target)",
        "owner's verdict before / after unlearning",
    ]
    flagged = [r["model"] for r in rep["rows"] if r["scan"]["flagged"]]
    others = [r["scan"]["max_anomaly_index"] for r in rep["rows"] if not r["scan"]["flagged"]]
    env = rep["environment"]
    return "\n".join(
        [
            f"### `{dataset}`",
            "",
            f"`deepserial reproduce neural-cleanse --dataset {dataset}` → `reports/neural_cleanse_{dataset}.md`.",
            "",
            _table(header, rows),
            "",
            f"Flagged (anomaly index above 2): {', '.join(flagged) or 'none'}; the others scored "
            f"{_span(others, 2)}. {rep['config']['nc_steps']} joint steps per scan; seed {rep['seed']}; wall "
            f"{rep['wall_s']:.0f} s on {env['cpu_count']} cores, {env['torch_threads']} torch thread(s).",
        ]
    )


# ----- attacks on the watermarks (reproduce attacks --scheme <watermark>) -----------------------------
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


def _acc(cell: dict[str, Any]) -> str:
    return f"{cell['test_acc']:.1f}{_mark(cell['verdict'])}"


def _pruning(rows: list[dict[str, Any]], which: str) -> str:
    kept = [r for r in rows if r.get(which) and r[which]["verdict"]["decision"]]
    if not kept:
        return "never"
    best = max(kept, key=lambda r: r["rate"])
    return f"{100 * best['rate']:.0f}% ({best[which]['test_acc']:.1f}%)"


def _attack_row(rep: Report) -> list[str]:
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
    return [
        rep["scheme"],
        _acc(rep["victim"]),
        col("FTAL"),
        col("FTAL_sgd"),
        col("from_scratch"),
        variants,
        pruning,
        overwrite,
    ]


def _attack_notes(rep: Report) -> list[str]:
    """Generated remarks on one watermark's attack report beyond the table."""
    notes = []
    ft = rep.get("fine_tuning") or {}
    fr = sorted(ft, key=float)
    scratch = [ft[f]["from_scratch"] for f in fr if "from_scratch" in ft[f]]
    if scratch and any(s["verdict"]["decision"] for s in scratch):
        notes.append("**the from-scratch control verified**")
    if fr and all("overwrite" in ft[f] for f in fr):
        own = sum(bool(ft[f]["overwrite"]["verdict"]["decision"]) for f in fr)
        adv = sum(bool((ft[f]["overwrite"].get("adversary_verdict") or {}).get("decision")) for f in fr)
        notes.append(f"overwriting: the owner's key still verified in {own} of {len(fr)}, the adversary's in {adv}")
    if rep.get("neuron_pruning"):
        notes.append(
            f"neuron pruning (last convolution): still verified up to {_pruning(rep['neuron_pruning'], 'pruned')}, "
            f"with sparse fine-tuning {_pruning(rep['neuron_pruning'], 'pruned_fine_tuned')}"
        )
    nc = rep.get("neural_cleanse")
    if nc:
        sc = nc["scan"]
        after = nc.get("after")
        tail = f", after unlearning {_acc(after)}" if nc.get("unlearned") and after else ""
        notes.append(
            f"Neural Cleanse: anomaly index {sc['max_anomaly_index']:.2f}, flagged "
            f"{', '.join(map(str, sc['flagged'])) or 'nothing'}{tail}"
        )
    ex = (rep.get("extraction") or {}).get("rows")
    if ex:
        parts = [f"{r['source']} {r['queries']:,} queries {_acc(r)}" for r in ex]
        notes.append("extraction substitutes: " + ", ".join(parts))
    for t in rep.get("transfer") or []:
        rec = t.get("recovered")
        if rec:
            trained = {"head": "the new head only", "dense": "the dense layers", "all": "all layers"}
            notes.append(
                f"transfer to {t['student_task']} training {trained.get(t['trained'], t['trained'])} "
                f"({t['student_acc']:.1f}% there), then recovery: {_acc(rec)}"
            )
    failed = [a for a in rep.get("embedding_attempts", []) if not a["verdict"]["decision"]]
    if failed:
        notes.append(f"{_count(len(failed), 'key')} did not verify after embedding and was replaced")
    return notes


def wm_attack_section(reports: Path, dataset: str) -> str:
    reps = _attack_reports(reports, dataset)
    if not reps:
        return f"No report yet: run `deepserial reproduce attacks --scheme <watermark> --dataset {dataset}`."
    lines = [
        f"### `{dataset}`",
        "",
        f"`deepserial reproduce attacks --scheme <watermark> --dataset {dataset}` → "
        f"`reports/attacks_<scheme>_{dataset}.md`.",
        "",
        _table(ATTACK_HEADER, [_attack_row(r) for r in reps]),
        "",
    ]
    if any(NOT_RUN in _attack_row(r) for r in reps):
        lines += ['"not run": that report predates the SGD column; run the command to add it.', ""]
    for rep in reps:
        notes = _attack_notes(rep)
        if notes:
            lines.append(f"- **{rep['scheme']}**: " + "; ".join(notes) + ".")
    return "\n".join(lines)


def attack_headline(reports: Path) -> str:
    """README: every protection under fine-tuning and pruning, and whether Neural Cleanse flags it."""
    rows = []
    present = [d for d in DATASETS if _report(reports / f"attacks_dsn_{d}.json") or _attack_reports(reports, d)]
    dsn = {d: _report(reports / f"attacks_dsn_{d}.json") for d in present}
    nc = {d: _report(reports / f"neural_cleanse_{d}.json") for d in present}

    def flagged(d: str, model: str) -> str:
        rep = nc[d]
        row = next((r for r in rep["rows"] if r["model"].split(" ")[0] == model), None) if rep else None
        return "–" if row is None else ("yes" if row["scan"]["flagged"] else "no")

    def per(make: Callable[[str], str]) -> str:
        return " / ".join(make(d) for d in present)

    def dsn_ft(d: str) -> str:
        rep = dsn[d]
        if rep is None:
            return "–"
        worked = _dsn_worked(rep, "fine_tuning")
        return f"{len(worked) - sum(worked)}/{len(worked)}"

    def dsn_prune(d: str) -> str:
        rep = dsn[d]
        return "–" if rep is None else f"without SN at most {max(p['raw_acc'] for p in rep['pruning']):.1f}%"

    rows.append(["DSN serial number", per(dsn_ft), "not run", per(dsn_prune), per(lambda d: flagged(d, "dsn"))])
    seeds = _report(reports / "attacks_dsn_mnist5k_seeds.json")
    if seeds:
        summ, n = seeds["summary"]["fine_tuning"], len(seeds["runs"])
        kept = sum(n - c["worked"] for c in summ.values())
        rows.append(
            [
                f"DSN, {n} customer models (`mnist5k`)",
                f"{kept}/{n * len(summ)}",
                "not run",
                f"without SN at most {max(p['raw_acc'] for r in seeds['runs'] for p in r['pruning']):.1f}%",
                "–",
            ]
        )
    atk = {d: {r["scheme"]: r for r in _attack_reports(reports, d)} for d in present}
    for s in sorted(set().union(*atk.values())):

        def kept(d: str, name: str, s: str = s) -> str:
            rep = atk[d].get(s)
            ft = (rep or {}).get("fine_tuning") or {}
            cells = [ft[f][name] for f in sorted(ft, key=float) if name in ft[f]]
            return "–" if not cells else f"{sum(bool(c['verdict']['decision']) for c in cells)}/{len(cells)}"

        def prune(d: str, s: str = s) -> str:
            rep = atk[d].get(s)
            return f"verified up to {_pruning(rep['pruning'], 'pruned')}" if rep and rep.get("pruning") else "–"

        rows.append(
            [
                s,
                per(lambda d: kept(d, "FTAL")),
                per(lambda d: kept(d, "FTAL_sgd")),
                per(prune),
                per(lambda d, s=s: flagged(d, s)),
            ]
        )
    on = " / ".join(f"`{d}`" for d in present)
    header = [
        f"protection ({on})",
        "fine-tuning with Adam: runs survived",
        "fine-tuning with SGD: runs survived",
        "global L1 pruning, no fine-tuning",
        "Neural Cleanse flags it",
    ]
    return _table(header, rows)


# ----- the WRT removal attacks (reproduce attacks --suite wrt) -----------------------------------------
def _wrt_reports(reports: Path, dataset: str) -> list[Report]:
    """Every ``reproduce attacks --suite wrt`` report of ``dataset``: DSN first, then by scheme."""
    reps = [json.loads(p.read_text()) for p in sorted(reports.glob(f"wrt_*_{dataset}.json"))]
    reps = [r for r in reps if r.get("experiment") == "wrt-attacks" and r.get("dataset") == dataset]
    return sorted(reps, key=lambda r: (r["scheme"] != "dsn", r["scheme"]))


def _wrt_cell(rep: Report, fraction: str, label: str) -> str:
    """``R`` removed, ``k`` kept (verified / locked), ``x`` gone but at more than the margin's accuracy
    cost; then the cost in points."""
    if label not in rep["fractions"][fraction]["attacks"]:
        return "–"
    o = outcome(rep, fraction, label)
    gone = (o["lock_holds"] is False) if o["lock_holds"] is not None else not o["verified"]
    mark = "**R**" if o["removed"] else ("x" if gone else "k")
    cell = mark if o["cost"] is None else f"{mark} {o['cost']:+.1f}"
    tracing = rep["fractions"][fraction]["attacks"][label].get("tracing")
    return cell if tracing is None else cell + (", T" if tracing["traced"] else ", untraced")


def _wrt_removed_by(rep: Report, fraction: str) -> list[str]:
    return [a for a in rep["fractions"][fraction]["attacks"] if outcome(rep, fraction, a)["removed"]]


def wrt_section(reports: Path, dataset: str) -> str:
    """Scheme x attack: removed at what accuracy cost, per attacker share; the controls; the costs; the
    SoK's findings beside ours."""
    reps = _wrt_reports(reports, dataset)
    if not reps:
        return f"No report yet: run `deepserial reproduce attacks --suite wrt --scheme <scheme> --dataset {dataset}`."
    fractions = sorted({f for r in reps for f in r["fractions"]}, key=float)
    labels = list(dict.fromkeys(a for r in reps for f in r["fractions"] for a in r["fractions"][f]["attacks"]))
    lines = [
        f"### `{dataset}`",
        "",
        f"`deepserial reproduce attacks --suite wrt --scheme <scheme> --dataset {dataset}` → "
        f"`reports/wrt_<scheme>_{dataset}.md` (every p-value, both accuracies of DSN, each attack's options).",
        "",
    ]
    for f in fractions:
        have = [r for r in reps if f in r["fractions"]]
        header = ["attack"] + [r["scheme"] for r in have]
        rows = [[a] + [_wrt_cell(r, f, a) for r in have] for a in labels]
        scratch = []
        for r in have:
            e = r["fractions"][f]["from_scratch"]
            scratch.append(f"{e['test_acc']:.1f}" + ("" if r["scheme"] == "dsn" else _mark(e.get("verdict"))))
        rows.append(["*from scratch (control), accuracy*"] + scratch)
        rows.append(["*protected model, accuracy*"] + [f"{protected_acc(r):.1f}" for r in have])
        lines += [f"Attacker data {100 * float(f):g}% of the training data:", "", _table(header, rows), ""]
        close = [
            r["scheme"]
            for r in have
            if protected_acc(r) - r["fractions"][f]["from_scratch"]["test_acc"] <= REMOVAL_MARGIN
        ]
        if close:
            lines += [
                f"At this share a model trained from scratch on the attacker's data alone is already within "
                f"{REMOVAL_MARGIN:g} points of the protected model ({', '.join(close)}): a removal here gains the "
                "attacker little over ignoring the protected model.",
                "",
            ]
    bad = {r["scheme"]: controls_verified(r) for r in reps}
    bad = {k: v for k, v in bad.items() if v}
    n_controls = sum(
        len(r["fractions"]) + (1 + len(r["reference_attacks"]["attacks"]) if r.get("reference_attacks") else 0)
        for r in reps
        if r["scheme"] != "dsn"
    )
    lines += [
        "Unmarked controls (each from-scratch model, each unmarked reference before and after every attack at "
        "the smallest share), verified with the owner's key: "
        + ("; ".join(f"**{k}: {', '.join(v)}**" for k, v in bad.items()) if bad else f"none of {n_controls} verified")
        + ".",
        "",
    ]
    largest = fractions[-1]
    cost_rows = []
    for a in labels:
        outs = [
            outcome(r, largest, a)
            for r in reps
            if largest in r["fractions"] and a in r["fractions"][largest]["attacks"]
        ]
        fwd = [o["forward_ratio"] for o in outs if o["forward_ratio"] is not None]
        wall = [o["wall_ratio"] for o in outs if o["wall_ratio"] is not None]
        cost_rows.append([a, _span(fwd, 2) if fwd else "–", _span(wall, 2) if wall else "–"])
    lines += [
        f"What each attack spent at {100 * float(largest):g}%, as a multiple of training from scratch on the same "
        "data for the same epochs (range over the protections; wall times come from a CPU shared with other jobs, "
        "forward samples are the steady measure):",
        "",
        _table(["attack", "forward samples", "wall time"], cost_rows),
        "",
    ]
    schemes = [r["scheme"] for r in reps]
    by_attack = {a: {r["scheme"] for r in reps for f in r["fractions"] if a in _wrt_removed_by(r, f)} for a in labels}
    everything = [a for a, s in by_attack.items() if set(schemes) <= s]
    survivors = [r["scheme"] for r in reps if not any(_wrt_removed_by(r, f) for f in r["fractions"])]
    combined = [a for a in labels if a.startswith("combined")]
    comb = ", ".join(f"{a}: {len(by_attack[a])} of {len(schemes)}" for a in combined) or "not run"
    lines += [
        f"The SoK beside ours ({SOK['source']}; {SOK['per_cell']}):",
        "",
        _table(
            ["SoK (CIFAR-10 / ImageNet)", f"ours (`{dataset}`, any share)"],
            [
                [
                    SOK["no_attack_removes_all"],
                    "attacks that removed every protection: " + (", ".join(everything) or "none"),
                ],
                [
                    SOK["no_scheme_survives_all"],
                    "protections no attack removed: " + (", ".join(survivors) or "none"),
                ],
                [SOK["combined_removes_all"], "removed by " + comb],
            ],
        ),
        "",
    ]
    return "\n".join(lines)


# What the independent check of issue 19 found (WRT's removal attacks ported to a CPU script, models
# embedded with `deepserial watermark embed` on mnist5k, seed 7, verdicts at 1e-3): attack -> scheme ->
# whether the owner's verdict failed afterwards. Fine-pruning at WRT's rate cost it 5-8 points.
INDEPENDENT_CHECK: dict[str, dict[str, bool]] = {
    "weight shifting": {
        "new-label": True,
        "null-embedding": True,
        "uchida": True,
        "adi": False,
        "deepsigns-output": False,
    },
    "regularization": {"adi": True, "deepsigns-output": True, "null-embedding": True, "uchida": False},
    "fine-pruning 60%": {"deepsigns-output": True, "adi": True, "uchida": False},
    "fine-pruning 96%": {
        "adi": True,
        "deepsigns-output": True,
        "new-label": True,
        "null-embedding": True,
        "uchida": False,
    },
}


def independent_check_section(reports: Path, seed_runs: Path) -> str:
    """Our verdicts beside the independent check's for the attacks and schemes it ran: per seed run and
    attacker share, 'gone' (the owner's verdict failed, whatever the cost) or 'kept', with cost and p."""
    by_scheme: dict[tuple[int, str], Report] = {}
    for folder in (reports, seed_runs):
        if folder.is_dir():
            for r in _wrt_reports(folder, "mnist5k"):
                by_scheme[(int(r["seed"]), r["scheme"])] = r
    seeds = sorted({k[0] for k in by_scheme})
    shares = sorted({f for r in by_scheme.values() for f in r["fractions"]}, key=float)
    header = ["attack", "scheme", "independent check (seed 7)"] + [
        f"ours, seed {sd}, {100 * float(f):g}%" for sd in seeds for f in shares
    ]
    cells = [(sd, f) for sd in seeds for f in shares]
    rows: list[list[str]] = []
    agree, total = dict.fromkeys(cells, 0), dict.fromkeys(cells, 0)
    for label, verdicts in INDEPENDENT_CHECK.items():
        for scheme, theirs in verdicts.items():
            row = [label, scheme, "gone" if theirs else "kept"]
            for sd in seeds:
                for f in shares:
                    rep = by_scheme.get((sd, scheme))
                    if rep is None or f not in rep["fractions"] or label not in rep["fractions"][f]["attacks"]:
                        row.append("–")
                        continue
                    o = outcome(rep, f, label)
                    if o["verified"] is None:  # no verdict recorded for this attack
                        row.append("–")
                        continue
                    gone = not o["verified"]
                    total[(sd, f)] += 1
                    agree[(sd, f)] += gone == theirs
                    cost = "" if o["cost"] is None else f" {o['cost']:+.1f}"
                    p = "" if o["p_value"] is None else f", p = {o['p_value']:.2g}"
                    row.append(("gone" if gone else "kept") + cost + p)
            rows.append(row)
    tally = "; ".join(
        f"seed {sd} at {100 * float(f):g}%: {agree[(sd, f)]} of {total[(sd, f)]}" for sd, f in cells if total[(sd, f)]
    )
    return "\n".join(
        [
            "The independent check of the WRT issue (its own port of WRT's attacks, mnist5k, seed 7, verdicts at "
            "1e-3) beside our verdicts on the same schemes: 'gone' when the owner's verdict failed after the attack, "
            "whatever it cost (cost in points and p-value beside it). Our seed-7 runs are "
            "`deepserial reproduce attacks --suite wrt --scheme <scheme> --dataset mnist5k --seed 7` "
            "(`benchmarks/results/wrt_seed7/`).",
            "",
            _table(header, rows),
            "",
            f"Same direction as the check: {tally}.",
        ]
    )


def wrt_headline(reports: Path) -> str:
    """README: per protection and data set, how many WRT attacks removed it at the smallest and at the
    largest attacker share, beside training from scratch on those shares (the attacks are named in
    docs/results.md); and which reports were made on a GPU."""
    by_scheme: dict[str, dict[str, Report]] = {}
    for d in DATASETS:
        for rep in _wrt_reports(reports, d):
            by_scheme.setdefault(rep["scheme"], {})[d] = rep
    if not by_scheme:
        return "No report yet: run `deepserial reproduce attacks --suite wrt --scheme <scheme>`."
    sets = [d for d in DATASETS if any(d in v for v in by_scheme.values())]

    def cells(rep: Report | None) -> list[str]:
        if rep is None:
            return ["no report", "–"]
        fr = sorted(rep["fractions"], key=float)
        scratch = " / ".join(f"{rep['fractions'][f]['from_scratch']['test_acc']:.1f}" for f in fr)
        removed = " / ".join(str(len(_wrt_removed_by(rep, f))) for f in fr)
        total = len(rep["fractions"][fr[-1]]["attacks"])
        return [f"{protected_acc(rep):.1f} ({scratch})", f"{removed} of {total} ({_shares(fr)}%)"]

    header = ["protection"]
    for d in sets:
        header += [f"`{d}`: protected model (from scratch)", f"`{d}`: removed by"]
    rows = [[name] + [c for d in sets for c in cells(v.get(d))] for name, v in by_scheme.items()]
    on_gpu = [(d, r) for v in by_scheme.values() for d, r in v.items() if (r.get("environment") or {}).get("cuda")]
    note = ""
    if on_gpu:
        devices = ", ".join(sorted({r["environment"]["cuda"] for _, r in on_gpu}))
        made = ", ".join(sorted(f"{r['scheme']} (`{d}`)" for d, r in on_gpu))
        note = f"\n\nMade on a GPU ({devices}, bf16 autocast), the others on one CPU thread: {made}."
    return _table(header, rows) + note


# ----- provenance and benchmarks ----------------------------------------------------------------------
def provenance_section(reports: Path) -> str:
    """Which committed reports record their full provenance, and what the older ones lack (grouped)."""
    complete, lacking = 0, {}
    for p in sorted(reports.glob("*.json")):
        missing = tuple(missing_provenance(json.loads(p.read_text())))
        if missing:
            lacking.setdefault(missing, []).append(p.stem)
        else:
            complete += 1
    total = complete + sum(map(len, lacking.values()))
    lines = [
        f"{complete} of {total} committed reports record every provenance field (`deepserial.report.PROVENANCE`: "
        "command line, git commit and whether the tree was dirty, seed, signing time, versions). The others "
        "predate those fields; their numbers stand, but what they lack cannot be recovered without rerunning "
        "them, and a report without `signed_at_epoch` cannot re-create the keys it names.",
        "",
    ]
    if lacking:
        rows = [
            [", ".join(f"`{m}`" for m in missing), ", ".join(f"`{n}`" for n in names)]
            for missing, names in sorted(lacking.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ]
        lines.append(_table(["fields missing", "reports (`reports/<name>.json`)"], rows))
    return "\n".join(lines)


def _bench_rows(results: Path) -> list[list[str]]:
    """One headline per committed benchmark in ``benchmarks/results``."""
    rows = []

    def load(name: str) -> Report | None:
        return _report(results / f"{name}.json")

    if b := load("bench_dsn"):
        t = b["demo_timings"]
        rows.append(
            [
                "`bench_dsn`",
                f"DSN student training {b['dsn_samples_per_s']:,.0f} forward samples/s against "
                f"{b['plain_samples_per_s']:,.0f} for plain training ({b['ratio']:.2f}x); `deepserial demo` "
                f"{b['demo_wall_s']:.0f} s end to end "
                f"(teacher {t['teacher_train_s']:.0f} s, student {t['student_train_s']:.0f} s, evaluation "
                f"{t['evaluate_s']:.0f} s)",
            ]
        )
    if b := load("bench_serve"):
        lat = b["latency_ms"]
        rows.append(
            [
                "`bench_serve`",
                f"{b['clients']} clients x {b['requests_per_client']:,} one-image requests: {b['errors']} errors, "
                f"{b['throughput_rps']:.0f} requests/s, p50 / p99 {lat['p50']:.0f} / {lat['p99']:.0f} ms; one client "
                f"alone {b['single_client_ms']['p50']:.1f} ms, in process {b['in_process_ms']['p50']:.1f} ms",
            ]
        )
    if b := load("bench_trace"):
        rows.append(
            [
                "`bench_trace`",
                f"{b['named_correctly']} of {b['customers']} leaked customer models traced to their licence, "
                f"{b['named_wrongly']} wrongly, {b['unissued_named']} of {b['unissued']} unissued models named; "
                f"{b['queries_issued_mean']:.0f} queries on average (at most {b['queries_issued_max']})",
            ]
        )
    if b := load("bench_neural_cleanse"):
        r0 = b["rows"]
        rows.append(
            [
                "`bench_neural_cleanse`",
                "one scan of the mnist5k teacher: "
                + ", ".join(f"{r['wall_s']:.0f} s with {r['threads']} thread(s)" for r in r0)
                + f" (budget {b['limit_s']:.0f} s)",
            ]
        )
    if b := load("bench_distributed"):
        parts = [
            f"{r['world_size']} process(es) x {r['threads']} thread(s): teacher {r['teacher_samples_per_s']:,.0f}, "
            f"student {r['student_samples_per_s']:,.0f} samples/s"
            for r in b["rows"]
        ]
        rows.append(["`bench_distributed`", "; ".join(parts)])
    if b := load("bench_precision"):
        parts = [
            f"{r['precision']}{' + channels_last' if r['channels_last'] else ''} {r['speedup']:.2f}x" for r in b["rows"]
        ]
        rows.append(["`bench_precision`", f"{b['rows'][0]['device']}, one thread: " + ", ".join(parts)])
    return rows


def benchmarks_section(results: Path) -> str:
    rows = _bench_rows(results)
    if not rows:
        return "No benchmark results committed."
    rows = [[name, text] for name, text in rows]
    return "\n".join(
        [
            "Each `python benchmarks/<name>.py` writes `benchmarks/results/<name>.{md,json}` with its machine and "
            "load (the reports say what else was running); the headline of each:",
            "",
            _table(["benchmark", "headline"], rows),
        ]
    )


# ----- the two documents ------------------------------------------------------------------------------
SECTIONS = [
    ("DSN: the serial-number lock", "dsn-lock"),
    ("Ownership watermarks", "watermarks"),
    ("Attacks on DSN", "attacks-on-dsn"),
    ("Neural Cleanse on every protection", "neural-cleanse"),
    ("Attacks on the ownership watermarks", "attacks-on-watermarks"),
    ("The WRT removal attacks on every protection", "wrt-removal-attacks"),
    ("Benchmarks", "benchmarks"),
    ("Provenance of these reports", "provenance"),
]


def results_md(reports: Path, benchmarks: Path) -> str:
    """The whole of docs/results.md."""
    wm = [r for d in DATASETS for r in _watermark_reports(reports, d)]
    atk = [r for d in DATASETS for r in _attack_reports(reports, d)]
    dsn = _dsn_reports(reports)
    chance = sorted({(CLASSES[r["dataset"]], _chance(r["dataset"])) for r in dsn if r["dataset"] in CLASSES})
    lrs = "/".join(_sci(v) for v in sorted({r["config"]["attack_lr"] for r in atk}))
    guessing = ", ".join(f"{c:g}% on {n} classes" for n, c in chance) or "100/C % on C classes"
    out = [
        "# Results",
        "",
        "<!-- Generated by `python scripts/update_readme.py` from reports/ and benchmarks/results/: do not edit. -->",
        "",
        "Every number on this page is read from a committed report's JSON by `scripts/update_readme.py`; "
        "each section names the command that writes its report and the report itself, where the per-key, "
        "per-epoch and per-seed details are. Accuracies are test accuracies in %; SN = serial number; ✓ / ✗ = "
        f"the owner's key verified / not verified at the report's false-positive rate ({_fpr(wm + atk)}).",
        "",
        "Contents:",
        "",
    ]
    out += [f"{i}. [{title}](#{anchor})" for i, (title, anchor) in enumerate(SECTIONS, 1)]
    out += ["", f'<a id="{SECTIONS[0][1]}"></a>', f"## 1. {SECTIONS[0][0]}", ""]
    out += [
        "A customer model answers correctly only on inputs stamped with its serial number; without it, with a "
        f"random wrong one, or one or two bits off, it should answer like random guessing ({guessing}). "
        "The linear probe trains a linear classifier on the model's features of raw inputs: how "
        "much of the task a fine-tuning attacker could reuse.",
        "",
    ]
    for rep in dsn:
        out += [dsn_lock_section(rep)]
    out += [f'<a id="{SECTIONS[1][1]}"></a>', f"## 2. {SECTIONS[1][0]}", ""]
    for d in DATASETS:
        out += [wm_section(reports, d), ""]
    out += [f'<a id="{SECTIONS[2][1]}"></a>', f"## 3. {SECTIONS[2][0]}", ""]
    out += [
        "Attacker data is a share of the training data (owner + attacker parts), drawn from the attacker's "
        f"split. **Worked**: {WORKED_RULE}. Cost: forward samples the attack needed to first reach the accuracy "
        "both it and from-scratch training reach, over what from-scratch training needed ('at chance': the "
        "attack never got 5 points above chance at any epoch, so there is nothing to compare).",
        "",
    ]
    for d in DATASETS:
        out += [dsn_attack_section(reports, d), ""]
    out += [seeds_section(reports, "mnist5k"), ""]
    out += [f'<a id="{SECTIONS[3][1]}"></a>', f"## 4. {SECTIONS[3][0]}", ""]
    out += [
        "Neural Cleanse scans the clean teacher, a DSN customer model and one model per watermark scheme (each "
        "embedded as the attack reproduction embeds it); where labels are flagged it unlearns them (the "
        "attack budget, on the attacker's split) and the owner's verdict is taken again. A Zhang content "
        "model is the classic backdoor that should be flagged.",
        "",
    ]
    for d in DATASETS:
        out += [nc_section(reports, d), ""]
    out += [f'<a id="{SECTIONS[4][1]}"></a>', f"## 5. {SECTIONS[4][0]}", ""]
    out += [
        "One watermarked model per scheme (the network, data and epochs of its watermark reproduction) under "
        "the attacks its paper evaluates, with the owner's verdict after each. Fine-tuning: "
        f"{_one([r['config']['attack_epochs'] for r in atk])} epochs at {lrs} on the attacker's share (FTAL: "
        "all layers; "
        "FTLL: last layer; RTLL / RTAL: last layer re-initialised, then last / all layers trained); the "
        "from-scratch model, trained on the attacker's data only, is the control that must never verify. "
        "Pruning: the largest global L1 rate of "
        f"{_span([100 * x for r in atk for x in r['config']['prune_rates']], 0)}% at which the owner's key still "
        f"verified, without and with {_one([r['config']['prune_finetune_epochs'] for r in atk])} epoch(s) of "
        "sparse fine-tuning.",
        "",
    ]
    for d in DATASETS:
        out += [wm_attack_section(reports, d), ""]
    out += [f'<a id="{SECTIONS[5][1]}"></a>', f"## 6. {SECTIONS[5][0]}", ""]
    out += [
        "Every protection under the removal attacks of the Watermark-Robustness-Toolbox (Lukas et al., SoK, "
        "IEEE S&P 2022), each with WRT's defaults as `deepserial.attacks` implements them and the epochs of "
        "the tables above. **Removed**: the owner's verdict fails at the report's false-positive rate (DSN: "
        f"the model without its serial number answers more than {LOCK_MARGIN:g} points above chance) while "
        f"the attacker's accuracy stays within {REMOVAL_MARGIN:g} points of the protected model's (DSN: with its "
        "serial number). Cells: **R** removed, k kept (verified, or DSN still locked), x the protection gone "
        "but at a larger accuracy cost; then the cost, accuracy before minus after, in points; for DSN, T when "
        f"tracing still names the customer (and none of {TRACE_LEDGER - 1} unissued licences) through a server "
        "that stamps its serial number and through one that does not, 'untraced' when not (a report made before "
        "tracing was measured after each attack shows neither).",
        "",
    ]
    for d in DATASETS:
        out += [wrt_section(reports, d), ""]
    out += ["### Beside the independent check", "", independent_check_section(reports, benchmarks / "wrt_seed7"), ""]
    out += [f'<a id="{SECTIONS[6][1]}"></a>', f"## 7. {SECTIONS[6][0]}", "", benchmarks_section(benchmarks), ""]
    out += [f'<a id="{SECTIONS[7][1]}"></a>', f"## 8. {SECTIONS[7][0]}", "", provenance_section(reports), ""]
    return "\n".join(out)


README_MAKERS: dict[str, Callable[[Path], str]] = {
    "dsn-headline": dsn_headline,
    "dsn-thief": dsn_thief,
    "trace-headline": trace_headline,
    "wm-headline": wm_headline,
    "attack-headline": attack_headline,
    "wrt-headline": wrt_headline,
}


def update_readme(text: str, reports: Path) -> str:
    """``text`` with each marked README table replaced by the one the reports give."""
    for marker, make in README_MAKERS.items():
        start, end = f"<!-- {marker} -->\n", f"\n<!-- /{marker} -->"
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            raise SystemExit(f"README has no {start.strip()} ... {end.strip()} section")
        text = text[: i + len(start)] + make(reports) + text[j:]
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README or docs/results.md differs from the reports")
    args = ap.parse_args()
    reports, benchmarks = ROOT / "reports", ROOT / "benchmarks" / "results"
    targets = {
        ROOT / "README.md": lambda old: update_readme(old, reports),
        ROOT / "docs" / "results.md": lambda _old: results_md(reports, benchmarks),
    }
    stale = []
    for path, make in targets.items():
        old = path.read_text() if path.exists() else ""
        new = make(old)
        if new != old:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("out of date: " + ", ".join(map(str, stale)) + "; run python scripts/update_readme.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
