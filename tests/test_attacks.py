"""Attacks on a tiny model: each checks the attack's effect and what its log accounts for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepserial.attacks.base import AttackBudget, attacker_share, get_attack
from deepserial.attacks.pruning import channel_activity, last_conv, zero_fraction
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet, create_model
from deepserial.training import TrainConfig, accuracy, fit, supervised_loss

SHAPE = (1, 12, 12)
C = 4


def _data(n: int, seed: int) -> TensorData:
    """A learnable toy task: the class is the quadrant holding a bright square."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    x = torch.rand(n, *SHAPE, generator=g) * 0.2
    for i, c in enumerate(y.tolist()):
        r, k = divmod(c, 2)
        x[i, 0, r * 6 + 1 : r * 6 + 5, k * 6 + 1 : k * 6 + 5] = 1.0
    return TensorData(x, y)


@pytest.fixture(scope="module")
def victim() -> SplitNet:
    torch.manual_seed(0)
    m = create_model("dsn_mnist", SHAPE, C)
    fit(m, _data(400, 0), supervised_loss, TrainConfig(epochs=3, batch_size=32, progress=False))
    return m


@pytest.fixture(scope="module")
def attacker() -> TensorData:
    return _data(200, 1)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> dict[str, bool]:
    sb = b.state_dict()
    return {k: torch.equal(v, sb[k]) for k, v in a.state_dict().items()}


def test_budget_and_share_validation(attacker: TensorData) -> None:
    with pytest.raises(ConfigError, match="epochs"):
        AttackBudget.parse(epochs=-1)
    with pytest.raises(ConfigError, match="optimizer"):
        AttackBudget.parse(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="unknown attack"):
        get_attack("nope")
    with pytest.raises(ConfigError, match="mode"):
        get_attack("fine-tuning", {"mode": "XX"})
    assert len(attacker_share(attacker, 0.1, 1000)) == 100
    assert torch.equal(attacker_share(attacker, 0.1, 1000, seed=3).x, attacker_share(attacker, 0.1, 1000, seed=3).x)
    with pytest.raises(ConfigError, match="holds 200 samples"):
        attacker_share(attacker, 0.4, 1000)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        attacker_share(attacker, 0.0, 1000)


@pytest.mark.parametrize(
    ("mode", "features_change", "head_reset"),
    [("FTAL", True, False), ("FTLL", False, False), ("RTLL", False, True), ("RTAL", True, True)],
)
def test_fine_tuning_variants_train_what_they_name_and_log_the_budget(
    victim: SplitNet, attacker: TensorData, mode: str, features_change: bool, head_reset: bool
) -> None:
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    budget = AttackBudget(epochs=2, batch_size=50, lr=1e-3)
    model, log = get_attack("fine-tuning", {"mode": mode}).run(victim, attacker, budget)
    assert all(torch.equal(v, before[k]) for k, v in victim.state_dict().items())  # the victim is untouched
    same = _same(model, victim)
    assert not same["classifier.weight"]
    assert (not all(v for k, v in same.items() if k.startswith("features"))) == features_change
    assert log.epochs == 2 and log.samples == 200 and log.forward_samples == 400 and len(log.curve) == 2
    assert log.wall_s > 0 and log.budget["epochs"] == 2 and log.budget["config"]["mode"] == mode
    if head_reset:  # re-initialised: far from the victim's head, not a small step away
        assert (model.classifier.weight - victim.classifier.weight).abs().mean() > 1e-2
    assert not model.training


def test_from_scratch_reinitialises_then_learns(victim: SplitNet, attacker: TensorData) -> None:
    test = _data(300, 2)
    fresh, _ = get_attack("from-scratch").run(victim, attacker, AttackBudget(epochs=0))
    assert not any(_same(fresh, victim).values())
    trained, log = get_attack("from-scratch").run(victim, attacker, AttackBudget(epochs=4, batch_size=20))
    assert log.epochs == 4 and accuracy(trained, test) > 0.9


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_global_l1_pruning_zeroes_the_stated_fraction(victim: SplitNet, attacker: TensorData, rate: float) -> None:
    assert zero_fraction(victim) < 0.01
    model, log = get_attack("pruning", {"rate": rate}).run(victim, attacker, AttackBudget(epochs=0))
    assert zero_fraction(model) == pytest.approx(rate, abs=1e-3)
    assert log.details["zero_weight_fraction"] == pytest.approx(rate, abs=1e-3) and log.epochs == 0
    # the smallest weights went: every surviving weight is at least as large as every pruned one
    w_v = torch.cat([m.weight.flatten() for m in victim.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)])
    w_m = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)])
    assert w_v[w_m == 0].abs().max() <= w_v[w_m != 0].abs().min()
    assert not [k for k in model.state_dict() if k.endswith("_orig") or k.endswith("_mask")]  # made permanent


