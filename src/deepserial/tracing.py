"""Traitor tracing: which issued licence does a leaked model come from?

Two tests, one answer (:class:`TraceResult`).

**Fingerprint (the default, :func:`trace`).** Every customer model learns a per-licence codeword on a
query set shared by all of the owner's customers (:mod:`deepserial.fingerprint`). The tracer sends the
query set, once, unstamped, and scores each licence's codeword against the answers with an exact
test of a weighted match count (a match on an answer the suspect rarely gives weighs more), Bonferroni
over the licences: family-wise false-positive rate ``fpr`` whatever the
suspect answers. What the suspect sees is the same for every ledger and carries no serial number, so
tracing a thief's API reveals nothing about any customer; the answer is read through whatever the
server does with the stamp (a server that stamps the key itself, one that passes inputs through);
and a server that does not hold a customer's model cannot make that customer named, because
customer's codeword is a secret of the owner's private key. Several licences may be named at once: a
model averaged from several customers' models (collusion) keeps part of each codeword.

**Serial numbers (:func:`trace_by_serial`, only on request).** A DSN customer model answers correctly
only on inputs stamped with its own serial number (Tang et al., arXiv:2011.08960 §3), so each licence is
also a hypothesis "this serial number unlocks the suspect". Each of the owner's labelled images is
queried stamped with the licence's serial number and with a fresh random pattern (the control; one
control per image serves every licence of that geometry). Under the null the two answers of an image
are exchangeable, so among the images where exactly one of them is right, the number right with the
key (b) out of b + c is Binomial(b + c, 1/2) (McNemar's exact test). The images are looked at in
growing groups (``looks``: 5, 10, 20, 40, 80, 160); a licence is named when its p-value is at most
``fpr / (L * K)`` (L licences, K looks) and dropped when the key has gained less than ``min_gain``
accuracy over the control. This test sends every candidate's serial number to the suspect: against a
model file that is harmless, against somebody else's server it hands over every product key tried,
and a server that stamps a key itself overwrites the tracer's stamps. It also needs only the model to
have been issued, not fingerprinted, so it remains for licences issued before fingerprints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deepserial import stats
from deepserial.data import Splits, TensorData
from deepserial.errors import ConfigError
from deepserial.fingerprint import DEFAULT_QUERIES, codeword, decode, query_set
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import Ledger, Licence
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.suspect import Suspect
from deepserial.workflow import DataSpec

DEFAULT_LOOKS = (5, 10, 20, 40, 80, 160)


@dataclass
class TraceResult:
    """The answer of a trace: the licence named first (or None) with its adjusted p-value, every licence
    named (several when customers colluded), the method and what it cost."""

    licence: Licence | None
    p_value: float
    fpr: float
    queries: int
    images: int
    candidates: list[dict[str, Any]] = field(default_factory=list)
    method: str = "fingerprint"
    named: list[Licence] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.licence is not None

    def summary(self) -> str:
        cost = f"{self.queries} queries over {len(self.candidates)} licences, {self.method} test"
        if self.licence is not None:
            what = "carries the fingerprint of" if self.method == "fingerprint" else "is unlocked by"
            also = ""
            if len(self.named) > 1:
                others = ", ".join(f"{lic.id} ({lic.customer!r})" for lic in self.named[1:])
                also = f"; also named: licence {others}"
            return (
                f"the suspect {what} licence {self.licence.id} of customer {self.licence.customer!r} "
                f"(adjusted p-value {self.p_value:.3g} at false-positive rate {self.fpr:g}; {cost}){also}"
            )
        return (
            f"no issued licence matches (smallest adjusted p-value {self.p_value:.3g} at false-positive "
            f"rate {self.fpr:g}; {cost})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "method": self.method,
            "licence_id": self.licence.id if self.licence else None,
            "customer": self.licence.customer if self.licence else None,
            "named": [{"licence_id": lic.id, "customer": lic.customer} for lic in self.named],
            "p_value": self.p_value,
            "fpr": self.fpr,
            "queries": self.queries,
            "images": self.images,
            "candidates": self.candidates,
        }


def trace(
    suspect: Suspect,
    licences: list[Licence],
    identity: OwnerIdentity,
    *,
    fpr: float = 1e-3,
    queries: int = DEFAULT_QUERIES,
) -> TraceResult:
    """Send the owner's fingerprint query set to ``suspect`` once and name every licence whose codeword
    its answers carry, at family-wise false-positive rate ``fpr`` over ``licences``.

    The query set and the codewords are re-derived from ``identity`` (the owner's private key); the
    input shape and class count are the suspect's own (a server that misstates them can only hide,
    never frame: an innocent's codeword is matched by chance alone whatever the answers)."""
    stats.check_fpr(fpr)
    if not licences:
        raise ConfigError("the ledger holds no DSN licence of this owner to trace against")
    classes = int(suspect.num_outputs)
    q = query_set(identity, suspect.input_shape, queries)
    start = suspect.queries
    answers = suspect.predict(q)
    codes = [codeword(identity, VerifierString.from_dict(lic.verifier), classes, queries) for lic in licences]
    scores = decode(answers, codes, classes, fpr)
    rows = [
        {
            "licence_id": lic.id,
            "customer": lic.customer,
            "outcome": "named" if sc.named else "not named",
            "matches": sc.matches,
            "score": sc.score,
            "queries": sc.queries,
            "p_value": sc.p_value,
            "p_adjusted": sc.p_adjusted,
        }
        for lic, sc in zip(licences, scores, strict=True)
    ]
    order = sorted(range(len(licences)), key=lambda i: scores[i].p_value)
    named = [licences[i] for i in order if scores[i].named]
    best = scores[order[0]]
    return TraceResult(
        named[0] if named else None,
        best.p_adjusted,
        fpr,
        suspect.queries - start,
        len(q),
        rows,
        method="fingerprint",
        named=named,
    )


@dataclass
class _State:
    licence: Licence
    serial: SerialNumber
    b: int = 0
    c: int = 0
    images: int = 0
    outcome: str = "open"  # open | named | dropped | undecided
    p: float = 1.0


def trace_by_serial(
    suspect: Suspect,
    candidates: list[tuple[Licence, SerialNumber]],
    images: TensorData,
    *,
    fpr: float = 1e-3,
    looks: tuple[int, ...] = DEFAULT_LOOKS,
    min_gain: float = 0.25,
    seed: int = 0,
) -> TraceResult:
    """Test every candidate licence against ``suspect`` with the owner's labelled ``images``; name the
    one that unlocks it, at family-wise false-positive rate ``fpr``."""
    stats.check_fpr(fpr)
    if not candidates:
        raise ConfigError("the ledger holds no DSN licence of this owner to trace against")
    if not looks or any(b <= a for a, b in zip(looks, looks[1:], strict=False)) or looks[0] < 1:
        raise ConfigError(f"looks must be increasing image counts >= 1, got {looks}")
    if not 0.0 <= min_gain < 1.0:
        raise ConfigError(f"min_gain must be in [0, 1), got {min_gain}")
    looks = tuple(n for n in looks if n <= len(images)) or (len(images),)
    n_licences, n_looks = len(candidates), len(looks)
    level = fpr / (n_licences * n_looks)
    rng = np.random.default_rng(seed)
    order = torch.from_numpy(rng.permutation(len(images))[: looks[-1]])
    states = [_State(lic, sn) for lic, sn in candidates]
    groups: dict[SerialGeometry, list[_State]] = {}
    for s in states:
        groups.setdefault(s.serial.geometry, []).append(s)
    controls = {g: _controls(g, [s.serial for s in members], looks[-1], rng) for g, members in groups.items()}
    start, prev = suspect.queries, 0
    for n in looks:
        idx = order[prev:n]
        x, y = images.x[idx], images.y[idx]
        for g, members in groups.items():
            live = [s for s in members if s.outcome == "open"]
            if not live:
                continue
            ctrl = suspect.predict(stamp(x, g, controls[g][prev:n])) == y
            for s in live:
                key = suspect.predict(stamp(x, g, s.serial.as_tensor())) == y
                s.b += int((key & ~ctrl).sum())
                s.c += int((~key & ctrl).sum())
                s.images = n
                s.p = stats.binom_tail(s.b, s.b + s.c, 0.5)
                if s.p <= level:
                    s.outcome = "named"
                elif s.b - s.c < min_gain * n:
                    s.outcome = "dropped"
        prev = n
        if all(s.outcome != "open" for s in states):
            break
    for s in states:
        if s.outcome == "open":
            s.outcome = "undecided"
    adjust = float(n_licences * n_looks)
    named = sorted((s for s in states if s.outcome == "named"), key=lambda s: s.p)
    best = named[0] if named else min(states, key=lambda s: s.p)
    rows = [
        {
            "licence_id": s.licence.id,
            "customer": s.licence.customer,
            "outcome": s.outcome,
            "images": s.images,
            "b": s.b,
            "c": s.c,
            "p_value": s.p,
            "p_adjusted": min(1.0, s.p * adjust),
        }
        for s in states
    ]
    return TraceResult(
        best.licence if named else None,
        min(1.0, best.p * adjust),
        fpr,
        suspect.queries - start,
        prev,
        rows,
        method="serial",
        named=[s.licence for s in named],
    )


def _controls(geometry: SerialGeometry, serials: list[SerialNumber], n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random patterns of ``geometry``, none equal to a candidate's serial number."""
    own = {sn.bits.reshape(-1).tobytes() for sn in serials}
    out = rng.integers(0, 2, size=(n, geometry.nbits), dtype=np.uint8)
    for i in range(n):
        while out[i].tobytes() in own:
            out[i] = rng.integers(0, 2, size=geometry.nbits, dtype=np.uint8)
    return torch.from_numpy(out.astype(np.float32)).view(n, geometry.height, geometry.width)


def is_remote(spec: str) -> bool:
    """Whether a suspect specification is a URL (somebody else's server) rather than a local file."""
    return str(spec).lower().startswith(("http://", "https://"))


def trace_ledger(
    open_suspect: Callable[[], Suspect],
    spec: str,
    ledger: Ledger,
    identity: OwnerIdentity,
    *,
    method: str = "fingerprint",
    reveal_serials: bool = False,
    fpr: float = 1e-3,
    dataset: str | None = None,
    seal_passphrase: str | None = None,
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
) -> TraceResult:
    """Trace the suspect ``spec`` (opened by ``open_suspect`` once the settings are known to be sound)
    against every DSN licence ``identity`` issued in ``ledger``, and keep the answer in the ledger.

    ``method`` "fingerprint" (the default) sends only the owner's shared query set. "serial" stamps
    every candidate's serial number on the queries: refused against a URL unless ``reveal_serials``,
    and then ``warn`` is told what the server learns."""
    if method not in ("fingerprint", "serial"):
        raise ConfigError(f"unknown trace method {method!r}; use 'fingerprint' or 'serial'")
    lics = [lic for lic in ledger.licences(owner_fingerprint=identity.fingerprint()) if lic.scheme == "dsn"]
    if not lics:
        raise ConfigError(
            f"{ledger.path} holds no DSN licence issued with this owner key; trace with the key that issued them"
        )
    if method == "serial" and is_remote(spec) and not reveal_serials:
        raise ConfigError(
            f"--method serial stamps the serial number of each of the {len(lics)} licences on queries to "
            f"{spec}, and whoever runs that server can rebuild their product keys; add --reveal-serials "
            "to do it anyway, or trace with the fingerprint (the default)"
        )
    suspect = open_suspect()
    if method == "fingerprint":
        res = trace(suspect, lics, identity, fpr=fpr)
    else:
        if is_remote(spec) and warn is not None:
            warn(
                f"warning: sending the serial numbers of {len(lics)} licences to {spec}: whoever runs it can "
                "rebuild their product keys"
            )
        candidates = [(lic, ledger.serial(lic, identity, seal_passphrase)) for lic in lics]
        res = trace_by_serial(suspect, candidates, _trace_images(lics, dataset).test, fpr=fpr, seed=seed)
    ledger.record_trace(spec, res.licence.id if res.licence else None, res.p_value, fpr, res.queries, res.to_dict())
    return res


def _trace_images(lics: list[Licence], dataset: str | None) -> Splits:
    """The labelled images a serial-number trace queries with: ``dataset``, or the one data set the
    licences record."""
    if dataset is not None:
        return DataSpec(dataset).load()
    specs = {json.dumps(lic.dataset, sort_keys=True) for lic in lics if lic.dataset}
    if len(specs) != 1:
        raise ConfigError("the licences record several data sets (or none): choose one with --dataset")
    d = json.loads(specs.pop())
    return DataSpec(
        d["name"], int(d["seed"]), float(d["test_fraction"]), float(d["attacker_fraction"]), d.get("limit")
    ).load()
