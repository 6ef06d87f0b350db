"""Trigger-set watermarks: new label, Zhang noise/content/unrelated, Adi (schemes/triggers.py and its users).

One module-scoped fixture trains an unmarked model and one marked model per scheme on 288 mnist5k
owner images (8 short epochs each); the settings below are larger key shares than the papers' so that
so little training embeds them. Everything else reuses those models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from deepserial import stats
from deepserial.artifacts import load_key, save_key
from deepserial.data import TensorData
from deepserial.data.loading import FASHION_MNIST_ENV
from deepserial.errors import ConfigError, DatasetError, IdentityError, InputError
from deepserial.identity import OwnerIdentity
from deepserial.nets import SplitNet, create_model
from deepserial.schemes.base import OwnershipKey, Provenance, Scheme, get_scheme
from deepserial.schemes.new_label import NewLabelConfig, expected_queries
from deepserial.schemes.triggers import UNLABELLED, make_trigger_loss, noise_negatives
from deepserial.schemes.zhang import glyph_mask
from deepserial.suspect import ModuleSuspect
from deepserial.training import Batch, TrainConfig, TrainLog, accuracy, fit, seed_everything, supervised_loss
from deepserial.workflow import DataSpec

SHAPE = (1, 28, 28)
C = 10
FPR = 1e-3
SIG = b"trigger-tests owner signature"
TRAIN = TrainConfig(epochs=8, batch_size=32, lr=3e-3, progress=False)
MEASURED = {"control_queries": 40, "verify_keys": 40, "verify_queries": 40}
CONFIGS: dict[str, dict] = {
    "new-label": {"alpha": 0.1, **MEASURED},
    "zhang-noise": {"alpha": 0.1, **MEASURED},
    "zhang-content": {"key_ratio": 0.3, **MEASURED},
    "zhang-unrelated": {"key_ratio": 0.3, **MEASURED},
    "adi": {"trigger_size": 20, "key_ratio": 0.3, "verify_queries": 20},
}
NAMES = list(CONFIGS)


@dataclass
class Marked:
    scheme: Scheme
    key: OwnershipKey
    model: SplitNet
    log: TrainLog


@dataclass
class World:
    owner: TensorData
    test: TensorData
    unmarked: SplitNet
    marked: dict[str, Marked]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        splits = DataSpec("mnist5k", 0, limit=600).load()
        seed_everything(0)
        unmarked = create_model("dsn_mnist", SHAPE, C)
        fit(unmarked, splits.owner, supervised_loss, TRAIN)
        marked = {}
        for name, conf in CONFIGS.items():
            scheme = get_scheme(name, conf)
            key = scheme.make_key(SIG, splits.owner, C)
            seed_everything(0)
            model = create_model("dsn_mnist", SHAPE, scheme.num_outputs(C))
            log = scheme.embed(model, splits.owner, key, TRAIN)
            marked[name] = Marked(scheme, key, model, log)
    finally:
        torch.set_num_threads(old)
    yield World(splits.owner, splits.test, unmarked, marked)


def suspect(model: nn.Module) -> ModuleSuspect:
    return ModuleSuspect(model, SHAPE)


def nearest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows, exactly (no matrix-product shortcut)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def exact_threshold(n: int, p0: float, fpr: float) -> int:
    """Smallest k with P[Bin(n, p0) >= k] <= fpr, in exact rational arithmetic."""
    p, q, a = Fraction(p0), 1 - Fraction(p0), Fraction(fpr)
    tail = Fraction(0)
    for k in range(n, -1, -1):
        tail += math.comb(n, k) * p**k * q ** (n - k)
        if tail > a:
            return k + 1
    return 0


# ----- keys --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_keys_are_deterministic_and_signature_dependent(world: World, name: str) -> None:
    scheme = get_scheme(name, CONFIGS[name])
    a, b = scheme.make_key(SIG, world.owner, C), scheme.make_key(SIG, world.owner, C)
    assert a.meta == b.meta and a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    other = scheme.make_key(b"another owner's signature", world.owner, C)
    assert not torch.equal(a.tensor("samples"), other.tensor("samples"))
    assert a.meta["signature"] == SIG.hex()


@pytest.mark.parametrize("name", NAMES)
def test_key_samples_shapes_ranges_and_labels(world: World, name: str) -> None:
    scheme = get_scheme(name, CONFIGS[name])
    key = scheme.make_key(SIG, world.owner, C)
    parts = scheme.parts(key)
    x, y, tx, ty = parts.samples, parts.labels, parts.train_samples, parts.train_labels
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == SHAPE and y.dtype == torch.int64 and len(x) == len(y)
    assert tuple(tx.shape[1:]) == SHAPE and len(tx) == len(ty)
    t = key.meta["target"]
    owner = world.owner.x.flatten(1)
    if name in ("new-label", "zhang-noise"):
        assert t == (C if name == "new-label" else t) and 0 <= t <= C
        assert key.meta["num_outputs"] == (C + 1 if name == "new-label" else C)
        assert len(tx) == round(CONFIGS[name]["alpha"] * len(world.owner))
        std = key.meta["perturbation_std"]
        assert std == pytest.approx(3.5e-3 * 255)  # the paper's beta on the 8-bit scale (docs/decisions.md)
        pattern = key.tensor("pattern")
        assert abs(float(pattern.std()) - 1.0) < 0.1
        # Every key sample is an owner image plus the same pattern; D1 and D2 do not overlap.
        idx_v = nearest((x - std * pattern).flatten(1), owner).min(1)
        idx_t = nearest((tx - std * pattern).flatten(1), owner).min(1)
        assert float(idx_v.values.max()) < 1e-3 and float(idx_t.values.max()) < 1e-3
        assert not set(idx_v.indices.tolist()) & set(idx_t.indices.tolist())
        if name == "zhang-noise":  # key samples are made from images of other classes than the target
            assert not (world.owner.y[idx_v.indices] == t).any()
        assert len(key.tensor("controls")) == CONFIGS[name]["control_queries"]
    elif name == "zhang-content":
        stamp = key.tensor("stamp").bool()
        assert len(key.meta["text"]) == 4 and key.meta["text"].isalpha()
        assert int(stamp.sum()) == int(glyph_mask(key.meta["text"]).sum())
        assert float(x.min()) >= 0 and float(x.max()) <= 1
        assert bool((x[:, :, stamp] == 1.0).all())
        # Outside the stamp every key sample is an owner image of another class than the target.
        near = nearest((x * ~stamp).flatten(1), (world.owner.x * ~stamp).flatten(1)).min(1)
        assert float(near.values.max()) < 1e-4 and not (world.owner.y[near.indices] == t).any()
    elif name == "zhang-unrelated":
        assert key.meta["unrelated"] == "fashion-mnist" and 0 <= key.meta["unrelated_class"] < 10
        assert key.meta["natural_rates"][t] <= 0.02  # a target that plain classifiers do not give this class
        assert float(x.min()) >= 0 and float(x.max()) <= 1
        assert nearest(x.flatten(1)[:5], owner).min() > 1.0  # not owner images
    else:
        assert len(x) == 20 and key.meta["trains_on_samples"] and "train_samples" not in key.tensors
        assert float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.flatten(1).std(1).min()) > 0.1
        assert int(y.min()) >= 0 and int(y.max()) < C and key.meta["p0"] == pytest.approx(1 / C)
    if name != "adi":
        assert bool((y == t).all()) and bool((ty == t).all())


# ----- the loss ----------------------------------------------------------------------------------------
class Recorder(nn.Module):
    """A tiny classifier that remembers the inputs of its last call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, C)
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = x.detach()
        return self.lin(x.flatten(1)[:, :4])