def test_pruning_with_fine_tuning_keeps_pruned_weights_at_zero(victim: SplitNet, attacker: TensorData) -> None:
    model, log = get_attack("pruning", {"rate": 0.8}).run(victim, attacker, AttackBudget(epochs=2, batch_size=50))
    assert log.epochs == 2 and zero_fraction(model) == pytest.approx(0.8, abs=1e-3)


def test_neuron_pruning_removes_the_least_active_channels(victim: SplitNet, attacker: TensorData) -> None:
    conv = last_conv(victim)
    activity = channel_activity(victim, conv, attacker)
    model, log = get_attack("pruning", {"method": "neuron", "rate": 0.25}).run(victim, attacker, AttackBudget(epochs=0))
    dropped = log.details["pruned_channels"]
    assert len(dropped) == round(0.25 * conv.out_channels)
    assert set(dropped) == set(torch.argsort(activity)[: len(dropped)].tolist())
    pruned_conv = last_conv(model)
    assert all(pruned_conv.weight[c].abs().sum() == 0 and pruned_conv.bias[c] == 0 for c in dropped)
    kept = [c for c in range(conv.out_channels) if c not in dropped]
    assert torch.equal(pruned_conv.weight[kept], conv.weight[kept])
    with pytest.raises(ConfigError, match="activation"):
        get_attack("pruning", {"method": "neuron"}).run(victim, TensorData(attacker.x[:0], attacker.y[:0]))


# ----- Neural Cleanse ---------------------------------------------------------------------------------
def test_anomaly_index_is_the_mad_score() -> None:
    from deepserial.attacks.neural_cleanse import anomaly_indices

    norms = np.array([10.0, 50.0, 55.0, 60.0, 65.0, 70.0])
    idx, med, mad = anomaly_indices(norms)
    assert med == 57.5 and mad == 7.5  # |dev| = 47.5, 7.5, 2.5, 2.5, 7.5, 12.5
    assert idx[0] == pytest.approx(47.5 / (1.4826 * 7.5))


@pytest.fixture(scope="module")
def backdoored():  # noqa: ANN201
    """A 10-class mnist5k model with a planted backdoor: a white 4 x 4 square at (2, 2) means class 0."""
    from deepserial.workflow import DataSpec

    s = DataSpec("mnist5k", 0, limit=1000).load()
    g = torch.Generator().manual_seed(0)
    x, y = s.owner.x.clone(), s.owner.y.clone()
    idx = torch.randperm(len(x), generator=g)[: int(0.15 * len(x))]
    x[idx, 0, 2:6, 2:6] = 1.0
    y[idx] = 0
    torch.manual_seed(0)
    m = create_model("dsn_mnist", (1, 28, 28), 10)
    fit(m, TensorData(x, y), supervised_loss, TrainConfig(epochs=10, batch_size=32, progress=False))
    stamped = s.test.x.clone()
    stamped[:, 0, 2:6, 2:6] = 1.0
    return m, s, stamped


def test_neural_cleanse_flags_a_planted_backdoor_and_unlearning_removes_it(backdoored) -> None:  # noqa: ANN001
    from deepserial.attacks.neural_cleanse import scan

    model, s, stamped = backdoored
    asr = float((model(stamped).argmax(1) == 0).float().mean())
    assert asr > 0.9  # the backdoor took
    cleansed, log = get_attack("neural-cleanse", {"images_per_label": 8}).run(
        model, s.attacker, AttackBudget(epochs=3, batch_size=32)
    )
    rep = log.details["scan"]
    assert rep["flagged"] == [0] and rep["max_anomaly_index"] > 2
    assert rep["norms"][0] < 0.25 * rep["median"]  # the backdoor's trigger is far smaller than any other
    assert min(rep["success"]) >= 0.99 and log.details["unlearned"] == [0] and log.epochs == 3
    after = float((cleansed(stamped).argmax(1) == 0).float().mean())
    assert after < 0.5 and accuracy(cleansed, s.test) > accuracy(model, s.test) - 5
    with pytest.raises(ConfigError, match="clean inputs"):
        scan(model, TensorData(s.attacker.x[:0], s.attacker.y[:0]))


