"""README and docs/results.md show what the committed reports hold, and nothing typed by hand."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_and_results_match_reports() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"], cwd=ROOT)
    assert r.returncode == 0, "README or docs/results.md differs from reports/: run python scripts/update_readme.py"


def test_results_page_is_regenerated_whole(gen: ModuleType) -> None:
    text = (ROOT / "docs" / "results.md").read_text()
    assert text == gen.results_md(REPORTS, ROOT / "benchmarks" / "results")


def test_readme_is_short_and_keeps_the_set_up_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 15_000
    assert "pip install torch==2.13.0 && pip install -e . && deepserial demo --out demo" in text
    assert "pip install torch==2.13.0 && pip install -e '.[test]' && python -m pytest -q" in text  # CI runs it
    for doc in ("docs/results.md", "docs/decisions.md", "docs/specification.md", "docs/security.md", "docs/usage.md"):
        assert f"({doc})" in text


def test_readme_prose_types_no_figure_by_hand() -> None:
    """Outside code blocks and the generated tables, README names versions and identifiers only."""
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!-- ([\w-]+) -->.*?<!-- /\1 -->", "", text, flags=re.S)
    allowed = {"3.10", "2.13.0", "2011.08960"}
    figures = [m for m in re.findall(r"\d[\d.,]*\d|\d", text) if m not in allowed]
    assert not figures, f"hand-typed figures in README: {figures}"


def test_seeds_summary_counts_a_run_by_its_final_accuracy(gen: ModuleType) -> None:
    text = gen.seeds_section(REPORTS, "mnist5k")
    # seed 3 ended at 10.3 / 19.3 / 20.0 / 10.0%: not a run that worked, at any fraction
    assert "seed 3: 10.3* / 19.3* / 20.0* / 10.0*" in text
    assert "| fine-tuning (FTAL), without the SN |" in text and "| 3/5 / 3/5 / 3/5 / 4/5 |" in text
    assert "| 0/5 / 0/5 / 0/5 / 0/5 |" in text  # overwriting never reached from-scratch accuracy
    assert "Fine-tuning never worked on seed(s) 3;" in text


def test_piracy_counts_what_the_json_has(gen: ModuleType) -> None:
    rep = json.loads((REPORTS / "null-embedding_mnist5k.json").read_text())
    after = [r["nc_after"] for r in rep["extra"]["piracy_runs"]["paper"]]
    at_chance = sum(round(a, 1) <= 10.0 for a in after)
    assert f"{at_chance} of {len(after)} at or below chance" in gen._piracy(rep)


def test_a_false_positive_key_is_re_creatable_only_with_its_signing_time(gen: ModuleType) -> None:
    rep = json.loads((REPORTS / "null-embedding_fashion-mnist.json").read_text())
    assert "signed_at_epoch" not in rep
    notes = "; ".join(gen._scheme_notes(rep))
    assert "not re-creatable" in notes
    assert "SOURCE_DATE_EPOCH=1764633600" in "; ".join(gen._scheme_notes(rep | {"signed_at_epoch": 1764633600}))


def test_a_merged_rerun_quotes_only_the_runs_in_the_report(gen: ModuleType) -> None:
    rep = json.loads((REPORTS / "dsn_cifar-digits.json").read_text())
    section = gen.dsn_lock_section(rep)
    assert "Rerun after the first report" in section and "default-6x6-x2" in section
    for run in rep["runs"].values():
        assert f"{run['valid_sn_acc']:.1f}" in section and f"{run['raw_acc']:.1f}" in section


def test_missing_reports_say_how_to_make_them(gen: ModuleType, tmp_path: Path) -> None:
    assert gen.dsn_attack_section(tmp_path, "fashion-mnist").startswith("No report yet")
    assert gen.seeds_section(tmp_path, "mnist5k").startswith("No report yet")
    assert gen.nc_section(tmp_path, "mnist5k").startswith("No report yet")
    assert gen.dsn_headline(tmp_path).startswith("No report yet")
    text = gen.dsn_attack_section(REPORTS, "mnist5k")
    assert "| from scratch on the same data (the * row) | 80.5 / 88.7 / 92.9 / 94.5 |" in text
    assert "**0 unlocks in 100,000 tries**" in text


def test_provenance_section_lists_reports_that_predate_it(gen: ModuleType, tmp_path: Path) -> None:
    from deepserial.report import with_provenance

    shutil.copy(REPORTS / "adi_mnist5k.json", tmp_path / "old.json")
    (tmp_path / "new.json").write_text(json.dumps(with_provenance({"seed": 0, "signed_at_epoch": 1})))
    text = gen.provenance_section(tmp_path)
    assert text.startswith("1 of 2 committed reports record every provenance field")
    assert "`old`" in text and "`new`" not in text and "`signed_at_epoch`" in text


def _anchors(path: Path) -> set[str]:
    """The anchors a Markdown file offers: explicit ``<a id>`` and GitHub's slugs of its headings."""
    text = path.read_text()
    ids = set(re.findall(r'<a id="([^"]+)"></a>', text))
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            ids.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return ids