def test_loss_mixes_the_configured_share_of_keys_and_negatives() -> None:
    torch.manual_seed(0)
    key_x = torch.full((7, 1, 2, 2), 7.0)  # recognisable: clean inputs are in [0, 1]
    loss_fn = make_trigger_loss(key_x, torch.full((7,), 3), 0.1, noise_negatives(0.5), negative_ratio=2.0)
    net, n, keys, negs = Recorder(), 50, 0, 0
    for _ in range(400):
        batch = Batch(torch.rand(n, 1, 2, 2), torch.randint(0, C, (n,)), torch.arange(n))
        out = loss_fn(net, batch)
        assert torch.isfinite(out.loss) and out.loss.requires_grad
        seen = net.last
        assert torch.equal(seen[:n], batch.x)  # the clean batch comes first, untouched
        m = int((seen == 7.0).flatten(1).all(1).sum())
        keys += m
        negs += out.forward_samples - n - m
        assert out.forward_samples == len(seen)
    assert keys / (400 * n) == pytest.approx(0.1, abs=0.01)
    assert negs / keys == pytest.approx(2.0, rel=0.1)


def test_unlabelled_negatives_are_trained_towards_uniform() -> None:
    def blank(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.full_like(y, UNLABELLED)

    torch.manual_seed(0)
    loss_fn = make_trigger_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), 1.0, blank, 1.0)
    net = Recorder()
    batch = Batch(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 3]), torch.arange(4))
    out = loss_fn(net, batch)
    assert out.forward_samples == 12  # share 1: 4 clean + 4 key samples (label 0) + 4 negatives
    logp = torch.log_softmax(net.lin(net.last.flatten(1)[:, :4]), 1).detach()
    y = torch.tensor([0, 1, 2, 3, 0, 0, 0, 0])
    want = torch.cat([-logp[:8].gather(1, y[:, None]).squeeze(1), -logp[8:].mean(1)]).mean()
    assert float(out.loss.detach()) == pytest.approx(float(want), rel=1e-5)


