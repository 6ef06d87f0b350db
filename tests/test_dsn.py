"""Unit tests of the DSN scheme (deepserial.schemes.dsn) on tiny data, and one short real training run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pydantic
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deepserial import workflow
from deepserial.data import TensorData
from deepserial.errors import ConfigError, GeometryError
from deepserial.nets import create_model, visible_mask
from deepserial.schemes import dsn
from deepserial.serial import SerialGeometry, SerialNumber, bits_from_strings, stamp, stamp_many
from deepserial.training import Batch, TrainConfig, predict_logits
from deepserial.workflow import DataSpec

SHAPE = (1, 28, 28)
CLASSES = 10
GEOMETRY = SerialGeometry(3, 3, 20, 20)
SERIAL = SerialNumber(GEOMETRY, bits_from_strings(["101", "011", "100"]))


def region(x: torch.Tensor, g: SerialGeometry = GEOMETRY) -> torch.Tensor:
    """The serial-number pixels of a batch, (N, h, w) (single channel)."""
    return x[:, 0, g.top : g.top + g.height, g.left : g.left + g.width]


def outside(x: torch.Tensor, g: SerialGeometry = GEOMETRY) -> torch.Tensor:
    """The batch with the serial-number pixels zeroed: what a stamp leaves untouched."""
    out = x.clone()
    out[:, :, g.top : g.top + g.height, g.left : g.left + g.width] = 0
    return out


# ----- gradient reversal -----------------------------------------------------------------------------
@pytest.mark.parametrize("coefficient", [0.0, 0.5, 1.0, 3.0])
def test_grad_reverse_is_identity_forward_and_negates_gradient(coefficient: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 7, requires_grad=True)
    w = torch.randn(4, 7)
    y = dsn.grad_reverse(x, coefficient)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -coefficient * w)


def test_grad_reverse_in_train_net_flips_feature_gradients_only() -> None:
    """Gd learns normally; the shared features Ge receive the Gd gradient with its sign flipped."""
    torch.manual_seed(0)
    student = create_model("dsn_mnist", SHAPE, CLASSES)
    x, y = torch.rand(6, *SHAPE), torch.randint(0, CLASSES, (6,))

    def grads(coefficient: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        net = dsn.DSNTrainNet(student, coefficient)
        torch.manual_seed(1)
        net.gd.reset_parameters()
        student.zero_grad(set_to_none=True)
        _, logits_d, _ = net(x, n_gd=len(x))
        nn.functional.cross_entropy(logits_d, y).backward()
        return ([p.grad.clone() for p in student.features.parameters()], [p.grad.clone() for p in net.gd.parameters()])

    feat_rev, gd_rev = grads(1.0)
    feat_plain, gd_plain = grads(-1.0)  # -(-1) = +1: an ordinary backward pass
    assert any(g.abs().sum() > 0 for g in feat_plain)
    for a, b in zip(feat_rev, feat_plain, strict=True):
        assert torch.allclose(a, -b, atol=1e-6)
    for a, b in zip(gd_rev, gd_plain, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in student.classifier.parameters())


def test_train_net_heads() -> None:
    torch.manual_seed(0)
    student = create_model("dsn_mnist", SHAPE, CLASSES)
    net = dsn.DSNTrainNet(student, 1.0)
    x = torch.rand(5, *SHAPE)
    logits_y, logits_d, feats = net(x, n_gd=2)
    assert torch.allclose(logits_y, student(x))
    assert logits_d.shape == (2, CLASSES)
    assert torch.allclose(logits_d, net.gd(student.features(x[3:])), atol=1e-6)
    assert torch.allclose(feats, student.features(x))
    assert net(x)[1].shape == (0, CLASSES)


# ----- the per-batch loss: what goes into one forward pass -------------------------------------------
class Recorder(nn.Module):
    """Wraps the training net and keeps every input batch it is called with."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple[torch.Tensor, int]] = []

    @property
    def student(self) -> nn.Module:
        """The recorded network's student (what the recipe's searched patterns are run against)."""
        return self.net.student

    def forward(self, x: torch.Tensor, n_gd: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append((x.detach().clone(), n_gd))
        return self.net(x, n_gd=n_gd)


def run_loss(cfg: dsn.DSNConfig, n: int, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.rand(n, *SHAPE)  # random grey levels: never exactly 0 or 1, so stamped pixels are recognisable
    y = torch.randint(0, CLASSES, (n,))
    teacher_logits = torch.randn(n, CLASSES)
    student = create_model("dsn_mnist", SHAPE, CLASSES)
    net = Recorder(dsn.DSNTrainNet(student, cfg.grl_coefficient))
    loss_fn = dsn.make_student_loss(SERIAL, teacher_logits, cfg, CLASSES)
    out = loss_fn(net, Batch(x, y, torch.arange(n)))
    assert len(net.calls) == 1
    inputs, n_gd = net.calls[0]
    return x, out, inputs, n_gd


KINDS = ("raw", "random", "hamming1", "hamming2")


def expected_counts(n: int, cfg: dsn.DSNConfig) -> dict[str, int]:
    """The documented mix: each kind gets its share of round(n * invalid_ratio) rounded down, and what is
    left over goes to the kind with the largest weight."""
    total = round(n * cfg.invalid_ratio)
    weights = {k: getattr(cfg, f"mix_{k}") for k in KINDS}
    counts = {k: math.floor(total * w / sum(weights.values())) for k, w in weights.items()}
    counts[max(weights, key=weights.get)] += total - sum(counts.values())
    return counts


def hamming_to_valid(inputs: torch.Tensor) -> list[int]:
    r = region(inputs)
    assert bool(((r == 0) | (r == 1)).all()), "a stamped region must hold only 0/1 pixels"
    return (r != SERIAL.as_tensor()).flatten(1).sum(1).tolist()


def assert_rows_come_from(rows: torch.Tensor, x: torch.Tensor, stamped: bool) -> None:
    """Every row is one of the batch's images, as is (raw) or with only the serial-number pixels changed."""
    a, b = (outside(rows), outside(x)) if stamped else (rows, x)
    for r in a:
        assert any(torch.equal(r, s) for s in b)


@pytest.mark.parametrize("ratio", [None, 1.0])
def test_default_mode_batch_composition(ratio: float | None) -> None:
    n = 20
    cfg = dsn.DSNConfig.previous_default() if ratio is None else dsn.DSNConfig.previous_default(invalid_ratio=ratio)
    n_inv = round(n * cfg.invalid_ratio)
    if ratio == 1.0:
        assert n_inv == n
    x, out, inputs, n_gd = run_loss(cfg, n)
    assert out.forward_samples == n + n_inv == len(inputs)
    assert cfg.gd_weight > 0 and n_gd == n_inv  # Gd sees every invalid input
    # The first n rows are the batch itself, in order, stamped with the valid serial number.
    assert torch.equal(inputs[:n], stamp(x, GEOMETRY, SERIAL.as_tensor()))
    counts = expected_counts(n, cfg)
    assert dsn._counts(n, cfg) == counts
    assert all(counts[k] > 0 for k in KINDS)  # the default mix uses every kind of invalid input
    raw, rnd, h1, h2 = torch.split(inputs[n:], [counts[k] for k in KINDS])
    assert_rows_come_from(raw, x, stamped=False)
    for part in (rnd, h1, h2):
        assert_rows_come_from(part, x, stamped=True)
    assert all(d > 0 for d in hamming_to_valid(rnd))  # a random pattern never equals the valid key
    assert hamming_to_valid(h1) == [1] * counts["hamming1"]
    assert hamming_to_valid(h2) == [2] * counts["hamming2"]
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert set(out.metrics) == {"distill", "uniform", "gd_ce", "valid_acc"}
    assert out.metrics["uniform"] >= -1e-6  # KL(U || P) is never negative


def test_paper_mode_batch_composition() -> None:
    n = 8
    cfg = dsn.DSNConfig.paper()
    x, out, inputs, n_gd = run_loss(cfg, n)
    assert out.forward_samples == 2 * n == len(inputs) and n_gd == n
    assert torch.equal(inputs[:n], stamp(x, GEOMETRY, SERIAL.as_tensor()))
    assert_rows_come_from(inputs[n:], x, stamped=False)  # only raw inputs on the invalid side
    assert "uniform" not in out.metrics  # no uniform loss in the paper's mode: the GRL head only
    assert "gd_ce" in out.metrics


@pytest.mark.parametrize(
    ("mix", "kind_distance"),
    [
        ({"mix_raw": 0.0, "mix_random": 0.0, "mix_hamming1": 1.0, "mix_hamming2": 0.0}, 1),
        ({"mix_raw": 0.0, "mix_random": 0.0, "mix_hamming1": 0.0, "mix_hamming2": 1.0}, 2),
    ],
)
def test_single_kind_mix(mix: dict[str, float], kind_distance: int) -> None:
    n = 6
    x, out, inputs, _ = run_loss(dsn.DSNConfig.previous_default(invalid_ratio=1.0, **mix), n)
    assert out.forward_samples == 2 * n
    assert hamming_to_valid(inputs[n:]) == [kind_distance] * n
    assert_rows_come_from(inputs[n:], x, stamped=True)


def test_ring_mask_is_the_frame_around_the_pattern() -> None:
    m = dsn.ring_mask(GEOMETRY, 28, 28, band=2)
    assert int(m.sum()) == 7 * 7 - 9
    assert not m[20:23, 20:23].any() and m[18, 18] and m[24, 24] and not m[17, 20] and not m[25, 20]
    corner = dsn.ring_mask(SerialGeometry(3, 3, 25, 25), 28, 28, band=2)  # clipped at the image border
    assert int(corner.sum()) == 5 * 5 - 9


def test_ring_noise_changes_only_the_frame() -> None:
    n = 10
    x, out, inputs, _ = run_loss(dsn.DSNConfig.previous_default(ring_noise=1.0), n)
    ring = dsn.ring_mask(GEOMETRY, 28, 28)
    clean = stamp(x, GEOMETRY, SERIAL.as_tensor())
    assert torch.equal(inputs[:n][..., ~ring], clean[..., ~ring])  # pattern and the rest untouched
    assert not torch.equal(inputs[:n][..., ring], clean[..., ring])  # the frame is noise
    assert torch.isfinite(out.loss)


def test_hard_hamming1_draws_more_of_the_hard_neighbours() -> None:
    """Neighbours whose inputs the model fails to push to uniform are drawn more often later."""
    cfg = dsn.DSNConfig.previous_default(
        hard_hamming1=1.0, mix_raw=0.0, mix_random=0.0, mix_hamming1=1.0, mix_hamming2=0.0, invalid_ratio=4.0
    )
    torch.manual_seed(0)
    n = 16
    x = torch.rand(n, *SHAPE)
    y = torch.randint(0, CLASSES, (n,))
    hard_bit = 4  # the neighbour that flips bit 4 is the only one that stays confident

    class Confident(nn.Module):
        def forward(self, inp: torch.Tensor, n_gd: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            flipped = (region(inp) != SERIAL.as_tensor()).flatten(1)
            logits = torch.zeros(len(inp), CLASSES) + 0.0 * inp.sum()
            logits[:, 0] = 8.0 * flipped[:, hard_bit].float()
            return logits.requires_grad_(), logits[len(logits) - n_gd :], logits

    loss_fn = dsn.make_student_loss(SERIAL, torch.randn(n, CLASSES), cfg, CLASSES)
    rec = Recorder(Confident())
    for _ in range(30):
        loss_fn(rec, Batch(x, y, torch.arange(n)))
    last = rec.calls[-1][0][n:]
    share = float(((region(last) != SERIAL.as_tensor()).flatten(1)[:, hard_bit]).float().mean())
    assert share > 0.5, share  # uniform drawing would give 1/9


def test_raw_only_mix_and_invalid_ratio() -> None:
    n = 8
    cfg = dsn.DSNConfig.previous_default(
        mix_raw=1.0, mix_random=0.0, mix_hamming1=0.0, mix_hamming2=0.0, invalid_ratio=0.5
    )
    x, out, inputs, n_gd = run_loss(cfg, n)
    assert out.forward_samples == n + 4 == len(inputs) and n_gd == 4
    assert_rows_come_from(inputs[n:], x, stamped=False)


def test_no_gd_head_when_its_weight_is_zero() -> None:
    _, out, inputs, n_gd = run_loss(dsn.DSNConfig.previous_default(gd_weight=0.0, invalid_ratio=1.0), 6)
    assert n_gd == 0 and len(inputs) == 12
    assert "gd_ce" not in out.metrics and "uniform" in out.metrics


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 33, 128])
@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0])
def test_counts_sum_and_mix(n: int, ratio: float) -> None:
    cfg = dsn.DSNConfig.previous_default(invalid_ratio=ratio)
    counts = dsn._counts(n, cfg)
    total = round(n * ratio)
    assert sum(counts.values()) == total
    assert all(v >= 0 for v in counts.values())
    assert counts == expected_counts(n, cfg)
    assert dsn._counts(n, dsn.DSNConfig.paper(invalid_ratio=ratio)) == {
        "raw": total,
        "random": 0,
        "hamming1": 0,
        "hamming2": 0,
    }


