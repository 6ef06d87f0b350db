"""The removal attacks of the Watermark-Robustness-Toolbox against every protection, one table each.

``deepserial reproduce attacks --suite wrt --scheme S --dataset D`` attacks one protected model with
every WRT removal attack of :data:`SUITE` (Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image
Classification Deep Neural Network Watermarking?", IEEE S&P 2022), each at the attacker shares of
``wrt_fractions`` (default 10% and 40% of the training data), and writes
``reports/wrt_<scheme>_<dataset>.{md,json,png}`` (the papers' attacks keep their own reports,
``attacks_<scheme>_<dataset>``).

For a watermark scheme the model is the one ``reproduce attacks --scheme S`` attacks (the network, data
and budget of ``reproduce S``, :func:`deepserial.experiments.watermark_attacks.embed_victim`); after
each attack: the test accuracy, its cost (accuracy before minus after), the owner's verdict with its
p-value at the watermark reproduction's false-positive rate, and what the attack spent (forward
samples, wall time) beside training from scratch on the same data for the same epochs. Two unmarked
controls are verified with the owner's key and must never verify: the from-scratch model, and the
*unmarked reference* (the same network, data, seed and epochs without the watermark, or the trained
model a fine-tuning scheme starts from) put through every attack at the smallest share.

For DSN the model is a customer model (``reproduce attacks --scheme dsn``'s teacher and student
epochs): after each attack, the accuracy without the serial number (what an attacker gets) and with
it, and whether the lock survived (:func:`lock_holds`). The from-scratch model is the control of
:data:`deepserial.experiments.attacks.WORKED_RULE`.

**Removed** (one rule, :func:`removed`, for the tables and docs/results.md): the owner's verdict fails
(DSN: the lock is broken) while the attacker's accuracy stays within :data:`REMOVAL_MARGIN` points of
the protected model's (DSN: with its serial number).

Budget: every attack gets ``attack_epochs`` (10, the epochs the papers' tables use) at ``attack_lr``
with Adam, except where :data:`SUITE` says otherwise; each entry names what differs from WRT's
CIFAR-10 configuration and why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from deepserial.attacks.base import AttackBudget, attacker_share, get_attack
from deepserial.errors import ConfigError
from deepserial.experiments import workdir
from deepserial.experiments.attack_configs import PAPER as DSN_PAPER
from deepserial.experiments.attack_configs import WORKED_RULE, AttackExperiment, attack_worked, footer
from deepserial.experiments.watermark_attacks import PAPER as WATERMARK_PAPERS
from deepserial.experiments.watermark_attacks import embed_victim
from deepserial.fingerprint import Fingerprint, codeword, decode
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.report import markdown_table
from deepserial.schemes.dsn import SCHEME as DSN_SCHEME
from deepserial.serial import stamp
from deepserial.training import TrainConfig, predict_logits
from deepserial.workflow import DataSpec, issue, loaded, measure_model, train_teacher

#: Accuracy points an attack may cost and still count as a removal (our choice, one place).
REMOVAL_MARGIN = 5.0
#: Points above chance within which a DSN model without its serial number still counts as locked.
LOCK_MARGIN = 10.0
#: Tracing after an attack on DSN, as ``reports/tracing_<dataset>`` decides it: the customer's codeword
#: among a ledger of this many licences (the others issued to nobody), named at this family-wise rate.
TRACE_LEDGER = 20
TRACE_FPR = 1e-3


class WrtAttack(BaseModel):
    """One column of the suite: a registered attack with its options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str
    attack: str
    options: dict[str, Any] = Field(default_factory=dict)
    epochs: int | None = Field(None, ge=0, description="epochs of its own (None: the budget's)")
    note: str = ""


