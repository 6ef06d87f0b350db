"""Seeded, stratified division of a data set into owner, attacker and test parts.

Ownership experiments need the attacker's data to be disjoint from the owner's (otherwise a fine-tuning
attack is unrealistically strong) and every part to contain every class (otherwise accuracy on small data
sets is meaningless). The split is a pure function of the labels and the seed, so a run can be reproduced
from the seed recorded in :class:`Splits`.
"""

from __future__ import annotations

import math

import numpy as np

from deepserial.data.containers import DatasetBundle, Splits
from deepserial.errors import DatasetError


def _check_fraction(name: str, value: float) -> float:
    """``value`` as a float in ``[0, 1)``, or a one-line DatasetError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{name} must be a number in [0, 1), got {value!r}; e.g. {name}=0.2")
    if not 0.0 <= value < 1.0:
        raise DatasetError(f"{name} must lie in [0, 1), got {value}; e.g. {name}=0.2")
    return float(value)


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``range(len(labels))`` whose every prefix holds each class in proportion.

    Each class is shuffled, its ``k``-th of ``n`` members gets the position ``(k + 0.5) / n`` and samples
    are ordered by position (random tie-break). Cutting the order anywhere therefore gives each class a
    count within one of its proportional share, and a class of ``n`` members reaches every part whose
    fraction exceeds about ``1 / n``, which keeps all classes in every part of even tiny data sets.
    """
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    by_class = np.lexsort((rng.random(n), inverse))  # grouped by class, shuffled within each class
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - np.repeat(starts, counts)
    position = (rank + 0.5) / counts[inverse]
    return np.lexsort((rng.random(n), position))


def split(bundle: DatasetBundle, seed: int, *, test_fraction: float = 0.2, attacker_fraction: float = 0.4) -> Splits:
    """Divide ``bundle`` into disjoint owner, attacker and test parts, stratified by class.

    With an official test set, ``test`` is ``bundle.test`` and the training part is divided into
    ``round(attacker_fraction * N)`` attacker samples and the rest for the owner (``test_fraction`` is
    ignored). Without one, ``round(test_fraction * N)`` samples become the test part first, then
    ``round(attacker_fraction * remaining)`` the attacker's, the rest the owner's. The same ``seed`` always
    gives the same parts; each part keeps the original sample order.
    """
    test_fraction = _check_fraction("test_fraction", test_fraction)
    attacker_fraction = _check_fraction("attacker_fraction", attacker_fraction)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}; e.g. seed=0")
    seed = int(seed)

    labels = bundle.train.y.numpy()
    n = labels.shape[0]
    order = stratified_order(labels, seed)
    n_test = 0 if bundle.test is not None else round(test_fraction * n)
    n_attacker = round(attacker_fraction * (n - n_test))
    if bundle.test is None and n_test == 0:
        raise DatasetError(
            f"test_fraction={test_fraction} leaves no test samples from the {n} of {bundle.name!r} "
            "(which has no official test set); raise test_fraction"
        )
    if n - n_test - n_attacker < 1:
        raise DatasetError(
            f"{bundle.name!r} has {n} training samples, too few for test_fraction={test_fraction} and "
            f"attacker_fraction={attacker_fraction} to leave the owner any; "
            "use more data or smaller fractions"
        )
    test_idx = np.sort(order[:n_test])
    attacker_idx = np.sort(order[n_test : n_test + n_attacker])
    owner_idx = np.sort(order[n_test + n_attacker :])
    test = bundle.test if bundle.test is not None else bundle.train.subset(test_idx)
    return Splits(
        owner=bundle.train.subset(owner_idx),
        attacker=bundle.train.subset(attacker_idx),
        test=test,
        seed=seed,
    )