def test_training_loss_decreases_and_keys_are_learned(world: World) -> None:
    for name, m in world.marked.items():
        first, last = m.log.epochs[0], m.log.epochs[-1]
        assert last["loss"] < first["loss"], name
        assert last["key_train_acc"] > 80.0, name
        assert accuracy(m.model.eval(), world.test) > 70.0, name


# ----- verification ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_marked_model_verifies_its_own_key(world: World, name: str) -> None:
    m = world.marked[name]
    s = suspect(m.model)
    v = m.scheme.verify(s, m.key, fpr=FPR)
    assert v.decision and v.p_value <= FPR and v.queries == s.queries > 0
    d = v.details
    if name == "adi":  # exact null: Binomial(n, 1/C)
        assert v.threshold == exact_threshold(d["budget"], 1 / C, FPR)
        assert v.p_value == pytest.approx(stats.binom_tail(int(v.statistic), d["asked"], 1 / C))
        assert v.queries == d["asked"] < d["budget"]  # stopped as soon as decided
    else:  # measured null: the bound from the controls, tested at fpr / 2
        assert d["control_queries"] == CONFIGS[name]["control_queries"]
        assert d["p0_bound"] == pytest.approx(stats.binom_upper(d["control_hits"], d["control_queries"], 1 - FPR / 2))
        assert v.threshold == exact_threshold(d["budget"], d["p0_bound"], FPR / 2)
        assert v.queries == d["asked"] + d["control_queries"]
        assert d["queries_to_first_match"] >= 1
        assert v.p_value == pytest.approx(
            stats.controlled_p_value(int(v.statistic), d["asked"], d["control_hits"], d["control_queries"])
        )


@pytest.mark.parametrize("name", NAMES)
def test_unmarked_model_and_models_with_other_keys_are_not_verified(world: World, name: str) -> None:
    m = world.marked[name]
    keys = [m.key] + [m.scheme.make_key(f"random key {i}".encode(), world.owner, C) for i in range(6)]
    # An unmarked model has C outputs; for the new label give it a C+1-th that it never answers.
    plain = _with_extra_output(world.unmarked) if name == "new-label" else world.unmarked
    for key in keys:
        v = m.scheme.verify(suspect(plain), key, fpr=FPR)
        assert not v.decision and v.p_value > FPR
    for key in keys[1:]:
        if name == "zhang-unrelated" and key.meta["target"] == m.key.meta["target"]:
            # Two keys with the same target differ only in the unrelated class, and a model that
            # learned "sandals are 3" also calls sneakers 3: the scheme's small key space (about 50
            # pairs) cannot separate such keys (docs/decisions.md).
            continue
        v = m.scheme.verify(suspect(m.model), key, fpr=FPR)
        assert not v.decision and v.p_value > FPR, key.meta["signature"]


def _with_extra_output(model: SplitNet) -> SplitNet:
    """``model`` with one more output whose logit is far below all others (a C+1-output unmarked model)."""
    cls = model.classifier
    new = nn.Linear(cls.in_features, cls.out_features + 1)
    with torch.no_grad():
        new.weight[:-1] = cls.weight
        new.bias[:-1] = cls.bias
        new.weight[-1] = 0
        new.bias[-1] = -1e4
    return SplitNet(model.features, new, model.feature_dim).eval()