SUITE: tuple[WrtAttack, ...] = (
    WrtAttack(label="weight shifting", attack="weight-shifting"),
    WrtAttack(label="fine-pruning 96%", attack="fine-pruning", note="WRT's rate"),
    WrtAttack(label="fine-pruning 60%", attack="fine-pruning", options={"rate": 0.6}),
    WrtAttack(label="regularization", attack="regularization", note="5 epochs at L2 0.1, then 5 fine-tuning"),
    WrtAttack(label="label smoothing", attack="label-smoothing"),
    WrtAttack(label="weight quantization", attack="weight-quantization"),
    WrtAttack(label="feature permutation", attack="feature-permutation"),
    WrtAttack(label="JPEG 95", attack="input-preprocessing", options={"method": "jpeg"}),
    WrtAttack(label="input noise 0.01", attack="input-preprocessing", options={"method": "noise"}),
    WrtAttack(label="input quantization 16", attack="input-preprocessing", options={"method": "quantize"}),
    WrtAttack(label="Gaussian smoothing 0.5", attack="input-preprocessing", options={"method": "gaussian-blur"}),
    WrtAttack(
        label="adversarial training",
        attack="adversarial-training",
        options={"max_iter": 10, "n_max": 200},
        epochs=5,
        note="WRT's 5 epochs; PGD 10 steps instead of 40 on 200 images per epoch and radius instead of 1000 "
        "(CPU budget: with WRT's settings this one attack costs more than all the others together)",
    ),
    WrtAttack(
        label="neural laundering",
        attack="neural-laundering",
        options={"scan_steps": 50},
        epochs=5,
        note="WRT's 5 epochs; Neural Cleanse trigger search 50 steps instead of 400 (CPU budget)",
    ),
    WrtAttack(label="distillation", attack="distillation", note="10 epochs instead of WRT's 60"),
    WrtAttack(
        label="smooth retraining",
        attack="smooth-retraining",
        options={"flip": False},
        note="10 epochs instead of 60; no flips (a mirrored digit is another shape)",
    ),
    WrtAttack(
        label="cross-architecture retraining",
        attack="cross-architecture-retraining",
        note="10 epochs instead of 60; the first other registered network",
    ),
    WrtAttack(label="combined (weight shifting + smoothing)", attack="combined", options={"preset": "wrt-combined1"}),
)

# What the SoK states and we can source: its abstract, as the WRT repository's README gives it.
SOK = {
    "source": "Lukas, Jiang, Li, Kerschbaum, SoK (IEEE S&P 2022), abstract as in the README of "
    "github.com/dnn-security/Watermark-Robustness-Toolbox; CIFAR-10 and ImageNet, ResNet victims",
    "no_attack_removes_all": "none of the attacks removes all watermarks",
    "no_scheme_survives_all": "none of the schemes is robust against all attacks",
    "combined_removes_all": "combined attacks remove all watermarks",
    "novel": "weight shifting, transfer learning and smooth retraining are the SoK's own removal attacks",
    "per_cell": "the repository holds the configurations, not the result tables: no per-scheme cell is sourced here",
}


def suite_for(cfg: AttackExperiment) -> tuple[WrtAttack, ...]:
    """The suite's columns, narrowed to ``cfg.wrt_attacks`` (labels) when it is set."""
    if not cfg.wrt_attacks:
        return SUITE

    known = {a.label: a for a in SUITE}
    unknown = [a for a in cfg.wrt_attacks if a not in known]
    if unknown:
        raise ConfigError(f"unknown WRT suite column(s) {unknown}; choose from {', '.join(known)}")
    return tuple(known[a] for a in cfg.wrt_attacks)


def chance(classes: int) -> float:
    """Accuracy (%) of guessing among ``classes`` labels."""
    return 100.0 / classes


def lock_holds(raw_acc: float, classes: int) -> bool:
    """Whether a DSN model without its serial number is still locked: its accuracy on raw inputs stays
    within :data:`LOCK_MARGIN` points of chance."""
    return raw_acc < chance(classes) + LOCK_MARGIN


def tracing_after(model: Any, fp: Fingerprint, others: list[Any], serial: Any, classes: int) -> dict[str, Any]:
    """Whether the customer is still traced from ``model``: its answers to the fingerprint queries,
    through a server that stamps the serial number and one that passes inputs through, decoded against
    the customer's codeword and ``others`` (:data:`TRACE_LEDGER`, :data:`TRACE_FPR`). The thief picks
    how to serve, so ``traced`` needs the customer named, and nobody else, through both."""
    servers: dict[str, Any] = {}
    for server, x in (("stamping", stamp(fp.queries, serial.geometry, serial.as_tensor())), ("raw", fp.queries)):
        was = model.training
        answers = predict_logits(model, x).argmax(1)  # on the model's device, answers on the CPU
        model.train(was)
        own, *rest = decode(answers, [fp.codeword, *others], classes, TRACE_FPR)
        servers[server] = {
            "matches": own.matches,
            "p_value": own.p_value,
            "named": own.named,
            "others_named": sum(m.named for m in rest),
        }
    return {"servers": servers, "traced": all(v["named"] and not v["others_named"] for v in servers.values())}


