"""The attack reproduction runner end to end on a sliver of mnist5k (only that every measurement is
made and reported; the real run is `deepserial reproduce attacks --scheme dsn`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepserial.errors import ConfigError
from deepserial.experiments import attacks

TINY = {
    "teacher_epochs": 2,
    "student_epochs": 2,
    "attack_epochs": 2,
    "fractions": (0.1, 0.2),
    "prune_rates": (0.2, 0.8),
    "brute_force_tries": 50,
    "reverse_restarts": 1,
    "reverse_steps": 20,
    "neural_cleanse": False,
    "limit": 600,
}


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
    with pytest.raises(ConfigError, match="no attack reproduction for scheme 'nope'"):
        attacks.run("nope", "mnist5k", tmp_path)
    with pytest.raises(ConfigError, match="no attack reproduction"):
        attacks.run("dsn", "cifar-100", tmp_path)
    assert not list(tmp_path.iterdir())


def test_cost_ratio_reads_the_curves() -> None:
    # the attack reaches 90 in its 3rd epoch, from scratch in its 2nd; epochs cost 100 vs 50 samples
    c = attacks.cost_ratio([50.0, 80.0, 90.0, 95.0], 100.0, [60.0, 90.0], 50.0)
    assert c["target"] == 90.0 and c["attack_epochs"] == 3 and c["scratch_epochs"] == 2
    assert c["ratio"] == pytest.approx(300 / 100)


def test_a_source_smaller_than_the_query_sweep_is_asked_all_it_has() -> None:
    from deepserial.experiments.watermark_attacks import query_volumes

    assert query_volumes([6000, 12000, 24000], 30000) == [6000, 12000, 24000]
    assert query_volumes([6000, 12000, 24000], 8000) == [6000, 8000]
    assert query_volumes([6000, 12000, 24000], 3000) == [3000]  # fashion-mnist victim, mnist5k queries


WM_TINY = TINY | {
    "watermark_epochs": 2,
    "prune_rates": (0.5,),
    "extraction_volumes": (0.5, 1.0),
    "transfer_samples": 600,
    "recovery_epochs": 1,
    "embed_attempts": 2,
}
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.exists(), reason="null embedding's transfer and OOD extraction use fashion-mnist")
def test_null_embedding_attack_reproduction_runs_every_attack_its_paper_names(tmp_path: Path) -> None:
    over = WM_TINY | {"fractions": (0.2,), "nc_steps": 20}
    paths = attacks.run("null-embedding", "mnist5k", tmp_path, progress=False, overrides=over)
    assert paths[0].name == "attacks_null-embedding_mnist5k.md"
    rep = json.loads(paths[1].read_text())
    assert rep["plan"] == list(attacks.PLANS["null-embedding"])
    tries = rep["embedding_attempts"]  # a key that did not take is replaced, and reported
    assert 1 <= len(tries) <= 2 and rep["victim"] == tries[-1]
    assert all(not t["verdict"]["decision"] for t in tries[:-1])
    row = rep["fine_tuning"]["0.2"]
    assert set(row) >= {"FTAL", "FTAL_sgd", "from_scratch", "FTLL", "RTLL", "RTAL"}
    assert row["FTAL_sgd"]["verdict"]["queries"] > 0
    assert all("decision" in row[k]["verdict"] for k in ("FTAL", "from_scratch"))
    assert rep["pruning"][0]["pruned"]["zero_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert "pruned_fine_tuned" in rep["neuron_pruning"][0]
    assert "max_anomaly_index" in rep["neural_cleanse"]["scan"]
    sources = {r["source"] for r in rep["extraction"]["rows"]}
    assert sources == {"in-distribution", "other data set (fashion-mnist)", "uniform noise"}
    assert [r["queries"] for r in rep["extraction"]["rows"] if r["source"] == "in-distribution"] == [96, 192]
    assert [r["trained"] for r in rep["transfer"]] == ["head", "dense", "all"]
    assert all("verdict" in r["recovered"] for r in rep["transfer"])
    md = paths[0].read_text()
    assert "1.32" in md and "Neural Cleanse" in md and "Transfer learning" in md


def test_deepsigns_attack_reproduction_verifies_both_keys_after_overwriting(tmp_path: Path) -> None:
    paths = attacks.run("deepsigns-hidden", "mnist5k", tmp_path, progress=False, overrides=WM_TINY)
    rep = json.loads(paths[1].read_text())
    assert rep["plan"] == ["fine_tuning", "pruning", "overwrite"] and "extraction" not in rep
    assert isinstance(rep["signed_at_epoch"], int)  # with the seed, re-creates the attacked model's key
    for f in ("0.1", "0.2"):
        ow = rep["fine_tuning"][f]["overwrite"]
        assert "decision" in ow["verdict"] and "decision" in ow["adversary_verdict"]
    assert "FTLL" in rep["fine_tuning"]["0.2"] and "FTLL" not in rep["fine_tuning"]["0.1"]
    assert "98.21" in paths[0].read_text()  # Table 3 beside ours


def test_cost_ratio_of_an_attack_stuck_at_chance_is_failed_not_a_number() -> None:
    c = attacks.cost_ratio([9.8, 10.0, 10.0], 100.0, [60.0, 90.0], 50.0, chance=10.0)
    assert c["ratio"] is None and c["failed"]


def test_dsn_seeds_study_attacks_one_customer_model_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764633600")  # one signing time for both calls below
    paths = attacks.run_seeds("mnist5k", [0, 1], tmp_path, progress=False, overrides=TINY)
    assert [p.name for p in paths] == [f"attacks_dsn_mnist5k_seeds.{s}" for s in ("md", "json", "png")]
    rep = json.loads(paths[1].read_text())
    assert [r["seed"] for r in rep["runs"]] == [0, 1]
    assert all("serial_search" not in r and "neural_cleanse" not in r for r in rep["runs"])
    keys = [r["product_key"] for r in rep["runs"]]
    assert keys[0] != keys[1]  # two customer models with their own serial numbers, not one twice
    # the serial number comes from the seed's owner key and the signing time, not from training: the
    # second study trains and attacks as little as it can
    again_over = {
        "fractions": (0.1,),
        "prune_rates": (0.5,),
        "teacher_epochs": 1,
        "student_epochs": 1,
        "attack_epochs": 1,
    }
    again_paths = attacks.run_seeds("mnist5k", [1, 0], tmp_path / "again", progress=False, overrides=TINY | again_over)
    again = json.loads(again_paths[1].read_text())
    assert [r["product_key"] for r in again["runs"]] == keys[::-1]  # the seed fixes the serial number
    ft = [r["fractions"]["0.1"]["fine_tuning"]["raw_acc"] for r in rep["runs"]]
    cell = rep["summary"]["fine_tuning"]["0.1"]
    assert cell["min"] == min(ft) and cell["max"] == max(ft) and cell["mean"] == pytest.approx(sum(ft) / 2)
    assert 0 <= cell["worked"] <= 2 and "worked" not in rep["summary"]["from_scratch"]["0.1"]
    assert "overwrite" in rep["summary"] and "new_sn_acc" in rep["runs"][1]["fractions"]["0.2"]["overwrite"]
    md = paths[0].read_text()
    assert "mean +/- sd" in md and "94.7" in md
    assert (
        "`SOURCE_DATE_EPOCH=1764633600 deepserial reproduce attacks --scheme dsn --dataset mnist5k --seeds 0,1`" in md
    )


def test_dsn_seeds_study_refuses_fewer_than_two_seeds(tmp_path: Path) -> None:
    for seeds in ([3], [1, 1]):
        with pytest.raises(ConfigError, match="two or more different seeds"):
            attacks.run_seeds("mnist5k", seeds, tmp_path)
    assert not list(tmp_path.iterdir())


def test_neural_cleanse_reproduction_scans_every_model_it_names(tmp_path: Path) -> None:
    from deepserial.experiments import neural_cleanse

    tiny = {
        "teacher_epochs": 2,
        "student_epochs": 2,
        "attack_epochs": 1,
        "nc_steps": 20,
        "watermark_epochs": 2,
        "limit": 600,
    }
    paths = neural_cleanse.run("mnist5k", tmp_path, progress=False, schemes=["zhang-content"], overrides=tiny)
    assert [p.name for p in paths] == [f"neural_cleanse_mnist5k.{s}" for s in ("md", "json", "png")]
    rep = json.loads(paths[1].read_text())
    models = [r["model"] for r in rep["rows"]]
    assert models[0] == "clean (teacher)" and models[1].startswith("dsn") and models[2] == "zhang-content"
    for r in rep["rows"]:
        assert len(r["scan"]["anomaly_index"]) == 10 and r["scan"]["steps"] == 20
    zc = rep["rows"][2]
    assert zc["target"] is not None and "decision" in zc["before"] and "verdict" in zc["after"]
    assert zc["unlearned"] == zc["scan"]["flagged"]  # unlearning ran exactly on the flagged labels
    assert "| zhang-content |" in paths[0].read_text()


def test_neural_cleanse_reproduction_refuses_unknown_names(tmp_path: Path) -> None:
    from deepserial.experiments import neural_cleanse

    with pytest.raises(ConfigError, match="unknown watermark scheme"):
        neural_cleanse.run("mnist5k", tmp_path, schemes=["adi", "nope"])
    with pytest.raises(ConfigError, match="no Neural Cleanse reproduction"):
        neural_cleanse.run("cifar-100", tmp_path)
    assert not list(tmp_path.iterdir())


def _seed_run(final: float, scratch: float, best: float) -> dict:
    """One seed's fraction-0.1 row as run_seeds records it (only what the summary reads)."""
    attack = {"raw_acc": final, "new_sn_acc": final, "cost": {"ratio": 1.0 if best > 15 else None}}
    return {
        "fractions": {
            "0.1": {
                "fine_tuning": attack,
                "transfer": attack,
                "overwrite": attack,
                "from_scratch": {"raw_acc": scratch},
            }
        }
    }


