"""The adaptive attacker against DSN: the strongest attack of each kind, with honest model selection.

Tang, Du, Hu. "Deep Serial Number" (arXiv:2011.08960) evaluate each attack at one setting (§3.5:
fine-tuning at the last learning rate; Table 5: transfer learning; the 2023 version: one gradient
reverse engineering). An attacker tries more than one setting, so a defence must be measured against
the best of a grid, chosen the way an attacker can choose: on its own data, never on test labels.

- :func:`fine_tuning_sweep`: optimizer {Adam, SGD with momentum 0.9} x learning rate {1e-4, 1e-3,
  1e-2} x mode {FTAL, RTAL, fresh dense layers on frozen features, fresh dense layers with all layers
  trained} (Adi et al. 2018 §5.1 names; DSN Table 5 for the dense layers), each trained on the
  attacker's data minus a held-out part; the attacker picks the setting with the best held-out
  accuracy (``chosen``), the oracle pick by test accuracy is reported beside it (``oracle``), and the
  same grid trains the network from scratch (DSN's "*" rows) as the control.
- :func:`key_recovery`: the serial-number searches of :mod:`deepserial.attacks.serial_search`
  (reverse engineering with bit search and the attacker's stopping rule, label-only hill climbing,
  the unknown-position search), each scored afterwards on test images against the true key.
- :func:`deepserial.attacks.keyspace.keyspace_measures`: how many keys near the true one unlock.

Every function returns a JSON-able dict.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from deepserial.attacks.base import AttackBudget, get_attack
from deepserial.attacks.serial_search import evaluate_found
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.training import accuracy

#: The sweep's modes: attack name and options. "TL-frozen": fresh dense layers trained on the frozen
#: convolutional features; "TL-all": fresh dense layers, every layer trained (DSN Table 5).
MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "FTAL": ("fine-tuning", {"mode": "FTAL"}),
    "RTAL": ("fine-tuning", {"mode": "RTAL"}),
    "FTLL": ("fine-tuning", {"mode": "FTLL"}),
    "RTLL": ("fine-tuning", {"mode": "RTLL"}),
    "TL-frozen": ("transfer-learning", {"replace": "dense", "train": "dense"}),
    "TL-all": ("transfer-learning", {"replace": "dense", "train": "all"}),
}


def _split(data: TensorData, fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    """(train, select): a seeded ``fraction`` of ``data`` held out for the attacker's model selection."""
    order = np.random.default_rng(seed).permutation(len(data))
    k = max(1, int(round(fraction * len(data))))
    if k >= len(data):
        raise ConfigError(f"holding out {fraction:.0%} of {len(data)} attacker samples leaves none to train on")
    return data.subset(torch.from_numpy(np.sort(order[k:]))), data.subset(torch.from_numpy(np.sort(order[:k])))


