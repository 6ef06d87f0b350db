"""Reproduction of the papers' robustness tables: every attack against a protected model, beside a
model trained from scratch on the attacker's data.

``deepserial reproduce attacks --scheme dsn --dataset mnist5k`` issues a DSN customer model (the
default 6x6 serial number) and measures, for attacker data of 10/20/30/40% of the training data
(DSN §3.5):

- Table 3 / Fig. 2, fine-tuning (FTAL) against the from-scratch reference (the "*" rows), with the
  learning curves of both (test accuracy on raw inputs after every epoch);
- Table 4, global L1 pruning at 10-90% of the weights: accuracy with the serial number / without;
- Table 5, transfer learning (new dense layers, all layers trained);
- Table 6, overwriting with a new serial number (the adversary knows the old one);
- the cost of each attack as a ratio to from-scratch training reaching the same accuracy: forward
  samples the attack needed to reach the accuracy both runs reach, over what from-scratch needed;
- serial-number search: random brute force through black-box queries, and gradient reverse
  engineering in the known and in an unknown region (2023 version: 48.8 +/- 25.1% on MNIST);
- Neural Cleanse's anomaly index for the clean teacher, a classic backdoor (Zhang et al.'s content
  watermark), the DSN customer model and a null-embedding model (null embedding §8.3 / Table 5).

Reports: ``reports/attacks_dsn_<dataset>.{md,json,png}``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from deepserial.attacks.base import AttackBudget, attacker_share, get_attack
from deepserial.attacks.neural_cleanse import scan
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.experiments import watermark_attacks, workdir, wrt_attacks
from deepserial.experiments.attack_configs import (
    CONFIGS,
    HEADLINE,
    PAPER,
    PLANS,
    SUITES,
    WORKED_RULE,
    AttackExperiment,
    attack_worked,
    footer,
    reproduce_command,
)
from deepserial.experiments.watermarks import signing_time
from deepserial.identity import OwnerIdentity
from deepserial.report import environment, git_state, markdown_table, write_json, write_report, write_text
from deepserial.schemes.base import get_scheme
from deepserial.schemes.dsn import DSNConfig
from deepserial.serial import stamp
from deepserial.training import TrainConfig, accuracy
from deepserial.workflow import DataSpec, embed_watermark, issue, loaded, train_teacher


def cost_ratio(
    attack_curve: list[float], attack_step: float, scratch_curve: list[float], scratch_step: float, chance: float = 0.0
) -> dict[str, Any]:
    """Forward samples the attack needed to reach the accuracy both runs reach (the lower of the two
    best accuracies), over what from-scratch training needed. Curves hold the test accuracy after
    each epoch; ``*_step`` is the forward samples of one epoch of each. An attack that never gets 5
    points above ``chance`` (%) has no accuracy to compare, hence no cost (``failed``). Whether an
    attack worked is another question, answered by its final accuracy (:func:`attack_worked`)."""
    if not attack_curve or not scratch_curve:
        return {"target": None, "ratio": None}
    if max(attack_curve) <= chance + 5.0:
        return {"target": None, "ratio": None, "failed": True}
    target = min(max(attack_curve), max(scratch_curve))
    ea = next(i for i, a in enumerate(attack_curve) if a >= target) + 1
    es = next(i for i, a in enumerate(scratch_curve) if a >= target) + 1
    return {
        "target": float(target),
        "attack_epochs": ea,
        "scratch_epochs": es,
        "ratio": (ea * attack_step) / (es * scratch_step),
    }


def run(
    scheme: str,
    dataset: str,
    out: Path,
    seed: int = 0,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    suite: str = "papers",
    work: Path | None = None,
) -> list[Path]:
    """Run the robustness reproduction for ``scheme`` on ``dataset``; write its report. ``suite``
    "papers": the attacks of the protection's papers (``attacks_<scheme>_<dataset>``); "wrt": the WRT
    removal attacks (:mod:`deepserial.experiments.wrt_attacks`, ``wrt_<scheme>_<dataset>``), which with
    ``work`` keeps every finished attack there and resumes (:mod:`deepserial.experiments.workdir`)."""
    if scheme != "dsn" and scheme not in PLANS:
        raise ConfigError(f"no attack reproduction for scheme {scheme!r}; choose one of dsn, {', '.join(PLANS)}")
    if dataset not in CONFIGS:
        raise ConfigError(f"no attack reproduction for {dataset!r}; choose one of {', '.join(CONFIGS)}")
    if suite not in SUITES:
        raise ConfigError(f"unknown attack suite {suite!r}; choose one of {', '.join(SUITES)}")
    cfg = CONFIGS[dataset].model_copy(update=overrides or {})
    if work is not None and suite != "wrt":
        raise ConfigError("a work folder is for --suite wrt")
    if suite == "wrt":
        wrt_attacks.suite_for(cfg)  # unknown columns refused before any training
        epoch, kept = None, 0
        if work is not None:
            record = {"scheme": scheme, "dataset": dataset, "seed": seed, "config": cfg.model_dump()}
            if scheme == "dsn":  # the customer model's recipe: a run of another recipe never resumes here
                record["recipe"] = DSNConfig.default().model_dump()
            epoch = workdir.start(work, record, "WRT suite")
            kept = sum(1 for p in work.rglob("*.json") if p.parent != work and p.parent.name != "weights")
        with signing_time(epoch) as epoch:
            if scheme == "dsn":
                rep = wrt_attacks.run_dsn(cfg, seed, progress, work)
            else:
                rep = wrt_attacks.run_watermark(cfg, scheme, seed, progress, work)
        rep["signed_at_epoch"] = int(epoch)
        rep["environment"] = environment()
        if work is not None:  # wall_s is this invocation's; the cells' own times are in the tables
            rep["resumed_cells"] = kept
        return write_report(out / f"wrt_{scheme}_{dataset}", rep, wrt_attacks.markdown(rep), wrt_attacks.figure(rep))
    stem = out / f"attacks_{scheme}_{dataset}"
    if scheme != "dsn":
        with signing_time() as epoch:  # with the seed-derived owner: the attacked key can be re-created
            rep = watermark_attacks.run_scheme(cfg, scheme, seed, progress)
        rep["signed_at_epoch"] = int(epoch)
        rep["environment"] = environment()
        return write_report(stem, rep, watermark_attacks.markdown(rep), watermark_attacks.figure(rep))
    with signing_time() as epoch:  # the owner from the seed and one signing time: the serial number re-creatable
        rep = _run_dsn(cfg, seed, progress)
    rep["signed_at_epoch"] = int(epoch)
    rep["environment"] = environment()
    return write_report(stem, rep, _markdown(rep), _figure(rep))


def summarise_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per attack and attacker fraction over the seeds' runs: mean, sample sd, min and max of the
    headline accuracy (:data:`HEADLINE`); for the attacks, ``worked`` (runs by :func:`attack_worked`)
    and the median cost ratio of the runs that have one (:func:`cost_ratio`). Reads only what each
    run records, so a committed report's summary can be recomputed (:func:`resummarise_seeds`)."""
    import numpy as np

    fr = list(runs[0]["fractions"])
    summary: dict[str, Any] = {}
    for key, field in HEADLINE.items():
        summary[key] = {}
        for f in fr:
            accs = [r["fractions"][f][key][field] for r in runs]
            cell = {
                "mean": float(np.mean(accs)),
                "std": float(np.std(accs, ddof=1)),
                "min": min(accs),
                "max": max(accs),
            }
            if key != "from_scratch":
                scratch = [r["fractions"][f]["from_scratch"]["raw_acc"] for r in runs]
                cell["worked"] = sum(attack_worked(a, s) for a, s in zip(accs, scratch, strict=True))
                ratios = [r["fractions"][f][key]["cost"]["ratio"] for r in runs]
                ratios = [c for c in ratios if c is not None]
                cell["cost_ratio_median"] = float(np.median(ratios)) if ratios else None
            summary[key][f] = cell
    return summary