def test_an_attack_worked_by_its_final_accuracy_against_from_scratch() -> None:
    # seed 3 of the committed study: 16.5% after one epoch, 10.3% at the end, from scratch 75.7%
    assert not attacks.attack_worked(10.3, 75.7)
    assert not attacks.attack_worked(81.5, 91.8)  # well above chance, still worse than training one's own
    assert attacks.attack_worked(90.6, 80.5) and attacks.attack_worked(80.5, 80.5)
    summ = attacks.summarise_seeds(
        [_seed_run(90.6, 80.5, 90.6), _seed_run(19.3, 89.5, 19.3), _seed_run(10.0, 91.0, 10)]
    )
    assert summ["fine_tuning"]["0.1"]["worked"] == 1 and summ["overwrite"]["0.1"]["worked"] == 1
    assert summ["fine_tuning"]["0.1"]["cost_ratio_median"] == 1.0  # over the runs that have a cost
    assert "worked" not in summ["from_scratch"]["0.1"]


def test_the_committed_seeds_summary_is_recomputed_from_its_runs(tmp_path: Path) -> None:
    committed = Path(__file__).resolve().parents[1] / "reports" / "attacks_dsn_mnist5k_seeds.json"
    rep = json.loads(committed.read_text())
    assert rep["summary"] == attacks.summarise_seeds(rep["runs"]) and rep["worked_rule"] == attacks.WORKED_RULE
    copy = tmp_path / committed.name
    copy.write_text(json.dumps(rep | {"summary": {}}))
    md, js = attacks.resummarise_seeds(copy)
    again = json.loads(js.read_text())
    assert again["summary"] == rep["summary"] and again["runs"] == rep["runs"]
    assert again["environment"] == rep["environment"] and "time_utc" in again["summary_recomputed"]
    assert "recomputed from the per-seed runs" in md.read_text()
    with pytest.raises(ConfigError, match="not a seeds report"):
        attacks.resummarise_seeds(Path(__file__).resolve().parents[1] / "reports" / "attacks_dsn_mnist5k.json")