def removed(entry: dict[str, Any], protected_acc: float) -> bool:
    """The suite's one rule: the protection is gone (the owner's verdict fails, or for DSN the lock is
    broken) and the attacker's accuracy (raw inputs) is within :data:`REMOVAL_MARGIN` points of the
    protected model's (DSN: with its serial number)."""
    acc = entry.get("test_acc")
    if acc is None:
        return False
    gone = (not entry["lock_holds"]) if "lock_holds" in entry else not (entry.get("verdict") or {}).get("decision")
    return gone and protected_acc - acc <= REMOVAL_MARGIN


# ----- running ---------------------------------------------------------------------------------------
def _run_one(atk: WrtAttack, victim: Any, data: Any, budget: Any, measure: Any) -> dict[str, Any]:
    """One attack on ``victim`` with ``data``: the measurement and what it spent."""
    b = budget if atk.epochs is None else budget.model_copy(update={"epochs": atk.epochs})
    model, log = get_attack(atk.attack, atk.options).run(victim, data, b)
    keep = {k: log.details[k] for k in ("student_arch",) if k in log.details}
    if "steps" in log.details:
        keep["steps"] = [s["attack"] for s in log.details["steps"]]
    return measure(model) | {
        "epochs": log.epochs,
        "forward_samples": log.forward_samples,
        "queries": log.queries,
        "wall_s": log.wall_s,
        "details": keep,
    }


def _sweep(
    cfg: AttackExperiment,
    suite: tuple[WrtAttack, ...],
    victim: Any,
    splits: Any,
    budget: Any,
    measure: Any,
    seed: int,
    work: Path | None = None,
) -> dict[str, Any]:
    """Every attack and the from-scratch control at every share of ``cfg.wrt_fractions``; with ``work``,
    each finished cell is kept there and read back by a resumed run."""
    total = len(splits.owner) + len(splits.attacker)
    out: dict[str, Any] = {}
    for f in cfg.wrt_fractions:
        adata = attacker_share(splits.attacker, f, total, seed)

        def scratch(adata: Any = adata) -> dict[str, Any]:
            model, log = get_attack("from-scratch").run(victim, adata, budget)
            return measure(model) | {"epochs": log.epochs, "forward_samples": log.forward_samples, "wall_s": log.wall_s}

        row: dict[str, Any] = {
            "samples": len(adata),
            "from_scratch": workdir.stage(work, f"{f:g}/from scratch", scratch),
        }
        row["attacks"] = {
            a.label: workdir.stage(
                work, f"{f:g}/{a.label}", lambda a=a, d=adata: _run_one(a, victim, d, budget, measure)
            )
            for a in suite
        }
        out[f"{f:g}"] = row
    return out


def run_watermark(
    cfg: AttackExperiment, scheme_name: str, seed: int, progress: bool, work: Path | None = None
) -> dict[str, Any]:
    """The suite against ``scheme_name``'s watermarked model and its unmarked reference (``work``: see
    :func:`_sweep`; the models are trained again on resume and must come out bit for bit the same)."""
    t0 = time.perf_counter()
    suite = suite_for(cfg)
    v = embed_victim(cfg, scheme_name, seed, progress)
    # The unmarked reference: the model a fine-tuning scheme starts from, else the same network, data,
    # seed and epochs trained without the watermark (as `reproduce <scheme>` trains its reference).
    if v.teacher is not None:
        reference = v.teacher.model
    else:
        train = TrainConfig(epochs=v.wm.epochs, batch_size=v.wm.batch_size, seed=seed, progress=progress)
        reference = train_teacher(DataSpec(cfg.dataset, seed, limit=cfg.limit), train, v.wm.arch).model
    workdir.same_weights(work, "victim", v.model)
    workdir.same_weights(work, "reference", reference)
    budget = AttackBudget(
        epochs=cfg.attack_epochs, lr=cfg.attack_lr, batch_size=cfg.batch_size, seed=seed, progress=progress
    )
    rep: dict[str, Any] = {
        "experiment": "wrt-attacks",
        "suite": "wrt",
        "scheme": scheme_name,
        "dataset": cfg.dataset,
        "seed": seed,
        "config": cfg.model_dump(),
        "watermark_config": v.wm.model_dump(),
        "fpr": v.wm.fpr,
        "classes": v.classes,
        "removal_margin": REMOVAL_MARGIN,
        "suite_attacks": [a.model_dump() for a in suite],
        "sizes": v.splits.sizes(),
        "citation": v.scheme.citation,
        "victim": v.attempts[-1],
        "embedding_attempts": v.attempts,
        "reference": v.measure(reference)
        | {"kind": "the fine-tuned scheme's unmarked base model" if v.teacher is not None else "trained unmarked"},
        "paper": WATERMARK_PAPERS.get(scheme_name, {}),
        "sok": SOK,
    }
    rep["fractions"] = _sweep(cfg, suite, v.model, v.splits, budget, v.measure, seed, work)
    # every attack on the unmarked reference at the smallest share: a control of false positives, which
    # needs no large budget
    smallest = min(cfg.wrt_fractions)
    total = len(v.splits.owner) + len(v.splits.attacker)
    adata = attacker_share(v.splits.attacker, smallest, total, seed)
    rep["reference_attacks"] = {
        "fraction": f"{smallest:g}",
        "attacks": {
            a.label: workdir.stage(
                work, f"reference/{a.label}", lambda a=a: _run_one(a, reference, adata, budget, v.measure)
            )
            for a in suite
        },
    }
    rep["wall_s"] = time.perf_counter() - t0
    return rep


