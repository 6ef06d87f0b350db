"""Null / dual embedding (deepserial.schemes.null_embedding) and the §7.2 piracy attack
(deepserial.attacks.overwrite): Transform, the filter, the batch of §6.2, key checks, and one short
real training run shared by the verification and attack tests."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from conftest import fixed_identity
from torch import nn

from deepserial.artifacts import load_key, save_key
from deepserial.attacks.overwrite import pirate_null_embedding, pirate_signature, pirate_watermark
from deepserial.data import Splits, TensorData
from deepserial.errors import ConfigError, GeometryError, IdentityError, InputError, IntegrityError
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.nets import SplitNet, create_model
from deepserial.schemes.base import OwnershipKey, Provenance, get_scheme
from deepserial.schemes.null_embedding import (
    NullEmbeddingConfig,
    NullEmbeddingScheme,
    dual_batch,
    make_dual_loss,
    transform,
    visible_field,
)
from deepserial.suspect import ModuleSuspect, QueryBudgetError
from deepserial.training import Batch, TrainConfig, TrainLog, fit, seed_everything, supervised_loss
from deepserial.workflow import DataSpec

SHAPE = (1, 28, 28)
CLASSES = 10
FPR = 1e-3
# Algorithm 3's T: the paper found the same outcomes for T from 0.5 to 0.8; this tiny run (800 images,
# 6 epochs) uses the lower-middle of that range, the binomial test is the same as by default.
TEST_T = 0.6


identity = fixed_identity  # a deterministic owner key pair (Ed25519 signatures are deterministic too)


def verifier(customer: str = "acme") -> VerifierString:
    return VerifierString("owner", customer, "2024-01-01T00:00:00+00:00", "null-embedding")


def sig(i: int) -> bytes:
    return identity(1).sign(verifier(f"c{i}"))


def prov(owner: OwnerIdentity, v: VerifierString) -> Provenance:
    """Algorithm 1: the owner's signature over the verifier string, with the owner's public key."""
    return Provenance(v, owner.sign(v), owner.public_pem().decode())


# ----- Transform (Algorithm 2) -----------------------------------------------------------------------
def test_transform_is_deterministic_and_depends_on_the_signature() -> None:
    a1, a2 = transform(sig(0), SHAPE, CLASSES), transform(sig(0), SHAPE, CLASSES)
    assert a1.same_as(a2)
    assert a1.bits.shape == (6, 6) and a1.bits.dtype == np.uint8 and set(np.unique(a1.bits)) <= {0, 1}
    wms = [transform(sig(i), SHAPE, CLASSES) for i in range(12)]
    assert all(not wms[0].same_as(w) for w in wms[1:])
    assert len({w.bits.tobytes() for w in wms}) == 12  # 36 random bits: no collisions
    assert len({(w.geometry.top, w.geometry.left) for w in wms}) > 1
    assert len({w.y_w for w in wms}) > 1 and all(0 <= w.y_w < CLASSES for w in wms)
    assert len({w.lam for w in wms}) > 1
    for w in wms:
        assert 2000 <= w.lam <= 3000 and w.lam == int(w.lam)
        assert 0 <= w.geometry.top <= 28 - 6 and 0 <= w.geometry.left <= 28 - 6


def test_transform_uses_independent_domain_tags() -> None:
    """Changing the class count changes y_W only; the lambda range changes lambda only."""
    a = transform(sig(3), SHAPE, CLASSES)
    b = transform(sig(3), SHAPE, 7, lam_range=(5000, 9000))
    assert np.array_equal(a.bits, b.bits) and a.geometry == b.geometry
    assert 0 <= b.y_w < 7 and 5000 <= b.lam <= 9000


def test_transform_field_and_pattern_size() -> None:
    w = transform(sig(1), SHAPE, CLASSES, pattern_size=6, field=(20, 25, 20, 25))
    assert (w.geometry.top, w.geometry.left) == (20, 20)  # the only place a 6x6 square fits
    w4 = transform(sig(1), SHAPE, CLASSES, pattern_size=4)
    assert w4.bits.shape == (4, 4) and w4.geometry.height == 4
    with pytest.raises(GeometryError):
        transform(sig(1), SHAPE, CLASSES, pattern_size=7, field=(20, 25, 20, 25))
    with pytest.raises(GeometryError):
        transform(sig(1), SHAPE, CLASSES, field=(0, 30, 0, 27))


def test_visible_field_of_the_dsn_net_excludes_cropped_rows() -> None:
    model = create_model("dsn_mnist", SHAPE, CLASSES)
    r0, r1, c0, c1 = visible_field(model, SHAPE)
    assert (r0, c0) == (0, 0) and r1 < 27 and c1 < 27  # valid convolutions + flooring pooling crop the edge


# ----- the filter ----------------------------------------------------------------------------------
def test_filter_writes_plus_minus_lambda_under_the_bits_and_nothing_else() -> None:
    wm = transform(sig(2), SHAPE, CLASSES)
    g = wm.geometry
    x = torch.rand(5, *SHAPE)
    rows, cols = slice(g.top, g.top + 6), slice(g.left, g.left + 6)
    bits = torch.from_numpy(wm.bits).bool()
    for out, ones in ((wm.null(x), bits), (wm.true(x), ~bits)):
        patch = out[:, 0, rows, cols]
        assert torch.all(patch[:, ones] == wm.lam) and torch.all(patch[:, ~ones] == -wm.lam)  # exact, no clamp
        rest = out.clone()
        rest[:, :, rows, cols] = 0
        base = x.clone()
        base[:, :, rows, cols] = 0
        assert torch.equal(rest, base)
    assert torch.equal(wm.null(x)[:, :, rows, cols], -wm.true(x)[:, :, rows, cols])
    assert float(wm.null(x).abs().max()) == wm.lam  # far outside [0, 1] on purpose


# ----- the batch of §6.2 -----------------------------------------------------------------------------
@pytest.mark.parametrize(("b", "r_true", "r_null"), [(10, 0.5, 0.5), (40, 0.1, 0.1), (8, 1.5, 0.25), (7, 0.5, 0.5)])
def test_dual_batch_composition_matches_the_injection_ratios(b: int, r_true: float, r_null: float) -> None:
    wm = transform(sig(4), SHAPE, CLASSES)
    x, y = torch.rand(b, *SHAPE), torch.randint(0, CLASSES, (b,))
    xs, ys, n = dual_batch(x, y, wm, r_true, r_null)
    k_null, k_true = math.floor(r_null * b + 0.5), math.floor(r_true * b + 0.5)
    assert n == {"normal": b, "null": k_null, "true": k_true}
    assert len(xs) == len(ys) == b + k_null + k_true
    src = torch.arange(k_null + k_true) % b
    assert torch.equal(xs[:b], x) and torch.equal(ys[:b], y)
    assert torch.equal(xs[b : b + k_null], wm.null(x[src[:k_null]]))
    assert torch.equal(ys[b : b + k_null], y[src[:k_null]])  # null embedding keeps the TRUE label
    assert torch.equal(xs[b + k_null :], wm.true(x[src[k_null:]]))
    assert torch.all(ys[b + k_null :] == wm.y_w)


def test_dual_loss_forwards_the_whole_mixed_batch() -> None:
    wm = transform(sig(5), SHAPE, CLASSES)
    seen: list[int] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = create_model("dsn_mnist", SHAPE, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return self.net(x)

    loss_fn = make_dual_loss(wm, 0.5, 0.5)
    x, y = torch.rand(16, *SHAPE), torch.randint(0, CLASSES, (16,))
    out = loss_fn(Spy(), Batch(x, y, torch.arange(16)))
    assert seen == [32] and out.forward_samples == 32 and torch.isfinite(out.loss)
    assert set(out.metrics) == {"acc", "acc_null", "acc_true"}


# ----- keys ------------------------------------------------------------------------------------------
def small_data(n: int = 40) -> TensorData:
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.rand(n, *SHAPE, generator=g), torch.arange(n) % CLASSES)


def test_make_signed_key_checks_the_signature_and_keeps_what_algorithm_3_needs() -> None:
    scheme = NullEmbeddingScheme()
    owner = identity(1)
    model = create_model("dsn_mnist", SHAPE, CLASSES)
    key = scheme.make_signed_key(prov(owner, verifier()), small_data(), CLASSES, model)
    assert key.scheme == "null-embedding"
    assert key.meta["verifier"] == verifier().to_dict() and key.meta["owner_public_key"] == owner.public_pem().decode()
    assert bytes.fromhex(key.meta["signature"]) == owner.sign(verifier())
    assert key.tensor("verify_x").shape == (40, *SHAPE) and key.tensor("verify_y").dtype == torch.int64
    wm = scheme.watermark(key)
    assert np.array_equal(key.tensor("bits").numpy(), wm.bits) and key.meta["y_w"] == wm.y_w
    r0, r1, c0, c1 = key.meta["field"]
    assert r0 <= wm.geometry.top and wm.geometry.top + 6 - 1 <= r1 and wm.geometry.left + 6 - 1 <= c1
    unsigned = scheme.make_key(owner.sign(verifier()), small_data(), CLASSES, model)  # no provenance recorded
    with pytest.raises(IdentityError):
        scheme.watermark(unsigned)
    forged = Provenance(verifier(), identity(2).sign(verifier()), owner.public_pem().decode())
    with pytest.raises(IdentityError):  # signed by someone else
        scheme.make_signed_key(forged, small_data(), CLASSES, model)
    with pytest.raises(ConfigError):
        scheme.make_key(sig(0), small_data(), CLASSES + 1, model)  # the network has 10 outputs


def test_tampered_keys_are_refused() -> None:
    scheme = NullEmbeddingScheme()
    key = scheme.make_signed_key(prov(identity(1), verifier()), small_data(), CLASSES)
    forged = bytearray(bytes.fromhex(key.meta["signature"]))
    forged[0] ^= 1
    bad_sig = OwnershipKey(key.scheme, dict(key.meta, signature=forged.hex()), key.tensors)
    with pytest.raises(IdentityError):
        scheme.watermark(bad_sig)
    other_customer = OwnershipKey(key.scheme, dict(key.meta, verifier=verifier("mallory").to_dict()), key.tensors)
    with pytest.raises(IdentityError):
        scheme.watermark(other_customer)
    other_owner = OwnershipKey(
        key.scheme, dict(key.meta, owner_public_key=identity(2).public_pem().decode()), key.tensors
    )
    with pytest.raises(IdentityError):
        scheme.watermark(other_owner)
    with pytest.raises(IdentityError):
        scheme.watermark(OwnershipKey(key.scheme, {k: v for k, v in key.meta.items() if k != "signature"}, key.tensors))
    flipped = key.tensor("bits").clone()
    flipped[0, 0] ^= 1
    with pytest.raises(IntegrityError):  # stored bits are never trusted: re-derived and compared
        scheme.watermark(OwnershipKey(key.scheme, key.meta, dict(key.tensors, bits=flipped)))
    with pytest.raises(IntegrityError):
        scheme.watermark(OwnershipKey(key.scheme, dict(key.meta, y_w=(key.meta["y_w"] + 1) % CLASSES), key.tensors))
    with pytest.raises(ConfigError):
        scheme.watermark(OwnershipKey("dsn", key.meta, key.tensors))


def test_bad_configs_are_refused() -> None:
    assert isinstance(get_scheme("null-embedding"), NullEmbeddingScheme)
    with pytest.raises(ConfigError):
        get_scheme("null-embedding", {"lam_min": 3000, "lam_max": 2000})
    with pytest.raises(ConfigError):
        get_scheme("null-embedding", {"threshold": 1.5})
    with pytest.raises(ConfigError):
        get_scheme("null-embedding", {"no_such_setting": 1})
    assert NullEmbeddingConfig.for_task("traffic").ratio_true == 0.1
    assert NullEmbeddingConfig.for_task("digit").ratio_null == 0.5
    with pytest.raises(ConfigError):
        NullEmbeddingConfig.for_task("speech")


# ----- one short real training run -------------------------------------------------------------------
@dataclass
class Trained:
    scheme: NullEmbeddingScheme
    key: OwnershipKey
    marked: SplitNet
    plain: SplitNet
    log: TrainLog
    splits: Splits


@pytest.fixture(scope="module")
def trained() -> Trained:
    """mnist5k limited to 1,000 images: 800 for training, the 200 test images as verification images."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        splits = DataSpec("mnist5k", 0, limit=1000).load()
        train_data = TensorData(
            torch.cat([splits.owner.x, splits.attacker.x]), torch.cat([splits.owner.y, splits.attacker.y])
        )
        scheme = NullEmbeddingScheme({"threshold": TEST_T})
        cfg = TrainConfig(epochs=6, batch_size=16, progress=False)
        seed_everything(0)
        marked = create_model("dsn_mnist", SHAPE, CLASSES)
        key = scheme.make_signed_key(prov(identity(1), verifier()), splits.test, CLASSES, marked)
        log = scheme.embed(marked, train_data, key, cfg)
        seed_everything(0)
        plain = create_model("dsn_mnist", SHAPE, CLASSES)
        fit(plain, train_data, supervised_loss, replace(cfg, epochs=3))
    finally:
        torch.set_num_threads(old)
    return Trained(scheme, key, marked, plain, log, splits)


