"""Tests of the verification foundations: binomial statistics, suspects, verdicts, ownership keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as st
from torch import nn

from deepserial import stats
from deepserial.artifacts import load_key, save_key
from deepserial.errors import ConfigError, InputError, IntegrityError
from deepserial.nets import create_model
from deepserial.schemes.base import OwnershipKey, Verdict, get_scheme
from deepserial.suspect import ModuleSuspect, QueryBudgetError


@pytest.mark.parametrize(("n", "p0", "fpr"), [(10, 0.1, 1e-3), (100, 0.1, 1e-3), (50, 0.5, 0.05), (7, 0.5, 1e-3)])
def test_binom_threshold_is_the_smallest_count_at_the_fpr(n: int, p0: float, fpr: float) -> None:
    k = stats.binom_threshold(n, p0, fpr)
    if k <= n:
        assert stats.binom_tail(k, n, p0) <= fpr
    assert k == 0 or stats.binom_tail(k - 1, n, p0) > fpr


def test_binom_threshold_unreachable_with_too_few_queries() -> None:
    # 7 fair bits: even 7/7 has p = 1/128 > 1e-3
    assert stats.binom_threshold(7, 0.5, 1e-3) == 8


def test_binom_tail_matches_scipy_and_edges() -> None:
    assert stats.binom_tail(0, 10, 0.1) == 1.0
    assert stats.binom_tail(11, 10, 0.1) == 0.0
    assert stats.binom_tail(3, 10, 0.1) == pytest.approx(st.binom.sf(2, 10, 0.1))


def test_min_queries() -> None:
    assert stats.min_queries(0.1, 1e-3) == 3
    assert stats.min_queries(0.0, 1e-3) == 1
    assert 0.5 ** stats.min_queries(0.5, 1e-3) <= 1e-3


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 2.0])
def test_bad_fpr(fpr: float) -> None:
    with pytest.raises(ConfigError, match="false-positive rate"):
        stats.binom_threshold(10, 0.1, fpr)


def test_ber() -> None:
    assert stats.bit_error_rate(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])) == 0.5
    assert stats.ber_p_value(0, 10) == pytest.approx(2**-10)
    with pytest.raises(ValueError, match="length"):
        stats.bit_error_rate(np.zeros(3), np.zeros(4))


def test_sequential_binomial_stops_early_and_agrees_with_fixed_test() -> None:
    seq = stats.SequentialBinomial(budget=100, p0=0.1, fpr=1e-3)
    for _ in range(100):
        if seq.done:
            break
        seq.update([True])
    assert seq.decided is True and seq.asked == seq.threshold < 100
    neg = stats.SequentialBinomial(budget=100, p0=0.1, fpr=1e-3)
    while not neg.done:
        neg.update([False])
    assert neg.decided is False and neg.asked == 100 - neg.threshold + 1
    with pytest.raises(ConfigError):
        stats.SequentialBinomial(0, 0.1, 1e-3)


def _suspect(budget: int | None = None) -> ModuleSuspect:
    torch.manual_seed(0)
    return ModuleSuspect(create_model("dsn_mnist", (1, 12, 12), 4), (1, 12, 12), budget=budget)


def test_module_suspect_counts_queries_and_enforces_budget() -> None:
    s = _suspect(budget=10)
    assert s.num_outputs == 4 and s.module is not None
    labels = s.predict(torch.rand(6, 1, 12, 12))
    assert labels.dtype == torch.long and labels.shape == (6,) and s.queries == 6
    with pytest.raises(QueryBudgetError, match="budget"):
        s.predict(torch.rand(5, 1, 12, 12))
    assert s.queries == 6  # a refused batch costs nothing
    with pytest.raises(InputError, match="shape"):
        s.predict(torch.rand(2, 1, 28, 28))
    # white-box forwards are charged under the same rule; reserve refuses without spending
    s.charge(3)
    assert s.queries == 9
    with pytest.raises(QueryBudgetError, match="lower verify_samples"):
        s.reserve(2, lower="verify_samples")
    assert s.queries == 9
    s.reserve(1)


def test_black_box_suspect_refuses_white_box_use() -> None:
    class LabelsOnly(ModuleSuspect):
        @property
        def module(self) -> nn.Module | None:
            return None

    s = LabelsOnly(create_model("dsn_mnist", (1, 12, 12), 4), (1, 12, 12), num_outputs=4)
    with pytest.raises(InputError, match="white-box"):
        s.require_module("uchida")


def test_verdict_summary_and_dict() -> None:
    v = Verdict("x", 9.0, "matches", 5.0, 1e-6, 1e-3, True, 12, {"n": 20})
    assert "CARRIES" in v.summary() and v.to_dict()["queries"] == 12


def test_ownership_key_round_trip_and_tamper(tmp_path) -> None:  # noqa: ANN001
    key = OwnershipKey("demo", {"labels": [1, 2]}, {"x": torch.rand(3, 1, 4, 4), "y": torch.tensor([1, 2, 0])})
    p = tmp_path / "k.key"
    save_key(p, key)
    assert p.stat().st_mode & 0o777 == 0o600
    back = load_key(p)
    assert back.scheme == "demo" and back.meta == key.meta
    assert torch.equal(back.tensor("x"), key.tensors["x"])
    with pytest.raises(ConfigError, match="lacks tensor"):
        back.tensor("nope")
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0xFF
    bad = tmp_path / "bad.key"
    bad.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="integrity"):
        load_key(bad)
    (tmp_path / "trunc.key").write_bytes(bytes(raw[:40]))
    with pytest.raises(IntegrityError):
        load_key(tmp_path / "trunc.key")


def test_unknown_scheme() -> None:
    with pytest.raises(ConfigError, match="unknown scheme"):
        get_scheme("no-such-scheme")


def test_a_key_naming_its_owner_must_carry_the_owners_signature(tmp_path) -> None:  # noqa: ANN001
    """Editing a key's bits and recomputing the digest must not let anyone verify in the owner's name."""
    from deepserial.identity import OwnerIdentity
    from deepserial.schemes.base import Provenance

    owner, forger = OwnerIdentity.generate(), OwnerIdentity.generate()
    prov = Provenance.sign(owner, "owner", "model", "demo")
    key = OwnershipKey("demo", prov.to_meta(), {"bits": torch.tensor([1, 0, 1])})
    save_key(tmp_path / "good.key", key, owner=owner)
    assert load_key(tmp_path / "good.key").meta["signature"] == prov.signature.hex()
    forged = OwnershipKey("demo", prov.to_meta(), {"bits": torch.tensor([0, 0, 0])})
    save_key(tmp_path / "unsigned.key", forged)  # digest recomputed, no signature
    with pytest.raises(IntegrityError, match="no owner signature"):
        load_key(tmp_path / "unsigned.key")
    save_key(tmp_path / "forged.key", forged, owner=forger)  # signed, but not by the owner it names
    with pytest.raises(IntegrityError, match="does not verify"):
        load_key(tmp_path / "forged.key")


def test_scheme_settings_of_the_wrong_type() -> None:
    with pytest.raises(ConfigError, match="settings must be"):
        get_scheme("uchida", 3)  # type: ignore[arg-type]
