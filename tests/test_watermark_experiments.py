"""The watermark reproduction runner end to end on a sliver of mnist5k (figures are not checked here,
only that every measurement is made and reported; the real runs are `deepserial reproduce <scheme>`)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import VENDOR_TIME

from deepserial.errors import ConfigError
from deepserial.experiments import watermarks
from deepserial.identity import VerifierString

TINY = {"n_models": 2, "n_random_keys": 3, "epochs": 1, "n_pirates": 1, "n_adaptive_pirates": 1, "limit": 600}


def test_null_embedding_reproduction_writes_every_figure(tmp_path: Path) -> None:
    settings = {"ratio_true": 0.25, "ratio_null": 0.25}  # a data set's config may change the scheme's settings
    paths = watermarks.run(
        "null-embedding", "mnist5k", tmp_path, progress=False, overrides=TINY | {"scheme_settings": settings}
    )
    assert [p.name for p in paths] == [
        "null-embedding_mnist5k.md",
        "null-embedding_mnist5k.json",
        "null-embedding_mnist5k.png",
        "schemes_mnist5k.md",
    ]
    rep = json.loads(paths[1].read_text())
    assert rep["config"]["batch_size"] == 32  # the per-scheme setting applies to reference and marked alike
    assert len(rep["marked_acc"]) == 2 and len(rep["own_verdicts"]) == 2
    assert 0 <= rep["false_positives_unmarked"] <= 3 and rep["n_random_keys"] == 3
    assert rep["scheme_config"]["ratio_true"] == 0.25 and rep["scheme_config"]["ratio_null"] == 0.25
    # every verified random key is named, so it can be re-created from the seed and inspected
    fpk = rep["false_positive_keys"]
    assert len(fpk["unmarked"]) == rep["false_positives_unmarked"]
    assert len(fpk["other_key"]) == rep["false_positives_other_key"]
    assert all(0 <= j < 3 for j in fpk["unmarked"] + fpk["other_key"])
    assert isinstance(rep["signed_at_epoch"], int)  # with the seed, re-creates every key of the run
    assert all(v["queries"] > 0 for v in rep["own_verdicts"])
    runs = rep["extra"]["piracy_runs"]
    assert set(runs) == {"paper", "paper_on_unmarked", "adam", "adam_warmup"}
    assert all(len(r) == 1 for r in runs.values())
    paper = runs["paper"][0]  # Table 14's optimiser, lambda at full strength from the first step
    assert paper["lr"] == pytest.approx(1e-3) and paper["optimizer"] == "sgd" and paper["lam_warmup_epochs"] == 0
    assert runs["adam_warmup"][0]["lam_warmup_epochs"] == 3 and len(paper["nc_curve"]) == 10
    md = paths[0].read_text()
    assert "98.51" in md and "false positives" in md  # the paper's figure beside ours
    table = paths[3].read_text()
    assert "| null-embedding |" in table
    # re-rendering from the JSON (new paper figures, presentation) gives the same report back
    assert watermarks.render(tmp_path, "null-embedding", "mnist5k")[0].read_text() == md
    with pytest.raises(ConfigError, match="run the reproduction first"):
        watermarks.render(tmp_path, "uchida", "mnist5k")


def test_unknown_dataset_and_dsn_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no watermark reproduction"):
        watermarks.run("null-embedding", "cifar-100", tmp_path)
    with pytest.raises(ConfigError, match="reproduce dsn"):
        watermarks.run("dsn", "mnist5k", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_scheme_setting_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ratio_nul"):
        watermarks.run(
            "null-embedding",
            "mnist5k",
            tmp_path,
            progress=False,
            overrides=TINY | {"scheme_settings": {"ratio_nul": 0.25}},
        )
    assert not list(tmp_path.iterdir())


def test_new_label_reproduction_measures_queries_to_first_delta(tmp_path: Path) -> None:
    paths = watermarks.run("new-label", "mnist5k", tmp_path, progress=False, overrides=TINY | {"n_random_keys": 2})
    rep = json.loads(paths[1].read_text())
    ex = rep["extra"]
    assert len(ex["per_model"]) == 2 and ex["alpha"] == pytest.approx(0.01)
    for r in ex["per_model"]:
        n, h = r["keys"], r["delta_answers"]
        assert r["p"] == pytest.approx(h / n)
        if h:  # a random order of n keys with h Delta answers: first Delta at (n + 1) / (h + 1) on average
            assert r["mean_first_delta_random_order"] == pytest.approx((n + 1) / (h + 1))
    assert rep["false_positives_unmarked"] == 0  # C outputs: the new label is never answered
    assert "E[q] = 2 at p = 0.8" in paths[0].read_text()


def test_deepsigns_output_report_sets_eq5_beside_table4() -> None:
    # the extra reads only the run's verdicts; the full run is `deepserial reproduce deepsigns-output`
    verdicts = [SimpleNamespace(threshold=13.0, statistic=s) for s in (0.0, 4.0)]
    ex = watermarks.EXTRAS["deepsigns-output"]({"verdicts": verdicts})
    assert (ex["eq5_threshold_k20"], ex["eq5_threshold_k30"]) == (13, 21)  # Table 4
    assert (ex["eq5_threshold_k20_selection_null"], ex["eq5_threshold_k30_selection_null"]) == (13, 20)
    assert ex["own_threshold"] == 13.0 and ex["own_mismatches_max"] == 4.0
    paper = watermarks.PAPER["deepsigns-output"]
    assert (paper["eq5_threshold_k20"], paper["eq5_threshold_k30"]) == (13, 21)


def test_signing_time_fixes_one_time_per_run_and_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    with watermarks.signing_time() as epoch:
        stamped = VerifierString.now("o", "c", "s").timestamp
        assert stamped == datetime.fromtimestamp(int(epoch), timezone.utc).isoformat()
    assert "SOURCE_DATE_EPOCH" not in os.environ  # the run's time does not leak into later commands
    monkeypatch.setenv("SOURCE_DATE_EPOCH", VENDOR_TIME)
    with watermarks.signing_time() as epoch:
        assert epoch == VENDOR_TIME  # a time the user fixed is the run's time
    assert os.environ["SOURCE_DATE_EPOCH"] == VENDOR_TIME
