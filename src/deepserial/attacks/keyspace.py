"""How large a DSN key space really is: which keys near the true one unlock the model.

Tang, Du, Hu. "Deep Serial Number" (arXiv:2011.08960) argue security from the size of the key space,
2^n for an n-bit serial number. That holds only if the true key is the only one that unlocks; an
evaluation of a 5x7 customer model found several one-bit neighbours at 85-96%, which both shrinks a
blind guesser's cost and gives gradient and hill-climbing attackers a wide basin to land in
(:mod:`deepserial.attacks.serial_search`). :func:`keyspace_measures` measures this on images the
evaluator holds (test images):

- every Hamming-1 and Hamming-2 neighbour, a sample of Hamming-3 neighbours (all of them when there
  are no more than asked), random wrong keys, each on a fixed image subset;
- keys that reach ``unlock_threshold`` on their screening subset are confirmed on the largest subset,
  so a lucky small sample does not count as an unlock;
- the bits that unlock alone (Hamming-1 neighbours at or above the threshold), max and mean per
  distance, and the expected cost of blind guessing ``2^n / U``.

Keys are scored many at a time: a fixed image subset is stamped with a whole chunk of keys and goes
through one forward (:class:`~deepserial.attacks.serial_search.KeyScorer`).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import numpy as np
import torch
from scipy import stats as sps
from torch import nn

from deepserial.attacks.serial_search import KeyScorer
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.serial import SerialNumber, stamp
from deepserial.training import predict_logits

#: How :func:`keyspace_measures` draws its image subsets (recorded, so a resumed run does not mix orders).
SUBSETS = "class-stratified"


def balanced_order(labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A seeded permutation of the indices whose prefixes hold each class close to its share of the whole
    (within about one image when no class dominates; a class of most of the data can lag by up to one
    image per other class in short prefixes).

    Why: a locked model often gives one constant answer to wrong keys, and its accuracy on a subset is
    then the share of that class in the subset (7 of 50 images read as 14% on a model that scores 10.35%
    on the whole test set). Stratified prefixes make a small subset read what the whole set would."""
    y = labels.cpu().numpy()
    rank = np.empty(len(y), dtype=np.float64)  # position within its class, jittered to break ties randomly
    for c in np.unique(y):
        g = rng.permutation(np.flatnonzero(y == c))
        rank[g] = np.arange(len(g)) / len(g) + rng.random(len(g)) * 1e-9
    return torch.from_numpy(np.argsort(rank, kind="stable"))


def _flip(serial: SerialNumber, combos: np.ndarray) -> torch.Tensor:
    """The key with the bits of each row of ``combos`` (K, d) flipped: (K, h, w)."""
    flat = np.repeat(serial.bits.reshape(1, -1), len(combos), axis=0)
    rows = np.arange(len(combos))[:, None]
    flat[rows, combos] ^= 1
    return torch.from_numpy(flat.astype(np.float32)).view(len(combos), *serial.bits.shape)