def resummarise_seeds(path: Path) -> list[Path]:
    """Recompute the summary of a committed seeds report (``attacks_dsn_<dataset>_seeds.json``) from
    the runs it records, and rewrite its JSON and Markdown; the runs, the environment of the run and
    the figure stay as they were. Records when and with which code the summary was recomputed."""
    import json

    path = Path(path)
    rep = json.loads(path.read_text())
    if rep.get("experiment") != "attacks-seeds":
        raise ConfigError(f"{path} is not a seeds report (experiment {rep.get('experiment')!r})")
    rep["summary"] = summarise_seeds(rep["runs"])
    rep["worked_rule"] = WORKED_RULE
    commit, dirty = git_state()
    rep["summary_recomputed"] = {"time_utc": environment()["time_utc"], "git_commit": commit, "git_dirty": dirty}
    write_json(path, rep)
    md = path.with_suffix(".md")
    write_text(md, _seeds_markdown(rep))
    return [md, path]


def run_seeds(
    dataset: str, seeds: list[int], out: Path, progress: bool = True, overrides: dict[str, Any] | None = None
) -> list[Path]:
    """DSN's four-fraction attacks (Tables 3-6) and pruning against one customer model per seed: each
    seed trains its own teacher and student, so the table shows how much the outcome of an attack
    depends on the model attacked. Serial-number search and Neural Cleanse stay in the one-seed report.
    Writes ``reports/attacks_dsn_<dataset>_seeds.{md,json,png}``."""
    if dataset not in CONFIGS:
        raise ConfigError(f"no attack reproduction for {dataset!r}; choose one of {', '.join(CONFIGS)}")
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs two or more different seeds, got {seeds}")
    if min(seeds) < 0:
        raise ConfigError(f"seeds are non-negative integers, got {min(seeds)}")

    cfg = CONFIGS[dataset].model_copy(update=(overrides or {}) | {"serial_search": False, "neural_cleanse": False})
    t0 = time.perf_counter()
    with signing_time() as epoch:
        runs = [_run_dsn(cfg, s, progress) for s in seeds]
    rep = {
        "experiment": "attacks-seeds",
        "scheme": "dsn",
        "dataset": dataset,
        "seeds": seeds,
        "signed_at_epoch": int(epoch),
        "config": cfg.model_dump(),
        "runs": runs,
        "summary": summarise_seeds(runs),
        "worked_rule": WORKED_RULE,
        "paper": PAPER,
        "wall_s": time.perf_counter() - t0,
        "environment": environment(),
    }
    return write_report(out / f"attacks_dsn_{dataset}_seeds", rep, _seeds_markdown(rep), _seeds_figure(rep))


