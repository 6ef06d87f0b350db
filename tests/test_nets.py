"""Tests for deepserial.nets: the registry, the papers' networks, and the receptive-field check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepserial.errors import ConfigError, GeometryError
from deepserial.nets import SplitNet, available_models, check_visible, create_model, visible_mask
from deepserial.serial import SerialGeometry


@pytest.fixture(scope="module")
def mnist_net() -> SplitNet:
    torch.manual_seed(0)
    return create_model("dsn_mnist", (1, 28, 28), 10)


def test_registry_lists_both_networks() -> None:
    models = available_models()
    assert {"dsn_mnist", "dsn_gtsrb"} <= set(models)
    assert all(isinstance(doc, str) and doc for doc in models.values())


@pytest.mark.parametrize(
    ("name", "shape", "classes", "feature_dim", "flat"),
    [
        ("dsn_mnist", (1, 28, 28), 10, 120, 32 * 5 * 5),
        ("dsn_mnist", (3, 32, 32), 43, 120, 32 * 6 * 6),
        ("dsn_gtsrb", (3, 32, 32), 43, 512, 128 * 4 * 4),
        ("dsn_gtsrb", (1, 28, 28), 10, 512, 128 * 3 * 3),
    ],
)
def test_create_model_shapes(name: str, shape: tuple[int, int, int], classes: int, feature_dim: int, flat: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, shape, classes)
    assert isinstance(model, SplitNet)
    assert model.feature_dim == feature_dim
    x = torch.rand(3, *shape)
    with torch.no_grad():
        feats = model.features(x)
        out = model(x)
    assert feats.shape == (3, feature_dim)
    assert out.shape == (3, classes)
    assert torch.equal(out, model.classifier(feats))
    assert torch.isfinite(out).all()
    # The first fully connected layer adapts to the input shape.
    first_fc = next(m for m in model.features.modules() if isinstance(m, nn.Linear))
    assert first_fc.in_features == flat
    assert first_fc.out_features == feature_dim
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == classes
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == shape[0]


def test_create_model_accepts_list_shape() -> None:
    model = create_model("dsn_mnist", [1, 28, 28], 2)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 2)


def test_create_model_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown network 'resnet9000'") as excinfo:
        create_model("resnet9000", (1, 28, 28), 10)
    assert "dsn_mnist" in str(excinfo.value)  # the message lists what is available
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("shape", [(28, 28), (1, 1, 28, 28), (0, 28, 28), (1, 0, 28)])
def test_create_model_bad_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="input shape") as excinfo:
        create_model("dsn_mnist", shape, 10)
    assert "\n" not in str(excinfo.value)


def test_create_model_too_small_input() -> None:
    with pytest.raises(ConfigError, match="too small"):
        create_model("dsn_mnist", (1, 8, 8), 10)


@pytest.mark.parametrize("classes", [1, 0, -3])
def test_create_model_too_few_classes(classes: int) -> None:
    with pytest.raises(ConfigError, match="at least 2 classes"):
        create_model("dsn_mnist", (1, 28, 28), classes)


def test_visible_mask_dsn_mnist(mnist_net: SplitNet) -> None:
    mask = visible_mask(mnist_net, (1, 28, 28))
    assert mask.shape == (28, 28) and mask.dtype == torch.bool
    # Valid 3x3 convolutions and flooring pooling never look at rows/columns 26-27.
    assert mask[:26, :26].all()
    assert not mask[26:, :].any()
    assert not mask[:, 26:].any()


def test_visible_mask_restores_training_mode(mnist_net: SplitNet) -> None:
    mnist_net.train()
    visible_mask(mnist_net, (1, 28, 28), samples=2)
    assert mnist_net.training
    mnist_net.eval()
    visible_mask(mnist_net, (1, 28, 28), samples=2)
    assert not mnist_net.training


def test_visible_mask_padded_network_sees_everything() -> None:
    torch.manual_seed(0)
    model = create_model("dsn_gtsrb", (1, 16, 16), 3)
    assert visible_mask(model, (1, 16, 16)).all()


def test_check_visible_refuses_blind_pixels(mnist_net: SplitNet) -> None:
    g = SerialGeometry(3, 3, 24, 24)  # rows/cols 24-26: row 26 and column 26 are blind -> 5 of 9
    with pytest.raises(GeometryError) as excinfo:
        check_visible(mnist_net, g, (1, 28, 28))
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert msg.startswith("5 of the 9 serial-number pixels")
    assert "rows 0-25" in msg and "columns 0-25" in msg


def test_check_visible_accepts_visible_geometry(mnist_net: SplitNet) -> None:
    check_visible(mnist_net, SerialGeometry(3, 3, 20, 20), (1, 28, 28))
    check_visible(mnist_net, SerialGeometry(3, 3, 23, 23), (1, 28, 28))  # last position fully inside 0-25
    check_visible(mnist_net, SerialGeometry(2, 2, 0, 0), (1, 28, 28))


def test_check_visible_one_blind_column(mnist_net: SplitNet) -> None:
    with pytest.raises(GeometryError, match="^3 of the 9"):
        check_visible(mnist_net, SerialGeometry(3, 3, 10, 24), (1, 28, 28))


def test_check_visible_geometry_outside_input(mnist_net: SplitNet) -> None:
    with pytest.raises(GeometryError, match="does not fit"):
        check_visible(mnist_net, SerialGeometry(3, 3, 26, 26), (1, 28, 28))


def test_visible_mask_is_architectural_even_for_a_silent_model() -> None:
    """A trained model can give no gradient on random inputs (a DSN customer model without its key, a
    model broken by an attack); visibility must still be the architecture's, and the caller's random
    state untouched."""
    live = create_model("dsn_mnist", (1, 28, 28), 10)
    silent = create_model("dsn_mnist", (1, 28, 28), 10)
    with torch.no_grad():
        for p in silent.parameters():
            p.zero_()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    mask = visible_mask(silent, (1, 28, 28))
    assert torch.equal(torch.rand(3), before)
    assert torch.equal(mask, visible_mask(live, (1, 28, 28))) and mask.sum() > 500 and not mask[27].any()


@pytest.mark.parametrize(
    ("name", "shape", "classes", "feature_dim", "n_conv"),
    [
        ("null_digit", (1, 28, 28), 10, 512, 2),  # null embedding Table 10
        ("null_traffic", (3, 48, 48), 43, 512, 6),  # Table 12 (GTSRB at 48x48)
        ("null_traffic", (3, 32, 32), 10, 512, 6),  # Table 13 (CIFAR-10)
        ("deepid", (3, 55, 47), 1283, 160, 4),  # Table 11 (YouTube Faces, DeepID's 55x47 input)
        ("vgg16", (3, 32, 32), 10, 512, 13),  # DSN's Pubfig net: 13 conv + 3 dense
        ("resnet18", (3, 32, 32), 10, 512, 17 + 3),  # 1 stem + 16 block convs (+ 3 projection shortcuts)
    ],
)
def test_larger_networks_of_the_papers(
    name: str, shape: tuple[int, int, int], classes: int, feature_dim: int, n_conv: int
) -> None:
    torch.manual_seed(0)
    model = create_model(name, shape, classes)
    assert model.feature_dim == feature_dim
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == n_conv
    model.eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        feats, out = model.features(x), model(x)
    assert feats.shape == (2, feature_dim) and out.shape == (2, classes)
    assert torch.equal(out, model.classifier(feats))
    # every pixel reaches the output, so a serial number can go anywhere (padded or fully covered convs)
    assert bool(visible_mask(model, shape).all())


def test_deepid_merges_two_scales() -> None:
    torch.manual_seed(0)
    model = create_model("deepid", (3, 55, 47), 10)
    f = model.features
    assert f.fc1.out_features == f.fc2.out_features == 160
    assert f.fc1.in_features == 60 * 5 * 4 and f.fc2.in_features == 80 * 4 * 3


@pytest.mark.parametrize(("name", "shape"), [("deepid", (1, 16, 16)), ("vgg16", (3, 28, 28))])
def test_larger_networks_refuse_too_small_inputs(name: str, shape: tuple[int, int, int]) -> None:
    with pytest.raises(ConfigError, match="too small"):
        create_model(name, shape, 10)