def test_counts_example() -> None:
    cfg = dsn.DSNConfig.previous_default(
        mix_raw=0.2, mix_random=0.2, mix_hamming1=0.4, mix_hamming2=0.2, invalid_ratio=1.0
    )
    # 7 invalid inputs: floors 1, 1, 2, 1 (sum 5); the 2 left over go to the largest weight (Hamming-1).
    assert dsn._counts(7, cfg) == {"raw": 1, "random": 1, "hamming1": 4, "hamming2": 1}
    # Weights need not sum to 1: only their proportions count.
    assert dsn._counts(
        10, cfg.model_copy(update={"mix_raw": 2.0, "mix_random": 0.0, "mix_hamming1": 2.0, "mix_hamming2": 1.0})
    ) == {"raw": 4, "random": 0, "hamming1": 4, "hamming2": 2}


# ----- evaluation helpers ----------------------------------------------------------------------------
def test_key_accuracies_matches_a_manual_loop() -> None:
    torch.manual_seed(0)
    model = create_model("dsn_mnist", SHAPE, CLASSES).eval()
    x = torch.rand(12, *SHAPE)
    # Labels: the model's own answers with the valid key, so that key scores 100 and others differ.
    y = predict_logits(model, stamp(x, GEOMETRY, SERIAL.as_tensor())).argmax(1)
    keys = torch.cat(
        [SERIAL.as_tensor()[None], SERIAL.hamming_neighbours(1)[:3], torch.zeros(1, 3, 3), torch.ones(1, 3, 3)]
    )
    manual = [100.0 * float((model(stamp(x, GEOMETRY, k)).argmax(1) == y).float().mean()) for k in keys]
    # chunk_samples=60 -> five keys per chunk: exercises the chunking and the short last chunk (6 = 5 + 1).
    for chunk in (60, 65536):
        got = dsn.key_accuracies(model, x, y, GEOMETRY, keys, chunk_samples=chunk)
        assert got.shape == (len(keys),)
        assert got.tolist() == pytest.approx(manual, abs=1e-4)
    assert manual[0] == 100.0
    assert dsn.key_accuracies(model, x, y, GEOMETRY, keys[:0]).shape == (0,)