def _seeds_markdown(rep: dict[str, Any]) -> str:
    runs, paper = rep["runs"], rep["paper"]
    fr = list(runs[0]["fractions"])
    n = len(runs)
    shares = " / ".join(f"{float(f):.0%}" for f in fr)
    lines = [
        f"# Attacks on DSN over {n} seeds, `{rep['dataset']}`",
        "",
        f"Seeds {', '.join(map(str, rep['seeds']))}. A seed fixes the data split (and so the test set), the "
        "initial weights and training order, and the owner's key, hence the serial number "
        f"(`OwnerIdentity.for_experiment(seed, 'owner')`, signed at {rep['signed_at_epoch']}): each seed "
        f"trains its own teacher and customer model, then the attacks of Tables 3-6 with attacker data {shares} "
        f"of the training data, {rep['config']['attack_epochs']} epochs at lr {rep['config']['attack_lr']:g}. "
        "Accuracy (%) on the test set: without the serial number for fine-tuning, from scratch and transfer "
        f"learning; with the adversary's new serial number for overwriting. 'worked': {WORKED_RULE}; sd: the "
        "sample standard deviation over seeds; cost: the median over the runs with a cost ratio (see the one-seed "
        "report).",
        "",
        "## Customer models",
        "",
        markdown_table(
            ["seed", "teacher", "with SN", "without SN", "serial number"],
            [
                [
                    str(r["seed"]),
                    f"{r['teacher_acc']:.1f}",
                    f"{r['student_with_sn']:.1f}",
                    f"{r['student_raw']:.1f}",
                    f"{r['geometry']['height']}x{r['geometry']['width']} `{r['product_key']}`",
                ]
                for r in runs
            ],
        ),
        "",
    ]
    names = {
        "fine_tuning": "Fine-tuning (FTAL), Table 3",
        "from_scratch": "From scratch (the * row)",
        "transfer": "Transfer learning (new dense layers), Table 5",
        "overwrite": "Overwriting (new serial number), Table 6",
    }
    for key, field in HEADLINE.items():
        rows = [[str(r["seed"])] + [f"{r['fractions'][f][key][field]:.1f}" for f in fr] for r in runs]
        summ = rep["summary"][key]
        rows.append(["mean +/- sd"] + [f"{summ[f]['mean']:.1f} +/- {summ[f]['std']:.1f}" for f in fr])
        if key != "from_scratch":
            rows.append(["worked"] + [f"{summ[f]['worked']}/{n}" for f in fr])
            rows.append(
                ["median cost vs scratch"]
                + ["–" if summ[f]["cost_ratio_median"] is None else f"{summ[f]['cost_ratio_median']:.2f}x" for f in fr]
            )
        on_paper = dict(zip(("0.1", "0.2", "0.3", "0.4"), paper[key], strict=True))
        rows.append(["paper (MNIST)"] + [f"{on_paper[f]:.1f}" if f in on_paper else "–" for f in fr])
        lines += [f"## {names[key]}", "", markdown_table(["seed"] + [f"{float(f):.0%}" for f in fr], rows), ""]
    rates = [p["rate"] for p in runs[0]["pruning"]]
    prow = [[str(r["seed"])] + [f"{p['with_sn_acc']:.1f} / {p['raw_acc']:.1f}" for p in r["pruning"]] for r in runs]
    lines += [
        "## Pruning (Table 4): global L1, no fine-tuning, with SN / without",
        "",
        markdown_table(["seed"] + [f"{x:.0%}" for x in rates], prow),
        "",
    ]
    env = rep["environment"]
    lines += [
        f"Wall time {rep['wall_s']:.0f} s on {env['cpu']} ({env['cpu_count']} cores, torch threads: "
        f"{env['torch_threads']}), torch {env['torch']}.",
        "",
    ]
    again = rep.get("summary_recomputed")
    if again:
        code = f" with the code of commit {again['git_commit'][:12]}" if again.get("git_commit") else ""
        lines += [
            f"The summary rows (mean, worked, cost) were recomputed from the per-seed runs above on "
            f"{again['time_utc'][:10]}{code}; the runs themselves are those of the original run.",
            "",
        ]
    lines += [f"Reproduce: `{reproduce_command(rep, ' --seeds ' + ','.join(map(str, rep['seeds'])))}`.", ""]
    return "\n".join(lines)