def run_dsn(cfg: AttackExperiment, seed: int, progress: bool, work: Path | None = None) -> dict[str, Any]:
    """The suite against a DSN customer model: accuracy without and with the serial number (``work``: see
    :func:`run_watermark`)."""
    t0 = time.perf_counter()
    suite = suite_for(cfg)
    data = DataSpec(cfg.dataset, seed, limit=cfg.limit)
    teacher = train_teacher(
        data, TrainConfig(epochs=cfg.teacher_epochs, batch_size=cfg.batch_size, seed=seed, progress=progress)
    )
    owner = OwnerIdentity.for_experiment(seed, "owner")  # as reproduce attacks --scheme dsn
    issued = issue(
        loaded(teacher.model, teacher.manifest),
        owner,
        "attacked-customer",
        train=TrainConfig(epochs=cfg.student_epochs, batch_size=cfg.batch_size, seed=seed, progress=progress),
    )
    student, sn, splits = issued.student, issued.serial, issued.splits
    workdir.same_weights(work, "victim", student)
    classes = int(student.classifier.out_features)
    fp = Fingerprint.for_licence(
        owner,
        VerifierString.from_dict(issued.manifest["licence"]),
        tuple(issued.manifest["input_shape"]),
        classes,
        issued.manifest["fingerprint"]["queries"],
    )
    unissued = [
        VerifierString.now(owner.fingerprint(), f"wrt-unissued-{i}", DSN_SCHEME) for i in range(TRACE_LEDGER - 1)
    ]
    others = [codeword(owner, v, classes, len(fp.codeword)) for v in unissued]

    def measure(model: Any) -> dict[str, Any]:
        m = measure_model(model, splits, task_classes=classes, serial=sn)
        out = m | {"lock_holds": lock_holds(m["test_acc"], classes)}
        return out if m["test_acc"] is None else out | {"tracing": tracing_after(model, fp, others, sn, classes)}

    budget = AttackBudget(
        epochs=cfg.attack_epochs, lr=cfg.attack_lr, batch_size=cfg.batch_size, seed=seed, progress=progress
    )
    rep: dict[str, Any] = {
        "experiment": "wrt-attacks",
        "suite": "wrt",
        "scheme": "dsn",
        "dataset": cfg.dataset,
        "seed": seed,
        "config": cfg.model_dump(),
        "classes": classes,
        "removal_margin": REMOVAL_MARGIN,
        "lock_margin": LOCK_MARGIN,
        "suite_attacks": [a.model_dump() for a in suite],
        "sizes": splits.sizes(),
        "citation": DSN_PAPER["source"],
        "teacher_acc": teacher.manifest["test_acc"],
        "geometry": sn.geometry.to_dict(),
        "product_key": sn.to_product_key(),
        "victim": measure(student),
        "sok": SOK,
    }
    rep["fractions"] = _sweep(cfg, suite, student, splits, budget, measure, seed, work)
    rep["wall_s"] = time.perf_counter() - t0
    return rep


# ----- summary ---------------------------------------------------------------------------------------
def protected_acc(rep: dict[str, Any]) -> float:
    """The accuracy the protection's owner ships: the marked model's, DSN's with its serial number."""
    v = rep["victim"]
    return float(v["with_serial_acc"] if rep["scheme"] == "dsn" else v["test_acc"])