# ----- the WRT suite (--suite wrt) -------------------------------------------------------------------
WRT_TINY = TINY | {
    "watermark_epochs": 2,
    "embed_attempts": 1,
    "wrt_fractions": (0.1, 0.2),
    "wrt_attacks": ("weight shifting", "JPEG 95", "cross-architecture retraining"),
}


def test_wrt_suite_on_a_watermark_reports_every_attack_cost_and_both_unmarked_controls(tmp_path: Path) -> None:
    from deepserial.experiments import wrt_attacks

    paths = attacks.run("uchida", "mnist5k", tmp_path, progress=False, overrides=WRT_TINY, suite="wrt")
    assert [p.name for p in paths] == [f"wrt_uchida_mnist5k.{s}" for s in ("md", "json", "png")]
    assert not list(tmp_path.glob("attacks_*"))  # the papers' report is not touched
    rep = json.loads(paths[1].read_text())
    assert rep["experiment"] == "wrt-attacks" and rep["removal_margin"] == wrt_attacks.REMOVAL_MARGIN
    assert set(rep["fractions"]) == {"0.1", "0.2"} and rep["fractions"]["0.1"]["samples"] == 48
    for row in rep["fractions"].values():
        assert list(row["attacks"]) == list(WRT_TINY["wrt_attacks"])
        assert "p_value" in row["from_scratch"]["verdict"]  # the from-scratch control is verified too
        for label, e in row["attacks"].items():
            assert e["wall_s"] > 0 and "test_acc" in e and "decision" in e["verdict"]
            # a white-box key cannot be read on another network: no p-value, the refusal instead
            assert ("p_value" in e["verdict"]) != (label == "cross-architecture retraining")
    row = rep["fractions"]["0.2"]["attacks"]
    assert row["JPEG 95"]["forward_samples"] == 0 and row["weight shifting"]["forward_samples"] > 0
    assert row["cross-architecture retraining"]["details"]["student_arch"] != "dsn_mnist"
    ref = rep["reference_attacks"]
    assert ref["fraction"] == "0.1" and set(ref["attacks"]) == set(WRT_TINY["wrt_attacks"])
    assert all("decision" in e["verdict"] for e in ref["attacks"].values())
    assert "decision" in rep["reference"]["verdict"]
    o = wrt_attacks.outcome(rep, "0.2", "weight shifting")
    assert o["cost"] == pytest.approx(rep["victim"]["test_acc"] - row["weight shifting"]["test_acc"])
    assert o["forward_ratio"] == pytest.approx(
        row["weight shifting"]["forward_samples"] / rep["fractions"]["0.2"]["from_scratch"]["forward_samples"]
    )
    md = paths[0].read_text()
    assert "unmarked reference attacked" in md and "--suite wrt --scheme uchida" in md