def test_issue_with_same_seed_is_reproducible(vendor) -> None:
    teacher = vendor.teacher()
    students = []
    for state in (1, 2):
        torch.manual_seed(state)  # what a fresh process would have: some unrelated global random state
        issued = workflow.issue(
            teacher, vendor.identity, "repro", size=(3, 3), train=TrainConfig(epochs=0, seed=0, progress=False)
        )
        students.append(issued.student.state_dict())
    a, b = students
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----- geometry --------------------------------------------------------------------------------------
def test_default_geometry_dsn_mnist() -> None:
    model = create_model("dsn_mnist", SHAPE, CLASSES)
    mask = visible_mask(model, SHAPE)
    g3 = dsn.default_geometry(model, SHAPE, 3, 3, margin=3)
    assert (g3.top, g3.left, g3.height, g3.width) == (20, 20, 3, 3)  # rows/cols 20-22
    g6 = dsn.default_geometry(model, SHAPE, 6, 6, margin=0)
    assert (g6.top, g6.left, g6.height, g6.width) == (20, 20, 6, 6)  # rows/cols 20-25: the last visible ones
    for g in (g3, g6):
        assert bool(mask[g.top : g.top + g.height, g.left : g.left + g.width].all())
    assert not bool(mask[26:, :].any()) and not bool(mask[:, 26:].any())  # the net never sees rows/cols 26-27
    # The workflow's choice for the paper's 3x3 and the default 6x6 uses the same margins.
    assert workflow.choose_geometry(model, SHAPE, (3, 3), None) == g3
    assert workflow.choose_geometry(model, SHAPE, (6, 6), None) == g6