def outcome(rep: dict[str, Any], fraction: str, label: str) -> dict[str, Any]:
    """One cell of the summary: removed (:func:`removed`), the accuracy cost, the verdict's p-value,
    and the attack's forward samples and wall time over the from-scratch control's."""
    row = rep["fractions"][fraction]
    e, s = row["attacks"][label], row["from_scratch"]
    base = protected_acc(rep)
    return {
        "removed": removed(e, base),
        "cost": None if e.get("test_acc") is None else base - e["test_acc"],
        "p_value": (e.get("verdict") or {}).get("p_value"),
        "verified": bool((e.get("verdict") or {}).get("decision")) if "verdict" in e else None,
        "lock_holds": e.get("lock_holds"),
        "forward_ratio": e["forward_samples"] / s["forward_samples"] if s["forward_samples"] else None,
        "wall_ratio": e["wall_s"] / s["wall_s"] if s["wall_s"] else None,
    }


def controls_verified(rep: dict[str, Any]) -> list[str]:
    """The unmarked controls the owner's key verified on (there should be none)."""
    bad = []
    for f, row in rep["fractions"].items():
        if (row["from_scratch"].get("verdict") or {}).get("decision"):
            bad.append(f"from scratch at {f}")
        servers = (row["from_scratch"].get("tracing") or {}).get("servers", {})
        if any(v["named"] or v["others_named"] for v in servers.values()):
            bad.append(f"from scratch at {f} traced to a licence")
    if (rep.get("reference") or {}).get("verdict", {}).get("decision"):
        bad.append("unmarked reference")
    ref = rep.get("reference_attacks") or {}
    for label, e in (ref.get("attacks") or {}).items():
        if (e.get("verdict") or {}).get("decision"):
            bad.append(f"unmarked reference after {label}")
    return bad


# ----- report ----------------------------------------------------------------------------------------
def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _verdict(e: dict[str, Any]) -> str:
    if "lock_holds" in e:
        return "locked" if e["lock_holds"] else "**unlocked**"
    v = e.get("verdict") or {}
    if "error" in v:
        return "no verdict (" + v["error"][:50] + ")"
    p = v.get("p_value")
    return ("verified" if v.get("decision") else "**not verified**") + ("" if p is None else f" (p = {p:.2g})")


def _traced(e: dict[str, Any]) -> str:
    """A DSN cell's tracing verdict with the customer's fingerprint matches through both servers."""
    t = e.get("tracing")
    if t is None:
        return "–"
    m = " / ".join(str(t["servers"][k]["matches"]) for k in ("stamping", "raw"))
    return ("yes" if t["traced"] else "**no**") + f" ({m})"