def test_wrt_suite_on_dsn_reports_accuracy_without_and_with_the_serial_number(tmp_path: Path) -> None:
    over = WRT_TINY | {"wrt_fractions": (0.1,), "wrt_attacks": ("fine-pruning 60%", "JPEG 95")}
    paths = attacks.run("dsn", "mnist5k", tmp_path, progress=False, overrides=over, suite="wrt")
    rep = json.loads(paths[1].read_text())
    assert rep["scheme"] == "dsn" and "reference_attacks" not in rep
    for e in [rep["victim"], *rep["fractions"]["0.1"]["attacks"].values()]:
        assert {"test_acc", "with_serial_acc", "lock_holds"} <= set(e) and "verdict" not in e
        assert set(e["tracing"]["servers"]) == {"stamping", "raw"} and isinstance(e["tracing"]["traced"], bool)
    from deepserial.experiments import wrt_attacks

    assert not wrt_attacks.controls_verified(rep)  # tracing names no licence from the from-scratch model
    assert "with SN (%)" in paths[0].read_text() and "traced (matches" in paths[0].read_text()


def test_tracing_after_an_attack_needs_the_customer_named_through_both_servers() -> None:
    import numpy as np
    import torch

    from deepserial.experiments.wrt_attacks import tracing_after
    from deepserial.fingerprint import Fingerprint
    from deepserial.serial import SerialGeometry, SerialNumber

    geometry = SerialGeometry(height=2, width=2, top=0, left=0)
    serial = SerialNumber(geometry, np.array([[1, 0], [0, 1]]))
    queries = torch.rand(100, 1, 8, 8)
    own, other = torch.randint(0, 10, (100,)), torch.randint(0, 10, (100,))
    fp = Fingerprint(queries, own)

    class Answers(torch.nn.Module):
        """Answers the queries with ``labels`` when they arrive stamped (``stamped``) and/or raw."""

        def __init__(self, stamped: torch.Tensor, raw: torch.Tensor) -> None:
            super().__init__()
            self.stamped, self.raw = stamped, raw

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            labels = self.raw if torch.equal(x, queries) else self.stamped
            return torch.nn.functional.one_hot(labels, 10).float()

    assert tracing_after(Answers(own, own), fp, [other], serial, 10)["traced"]
    half = tracing_after(Answers(own, other), fp, [other], serial, 10)  # a raw server answers as an unissued one
    assert not half["traced"] and half["servers"]["stamping"]["named"] and half["servers"]["raw"]["others_named"] == 1
    assert not tracing_after(Answers(own, own), fp, [own], serial, 10)[
        "traced"
    ]  # another licence named too: not traced


def test_wrt_suite_refuses_an_unknown_column_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown WRT suite column"):
        attacks.run("adi", "mnist5k", tmp_path, overrides={"wrt_attacks": ("nope",)}, suite="wrt")
    with pytest.raises(ConfigError, match="unknown attack suite"):
        attacks.run("adi", "mnist5k", tmp_path, suite="nope")
    assert not list(tmp_path.iterdir())