def exact_threshold(n: int, p0: float, fpr: float) -> int:
    """The smallest k with P[Binomial(n, p0) >= k] <= fpr, summed term by term."""
    tail = 0.0
    for k in range(n, -1, -1):
        tail += math.comb(n, k) * p0**k * (1 - p0) ** (n - k)
        if tail > fpr:
            return k + 1
    return 0


def test_training_learns_the_dual_embedding(trained: Trained) -> None:
    first, last = trained.log.epochs[0], trained.log.epochs[-1]
    assert last["loss"] < first["loss"]
    assert first["lam"] == pytest.approx(20.0) and last["lam"] == trained.key.meta["lam"]  # warm-up, then lambda
    assert last["acc_true"] > 95 and last["acc_null"] > 60


def test_marked_model_is_verified(trained: Trained) -> None:
    suspect = ModuleSuspect(trained.marked, SHAPE)
    v = trained.scheme.verify(suspect, trained.key, fpr=FPR)
    assert v.decision and v.p_value <= FPR and v.statistic >= v.threshold
    d = v.details
    assert d["acc_true"] >= TEST_T and d["acc_null"] >= TEST_T and d["paper_pass"] and d["T"] == TEST_T
    assert v.queries == suspect.queries == 2 * len(trained.key.tensor("verify_x"))
    assert v.threshold == exact_threshold(d["eligible_images"], d["p0"], FPR)
    assert v.p_value == pytest.approx(
        sum(
            math.comb(d["eligible_images"], k) * d["p0"] ** k * (1 - d["p0"]) ** (d["eligible_images"] - k)
            for k in range(int(v.statistic), d["eligible_images"] + 1)
        ),
        rel=1e-6,
    )


