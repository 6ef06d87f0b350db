"""Per-customer black-box fingerprints: which issued licence does a leaked model come from?

A DSN customer model is locked by its serial number, but the serial number cannot name the customer
through a thief's prediction API: a server that stamps the key itself overwrites any stamp the tracer
sends, and stamping every candidate's serial number on queries hands the suspect each key tried. So
every customer model also carries a *fingerprint*, learnt while it is distilled (one more loss in the
DSN student's training loop, :func:`deepserial.schemes.dsn.make_student_loss`):

- a **query set** of ``m`` images (default 100) drawn from the owner's private key: the same for every
  customer of that owner and input shape, so the queries say nothing about which customer is
  suspected, and nothing about any serial number (they carry none);
- a **codeword** per licence: ``m`` labels, uniform over the classes, drawn from the owner's private
  key and the licence's verifier string; never stored, re-derived when tracing;
- the student learns to answer query ``j`` with symbol ``j`` of its codeword whether the query arrives
  raw, stamped with the customer's serial number or stamped with any other pattern: a server that
  stamps its key itself, one that passes inputs through and one that stamps something else all answer
  the fingerprint alike.

Decoding (:func:`decode`). For licence ``L`` let ``s_L`` be the weighted count of the queries the
suspect answers with ``L``'s symbol, each weighted by how rarely the suspect gives that answer
(:func:`answer_weights`: an attacked model piles answers onto a few classes, and a match there says
little). Under the null "the suspect does not hold ``L``'s model", ``L``'s codeword is independent of
everything the suspect holds and of the queries (separate derivations from a secret the suspect
lacks), so each symbol matches with probability exactly ``1/classes`` *whatever* the suspect answers,
independently of the weights: the tail of ``s_L`` is computed exactly. Naming every licence whose
Bonferroni-adjusted p-value (times the number of licences) is at most ``fpr`` keeps the chance of
naming *any* innocent customer at most ``fpr``, for any server, lying or not: this is what makes
tracing frame-proof.

The code. Random q-ary codewords rather than a Tardos code: Tardos codes are built for binary symbols
under the marking assumption and large coalitions (length of order c^2 log(n / eps)); here a symbol is
one of ``classes`` labels, and a coalition of ``c`` customers who average weights or outputs answers
most queries with one of its members' symbols, so some colluder keeps about ``m / c`` matches against
``m / classes`` expected for an innocent (about 33 against 10 for m = 100, c = 3, ten classes):
enough for p-values far below 1e-6 with no code construction at all, and each licence's test stays
exact. A coalition much larger than that, or one that answers the queries at random, is out of reach.

What the queries reveal. The first server traced sees the query set and can learn to recognise it
(then answer it at random, so that later traces of the *same* owner find nothing); it still learns
nothing about any codeword, so it can evade but never frame. The query images carry no serial number
and do not depend on the ledger, which ``tests/test_tracing.py`` checks byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deepserial import stats
from deepserial.errors import ConfigError
from deepserial.identity import OwnerIdentity, VerifierString, derive
from deepserial.training import predict_logits

#: Queries in the shared set; each costs one query of a trace.
DEFAULT_QUERIES = 100
#: Version of the derivation (bumped if the queries or codewords ever change).
VERSION = 1
_QUERY_TAG = f"fingerprint/v{VERSION}/queries"
_CODE_TAG = f"fingerprint/v{VERSION}/codeword"


def _rng(material: bytes, purpose: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int.from_bytes(derive(material, purpose, 32), "big")))


def query_set(identity: OwnerIdentity, input_shape: tuple[int, int, int], n: int = DEFAULT_QUERIES) -> torch.Tensor:
    """The owner's ``n`` fingerprint queries for inputs of ``input_shape`` (C, H, W), values in [0, 1].

    Low-frequency random images (a coarse random grid, upsampled): far from any natural data set, so a
    thief's fine-tuning on task data moves their answers little, and varied enough that a network can
    tell 100 of them apart."""
    if n < 1:
        raise ConfigError(f"the fingerprint needs at least one query, got {n}")
    c, h, w = (int(v) for v in input_shape)
    rng = _rng(identity.secret(_QUERY_TAG) + repr((c, h, w)).encode(), _QUERY_TAG)  # n queries: a prefix of more
    coarse = torch.from_numpy(rng.random((n, c, max(2, h // 4), max(2, w // 4)), dtype=np.float32))
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def codeword(
    identity: OwnerIdentity, verifier: VerifierString, num_classes: int, n: int = DEFAULT_QUERIES
) -> torch.Tensor:
    """The licence's ``n`` fingerprint labels, uniform over ``num_classes``: re-derivable only with the
    owner's private key, never stored."""
    if num_classes < 2:
        raise ConfigError(f"a fingerprint needs at least two classes, got {num_classes}")
    rng = _rng(identity.secret(_CODE_TAG) + verifier.to_bytes(), _CODE_TAG)
    return torch.from_numpy(rng.integers(0, num_classes, size=n)).long()