def markdown(rep: dict[str, Any]) -> str:
    """The report of one protection under the WRT suite."""
    dsn = rep["scheme"] == "dsn"
    v = rep["victim"]
    cfg = rep["config"]
    lines = [f"# WRT removal attacks on {rep['scheme']}, `{rep['dataset']}`", ""]
    if dsn:
        lines += [
            f"Teacher {rep['teacher_acc']:.1f}%; customer model {v['with_serial_acc']:.1f}% with its serial number, "
            f"{v['test_acc']:.1f}% without (chance {chance(rep['classes']):g}%); traced {_traced(v)}. Locked: "
            f"accuracy without the serial number below chance + {rep['lock_margin']:g} points. Removed: unlocked "
            f"with accuracy without the serial number within {rep['removal_margin']:g} points of the customer "
            f"model's with it. 'Reached from scratch': {WORKED_RULE} (without the serial number). Traced: the "
            f"customer's fingerprint names it, and none of {TRACE_LEDGER - 1} unissued licences, at family-wise "
            f"rate {TRACE_FPR:g}, through a server that stamps the serial number and through one that does not "
            "(in brackets: the queries answered with its codeword through each; reports written before tracing "
            "was measured here have no such column).",
            "",
        ]
    else:
        lines += [
            f"{rep['citation']}. Watermarked model {v['test_acc']:.1f}%, owner's key {_verdict(v)}; unmarked "
            f"reference ({rep['reference']['kind']}) {rep['reference']['test_acc']:.1f}%, "
            f"{_verdict(rep['reference'])}. Verdicts at false-positive rate {rep['fpr']:g}. Removed: not verified "
            f"with test accuracy within {rep['removal_margin']:g} points of the marked model's.",
            "",
        ]
    lines += [
        f"Split {rep['sizes']}. Each attack: {cfg['attack_epochs']} epochs at lr {cfg['attack_lr']:g} (Adam) on the "
        "attacker's share unless its note says otherwise; cost = accuracy before minus after (points); forward "
        "samples and wall time as a multiple of training from scratch on the same data for "
        f"{cfg['attack_epochs']} epochs. Attacks follow the WRT defaults of their modules "
        "(`deepserial.attacks`) and train on the attacker's own labels.",
        "",
    ]
    for f, row in rep["fractions"].items():
        s = row["from_scratch"]
        scratch_cell = f"{_num(s.get('test_acc'))}, " + (
            f"{_verdict(s)}" if not dsn else f"with SN {_num(s.get('with_serial_acc'))}"
        )
        lines += [
            f"## Attacker data {float(f):.0%} ({row['samples']} samples)",
            "",
            f"From scratch (control): {scratch_cell}; {s['forward_samples']:,} forward samples, {s['wall_s']:.1f} s.",
            "",
        ]
        head = ["attack", "accuracy (%)", "cost", "verdict" if not dsn else "without SN", "removed", "fwd x", "time x"]
        if dsn:
            head.insert(2, "with SN (%)")
            head += ["reached from scratch", "traced (matches: stamping / raw)"]
        rows = []
        for label, e in row["attacks"].items():
            o = outcome(rep, f, label)
            r = [
                label,
                _num(e.get("test_acc")),
                _num(o["cost"], "{:+.1f}"),
                _verdict(e),
                "yes" if o["removed"] else "no",
                _num(o["forward_ratio"], "{:.2f}"),
                _num(o["wall_ratio"], "{:.2f}"),
            ]
            if dsn:
                r.insert(2, _num(e.get("with_serial_acc")))
                r.append("yes" if attack_worked(e["test_acc"], s["test_acc"]) else "no")
                r.append(_traced(e))
            rows.append(r)
        lines += [markdown_table(head, rows), ""]
    ref = rep.get("reference_attacks")
    if ref:
        rows = [[label, _num(e.get("test_acc")), _verdict(e)] for label, e in ref["attacks"].items()]
        lines += [
            f"## Control: the unmarked reference attacked ({float(ref['fraction']):.0%})",
            "",
            "The owner's key on the unmarked reference after each attack: it must never verify.",
            "",
            markdown_table(["attack", "accuracy (%)", "owner's verdict"], rows),
            "",
        ]
    bad = controls_verified(rep)
    controls = (
        "the from-scratch model at each share (DSN has no key to verify: the control is its accuracy, the bar of "
        "'reached from scratch', and that tracing names no licence from it: "
        + ("**" + ", ".join(bad) + "**" if bad else "none named")
        + ")"
        if dsn
        else ("**verified on " + ", ".join(bad) + "**" if bad else "no unmarked control verified")
    )
    lines += [
        "Controls: " + controls + ".",
        "",
        "Notes on the suite (where it departs from WRT's CIFAR-10 configuration): "
        + "; ".join(f"{a['label']}: {a['note']}" for a in rep["suite_attacks"] if a["note"])
        + ".",
        "",
        f"SoK: {rep['sok']['source']}: {rep['sok']['no_attack_removes_all']}; {rep['sok']['combined_removes_all']}; "
        f"{rep['sok']['per_cell']}.",
        "",
    ]
    return "\n".join(lines + footer(rep)).replace(
        f"reproduce attacks --scheme {rep['scheme']}", f"reproduce attacks --suite wrt --scheme {rep['scheme']}"
    )


def figure(rep: dict[str, Any]):  # noqa: ANN201
    """Accuracy cost of each attack per share; filled: protection removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fr = list(rep["fractions"])
    labels = list(rep["fractions"][fr[0]]["attacks"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(labels) + 2), 4.2))
    width = 0.8 / max(len(fr), 1)
    for i, f in enumerate(fr):
        xs, ys, colors = [], [], []
        for j, label in enumerate(labels):
            o = outcome(rep, f, label)
            xs.append(j + (i - (len(fr) - 1) / 2) * width)
            ys.append(o["cost"] or 0.0)
            colors.append(f"C{i}" if o["removed"] else "white")
        ax.bar(xs, ys, width, color=colors, edgecolor=f"C{i}", label=f"attacker data {float(f):.0%}")
    ax.axhline(rep["removal_margin"], color="r", ls=":", lw=1, label=f"removal margin {rep['removal_margin']:g}")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("accuracy cost (points); filled: removed")
    ax.set_title(f"WRT removal attacks on {rep['scheme']} ({rep['dataset']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
