"""The Watermark-Robustness-Toolbox removal attacks on a tiny model: each test checks the attack's
stated effect (weights moved by the stated amount, the named channels pruned, outputs preserved,
inputs transformed as configured, targets reached) and what its log accounts for."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deepserial.attacks.adversarial_training import linf_attack
from deepserial.attacks.base import ATTACKS, AttackBudget, attacker_share, get_attack
from deepserial.attacks.combined import split_epochs
from deepserial.attacks.distillation import architecture_signature
from deepserial.attacks.feature_permutation import permutable_pairs
from deepserial.attacks.fine_pruning import mean_channel_activation
from deepserial.attacks.input_preprocessing import (
    GaussianNoise,
    InputQuantization,
    JpegCompression,
    KernelFilter,
    MedianFilter,
    PreprocessedNet,
    gaussian_kernel,
)
from deepserial.attacks.neural_laundering import candidate_layers, units_to_reset
from deepserial.attacks.pruning import channel_activity
from deepserial.attacks.regularization import phase_epochs
from deepserial.attacks.smooth_retraining import augment
from deepserial.attacks.targets import one_hot, smooth
from deepserial.attacks.weight_quantization import quantize_tensor
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet, _BasicBlock, create_model
from deepserial.schemes.uchida import flat_mean_weights
from deepserial.training import TrainConfig, accuracy, fit, predict_logits, supervised_loss

SHAPE = (1, 12, 12)
C = 4
NEW = [
    "weight-shifting",
    "fine-pruning",
    "regularization",
    "neural-laundering",
    "label-smoothing",
    "feature-permutation",
    "adversarial-training",
    "input-preprocessing",
    "weight-quantization",
    "distillation",
    "smooth-retraining",
    "cross-architecture-retraining",
    "combined",
]
#: Options that keep each attack to a fraction of a second on the toy task.
FAST = {
    "neural-laundering": {"scan_steps": 20},
    "adversarial-training": {"max_iter": 2, "n_max": 20, "eps": [0.1]},
    "fine-pruning": {"rate": 0.5},
}


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
    return m.eval()


@pytest.fixture(scope="module")
def attacker() -> TensorData:
    return _data(200, 1)


def _bn_net() -> SplitNet:
    """A small network with batch norms, for the code paths plain ReLU nets do not take."""
    torch.manual_seed(1)
    features = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
    )
    net = SplitNet(features, nn.Linear(16, C), 16)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


def _residual_net() -> SplitNet:
    """Two residual blocks of the project's ResNet-18, small: the stream between blocks is not a chain."""
    torch.manual_seed(2)
    features = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        _BasicBlock(4, 8, 2),
        _BasicBlock(8, 8, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return SplitNet(features, nn.Linear(8, C), 8).eval()


# ----- every attack: registry, budget, cost -----------------------------------------------------------------


def test_every_wrt_attack_is_registered_with_its_sources() -> None:
    import deepserial.attacks  # noqa: F401

    for name in NEW:
        cls = ATTACKS[name]
        assert cls.citation and cls.__doc__ and "Examples::" in cls.__doc__
        assert "WRT" in cls.citation
    with pytest.raises(ConfigError, match="lmbda2"):
        get_attack("weight-shifting", {"lmbda2": -1})
    with pytest.raises(ConfigError, match="method"):
        get_attack("input-preprocessing", {"method": "sepia"})
    with pytest.raises(ConfigError, match="unknown attack"):
        get_attack("combined", {"steps": [{"attack": "nope"}]})


@pytest.mark.parametrize("name", NEW)
def test_every_attack_respects_the_budget_and_reports_its_cost(
    victim: SplitNet, attacker: TensorData, name: str
) -> None:
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    share = attacker_share(attacker, 0.1, 1000, seed=1)  # the attacker holds 10% of 1,000 samples
    budget = AttackBudget(epochs=1, batch_size=50)
    model, log = get_attack(name, FAST.get(name, {})).run(victim, share, budget)
    assert all(torch.equal(v, before[k]) for k, v in victim.state_dict().items())  # the victim is untouched
    assert log.epochs <= budget.epochs and len(log.curve) == log.epochs
    assert log.samples <= len(share) == 100
    assert log.wall_s > 0 and log.forward_samples >= log.epochs * log.samples
    assert log.attack == name and log.budget["epochs"] == 1
    json.dumps(log.to_dict())  # the report is plain data
    assert predict_logits(model, share.x[:4]).shape == (4, C)


# ----- weight shifting ------------------------------------------------------------------------------------


def test_weight_shifting_moves_each_kernel_by_the_stated_amount(victim: SplitNet, attacker: TensorData) -> None:
    exact, _ = get_attack("weight-shifting", {"lmbda": 1.5, "lmbda2": 0.0}).run(
        victim, attacker, AttackBudget(epochs=0)
    )
    convs = [n for n, m in victim.named_modules() if isinstance(m, nn.Conv2d)]
    old, new = victim.state_dict(), exact.state_dict()
    for n in convs:
        w = old[f"{n}.weight"]
        assert torch.allclose(new[f"{n}.weight"], w - 1.5 * w.mean(0, keepdim=True), atol=1e-7)
        # the mean filter (Uchida's carrier) is now -0.5 times what it was
        assert torch.allclose(flat_mean_weights(new[f"{n}.weight"]), -0.5 * flat_mean_weights(w), atol=1e-7)
    for k in old:  # nothing but the convolution kernels moved
        if not any(k == f"{n}.weight" for n in convs):
            assert torch.equal(old[k], new[k])
    noisy, log = get_attack("weight-shifting", {"lmbda": 0.0, "lmbda2": 1.0}).run(
        victim, attacker, AttackBudget(epochs=0, seed=3)
    )
    w = old["features.0.3.weight"]  # 32 x 32 x 3 x 3: enough entries for the spread to be close
    residual = noisy.state_dict()["features.0.3.weight"] - w
    assert abs(float(residual.std() / w.std()) - 1.0) < 0.05 and abs(float(residual.mean())) < 0.05 * float(w.std())
    assert log.epochs == 0 and log.forward_samples == 0


def test_weight_shifting_then_fine_tunes_within_the_budget(victim: SplitNet, attacker: TensorData) -> None:
    model, log = get_attack("weight-shifting").run(victim, attacker, AttackBudget(epochs=2, batch_size=50))
    assert log.epochs == 2 and log.forward_samples == 2 * len(attacker) and log.queries == 0
    assert len(log.details["shifted"]) == 2  # the two convolutions of the Table 7 net
    _, vlog = get_attack("weight-shifting", {"labels": "victim"}).run(
        victim, attacker, AttackBudget(epochs=1, batch_size=50, queries=120)
    )
    assert vlog.queries == 120 and vlog.samples == 120 and vlog.forward_samples == 120  # WRT's relabelling


# ----- fine-pruning ---------------------------------------------------------------------------------------


def test_fine_pruning_prunes_exactly_the_dormant_channels_it_names(victim: SplitNet, attacker: TensorData) -> None:
    conv = victim.features[0][3]
    activity = channel_activity(victim, conv, attacker)  # ReLU output, measured independently
    model, log = get_attack("fine-pruning", {"rate": 0.5}).run(victim, attacker, AttackBudget(epochs=1, batch_size=50))
    dormant = sorted(int(i) for i in torch.argsort(activity, stable=True)[:16])
    assert log.details["pruned_channels"] == dormant and log.details["layer"] == "features.0.3"
    pruned = model.features[0][3]
    assert not any(n.endswith("_orig") or n.endswith("_mask") for n in model.state_dict())  # masks made permanent
    with torch.no_grad():
        assert float(pruned.weight[dormant].abs().sum()) == 0 and float(pruned.bias[dormant].abs().sum()) == 0
        assert float(pruned.weight[[i for i in range(32) if i not in dormant]].abs().sum()) > 0
    after = mean_channel_activation(model, pruned, attacker)
    assert float(after[dormant].abs().sum()) == 0  # pruned channels stay silent after fine-tuning
    assert log.epochs == 1 and log.forward_samples == 2 * len(attacker)  # ranking pass + one epoch


def test_fine_pruning_silences_a_channel_behind_batch_norm(attacker: TensorData) -> None:
    net = _bn_net()
    model, log = get_attack("fine-pruning", {"rate": 0.5}).run(net, attacker, AttackBudget(epochs=1, batch_size=50))
    dropped = log.details["pruned_channels"]
    assert len(dropped) == 3  # floor(0.5 * 6)
    act = mean_channel_activation(model, model.features[3], attacker)  # read after BN + ReLU
    assert float(act[dropped].abs().sum()) == 0 and float(act.sum()) > 0
    with torch.no_grad():
        assert float(model.features[4].weight[dropped].abs().sum()) == 0


# ----- regularization -------------------------------------------------------------------------------------


def test_regularization_splits_the_budget_and_shrinks_the_weights(victim: SplitNet, attacker: TensorData) -> None:
    assert phase_epochs(10, 5) == (5, 5) and phase_epochs(3, 5) == (3, 0)
    budget = AttackBudget(epochs=2, batch_size=50)
    reg, log = get_attack("regularization", {"reg_epochs": 2, "l2_decay": 0.1}).run(victim, attacker, budget)
    plain, _ = get_attack("regularization", {"reg_epochs": 2, "l2_decay": 0.0}).run(victim, attacker, budget)

    def norm(m: nn.Module) -> float:
        return float(sum(p.detach().norm() ** 2 for p in m.parameters()))

    assert norm(reg) < norm(plain)
    assert log.details["phases"] == {"regularization_epochs": 2, "fine_tuning_epochs": 0, "l2_decay": 0.1}
    _, log = get_attack("regularization").run(victim, attacker, AttackBudget(epochs=3, batch_size=50))
    assert log.epochs == 3 and log.details["phases"]["fine_tuning_epochs"] == 0  # 5 asked, 3 in the budget


# ----- label smoothing ------------------------------------------------------------------------------------


def test_label_smoothing_trains_towards_the_smoothed_targets(victim: SplitNet, attacker: TensorData) -> None:
    t = smooth(one_hot(torch.tensor([2, 0]), C), 0.8)
    assert torch.allclose(t[0], torch.tensor([0.2, 0.2, 0.4, 0.2])) and torch.allclose(t.sum(1), torch.ones(2))
    target = 1 - 0.8 + 0.8 / C  # 0.4 on the true class
    p0 = torch.softmax(predict_logits(victim, attacker.x), 1)
    model, log = get_attack("label-smoothing", {"epsilon": 0.8}).run(
        victim, attacker, AttackBudget(epochs=4, batch_size=50)
    )
    p1 = torch.softmax(predict_logits(model, attacker.x), 1)
    true0, true1 = p0[torch.arange(200), attacker.y], p1[torch.arange(200), attacker.y]
    assert float((true1 - target).abs().mean()) < 0.5 * float((true0 - target).abs().mean())
    assert log.budget["lr"] is None and log.curve[0]["lr"] == pytest.approx(1e-3)  # Adam: the project's rate
    assert log.details["target_max"] == pytest.approx(target)
    _, sgd = get_attack("label-smoothing").run(victim, attacker, AttackBudget(epochs=1, optimizer="sgd"))
    assert sgd.curve[0]["lr"] == pytest.approx(1e-2)  # SGD: WRT's 10 x


# ----- feature permutation --------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["dsn_mnist", "bn", "residual"])
def test_feature_permutation_preserves_outputs_and_changes_weights(victim: SplitNet, net: str) -> None:
    model = {"dsn_mnist": victim, "bn": _bn_net(), "residual": _residual_net()}[net]
    x = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(0))
    data = TensorData(x, torch.zeros(16, dtype=torch.long))
    attacked, log = get_attack("feature-permutation").run(model, data, AttackBudget(epochs=0))
    with torch.no_grad():
        assert torch.allclose(attacked(x), model(x), atol=1e-5, rtol=1e-5)
    old, new = model.state_dict(), attacked.state_dict()
    assert old.keys() == new.keys()
    changed = [k for k in old if not torch.equal(old[k], new[k])]
    assert len(changed) >= 2 * len(log.details["permuted_layers"]) > 0
    for k in changed:  # a permutation: the same values, elsewhere
        assert torch.equal(old[k].flatten().sort().values, new[k].flatten().sort().values)
    assert log.epochs == 0 and log.forward_samples == 0 and log.samples == 0
    if net == "residual":  # the stem feeds the residual stream: only the inside of each branch is permuted
        assert log.details["permuted_layers"] == ["features.3.body.0", "features.4.body.0"]
    if net == "dsn_mnist":
        # Uchida's carrier (the second convolution's mean filter) is scrambled
        w0, w1 = old["features.0.3.weight"], new["features.0.3.weight"]
        assert not torch.equal(flat_mean_weights(w0), flat_mean_weights(w1))
        assert len(permutable_pairs(model)) == 3  # conv -> conv, conv -> dense (across Flatten), dense -> head


