"""Tests for deepserial.training: the shared loop (seeding, logs, parameter subsets, checkpoints)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import (
    Batch,
    LossOut,
    TrainConfig,
    accuracy,
    fit,
    predict_logits,
    resolve_device,
    supervised_loss,
)

N = 200


def quadrant_data(n: int = N, seed: int = 0) -> TensorData:
    """1x8x8 images on a noisy dark background; the label is the quadrant (0..3) that is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 0.7
    return TensorData(x, y.long())


def tiny_net(seed: int = 0) -> SplitNet:
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
    return SplitNet(features, nn.Linear(16, 4), 16)


def cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"epochs": 5, "batch_size": 20, "lr": 1e-2, "device": "cpu", "progress": False}
    return TrainConfig(**(base | kw))  # type: ignore[arg-type]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data() -> TensorData:
    return quadrant_data()


# --------------------------------------------------------------------------------------------------- fit


def test_fit_learns_separable_problem(data: TensorData) -> None:
    model = tiny_net()
    test = quadrant_data(400, seed=1)
    assert accuracy(model, test) < 60.0  # untrained
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # the first optimiser pays torch's one-time lazy imports
    t0 = time.perf_counter()
    log = fit(model, data, supervised_loss, cfg())
    elapsed = time.perf_counter() - t0
    assert elapsed < 20.0  # a guard against pathological slowness (thread oversubscription), not a benchmark
    assert accuracy(model, data) > 90.0
    assert accuracy(model, test) > 90.0
    assert not model.training  # fit leaves the model in evaluation mode
    assert log.epochs[-1]["loss"] < log.epochs[0]["loss"]
    assert log.epochs[-1]["acc"] > 90.0  # metrics of the batch loss are logged per epoch
    assert 0 < log.wall_s < 20.0


def test_fit_same_seed_identical_weights(data: TensorData) -> None:
    a, b = tiny_net(), tiny_net()
    log_a = fit(a, data, supervised_loss, cfg(epochs=2, seed=3))
    log_b = fit(b, data, supervised_loss, cfg(epochs=2, seed=3))
    assert same_state(state(a), state(b))
    assert [e["loss"] for e in log_a.epochs] == [e["loss"] for e in log_b.epochs]
    c = tiny_net()
    fit(c, data, supervised_loss, cfg(epochs=2, seed=4))  # another shuffling order
    assert not same_state(state(a), state(c))


def test_fit_log_counts_samples_and_epochs(data: TensorData) -> None:
    log = fit(tiny_net(), data, supervised_loss, cfg(epochs=3, batch_size=64))  # last batch is partial
    assert [e["epoch"] for e in log.epochs] == [1, 2, 3]
    assert [e["samples"] for e in log.epochs] == [N, N, N]
    assert log.forward_samples == 3 * N
    for e in log.epochs:
        assert {"epoch", "loss", "lr", "samples", "wall_s", "acc"} <= set(e)
        assert e["lr"] == pytest.approx(1e-2)
    d = log.to_dict()
    assert d["forward_samples"] == 3 * N and len(d["epochs"]) == 3


def test_fit_counts_forward_samples_reported_by_loss(data: TensorData) -> None:
    """A loss that forwards each batch twice (e.g. raw + stamped) is counted twice."""

    def double(net: nn.Module, batch: Batch) -> LossOut:
        out = supervised_loss(net, batch)
        out2 = supervised_loss(net, Batch(batch.x.flip(-1), batch.y, batch.idx))
        return LossOut(out.loss + 0 * out2.loss, 2 * len(batch.x), {"custom": 1.0})

    log = fit(tiny_net(), data, double, cfg(epochs=2))
    assert log.forward_samples == 4 * N
    assert [e["samples"] for e in log.epochs] == [2 * N, 2 * N]
    assert all(e["custom"] == pytest.approx(1.0) for e in log.epochs)


def test_fit_visits_every_sample_once_per_epoch(data: TensorData) -> None:
    seen: list[int] = []

    def spy(net: nn.Module, batch: Batch) -> LossOut:
        seen.extend(batch.idx.tolist())
        assert torch.equal(batch.x, data.x[batch.idx]) and torch.equal(batch.y, data.y[batch.idx])
        return supervised_loss(net, batch)

    fit(tiny_net(), data, spy, cfg(epochs=2, batch_size=33))
    assert sorted(seen[:N]) == list(range(N))
    assert sorted(seen[N:]) == list(range(N))
    assert seen[:N] != seen[N:]  # reshuffled each epoch


def test_fit_params_restricts_updates(data: TensorData) -> None:
    model = tiny_net()
    before = state(model)
    fit(model, data, supervised_loss, cfg(epochs=2), params=list(model.classifier.parameters()))
    after = state(model)
    for k in before:
        if k.startswith("features."):
            assert torch.equal(before[k], after[k]), f"{k} changed although it was not in params"
        else:
            assert not torch.equal(before[k], after[k]), f"{k} did not change"


def test_fit_zero_epochs_changes_nothing(data: TensorData) -> None:
    model = tiny_net()
    before = state(model)
    log = fit(model, data, supervised_loss, cfg(epochs=0))
    assert log.epochs == [] and log.forward_samples == 0
    assert same_state(before, state(model))


def test_fit_on_epoch_end_callback(data: TensorData) -> None:
    calls: list[tuple[int, bool]] = []

    def cb(epoch: int, model: nn.Module) -> dict[str, float]:
        calls.append((epoch, model.training))
        return {"val": float(epoch) * 10}

    log = fit(tiny_net(), data, supervised_loss, cfg(epochs=3), on_epoch_end=cb)
    assert calls == [(1, False), (2, False), (3, False)]
    assert [e["val"] for e in log.epochs] == [10.0, 20.0, 30.0]


