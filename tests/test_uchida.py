"""Tests of Uchida et al.'s weight watermark (deepserial.schemes.uchida) on mnist5k limited to 600 images."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from scipy import stats as st

from deepserial.artifacts import load_key, save_key
from deepserial.data import Splits
from deepserial.errors import ConfigError, InputError
from deepserial.nets import SplitNet, create_model
from deepserial.schemes.base import get_scheme
from deepserial.schemes.uchida import Uchida, decode, embedding_loss, flat_mean_weights
from deepserial.suspect import ModuleSuspect
from deepserial.training import TrainConfig, accuracy, fit, supervised_loss
from deepserial.workflow import DataSpec

SHAPE = (1, 28, 28)
C = 10
QUICK = TrainConfig(epochs=3, batch_size=32, progress=False)
OWNER = b"uchida-test-owner-signature"


class LabelsOnly(ModuleSuspect):
    """A black-box suspect: labels through predict(), no module."""

    @property
    def module(self) -> None:  # type: ignore[override]
        return None


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The module-scoped models below are trained before conftest's per-test single-thread fixture runs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def splits() -> Splits:
    return DataSpec("mnist5k", 0, limit=600).load()


@pytest.fixture(scope="module")
def plain(splits: Splits) -> SplitNet:
    torch.manual_seed(0)
    model = create_model("dsn_mnist", SHAPE, C)
    fit(model, splits.owner, supervised_loss, QUICK)
    return model


@pytest.fixture(scope="module")
def marked(splits: Splits):  # noqa: ANN201
    scheme = Uchida()
    torch.manual_seed(0)
    model = create_model("dsn_mnist", SHAPE, C)
    key = scheme.make_key(OWNER, splits.owner, C, model=model)
    log = scheme.embed(model, splits.owner, key, QUICK)
    return scheme, model, key, log


def test_key_deterministic_signature_dependent_and_sized_for_the_second_conv(splits: Splits) -> None:
    scheme = Uchida()
    model = create_model("dsn_mnist", SHAPE, C)
    a = scheme.make_key(OWNER, splits.owner, C, model=model)
    b = scheme.make_key(OWNER, splits.owner, C, model=model)
    other = scheme.make_key(b"another owner", splits.owner, C, model=model)
    assert (
        a.meta == b.meta
        and torch.equal(a.tensors["X"], b.tensors["X"])
        and torch.equal(a.tensors["bits"], b.tensors["bits"])
    )
    assert not torch.equal(a.tensors["X"], other.tensors["X"]) and not torch.equal(
        a.tensors["bits"], other.tensors["bits"]
    )
    assert a.meta["layer"] == "features.0.3.weight" and a.meta["weight_shape"] == [32, 32, 3, 3]
    assert a.tensors["X"].shape == (128, 288) and a.tensors["bits"].shape == (128,)
    assert 32 < int(a.tensors["bits"].sum()) < 96


def test_flat_mean_weights_and_regulariser_alone_embeds_the_bits() -> None:
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert torch.equal(flat_mean_weights(w), ((w[0] + w[1]) / 2).reshape(-1))
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(32, 32, 3, 3) * 0.05)
    X, bits = torch.randn(128, 288), torch.randint(0, 2, (128,)).float()
    opt = torch.optim.Adam([weight], lr=1e-3)
    losses = []
    for _ in range(120):
        loss = embedding_loss(weight, X, bits)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] / 3
    assert (decode(weight, X) == bits.numpy()).all()


def test_training_embeds_and_verifies(marked, splits: Splits, plain: SplitNet) -> None:  # noqa: ANN001
    scheme, model, key, log = marked
    assert log.epochs[-1]["e_r"] < log.epochs[0]["e_r"] and log.epochs[-1]["ber"] < 0.15
    v = scheme.verify(ModuleSuspect(model, SHAPE), key, fpr=1e-3)
    assert v.decision and v.details["ber"] < 0.15 and v.queries == 0
    t = int(v.threshold)  # the largest error count whose exact binomial lower tail is <= fpr
    assert st.binom.cdf(t, 128, 0.5) <= 1e-3 < st.binom.cdf(t + 1, 128, 0.5)
    assert v.p_value == pytest.approx(st.binom.cdf(int(v.statistic), 128, 0.5))
    assert accuracy(model, splits.test) >= accuracy(plain, splits.test) - 15  # tiny budget: no collapse


def test_unmarked_and_other_keys_not_verified(marked, splits: Splits, plain: SplitNet) -> None:  # noqa: ANN001
    scheme, model, key, _ = marked
    assert not scheme.verify(ModuleSuspect(plain, SHAPE), key).decision
    decisions, pvals = [], []
    for i in range(20):
        k = scheme.make_key(bytes([i]) * 32, splits.owner, C, model=model)
        for m in (plain, model):
            v = scheme.verify(ModuleSuspect(m, SHAPE), k)
            decisions.append(v.decision)
            pvals.append(v.p_value)
    assert not any(decisions) and min(pvals) > 1e-3


def test_refuses_black_box_and_other_architectures(marked) -> None:  # noqa: ANN001
    scheme, model, key, _ = marked
    with pytest.raises(InputError, match="white-box"):
        scheme.verify(LabelsOnly(model, SHAPE), key)
    with pytest.raises(InputError, match="another architecture"):
        scheme.verify(ModuleSuspect(create_model("dsn_gtsrb", SHAPE, C), SHAPE), key)  # no features.0.3 there


def test_key_round_trip(marked, tmp_path) -> None:  # noqa: ANN001
    scheme, model, key, _ = marked
    save_key(tmp_path / "u.key", key)
    back = load_key(tmp_path / "u.key")
    assert back.scheme == "uchida" and back.meta == key.meta
    a, b = scheme.verify(ModuleSuspect(model, SHAPE), key), scheme.verify(ModuleSuspect(model, SHAPE), back)
    assert (a.statistic, a.p_value, a.decision) == (b.statistic, b.p_value, b.decision)


def test_bad_config_and_keys(splits: Splits, marked) -> None:  # noqa: ANN001
    _, _, key, _ = marked
    model = create_model("dsn_mnist", SHAPE, C)
    with pytest.raises(ConfigError, match="invalid"):
        Uchida({"bits": 0})
    with pytest.raises(ConfigError, match="invalid"):
        get_scheme("uchida", {"lambda": 0.01})
    with pytest.raises(ConfigError, match="do not fit"):  # the first conv has 1 x 3 x 3 = 9 averaged weights
        Uchida({"conv_index": 0}).make_key(OWNER, splits.owner, C, model=model)
    with pytest.raises(ConfigError, match="conv_index"):
        Uchida({"conv_index": 2}).make_key(OWNER, splits.owner, C, model=model)
    with pytest.raises(ConfigError, match="model="):
        Uchida().make_key(OWNER, splits.owner, C)
    with pytest.raises(ConfigError, match="scheme"):
        get_scheme("deepsigns-hidden").verify(ModuleSuspect(model, SHAPE), key)
    damaged = type(key)(key.scheme, dict(key.meta), {"X": key.tensors["X"], "bits": key.tensors["bits"][:5]})
    with pytest.raises(ConfigError, match="damaged"):
        Uchida().verify(ModuleSuspect(model, SHAPE), damaged)


def test_bits_chosen_after_the_fact_are_refused(marked, plain: SplitNet) -> None:  # noqa: ANN001
    """An owner who sets the key's bits to what an unrelated model decodes would get BER 0; verify
    re-derives the bits and the projection from the signature instead of trusting the stored copy."""
    from deepserial.errors import IntegrityError
    from deepserial.schemes.base import OwnershipKey

    scheme, _, key, _ = marked
    layer, X, _ = scheme._parts(key)
    fitted = decode(scheme._weight(plain, layer, X), X)
    forged = OwnershipKey(key.scheme, dict(key.meta), dict(key.tensors, bits=torch.from_numpy(fitted.astype("uint8"))))
    with pytest.raises(IntegrityError, match="bits is not what the key's signature derives"):
        scheme.verify(ModuleSuspect(plain, SHAPE), forged)
    forged_x = OwnershipKey(key.scheme, dict(key.meta), dict(key.tensors, X=key.tensors["X"] * 2))
    with pytest.raises(IntegrityError, match="X is not"):
        scheme.verify(ModuleSuspect(plain, SHAPE), forged_x)


def test_signed_key_with_a_swapped_signature_is_refused_by_verify_itself(
    splits: Splits, plain: SplitNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key that records an owner's provenance must carry that owner's signature: re-deriving the
    secrets from another signature is consistent, but the owner never signed it."""
    from conftest import VENDOR_TIME, fixed_identity

    from deepserial.errors import IdentityError
    from deepserial.schemes.base import OwnershipKey, Provenance

    scheme = Uchida()
    # a fixed owner key and time: a random one is a false positive on the plain model 9.3e-4 of the time
    monkeypatch.setenv("SOURCE_DATE_EPOCH", VENDOR_TIME)
    prov = Provenance.sign(fixed_identity(3), "owner", "model", scheme.name)
    signed = scheme.make_signed_key(prov, splits.owner, C, model=plain)
    assert not scheme.verify(ModuleSuspect(plain, SHAPE), signed).decision  # genuine key: runs, plain model lacks it
    other = scheme.make_key(b"someone else's signature", splits.owner, C, model=plain)
    forged = OwnershipKey(signed.scheme, dict(signed.meta, signature=b"someone else's signature".hex()), other.tensors)
    with pytest.raises(IdentityError):
        scheme.verify(ModuleSuspect(plain, SHAPE), forged)