# ----- adversarial training -------------------------------------------------------------------------------


def test_pgd_and_fgsm_stay_in_the_ball_and_fool_the_model(victim: SplitNet, attacker: TensorData) -> None:
    x = attacker.x[:100]
    for eps, step, iters in ((0.25, 0.05, 10), (0.25, 0.25, 1)):
        adv = linf_attack(victim, x, eps, step, iters)
        assert float((adv - x).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
        clean = predict_logits(victim, x)
        loss = torch.nn.functional.cross_entropy  # against the model's own answers, as ART's untargeted PGD
        assert float(loss(predict_logits(victim, adv), clean.argmax(1))) > float(loss(clean, clean.argmax(1))) + 0.1
    assert all(p.requires_grad for p in victim.parameters())  # restored


def test_adversarial_training_counts_generation_and_training(victim: SplitNet, attacker: TensorData) -> None:
    cfg = {"eps": [0.1, 0.25], "max_iter": 3, "n_max": 50}
    model, log = get_attack("adversarial-training", cfg).run(victim, attacker, AttackBudget(epochs=2, batch_size=50))
    per_epoch = 2 * 50 * (3 + 1) + (200 + 2 * 50)  # PGD passes, then one epoch on clean + adversarial
    assert log.epochs == 2 and log.forward_samples == 2 * per_epoch
    assert [r["epoch"] for r in log.curve] == [1, 2]
    assert log.details["adversarial_per_epoch"] == 100
    _, fgsm = get_attack("adversarial-training", cfg | {"method": "fgsm"}).run(
        victim, attacker, AttackBudget(epochs=1, batch_size=50)
    )
    assert fgsm.forward_samples == 2 * 50 * 2 + 300


# ----- input preprocessing --------------------------------------------------------------------------------


def test_jpeg_is_pillows_round_trip_at_the_stated_quality() -> None:
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    out = JpegCompression(quality=40)(x)
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray((x[i, 0] * 255).round().to(torch.uint8).numpy(), mode="L").save(buf, "JPEG", quality=40)
        ref = torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())))).float() / 255
        assert torch.equal(out[i, 0], ref)
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert float((JpegCompression(10)(rgb) - rgb).abs().mean()) > float((JpegCompression(95)(rgb) - rgb).abs().mean())
    with pytest.raises(ConfigError, match="1- or 3-channel"):
        JpegCompression()(torch.rand(1, 2, 8, 8))


