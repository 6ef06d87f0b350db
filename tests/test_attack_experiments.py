"""The attack reproduction runner end to end on a sliver of mnist5k (only that every measurement is
made and reported; the real run is `deepserial reproduce attacks --scheme dsn`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepserial.errors import ConfigError
from deepserial.experiments import attacks

TINY = {"teacher_epochs": 2, "student_epochs": 2, "attack_epochs": 2, "fractions": (0.1, 0.2),
        "prune_rates": (0.2, 0.8), "brute_force_tries": 50, "reverse_restarts": 1, "reverse_steps": 20,
        "neural_cleanse": False,
        "limit": 600}


def test_dsn_attack_reproduction_writes_every_table(tmp_path: Path) -> None:
    paths = attacks.run("dsn", "mnist5k", tmp_path, progress=False, overrides=TINY)
    assert [p.name for p in paths] == ["attacks_dsn_mnist5k.md", "attacks_dsn_mnist5k.json", "attacks_dsn_mnist5k.png"]
    rep = json.loads(paths[1].read_text())
    assert set(rep["fractions"]) == {"0.1", "0.2"}
    row = rep["fractions"]["0.1"]
    assert row["samples"] == 48  # 10% of the 480 training images
    for key in ("fine_tuning", "from_scratch", "transfer", "overwrite"):
        assert len(row[key]["curve_raw"]) == 2 and row[key]["epochs"] == 2
    assert len(row["overwrite"]["curve_new_sn"]) == 2 and "ratio" in row["fine_tuning"]["cost"]
    assert [p["rate"] for p in rep["pruning"]] == [0.2, 0.8]
    assert rep["pruning"][1]["zero_fraction"] == pytest.approx(0.8, abs=1e-3)
    bf = rep["serial_search"]["brute_force"]
    assert bf["tries"] == 50 and bf["queries"] == 500
    assert len(rep["serial_search"]["reverse_unknown"]["per_restart"]) == 1
    md = paths[0].read_text()
    assert "94.7" in md and "48.8" in md  # the paper's figures beside ours


def test_attack_reproduction_refuses_unknown_scheme_and_dataset(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dsn"):
        attacks.run("uchida", "mnist5k", tmp_path)
    with pytest.raises(ConfigError, match="no attack reproduction"):
        attacks.run("dsn", "cifar-100", tmp_path)
    assert not list(tmp_path.iterdir())


def test_cost_ratio_reads_the_curves() -> None:
    # the attack reaches 90 in its 3rd epoch, from scratch in its 2nd; epochs cost 100 vs 50 samples
    c = attacks.cost_ratio([50.0, 80.0, 90.0, 95.0], 100.0, [60.0, 90.0], 50.0)
    assert c["target"] == 90.0 and c["attack_epochs"] == 3 and c["scratch_epochs"] == 2
    assert c["ratio"] == pytest.approx(300 / 100)