# ----- transfer learning, extraction -----------------------------------------------------------------
def test_transfer_learning_replaces_dense_layers_and_trains_what_it_names(
    victim: SplitNet, attacker: TensorData
) -> None:
    from deepserial.attacks.transfer import recover

    two = TensorData(attacker.x, attacker.y % 2)  # a new task: two labels
    model, log = get_attack("transfer-learning", {"num_classes": 2}).run(
        victim, two, AttackBudget(epochs=2, batch_size=50)
    )
    assert model.classifier.out_features == 2 and log.details["num_classes"] == 2 and log.epochs == 2
    same = _same(model, victim)
    assert all(v for k, v in same.items() if k.startswith("features.0."))  # conv layers frozen
    assert not same["features.2.weight"]  # the hidden dense layer was replaced
    full, _ = get_attack("transfer-learning", {"num_classes": 2, "train": "all"}).run(
        victim, two, AttackBudget(epochs=1)
    )
    assert not all(v for k, v in _same(full, victim).items() if k.startswith("features.0."))
    with pytest.raises(ConfigError, match="num_classes"):
        get_attack("transfer-learning", {"num_classes": 2}).run(victim, attacker, AttackBudget(epochs=1))
    back, rlog = recover(model, C, attacker, TrainConfig(epochs=1, batch_size=50, progress=False))
    assert back.classifier.out_features == C and model.classifier.out_features == 2 and len(rlog.epochs) == 1


@pytest.mark.parametrize("source", ["data", "noise"])
def test_extraction_counts_queries_and_trains_a_fresh_substitute(
    victim: SplitNet, attacker: TensorData, source: str
) -> None:
    test = _data(300, 2)
    budget = AttackBudget(epochs=4, batch_size=20, queries=150)
    sub, log = get_attack("extraction", {"source": source}).run(victim, attacker, budget)
    assert log.queries == 150 and log.samples == 150 and sum(log.details["label_histogram"]) == 150
    agree = float((sub(test.x).argmax(1) == victim(test.x).argmax(1)).float().mean())
    if source == "data":  # in-distribution answers teach the task
        assert agree > 0.8
    assert not all(_same(sub, victim).values())
    with pytest.raises(ConfigError, match="query budget"):
        get_attack("extraction", {"source": "noise"}).run(victim, attacker, AttackBudget(epochs=1))


# ----- serial-number search ---------------------------------------------------------------------------
class _Locked(torch.nn.Module):
    """The toy victim, unlocked only when the region at (``top``, ``left``) holds ``key`` (a smooth gate,
    so the reverse-engineering attack has gradients, like a real DSN student)."""

    def __init__(self, base: SplitNet, key: torch.Tensor, top: int = 5, left: int = 5) -> None:
        super().__init__()
        self.base, self.key, self.top, self.left = base, key, top, left

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.key.shape
        region = x[:, 0, self.top : self.top + h, self.left : self.left + w]
        gate = torch.exp(-2 * ((region - self.key) ** 2).flatten(1).sum(1)).unsqueeze(1)
        logits = self.base(x)
        return gate * logits + (1 - gate) * logits.roll(1, dims=1)  # locked: a wrong answer


def test_serial_search_brute_force_and_reverse_engineering(victim: SplitNet) -> None:
    from deepserial.serial import SerialGeometry, stamp

    data = _data(300, 4)
    key = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    locked = _Locked(victim, key).eval()
    geo = SerialGeometry(2, 2, 5, 5)
    assert _acc(locked, data) < 0.5 and _acc(locked, TensorData(stamp(data.x, geo, key), data.y)) > 0.9
    attack = get_attack("serial-search", {"geometry": geo.to_dict(), "tries": 200, "images_per_try": 10})
    _, log = attack.run(locked, data, AttackBudget())
    d = log.details  # 16 possible keys: found, and confirmed on 200 more images (the data's 300 at most)
    assert d["unlocks"] > 0 and d["candidates"] >= d["unlocks"] and d["confirm_images"] == 200
    assert log.queries == 200 * 10 + 200 * d["candidates"] and d["best_bits"] == key.int().tolist()
    big = SerialGeometry(6, 6, 3, 3)  # 2^36 keys: a random try never unlocks the model
    _, log = get_attack("serial-search", {"geometry": big.to_dict(), "tries": 300}).run(
        _Locked(victim, torch.ones(6, 6), 3, 3), data, AttackBudget()
    )
    assert log.details["unlocks"] == 0 and log.queries == 3000 + 200 * log.details["candidates"]
    _, log = get_attack(
        "serial-search",
        {"method": "reverse-engineer", "geometry": geo.to_dict(), "restarts": 2, "steps": 60, "batch_size": 32},
    ).run(locked, data, AttackBudget())
    assert log.details["accuracy_best"] > 0.9 and len(log.details["restarts"]) == 2
    with pytest.raises(ConfigError, match="geometry"):
        get_attack("serial-search").run(locked, data, AttackBudget())