def test_the_shipped_recipe_writes_loud_bits_into_the_geometry_and_the_paper_writes_zero_and_one() -> None:
    model = create_model("dsn_mnist", SHAPE, CLASSES)
    loud = dsn.DSNConfig.default()
    assert (
        loud.amplitude == 6
        and dsn.DSNConfig.paper().amplitude == 0
        and dsn.DSNConfig.default(amplitude=0).amplitude == 0
    )
    g = workflow.choose_geometry(model, SHAPE, (6, 6), None, amplitude=loud.amplitude)
    assert (g.top, g.left, g.amplitude, g.levels) == (20, 20, 6, (-6.0, 6.0))
    assert workflow.choose_geometry(model, SHAPE, (5, 7), (8, 12), amplitude=6).amplitude == 6
    data = TensorData(torch.rand(40, *SHAPE), torch.randint(0, CLASSES, (40,)))
    key = dsn.DSNScheme().make_key(b"sig", data, CLASSES, model)  # no settings: the shipped recipe's levels
    assert dsn.DSNScheme().config == loud and SerialGeometry.from_dict(key.meta["geometry"]).amplitude == 6
    paper = dsn.DSNScheme(dsn.DSNConfig.paper()).make_key(b"sig", data, CLASSES, model)
    assert SerialGeometry.from_dict(paper.meta["geometry"]).levels == (0.0, 1.0)
    with pytest.raises(pydantic.ValidationError):
        dsn.DSNConfig.default(amplitude=17)


def test_default_geometry_too_large() -> None:
    model = create_model("dsn_mnist", SHAPE, CLASSES)
    with pytest.raises(GeometryError, match="visible field"):
        dsn.default_geometry(model, SHAPE, 27, 27)


# ----- configuration ---------------------------------------------------------------------------------
def test_config_modes() -> None:
    p = dsn.DSNConfig.paper()
    assert p.mode == "paper" and p.invalid_ratio == 1.0  # the paper: one raw input per valid one
    d = dsn.DSNConfig.previous_default()
    assert d.mode == "default" and 0 < d.gd_weight < p.gd_weight  # the GRL head is kept, at a small weight
    assert dsn.DSNConfig.previous_default(invalid_ratio=0.5, gd_weight=0.3).invalid_ratio == 0.5  # overrides win
    assert dsn.DSNConfig.previous_default(gd_weight=0.3).gd_weight == 0.3
    assert dsn.DSNConfig.model_validate(d.model_dump()) == d  # what a manifest records loads back


def test_config_refuses_unknown_keys() -> None:
    with pytest.raises(pydantic.ValidationError, match="temprature"):
        dsn.DSNConfig(temprature=3.0)
    with pytest.raises(pydantic.ValidationError):
        dsn.DSNConfig.previous_default(no_such_setting=1.0)