def test_unmarked_and_other_key_models_are_not_verified(trained: Trained) -> None:
    v = trained.scheme.verify(ModuleSuspect(trained.plain, SHAPE), trained.key, fpr=FPR)
    assert not v.decision and v.p_value > FPR
    for i in range(5):  # keys of other signatures against the marked and the plain model
        other = trained.scheme.make_signed_key(
            prov(identity(1), verifier(f"other-{i}")), trained.splits.test, CLASSES, trained.plain
        )
        for model in (trained.marked, trained.plain):
            v = trained.scheme.verify(ModuleSuspect(model, SHAPE), other, fpr=FPR)
            assert not v.decision, v.details


def test_sequential_verification_stops_early_with_the_same_decision(trained: Trained) -> None:
    full = NullEmbeddingScheme({"threshold": TEST_T, "sequential": False})
    n = len(trained.key.tensor("verify_x"))
    for model, carries in ((trained.plain, False), (trained.marked, True)):
        seq_suspect, full_suspect = ModuleSuspect(model, SHAPE), ModuleSuspect(model, SHAPE)
        a = trained.scheme.verify(seq_suspect, trained.key, fpr=FPR)
        b = full.verify(full_suspect, trained.key, fpr=FPR)
        assert a.decision == b.decision == carries
        assert b.queries == full_suspect.queries == 2 * n and not b.details["stopped_early"]
        if carries:
            assert a.queries == 2 * n and (a.statistic, a.p_value) == (b.statistic, b.p_value)
        else:  # an unmarked model misses the null embedding at once: a chunk or two of 50 images decides
            assert a.details["stopped_early"] and a.queries == seq_suspect.queries < b.queries
            assert a.queries % 100 == 0 and a.details["images_queried"] == a.queries // 2
    with pytest.raises(QueryBudgetError):  # refused before any query is spent
        trained.scheme.verify(ModuleSuspect(trained.plain, SHAPE, budget=2 * n - 1), trained.key)


