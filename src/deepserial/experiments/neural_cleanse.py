"""Neural Cleanse against every protection of this project: does the defence see a protection as a
backdoor, and does its unlearning remove it?

Neural Cleanse (Wang et al., IEEE S&P 2019) reverse-engineers a trigger per label and flags labels
whose trigger is abnormally small (MAD anomaly index above 2). Null embedding (Lukas/Li et al.,
arXiv:1910.05826, §8.3 / Table 5) reports the index for its own models. This reproduction measures
it on a clean model, a classic backdoor (Zhang et al.'s content trigger, which must be flagged) and
each protected model (the index: docs/specification.md, section 8).
``deepserial reproduce neural-cleanse --dataset mnist5k`` scans:

- the clean teacher and a DSN customer model (the attack reproduction's networks and epochs);
- one model per watermark scheme, embedded as ``deepserial reproduce attacks --scheme S`` embeds it
  (same network, data, epochs and settings; a key that does not verify is replaced, up to 3 tries),
  with the owner's verdict before, and after Neural Cleanse unlearns the labels it flagged.

Report: ``reports/neural_cleanse_<dataset>.{md,json,png}``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from deepserial.attacks.neural_cleanse import scan
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.experiments import watermark_attacks
from deepserial.experiments.attack_configs import CONFIGS, PLANS, AttackExperiment
from deepserial.experiments.watermarks import signing_time
from deepserial.identity import OwnerIdentity
from deepserial.report import environment, markdown_table, write_report
from deepserial.serial import stamp
from deepserial.training import TrainConfig, accuracy
from deepserial.workflow import DataSpec, issue, loaded, train_teacher

# Null embedding's Table 5 (Digit): the anomaly index of its watermarked models, all under 2.
PAPER = {
    "source": "null embedding (arXiv:1910.05826) Table 5: anomaly index 1.32 on Digit, not flagged; "
    "Neural Cleanse (Wang et al., S&P 2019): an index above 2 flags a backdoor label"
}


def run(
    dataset: str,
    out: Path,
    seed: int = 0,
    progress: bool = True,
    schemes: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[Path]:
    """Scan the clean model, the DSN customer model and one model per watermark scheme; write the report."""
    if dataset not in CONFIGS:
        raise ConfigError(f"no Neural Cleanse reproduction for {dataset!r}; choose one of {', '.join(CONFIGS)}")
    names = list(PLANS) if schemes is None else schemes
    unknown = [n for n in names if n not in PLANS]
    if unknown:
        raise ConfigError(f"unknown watermark scheme(s) {', '.join(unknown)}; choose from {', '.join(PLANS)}")
    cfg = CONFIGS[dataset].model_copy(update=overrides or {})
    t0 = time.perf_counter()
    with signing_time() as epoch:
        rows = _reference_rows(cfg, seed, progress) + [_scheme_row(cfg, n, seed, progress) for n in names]
    rep = {
        "experiment": "neural_cleanse",
        "dataset": dataset,
        "seed": seed,
        "config": cfg.model_dump(),
        "rows": rows,
        "paper": PAPER,
        "signed_at_epoch": int(epoch),
        "wall_s": time.perf_counter() - t0,
        "environment": environment(),
    }
    return write_report(out / f"neural_cleanse_{dataset}", rep, markdown(rep), figure(rep))


def _reference_rows(cfg: AttackExperiment, seed: int, progress: bool) -> list[dict[str, Any]]:
    """The clean teacher and a DSN customer model issued from it, each scanned (scan only: neither
    carries an ownership key to verify afterwards)."""
    data = DataSpec(cfg.dataset, seed, limit=cfg.limit)
    train = TrainConfig(epochs=cfg.teacher_epochs, batch_size=cfg.batch_size, seed=seed, progress=progress)
    teacher = train_teacher(data, train)
    issued = issue(
        loaded(teacher.model, teacher.manifest),
        OwnerIdentity.for_experiment(seed, "owner"),
        "neural-cleanse-customer",
        train=TrainConfig(epochs=cfg.student_epochs, batch_size=cfg.batch_size, seed=seed, progress=progress),
    )
    splits, sn = issued.splits, issued.serial
    rows = []
    for name, model, acc in (
        ("clean (teacher)", teacher.model, accuracy(teacher.model, splits.test)),
        (
            "dsn (customer model, with its serial number)",
            issued.student,
            accuracy(issued.student, TensorData(stamp(splits.test.x, sn.geometry, sn.as_tensor()), splits.test.y)),
        ),
    ):
        t = time.perf_counter()
        r = scan(copy.deepcopy(model), splits.attacker, {"steps": cfg.nc_steps}, seed=seed)
        rows.append({"model": name, "test_acc": acc, "scan": r.to_dict(), "wall_s": time.perf_counter() - t})
    return rows


def _scheme_row(cfg: AttackExperiment, name: str, seed: int, progress: bool) -> dict[str, Any]:
    """One model watermarked with ``name``, scanned, unlearned where flagged, verified before and after."""
    rep = watermark_attacks.run_scheme(cfg, name, seed, progress, plan=("neural_cleanse",))
    nc = rep["neural_cleanse"]
    return {
        "model": name,
        "scheme": name,
        "test_acc": rep["victim"]["test_acc"],
        "before": rep["victim"]["verdict"],
        "target": rep.get("key_target"),
        "scan": nc["scan"],
        "unlearned": nc["unlearned"],
        "after": nc["after"],
        "embedding_attempts": len(rep["embedding_attempts"]),
        "wall_s": nc["wall_s"],
    }


def _verdict(v: dict[str, Any] | None) -> str:
    return "–" if v is None else "yes" if v.get("decision") else "no"


def markdown(rep: dict[str, Any]) -> str:
    """The report: one row per model scanned."""
    rows = []
    for r in rep["rows"]:
        s = r["scan"]
        flagged = ", ".join(map(str, s["flagged"])) or "none"
        after = r.get("after")
        rows.append(
            [
                r["model"],
                f"{r['test_acc']:.1f}",
                _verdict(r.get("before")),
                f"{s['max_anomaly_index']:.2f}",
                flagged,
                "–" if r.get("target") is None else str(r["target"]),
                "–"
                if after is None
                else (
                    "nothing flagged"
                    if not r.get("unlearned")
                    else f"{after['test_acc']:.1f}%, {_verdict(after['verdict'])}"
                ),
                f"{r['wall_s']:.0f}",
            ]
        )
    env = rep["environment"]
    lines = [
        f"# Neural Cleanse on every protection, `{rep['dataset']}`",
        "",
        f"Anomaly index (MAD of the reversed triggers' L1 norms, {rep['config']['nc_steps']} joint steps) of "
        "each model; a label above 2 is flagged. For the watermarked models: the owner's verdict before, and "
        "after Neural Cleanse's unlearning of the flagged labels (accuracy, verified). 'target': the "
        "watermark's target label where the scheme has one. Paper: " + rep["paper"]["source"] + ".",
        "",
        markdown_table(
            [
                "model",
                "test acc (%)",
                "verified",
                "max anomaly index",
                "flagged labels",
                "target",
                "after unlearning: acc, verified",
                "s",
            ],
            rows,
        ),
        "",
        f"Seed {rep['seed']}; wall time {rep['wall_s']:.0f} s on {env['cpu']} ({env['cpu_count']} cores, torch "
        f"threads: {env['torch_threads']}), torch {env['torch']}.",
        "",
        f"Reproduce: `SOURCE_DATE_EPOCH={rep['signed_at_epoch']} deepserial reproduce neural-cleanse --dataset "
        f"{rep['dataset']}" + (f" --seed {rep['seed']}" if rep["seed"] else "") + "`.",
        "",
    ]
    return "\n".join(lines)


def figure(rep: dict[str, Any]):  # noqa: ANN201
    """The max anomaly index of each model against the threshold 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"].split(" (")[0] for r in rep["rows"]]
    vals = [r["scan"]["max_anomaly_index"] for r in rep["rows"]]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(names, vals, color=["C3" if v > 2 else "C0" for v in vals])
    ax.axhline(2.0, color="k", ls=":", label="threshold 2")
    ax.set_ylabel("max anomaly index")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.legend(fontsize=8)
    ax.set_title(f"Neural Cleanse on every protection ({rep['dataset']})")
    fig.tight_layout()
    return fig
