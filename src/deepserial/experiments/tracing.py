"""How well fingerprint tracing names the customer of a leaked DSN model, and nobody else.

``deepserial reproduce tracing --dataset D`` issues ``customers`` fingerprinted customer models from one
teacher and one seed-derived owner (:meth:`OwnerIdentity.for_experiment`, one recorded signing time, so
every licence can be re-created), records them in a ledger, and traces (:func:`deepserial.tracing.trace`):

- every leaked model through a real prediction server (:func:`deepserial.serve.create_app` on loopback)
  that stamps the serial number itself, and through one that passes inputs through unstamped;
- every leaked model after the thief fine-tunes it with a share of the data (a sweep of optimisers and
  rates; the thief holds the key and trains on stamped inputs) and after 50% magnitude pruning;
- pairs of customers who collude by averaging weights or output probabilities;
- models that must name nobody: the teacher, and customer models the owner issued for licences the
  ledger does not hold (same owner, same query set, other codewords).

Beside them, ``twins`` customers are issued again without a fingerprint (same licence, serial number
and seed): the difference is what the fingerprint costs in accuracy and in the lock's figures.
Models are cached in a work folder so that a long run resumes, and ``only`` issues a subset (two
processes can issue disjoint subsets at once; a last run without ``only`` evaluates everything).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from deepserial.artifacts import LoadedModel, load_model, save_model
from deepserial.attacks.base import AttackBudget, attacker_share, get_attack
from deepserial.data import TensorData
from deepserial.experiments import dsn_security, workdir
from deepserial.experiments.watermarks import signing_time
from deepserial.fingerprint import DEFAULT_QUERIES, WEIGHT_LEVELS
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import Ledger
from deepserial.report import environment, markdown_table, write_report
from deepserial.schemes import dsn
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.serve import bind, create_app, server
from deepserial.suspect import HTTPSuspect, ModuleSuspect
from deepserial.tracing import TraceResult, trace
from deepserial.training import TrainConfig, accuracy
from deepserial.workflow import DataSpec, issue, train_teacher

#: How the report's traces score a licence (:func:`deepserial.fingerprint.decode`); reports written
#: before the weighted count was introduced record none, and used the plain match count.
DECODER = f"weighted match count (weights min(1, max(chance, 1/queries) / answer share), in 1/{WEIGHT_LEVELS}ths)"


class TracingConfig(BaseModel):
    """The declarative configuration of one ``reproduce tracing`` run."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "mnist5k"
    limit: int | None = Field(None, ge=100, description="use only this many samples (tests)")
    seed: int = Field(0, ge=0)
    customers: int = Field(20, ge=2)
    unissued: int = Field(3, ge=0, description="customer models issued for licences the ledger does not hold")
    twins: int = Field(3, ge=0, description="customers issued again without a fingerprint (its cost)")
    teacher_epochs: int = Field(20, ge=1)
    student_epochs: int = Field(40, ge=1, description="the DSN schedule every customer model is issued with")
    batch_size: int = Field(128, ge=1)
    queries: int = Field(DEFAULT_QUERIES, ge=10)
    fpr: float = Field(1e-3, gt=0, lt=1)
    ft_fraction: float = Field(0.1, gt=0, le=0.4, description="the thief's share of all data for fine-tuning")
    ft_epochs: int = Field(10, ge=1)
    ft_settings: list[tuple[str, float]] = [("adam", 1e-4), ("adam", 1e-3), ("adam", 1e-2), ("sgd", 1e-2)]
    prune_rate: float = Field(0.5, ge=0, lt=1)
    pairs: int = Field(20, ge=0, description="random colluding pairs, for each way of colluding")
    triples: int = Field(20, ge=0, description="random coalitions of three answering by majority vote")
    collusion_ft: tuple[str, float] | None = Field(
        ("adam", 1e-3),
        description="(optimiser, rate) of the colluders' fine-tuning of their averaged weights (None: not run)",
    )
    wrong_keys: int = Field(1000, ge=10, description="random wrong keys in the lock figures of the twins")
    lock_eval_samples: int | None = Field(
        None, ge=10, description="test images per random or Hamming-2 key in the twins' lock figures (None: all)"
    )


