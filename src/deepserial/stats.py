"""The statistics every verification uses: binomial tails, thresholds for a false-positive rate,
bit error rates, and a sequential test that stops querying once the decision is certain.

A verdict is a hypothesis test. The null hypothesis is always "this suspect does not carry the key":
under it, each key query is answered "as the key says" with at most a chance probability ``p0``
(1/C for a random label among C, 0.5 for a bit). The p-value is the probability of seeing at least
the observed number of matches under that null; the threshold is the smallest match count whose
p-value is at most the requested false-positive rate (DeepSigns Eq. 5 is this with confidence
1 - fpr).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

from deepserial.errors import ConfigError


def check_fpr(fpr: float) -> float:
    """A false-positive rate must lie in (0, 1)."""
    if not (0.0 < fpr < 1.0):
        raise ConfigError(f"false-positive rate must be between 0 and 1 (exclusive), got {fpr}")
    return float(fpr)


def binom_tail(k: int, n: int, p0: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p0): the p-value of ``k`` matches out of ``n``."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(_st.binom.sf(k - 1, n, p0))


def binom_threshold(n: int, p0: float, fpr: float) -> int:
    """The smallest match count k with P[X >= k] <= fpr under Binomial(n, p0); ``n + 1`` when even
    n matches out of n are not enough (too few queries for that false-positive rate)."""
    check_fpr(fpr)
    k = int(_st.binom.isf(fpr, n, p0)) + 1  # isf gives the largest k with sf(k) > fpr, roughly
    while k > 0 and binom_tail(k - 1, n, p0) <= fpr:
        k -= 1
    while k <= n and binom_tail(k, n, p0) > fpr:
        k += 1
    return k


def min_queries(p0: float, fpr: float) -> int:
    """How many queries, all matching, it takes at least to reach ``fpr`` with chance ``p0``."""
    check_fpr(fpr)
    if p0 <= 0.0:
        return 1
    return max(1, math.ceil(math.log(fpr) / math.log(p0)))


def bit_error_rate(decoded: np.ndarray, bits: np.ndarray) -> float:
    """Fraction of bits that differ (DeepSigns' BER, Uchida's BER)."""
    decoded = np.asarray(decoded).astype(bool).ravel()
    bits = np.asarray(bits).astype(bool).ravel()
    if decoded.shape != bits.shape:
        raise ValueError(f"bit strings differ in length: {decoded.size} vs {bits.size}")
    return float(np.mean(decoded != bits)) if bits.size else 0.0


def ber_p_value(errors: int, nbits: int) -> float:
    """P-value of decoding at most ``errors`` wrong bits out of ``nbits`` when every bit is a coin
    flip (a model that never learned this signature)."""
    return float(_st.binom.cdf(errors, nbits, 0.5))


class SequentialBinomial:
    """Query-by-query binomial test that stops as soon as the decision cannot change.

    After each answered query it knows ``matches`` out of ``asked``; with ``budget`` queries in all,
    it stops with "carries the key" once ``matches`` reaches the fixed-sample threshold for the whole
    budget, and with "does not" once even all remaining queries matching could not reach it. The
    decision is exactly that of the fixed-size test on ``budget`` queries, so its false-positive rate
    is the same; only the query count shrinks.
    """

    def __init__(self, budget: int, p0: float, fpr: float) -> None:
        if budget < 1:
            raise ConfigError(f"query budget must be >= 1, got {budget}")
        self.budget, self.p0, self.fpr = budget, p0, check_fpr(fpr)
        self.threshold = binom_threshold(budget, p0, fpr)
        self.asked = 0
        self.matches = 0

    def update(self, matched: np.ndarray | list[bool]) -> None:
        """Record the outcome of a batch of queries."""
        m = np.asarray(matched, dtype=bool).ravel()
        self.asked += int(m.size)
        self.matches += int(m.sum())

    @property
    def done(self) -> bool:
        return self.decided is not None or self.asked >= self.budget

    @property
    def decided(self) -> bool | None:
        """True / False once certain, None while it still depends on future answers."""
        if self.matches >= self.threshold:
            return True
        if self.matches + (self.budget - self.asked) < self.threshold:
            return False
        return None

    def p_value(self) -> float:
        """P-value of the matches seen so far, as if these were all the queries."""
        return binom_tail(self.matches, self.asked, self.p0) if self.asked else 1.0