def test_config_refuses_all_zero_mix() -> None:
    zero = {"mix_raw": 0.0, "mix_random": 0.0, "mix_hamming1": 0.0, "mix_hamming2": 0.0}
    with pytest.raises(pydantic.ValidationError, match="mix_raw"):
        dsn.DSNConfig.previous_default(**zero)
    assert dsn.DSNConfig.paper(**zero).mode == "paper"  # the paper's mode uses raw inputs only, no mix


@pytest.mark.parametrize(
    "bad",
    [{"temperature": 0.0}, {"invalid_ratio": 0.0}, {"mix_raw": -0.1}, {"grl_coefficient": -1.0}, {"mode": "other"}],
)
def test_config_refuses_out_of_range_values(bad: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        dsn.DSNConfig(**bad)


# ----- a real, short training run --------------------------------------------------------------------
SIGNATURE = bytes(range(64))  # stands in for an owner's signature: the serial number is derived from it


@dataclass
class Learned:
    teacher: nn.Module
    student: nn.Module
    serial: SerialNumber
    splits: object
    log: object
    epochs: int


@pytest.fixture(scope="module")
def learned() -> Learned:
    """A teacher and a default-recipe customer model trained briefly on real digits (shared)."""
    torch.manual_seed(0)  # the networks are built before fit() seeds: fix their initial weights too
    t = workflow.train_teacher(
        DataSpec("mnist5k", seed=0, limit=800), TrainConfig(epochs=5, batch_size=32, progress=False)
    )
    assert t.manifest["test_acc"] >= 70
    torch.manual_seed(0)
    student = create_model("dsn_mnist", SHAPE, CLASSES)
    geometry = dsn.default_geometry(student, SHAPE, 3, 3, margin=3)
    serial = SerialNumber.from_signature(SIGNATURE, geometry)
    epochs = 12
    log = dsn.train_student(
        student,
        t.model,
        t.splits.owner,
        serial,
        dsn.DSNConfig.previous_default(),
        TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, progress=False),
    )
    return Learned(t.model, student, serial, t.splits, log, epochs)


def test_student_learns_the_serial_number(learned: Learned) -> None:
    """On real digits, the customer model answers well only with its serial number (valid >> raw), with
    the shipped default recipe."""
    cfg = dsn.DSNConfig.previous_default()
    student, geometry, serial = learned.student, learned.serial.geometry, learned.serial
    assert len(learned.log.epochs) == learned.epochs
    batches = [len(c) for c in torch.arange(len(learned.splits.owner)).split(32)]
    per_epoch = sum(b + round(b * cfg.invalid_ratio) for b in batches)
    assert learned.log.forward_samples == learned.epochs * per_epoch  # n valid + ratio * n invalid per batch
    test = learned.splits.test
    valid = float(dsn.key_accuracies(student, test.x, test.y, geometry, serial.as_tensor()[None])[0])
    raw = 100.0 * float((predict_logits(student, test.x).argmax(1) == test.y).float().mean())
    near = float(dsn.key_accuracies(student, test.x, test.y, geometry, serial.hamming_neighbours(1)).mean())
    assert valid >= 70, (valid, raw, near)
    assert raw <= 30, (valid, raw, near)
    assert near <= valid - 20, (valid, raw, near)  # keys one bit away mostly fail too


# ----- DSN behind the Scheme interface -------------------------------------------------------------
def test_dsn_scheme_key_is_derived_from_the_signature(vendor) -> None:  # noqa: ANN001
    from deepserial.schemes.base import get_scheme

    scheme = get_scheme("dsn")
    assert isinstance(scheme, dsn.DSNScheme)
    sig = bytes(range(64))
    student = create_model("dsn_mnist", SHAPE, CLASSES)
    k1 = scheme.make_key(sig, vendor.splits.owner, CLASSES, model=student)
    k2 = scheme.make_key(sig, vendor.splits.owner, CLASSES, model=student)
    assert torch.equal(k1.tensors["x"], k2.tensors["x"]) and len(k1.tensors["x"]) == 100
    assert scheme.serial(k1) == SerialNumber.from_signature(sig, SerialGeometry.from_dict(k1.meta["geometry"]))
    with pytest.raises(ConfigError, match="teacher"):
        scheme.embed(student, vendor.splits.owner, k1, TrainConfig(epochs=1, progress=False))


def test_dsn_scheme_verifies_only_the_unlocking_key(learned: Learned) -> None:
    """McNemar's test: the customer's own key unlocks its model; the teacher (unlocked by anything) and
    another owner's key do not count as unlocking."""
    from deepserial.schemes.base import OwnershipKey
    from deepserial.suspect import ModuleSuspect

    test = learned.splits.test
    key = OwnershipKey(
        "dsn", {"geometry": learned.serial.geometry.to_dict(), "signature": SIGNATURE.hex()}, {"x": test.x, "y": test.y}
    )
    scheme = dsn.DSNScheme()
    assert scheme.serial(key) == learned.serial
    v = scheme.verify(ModuleSuspect(learned.student, SHAPE), key, fpr=1e-3)
    assert v.decision and v.p_value <= 1e-3 and v.queries == 2 * len(test), v.summary()
    assert v.details["acc_key"] > v.details["acc_random_key"] + 30
    vt = scheme.verify(ModuleSuspect(learned.teacher, SHAPE), key, fpr=1e-3)
    assert not vt.decision, vt.summary()
    other = OwnershipKey(
        "dsn", {"geometry": key.meta["geometry"], "signature": (b"another owner" * 5).hex()}, key.tensors
    )
    vo = scheme.verify(ModuleSuspect(learned.student, SHAPE), other, fpr=1e-3)
    assert not vo.decision, vo.summary()


def test_dsn_scheme_refuses_bad_fpr_and_malformed_keys(learned: Learned) -> None:
    from deepserial.schemes.base import OwnershipKey
    from deepserial.suspect import ModuleSuspect

    test = learned.splits.test
    geometry = learned.serial.geometry.to_dict()
    good = OwnershipKey("dsn", {"geometry": geometry, "signature": SIGNATURE.hex()}, {"x": test.x, "y": test.y})
    suspect = ModuleSuspect(learned.student, SHAPE)
    with pytest.raises(ConfigError, match="false-positive rate"):
        dsn.DSNScheme().verify(suspect, good, fpr=1.0)
    for meta in ({"geometry": geometry}, {"geometry": geometry, "signature": "not hex"}, {"signature": "00"}):
        with pytest.raises(ConfigError, match="malformed"):
            dsn.DSNScheme().verify(suspect, OwnershipKey("dsn", meta, good.tensors))
    empty = OwnershipKey("dsn", good.meta, {"x": test.x[:0], "y": test.y[:0]})
    with pytest.raises(ConfigError, match="no verification images"):
        dsn.DSNScheme().verify(suspect, empty)
    assert suspect.queries == 0  # nothing was spent on a refused key


def test_shipped_recipe_draws_every_kind_of_invalid_input() -> None:
    cfg = dsn.DSNConfig.default()
    counts = dsn._counts(128, cfg)
    assert sum(counts.values()) == round(128 * cfg.invalid_ratio) == 2 * 128
    assert set(counts) == {"raw", "random", "hamming1", "hamming2", "near", "relaxed", "mined", "searched"}
    assert all(v > 0 for v in counts.values())


def test_scaled_keys_are_the_key_at_another_contrast() -> None:
    kinds = ("mix_random", "mix_hamming1", "mix_hamming2", "mix_near", "mix_relaxed", "mix_mined", "mix_searched")
    mix = dict.fromkeys(kinds, 0.0)
    # raw inputs at a weight too small to get a row (the recipe needs one of the four basic kinds)
    cfg = dsn.DSNConfig.default(**mix, mix_raw=1e-4, mix_scaled=1.0, sim_ft_weight=0.0, invalid_ratio=4.0)
    n = 64
    _, _, inputs, _ = run_loss(cfg, n)
    rows, cols = SERIAL.geometry.region()
    offset = inputs[n:, 0, rows, cols] - 0.5  # every invalid row: 0.5 + alpha (key - 0.5) in bit units
    key = torch.as_tensor(SERIAL.bits).float() - 0.5
    alpha = offset / key
    assert torch.all(alpha >= 0)  # never against the key's direction
    per_row = alpha.flatten(1)
    below = per_row.max(1).values <= 0.8 + 1e-6
    beyond = (per_row.min(1).values >= 1.3 - 1e-6) & (per_row.max(1).values <= 2.5 + 1e-6)
    assert torch.all(below | beyond) and below.any() and beyond.any()  # the valid key itself (alpha 1) never


def test_shipped_recipe_mines_keys_and_simulates_fine_tuning_on_a_real_network() -> None:
    torch.manual_seed(0)
    student = create_model("dsn_mnist", SHAPE, CLASSES)
    net = dsn.DSNTrainNet(student, 1.0)
    cfg = dsn.DSNConfig.default(mine_every=1, sim_ft_every=1)
    n = 16
    loss_fn = dsn.make_student_loss(SERIAL, torch.randn(n, CLASSES), cfg, CLASSES)
    x = torch.rand(n, *SHAPE)
    out = loss_fn(net, Batch(x, torch.randint(0, CLASSES, (n,)), torch.arange(n)))
    assert "sim_ft_uniform" in out.metrics and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in student.parameters())


