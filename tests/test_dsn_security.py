"""``reproduce dsn-security``: one customer model per seed, measured against the adaptive thief."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepserial.errors import ConfigError, GeometryError
from deepserial.experiments import dsn_security

TINY = dsn_security.SecurityConfig(
    dataset="mnist5k",
    limit=600,
    teacher_epochs=1,
    student_epochs=1,
    fractions=[0.1],
    sweep_epochs=1,
    sweep_optimizers=["adam"],
    sweep_lrs=[1e-3],
    sweep_modes=["FTAL", "TL-all"],
    restarts=2,
    re_steps=20,
    hill_climb_queries=200,
    keyspace={"hamming3_samples": 20, "random_keys": 50, "eval_images": 50, "hamming2_images": 20},
    dsn={"mix_mined": 0.1},
)


def test_two_seeds_run_apart_give_every_check_and_a_summary(tmp_path: Path) -> None:
    dsn_security.run("tiny", tmp_path, [1], config=TINY, command="first")
    first = json.loads((tmp_path / "dsn_security_tiny.json").read_text())
    # another invocation with the same configuration adds its seed to the report
    paths = dsn_security.run("tiny", tmp_path, [0], config=TINY, command="test")
    assert [p.name for p in paths] == [f"dsn_security_tiny.{e}" for e in ("md", "json", "png")]
    rep = json.loads(paths[1].read_text())
    assert rep["runs"]["1"] == first["runs"]["1"]  # kept as it was, with its own provenance
    assert rep["runs"]["1"]["command"] == "first" and rep["runs"]["0"]["command"] == "test"
    assert all("signed_at_epoch" in r and "environment" in r for r in rep["runs"].values())
    assert "merged" in rep and "merged" not in first
    # gathering (seeds run in other folders) copies runs without training; another configuration is refused
    gathered = dsn_security.gather("tiny", tmp_path / "all", [paths[1]], config=TINY)
    together = json.loads(gathered[1].read_text())
    assert together["runs"] == rep["runs"] and together["summary"] == rep["summary"]
    with pytest.raises(ConfigError, match="another configuration"):
        dsn_security.gather("tiny", tmp_path / "other", [paths[1]], config=TINY.model_copy(update={"limit": 700}))
    # another configuration starts afresh; a report that cannot be read is refused before any training
    assert dsn_security._earlier_runs(paths[1], TINY.model_copy(update={"limit": 700})) == {}
    paths[1].write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable dsn-security report"):
        dsn_security.run("tiny", tmp_path, [2], config=TINY)
    assert rep["seeds"] == [0, 1] and set(rep["runs"]) == {"0", "1"}
    r0, r1 = rep["runs"]["0"], rep["runs"]["1"]
    assert r0["geometry"] == r1["geometry"]  # same configuration...
    for r in (r0, r1):
        checks = r["checks"]
        for name in ("raw", "hamming1_max", "hamming2_max", "hamming3_max", "recovered_max", "finetune_gain_0.1"):
            c = checks[name]
            assert c["holds"] == (c["value"] <= c["bound"])
        assert r["keyspace"]["hamming1"]["keys"] == 36
        assert set(r["recovery"]) >= {"reverse-engineer", "hill-climb"}
        assert r["recovery"]["hill-climb"]["queries"] <= 200
        sweep = r["finetune"]["0.1"]
        assert len(sweep["settings"]) == 2  # FTAL and TL-all, one optimizer and rate
    assert rep["summary"]["raw"]["of"] == 2
    assert rep["summary"]["raw"]["held"] == sum(r["checks"]["raw"]["holds"] for r in (r0, r1))
    assert rep["command"] == "test" and "signed_at_epoch" in rep


def test_bad_names_and_seeds_are_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no dsn-security configuration"):
        dsn_security.run("nope", tmp_path, [0])
    with pytest.raises(ConfigError, match="distinct non-negative"):
        dsn_security.run("mnist5k", tmp_path, [0, 0])
    with pytest.raises(ConfigError, match="distinct non-negative"):
        dsn_security.run("mnist5k", tmp_path, [])
    # a serial number the network cannot see (the Table 7 net ignores rows 26-27) is refused before the
    # work folder records the configuration, so the corrected command can use the same folder
    blind = TINY.model_copy(update={"size": (5, 7), "position": (22, 1)})
    with pytest.raises(GeometryError, match="never reach the network"):
        dsn_security.run("tiny", tmp_path, [0], config=blind, work=tmp_path / "work")
    assert not list(tmp_path.iterdir())


def test_a_collapsed_refit_of_an_older_run_counts_the_selected_model() -> None:
    """Runs made before the own-data rule recorded the refit even when it fell back into the lock
    (seed 2, 20%: 94.3% selected, 10.0% refitted, gain -82.9): the check counts the selected model."""
    chosen = {"mode": "FTAL", "optimizer": "adam", "lr": 1e-3, "test_acc": 94.3, "refit_test_acc": 10.0}
    old = {"chosen": chosen, "scratch_chosen": {"test_acc": 93.8, "refit_test_acc": 92.9}, "gain_over_scratch": -82.9}
    assert dsn_security.attacker_gain(old) == pytest.approx(1.4)
    fine = old | {"chosen": chosen | {"refit_test_acc": 93.0}, "gain_over_scratch": 0.1}
    assert dsn_security.attacker_gain(fine) == 0.1  # no collapse: as recorded
    new = old | {"chosen": chosen | {"kept": "refit", "final_test_acc": 10.0}}
    assert dsn_security.attacker_gain(new) == -82.9  # measured under the rule: as recorded
    rep = {"runs": {"2": {"finetune": {"0.2": old, "0.1": fine}}}}
    (note, blank) = dsn_security.collapsed_refits(rep)
    assert "Seed 2, fraction 20%" in note and "1.4 points (recorded: -82.9)" in note and blank == ""


def _untimed(v: object) -> object:
    """``v`` without its wall-clock fields (``*_s``): what two runs of the same work can differ in."""
    if isinstance(v, dict):
        return {k: _untimed(x) for k, x in v.items() if not str(k).endswith("_s")}
    if isinstance(v, list):
        return [_untimed(x) for x in v]
    return v


def test_an_interrupted_run_resumes_from_its_work_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    straight = json.loads(dsn_security.run("tiny", tmp_path / "a", [0], config=TINY)[1].read_text())["runs"]["0"]

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dsn_security, "fine_tuning_sweep", interrupted)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        dsn_security.run("tiny", tmp_path / "b", [0], config=TINY, work=work)
    assert not (tmp_path / "b" / "dsn_security_tiny.json").exists()
    kept = json.loads((work / "seed0" / "record.json").read_text())
    assert {"keyspace", "readout", "recovery"} <= set(kept) and not kept.get("finetune")

    def again(*a: object, **k: object) -> None:
        raise AssertionError("a finished stage ran again")

    monkeypatch.undo()  # SOURCE_DATE_EPOCH unset: the resumed run signs at the time the work folder recorded
    assert json.loads((work / "run.json").read_text())["signed_at_epoch"] == 1790000000
    monkeypatch.setattr(dsn_security, "keyspace_measures", again)
    monkeypatch.setattr(dsn_security, "key_recovery", again)
    monkeypatch.setattr(dsn_security, "train_teacher", again)
    resumed = json.loads(dsn_security.run("tiny", tmp_path / "b", [0], config=TINY, work=work)[1].read_text())
    run = resumed["runs"]["0"]
    assert run["signed_at_epoch"] == 1790000000
    assert run["wall_s"] > kept["elapsed_s"]  # the interrupted invocation's time counts
    for key in ("teacher_acc", "geometry", "keyspace", "valid_sn_acc", "raw_acc", "readout", "recovery", "finetune"):
        assert _untimed(run[key]) == _untimed(straight[key]), key
    assert run["checks"] == straight["checks"]
    # a damaged record is one line, not a traceback
    (work / "seed0" / "record.json").write_text("{broken")
    with pytest.raises(ConfigError, match="damaged"):
        dsn_security.run("tiny", tmp_path / "d", [0], config=TINY, work=work)
    # another configuration is refused before anything runs
    with pytest.raises(ConfigError, match="another configuration"):
        dsn_security.run("tiny", tmp_path / "c", [0], config=TINY.model_copy(update={"limit": 700}), work=work)