#: Customers issued per data set where issue 18 asks for fewer than the default 20 (a fashion-mnist
#: customer model takes 15-20 minutes on one CPU thread).
CUSTOMERS = {"fashion-mnist": 10}


def for_dataset(dataset: str, **overrides: Any) -> TracingConfig:
    """The run ``reproduce tracing --dataset DATASET`` makes: customer models issued on the schedule of the
    DSN lock report on the same data (:data:`deepserial.experiments.dsn_security.CONFIGS`), so the models
    traced are the ones whose lock that report measures; ``overrides`` (None values ignored) change any
    setting."""
    base: dict[str, Any] = {"dataset": dataset}
    if dataset in dsn_security.CONFIGS:
        sec = dsn_security.CONFIGS[dataset]
        base |= {"teacher_epochs": sec.teacher_epochs, "student_epochs": sec.student_epochs}
        base["batch_size"] = sec.batch_size
    if dataset in CUSTOMERS:
        base["customers"] = CUSTOMERS[dataset]
    return TracingConfig(**(base | {k: v for k, v in overrides.items() if v is not None}))


def _names(cfg: TracingConfig) -> list[tuple[str, str, bool]]:
    """(model id, customer name, fingerprinted) of every model the run issues, in order."""
    out = [(f"customer-{i:02d}", f"customer-{i:02d}", True) for i in range(cfg.customers)]
    out += [(f"unissued-{i}", f"unissued-{i}", True) for i in range(cfg.unissued)]
    out += [(f"twin-{i:02d}", f"customer-{i:02d}", False) for i in range(min(cfg.twins, cfg.customers))]
    return out


#: The settings the cached models depend on (the others only change how they are evaluated).
_ISSUING = (
    "dataset",
    "limit",
    "seed",
    "customers",
    "unissued",
    "twins",
    "teacher_epochs",
    "student_epochs",
    "batch_size",
    "queries",
)


def _state(work: Path, cfg: TracingConfig) -> dict[str, Any]:
    """The run's fixed facts: the issuing settings with the recipe of its models (a cached model of another
    recipe is never reused) and the signing time, recorded by the first process and read by every later one."""
    issuing = {k: v for k, v in cfg.model_dump(mode="json").items() if k in _ISSUING}
    issuing["recipe"] = dsn.DSNConfig.default().model_dump(mode="json")
    return {"config": issuing, "signed_at_epoch": workdir.start(work, issuing, "tracing")}


def _evaluation_digest(cfg: TracingConfig) -> str:
    """A short digest of the settings that change how the issued models are evaluated (not which models
    are issued) and of the decoder: the kept measurements of a work folder are those of one evaluation."""
    # collusion_ft and triples name their own stages, so adding or changing them keeps every other measurement
    ev = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in (*_ISSUING, "collusion_ft", "triples")}
    ev["decoder"] = DECODER
    return hashlib.sha256(json.dumps(ev, sort_keys=True).encode()).hexdigest()[:12]


def _teacher(work: Path, cfg: TracingConfig, data: DataSpec, progress: bool) -> LoadedModel:
    path = work / "teacher.safetensors"
    if path.exists():
        return load_model(path)
    t = train_teacher(
        data, TrainConfig(epochs=cfg.teacher_epochs, batch_size=cfg.batch_size, seed=cfg.seed, progress=progress)
    )
    save_model(path, t.model, t.manifest)
    return load_model(path)