def test_new_label_c_output_suspect_is_never_verified_and_costs_nothing(world: World) -> None:
    m = world.marked["new-label"]
    s = suspect(world.unmarked)
    v = m.scheme.verify(s, m.key, fpr=0.5)
    assert not v.decision and v.p_value == 1.0 and v.queries == 0 == s.queries
    assert v.details["queries_to_first_delta"] is None


def test_new_label_reports_queries_to_first_delta(world: World) -> None:
    m = world.marked["new-label"]
    v = m.scheme.verify(suspect(m.model), m.key)
    q = v.details["queries_to_first_delta"]
    assert isinstance(q, int) and 1 <= q <= 3
    assert v.details["expected_queries"] == pytest.approx(1 / v.details["hit_rate"])
    # An unmarked C+1-output model never answers Delta: all key queries asked, no control spent.
    v = m.scheme.verify(suspect(_with_extra_output(world.unmarked)), m.key)
    assert v.details["queries_to_first_delta"] is None and v.queries == v.details["budget"]


def test_expected_queries_formula() -> None:
    assert expected_queries(0.8) == pytest.approx(1.25) and expected_queries(0.5) == pytest.approx(2.0)
    for p, n in ((0.8, 5), (0.3, 10), (1.0, 3)):
        direct = sum((i + 1) * (1 - p) ** i * p for i in range(n))
        assert expected_queries(p, n) == pytest.approx(direct)
        assert expected_queries(p, n) <= 1 / p + 1e-12
    assert expected_queries(0.0) == math.inf
    with pytest.raises(ConfigError):
        expected_queries(1.5)


def test_query_batch_and_budget(world: World) -> None:
    m = world.marked["adi"]
    scheme = get_scheme("adi", CONFIGS["adi"] | {"query_batch": 5})
    v = scheme.verify(suspect(m.model), m.key)
    assert v.decision and v.queries % 5 == 0
    with pytest.raises(InputError, match="budget"):
        scheme.verify(ModuleSuspect(m.model, SHAPE, budget=3), m.key)


# ----- files and provenance ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["new-label", "adi", "zhang-content"])
def test_key_save_load_round_trip(world: World, name: str, tmp_path) -> None:  # noqa: ANN001
    m = world.marked[name]
    save_key(tmp_path / "k.key", m.key)
    back = load_key(tmp_path / "k.key")
    assert back.scheme == name and back.meta == m.key.meta
    assert back.tensors.keys() == m.key.tensors.keys()
    assert all(torch.equal(back.tensors[k], m.key.tensors[k]) for k in back.tensors)
    a, b = m.scheme.verify(suspect(m.model), m.key), m.scheme.verify(suspect(m.model), back)
    assert (a.decision, a.statistic, a.queries, a.p_value) == (b.decision, b.statistic, b.queries, b.p_value)


def test_provenance_is_recorded_and_checked(world: World) -> None:
    owner = OwnerIdentity.generate()
    prov = Provenance.sign(owner, "owner", "acme", "adi")
    scheme = get_scheme("adi", CONFIGS["adi"])
    key = scheme.make_signed_key(prov, world.owner, C)
    assert key.meta["verifier"] == prov.verifier.to_dict() and "PUBLIC KEY" in key.meta["owner_public_key"]
    assert key.meta["signature"] == prov.signature.hex() and scheme.check_provenance(key)
    assert torch.equal(key.tensor("samples"), scheme.make_key(prov.signature, world.owner, C).tensor("samples"))
    key.meta["verifier"] = dict(prov.verifier.to_dict(), customer="mallory")
    with pytest.raises(IdentityError):
        scheme.verify(suspect(world.unmarked), key)


# ----- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "conf"),
    [
        ("new-label", {"alpha": 0}),
        ("new-label", {"beta": -1.0}),
        ("new-label", {"control_queries": 0}),
        ("zhang-noise", {"no_such_setting": 1}),
        ("zhang-content", {"key_ratio": 2.0}),
        ("zhang-unrelated", {"verify_keys": 0}),
        ("adi", {"trigger_size": 0}),
        ("adi", {"query_batch": 0}),
    ],
)
def test_bad_config_raises_config_error(name: str, conf: dict) -> None:
    with pytest.raises(ConfigError):
        get_scheme(name, conf)


