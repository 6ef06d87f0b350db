"""Probe: a fingerprint read from trigger families on natural images, against a thief's fine-tuning.

Run: ``python benchmarks/fingerprint_trigger_probe.py EPOCHS DESIGN TAG ['{"families": 40}']``
(appends one JSON line to ``benchmarks/results/fingerprint_probes.jsonl``).

The shipped fingerprint asks a customer model to answer 100 fixed random images with 100 arbitrary
labels: a memorised, out-of-distribution behaviour that a thief's fine-tuning with Adam at 1e-2 erases
(0 of 20 customers traced in ``reports/tracing_mnist5k.md``). This probe tries the other classic carrier
of a black-box mark, a backdoor (Zhang et al. 2018; Adi et al. 2018): ``K`` triggers drawn from the
owner's key, and per licence one symbol per trigger; the student learns "any natural image carrying
trigger k is class c_k", a feature rather than 100 memorised points. Tracing would send ``r`` held-out
images per trigger and take each family's majority answer, so under the null each of the ``K``
families matches an innocent's symbol with probability exactly 1/classes (an exact binomial again).

Designs: ``patch`` (a random binary patch, ``size`` pixels, at the top-left corner, away from the
serial number), ``blend`` (the image mixed with a low-frequency random pattern at ``alpha``), and
``mixpair``, a mark that lives in the task's own features: for every unordered pair of classes {a, b}
the licence's symbol is a or b, and the student learns to answer an even mix of an a-image and a
b-image with it (binary symbols: an innocent matches each pair with probability 1/2).
One seed, one customer: a probe for choosing a design, not a result.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from fingerprint_probe import attack_and_record  # the sibling probe (benchmarks/ is the script's folder)

import deepserial.schemes.dsn as dsn_mod
import deepserial.workflow as W
from deepserial.data import TensorData
from deepserial.identity import OwnerIdentity
from deepserial.report import mark_start
from deepserial.serial import stamp
from deepserial.training import TrainConfig, accuracy


def triggers(design: str, k: int, shape: tuple[int, int, int], opts: dict, seed: int) -> torch.Tensor:
    """``k`` trigger patterns of ``shape`` (values in [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    if design == "patch":
        s = int(opts.get("size", 6))
        return (torch.rand(k, c, s, s, generator=g) > 0.5).float()
    coarse = torch.rand(k, c, max(2, h // 4), max(2, w // 4), generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def apply(x: torch.Tensor, fam: torch.Tensor, trig: torch.Tensor, design: str, opts: dict) -> torch.Tensor:
    """Images ``x`` carrying trigger ``fam[i]`` each."""
    x = x.clone()
    if design == "patch":
        s, o = trig.shape[-1], int(opts.get("offset", 1))
        x[:, :, o : o + s, o : o + s] = trig[fam]
        return x
    a = float(opts.get("alpha", 0.4))
    return ((1 - a) * x + a * trig[fam]).clamp(0, 1)


def main() -> None:
    torch.set_num_threads(1)
    epochs, design, tag = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    K, r, classes = int(opts.get("families", 40)), int(opts.get("per_family", 5)), 10
    rows = int(opts.get("rows", 32))
    t0 = time.time()
    data = W.DataSpec("mnist5k")
    sp = data.load()
    t = W.train_teacher(data, TrainConfig(epochs=20, batch_size=128, seed=0, progress=False))
    owner = OwnerIdentity.for_experiment(0, "proto")
    rng = np.random.default_rng(1234)
    shape = tuple(sp.owner.x.shape[1:])
    trig = triggers(design, K, shape, opts, seed=99) if design != "mixpair" else None
    code = torch.from_numpy(rng.integers(0, classes, size=K)).long()
    pool = sp.owner.x
    if design == "mixpair":
        pairs = torch.tensor([(a, b) for a in range(classes) for b in range(a + 1, classes)])
        K = len(pairs)
        code = pairs[torch.arange(K), torch.from_numpy(rng.integers(0, 2, size=K))]
        by_class = [torch.nonzero(sp.owner.y == c).flatten() for c in range(classes)]

    def mixes(x_of, fam: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        a, b = pairs[fam, 0], pairs[fam, 1]
        xa = torch.stack([x_of(int(c)) for c in a])
        xb = torch.stack([x_of(int(c)) for c in b])
        return lam.view(-1, 1, 1, 1) * xa + (1 - lam.view(-1, 1, 1, 1)) * xb

    def fp_inputs(fingerprint, serial, device, batch):
        n = min(rows, batch)
        fam = torch.randint(0, K, (n,))
        if design == "mixpair":
            pick = lambda c: pool[by_class[c][torch.randint(0, len(by_class[c]), (1,))][0]]  # noqa: E731
            q = mixes(pick, fam, 0.35 + 0.3 * torch.rand(n)).to(device)
        else:
            idx = torch.randint(0, len(pool), (n,))
            q = apply(pool[idx], fam, trig, design, opts).to(device)
        g = serial.geometry
        patterns = torch.randint(0, 2, (n, g.height, g.width), device=device).float()
        patterns[torch.rand(n, device=device) < 0.5] = serial.as_tensor().to(device)
        stamped = stamp(q, g, patterns)
        x = torch.where(torch.rand(n, 1, 1, 1, device=device) < 1 / 3, q, stamped)
        return x, code[fam].to(device)

    dsn_mod.fingerprint_inputs = fp_inputs
    iss = W.issue(
        W.loaded(t.model, t.manifest),
        owner,
        "alice",
        train=TrainConfig(epochs=epochs, batch_size=128, seed=0, progress=False),
        fingerprint_queries=1,  # switches the fingerprint rows on; their content comes from fp_inputs
    )
    sn = iss.serial
    g = sn.geometry
    # the tracer's queries: r held-out test images per family
    qfam = torch.arange(K).repeat_interleave(r)
    if design == "mixpair":
        test_by = [torch.nonzero(sp.test.y == c).flatten() for c in range(classes)]
        g7 = torch.Generator().manual_seed(7)
        draw = lambda c: sp.test.x[test_by[c][torch.randint(0, len(test_by[c]), (1,), generator=g7)][0]]  # noqa: E731
        queries = mixes(draw, qfam, torch.full((len(qfam),), 0.5))
    else:
        qi = torch.from_numpy(np.random.default_rng(7).choice(len(sp.test), size=K * r, replace=False))
        queries = apply(sp.test.x[qi], qfam, trig, design, opts)

    def rates(m: torch.nn.Module) -> dict[str, float]:
        m.eval()
        res = {}
        for name, x in (("raw", queries), ("sn", stamp(queries, g, sn.as_tensor()))):
            with torch.no_grad():
                pred = m(x).argmax(1)
            res[name] = float((pred == code[qfam]).float().mean())
            votes = torch.zeros(K, classes).index_add_(0, qfam, F.one_hot(pred, classes).float())
            res[name + "_family"] = float((votes.argmax(1) == code).float().mean())
        res["acc_sn"] = accuracy(m, TensorData(stamp(sp.test.x, g, sn.as_tensor()), sp.test.y))
        res["acc_raw"] = accuracy(m, sp.test)
        return res

    student = iss.student.eval()
    out = {"tag": tag, "epochs": epochs, "design": design, "opts": opts, "families": K, "per_family": r}
    out |= {"base": rates(student), "train_s": iss.log.wall_s}
    print(json.dumps(out), flush=True)
    attack_and_record(out, student, sp, sn, rates, t0)


if __name__ == "__main__":
    mark_start()
    main()