def test_shared_augmentation_shifts_valid_and_invalid_images_and_relabels_them_with_the_teacher() -> None:
    torch.manual_seed(0)
    inner = create_model("dsn_mnist", SHAPE, CLASSES).eval()
    teacher_calls: list[torch.Tensor] = []

    def teacher_fn(images: torch.Tensor) -> torch.Tensor:
        teacher_calls.append(images.clone())
        return inner(images)

    teacher = nn.Module()
    teacher.forward = teacher_fn  # a recording teacher (to(), eval() as any module)
    cfg = dsn.DSNConfig.default(shared_augment=1.0, sim_ft_weight=0.0, mix_mined=0.0)
    with pytest.raises(ValueError, match="needs the teacher"):
        dsn.make_student_loss(SERIAL, torch.randn(8, CLASSES), cfg, CLASSES)
    n = 8
    x = torch.zeros(n, *SHAPE)
    x[:, :, 10:14, 10:14] = 1.0  # a block the shift must move (noise alone would leave it in place)
    stale = torch.randn(n, CLASSES)  # precomputed soft labels of the unshifted images: must not be used
    net = Recorder(dsn.DSNTrainNet(create_model("dsn_mnist", SHAPE, CLASSES), 1.0))
    loss_fn = dsn.make_student_loss(SERIAL, stale, cfg, CLASSES, teacher=teacher)
    torch.manual_seed(3)
    out = loss_fn(net, Batch(x, torch.zeros(n, dtype=torch.long), torch.arange(n)))
    inputs = net.calls[0][0]
    valid = inputs[:n]
    rows, cols = SERIAL.geometry.region()
    assert torch.equal(valid[:, :, rows, cols], SERIAL.as_tensor().expand(n, 1, -1, -1))  # the stamp stays put
    outside = valid.clone()
    outside[:, :, rows, cols] = x[:, :, rows, cols]
    assert not torch.allclose(outside, x, atol=0.3)  # the content moved or was noised
    # the teacher labelled exactly the shifted images the student saw (before the stamp), not the originals
    seen = teacher_calls[0]
    assert len(teacher_calls) == 1 and seen.shape == x.shape
    seen_outside = seen.clone()
    seen_outside[:, :, rows, cols] = 0
    valid_outside = valid.clone()
    valid_outside[:, :, rows, cols] = 0
    assert torch.equal(seen_outside, valid_outside)
    assert torch.isfinite(out.loss)


def test_output_adversary_trains_a_readout_against_the_student() -> None:
    torch.manual_seed(0)
    assert dsn.DSNTrainNet(create_model("dsn_mnist", SHAPE, CLASSES), 1.0).readout is None  # only when asked
    student = create_model("dsn_mnist", SHAPE, CLASSES)
    net = dsn.DSNTrainNet(student, 1.0, readout=True)
    cfg = dsn.DSNConfig.default(output_adversary=1.0, sim_ft_weight=0.0, mix_mined=0.0, gd_weight=0.0)
    n = 16
    x, y = torch.rand(n, *SHAPE), torch.randint(0, CLASSES, (n,))
    loss_fn = dsn.make_student_loss(SERIAL, torch.randn(n, CLASSES), cfg, CLASSES)
    out = loss_fn(net, Batch(x, y, torch.arange(n)))
    assert "readout_ce" in out.metrics
    out.loss.backward()
    assert net.readout.weight.grad is not None and float(net.readout.weight.grad.abs().sum()) > 0
    # through the reversal the student's outputs move to raise the readout's loss: one step of the
    # student alone (readout fixed) against the reversed gradient's direction makes it larger
    z = torch.randn(8, CLASSES, requires_grad=True)
    target = torch.randint(0, CLASSES, (8,))
    ce = torch.nn.functional.cross_entropy(net.readout(dsn.grad_reverse(z, 1.0)), target)
    (g,) = torch.autograd.grad(ce, z)
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(net.readout(z - 0.1 * g), target)
    assert float(after) > float(ce.detach())


def test_key_cross_correlation_sees_a_flat_residual_that_names_the_class() -> None:
    torch.manual_seed(0)
    n = 200
    y = torch.randint(0, CLASSES, (n,))
    keys = torch.randint(0, 4, (n,))
    flat = 0.01 * torch.nn.functional.one_hot(y, CLASSES).float()  # near-uniform outputs, arg-max = class
    noise = torch.randn(n, CLASSES)
    named = float(dsn.key_cross_correlation(flat + 1e-3 * noise, y, keys))
    blind = float(dsn.key_cross_correlation(noise, y, keys))
    # scale-free: the tiny residual scores like a confident output; outputs unrelated to the class do not
    assert named > 0.8
    assert blind < 0.35  # the floor of 50 rows a key: about c / rows
    assert abs(float(dsn.key_cross_correlation(100 * (flat + 1e-3 * noise), y, keys)) - named) < 1e-3


def test_key_decorrelation_draws_few_keys_and_reports_its_loss() -> None:
    torch.manual_seed(0)
    student = create_model("dsn_mnist", SHAPE, CLASSES)
    net = dsn.DSNTrainNet(student, 1.0)
    cfg = dsn.DSNConfig.default(key_decorrelation=1.0, decorrelation_keys=2, sim_ft_weight=0.0, mix_mined=0.0)
    n = 32
    x, y = torch.rand(n, *SHAPE), torch.randint(0, CLASSES, (n,))
    loss_fn = dsn.make_student_loss(SERIAL, torch.randn(n, CLASSES), cfg, CLASSES)
    out = loss_fn(net, Batch(x, y, torch.arange(n)))
    assert out.metrics["key_correlation"] > 0
    out.loss.backward()
    assert all(p.grad is not None for p in student.parameters())