def test_noise_quantization_blur_and_flip_change_inputs_as_stated() -> None:
    flat = torch.full((4, 1, 64, 64), 0.5)
    noise = GaussianNoise(sigma=0.05, seed=0)
    d = noise(flat) - flat
    assert abs(float(d.std()) - 0.05) < 0.0025 and abs(float(d.mean())) < 0.002
    assert not torch.equal(noise(flat), noise(flat))  # fresh noise each call
    assert torch.equal(GaussianNoise(0.05, seed=0)(flat), GaussianNoise(0.05, seed=0)(flat))  # seeded
    assert float(GaussianNoise(1.0)(flat).min()) >= 0 and float(GaussianNoise(1.0)(flat).max()) <= 1

    x = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    q = InputQuantization(levels=4)(x)
    assert set(q.unique().tolist()) <= {0.125, 0.375, 0.625, 0.875}
    assert float((q - x).abs().max()) <= 1 / 8 + 1e-7
    assert len(InputQuantization(16)(torch.linspace(0, 1, 1000).view(1, 1, 10, 100)).unique()) == 16

    impulse = torch.zeros(1, 1, 11, 11)
    impulse[0, 0, 5, 5] = 1.0
    k = gaussian_kernel(0.5)
    assert k.shape == (5, 5) and float(k.sum()) == pytest.approx(1.0) and torch.equal(k, k.T)
    blurred = KernelFilter(k, "gaussian")(impulse)
    assert torch.allclose(blurred[0, 0, 3:8, 3:8], k) and float(blurred.sum()) == pytest.approx(1.0)
    mean = KernelFilter(torch.full((3, 3), 1 / 9), "mean")(impulse)
    assert torch.allclose(mean[0, 0, 4:7, 4:7], torch.full((3, 3), 1 / 9)) and float(mean.sum()) == pytest.approx(1)
    assert float(MedianFilter(3)(impulse).abs().sum()) == 0  # an isolated speck is removed
    assert torch.equal(MedianFilter(3)(torch.full((1, 2, 6, 6), 0.3)), torch.full((1, 2, 6, 6), 0.3))