def test_key_save_load_round_trip(trained: Trained, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "owner.nullkey"
    save_key(path, trained.key, owner=identity(1))
    loaded = load_key(path)
    assert loaded.scheme == trained.key.scheme and loaded.meta == trained.key.meta
    assert set(loaded.tensors) == {"bits", "verify_x", "verify_y"}
    for name, t in trained.key.tensors.items():
        assert torch.equal(loaded.tensor(name), t)
    a = trained.scheme.verify(ModuleSuspect(trained.marked, SHAPE), trained.key)
    b = trained.scheme.verify(ModuleSuspect(trained.marked, SHAPE), loaded)
    assert (a.statistic, a.p_value, a.decision) == (b.statistic, b.p_value, b.decision)


def test_suspect_of_another_task_is_refused(trained: Trained) -> None:
    other = create_model("dsn_mnist", SHAPE, CLASSES + 1)
    with pytest.raises(InputError):
        trained.scheme.verify(ModuleSuspect(other, SHAPE), trained.key)
    with pytest.raises(ConfigError):
        trained.scheme.embed(other, trained.splits.owner, trained.key, TrainConfig(epochs=1, progress=False))


# ----- the piracy attack of §7.2 ---------------------------------------------------------------------
def test_piracy_attack_runs_on_a_copy_and_changes_the_weights(trained: Trained) -> None:
    before = copy.deepcopy(trained.marked.state_dict())
    pirated, log = pirate_null_embedding(
        trained.marked, trained.splits.attacker, 7, epochs=1, owner_log=trained.log, batch_size=64, max_images=200
    )
    assert isinstance(log, TrainLog) and len(log.epochs) == 1 and log.forward_samples == 400
    assert log.epochs[0]["lr"] == trained.log.epochs[-1]["lr"]  # the owner's last learning rate
    after = pirated.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(before[k], v) for k, v in trained.marked.state_dict().items())  # owner's untouched
    wm = pirate_watermark(pirate_signature(7), pirated, SHAPE, CLASSES)
    assert not wm.same_as(trained.scheme.watermark(trained.key))
    # A pirate with a key pair of its own: its signature bytes give a verifiable pirate key.
    pirate, v = identity(9), verifier("pirate")
    pirated2, _ = pirate_null_embedding(
        trained.marked, trained.splits.attacker, pirate.sign(v), epochs=1, lr=1e-3, batch_size=64, max_images=64
    )
    pirate_key = trained.scheme.make_signed_key(prov(pirate, v), trained.splits.test, CLASSES, pirated2)
    assert trained.scheme.watermark(pirate_key).same_as(pirate_watermark(pirate.sign(v), pirated2, SHAPE, CLASSES))
    assert pirate_signature(7) == pirate_signature(7) != pirate_signature(8)
    with pytest.raises(ConfigError):
        pirate_null_embedding(trained.marked, trained.splits.attacker, 7)  # no learning rate given