def _seeds_figure(rep: dict[str, Any]):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = rep["runs"]
    fr = list(runs[0]["fractions"])
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, (key, field) in enumerate(HEADLINE.items()):
        for j, f in enumerate(fr):
            ys = [r["fractions"][f][key][field] for r in runs]
            label = "overwriting (new SN)" if key == "overwrite" else key.replace("_", " ") + " (no SN)"
            ax.scatter([j + (i - 1.5) * 0.15] * len(ys), ys, s=14, color=f"C{i}", label=label if j == 0 else None)
    ax.set_xticks(range(len(fr)), [f"{float(f):.0%}" for f in fr])
    ax.set_xlabel("attacker data")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"DSN attacks, one customer model per seed ({len(runs)} seeds, {rep['dataset']})")
    fig.tight_layout()
    return fig


def _run_dsn(cfg: AttackExperiment, seed: int, progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = DataSpec(cfg.dataset, seed, limit=cfg.limit)
    teacher = train_teacher(
        data, TrainConfig(epochs=cfg.teacher_epochs, batch_size=cfg.batch_size, seed=seed, progress=progress)
    )
    owner = OwnerIdentity.for_experiment(seed, "owner")
    issued = issue(
        loaded(teacher.model, teacher.manifest),
        owner,
        "attacked-customer",
        train=TrainConfig(epochs=cfg.student_epochs, batch_size=cfg.batch_size, seed=seed, progress=progress),
    )
    student, sn, splits = issued.student, issued.serial, issued.splits
    test = splits.test
    stamped_test = TensorData(stamp(test.x, sn.geometry, sn.as_tensor()), test.y)
    overwrite = get_attack("dsn-overwrite", {"serial": sn.to_product_key(), "new_signature": "adversary"})
    new_sn = overwrite.new_serial()  # type: ignore[attr-defined]
    new_test = TensorData(stamp(test.x, new_sn.geometry, new_sn.as_tensor()), test.y)

    def curves(_epoch: int, model: Any) -> dict[str, float]:
        return {
            "test_raw": accuracy(model, test),
            "test_sn": accuracy(model, stamped_test),
            "test_new_sn": accuracy(model, new_test),
        }

    total = len(splits.owner) + len(splits.attacker)
    rep: dict[str, Any] = {
        "experiment": "attacks",
        "scheme": "dsn",
        "dataset": cfg.dataset,
        "seed": seed,
        "config": cfg.model_dump(),
        "sizes": splits.sizes(),
        "teacher_acc": teacher.manifest["test_acc"],
        "geometry": sn.geometry.to_dict(),
        "product_key": sn.to_product_key(),
        "owner_fingerprint": owner.fingerprint(),
        "student_with_sn": accuracy(student, stamped_test),
        "student_raw": accuracy(student, test),
        "fractions": {},
        "paper": PAPER,
    }
    budget = AttackBudget(
        epochs=cfg.attack_epochs, lr=cfg.attack_lr, batch_size=cfg.batch_size, seed=seed, progress=progress
    )
    attacks = {
        "fine_tuning": get_attack("fine-tuning", {"mode": "FTAL"}),
        "from_scratch": get_attack("from-scratch"),
        "transfer": get_attack("transfer-learning", {"replace": "dense", "train": "all"}),
        "overwrite": overwrite,
    }
    for f in cfg.fractions:
        adata = attacker_share(splits.attacker, f, total, seed)
        row: dict[str, Any] = {"samples": len(adata)}
        for name, atk in attacks.items():
            model, log = atk.run(student, adata, budget, on_epoch_end=curves)
            entry = {
                "raw_acc": accuracy(model, test),
                "with_sn_acc": accuracy(model, stamped_test),
                "curve_raw": [e["test_raw"] for e in log.curve],
                "forward_samples": log.forward_samples,
                "wall_s": log.wall_s,
                "epochs": log.epochs,
            }
            if name == "overwrite":
                entry["new_sn_acc"] = accuracy(model, new_test)
                entry["curve_new_sn"] = [e["test_new_sn"] for e in log.curve]
            row[name] = entry
        scratch = row["from_scratch"]
        for name in ("fine_tuning", "transfer", "overwrite"):
            curve = row[name]["curve_new_sn"] if name == "overwrite" else row[name]["curve_raw"]
            row[name]["cost"] = cost_ratio(
                curve,
                row[name]["forward_samples"] / max(row[name]["epochs"], 1),
                scratch["curve_raw"],
                scratch["forward_samples"] / max(scratch["epochs"], 1),
                chance=100.0 / int(student.classifier.out_features),
            )
        rep["fractions"][f"{f:g}"] = row
    rep["pruning"] = []
    for rate in cfg.prune_rates:
        model, log = get_attack("pruning", {"rate": rate}).run(student, splits.attacker, AttackBudget(epochs=0))
        rep["pruning"].append(
            {
                "rate": rate,
                "with_sn_acc": accuracy(model, stamped_test),
                "raw_acc": accuracy(model, test),
                "zero_fraction": log.details["zero_weight_fraction"],
            }
        )
    if cfg.serial_search:
        rep["serial_search"] = _serial_search(cfg, student, sn, splits, seed)
    if cfg.neural_cleanse:
        rep["neural_cleanse"] = _neural_cleanse(cfg, teacher, student, data, splits, seed, progress)
    rep["wall_s"] = time.perf_counter() - t0
    return rep


def _serial_search(cfg: AttackExperiment, student: Any, sn: Any, splits: Any, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    geo = sn.geometry.to_dict()
    t = time.perf_counter()
    _, log = get_attack("serial-search", {"geometry": geo, "tries": cfg.brute_force_tries, "images_per_try": 10}).run(
        student, splits.attacker, AttackBudget(seed=seed)
    )
    out["brute_force"] = {k: v for k, v in log.details.items() if k != "best_bits"} | {
        "wall_s": time.perf_counter() - t
    }
    for region in ("known", "unknown"):
        t = time.perf_counter()
        _, log = get_attack(
            "serial-search",
            {
                "method": "reverse-engineer",
                "region": region,
                "geometry": geo,
                "restarts": cfg.reverse_restarts,
                "steps": cfg.reverse_steps,
            },
        ).run(student, splits.attacker, AttackBudget(seed=seed))
        out[f"reverse_{region}"] = {k: v for k, v in log.details.items() if k != "restarts"} | {
            "per_restart": [r["accuracy"] for r in log.details["restarts"]],
            "wall_s": time.perf_counter() - t,
        }
    return out


def _neural_cleanse(
    cfg: AttackExperiment, teacher: Any, student: Any, data: Any, splits: Any, seed: int, progress: bool
) -> dict[str, Any]:
    train = TrainConfig(epochs=cfg.teacher_epochs, batch_size=cfg.batch_size, seed=seed, progress=progress)
    owner = OwnerIdentity.for_experiment(seed, "neural-cleanse")
    models = {"clean (teacher)": teacher.model, "DSN customer model": student}
    content = embed_watermark(get_scheme("zhang-content"), owner, data, train, subject="nc-backdoor")
    models["Zhang content backdoor"] = content.model
    null_train = TrainConfig(epochs=cfg.teacher_epochs, batch_size=32, seed=seed, progress=progress)
    models["null embedding"] = embed_watermark(
        get_scheme("null-embedding"), owner, data, null_train, subject="nc-null"
    ).model
    out: dict[str, Any] = {"zhang_content_target": content.key.meta.get("target")}
    for name, model in models.items():
        t = time.perf_counter()
        r = scan(copy.deepcopy(model), splits.attacker, {"steps": cfg.nc_steps}, seed=seed)
        out[name] = r.to_dict() | {"wall_s": time.perf_counter() - t}
    return out


# ----- report ----------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _markdown(rep: dict[str, Any]) -> str:
    paper = rep["paper"]
    fr = list(rep["fractions"])
    lines = [
        f"# Attacks on DSN, `{rep['dataset']}`",
        "",
        f"Teacher {rep['teacher_acc']:.2f}%; customer model (6x6 serial number at "
        f"({rep['geometry']['top']}, {rep['geometry']['left']})) {rep['student_with_sn']:.2f}% with its serial "
        f"number, {rep['student_raw']:.2f}% without. Split {rep['sizes']}. Paper: {paper['source']} (MNIST; its "
        "network and data, not ours).",
        "",
        "## Attacker data 10-40% of the training data (Tables 3, 5, 6)",
        "",
        f"Accuracy (%) on the test set after {rep['config']['attack_epochs']} epochs at lr "
        f"{rep['config']['attack_lr']:g}; fine-tuning and transfer learning on raw inputs (no serial number), "
        "overwriting with the adversary's new serial number. Cost: forward samples the attack needed to reach "
        "the accuracy both it and from-scratch training reach, over what from-scratch needed ('at chance': the "
        "attack never got 5 points above chance at any epoch, so there is no accuracy to compare).",
        "",
    ]
    rows = []
    for key, label, pkey in (
        ("fine_tuning", "fine-tuning (FTAL)", "fine_tuning"),
        ("from_scratch", "from scratch (the * row)", "from_scratch"),
        ("transfer", "transfer learning (new dense layers)", "transfer"),
        ("overwrite", "overwriting (new serial number)", "overwrite"),
    ):
        ours = []
        for f in fr:
            e = rep["fractions"][f][key]
            ours.append(e["new_sn_acc"] if key == "overwrite" else e["raw_acc"])
        rows.append([label, " / ".join(f"{v:.1f}" for v in ours), " / ".join(f"{v:.1f}" for v in paper[pkey])])
    lines += [
        markdown_table(["attack", f"ours ({' / '.join(f'{float(f):.0%}' for f in fr)})", "paper (MNIST)"], rows),
        "",
    ]
    cost_rows = []
    for key in ("fine_tuning", "transfer", "overwrite"):
        cs = [rep["fractions"][f][key]["cost"] for f in fr]
        cost_rows.append(
            [
                key.replace("_", "-"),
                " / ".join(
                    ("at chance" if c.get("failed") else "–") if c["ratio"] is None else f"{c['ratio']:.2f}x"
                    for c in cs
                ),
                " / ".join("–" if c["target"] is None else f"{c['target']:.1f}" for c in cs),
            ]
        )
    lines += [
        "Cost relative to from-scratch training (same data, same budget):",
        "",
        markdown_table(["attack", "cost ratio", "accuracy both reach (%)"], cost_rows),
        "",
        f"Paper: overwriting costs {paper['overwrite_cost']}; fine-tuning's cost is 'close to learning from "
        "scratch' (Fig. 2).",
        "",
        "## Pruning (Table 4): global L1, no fine-tuning",
        "",
    ]
    prow = [[f"{p['rate']:.0%}", f"{p['with_sn_acc']:.1f} / {p['raw_acc']:.1f}"] for p in rep["pruning"]]
    lines += [
        markdown_table(["weights pruned", "with SN / without (%)"], prow),
        "",
        "Paper (10/20/30/40%): "
        + ", ".join(f"{a} / {b}" for a, b in zip(paper["pruning_with_sn"], paper["pruning_without_sn"], strict=True)),
        "",
    ]
    if "serial_search" in rep:
        lines += _serial_search_lines(rep["serial_search"], paper)
    if "neural_cleanse" in rep:
        nc = rep["neural_cleanse"]
        rows = [
            [name, f"{r['max_anomaly_index']:.2f}", ", ".join(map(str, r["flagged"])) or "none", f"{r['wall_s']:.0f}"]
            for name, r in nc.items()
            if isinstance(r, dict)
        ]
        lines += [
            "## Neural Cleanse (anomaly index, flagged above 2)",
            "",
            markdown_table(["model", "max anomaly index", "flagged labels", "scan s"], rows),
            "",
            f"The Zhang content backdoor's target label is {nc.get('zhang_content_target')}.",
            "",
        ]
    return "\n".join(lines + footer(rep))


def _serial_search_lines(ss: dict[str, Any], paper: dict[str, Any]) -> list[str]:
    bf = ss["brute_force"]
    lines = [
        "## Serial-number search",
        "",
        f"- Brute force: {bf['unlocks']} unlocks in {bf['tries']:,} random serial numbers "
        f"({bf['queries']:,} black-box queries; a try scoring >= 50% on 10 images is a candidate, "
        f"confirmed when it scores >= 50% on {bf['confirm_images']} more): {bf['candidates']} candidates, "
        f"best candidate at confirmation {_pct(bf['candidate_confirm_accuracy_max'])}; mean screening accuracy "
        f"{100 * bf['mean_accuracy']:.1f}%; {bf['wall_s']:.0f} s.",
    ]
    for region in ("known", "unknown"):
        r = ss[f"reverse_{region}"]
        lines.append(
            f"- Reverse engineering, {region} region: {100 * r['accuracy_mean']:.1f} +/- "
            f"{100 * r['accuracy_std']:.1f}% (best {100 * r['accuracy_best']:.1f}%) over "
            f"{len(r['per_restart'])} restarts on {r['holdout_images']} held-out attacker images; paper: "
            f"{paper['reverse_engineered']}."
        )
    return lines + [""]


def _figure(rep: dict[str, Any]):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fr = list(rep["fractions"])
    fig, axes = plt.subplots(1, len(fr), figsize=(4 * len(fr), 3.4), squeeze=False)
    for ax, f in zip(axes[0], fr, strict=True):
        row = rep["fractions"][f]
        for key, style in (("fine_tuning", "-"), ("from_scratch", "--"), ("transfer", ":")):
            c = row[key]["curve_raw"]
            ax.plot(range(1, len(c) + 1), c, style, label=key.replace("_", " "))
        ax.set_title(f"attacker data {float(f):.0%}")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("test accuracy without SN (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Removing the serial number vs training from scratch ({rep['dataset']}, DSN Fig. 2)")
    fig.tight_layout()
    return fig