def test_links_between_the_documents_resolve() -> None:
    """Every relative link of README and docs/ names a file of the repository, and an anchor in it."""
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if "://" in target:
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                broken.append(f"{doc.name} -> {target}")
            elif anchor and anchor not in _anchors(path):
                broken.append(f"{doc.name} -> {target} (no such anchor)")
    assert not broken, broken


def _wrt_report(scheme: str, entries: dict[str, dict], scratch: dict, victim: dict) -> dict:
    """A minimal ``--suite wrt`` report: one share, the given attack entries."""
    base = {"epochs": 10, "forward_samples": 1000, "queries": 0, "wall_s": 2.0, "details": {}}
    rep = {
        "experiment": "wrt-attacks",
        "scheme": scheme,
        "dataset": "mnist5k",
        "victim": victim,
        "fractions": {"0.4": {"samples": 1600, "from_scratch": base | scratch, "attacks": {}}},
    }
    rep["fractions"]["0.4"]["attacks"] = {k: base | v for k, v in entries.items()}
    if scheme != "dsn":
        rep["reference"] = {"test_acc": 95.0, "verdict": {"decision": False}}
        rep["reference_attacks"] = {
            "fraction": "0.4",
            "attacks": {k: {"verdict": {"decision": False}} for k in entries},
        }
    return rep


def test_wrt_summary_marks_removed_kept_and_too_costly(gen: ModuleType, tmp_path: Path) -> None:
    not_verified, verified = {"decision": False, "p_value": 0.3}, {"decision": True, "p_value": 1e-9}
    wm = _wrt_report(
        "uchida",
        {
            "weight shifting": {"test_acc": 95.5, "verdict": not_verified},  # removed at -0.5
            "regularization": {"test_acc": 95.0, "verdict": verified, "forward_samples": 2000},  # kept
            "combined (weight shifting + smoothing)": {"test_acc": 80.0, "verdict": not_verified},  # too costly
        },
        {"test_acc": 93.0, "verdict": not_verified},
        {"test_acc": 95.0, "verdict": verified},
    )
    dsn = _wrt_report(
        "dsn",
        {"weight shifting": {"test_acc": 12.0, "with_serial_acc": 96.0, "lock_holds": True}},
        {"test_acc": 92.0, "with_serial_acc": 12.0},
        {"test_acc": 11.0, "with_serial_acc": 97.0, "lock_holds": True},
    )
    for rep in (wm, dsn):
        (tmp_path / f"wrt_{rep['scheme']}_mnist5k.json").write_text(json.dumps(rep))
    text = gen.wrt_section(tmp_path, "mnist5k")
    assert "| attack | dsn | uchida |" in text  # DSN first
    assert "| weight shifting | k +85.0 | **R** -0.5 |" in text
    assert (
        "| regularization | – | k +0.0 |" in text and "| combined (weight shifting + smoothing) | – | x +15.0 |" in text
    )
    assert "none of 5 verified" in text  # from scratch, the reference and its three attacks
    assert "| regularization | 2.00 | 1.00 |" in text  # forward samples and wall time over from scratch
    assert (
        "protections no attack removed: dsn" in text
        and "removed by combined (weight shifting + smoothing): 0 of 2" in text
    )
    head = gen.wrt_headline(tmp_path)
    assert "| uchida | 95.0 (93.0) | 1 of 3 (40%) |" in head and "GPU" not in head
    gpu = dict(wm, environment={"cuda": "NVIDIA H200"})
    (tmp_path / "wrt_uchida_fashion-mnist.json").write_text(json.dumps(gpu | {"dataset": "fashion-mnist"}))
    head = gen.wrt_headline(tmp_path)
    assert "| dsn | 97.0 (92.0) | 0 of 1 (40%) | no report | – |" in head  # DSN: with its serial number
    assert head.endswith(
        "Made on a GPU (NVIDIA H200, bf16 autocast), the others on one CPU thread: uchida (`fashion-mnist`)."
    )
    (tmp_path / "wrt_uchida_fashion-mnist.json").unlink()
    wm["reference_attacks"]["attacks"]["regularization"]["verdict"] = verified
    (tmp_path / "wrt_uchida_mnist5k.json").write_text(json.dumps(wm))
    assert "**uchida: unmarked reference after regularization**" in gen.wrt_section(tmp_path, "mnist5k")
    assert gen.wrt_section(tmp_path, "fashion-mnist").startswith("No report yet")