def _sample_combos(n: int, d: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """``k`` distinct d-subsets of range(n) (all of them, sorted, when there are no more than k);
    the flag says whether the set is exhaustive."""
    total = math.comb(n, d)
    if total <= k:
        return np.array(list(itertools.combinations(range(n), d)), dtype=np.int64).reshape(total, d), True
    seen: set[tuple[int, ...]] = set()
    while len(seen) < k:
        for row in rng.random((k, n)).argsort(1)[:, :d]:
            seen.add(tuple(sorted(int(v) for v in row)))
            if len(seen) == k:
                break
    return np.array(sorted(seen), dtype=np.int64), False


def keyspace_measures(
    model: nn.Module,
    serial: SerialNumber,
    data: TensorData,
    *,
    eval_images: int = 500,
    hamming2_images: int = 200,
    hamming3_samples: int = 2000,
    hamming3_images: int = 100,
    random_keys: int = 10_000,
    random_images: int = 50,
    unlock_threshold: float = 25.0,
    seed: int = 0,
    chunk_samples: int = 8192,
) -> dict[str, Any]:
    """Accuracy of the keys around a DSN customer model's true key, and what it costs to guess one.

    Every subset is a prefix of one seeded, class-stratified permutation of ``data`` (so a key screened on
    a small subset is confirmed on a larger one holding it, and a constant answer reads as on the whole
    set: :func:`balanced_order`). Hamming-1 neighbours are scored on ``eval_images``;
    Hamming-2 on ``hamming2_images``; ``hamming3_samples`` Hamming-3 neighbours on ``hamming3_images``;
    ``random_keys`` random wrong keys on ``random_images``. A key at or above ``unlock_threshold`` (%)
    on its subset is re-scored on ``eval_images``, and *unlocks* when it stays there.

    How U is counted: ``U_exact`` = the true key (when it unlocks) + the confirmed unlocking keys at
    distances 1 and 2 (every key there is scored) and at distance 3 when all of them were scored;
    ``U_estimate`` adds, for a sampled distance 3, the unlocking share of the sample times C(n, 3);
    ``U_random_estimate`` is the unlocking share of the random keys times 2^n (what a model that
    barely locks at all shows: then keys far from the true one unlock too). ``U`` is the larger, and
    ``blind_guess_cost = 2^n / U`` the expected number of uniform random guesses until one unlocks
    (geometric). Near-key counts alone ignore keys further than 3 bits, so ``2^n / U_estimate``
    (``blind_guess_cost_near_keys``) is an upper bound as far as those are concerned; with no random
    key unlocking, ``blind_guess_cost_random_lower95`` = 1 / (one-sided 95% upper bound of their share)
    is what the random sample guarantees from below.

    Args:
        model: the customer model.
        serial: the true serial number (this is an evaluation, not an attack).
        data: labelled evaluation images (N, C, H, W), e.g. the test set.
        eval_images, hamming2_images, hamming3_images, random_images: subset sizes (capped at N).
        hamming3_samples: Hamming-3 neighbours scored (all when C(n, 3) is not larger).
        random_keys: random wrong keys scored.
        unlock_threshold: accuracy (%) at which a key unlocks.
        seed: seeds the subsets and the sampled keys.
        chunk_samples: most stamped images per forward.

    Returns: ``nbits``, ``valid_acc``, ``raw_acc``, per distance ``hamming1``/``hamming2``/``hamming3``
    and ``random`` (``keys``, ``total``, ``exhaustive``, ``images``, ``mean``, ``max``, ``unlocking``,
    ``unlock_fraction``, ``unlock_estimate``, ``confirmed``), ``hamming1_each``, ``unlocking_bits``
    ([row, col, accuracy] of each bit that unlocks alone), ``U_exact``, ``U_estimate``,
    ``U_random_estimate``, ``U``, ``blind_guess_cost`` (and ``_log2``, ``_near_keys``, ``_exact_count``,
    ``_random_lower95``), ``forward_samples``, ``wall_s``. Accuracies in %.

    Example::

        ks = keyspace_measures(customer, serial, splits.test, random_keys=10_000)
        ks["hamming1"]["unlocking"], ks["blind_guess_cost_log2"]
    """
    t0 = time.perf_counter()
    if len(data) < 1:
        raise ConfigError("key-space measures need labelled evaluation images")
    g = serial.geometry
    n = g.nbits
    rng = np.random.default_rng(seed)
    order = balanced_order(data.y, rng)
    n_eval = min(eval_images, len(data))

    scorers: list[KeyScorer] = []

    def scorer(k: int) -> KeyScorer:
        idx = order[: min(k, n_eval)]
        scorers.append(KeyScorer(model, data.x[idx], data.y[idx], g, chunk_samples))
        return scorers[-1]

    full = scorer(n_eval)
    was = model.training
    model.eval()
    try:
        valid = 100.0 * float(full(serial.as_tensor()[None])[1][0])
        with torch.no_grad():
            xe, ye = data.x[order[:n_eval]], data.y[order[:n_eval]]
            dev = full.device
            raw = 100.0 * float((model(xe.to(dev)).argmax(1).cpu() == ye).float().mean())
        out: dict[str, Any] = {
            "nbits": n,
            "geometry": g.to_dict(),
            "valid_acc": valid,
            "raw_acc": raw,
            "subsets": SUBSETS,
        }

        def measure(keys: torch.Tensor, images: int, total: int, exhaustive: bool) -> tuple[dict[str, Any], np.ndarray]:
            sc = full if images >= n_eval else scorer(images)
            acc = 100.0 * sc(keys)[1]
            final = acc.copy()
            high = np.flatnonzero(acc >= unlock_threshold)
            if len(high) and sc is not full:
                final[high] = 100.0 * full(keys[torch.from_numpy(high)])[1]
            unlocking = int((final >= unlock_threshold).sum())
            frac = unlocking / max(1, len(keys))
            return {
                "keys": len(keys),
                "total": total,
                "exhaustive": exhaustive,
                "images": min(images, n_eval),
                "mean": float(acc.mean()) if len(acc) else None,
                "max": float(final.max()) if len(final) else None,
                "confirmed": int(len(high)) if sc is not full else 0,
                "unlocking": unlocking,
                "unlock_fraction": frac,
                "unlock_estimate": unlocking if exhaustive else frac * total,
            }, final

        h1, acc1 = measure(serial.hamming_neighbours(1), n_eval, n, True)
        out["hamming1"] = h1
        out["hamming1_each"] = [round(float(a), 2) for a in acc1]
        w = g.width
        out["unlocking_bits"] = [
            [j // w, j % w, round(float(a), 2)] for j, a in enumerate(acc1) if a >= unlock_threshold
        ]
        if n >= 2:
            out["hamming2"], _ = measure(serial.hamming_neighbours(2), hamming2_images, math.comb(n, 2), True)
        if n >= 3:
            combos, exhaustive = _sample_combos(n, 3, hamming3_samples, rng)
            out["hamming3"], _ = measure(_flip(serial, combos), hamming3_images, math.comb(n, 3), exhaustive)
        wrong = serial.random_wrong(random_keys, rng)
        rand, _ = measure(wrong, random_images, 2**n - 1, len(wrong) == 2**n - 1)
        k, m = rand["unlocking"], rand["keys"]
        rand["unlock_fraction_upper95"] = float(sps.beta.ppf(0.95, k + 1, m - k)) if k < m else 1.0
        rand["min_hamming"] = int((wrong != serial.as_tensor()).flatten(1).sum(1).min()) if m else None
        out["random"] = rand
    finally:
        model.train(was)
    near = [out[f"hamming{d}"] for d in (1, 2, 3) if f"hamming{d}" in out]
    u_exact = int(valid >= unlock_threshold) + sum(r["unlocking"] for r in near if r["exhaustive"])
    u_est = u_exact + sum(r["unlock_estimate"] for r in near if not r["exhaustive"])
    u_random = out["random"]["unlock_fraction"] * 2.0**n  # unbiased for all keys, coarse when rare
    u = max(u_est, u_random)
    upper = out["random"]["unlock_fraction_upper95"]
    out |= {
        "unlock_threshold": unlock_threshold,
        "U_exact": u_exact,
        "U_estimate": float(u_est),
        "U_random_estimate": float(u_random),
        "U": float(u),
        "U_counted_as": "U_exact: true key (if it unlocks) + confirmed unlocking keys at Hamming distance 1-2 "
        "(all scored) and 3 (when all scored); U_estimate adds a sampled distance 3 as its unlocking share x "
        "C(n,3); U_random_estimate = unlocking share of the random keys x 2^n; U = the larger of the two",
        "blind_guess_cost": float(2.0**n / u) if u > 0 else None,
        "blind_guess_cost_log2": float(n - math.log2(u)) if u > 0 else None,
        "blind_guess_cost_near_keys": float(2.0**n / u_est) if u_est > 0 else None,
        "blind_guess_cost_exact_count": float(2.0**n / u_exact) if u_exact > 0 else None,
        "blind_guess_cost_random_lower95": float(1.0 / upper) if upper > 0 else None,
        "forward_samples": n_eval + sum(s.forward_samples for s in scorers),
        "wall_s": time.perf_counter() - t0,
    }
    return out


def output_readout(
    model: nn.Module,
    serial: SerialNumber,
    keys: torch.Tensor,
    attacker: TensorData,
    test: TensorData,
    *,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """What a thief holding the model reads from its outputs under wrong keys, beyond the arg-max.

    A locked model pushed towards uniform outputs can keep a small residual that favours the true
    class: top-1 accuracy then stays high although the outputs look flat (measured: maximum probability
    0.12 with 46% top-1 under one border bit's flip). A thief who has the file reads the whole output,
    so for each key this reports the top-1 and arg-min accuracy, the mean maximum probability and the
    test accuracy of a logistic-regression probe fitted on the log-probabilities of the thief's own
    labelled images stamped with that key, standardised first (a residual of 1e-3 is invisible to
    a regularised probe on raw log-probabilities).

    Args:
        model: the customer model.
        serial: gives the geometry the keys are stamped with.
        keys: wrong keys (K, h, w) to read out, e.g. the worst Hamming-1 neighbours.
        attacker: the thief's labelled images (the probe's training data).
        test: labelled evaluation images.
        seed: seeds the probe's solver.

    Returns: one dict per key: ``top1``, ``argmin``, ``probe`` (accuracies in %) and ``max_prob``.
    """
    # scikit-learn is loaded only here: importing it costs about a second the other measures do not need
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(attacker) < 2 or len(torch.unique(attacker.y)) < 2:
        raise ConfigError("an output readout needs labelled attacker images of at least two classes")
    g = serial.geometry
    out = []
    for key in keys:
        own = torch.log_softmax(predict_logits(model, stamp(attacker.x, g, key)), 1)
        lp = torch.log_softmax(predict_logits(model, stamp(test.x, g, key)), 1)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)).fit(
            own.numpy(), attacker.y.numpy()
        )
        guess = torch.from_numpy(probe.predict(lp.numpy()))
        out.append(
            {
                "top1": 100.0 * float((lp.argmax(1) == test.y).float().mean()),
                "argmin": 100.0 * float((lp.argmin(1) == test.y).float().mean()),
                "probe": 100.0 * float((guess == test.y).float().mean()),
                "max_prob": float(lp.exp().max(1).values.mean()),
            }
        )
    return out
