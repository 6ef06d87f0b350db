"""The robustness tables of the ownership watermarks: each scheme's model under the attacks its paper
evaluates, with the owner's verdict after each attack and a from-scratch reference.

``deepserial reproduce attacks --scheme <watermark> --dataset D`` trains one watermarked model (the
same network, data split and budget as ``deepserial reproduce <watermark>``), then runs the attacks
of :data:`deepserial.experiments.attack_configs.PLANS` on it:

- fine-tuning (all layers, the attacker holding 10-40% of the training data) beside the same net
  trained from scratch on the same data, and the four variants of Adi et al. (FTLL, FTAL, RTLL,
  RTAL) at the largest share: DeepSigns Table 3, new-label Table 1, null embedding §8.1 / Fig. 5;
- global L1 weight pruning 10-90%, without and with (sparse) fine-tuning after it: DeepSigns Fig. 6,
  new-label Fig. 4;
- null embedding only: ascending neuron pruning (Fig. 6), Neural Cleanse with unlearning (Table 5),
  model extraction with in-distribution, other-data-set and random queries and a query sweep
  (Table 6), transfer to the other data set's task with §8.4's recovery (Tables 7-8);
- DeepSigns only: overwriting with the adversary's own key of the same scheme (Table 4), both keys
  verified afterwards.

Every row reports the test accuracy of the attacked model and the owner's verdict on it (decision and
p-value at the false-positive rate of the watermark reproduction). The from-scratch row doubles as a
control: a model that never saw the watermark must not verify.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

from deepserial import distributed
from deepserial.attacks.base import AttackBudget, attacker_share, get_attack
from deepserial.attacks.transfer import recover
from deepserial.data import Splits, TensorData
from deepserial.experiments.attack_configs import PLANS, AttackExperiment, footer
from deepserial.experiments.watermarks import CONFIGS as WM_CONFIGS
from deepserial.experiments.watermarks import WatermarkExperiment
from deepserial.identity import OwnerIdentity
from deepserial.nets import SplitNet
from deepserial.ownership import OwnershipKey
from deepserial.report import markdown_table
from deepserial.schemes.base import Scheme, get_scheme
from deepserial.training import TrainConfig, accuracy
from deepserial.workflow import DataSpec, Trained, embed_watermark, loaded, measure_model, train_teacher

# The papers' figures for the same attacks (their networks and data, MNIST where they report it).
PAPER: dict[str, dict[str, str]] = {
    "null-embedding": {
        "source": "Li, Wenger, Zheng, Zhao, arXiv:1910.01226, §8 (Digit task where reported)",
        "fine_tuning": "watermark and normal accuracy not affected after 100 epochs at the last learning rate "
        "(Fig. 5, no figures in the text)",
        "pruning": "no pruning level disrupts the watermark while normal accuracy stays acceptable (Fig. 6)",
        "neural_cleanse": "anomaly index 0.88 clean / 1.32 watermarked (Digit, Table 5): not flagged",
        "extraction": "Traffic: 50k-500k ImageNet queries give 91.3-94.4% (victim 96.1%); random queries 5.5% "
        "(Table 6)",
        "transfer": "Traffic -> LISA, after recovery: normal 96.1-96.3%, watermark 100% (Table 8)",
    },
    "new-label": {
        "source": "Zhong, Zhang, Zhang, Xu, New-label watermark, Table 1 (MNIST, fine-tuning) and Fig. 4",
        "fine_tuning": "normal / key accuracy after fine-tuning 99.09 / 99.92% (Zhang et al.: 99.07 / 99.88%)",
        "pruning": "key accuracy 'does not decrease too much' as the pruning rate grows (Fig. 4)",
    },
    "deepsigns-hidden": {
        "source": "Rouhani, Chen, Koushanfar, DeepSigns, Tables 3-4 and Fig. 6 (MNIST MLP)",
        "fine_tuning": "50/100/200 epochs: accuracy 98.21/98.20/98.18%, BER 0, detected (Table 3)",
        "pruning": "tolerates up to 90% parameter pruning on MNIST (Fig. 6)",
        "overwrite": "original watermark still detected, BER 0 (Table 4 text)",
    },
    "deepsigns-output": {
        "source": "Rouhani, Chen, Koushanfar, DeepSigns, Tables 3-4 and Fig. 6 (MNIST MLP)",
        "fine_tuning": "50/100/200 epochs: accuracy 98.57/98.57/98.59%, detected (Table 3)",
        "pruning": "tolerates up to 90% parameter pruning on MNIST (Fig. 6)",
        "overwrite": "mismatches 8.3 (K=20) / 15.4 (K=30) against thresholds 13 / 21: detected (Table 4)",
    },
    "zhang-noise": {
        "source": "as compared in the new-label paper, Table 1 (MNIST)",
        "fine_tuning": "normal / key accuracy after fine-tuning 99.07 / 99.88%",
    },
}

COLUMN = {
    "FTAL": "FTAL (Adam)",
    "FTAL_sgd": "FTAL (SGD, Table 14)",
    "from_scratch": "from scratch",
    "overwrite": "overwriting",
}
OTHER_DATASET = {"mnist5k": "fashion-mnist", "fashion-mnist": "mnist5k"}


@dataclasses.dataclass
class Victim:
    """A watermarked model to attack, as :func:`embed_victim` made it."""

    model: SplitNet
    key: OwnershipKey
    splits: Splits
    classes: int  # the task's classes (a new-label model answers one more)
    wm: WatermarkExperiment  # the settings it was embedded with
    scheme: Scheme
    teacher: Trained | None  # the unmarked trained model a fine-tuning scheme started from, else None
    attempts: list[dict[str, Any]]

    def measure(self, model: Any, key: Any = None) -> dict[str, Any]:
        """Test accuracy and the verdict of ``key`` (default: the owner's) on ``model``."""
        return measure_model(
            model, self.splits, task_classes=self.classes, key=self.key if key is None else key, fpr=self.wm.fpr
        )


def embed_victim(cfg: AttackExperiment, scheme_name: str, seed: int, progress: bool) -> Victim:
    """The watermarked model both attack suites attack: the network, data split and budget of
    ``deepserial reproduce <scheme>``, the owner from the seed, and a key that verifies after embedding
    (up to ``cfg.embed_attempts`` keys, each attempt reported)."""
    wm = WM_CONFIGS[cfg.dataset]
    wm = wm.model_copy(
        update=wm.per_scheme.get(scheme_name, {})
        | ({"epochs": cfg.watermark_epochs} if cfg.watermark_epochs else {})
        | {"limit": cfg.limit}
    )
    scheme = get_scheme(scheme_name, wm.scheme_settings or None)  # the watermark reproduction's settings
    data = DataSpec(cfg.dataset, seed, limit=cfg.limit)
    train = TrainConfig(epochs=wm.epochs, batch_size=wm.batch_size, seed=seed, progress=progress)
    teacher = train_teacher(data, train, wm.arch) if scheme.fine_tunes else None
    owner = OwnerIdentity.for_experiment(seed, "owner")  # from the seed, as in watermarks.run
    # An owner checks the watermark before shipping: a key whose embedding did not take (null embedding's
    # null accuracy under T happens for some keys) is replaced by the next one, and the report says so.
    attempts: list[dict[str, Any]] = []
    for attempt in range(cfg.embed_attempts):
        base = loaded(copy.deepcopy(teacher.model), teacher.manifest) if teacher is not None else None
        marked = embed_watermark(
            scheme, owner, data, train, arch=wm.arch, subject=f"attacked-{attempt}", owner_id="reproduce", base=base
        )
        classes = int(marked.manifest.get("task_classes", marked.manifest["num_classes"]))
        check = measure_model(marked.model, marked.splits, task_classes=classes, key=marked.key, fpr=wm.fpr)
        attempts.append(check)
        if check["verdict"].get("decision"):
            break
    return Victim(marked.model, marked.key, marked.splits, classes, wm, scheme, teacher, attempts)


def run_scheme(
    cfg: AttackExperiment, scheme_name: str, seed: int, progress: bool, plan: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Embed ``scheme_name`` once and run the attacks its paper evaluates, or those of ``plan`` (``cfg``
    is an :class:`deepserial.experiments.attacks.AttackExperiment`)."""
    t0 = time.perf_counter()
    v = embed_victim(cfg, scheme_name, seed, progress)
    victim, key, splits, classes, wm, scheme, attempts = (
        v.model,
        v.key,
        v.splits,
        v.classes,
        v.wm,
        v.scheme,
        v.attempts,
    )
    total = len(splits.owner) + len(splits.attacker)

    def measure(model: Any, **kw: Any) -> dict[str, Any]:
        return measure_model(model, splits, task_classes=classes, key=key, fpr=wm.fpr, **kw)

    budget = AttackBudget(
        epochs=cfg.attack_epochs, lr=cfg.attack_lr, batch_size=cfg.batch_size, seed=seed, progress=progress
    )
    plan = PLANS[scheme_name] if plan is None else plan
    rep: dict[str, Any] = {
        "experiment": "attacks",
        "scheme": scheme_name,
        "dataset": cfg.dataset,
        "seed": seed,
        "config": cfg.model_dump(),
        "watermark_config": wm.model_dump(),
        "plan": list(plan),
        "sizes": splits.sizes(),
        "citation": scheme.citation,
        "victim": attempts[-1],
        "embedding_attempts": attempts,
        "key_target": key.meta.get("target"),
        "paper": PAPER.get(scheme_name, {}),
    }
    largest = max(cfg.fractions)
    if "fine_tuning" in plan or "overwrite" in plan:

        def fraction_row(_: int, f: float) -> dict[str, Any]:
            adata = attacker_share(splits.attacker, f, total, seed)
            row: dict[str, Any] = {"samples": len(adata)}
            names = {"FTAL": get_attack("fine-tuning", {"mode": "FTAL"}), "from_scratch": get_attack("from-scratch")}
            if cfg.sgd_fine_tuning:  # the gentler recipe of null embedding's Table 14 (SGD at 1e-3)
                names["FTAL_sgd"] = get_attack("fine-tuning", {"mode": "FTAL"})
            if f == largest:
                names |= {m: get_attack("fine-tuning", {"mode": m}) for m in ("FTLL", "RTLL", "RTAL")}
            if "overwrite" in plan:
                names["overwrite"] = get_attack("watermark-overwrite", {"scheme": scheme_name})
            for name, atk in names.items():
                b = budget.model_copy(update={"optimizer": "sgd"}) if name == "FTAL_sgd" else budget
                model, log = atk.run(victim, adata, b)
                entry = measure(model) | {"wall_s": log.wall_s, "forward_samples": log.forward_samples}
                if log.key is not None:  # the adversary's own watermark, verified on the overwritten model
                    entry["adversary_verdict"] = measure_model(
                        model, splits, task_classes=classes, key=log.key, fpr=wm.fpr
                    )["verdict"]
                elif "adversary_watermark_failed" in log.details:
                    entry["adversary_verdict"] = {
                        "decision": False,
                        "error": "did not take: " + log.details["adversary_watermark_failed"],
                    }
                row[name] = entry
            return row

        # one attacker budget per job: under torchrun the fractions are spread over the processes
        rows = distributed.sweep(list(cfg.fractions), fraction_row)
        rep["fine_tuning"] = {f"{f:g}": row for f, row in zip(cfg.fractions, rows, strict=True)}
    if "pruning" in plan:
        rep["pruning"] = _prune(victim, splits, cfg, measure, "global-l1", seed, progress)
    if "neuron_pruning" in plan:
        rep["neuron_pruning"] = _prune(victim, splits, cfg, measure, "neuron", seed, progress)
    if "neural_cleanse" in plan:
        model, log = get_attack("neural-cleanse", {"steps": cfg.nc_steps}).run(victim, splits.attacker, budget)
        rep["neural_cleanse"] = {
            "scan": log.details["scan"],
            "unlearned": log.details.get("unlearned", []),
            "wall_s": log.wall_s,
            "after": measure(model),
        }
    if "extraction" in plan:
        rep["extraction"] = _extraction(victim, splits, cfg, measure, budget)
    if "transfer" in plan:
        rep["transfer"] = _transfer(victim, splits, cfg, measure, budget, classes, seed)
    rep["wall_s"] = time.perf_counter() - t0
    return rep


def _prune(
    victim: Any, splits: Any, cfg: AttackExperiment, measure: Any, method: str, seed: int, progress: bool
) -> list[dict[str, Any]]:
    """Each pruning rate without fine-tuning and with ``cfg.prune_finetune_epochs`` of sparse fine-tuning
    on the attacker's whole split."""
    rows = []
    for rate in cfg.prune_rates:
        row: dict[str, Any] = {"rate": rate}
        for label, epochs in (("pruned", 0), ("pruned_fine_tuned", cfg.prune_finetune_epochs)):
            if label != "pruned" and epochs == 0:
                continue
            b = AttackBudget(epochs=epochs, lr=cfg.attack_lr, batch_size=cfg.batch_size, seed=seed, progress=progress)
            model, log = get_attack("pruning", {"method": method, "rate": rate}).run(victim, splits.attacker, b)
            row[label] = measure(model) | {"zero_fraction": log.details["zero_weight_fraction"]}
        rows.append(row)
    return rows


def query_volumes(volumes: list[int], available: int) -> list[int]:
    """The sweep's query volumes a source of ``available`` inputs can answer; a source smaller than
    some of them (mnist5k's few thousand images for a fashion-mnist victim) is also asked all it has,
    so that its row is in the table rather than silently left out."""
    fits = [q for q in volumes if q <= available]
    return fits if len(fits) == len(volumes) else fits + [available]


def _extraction(victim: Any, splits: Any, cfg: AttackExperiment, measure: Any, budget: Any) -> dict[str, Any]:
    """Substitutes trained on the victim's labels for in-distribution, other-data-set and random queries,
    at a sweep of query volumes up to the attacker's split (null embedding Table 6)."""
    n = len(splits.attacker)
    other_name = OTHER_DATASET[cfg.dataset]
    other = DataSpec(other_name, budget.seed, limit=n * 4).load()
    pool = {
        "in-distribution": splits.attacker,
        f"other data set ({other_name})": TensorData(other.owner.x, other.owner.y),
    }
    volumes = sorted({max(1, int(round(v * n))) for v in cfg.extraction_volumes})
    rows: list[dict[str, Any]] = []
    for source, inputs in pool.items():
        for q in query_volumes(volumes, len(inputs)):
            b = budget.model_copy(update={"queries": q})
            model, log = get_attack("extraction", {"source": "data"}).run(victim, inputs, b)
            rows.append(
                {
                    "source": source,
                    "queries": log.queries,
                    "share_of_training_data": q / max(len(splits.owner) + len(splits.attacker), 1),
                }
                | measure(model)
            )
    b = budget.model_copy(update={"queries": volumes[-1]})
    model, log = get_attack("extraction", {"source": "noise"}).run(victim, splits.attacker, b)
    rows.append(
        {
            "source": "uniform noise",
            "queries": log.queries,
            "share_of_training_data": volumes[-1] / max(len(splits.owner) + len(splits.attacker), 1),
        }
        | measure(model)
    )
    return {"rows": rows}


def _transfer(
    victim: Any, splits: Any, cfg: AttackExperiment, measure: Any, budget: Any, classes: int, seed: int
) -> list[dict[str, Any]]:
    """Transfer to the other data set's task (new head, three sets of trained layers), then §8.4's
    recovery on the victim's data and the owner's verdict."""
    other_name = OTHER_DATASET[cfg.dataset]
    task = DataSpec(other_name, seed, limit=cfg.transfer_samples).load()
    task_classes = int(task.owner.y.max()) + 1
    rows = []
    for train in ("head", "dense", "all"):
        atk = get_attack("transfer-learning", {"replace": "head", "train": train, "num_classes": task_classes})
        student, log = atk.run(victim, task.owner, budget)
        recovery = dataclasses.replace(budget.train_config(), epochs=cfg.recovery_epochs)
        recovered, _ = recover(
            student, classes, splits.attacker, recovery, trainable="head" if train == "head" else "dense"
        )
        rows.append(
            {
                "trained": train,
                "student_task": other_name,
                "student_samples": len(task.owner),
                "student_acc": accuracy(student, task.test),
                "wall_s": log.wall_s,
                "recovered": measure(recovered),
            }
        )
    return rows


# ----- report ----------------------------------------------------------------------------------------
def _verdict(m: dict[str, Any]) -> str:
    v = m.get("verdict") or {}
    if "error" in v:
        return "no verdict (" + v["error"][:60] + ")"
    mark = "verified" if v.get("decision") else "not verified"
    return f"{mark} (p = {v.get('p_value', float('nan')):.2g})"


def _details(m: dict[str, Any]) -> str:
    d = (m.get("verdict") or {}).get("details") or {}
    keep = {k: v for k, v in d.items() if k in ("acc_null", "acc_true", "ber", "mismatches", "hits")}
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in keep.items()) or "–"


def _acc(m: dict[str, Any], key: str = "test_acc") -> str:
    v = m.get(key)
    return "–" if v is None else f"{v:.1f}"


def markdown(rep: dict[str, Any]) -> str:
    """The report of one scheme's attacks."""
    paper = rep["paper"]
    cfg = rep["config"]
    victim = rep["victim"]
    lines = [
        f"# Attacks on {rep['scheme']}, `{rep['dataset']}`",
        "",
        f"{rep['citation']}. Watermarked model: {_acc(victim)}% test accuracy, owner's key "
        f"{_verdict(victim)}. Split {rep['sizes']}. Verdicts at false-positive rate "
        f"{rep['watermark_config']['fpr']:g}. Paper figures: {paper.get('source', 'none reported')} (their "
        "networks and data, not ours).",
        "",
    ]
    failed = rep.get("embedding_attempts", [])[:-1]
    if failed:
        lines += [
            f"The first {len(failed)} key(s) did not take ("
            + "; ".join(f"{_acc(a)}%, {_verdict(a)}, details {_details(a)}" for a in failed)
            + "); the owner re-embeds with the "
            "next key before shipping, as a real owner would check.",
            "",
        ]
    if "fine_tuning" in rep:
        fr = list(rep["fine_tuning"])
        cols = [c for c in ("FTAL", "FTAL_sgd", "from_scratch", "overwrite") if c in rep["fine_tuning"][fr[0]]]
        rows = [
            [f"{float(f):.0%} ({rep['fine_tuning'][f]['samples']})"]
            + [f"{_acc(rep['fine_tuning'][f][c])} / {_verdict(rep['fine_tuning'][f][c])}" for c in cols]
            for f in fr
        ]
        lines += [
            "## Fine-tuning beside training from scratch",
            "",
            f"{cfg['attack_epochs']} epochs at lr {cfg['attack_lr']:g} (Adam, the victim's own optimiser and "
            "last rate, unless the column says SGD) on the attacker's share of the training data; each cell: "
            "test accuracy (%) / the owner's verdict.",
            "",
            markdown_table(["attacker data"] + [COLUMN.get(c, c) for c in cols], rows),
            "",
        ]
        if "overwrite" in cols:
            adv = [_verdict({"verdict": rep["fine_tuning"][f]["overwrite"].get("adversary_verdict")}) for f in fr]
            lines += [
                "The adversary's own key on its overwritten model: "
                + "; ".join(f"{float(f):.0%}: {a}" for f, a in zip(fr, adv, strict=True))
                + ".",
                "",
            ]
        big = rep["fine_tuning"][fr[-1]]
        modes = [m for m in ("FTLL", "FTAL", "RTLL", "RTAL") if m in big]
        lines += [
            f"Fine-tuning variants of Adi et al. at {float(fr[-1]):.0%}:",
            "",
            markdown_table(
                ["variant", "test accuracy (%)", "owner's verdict"],
                [[m, _acc(big[m]), _verdict(big[m])] for m in modes],
            ),
            "",
        ]
        for k in ("fine_tuning", "overwrite"):
            if k in paper:
                lines += [f"Paper ({k.replace('_', '-')}): {paper[k]}.", ""]
    for section, title in (("pruning", "Global L1 weight pruning"), ("neuron_pruning", "Ascending neuron pruning")):
        if section not in rep:
            continue
        rows = [
            [
                f"{r['rate']:.0%}",
                _acc(r["pruned"]),
                _verdict(r["pruned"]),
                _acc(r.get("pruned_fine_tuned", {})),
                _verdict(r.get("pruned_fine_tuned", {})),
            ]
            for r in rep[section]
        ]
        lines += [
            f"## {title}",
            "",
            f"Pruned, then also with {cfg['prune_finetune_epochs']} epoch(s) of sparse fine-tuning on the "
            "attacker's split.",
            "",
            markdown_table(["pruned", "accuracy (%)", "verdict", "+ fine-tuning (%)", "verdict"], rows),
            "",
        ]
        if "pruning" in paper:
            lines += [f"Paper: {paper['pruning']}.", ""]
    if "neural_cleanse" in rep:
        nc = rep["neural_cleanse"]
        lines += [
            "## Neural Cleanse",
            "",
            f"Max anomaly index {nc['scan']['max_anomaly_index']:.2f} (flagged above 2: "
            f"{', '.join(map(str, nc['scan']['flagged'])) or 'none'}); after unlearning "
            f"{'the flagged labels' if nc['unlearned'] else '(nothing flagged, nothing unlearned)'}: "
            f"{_acc(nc['after'])}%, {_verdict(nc['after'])}; {nc['wall_s']:.0f} s.",
            "",
            f"Paper: {paper.get('neural_cleanse', '–')}.",
            "",
        ]
    if "extraction" in rep:
        rows = [
            [r["source"], f"{r['queries']:,}", f"{r['share_of_training_data']:.0%}", _acc(r), _verdict(r)]
            for r in rep["extraction"]["rows"]
        ]
        lines += [
            "## Model extraction",
            "",
            f"A fresh network of the victim's architecture trained {cfg['attack_epochs']} epochs on the "
            "victim's labels.",
            "",
            markdown_table(
                ["queries from", "queries", "of training data", "substitute accuracy (%)", "owner's verdict"], rows
            ),
            "",
            f"Paper: {paper.get('extraction', '–')}.",
            "",
        ]
    if "transfer" in rep:
        rows = [
            [r["trained"], f"{r['student_acc']:.1f}", _acc(r["recovered"]), _verdict(r["recovered"])]
            for r in rep["transfer"]
        ]
        t0 = rep["transfer"][0]
        lines += [
            "## Transfer learning and recovery (§8.4)",
            "",
            f"Student task: `{t0['student_task']}` ({t0['student_samples']} samples), a new classification "
            f"layer; recovery: a fresh layer of the victim's size trained {cfg['recovery_epochs']} epochs on "
            "the victim's attacker split.",
            "",
            markdown_table(
                ["layers trained", "student accuracy (%)", "recovered accuracy (%)", "owner's verdict after recovery"],
                rows,
            ),
            "",
            f"Paper: {paper.get('transfer', '–')}.",
            "",
        ]

    return "\n".join(lines + footer(rep))


def figure(rep: dict[str, Any]):  # noqa: ANN201
    """Accuracy after each attack, verified points filled, unverified hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("fine_tuning", "pruning", "neuron_pruning") if p in rep]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)

    def plot(ax: Any, xs: list[float], ms: list[dict[str, Any]], label: str, style: str) -> None:
        ys = [m.get("test_acc") or 0.0 for m in ms]
        (line,) = ax.plot(xs, ys, style, label=label)
        for x, y, m in zip(xs, ys, ms, strict=True):
            ok = bool((m.get("verdict") or {}).get("decision"))
            ax.plot([x], [y], "o", color=line.get_color(), fillstyle="full" if ok else "none")

    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "fine_tuning":
            fr = list(rep["fine_tuning"])
            xs = [100 * float(f) for f in fr]
            for c, style in (("FTAL", "-"), ("FTAL_sgd", "-."), ("from_scratch", "--"), ("overwrite", ":")):
                if c in rep["fine_tuning"][fr[0]]:
                    plot(ax, xs, [rep["fine_tuning"][f][c] for f in fr], COLUMN[c], style)
            ax.set_xlabel("attacker data (% of training data)")
        else:
            xs = [100 * r["rate"] for r in rep[panel]]
            plot(ax, xs, [r["pruned"] for r in rep[panel]], "pruned", "-")
            if "pruned_fine_tuned" in rep[panel][0]:
                plot(ax, xs, [r["pruned_fine_tuned"] for r in rep[panel]], "+ fine-tuning", "--")
            ax.set_xlabel(f"{panel.replace('_', ' ')} rate (%)")
        ax.set_ylim(0, 100)
        ax.set_title(panel.replace("_", " "))
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test accuracy (%); filled: owner verified")
    fig.suptitle(f"Attacks on {rep['scheme']} ({rep['dataset']})")
    fig.tight_layout()
    return fig