# ------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_resume(data: TensorData, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt" / "run.pt"
    first = fit(tiny_net(), data, supervised_loss, cfg(epochs=2, checkpoint=ckpt))
    assert ckpt.exists()
    assert [e["epoch"] for e in first.epochs] == [1, 2]
    assert [p.name for p in ckpt.parent.iterdir()] == ["run.pt"]  # no temp file left

    ran: list[int] = []
    resumed_model = tiny_net(seed=123)  # different initial weights: they must be replaced by the checkpoint
    resumed = fit(
        resumed_model,
        data,
        supervised_loss,
        cfg(epochs=4, checkpoint=ckpt),
        on_epoch_end=lambda e, m: ran.append(e) or {},
    )
    assert ran == [3, 4]  # only the missing epochs ran
    assert [e["epoch"] for e in resumed.epochs] == [1, 2, 3, 4]
    assert resumed.epochs[:2] == first.epochs
    assert resumed.forward_samples == 4 * N

    # Resuming gives exactly what one uninterrupted run gives.
    straight_model = tiny_net()
    straight = fit(straight_model, data, supervised_loss, cfg(epochs=4))
    assert same_state(state(resumed_model), state(straight_model))
    assert [e["loss"] for e in resumed.epochs] == [e["loss"] for e in straight.epochs]

    # A finished run restarted with the same checkpoint does no more work.
    ran.clear()
    again = fit(
        tiny_net(), data, supervised_loss, cfg(epochs=4, checkpoint=ckpt), on_epoch_end=lambda e, m: ran.append(e) or {}
    )
    assert ran == [] and len(again.epochs) == 4


def test_checkpoint_resume_keeps_sgd_momentum_exactly(data: TensorData, tmp_path: Path) -> None:
    """SGD's momentum buffers travel through the checkpoint's tensors (Adam's moments through the test
    above): a resumed run matches an uninterrupted one bit for bit."""
    ckpt = tmp_path / "sgd.ckpt"
    sgd = {"optimizer": "sgd", "momentum": 0.9}
    fit(tiny_net(), data, supervised_loss, cfg(epochs=2, checkpoint=ckpt, **sgd))
    resumed_model = tiny_net(seed=5)
    fit(resumed_model, data, supervised_loss, cfg(epochs=3, checkpoint=ckpt, **sgd))
    straight_model = tiny_net()
    fit(straight_model, data, supervised_loss, cfg(epochs=3, **sgd))
    assert same_state(state(resumed_model), state(straight_model))
    with pytest.raises(ConfigError, match="another model"):  # an Adam run cannot take SGD's state
        fit(tiny_net(), data, supervised_loss, cfg(epochs=4, checkpoint=ckpt))


def test_a_damaged_or_foreign_checkpoint_is_refused(data: TensorData, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.pt"
    fit(tiny_net(), data, supervised_loss, cfg(epochs=1, checkpoint=ckpt))
    other = nn.Sequential(nn.Flatten(), nn.Linear(int(data.x[0].numel()), 7))  # another network
    with pytest.raises(ConfigError, match="another model"):
        fit(other, data, supervised_loss, cfg(epochs=2, checkpoint=ckpt))
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    with pytest.raises(ConfigError, match="damaged"):
        fit(tiny_net(), data, supervised_loss, cfg(epochs=2, checkpoint=ckpt))


# --------------------------------------------------------------------------------------- device & config


def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device(None)
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == auto and resolve_device("") == auto


@pytest.mark.parametrize("spec", ["tpu", "gpu0", "cpu:x", "banana"])
def test_resolve_device_unknown(spec: str) -> None:
    with pytest.raises(ConfigError, match="unknown device") as excinfo:
        resolve_device(spec)
    assert "\n" not in str(excinfo.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_gpu() -> None:
    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch size"),
        ({"lr": 0.0}, "learning rate"),
        ({"lr": -1e-3}, "learning rate"),
        ({"lr": float("nan")}, "learning rate"),
        ({"lr": float("inf")}, "learning rate"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_train_config_validation(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw)  # type: ignore[arg-type]


def test_fit_sgd_takes_plain_gradient_steps(data: TensorData) -> None:
    """optimizer='sgd' (null embedding, Table 14): one full-batch epoch is exactly w - lr * grad."""
    model = tiny_net()
    before = state(model)
    ref = tiny_net()
    supervised_loss(ref, Batch(data.x, data.y, torch.arange(N))).loss.backward()
    fit(model, data, supervised_loss, cfg(epochs=1, batch_size=N, lr=0.1, optimizer="sgd"))
    for (name, p), w0 in zip(ref.named_parameters(), before.values(), strict=True):
        assert torch.allclose(model.state_dict()[name], w0 - 0.1 * p.grad, atol=1e-6), name


def test_predict_logits_batches(data: TensorData) -> None:
    model = tiny_net()
    full = predict_logits(model, data.x, batch_size=1000)
    chunked = predict_logits(model, data.x, batch_size=7)
    assert full.shape == (N, 4)
    assert torch.allclose(full, chunked, atol=1e-6)
    assert predict_logits(model, data.x[:0]).numel() == 0
    # A model without parameters (a wrapper, an identity) is queried on the CPU, not refused.
    flat = predict_logits(nn.Flatten(), data.x[:3])
    assert flat.shape == (3, data.x[0].numel()) and flat.device.type == "cpu"