def test_removed_needs_the_protection_gone_and_the_accuracy_kept() -> None:
    from deepserial.experiments.wrt_attacks import REMOVAL_MARGIN, lock_holds, removed

    kept = {"test_acc": 95.0 - REMOVAL_MARGIN, "verdict": {"decision": False}}
    assert removed(kept, 95.0)
    assert not removed(kept | {"test_acc": 94.9 - REMOVAL_MARGIN}, 95.0)  # too costly to count
    assert not removed(kept | {"verdict": {"decision": True}}, 95.0)  # still verified
    assert not removed({"test_acc": None, "verdict": {"decision": False}}, 95.0)  # other labels: no model
    assert lock_holds(19.9, 10) and not lock_holds(20.0, 10)
    assert removed({"test_acc": 93.0, "lock_holds": False}, 97.0)
    assert not removed({"test_acc": 93.0, "lock_holds": True}, 97.0)


def test_resulting_arch_follows_the_last_student_of_a_sequence() -> None:
    from deepserial.attacks.base import resulting_arch

    assert resulting_arch("dsn_mnist", {"details": {}}) == "dsn_mnist"
    assert resulting_arch("dsn_mnist", {"details": {"student_arch": None}}) == "dsn_mnist"  # the victim's, fresh
    assert resulting_arch("dsn_mnist", {"details": {"student_arch": "null_digit"}}) == "null_digit"
    steps = [{"details": {"student_arch": "null_digit"}}, {"details": {"shifted": []}}]
    assert resulting_arch("dsn_mnist", {"details": {"steps": steps}}) == "null_digit"


def _untimed(v: object) -> object:
    """``v`` without the wall times, which differ between any two runs."""
    if isinstance(v, dict):
        return {k: _untimed(x) for k, x in v.items() if k not in ("wall_s", "wall_ratio")}
    if isinstance(v, list):
        return [_untimed(x) for x in v]
    return v


@pytest.mark.parametrize("scheme", ["uchida", "dsn"])
def test_an_interrupted_wrt_run_resumes_from_its_work_folder(
    scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepserial.experiments import workdir, wrt_attacks

    over = WRT_TINY | {"wrt_fractions": (0.1,), "wrt_attacks": ("weight shifting", "fine-pruning 60%")}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    straight = json.loads(attacks.run(scheme, "mnist5k", tmp_path / "a", overrides=over, suite="wrt")[1].read_text())
    real = wrt_attacks._run_one
    calls: list[str] = []

    def stops_on_the_second(atk: wrt_attacks.WrtAttack, *a: object) -> dict:
        calls.append(atk.label)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(atk, *a)

    monkeypatch.setattr(wrt_attacks, "_run_one", stops_on_the_second)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        attacks.run(scheme, "mnist5k", tmp_path / "b", overrides=over, suite="wrt", work=work)
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())
    assert workdir.stage_path(work, "0.1/weight shifting").exists()
    monkeypatch.undo()  # SOURCE_DATE_EPOCH unset: the resumed run signs at the time the work folder recorded
    calls.clear()

    def counted(atk: wrt_attacks.WrtAttack, *a: object) -> dict:
        calls.append(atk.label)
        return real(atk, *a)

    monkeypatch.setattr(wrt_attacks, "_run_one", counted)
    resumed = json.loads(
        attacks.run(scheme, "mnist5k", tmp_path / "b", overrides=over, suite="wrt", work=work)[1].read_text()
    )
    assert calls == ["fine-pruning 60%"] + (["weight shifting", "fine-pruning 60%"] if scheme != "dsn" else [])
    assert resumed["signed_at_epoch"] == 1790000000 and resumed["resumed_cells"] == 2
    for key in ("victim", "fractions", "reference", "reference_attacks"):
        assert _untimed(resumed.get(key)) == _untimed(straight.get(key)), key
    # a victim that comes out with other weights is refused, as is another configuration or a damaged cell
    (work / "weights" / "victim.json").write_text('{"sha256": "0"}')
    with pytest.raises(ConfigError, match="other weights"):
        attacks.run(scheme, "mnist5k", tmp_path / "c", overrides=over, suite="wrt", work=work)
    with pytest.raises(ConfigError, match="another configuration"):
        attacks.run(scheme, "mnist5k", tmp_path / "c", overrides=over | {"limit": 700}, suite="wrt", work=work)
    workdir.stage_path(work, "0.1/weight shifting").write_text("{broken")
    (work / "weights" / "victim.json").unlink()
    with pytest.raises(ConfigError, match="damaged"):
        attacks.run(scheme, "mnist5k", tmp_path / "c", overrides=over, suite="wrt", work=work)
    with pytest.raises(ConfigError, match="for --suite wrt"):
        attacks.run(scheme, "mnist5k", tmp_path / "c", overrides=over, work=work)