def fine_tuning_sweep(
    model: SplitNet,
    attacker: TensorData,
    test: TensorData,
    *,
    optimizers: Sequence[str] = ("adam", "sgd"),
    lrs: Sequence[float] = (1e-4, 1e-3, 1e-2),
    modes: Sequence[str] = ("FTAL", "RTAL", "TL-frozen", "TL-all"),
    epochs: int = 10,
    batch_size: int = 64,
    momentum: float = 0.9,
    select_fraction: float = 0.2,
    scratch: bool = True,
    refit: bool = True,
    serial: SerialNumber | None = None,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """The adaptive removal attacker: a grid of fine-tuning and transfer settings, picked honestly.

    Every (optimizer, lr, mode) trains a copy of ``model`` on the attacker's data minus a seeded
    ``select_fraction`` held out; the attacker's pick (``chosen``) is the best accuracy on that
    held-out part, the ``oracle`` pick the best test accuracy (what an evaluation that peeks would
    report; the gap shows whether the attacker's own selection is good enough). The from-scratch
    control trains the same architecture, freshly initialised, over the optimizer x lr grid with the
    same data, epochs and selection. With ``refit``, both picks are retrained on all the attacker's
    data (as an attacker would) and ``refit_test_acc`` reported; the attacker then keeps whichever of
    the refitted and the selected model scores higher on all of its own data (``kept``,
    ``final_test_acc``): fine-tuning a locked model is seed-fragile, and a refit that falls back into
    the lock (measured: 94.3% selected, 10.0% refitted) shows on the attacker's own data. Accuracies
    are in % on raw inputs (no serial number: the attacker wants a model that works without it); with
    ``serial``, also on test inputs stamped with it (``with_sn_acc``). The learning rate is constant.

    Args:
        model: the leaked customer model (not changed).
        attacker: the attacker's labelled data (e.g. :func:`~deepserial.attacks.base.attacker_share`).
        test: labelled test data, for the report only.
        optimizers: "adam" and/or "sgd" (SGD with ``momentum``).
        lrs: learning rates.
        modes: keys of :data:`MODES`.
        epochs, batch_size: the training budget of every setting.
        select_fraction: share of the attacker's data held out for selection.
        scratch: also run the from-scratch control grid.
        refit: retrain each pick on all the attacker's data.
        serial: the true serial number, to report accuracy with it (evaluation only).
        seed, device: as in :class:`~deepserial.attacks.base.AttackBudget`.

    Returns: ``settings`` and ``scratch_settings`` (per setting: optimizer, lr, mode, ``select_acc``,
    ``test_acc``, epochs, forward_samples, wall_s), ``chosen``, ``oracle``, ``scratch_chosen``,
    ``scratch_oracle`` (settings, with ``refit_test_acc``, ``kept`` and ``final_test_acc``),
    ``gain_over_scratch`` (chosen minus scratch_chosen, each the model the attacker keeps),
    ``cost`` (totals), sizes.

    Example::

        rep = fine_tuning_sweep(customer, attacker_share(splits.attacker, 0.1, total), splits.test)
        rep["chosen"]["test_acc"], rep["scratch_chosen"]["test_acc"]
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown sweep mode(s) {bad}; choose from {', '.join(MODES)}")
    if any(o not in ("adam", "sgd") for o in optimizers):
        raise ConfigError(f"optimizers must be 'adam' or 'sgd', got {list(optimizers)}")
    t0 = time.perf_counter()
    train, select = _split(attacker, select_fraction, seed)
    stamped = TensorData(stamp(test.x, serial.geometry, serial.as_tensor()), test.y) if serial is not None else None

    def run(name: str, options: dict[str, Any], opt: str, lr: float, data: TensorData) -> tuple[Any, dict[str, Any]]:
        budget = AttackBudget(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=opt,
            momentum=momentum if opt == "sgd" else 0.0,
            seed=seed,
            device=device,
        )
        attacked, log = get_attack(name, options).run(model, data, budget)
        rec = {
            "test_acc": accuracy(attacked, test),
            "epochs": log.epochs,
            "forward_samples": log.forward_samples,
            "wall_s": log.wall_s,
        }
        if stamped is not None:
            rec["with_sn_acc"] = accuracy(attacked, stamped)
        return attacked, rec

    def grid(kinds: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for mode in kinds:
            name, options = MODES[mode] if mode != "scratch" else ("from-scratch", {"plateau": False})
            if name == "fine-tuning":
                options = options | {"plateau": False}
            for opt in optimizers:
                for lr in lrs:
                    attacked, rec = run(name, options, opt, lr, train)
                    own = {"select_acc": accuracy(attacked, select), "own_acc": accuracy(attacked, attacker)}
                    out.append({"mode": mode, "optimizer": opt, "lr": lr} | own | rec)
        return out

    def pick(settings: list[dict[str, Any]], key: str) -> dict[str, Any]:
        return dict(max(settings, key=lambda s: s[key]))  # the first of equals: grid order

    def refitted(s: dict[str, Any]) -> dict[str, Any]:
        """The pick retrained on all the attacker's data, and the model it keeps (judged on its own data)."""
        if not refit:
            return s | {"kept": "selected", "final_test_acc": s["test_acc"]}
        name, options = MODES[s["mode"]] if s["mode"] != "scratch" else ("from-scratch", {"plateau": False})
        if name == "fine-tuning":
            options = options | {"plateau": False}
        attacked, rec = run(name, options, s["optimizer"], s["lr"], attacker)
        rec["own_acc"] = accuracy(attacked, attacker)
        out = s | {f"refit_{k}": v for k, v in rec.items()}
        keep_refit = rec["own_acc"] >= s["own_acc"]
        out["kept"] = "refit" if keep_refit else "selected"
        out["final_test_acc"] = rec["test_acc"] if keep_refit else s["test_acc"]
        return out

    settings = grid(modes)
    rep: dict[str, Any] = {
        "attacker_samples": len(attacker),
        "train_samples": len(train),
        "select_samples": len(select),
        "test_samples": len(test),
        "epochs": epochs,
        "batch_size": batch_size,
        "sgd_momentum": momentum,
        "grid": {"optimizers": list(optimizers), "lrs": list(lrs), "modes": list(modes)},
        "settings": settings,
        "chosen": refitted(pick(settings, "select_acc")),
        "oracle": pick(settings, "test_acc"),
        "selection": "best accuracy on the held-out part of the attacker's own data (select_acc); "
        "oracle: best test accuracy, for comparison only",
    }
    if scratch:
        sc = grid(["scratch"])
        rep |= {
            "scratch_settings": sc,
            "scratch_chosen": refitted(pick(sc, "select_acc")),
            "scratch_oracle": pick(sc, "test_acc"),
        }
        rep["gain_over_scratch"] = rep["chosen"]["final_test_acc"] - rep["scratch_chosen"]["final_test_acc"]
    every = rep["settings"] + rep.get("scratch_settings", [])
    refits = [r for r in (rep["chosen"], rep.get("scratch_chosen")) if r and "refit_forward_samples" in r]
    rep["cost"] = {
        "runs": len(every) + len(refits),
        "epochs": sum(s["epochs"] for s in every) + sum(r["refit_epochs"] for r in refits),
        "forward_samples": sum(s["forward_samples"] for s in every) + sum(r["refit_forward_samples"] for r in refits),
        "wall_s": time.perf_counter() - t0,
    }
    return rep


def key_recovery(
    model: SplitNet,
    geometry: SerialGeometry,
    attacker: TensorData,
    *,
    test: TensorData | None = None,
    serial: SerialNumber | None = None,
    methods: Sequence[str] = ("reverse-engineer", "hill-climb", "locate"),
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Run the adaptive serial-number searches against a customer model and score what they find.

    Each method runs through the attack interface (``get_attack("serial-search", ...)``) with the
    public ``geometry`` (not for ``locate``, which searches the position) and sees only the model and
    ``attacker``. When ``test`` and ``serial`` are given, :func:`~deepserial.attacks.serial_search.evaluate_found`
    then scores the keys found: test accuracy, Hamming distance to the true key, exact recoveries per
    restart, the attacker's pick.

    Args:
        model: the customer model (not changed).
        geometry: the serial number's geometry, as published in the manifest.
        attacker: the attacker's labelled images.
        test, serial: test images and the true serial number, for the evaluation only.
        methods: "reverse-engineer", "hill-climb", "locate", "brute-force".
        options: per method, options of :class:`~deepserial.attacks.serial_search.SerialSearchConfig`.
        seed, device: as in :class:`~deepserial.attacks.base.AttackBudget`.

    Returns: per method its ``details``, ``queries``, ``forward_samples``, ``wall_s`` and, with the
    truth, ``evaluation``.

    Example::

        rep = key_recovery(customer, serial.geometry, attacker, test=splits.test, serial=serial)
        rep["reverse-engineer"]["evaluation"]["chosen"]["exact"]
    """
    if (test is None) != (serial is None):
        raise ConfigError("evaluating the keys found needs both the test images and the true serial number")
    options = options or {}
    if device is not None:  # the searches run where the model's parameters are
        model = copy.deepcopy(model).to(device)
    out: dict[str, Any] = {"geometry": geometry.to_dict(), "attacker_samples": len(attacker), "seed": seed}
    for method in methods:
        cfg = {"method": method} | options.get(method, {})
        if method != "locate":
            cfg["geometry"] = geometry.to_dict()
        else:  # the position is what it searches; how loudly bits are written is the method's, public
            cfg.setdefault("amplitude", geometry.amplitude)
        _, log = get_attack("serial-search", cfg).run(model, attacker, AttackBudget(seed=seed, device=device))
        rec = {
            "config": log.budget["config"],
            "details": log.details,
            "queries": log.queries,
            "forward_samples": log.forward_samples,
            "wall_s": log.wall_s,
        }
        if test is not None and serial is not None:
            rec["evaluation"] = evaluate_found(log.details, model, test, serial)
        out[method] = rec
    return out