def test_bad_keys_suspects_and_models_raise_clear_errors(world: World) -> None:
    nl, adi = world.marked["new-label"], world.marked["adi"]
    with pytest.raises(ConfigError, match="for scheme"):
        nl.scheme.verify(suspect(nl.model), adi.key)
    with pytest.raises(ConfigError, match="lacks tensor"):
        broken = OwnershipKey("adi", dict(adi.key.meta), {k: v for k, v in adi.key.tensors.items() if k != "labels"})
        adi.scheme.verify(suspect(adi.model), broken)
    with pytest.raises(InputError, match="outputs"):
        nl.scheme.verify(suspect(create_model("dsn_mnist", SHAPE, C + 2)), nl.key)
    with pytest.raises(InputError, match="outputs"):
        adi.scheme.verify(suspect(nl.model), adi.key)  # a C+1-output model for a C-class key
    with pytest.raises(InputError):
        adi.scheme.verify(ModuleSuspect(create_model("dsn_mnist", (1, 32, 32), C), (1, 32, 32)), adi.key)
    with pytest.raises(ConfigError, match="outputs"):
        nl.scheme.embed(create_model("dsn_mnist", SHAPE, C), world.owner, nl.key, TRAIN)
    with pytest.raises(ConfigError, match="false-positive"):
        adi.scheme.verify(suspect(adi.model), adi.key, fpr=0.0)
    with pytest.raises(ConfigError, match="text"):
        get_scheme("zhang-content", {"text": "T3ST"})
    with pytest.raises(ConfigError, match="does not fit"):
        get_scheme("zhang-content", {"text": "ABCDEFGH"}).make_key(SIG, world.owner, C)
    with pytest.raises(ConfigError, match="needs"):
        get_scheme("new-label", {"verify_keys": 10_000}).make_key(SIG, world.owner, C)
    with pytest.raises(IdentityError):
        get_scheme("adi").make_key(b"", world.owner, C)


def test_unrelated_data_set_missing_says_what_to_install(world: World, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        get_scheme("zhang-unrelated").make_key(SIG, world.owner, C)


# ----- statistics --------------------------------------------------------------------------------------
def test_binom_upper_is_the_exact_clopper_pearson_bound() -> None:
    from scipy.stats import binom

    for k, n, conf in ((0, 20, 0.9995), (3, 20, 0.99), (10, 40, 0.95)):
        ub = stats.binom_upper(k, n, conf)
        assert binom.cdf(k, n, ub) == pytest.approx(1 - conf, rel=1e-6)
    assert stats.binom_upper(5, 5, 0.9) == 1.0
    assert stats.binom_upper(0, 20, 1 - 5e-4) == pytest.approx(1 - (5e-4) ** (1 / 20))


def test_controlled_test_keeps_its_false_positive_rate() -> None:
    """Under the null (key and control queries with the same rate) the level-a test rejects at most a."""
    rng = np.random.default_rng(0)
    level, trials = 0.05, 1500
    for p in (0.02, 0.3, 0.7):
        k = rng.binomial(30, p, trials)
        h = rng.binomial(20, p, trials)
        rejected = sum(stats.controlled_level_rejects(int(a), 30, int(b), 20, level) for a, b in zip(k, h, strict=True))
        assert rejected / trials <= level
    # The p-value is the smallest level that rejects.
    for k, h in ((30, 0), (20, 2), (12, 0)):
        p = stats.controlled_p_value(k, 30, h, 20)
        assert stats.controlled_level_rejects(k, 30, h, 20, min(1.0, p * 1.001))
        assert not stats.controlled_level_rejects(k, 30, h, 20, p * 0.999)
    assert stats.controlled_p_value(0, 30, 0, 20) == 1.0 and stats.controlled_p_value(20, 20, 20, 20) == 1.0


def test_new_label_paper_settings() -> None:
    cfg = NewLabelConfig()
    assert (cfg.alpha, cfg.beta) == (0.01, 3.5e-3)
    assert (NewLabelConfig.cifar().alpha, NewLabelConfig.cifar().beta) == (0.01, 0.01)
    assert get_scheme("new-label").num_outputs(10) == 11 and get_scheme("adi").num_outputs(10) == 10
