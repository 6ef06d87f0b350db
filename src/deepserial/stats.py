"""The statistics every verification uses: binomial tails, thresholds for a false-positive rate,
bit error rates, and a sequential test that stops querying once the decision is certain.

A verdict is a hypothesis test. The null hypothesis is always "this suspect does not carry the key":
under it, each key query is answered "as the key says" with at most a chance probability ``p0``
(1/C for a random label among C, 0.5 for a bit). The p-value is the probability of seeing at least
the observed number of matches under that null; the threshold is the smallest match count whose
p-value is at most the requested false-positive rate (DeepSigns Eq. 5 is this with confidence
1 - fpr). Every statistic is written out in docs/specification.md, section 7.
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


def weighted_bernoulli_tails(weights: np.ndarray, p0: float) -> np.ndarray:
    """``tails[t] = P[sum_j w_j B_j >= t]`` for independent ``B_j ~ Bernoulli(p0)`` and non-negative
    integer weights ``w_j`` (``t`` from 0 to ``sum w``): the exact null distribution of a weighted match
    count, by convolution. Only sums of positive terms, so tails keep their relative precision down to
    about 1e-300 (below that they underflow to 0)."""
    w = np.asarray(weights, dtype=np.int64)
    if w.ndim != 1 or (w < 0).any():
        raise ConfigError("weights must be a 1-D array of non-negative integers")
    if not 0.0 < p0 < 1.0:
        raise ConfigError(f"chance rate must be between 0 and 1 (exclusive), got {p0}")
    dist = np.zeros(int(w.sum()) + 1)
    dist[0] = 1.0
    top = 0
    for wj in w[w > 0]:
        new = dist * (1.0 - p0)
        new[wj : top + wj + 1] += dist[: top + 1] * p0
        dist, top = new, top + int(wj)
    return np.minimum(np.cumsum(dist[::-1])[::-1], 1.0)


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
    if p0 >= 1.0:
        raise ConfigError("a chance rate of 1 can never be beaten: no number of queries reaches any FPR")
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


def ber_threshold(nbits: int, fpr: float) -> int:
    """The largest number of bit errors out of ``nbits`` whose :func:`ber_p_value` is at most ``fpr``
    (DeepSigns' and Uchida's decision rule: "carries the key" when errors <= this); -1 when even an
    error-free decoding is not significant (too few bits for that false-positive rate)."""
    return nbits - binom_threshold(nbits, 0.5, fpr)


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


def binom_upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on a success rate: the largest ``p`` still consistent,
    at ``confidence``, with ``k`` successes out of ``n`` (P[Bin(n, p) <= k] >= 1 - confidence for every
    smaller p). 1.0 when ``k == n`` or ``n == 0``: nothing bounds the rate then."""
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    return _upper(k, n, 1.0 - confidence)


def _upper(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson upper bound at confidence ``1 - alpha``, exact for tiny ``alpha``."""
    if n <= 0 or k >= n:
        return 1.0
    return float(_st.beta.isf(alpha, k + 1, n - k))


def controlled_level_rejects(matches: int, asked: int, control_hits: int, control_queries: int, level: float) -> bool:
    """The two-part test of :func:`controlled_p_value` at one level: bound the chance rate from the
    controls at confidence ``1 - level/2``, then require a binomial tail of at most ``level/2``."""
    p0 = _upper(control_hits, control_queries, level / 2)
    return binom_tail(matches, asked, p0) <= level / 2


def controlled_p_value(matches: int, asked: int, control_hits: int, control_queries: int) -> float:
    """P-value of ``matches`` out of ``asked`` key queries when the chance rate ``p0`` is unknown and
    measured on ``control_hits`` out of ``control_queries`` control queries.

    Null hypothesis: every key query matches independently with a probability at most ``p0``, the
    (unknown) rate at which the suspect gives the key's label to control inputs, that is inputs made
    exactly like the key samples from fresh secrets. A suspect that never saw this key cannot tell
    our secret from a fresh one, so its key queries behave like controls. The test at level ``a``
    takes the Clopper-Pearson upper bound of ``p0`` at confidence ``1 - a/2`` and rejects when the
    binomial tail at that bound is at most ``a/2``; by the union bound its false-positive rate is at
    most ``a``. The test rejects at every level above some ``a*`` (a larger level lowers the bound
    and raises the allowed tail), and ``a*`` is the p-value returned, found by bisection in log scale.
    """
    if asked <= 0 or matches <= 0:
        return 1.0
    if not controlled_level_rejects(matches, asked, control_hits, control_queries, 1.0 - 1e-12):
        return 1.0
    lo, hi = -300.0, 0.0  # log10 of the level: rejects at 10**hi, search the smallest such
    if controlled_level_rejects(matches, asked, control_hits, control_queries, 10.0**lo):
        return 10.0**lo
    for _ in range(60):
        mid = (lo + hi) / 2
        if controlled_level_rejects(matches, asked, control_hits, control_queries, 10.0**mid):
            hi = mid
        else:
            lo = mid
    return float(min(1.0, 10.0**hi))
