"""Traitor tracing: which issued licence unlocks a leaked model?

A DSN customer model answers correctly only on inputs stamped with its own serial number (Tang et al.,
arXiv:2011.08960 §3); every other customer's serial number is, to it, just another wrong key. So the
customer a leaked model was issued to is the one whose serial number unlocks it, and the question for
each licence in the ledger is the one :meth:`~deepserial.schemes.dsn.DSNScheme.verify` answers: are the
suspect's answers right more often with this serial number than with a random wrong one?

The test (per licence, McNemar's exact test). Each of the owner's labelled images is queried stamped
with the licence's serial number and stamped with a fresh random pattern (the control; one control
query per image serves every licence of that geometry). Under the null "this serial number is just
another wrong key to the suspect" the two answers of an image are exchangeable, so among the images
where exactly one of them is right, the number right with the key (b) out of b + c is Binomial(b + c, 1/2).

Spending few queries. The images are looked at in growing groups (``looks``: 5, 10, 20, 40, 80, 160
images). At each look a licence is

- **named** when its p-value is at most ``fpr / (L * K)`` (L licences, K looks: Bonferroni over both,
  so the chance that *any* licence is named for a model none of them unlocks is at most ``fpr``,
  whatever the dependence between the tests);
- **dropped** when the key has gained less than ``min_gain`` accuracy over the control so far
  (b - c < min_gain * images): a stop that can only *not* name a licence never raises the
  false-positive rate; it costs power only against models that the key unlocks weakly.

For a leaked customer model the wrong licences drop at the first look and the right one is named at
about 20 images; the p-value reported is the Bonferroni-adjusted one, ``min(1, p * L * K)``.

What tracing cannot see: a server that stamps a serial number itself on every input overwrites the
owner's stamp, so every licence looks alike to it (see docs/decisions.md). Tracing reaches the serial
number through a model file (safetensors or ONNX) or a server that passes inputs through unstamped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepserial import stats
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.identity import OwnerIdentity
from deepserial.ledger import Ledger, Licence
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.suspect import Suspect, open_suspect
from deepserial.workflow import DataSpec

DEFAULT_LOOKS = (5, 10, 20, 40, 80, 160)


@dataclass
class TraceResult:
    """The answer of a trace: the licence named (or None), its adjusted p-value, what it cost."""

    licence: Licence | None
    p_value: float
    fpr: float
    queries: int
    images: int
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.licence is not None

    def summary(self) -> str:
        if self.licence is not None:
            return (
                f"licence {self.licence.id} of customer {self.licence.customer!r} unlocks the suspect "
                f"(adjusted p-value {self.p_value:.3g} at false-positive rate {self.fpr:g}; "
                f"{self.queries} queries over {len(self.candidates)} licences)"
            )
        return (
            f"no issued licence matches (smallest adjusted p-value {self.p_value:.3g} at false-positive "
            f"rate {self.fpr:g}; {self.queries} queries over {len(self.candidates)} licences)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "licence_id": self.licence.id if self.licence else None,
            "customer": self.licence.customer if self.licence else None,
            "p_value": self.p_value,
            "fpr": self.fpr,
            "queries": self.queries,
            "images": self.images,
            "candidates": self.candidates,
        }


@dataclass
class _State:
    licence: Licence
    serial: SerialNumber
    b: int = 0
    c: int = 0
    images: int = 0
    outcome: str = "open"  # open | named | dropped | undecided
    p: float = 1.0


def trace(
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
        best.licence if named else None, min(1.0, best.p * adjust), fpr, suspect.queries - start, prev, rows
    )


def _controls(geometry: SerialGeometry, serials: list[SerialNumber], n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random patterns of ``geometry``, none equal to a candidate's serial number."""
    own = {sn.bits.reshape(-1).tobytes() for sn in serials}
    out = rng.integers(0, 2, size=(n, geometry.nbits), dtype=np.uint8)
    for i in range(n):
        while out[i].tobytes() in own:
            out[i] = rng.integers(0, 2, size=geometry.nbits, dtype=np.uint8)
    return torch.from_numpy(out.astype(np.float32)).view(n, geometry.height, geometry.width)


# ----- tracing from the ledger (``deepserial trace``) -------------------------------------------------
def trace_ledger(
    suspect: str,
    ledger: Path,
    ident: OwnerIdentity,
    *,
    key_name: str | Path = "the owner key",
    seal: str | None = None,
    dataset: str | None = None,
    fpr: float = 1e-3,
    budget: int | None = None,
    seed: int = 0,
    timeout: float = 30.0,
    total_timeout: float = 600.0,
) -> TraceResult:
    """Trace ``suspect`` (a model file or a prediction server's URL, :func:`~deepserial.suspect.open_suspect`)
    against every DSN licence ``ident`` issued in ``ledger`` (``key_name`` names the key in the error
    when it issued none), querying with ``dataset`` or else the one data set the licences record, and
    record the trace in the ledger. ``seal`` unseals licences whose signature the ledger keeps sealed."""
    with Ledger(ledger, create=False) as led:
        lics = [lic for lic in led.licences(owner_fingerprint=ident.fingerprint()) if lic.scheme == "dsn"]
        if not lics:
            raise ConfigError(
                f"{ledger} holds no DSN licence issued with {key_name}; trace with the key that issued them"
            )
        candidates = [(lic, led.serial(lic, ident, seal)) for lic in lics]
        specs = {json.dumps(lic.dataset, sort_keys=True) for lic in lics if lic.dataset}
        if dataset is not None:
            data = DataSpec(dataset)
        elif len(specs) == 1:
            d = json.loads(specs.pop())
            data = DataSpec(
                d["name"], int(d["seed"]), float(d["test_fraction"]), float(d["attacker_fraction"]), d.get("limit")
            )
        else:
            raise ConfigError("the licences record several data sets (or none): choose one with --dataset")
        s = open_suspect(suspect, budget=budget, timeout=timeout, total_timeout=total_timeout)
        res = trace(s, candidates, data.load().test, fpr=fpr, seed=seed)
        led.record_trace(suspect, res.licence.id if res.licence else None, res.p_value, fpr, res.queries, res.to_dict())
    return res