def test_preprocessing_wraps_the_suspect_model(victim: SplitNet, attacker: TensorData) -> None:
    attacked, log = get_attack("input-preprocessing", {"method": "quantize", "levels": 8}).run(victim, attacker)
    assert isinstance(attacked, PreprocessedNet) and attacked.state_dict().keys() == victim.state_dict().keys()
    x = attacker.x[:8]
    with torch.no_grad():
        assert torch.equal(attacked(x), victim(InputQuantization(8)(x)))
    assert log.epochs == 0 and log.samples == 0 and "levels=8" in log.details["preprocess"]
    flipped, _ = get_attack("input-preprocessing", {"method": "hflip"}).run(attacked, attacker)
    with torch.no_grad():  # a wrapper of a wrapper applies both, the earlier first
        assert torch.equal(flipped(x), victim(InputQuantization(8)(x).flip(-1)))
    tuned, tlog = get_attack("input-preprocessing", {"method": "mean-blur", "fine_tune": True}).run(
        victim, attacker, AttackBudget(epochs=1, batch_size=50)
    )
    assert tlog.epochs == 1 and tlog.forward_samples == len(attacker)
    assert not torch.equal(tuned.classifier.weight, victim.classifier.weight)


# ----- weight quantization --------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 5])
def test_weight_quantization_leaves_at_most_2_to_the_bits_values(
    victim: SplitNet, attacker: TensorData, bits: int
) -> None:
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    q = quantize_tensor(w, bits)
    step = float(w.max() - w.min()) / (2**bits - 1)
    assert len(q.unique()) <= 2**bits and float((q - w).abs().max()) <= step / 2 + 1e-6
    for epochs in (0, 1):
        model, log = get_attack("weight-quantization", {"bits": bits}).run(
            victim, attacker, AttackBudget(epochs=epochs, batch_size=50)
        )
        assert all(len(p.unique()) <= 2**bits for p in model.parameters())
        assert log.epochs == epochs and log.details["quantized_tensors"] == len(list(victim.parameters()))
    wrt, _ = get_attack("weight-quantization", {"bits": bits, "requantize": False}).run(
        victim, attacker, AttackBudget(epochs=1, batch_size=50)
    )
    assert any(len(p.unique()) > 2**bits for p in wrt.parameters())  # WRT ships the fine-tuned floats