def issue_models(
    cfg: TracingConfig, work: Path, only: list[int] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Issue (or find in ``work``) every model of the run, or the ones whose index is in ``only``."""
    state = _state(work, cfg)
    data = DataSpec(cfg.dataset, seed=cfg.seed, limit=cfg.limit)
    teacher = _teacher(work, cfg, data, progress)
    owner = OwnerIdentity.for_experiment(cfg.seed, "tracing-owner")
    train = TrainConfig(epochs=cfg.student_epochs, batch_size=cfg.batch_size, seed=cfg.seed, progress=progress)
    for i, (mid, customer, fingerprinted) in enumerate(_names(cfg)):
        path = work / f"{mid}.safetensors"
        if path.exists() or (only is not None and i not in only):
            continue
        with signing_time(state["signed_at_epoch"]):
            iss = issue(
                teacher,
                owner,
                customer,
                config=dsn.DSNConfig.default(),
                train=train,
                fingerprint_queries=cfg.queries if fingerprinted else 0,
            )
        save_model(path, iss.student, iss.manifest)
    return state


class _Stamped(torch.nn.Module):
    """A model behind a server that stamps its serial number on every input."""

    def __init__(self, model: torch.nn.Module, serial: SerialNumber) -> None:
        super().__init__()
        self.model, self.serial = model, serial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(stamp(x, self.serial.geometry, self.serial.as_tensor()))


class _AveragedOutputs(torch.nn.Module):
    """Colluders who answer with the mean of their models' output probabilities."""

    def __init__(self, *nets: torch.nn.Module) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([n(x).softmax(1) for n in self.nets]).mean(0).clamp_min(1e-12).log()


class _MajorityVote(torch.nn.Module):
    """Colluders who answer with the class most of their models give (a tie goes to the highest mean
    probability, which is below 1 and so never outweighs a vote)."""

    def __init__(self, *nets: torch.nn.Module) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([n(x).softmax(1) for n in self.nets])
        votes = torch.nn.functional.one_hot(probs.argmax(2), probs.shape[2]).sum(0).float()
        return votes + probs.mean(0) / 2


def _averaged_weights(a: torch.nn.Module, b: torch.nn.Module) -> torch.nn.Module:
    out = copy.deepcopy(a)
    sb = b.state_dict()
    out.load_state_dict({k: (v + sb[k]) / 2 for k, v in a.state_dict().items()})
    return out.eval()


@contextmanager
def _serving(model: LoadedModel, serial: SerialNumber | None) -> Iterator[str]:
    """``deepserial serve``'s application on a free loopback port: stamping ``serial`` itself, or
    passing inputs through (``serial`` None)."""
    app = create_app(model, serial, raw_inputs=serial is None)
    sock = bind("127.0.0.1", 0)
    srv = server(app, "warning")
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        th.join(10)
        sock.close()


def _row(res: TraceResult, truth: set[int]) -> dict[str, Any]:
    named = {lic.id for lic in res.named}
    return {
        "named": sorted(named),
        "right": bool(named) and named <= truth,
        "innocent_named": sorted(named - truth),
        "p_value": res.p_value,
        "queries": res.queries,
        "best_matches": max(c["matches"] for c in res.candidates),  # raw count, any licence
    }


def run(cfg: TracingConfig, out_dir: Path, work: Path | None = None, progress: bool = False) -> list[Path]:
    """Issue what is missing, trace everything, write ``reports/tracing_<dataset>.{md,json,png}``.

    ``work`` keeps the issued models and each finished measurement (a customer's traces, a colluding pair,
    the thief's own models, the innocents, a twin), so an interrupted run resumes where it stopped."""
    t_start = time.perf_counter()
    work = work or out_dir / ".work" / f"tracing_{cfg.dataset}"
    state = issue_models(cfg, work, progress=progress)
    data = DataSpec(cfg.dataset, seed=cfg.seed, limit=cfg.limit)
    splits = data.load()
    teacher = _teacher(work, cfg, data, progress)
    owner = OwnerIdentity.for_experiment(cfg.seed, "tracing-owner")
    models = {mid: load_model(work / f"{mid}.safetensors") for mid, _, _ in _names(cfg)}
    ledger = Ledger(work / "ledger.db")
    if not ledger.licences():
        for mid, _, _ in _names(cfg)[: cfg.customers]:
            v = VerifierString.from_dict(models[mid].manifest["licence"])
            sig = owner.sign(v)
            geometry = SerialGeometry.from_dict(models[mid].manifest["serial_geometry"])
            ledger.record(owner, v, SerialNumber.from_signature(sig, geometry), signature=sig, dataset=data.to_dict())
    licences = ledger.licences()
    by_customer = {lic.customer: lic for lic in licences}
    serials = {mid: _serial(owner, models[mid]) for mid in models}
    test = splits.test

    def acc(model: torch.nn.Module, serial: SerialNumber) -> float:
        return accuracy(model, TensorData(stamp(test.x, serial.geometry, serial.as_tensor()), test.y))

    def traced(net: torch.nn.Module) -> TraceResult:
        return trace(
            ModuleSuspect(net.eval(), tuple(teacher.input_shape)), licences, owner, fpr=cfg.fpr, queries=cfg.queries
        )

    def ft_budget(opt: str, lr: float) -> AttackBudget:
        """The thief's budget at one fine-tuning setting (fine-tuning the leak and training its own model)."""
        return AttackBudget(
            epochs=cfg.ft_epochs, lr=lr, optimizer=opt, momentum=0.9 if opt == "sgd" else 0.0, seed=cfg.seed
        )

    stages = f"eval-{_evaluation_digest(cfg)}"  # kept measurements of other evaluation settings never mix
    read_back = len(list((work / stages).glob("*.json")))

    def kept(name: str, compute: Any) -> dict[str, Any]:
        return workdir.stage(work, f"{stages}/{name}", compute)

    thief = attacker_share(
        splits.attacker, cfg.ft_fraction, len(splits.owner) + len(splits.attacker) + len(test), cfg.seed
    )

    def licence_ids(members: list[str]) -> set[int]:
        """The ledger ids of the licences the customer models ``members`` were issued for."""
        return {by_customer[models[m].manifest["licence"]["customer"]].id for m in members}

    def customer_row(mid: str, customer: str) -> dict[str, Any]:
        m, sn, lic = models[mid], serials[mid], by_customer[customer]
        truth = {lic.id}
        row: dict[str, Any] = {"model": mid, "licence_id": lic.id, "valid_acc": acc(m.model, sn)}
        row["raw_acc"] = accuracy(m.model, test)
        with _serving(m, sn) as url:
            row["stamping_server"] = _row(
                trace(HTTPSuspect(url), licences, owner, fpr=cfg.fpr, queries=cfg.queries), truth
            )
        with _serving(m, None) as url:
            row["raw_server"] = _row(trace(HTTPSuspect(url), licences, owner, fpr=cfg.fpr, queries=cfg.queries), truth)
        stamped = TensorData(stamp(thief.x, sn.geometry, sn.as_tensor()), thief.y)
        row["fine_tuning"] = {}
        for opt, lr in cfg.ft_settings:
            tuned, _ = get_attack("fine-tuning", {"mode": "FTAL"}).run(m.model, stamped, ft_budget(opt, lr))
            r = _row(traced(_Stamped(tuned, sn)), truth)
            r["valid_acc"] = acc(tuned, sn)
            row["fine_tuning"][f"{opt} {lr:g}"] = r
        pruned, _ = get_attack("pruning", {"rate": cfg.prune_rate}).run(m.model, stamped, AttackBudget(epochs=0))
        row["pruning"] = _row(traced(_Stamped(pruned, sn)), truth) | {"valid_acc": acc(pruned, sn)}
        return row

    customers = [kept(mid, lambda mid=mid, c=c: customer_row(mid, c)) for mid, c, _ in _names(cfg)[: cfg.customers]]

    def own_models() -> dict[str, Any]:
        """The thief's own training, the bar a fine-tuned leak is worth something above: the same network
        freshly initialised, the same data (raw: a model trained from scratch needs no key), settings and
        epochs."""
        out = {}
        for opt, lr in cfg.ft_settings:
            own, _ = get_attack("from-scratch").run(teacher.model, thief, ft_budget(opt, lr))
            out[f"{opt} {lr:g}"] = accuracy(own, test)
        return out

    from_scratch = kept("from-scratch", own_models)

    def pair_rows(a: str, b: str) -> dict[str, Any]:
        truth = licence_ids([a, b])
        avg = _averaged_weights(models[a].model, models[b].model)
        acc_a, acc_b = acc(avg, serials[a]), acc(avg, serials[b])
        best_acc, use = (acc_a, serials[a]) if acc_a >= acc_b else (acc_b, serials[b])
        both = _AveragedOutputs(_Stamped(models[a].model, serials[a]), _Stamped(models[b].model, serials[b]))
        return {
            "weights": {"pair": [a, b], "valid_acc": best_acc} | _row(traced(_Stamped(avg, use)), truth),
            "outputs": {"pair": [a, b], "valid_acc": accuracy(both, test)} | _row(traced(both), truth),
        }

    rng = np.random.default_rng(cfg.seed)
    cust_ids = [mid for mid, _, _ in _names(cfg)[: cfg.customers]]
    pairs = [[cust_ids[i] for i in rng.choice(len(cust_ids), 2, replace=False)] for _ in range(cfg.pairs)]
    pair_recs = [kept(f"pair-{i:02d}", lambda a=a, b=b: pair_rows(a, b)) for i, (a, b) in enumerate(pairs)]
    collusion = {k: [rec[k] for rec in pair_recs] for k in ("weights", "outputs")}

    def pair_tuned(a: str, b: str, opt: str, lr: float) -> dict[str, Any]:
        """Averaged weights do not make a working network (both keys near chance); colluders who hold both
        keys and the thief's data fine-tune the average under one of their keys, as one thief would."""
        truth = licence_ids([a, b])
        sn = serials[a]
        stamped = TensorData(stamp(thief.x, sn.geometry, sn.as_tensor()), thief.y)
        avg = _averaged_weights(models[a].model, models[b].model)
        tuned, _ = get_attack("fine-tuning", {"mode": "FTAL"}).run(avg, stamped, ft_budget(opt, lr))
        return {"pair": [a, b], "valid_acc": acc(tuned, sn)} | _row(traced(_Stamped(tuned, sn)), truth)

    if cfg.collusion_ft is not None:
        opt, lr = cfg.collusion_ft
        collusion[f"weights, then fine-tuned ({opt} {lr:g})"] = [
            kept(f"pair-{i:02d}-tuned-{opt}-{lr:g}", lambda a=a, b=b: pair_tuned(a, b, opt, lr))
            for i, (a, b) in enumerate(pairs)
        ]

    def majority_row(members: list[str]) -> dict[str, Any]:
        truth = licence_ids(members)
        vote = _MajorityVote(*(_Stamped(models[m].model, serials[m]) for m in members))
        return {"coalition": members, "valid_acc": accuracy(vote, test)} | _row(traced(vote), truth)

    trio_rng = np.random.default_rng([cfg.seed, 3])  # apart from the pairs' draws, which stay as they were
    if cfg.customers >= 3:
        trios = [[cust_ids[i] for i in trio_rng.choice(len(cust_ids), 3, replace=False)] for _ in range(cfg.triples)]
        collusion["triples, majority of outputs"] = [
            kept(f"triple-{i:02d}-majority", lambda t=t: majority_row(t)) for i, t in enumerate(trios)
        ]

    def innocent_rows() -> dict[str, Any]:
        out = {"teacher": _row(traced(teacher.model), set())}
        for mid, _, _ in _names(cfg)[cfg.customers : cfg.customers + cfg.unissued]:
            out[mid] = _row(traced(_Stamped(models[mid].model, serials[mid])), set())
        return out

    innocents = kept("innocents", innocent_rows)

    def twin_row(mid: str, customer: str) -> dict[str, Any]:
        pair: dict[str, Any] = {}
        # a twin is issued for the licence of the customer model of the same name (model id = customer name)
        for which, m in (("fingerprinted", models[customer]), ("plain", models[mid])):
            ev = dsn.evaluate(
                m.model,
                serials[mid],
                test,
                splits.attacker,
                n_wrong=cfg.wrong_keys,
                wrong_eval_samples=cfg.lock_eval_samples,
                seed=cfg.seed,
            )
            pair[which] = {
                k: ev[k]
                for k in (
                    "valid_sn_acc",
                    "raw_acc",
                    "wrong_sn_mean",
                    "wrong_sn_max",
                    "hamming1_mean",
                    "hamming1_max",
                    "hamming2_max",
                )
            }
        return {"customer": customer} | pair

    twins = [
        kept(mid, lambda mid=mid, c=c: twin_row(mid, c)) for mid, c, _ in _names(cfg)[cfg.customers + cfg.unissued :]
    ]

    report = {
        "experiment": "tracing",
        "decoder": DECODER,
        "config": cfg.model_dump(mode="json") | {"recipe": state["config"]["recipe"]},  # the models' recipe
        "seed": cfg.seed,
        "signed_at_epoch": state["signed_at_epoch"],
        "owner": "OwnerIdentity.for_experiment(seed, 'tracing-owner')",
        "teacher_acc": accuracy(teacher.model, test),
        "customers": customers,
        "from_scratch": from_scratch,
        "collusion": collusion,
        "innocents": innocents,
        "twins": twins,
        "summary": summarise(customers, collusion, innocents, twins, cfg, from_scratch),
        "wall_s": time.perf_counter() - t_start,  # this invocation only: see measurements_read_back
        "measurements_read_back": read_back,  # kept by earlier invocations of a resumed run
        "environment": environment(),
    }
    return write_report(out_dir / f"tracing_{cfg.dataset}", report, markdown(report), figure(report))


def _serial(owner: OwnerIdentity, model: LoadedModel) -> SerialNumber:
    v = VerifierString.from_dict(model.manifest["licence"])
    return SerialNumber.from_signature(owner.sign(v), SerialGeometry.from_dict(model.manifest["serial_geometry"]))


def _kinds(customers: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every per-customer trace row, grouped by what the leaked model went through."""
    kinds = {
        "through a server stamping the key": [c["stamping_server"] for c in customers],
        "through a raw-input server": [c["raw_server"] for c in customers],
    }
    for k in customers[0]["fine_tuning"]:
        name = f"fine-tuned ({k}, {cfg['ft_epochs']} epochs, {cfg['ft_fraction']:.0%} of the data)"
        kinds[name] = [c["fine_tuning"][k] for c in customers]
    kinds[f"pruned {cfg['prune_rate']:.0%}"] = [c["pruning"] for c in customers]
    return kinds


def summarise(
    customers: list[dict[str, Any]],
    collusion: dict[str, list[dict[str, Any]]],
    innocents: dict[str, dict[str, Any]],
    twins: list[dict[str, Any]],
    cfg: TracingConfig,
    from_scratch: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The acceptance figures: traced right, innocents named, queries, what the fingerprint cost.

    With the thief's own from-scratch accuracies, each row also counts the leaked models *worth serving*
    (accuracy with the key above the thief's best own model) and how many of those were traced right: a
    leak the thief's attack has made worse than its own model is not one it would serve."""
    bar = max(from_scratch.values()) if from_scratch else None

    def tally(rs: list[dict[str, Any]], accs: list[float]) -> dict[str, Any]:
        out = {
            "traces": len(rs),
            "right": sum(r["right"] for r in rs),
            "innocent_named": sum(bool(r["innocent_named"]) for r in rs),
            "valid_acc_mean": float(np.mean(accs)) if accs else None,
        }
        if bar is not None:
            worth = [r for r, a in zip(rs, accs, strict=True) if a > bar]
            out |= {"worth_serving": len(worth), "right_worth_serving": sum(r["right"] for r in worth)}
        return out

    rows: dict[str, dict[str, Any]] = {}
    for kind, rs in _kinds(customers, cfg.model_dump()).items():
        rows[kind] = tally(rs, [r.get("valid_acc", c["valid_acc"]) for r, c in zip(rs, customers, strict=True)])
    for k, rs in collusion.items():
        label = f"collusion: {k}" if k.startswith("triples") else f"collusion: pairs averaging {k}"
        rows[label] = tally(rs, [r["valid_acc"] for r in rs])
    out: dict[str, Any] = {
        "customers": len(customers),
        "rows": rows,
        "innocent_named_anywhere": sum(r["innocent_named"] for r in rows.values()),
        "innocents_named": sorted(k for k, r in innocents.items() if r["named"]),
        "max_queries": max(r["queries"] for rs in _kinds(customers, cfg.model_dump()).values() for r in rs),
        "valid_acc_mean": float(np.mean([c["valid_acc"] for c in customers])),
    }
    if twins:
        out["fingerprint_cost"] = {
            k: float(np.mean([t["plain"][k] - t["fingerprinted"][k] for t in twins])) for k in twins[0]["plain"]
        }
    return out


def markdown(rep: dict[str, Any]) -> str:
    """The report's Markdown: the acceptance figures first, then what the fingerprint costs."""
    s, cfg = rep["summary"], rep["config"]
    n = s["customers"]
    lines = [
        f"# Fingerprint tracing on {cfg['dataset']}",
        "",
        f"{n} customer models issued with the shipped DSN recipe ({cfg['student_epochs']} student epochs, "
        f"batch {cfg['batch_size']}), a {cfg['queries']}-query fingerprint each; teacher {rep['teacher_acc']:.1f}%, "
        f"customers with their serial number {s['valid_acc_mean']:.1f}% on average. Decoded by "
        f"{rep.get('decoder', 'plain match count')}; family-wise false-positive "
        f"rate {cfg['fpr']:g} over the {n} licences. Seed {rep['seed']}, signed at {rep['signed_at_epoch']}.",
        "",
        markdown_table(
            [
                "leaked model",
                "traced right",
                "an innocent named",
                "mean accuracy with the key",
                "traced right of those worth serving",
            ],
            [
                [
                    k,
                    f"{r['right']}/{r['traces']}",
                    f"{r['innocent_named']}/{r['traces']}",
                    r["valid_acc_mean"],
                    f"{r['right_worth_serving']}/{r['worth_serving']}" if "worth_serving" in r else "",
                ]
                for k, r in s["rows"].items()
            ],
        ),
        "",
        f"Models that must name nobody (the teacher and {len(rep['innocents']) - 1} customer models issued for "
        f"licences the ledger does not hold): named {len(s['innocents_named'])} "
        f"({', '.join(s['innocents_named']) or 'none'}). Largest number of queries in one trace: {s['max_queries']}.",
    ]
    if rep.get("from_scratch"):  # reports before 2026-12-03 did not train the thief's own model
        own = rep["from_scratch"]
        lines += [
            "",
            f"The thief's own model, trained from scratch on the same {cfg['ft_fraction']:.0%} of the data with each "
            "fine-tuning setting (test accuracy without any key): "
            + ", ".join(f"{k} {v:.1f}" for k, v in own.items())
            + f"; best {max(own.values()):.1f}. A fine-tuned leak is worth to the thief what it keeps above that: "
            "a leaked model is *worth serving* when its accuracy with the key is above that best (last column).",
        ]
    if rep["twins"]:
        keys = list(rep["twins"][0]["plain"])
        lines += [
            "",
            "## What the fingerprint costs (the same licence issued without one)",
            "",
            markdown_table(
                ["customer", "model", *keys],
                [
                    [t["customer"], w, *(t[w][k] for k in keys)]
                    for t in rep["twins"]
                    for w in ("fingerprinted", "plain")
                ],
            ),
            "",
            "Mean difference (plain minus fingerprinted): "
            + ", ".join(f"{k} {v:+.2f}" for k, v in s["fingerprint_cost"].items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def figure(rep: dict[str, Any]) -> Any:
    """The smallest adjusted p-value of each trace, by what the leaked model went through, against the
    family-wise rate at which a licence is named (a weighted count has no single naming threshold)."""
    import math

    import matplotlib  # plotting is loaded only when a report is drawn (as every reproduction does)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def score(rows: list[dict[str, Any]]) -> list[float]:
        return [-math.log10(max(r["p_value"], 1e-300)) for r in rows]

    fig, ax = plt.subplots(figsize=(8, 4))
    kinds = {"stamping server": score([c["stamping_server"] for c in rep["customers"]])}
    kinds["raw server"] = score([c["raw_server"] for c in rep["customers"]])
    for k in rep["customers"][0]["fine_tuning"]:
        kinds[f"FT {k}"] = score([c["fine_tuning"][k] for c in rep["customers"]])
    kinds["pruned"] = score([c["pruning"] for c in rep["customers"]])
    kinds["innocents"] = score(list(rep["innocents"].values()))
    ax.boxplot(list(kinds.values()), tick_labels=list(kinds))
    ax.axhline(-math.log10(rep["config"]["fpr"]), color="red", lw=1, ls="--", label="named above this line")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("-log10 smallest adjusted p-value")
    ax.legend(loc="center right")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig
