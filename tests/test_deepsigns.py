"""Tests of DeepSigns (deepserial.schemes.deepsigns): hidden-layer (white-box BER) and output-layer
(black-box, Eq. 5) watermarks on mnist5k limited to 600 images, with short real trainings."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy import stats as st

from deepserial import stats
from deepserial.artifacts import load_key, save_key
from deepserial.data import Splits
from deepserial.errors import ConfigError, InputError
from deepserial.nets import SplitNet, create_model
from deepserial.schemes.base import get_scheme
from deepserial.schemes.deepsigns import (
    ActivationDensity,
    DeepSignsHidden,
    DeepSignsOutput,
    eq5_mismatch_threshold,
    hidden_loss,
)
from deepserial.suspect import ModuleSuspect, QueryBudgetError
from deepserial.training import TrainConfig, accuracy, fit, supervised_loss
from deepserial.workflow import DataSpec

SHAPE = (1, 28, 28)
C = 10
QUICK = TrainConfig(epochs=3, batch_size=32, progress=False)
OWNER = b"deepsigns-test-owner-signature"
OTHER_SIGNATURES = [bytes([i]) * 32 for i in range(20)]
SMALL_OUTPUT = {"key_length": 10, "candidate_factor": 5}  # K' = 50 candidates: trainable in seconds


class LabelsOnly(ModuleSuspect):
    """A black-box suspect: labels through predict(), no module."""

    @property
    def module(self) -> None:  # type: ignore[override]
        return None


def trained(splits: Splits, seed: int) -> SplitNet:
    torch.manual_seed(seed)
    model = create_model("dsn_mnist", SHAPE, C)
    fit(model, splits.owner, supervised_loss, TrainConfig(epochs=3, batch_size=32, progress=False, seed=seed))
    return model


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
    return trained(splits, 0)


@pytest.fixture(scope="module")
def plain2(splits: Splits) -> SplitNet:
    return trained(splits, 1)


@pytest.fixture(scope="module")
def hidden(splits: Splits):  # noqa: ANN201
    scheme = DeepSignsHidden()
    torch.manual_seed(0)
    model = create_model("dsn_mnist", SHAPE, C)
    key = scheme.make_key(OWNER, splits.owner, C, model=model)
    log = scheme.embed(model, splits.owner, key, QUICK)
    return scheme, model, key, log


@pytest.fixture(scope="module")
def output(splits: Splits, plain: SplitNet):  # noqa: ANN201
    scheme = DeepSignsOutput(SMALL_OUTPUT)
    model = copy.deepcopy(plain)
    key = scheme.make_key(OWNER, splits.owner, C, model=model)
    log = scheme.embed(model, splits.owner, key, TrainConfig(epochs=10, batch_size=32, progress=False))
    return scheme, model, key, log


# ----- hidden layer --------------------------------------------------------------------------------
def test_hidden_key_is_deterministic_and_signature_dependent(splits: Splits) -> None:
    scheme = DeepSignsHidden()
    model = create_model("dsn_mnist", SHAPE, C)
    a = scheme.make_key(OWNER, splits.owner, C, model=model)
    b = scheme.make_key(OWNER, splits.owner, C, model=model)
    other = scheme.make_key(b"another owner", splits.owner, C, model=model)
    assert a.meta == b.meta and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.tensors["A"].shape == (model.feature_dim, 32) and a.tensors["bits"].shape == (1, 32)
    assert not torch.equal(a.tensors["A"], other.tensors["A"])
    assert not torch.equal(a.tensors["bits"], other.tensors["bits"])
    cls = int(a.tensors["classes"][0])
    assert len(a.tensors["x"]) == 20 and bool((a.tensors["key_class"] == cls).all())  # max(1%, 20) images
    assert 0 < int(a.tensors["bits"].sum()) < 32


def test_hidden_loss_terms() -> None:
    torch.manual_seed(0)
    feats = torch.rand(12, 6)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 1, 0])
    A, bits = torch.randn(6, 5), torch.tensor([[1.0, 0, 1, 1, 0]])
    loss1, loss2, present = hidden_loss(feats, y, torch.tensor([2]), A, bits)
    mu = feats[y == 2].mean(0)
    assert present == 1
    assert float(loss1) == pytest.approx(float((feats[y == 2] - mu).pow(2).sum(1).mean()))
    bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(mu @ A), bits[0], reduction="sum")
    assert float(loss2) == pytest.approx(float(bce), rel=1e-5)
    sep1, _, _ = hidden_loss(feats, y, torch.tensor([2]), A, bits, separation=1.0)
    assert torch.isfinite(sep1) and float(sep1) < float(loss1)  # separation is subtracted
    zero1, zero2, none = hidden_loss(feats, y, torch.tensor([5]), A, bits)  # class absent from the batch
    assert none == 0 and float(zero1) == 0 and float(zero2) == 0


def test_hidden_embedding_decreases_loss_and_verifies(hidden, splits: Splits, plain: SplitNet) -> None:  # noqa: ANN001
    scheme, model, key, log = hidden
    first, last = log.epochs[0], log.epochs[-1]
    assert all(np.isfinite(e[k]) for e in log.epochs for k in ("loss", "loss1", "loss2"))
    assert last["loss2"] < first["loss2"] and last["key_ber"] == 0.0
    suspect = ModuleSuspect(model, SHAPE)
    v = scheme.verify(suspect, key, fpr=1e-3)
    assert v.decision and v.statistic == 0 and v.details["ber"] == 0.0
    assert v.queries == len(key.tensors["x"]) == suspect.queries
    assert v.p_value == pytest.approx(2.0**-32)
    # threshold: the largest error count whose exact binomial lower tail is <= fpr
    t = int(v.threshold)
    assert st.binom.cdf(t, 32, 0.5) <= 1e-3 < st.binom.cdf(t + 1, 32, 0.5)
    assert accuracy(model, splits.test) >= accuracy(plain, splits.test) - 15  # tiny budget: no collapse


def test_hidden_unmarked_and_other_keys_not_verified(hidden, splits: Splits, plain: SplitNet) -> None:  # noqa: ANN001
    scheme, model, key, _ = hidden
    assert not scheme.verify(ModuleSuspect(plain, SHAPE), key).decision
    decisions, pvals = [], []
    for sig in OTHER_SIGNATURES:
        k = scheme.make_key(sig, splits.owner, C, model=model)
        for m in (plain, model):
            v = scheme.verify(ModuleSuspect(m, SHAPE), k, fpr=1e-3)
            decisions.append(v.decision)
            pvals.append(v.p_value)
    assert not any(decisions)
    assert min(pvals) > 1e-3


def test_hidden_refuses_black_box_and_mismatched_models(hidden) -> None:  # noqa: ANN001
    scheme, model, key, _ = hidden
    with pytest.raises(InputError, match="white-box"):
        scheme.verify(LabelsOnly(model, SHAPE), key)
    other_arch = create_model("dsn_gtsrb", SHAPE, C)  # penultimate layer of 512, not 120
    with pytest.raises(InputError, match="features"):
        scheme.verify(ModuleSuspect(other_arch, SHAPE), key)
    with pytest.raises(InputError, match="shape"):
        scheme.verify(ModuleSuspect(create_model("dsn_mnist", (1, 32, 32), C), (1, 32, 32)), key)
    with pytest.raises(QueryBudgetError):
        scheme.verify(ModuleSuspect(model, SHAPE, budget=5), key)


def test_hidden_key_round_trip(hidden, tmp_path) -> None:  # noqa: ANN001
    scheme, model, key, _ = hidden
    save_key(tmp_path / "k.key", key)
    back = load_key(tmp_path / "k.key")
    assert back.scheme == "deepsigns-hidden" and back.meta == key.meta
    a, b = scheme.verify(ModuleSuspect(model, SHAPE), key), scheme.verify(ModuleSuspect(model, SHAPE), back)
    assert (a.statistic, a.p_value, a.decision) == (b.statistic, b.p_value, b.decision)


def test_hidden_bad_config(splits: Splits, hidden) -> None:  # noqa: ANN001
    _, _, key, _ = hidden
    with pytest.raises(ConfigError, match="bits"):
        DeepSignsHidden({"bits": 0})
    with pytest.raises(ConfigError, match="invalid"):
        get_scheme("deepsigns-hidden", {"lambda": 0.1})
    with pytest.raises(ConfigError, match="classes"):
        DeepSignsHidden({"classes": 11}).make_key(OWNER, splits.owner, C, model=create_model("dsn_mnist", SHAPE, C))
    with pytest.raises(ConfigError, match="model="):
        DeepSignsHidden().make_key(OWNER, splits.owner, C)
    with pytest.raises(ConfigError, match="scheme"):
        get_scheme("uchida").verify(ModuleSuspect(create_model("dsn_mnist", SHAPE, C), SHAPE), key)
    damaged = type(key)(key.scheme, dict(key.meta), dict(key.tensors, bits=key.tensors["bits"][:, :5]))
    with pytest.raises(ConfigError, match="damaged"):
        DeepSignsHidden().verify(ModuleSuspect(create_model("dsn_mnist", SHAPE, C), SHAPE), damaged)


# ----- output layer --------------------------------------------------------------------------------
@pytest.mark.parametrize(("K", "classes", "table4"), [(20, 10, 13), (30, 10, 21), (20, 1000, 19), (30, 1000, 29)])
def test_eq5_thresholds_match_table4_and_exact_binomial(K: int, classes: int, table4: int) -> None:
    theta = eq5_mismatch_threshold(K, classes, 0.999)
    assert theta == table4
    matches_needed = K - theta + 1  # detected iff mismatches < theta iff matches >= K - theta + 1
    assert st.binom.sf(matches_needed - 1, K, 1 / classes) <= 1e-3 < st.binom.sf(matches_needed - 2, K, 1 / classes)


def test_output_key_candidates_deterministic_low_density(splits: Splits, plain: SplitNet) -> None:
    scheme = DeepSignsOutput(SMALL_OUTPUT)
    a = scheme.make_key(OWNER, splits.owner, C, model=plain)
    b = scheme.make_key(OWNER, splits.owner, C, model=plain)
    other = scheme.make_key(b"another owner", splits.owner, C, model=plain)
    assert torch.equal(a.tensors["candidates_x"], b.tensors["candidates_x"])
    assert torch.equal(a.tensors["candidates_y"], b.tensors["candidates_y"])
    assert not torch.equal(a.tensors["candidates_x"], other.tensors["candidates_x"])
    assert a.tensors["candidates_x"].shape == (50, *SHAPE) and not a.meta["finalised"]
    x = a.tensors["candidates_x"]
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    with torch.no_grad():
        train_f, cand_f = plain.features(splits.owner.x), plain.features(x)
    density = ActivationDensity(train_f, 8, 10)
    assert bool((density.neighbours(cand_f) < 1).all())  # no training activation within epsilon
    assert float(density.neighbours(train_f).float().median()) >= 10  # typical training point: >= 10


def test_output_embedding_verifies_and_selection_is_algorithm2(
    output, plain: SplitNet, plain2: SplitNet, splits: Splits
) -> None:  # noqa: ANN001
    scheme, model, key, log = output
    assert key.meta["finalised"] and set(key.tensors) == {"x", "y"} and len(key.tensors["y"]) == 10
    # the fine-tuning taught the candidates far beyond chance, and kept the task
    assert key.meta["marked_right"] >= 25 and log.epochs[-1]["candidate_acc"] > log.epochs[0]["candidate_acc"]
    assert accuracy(model, splits.test) >= accuracy(plain, splits.test) - 1.5
    x, y = key.tensors["x"], key.tensors["y"]
    with torch.no_grad():
        assert bool((model(x).argmax(1) == y).all()) and bool((plain(x).argmax(1) != y).all())
    v = scheme.verify(LabelsOnly(model, SHAPE), key, fpr=1e-3)  # black-box: labels only
    assert v.decision and v.statistic == 0 and v.queries == 10
    assert v.threshold == eq5_mismatch_threshold(10, C, 0.999, chance=1 / 9)
    assert v.p_value == pytest.approx((1 / 9) ** 10)
    for m in (plain, plain2):
        assert not scheme.verify(ModuleSuspect(m, SHAPE), key).decision


def test_output_random_keys_not_verified(output, splits: Splits, plain: SplitNet, plain2: SplitNet) -> None:  # noqa: ANN001
    _, marked, _, _ = output
    scheme = DeepSignsOutput(SMALL_OUTPUT)
    hits, pvals = 0, []
    for sig in OTHER_SIGNATURES:
        key = scheme.as_if_embedded(scheme.make_key(sig, splits.owner, C, model=plain))
        for m in (plain2, marked):
            v = scheme.verify(ModuleSuspect(m, SHAPE), key)
            hits += int(v.decision)
            pvals.append(v.p_value)
    assert hits == 0 and min(pvals) > 1e-3


def test_output_guards(output, splits: Splits, plain: SplitNet) -> None:  # noqa: ANN001
    scheme, marked, key, _ = output
    fresh = scheme.make_key(OWNER, splits.owner, C, model=plain)
    with pytest.raises(ConfigError, match="embed"):
        scheme.verify(ModuleSuspect(plain, SHAPE), fresh)
    with pytest.raises(ConfigError, match="weights differ"):
        scheme.embed(marked, splits.owner, fresh, QUICK)
    with pytest.raises(ConfigError, match="chance"):  # a model that learnt nothing: Algorithm 2 alone "succeeds"
        scheme.finalise(fresh, fresh.tensors["unmarked_pred"])
    with pytest.raises(ConfigError, match="trained model"):
        scheme.make_key(OWNER, splits.owner, C, model=create_model("dsn_mnist", SHAPE, C))
    with pytest.raises(ConfigError, match="model="):
        scheme.make_key(OWNER, splits.owner, C)
    with pytest.raises(InputError, match="classes"):
        scheme.verify(ModuleSuspect(create_model("dsn_mnist", SHAPE, C + 1), SHAPE), key)
    with pytest.raises(ConfigError, match="invalid"):
        DeepSignsOutput({"key_length": 0})
    with pytest.raises(ConfigError, match="invalid"):
        DeepSignsOutput({"null": "whatever"})


def test_output_key_round_trip(output, tmp_path) -> None:  # noqa: ANN001
    scheme, model, key, _ = output
    save_key(tmp_path / "k.key", key)
    back = load_key(tmp_path / "k.key")
    assert back.meta == key.meta
    a, b = scheme.verify(ModuleSuspect(model, SHAPE), key), scheme.verify(ModuleSuspect(model, SHAPE), back)
    assert (a.statistic, a.p_value, a.decision) == (b.statistic, b.p_value, b.decision)


def test_output_paper_null_is_eq4(output) -> None:  # noqa: ANN001
    _, model, key, _ = output
    v = DeepSignsOutput({"null": "paper"}).verify(ModuleSuspect(model, SHAPE), key)
    assert v.details["chance"] == pytest.approx(0.1) and v.threshold == eq5_mismatch_threshold(10, C, 0.999)
    assert v.p_value == pytest.approx(stats.binom_tail(10, 10, 0.1))
