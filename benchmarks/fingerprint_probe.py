"""Probe: how a fingerprint setting holds against a licensee-thief's fine-tuning and pruning.

Run: ``python benchmarks/fingerprint_probe.py EPOCHS QUERIES TAG ['{"weight": 3.0}']`` (appends one
JSON line to ``benchmarks/results/fingerprint_probes.jsonl``). Probes since 2026-12-04 also record the
customer model's accuracy with each one-bit-off key (``hamming1_mean``/``max`` on 1,000 test images).

One mnist5k teacher (20 epochs, seed 0), one customer model issued with the shipped DSN recipe and a
fingerprint with the given settings (:class:`deepserial.fingerprint.Fingerprint` fields), then: the
share of the queries answered with the codeword (raw and stamped with the serial number), accuracy
with and without the key, and the same after FTAL fine-tuning on 10% of the data stamped with the
key (Adam 1e-3, 1e-4, 1e-2; SGD 1e-2 momentum 0.9; 10 epochs) and after 50% global magnitude pruning.
One seed, one customer: a probe for choosing settings, not a result (``reproduce tracing`` is that).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import deepserial.workflow as W
from deepserial.attacks.base import AttackBudget, attacker_share, get_attack
from deepserial.data import Splits, TensorData
from deepserial.fingerprint import Fingerprint, match_rate
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.report import environment, json_bytes, mark_start
from deepserial.serial import SerialNumber, stamp
from deepserial.training import TrainConfig, accuracy

OUT = Path(__file__).resolve().parent / "results" / "fingerprint_probes.jsonl"


def thief_attacks(
    student: torch.nn.Module, sp: Splits, sn: SerialNumber, rates: Callable[[torch.nn.Module], dict]
) -> dict[str, dict]:
    """``rates`` of ``student`` after a licensee-thief's FTAL fine-tuning on 10% of the data stamped
    with the key (Adam 1e-3, 1e-4, 1e-2; SGD 1e-2 momentum 0.9; 10 epochs) and after 50% pruning."""
    out = {}
    thief = attacker_share(sp.attacker, 0.1, len(sp.owner) + len(sp.attacker) + len(sp.test), seed=0)
    stamped = TensorData(stamp(thief.x, sn.geometry, sn.as_tensor()), thief.y)
    for opt, lr in (("adam", 1e-3), ("adam", 1e-4), ("sgd", 1e-2), ("adam", 1e-2)):
        budget = AttackBudget(epochs=10, lr=lr, optimizer=opt, momentum=0.9 if opt == "sgd" else 0)
        tuned, _ = get_attack("fine-tuning", {"mode": "FTAL"}).run(student, stamped, budget)
        out[f"ft_{opt}_{lr}"] = rates(tuned)
        print(f"ft_{opt}_{lr}", out[f"ft_{opt}_{lr}"], flush=True)
    pruned, _ = get_attack("pruning", {"rate": 0.5}).run(student, stamped, AttackBudget(epochs=0))
    out["prune50"] = rates(pruned)
    return out


def attack_and_record(
    out: dict, student: torch.nn.Module, sp: Splits, sn: SerialNumber, rates: Callable, t0: float
) -> None:
    """Add the thief's attacks (:func:`thief_attacks`) to the probe's ``out`` and append it to the results."""
    out |= thief_attacks(student, sp, sn, rates)
    out["wall_s"] = time.time() - t0
    out["environment"] = environment()
    with OUT.open("ab") as f:
        f.write(json_bytes(out).replace(b"\n", b"") + b"\n")
    print(json.dumps({k: v for k, v in out.items() if k != "environment"}, indent=1))


def main() -> None:
    torch.set_num_threads(1)
    epochs, n_queries, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    robust = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    original = W.Fingerprint.for_licence.__func__
    W.Fingerprint.for_licence = classmethod(lambda cls, *a, **k: original(cls, *a, **(k | robust)))
    t0 = time.time()
    data = W.DataSpec("mnist5k")
    t = W.train_teacher(data, TrainConfig(epochs=20, batch_size=128, seed=0, progress=False))
    owner = OwnerIdentity.for_experiment(0, "proto")
    iss = W.issue(
        W.loaded(t.model, t.manifest),
        owner,
        "alice",
        train=TrainConfig(epochs=epochs, batch_size=128, seed=0, progress=False),
        fingerprint_queries=n_queries,
    )
    sp, sn = iss.splits, iss.serial
    g = sn.geometry
    v = VerifierString.from_dict(iss.manifest["licence"])
    fp = Fingerprint.for_licence(owner, v, (1, 28, 28), 10, n_queries) if n_queries else None  # 0: a plain twin

    def hamming1(m: torch.nn.Module) -> dict[str, float]:
        """Accuracy with every one-bit-off key (the lock figure a fingerprint must not weaken)."""
        test = sp.test.subset(torch.arange(min(1000, len(sp.test))))
        accs = [accuracy(m, TensorData(stamp(test.x, g, k), test.y)) for k in sn.hamming_neighbours(1)]
        return {"hamming1_mean": sum(accs) / len(accs), "hamming1_max": max(accs)}

    def rates(m: torch.nn.Module) -> dict[str, float]:
        matches = (
            {}
            if fp is None
            else {"raw": match_rate(m, fp), "sn": match_rate(m, fp, lambda q: stamp(q, g, sn.as_tensor()))}
        )
        return matches | {
            "acc_sn": accuracy(m, TensorData(stamp(sp.test.x, g, sn.as_tensor()), sp.test.y)),
            "acc_raw": accuracy(m, sp.test),
        }

    student = iss.student.eval()
    out = {"tag": tag, "epochs": epochs, "nq": n_queries, "fingerprint": iss.manifest["fingerprint"]}
    out |= {"base": rates(student) | hamming1(student), "train_s": iss.log.wall_s}
    attack_and_record(out, student, sp, sn, rates, t0)


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