@dataclass(frozen=True)
class Fingerprint:
    """What a customer model learns to answer: the shared queries and this licence's codeword."""

    queries: torch.Tensor
    codeword: torch.Tensor
    weight: float = 1.0
    #: simulated fine-tuning by a thief who holds the key: steps (0: off), SGD rate, every how many batches
    ft_steps: int = 0
    ft_lr: float = 0.05
    ft_every: int = 2
    #: share of the stamped queries that carry a random pattern rather than the customer's serial number
    #: (a server that stamps something else still answers the codeword); research, docs/decisions.md
    random_stamps: float = 0.5

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.codeword) or len(self.queries) == 0:
            raise ConfigError("a fingerprint needs one codeword symbol per query")
        if not self.weight > 0:
            raise ConfigError(f"the fingerprint weight must be > 0, got {self.weight}")
        if not 0.0 <= self.random_stamps <= 1.0:
            raise ConfigError(f"random_stamps must lie in [0, 1], got {self.random_stamps}")

    @classmethod
    def for_licence(
        cls,
        identity: OwnerIdentity,
        verifier: VerifierString,
        input_shape: tuple[int, int, int],
        num_classes: int,
        n: int = DEFAULT_QUERIES,
        weight: float = 1.0,
        **robust: Any,
    ) -> Fingerprint:
        return cls(query_set(identity, input_shape, n), codeword(identity, verifier, num_classes, n), weight, **robust)

    def describe(self) -> dict[str, Any]:
        """What a model manifest may say about the fingerprint (nothing secret)."""
        return {
            "version": VERSION,
            "queries": len(self.queries),
            "weight": self.weight,
            "ft_steps": self.ft_steps,
            "ft_lr": self.ft_lr,
            "ft_every": self.ft_every,
            "random_stamps": self.random_stamps,
        }


def match_rate(model: torch.nn.Module, fp: Fingerprint, stamp_fn: Any = None) -> float:
    """Share of the queries ``model`` answers with the codeword (after ``stamp_fn`` on the queries, if given)."""
    was = model.training
    x = fp.queries if stamp_fn is None else stamp_fn(fp.queries)
    pred = predict_logits(model, x).argmax(1)  # on the model's device, answers on the CPU
    model.train(was)
    return float((pred == fp.codeword).float().mean())


#: Resolution of the decoder's per-query weights: a weight is a whole number of 1/WEIGHT_LEVELS, 0 to 1.
WEIGHT_LEVELS = 16


@dataclass(frozen=True)
class Match:
    """One licence's score against a suspect's answers."""

    matches: int
    queries: int
    p_value: float
    p_adjusted: float
    named: bool
    #: the weighted match count the p-value is computed from (see :func:`answer_weights`)
    score: int = 0


def answer_weights(answers: torch.Tensor, num_classes: int) -> np.ndarray:
    """How much a match on each query counts: ``min(1, b / f)`` with ``b = max(1/C, 1/m)`` and ``f`` the
    share of the suspect's ``m`` answers that are that query's answer, rounded to the nearest sixteenth
    (:data:`WEIGHT_LEVELS`; ties to even) and returned in sixteenths (integers 0..16).

    Why. A thief's fine-tuning, or two colluders' averaged weights, pull many fingerprint answers onto
    one or two classes the attacked model now prefers for these images. A match on such an answer is
    weak evidence (any codeword holding that class there matches), a match on an answer the suspect
    rarely gives is strong: for a model that kept a share ``r`` of its fingerprint, the likelihood
    ratio of a match at an answer of share ``f`` falls off as ``1/f`` once ``f`` exceeds chance, so
    these are the locally most powerful weights, capped at chance (``b`` is ``1/m`` rather than ``1/C``
    when there are more classes than answers, so a once-given answer still weighs 1). The weights depend
    on the answers alone, never on any codeword, so the test stays exact (:func:`decode`)."""
    a = answers.long().cpu().numpy()
    share = np.bincount(a)[a] / len(a)
    base = max(1.0 / num_classes, 1.0 / len(a))
    return np.rint(WEIGHT_LEVELS * np.minimum(1.0, base / share)).astype(np.int64)


def decode(answers: torch.Tensor, codewords: list[torch.Tensor], num_classes: int, fpr: float) -> list[Match]:
    """Score each codeword against ``answers`` (the suspect's labels on the query set); a licence is
    named when its p-value times ``len(codewords)`` is at most ``fpr`` (family-wise over licences).

    The score is the weighted match count ``sum_j w_j [a_j = c_j]`` with :func:`answer_weights`. Under
    the null (the suspect does not hold this licence's model) the codeword's symbols are uniform and
    independent of the answers and so of the weights: each match indicator is Bernoulli(1/C),
    independently, and the p-value is the exact tail of that weighted sum
    (:func:`deepserial.stats.weighted_bernoulli_tails`), whatever the suspect answered."""
    stats.check_fpr(fpr)
    if not codewords:
        raise ConfigError("no codeword to decode against")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise ConfigError(f"a fingerprint needs an integer number of classes of at least two, got {num_classes!r}")
    if not isinstance(answers, torch.Tensor) or answers.ndim != 1 or len(answers) == 0:
        raise ConfigError("answers must be a non-empty 1-D tensor of class indices")
    if answers.dtype == torch.bool or answers.is_floating_point() or answers.is_complex():
        raise ConfigError(f"answers must be integer class indices, got {answers.dtype}")
    answers = answers.cpu().long()
    m = len(answers)
    if int(answers.min()) < 0 or int(answers.max()) >= num_classes:
        raise ConfigError(f"answers must be class indices below {num_classes}")
    for cw in codewords:
        if len(cw) != m:
            raise ConfigError(f"codeword of {len(cw)} symbols against {m} answers")
    w = answer_weights(answers, int(num_classes))
    tails = stats.weighted_bernoulli_tails(w, 1.0 / num_classes)  # O(16 m^2): 0.06 s at m = 3000
    out = []
    for cw in codewords:
        hit = (answers == cw.cpu().long()).numpy()
        score = int(w[hit].sum())
        p = float(min(1.0, tails[score]))
        adj = min(1.0, p * len(codewords))
        out.append(Match(int(hit.sum()), m, p, adj, adj <= fpr, score))
    return out