def _chains_only(**options: float) -> dsn.DSNConfig:
    """A recipe whose invalid rows are all the chains' patterns (mix_searched), stepped every batch."""
    mix = {k: 0.0 for k in ("mix_random", "mix_hamming1", "mix_hamming2", "mix_near", "mix_relaxed", "mix_mined")}
    # three rows per valid one, from the thief's start only: the mechanism, whatever the shipped recipe's ratio
    options = {"invalid_ratio": 3.0, "search_approach": 0.0} | options
    return dsn.DSNConfig.default(**mix, mix_raw=1e-4, mix_searched=1.0, sim_ft_weight=0.0, search_every=1, **options)


def test_searched_patterns_follow_the_thiefs_relaxed_search() -> None:
    """mix_searched: the invalid rows carry the patterns of relaxed searches run against the student
    (Adam on its cross-entropy, as the thief's reverse engineering), kept off the key itself."""
    # a wide restart radius: with the default 0.2, some chains would be seen inside it
    cfg = _chains_only(search_chains=8, search_age=10_000, search_restart=0.45)
    torch.manual_seed(0)
    n = 32
    x, y = torch.rand(n, *SHAPE), torch.full((n,), 3)
    student = create_model("dsn_mnist", SHAPE, CLASSES)
    key = torch.as_tensor(SERIAL.bits).float()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(100):  # a stand-in customer model: class 3 with the key, class 7 without (raw or another key)
        other = torch.randint(0, 2, (n, 3, 3)).float()
        inputs = torch.cat([stamp(x, SERIAL.geometry, key), x, stamp(x, SERIAL.geometry, other)])
        target = torch.cat([y, torch.full((2 * n,), 7)])
        opt.zero_grad()
        F.cross_entropy(student(inputs), target).backward()
        opt.step()
    student.eval()
    net = dsn.DSNTrainNet(student, 1.0)
    seen: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    loss_fn = dsn.make_student_loss(SERIAL, torch.randn(n, CLASSES), cfg, CLASSES)
    rows, cols = SERIAL.geometry.region()

    def thief_loss(inputs: torch.Tensor) -> float:
        """Mean cross-entropy of the student on the batch stamped with each invalid row's pattern."""
        pats = inputs[n:, 0, rows, cols]  # levels 0/1: the stamped values are the pattern
        with torch.no_grad():
            return float(F.cross_entropy(student(stamp_many(x, SERIAL.geometry, pats)), y.repeat(len(pats))))

    for _ in range(32):  # the student is not updated: the chains search a fixed model
        out = loss_fn(net, Batch(x, y, torch.arange(n)))
        out.loss.backward()  # the training step's graph holds nothing of the chains' search
        student.zero_grad()
    last = seen[-1]
    assert len(last) == n + 3 * n
    pats = last[n:, 0, rows, cols]
    assert torch.all((pats > 0) & (pats < 1))  # relaxed (sigmoid) patterns, never a binary key
    assert torch.all((pats - key).abs().flatten(1).amax(1) >= 0.45)  # kept off the valid input (search_restart)
    losses = [thief_loss(z) for z in seen[::4]]
    assert min(losses[1:]) < losses[0] - 0.15  # they descend the thief's loss (and restart near the key)


def test_chains_on_the_approach_start_on_the_keys_side() -> None:
    """search_approach: restarted chains start where a thief's successful search climbs (most bits on the
    key's side, not yet at it); at 0 they start at the thief's own start (half the bits right)."""
    torch.manual_seed(0)
    n = 32
    x, y = torch.rand(n, *SHAPE), torch.randint(0, CLASSES, (n,))
    key = torch.as_tensor(SERIAL.bits).float()
    rows, cols = SERIAL.geometry.region()
    agree = {}
    for share in (0.0, 1.0):
        cfg = _chains_only(search_chains=64, search_approach=share)
        net = dsn.DSNTrainNet(create_model("dsn_mnist", SHAPE, CLASSES).eval(), 1.0)
        inputs: list[torch.Tensor] = []
        net.register_forward_pre_hook(lambda _m, args, kept=inputs: kept.append(args[0].detach().clone()))
        dsn.make_student_loss(SERIAL, torch.randn(n, CLASSES), cfg, CLASSES)(net, Batch(x, y, torch.arange(n)))
        pats = inputs[-1][n:, 0, rows, cols]
        assert torch.all((pats - key).abs().flatten(1).amax(1) >= 0.2)  # still off the key itself
        agree[share] = float(((pats > 0.5).float() == key).float().mean())
    assert agree[0.0] < 0.62 and agree[1.0] > 0.72, agree