# ----- retraining: distillation, smooth retraining, cross-architecture -----------------------------------


def test_distillation_trains_a_fresh_student_towards_the_softened_outputs(
    victim: SplitNet, attacker: TensorData
) -> None:
    T = 3.0
    teacher = torch.softmax(predict_logits(victim, attacker.x) / T, 1)

    def kl(m: nn.Module) -> float:
        log_q = torch.log_softmax(predict_logits(m, attacker.x) / T, 1)
        return float(torch.nn.functional.kl_div(log_q, teacher, reduction="batchmean"))

    fresh, _ = get_attack("distillation").run(victim, attacker, AttackBudget(epochs=0))
    student, log = get_attack("distillation", {"temperature": T}).run(
        victim, attacker, AttackBudget(epochs=6, batch_size=50)
    )
    assert kl(student) < 0.5 * kl(fresh) and log.curve[-1]["loss"] < log.curve[0]["loss"]
    assert log.queries == len(attacker) and log.forward_samples == 6 * len(attacker)
    _, capped = get_attack("distillation").run(victim, attacker, AttackBudget(epochs=1, batch_size=50, queries=60))
    assert capped.queries == 60 and capped.samples == 60 and capped.forward_samples == 60


def test_smooth_retraining_averages_augmented_queries(victim: SplitNet, attacker: TensorData) -> None:
    g = torch.Generator().manual_seed(0)
    x = attacker.x[:20]
    assert torch.equal(augment(x, 0, False, g), x)
    shifted = augment(x, 2, False, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(20):  # every output is one of the 25 crops of its padded image
        assert any(torch.equal(shifted[i], padded[i, :, a : a + 12, b : b + 12]) for a in range(5) for b in range(5))
    flips = augment(x, 0, True, torch.Generator().manual_seed(1))
    mirrored = [bool(torch.equal(flips[i], x[i].flip(-1))) for i in range(20)]
    assert all(m or torch.equal(flips[i], x[i]) for i, m in enumerate(mirrored)) and 0 < sum(mirrored) < 20
    attack = get_attack("smooth-retraining", {"padding": 0, "flip": False, "n_queries": 3})
    _, log = attack.run(victim, attacker, AttackBudget(epochs=1, batch_size=50, queries=90))
    assert log.queries == 90 and log.samples == 30 and log.forward_samples == 30
    # without augmentation the three answers agree: the targets are the victim's softmax itself
    from deepserial.attacks.base import AttackLog

    used, probs = attack.victim_targets(victim, attacker, AttackBudget(), AttackLog("t", {}, 0))
    assert torch.allclose(probs, torch.softmax(predict_logits(victim, used.x), 1), atol=1e-6)


def test_cross_architecture_retraining_distils_into_another_network(victim: SplitNet, attacker: TensorData) -> None:
    student, log = get_attack("cross-architecture-retraining").run(
        victim, attacker, AttackBudget(epochs=1, batch_size=50)
    )
    assert architecture_signature(student) != architecture_signature(victim)
    assert log.details["student_arch"] == "null_traffic"  # null_digit cannot take 12 x 12, dsn_mnist is the victim
    assert predict_logits(student, attacker.x[:2]).shape == (2, C) and log.queries == len(attacker)
    with pytest.raises(ConfigError, match="victim's own architecture"):
        get_attack("cross-architecture-retraining", {"arch": "dsn_mnist"}).run(victim, attacker, AttackBudget(epochs=0))


# ----- neural laundering ----------------------------------------------------------------------------------


def test_neural_laundering_resets_the_units_the_trigger_drives(victim: SplitNet, attacker: TensorData) -> None:
    conv_diff = torch.zeros(3, 4, 4)
    conv_diff[1, 2, 2] = 0.6  # one position above ct = 0.5 is enough
    conv_diff[2] = 0.4
    assert units_to_reset(conv_diff, 0.5, 0.2).tolist() == [1]
    assert units_to_reset(torch.tensor([0.1, 0.3, -1.0]), 0.5, 0.2).tolist() == [1]
    assert [n for n, _ in candidate_layers(victim)] == ["features.0.3", "features.2"]  # 2nd-half conv, hidden dense
    cfg = {"scan_steps": 20, "ct": 0.0, "dt": 0.0}
    model, log = get_attack("neural-laundering", cfg).run(victim, attacker, AttackBudget(epochs=0))
    reset = log.details["reset"]
    assert log.details["reset_units"] > 0
    layers = dict(model.named_modules())
    for name, units in reset.items():
        assert float(layers[name].weight.detach()[units].abs().sum()) == 0
    scan_fwd = log.details["scan"]["forward_samples"]
    assert log.forward_samples == scan_fwd + 2 * len(attacker)
    _, trained = get_attack("neural-laundering", cfg).run(victim, attacker, AttackBudget(epochs=1, batch_size=50))
    assert trained.forward_samples == scan_fwd + 4 * len(attacker)  # + one epoch on clean and triggered


# ----- combined -------------------------------------------------------------------------------------------


def test_combined_attacks_chain_steps_and_split_the_budget(victim: SplitNet, attacker: TensorData) -> None:
    assert split_epochs([0.5, 0.5, 0], 10) == [5, 5, 0] and split_epochs([None, None, None], 10) == [4, 3, 3]
    assert sum(split_epochs([0.5, 0.5], 1)) == 1
    model, log = get_attack("combined", {"preset": "wrt-combined2"}).run(
        victim, attacker, AttackBudget(epochs=2, batch_size=50)
    )
    steps = log.details["steps"]
    assert [s["attack"] for s in steps] == ["weight-shifting", "fine-pruning", "input-preprocessing"]
    assert [s["epochs_budget"] for s in steps] == [1, 1, 0] and log.epochs == 2
    assert log.forward_samples == sum(s["forward_samples"] for s in steps) == 3 * len(attacker)
    assert isinstance(model, PreprocessedNet) and [r["step"] for r in log.curve] == [1, 2]
    assert accuracy(model, attacker) >= 0  # the chain's result answers
    with pytest.raises(ConfigError, match="more than the whole budget"):
        get_attack(
            "combined", {"steps": [{"attack": "fine-tuning", "share": 0.7}, {"attack": "pruning", "share": 0.7}]}
        )
    with pytest.raises(ConfigError, match="another combined"):
        get_attack("combined", {"steps": [{"attack": "combined"}]})