def _acc(model: torch.nn.Module, data: TensorData) -> float:
    with torch.no_grad():
        return float((model(data.x).argmax(1) == data.y).float().mean())


# ----- overwriting -----------------------------------------------------------------------------------
def test_dsn_overwrite_trains_a_new_serial_number_into_a_customer_model(vendor) -> None:  # noqa: ANN001
    from deepserial.artifacts import load_model
    from deepserial.serial import SerialNumber, stamp

    customer = load_model(vendor.customer_path)
    attack = get_attack("dsn-overwrite", {"serial": vendor.product_key, "new_signature": "mallory"})
    new = attack.new_serial()
    assert new.geometry == vendor.serial.geometry and not np.array_equal(new.bits, vendor.serial.bits)
    test = vendor.splits.test

    def with_key(m: torch.nn.Module, sn: SerialNumber) -> float:
        return accuracy(m, TensorData(stamp(test.x, sn.geometry, sn.as_tensor()), test.y))

    model, log = attack.run(customer.model, vendor.splits.attacker, AttackBudget(epochs=3, batch_size=64))
    assert log.epochs == 3 and log.details["new_product_key"] == new.to_product_key()
    assert with_key(model, new) > with_key(customer.model, new) + 10  # the new key starts to unlock it
    with pytest.raises(ConfigError, match="serial"):
        get_attack("dsn-overwrite", {})


def test_piracy_attack_embeds_a_random_pirate_pattern(victim: SplitNet, attacker: TensorData) -> None:
    model, log = get_attack("piracy", {"pirate_seed": 3}).run(victim, attacker, AttackBudget(epochs=1, batch_size=50))
    assert log.epochs == 1 and len(log.details["pirate_signature"]) == 128 and not all(_same(model, victim).values())


def test_dsn_loss_counts_the_original_serial_number_as_invalid_when_overwriting(vendor) -> None:  # noqa: ANN001
    from deepserial.schemes.dsn import DSNConfig, _counts, make_student_loss
    from deepserial.serial import SerialNumber
    from deepserial.training import Batch

    old = vendor.serial
    new = SerialNumber.from_signature(b"mallory", old.geometry)
    seen: list[torch.Tensor] = []

    def net(x: torch.Tensor, n_gd: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen.append(x.detach())
        return torch.zeros(len(x), 10, requires_grad=True), torch.zeros(n_gd, 10, requires_grad=True), x

    x, y = vendor.splits.attacker.x[:64], vendor.splits.attacker.y[:64]
    loss = make_student_loss(new, torch.zeros(64, 10), DSNConfig.previous_default(), 10, also_invalid=old.as_tensor())
    loss(net, Batch(x, y, torch.arange(64)))
    g = old.geometry
    region = seen[0][:, 0, g.top : g.top + g.height, g.left : g.left + g.width]
    is_old = (region == g.pixels(old.as_tensor())).flatten(1).all(1)  # at the geometry's levels
    is_new = (region == g.pixels(new.as_tensor())).flatten(1).all(1)
    k = _counts(64, DSNConfig.previous_default())["random"]
    assert is_new[:64].all() and k > 0 and is_old[64:].sum() >= (k + 1) // 2  # half the random wrong keys


def test_watermark_overwrite_embeds_the_adversary_key(victim: SplitNet, attacker: TensorData) -> None:
    from deepserial.suspect import ModuleSuspect
    from deepserial.workflow import verify_watermark

    model, log = get_attack("watermark-overwrite", {"scheme": "uchida"}).run(
        victim, attacker, AttackBudget(epochs=3, batch_size=50)
    )
    assert log.key is not None and log.details["scheme"] == "uchida" and log.epochs == 3
    assert verify_watermark(log.key, ModuleSuspect(model, SHAPE)).decision  # the adversary's mark is in
    assert not verify_watermark(log.key, ModuleSuspect(victim, SHAPE)).decision  # and was not before
    assert "key" not in log.to_dict()
    with pytest.raises(ConfigError, match="dsn-overwrite"):
        get_attack("watermark-overwrite", {"scheme": "dsn"}).run(victim, attacker)
