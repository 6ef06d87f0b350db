"""Networks of the papers' appendices, by name, through one registry.

``create_model("dsn_mnist", input_shape=(1, 28, 28), num_classes=10)`` builds a network whose layer
sizes adapt to the input shape and class count. Every network is a :class:`SplitNet`: a feature
extractor ``features`` (DSN's Ge, ending in the penultimate activation) and a ``classifier`` (Gy),
because DSN trains a second head on Ge, DeepSigns reads the penultimate activations, and transfer
learning replaces the classifier.

Your own networks join the same registry (:func:`register_model`); a builder may return any classifier
``nn.Module``, which :func:`deepserial.nets.adapters.as_split_net` splits into Ge and Gy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from deepserial.errors import ConfigError, GeometryError
from deepserial.nets.adapters import as_split_net
from deepserial.nets.split import SplitNet
from deepserial.registry import Registry

__all__ = [
    "MODELS",
    "SplitNet",
    "available_models",
    "check_visible",
    "create_model",
    "register",
    "register_model",
    "visible_mask",
]


#: A builder ``(input_shape, num_classes) -> model``: a SplitNet, or any classifier ``nn.Module``
#: that :func:`deepserial.nets.adapters.as_split_net` can split at its last linear layer.
Builder = Callable[[tuple[int, int, int], int], nn.Module]

MODELS: Registry[Builder] = Registry("network")


def register(name: str, doc: str) -> Callable[[Builder], Builder]:
    """Decorator: add a builder ``(input_shape, num_classes) -> SplitNet`` to the registry."""
    return MODELS.register(name, doc=doc)


def register_model(
    name: str, builder: Builder | None = None, *, doc: str | None = None, replace: bool = False
) -> Builder | Callable[[Builder], Builder]:
    """Make a network of your own available by name to every workflow function and to model files.

    ``builder(input_shape, num_classes)`` returns a :class:`SplitNet` or any classifier ``nn.Module``
    (split at its last ``nn.Linear`` by :func:`~deepserial.nets.adapters.as_split_net`, checked on a
    probe input). Files record the network by name: a process that loads them registers it first.
    Without ``builder``, a decorator. ``doc`` defaults to the first line of the builder's docstring.
    """
    return MODELS.register(name, builder, doc=doc, replace=replace)


def available_models() -> dict[str, str]:
    """Registered network names mapped to a one-line description."""
    return MODELS.docs()


def create_model(name: str, input_shape: Sequence[int], num_classes: int) -> SplitNet:
    """Build a registered network for inputs of shape (C, H, W) and ``num_classes`` outputs."""
    builder = MODELS.get(name)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input shape must be (C, H, W), got {tuple(input_shape)}")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    model = builder(shape, int(num_classes))
    if not isinstance(model, SplitNet):
        model = as_split_net(model, input_shape=shape)
    if getattr(model.classifier, "out_features", num_classes) != num_classes:
        raise ConfigError(
            f"network {name!r} built {model.classifier.out_features} outputs for {num_classes} classes; "
            "its builder must size the last layer with the num_classes it is given"
        )
    return model


def _flat_dim(body: nn.Module, input_shape: tuple[int, int, int]) -> int:
    was = body.training
    body.eval()  # batch norm cannot take one probe sample in training mode
    with torch.no_grad():
        try:
            return int(body(torch.zeros(1, *input_shape)).flatten(1).shape[1])
        except (RuntimeError, ValueError):
            raise ConfigError(f"input shape {input_shape} is too small for this network") from None
        finally:
            body.train(was)


def _conv_stack(in_ch: int, plan: Sequence[int | str], padding: int) -> nn.Sequential:
    """3x3 convolutions with ReLU ('M' = 2x2 max pooling), as in the papers' tables."""
    layers: list[nn.Module] = []
    ch = in_ch
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(ch, int(item), 3, 1, padding), nn.ReLU(inplace=True)]
            ch = int(item)
    return nn.Sequential(*layers)


def _build(
    input_shape: tuple[int, int, int], num_classes: int, plan: Sequence[int | str], hidden: int, padding: int
) -> SplitNet:
    body = _conv_stack(input_shape[0], plan, padding)
    flat = _flat_dim(body, input_shape)
    features = nn.Sequential(body, nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True))
    return SplitNet(features, nn.Linear(hidden, num_classes), hidden)


@register("dsn_mnist", "DSN Table 7: 2 x (conv 32 3x3 valid + maxpool) + FC 120 + FC classes (the paper's MNIST net)")
def dsn_mnist(input_shape: tuple[int, int, int], num_classes: int) -> SplitNet:
    return _build(input_shape, num_classes, [32, "M", 32, "M"], 120, padding=0)


@register("dsn_gtsrb", "DSN Table 8: 3 x (2 conv 3x3 same + maxpool), 32-64-128 channels, FC 512 + FC classes")
def dsn_gtsrb(input_shape: tuple[int, int, int], num_classes: int) -> SplitNet:
    # Six valid 3x3 convolutions would shrink a 32x32 input to nothing; the table's sizes only work
    # with "same" padding, so this net pads (Table 7 keeps the valid convolutions it can afford).
    return _build(input_shape, num_classes, [32, 32, "M", 64, 64, "M", 128, 128, "M"], 512, padding=1)


@register("null_digit", "Null embedding Table 10 (Digit): conv 32 5x5 + pool, conv 64 5x5 + pool, FC 512 + FC classes")
def null_digit(input_shape: tuple[int, int, int], num_classes: int) -> SplitNet:
    body = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    features = nn.Sequential(body, nn.Flatten(), nn.Linear(_flat_dim(body, input_shape), 512), nn.ReLU(inplace=True))
    return SplitNet(features, nn.Linear(512, num_classes), 512)


@register(
    "null_traffic",
    "Null embedding Tables 12-13 (Traffic, Object; GTSRB at 48x48, CIFAR-10): 6 conv 3x3 "
    "(32-32-64-64-128-128, pool after each pair) + FC 512 + FC 512 + FC classes",
)
def null_traffic(input_shape: tuple[int, int, int], num_classes: int) -> SplitNet:
    # The tables give no padding; "same" padding keeps every pixel visible to the serial number.
    body = _conv_stack(input_shape[0], [32, 32, "M", 64, 64, "M", 128, 128, "M"], padding=1)
    features = nn.Sequential(
        body,
        nn.Flatten(),
        nn.Linear(_flat_dim(body, input_shape), 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
    )
    return SplitNet(features, nn.Linear(512, num_classes), 512)


class _DeepIDFeatures(nn.Module):
    """DeepID's feature extractor (Sun, Wang, Tang 2014; null embedding Table 11): the 160-d layer sums
    a dense map of pool_3 and a dense map of conv_4 (multi-scale features), then ReLU."""

    def __init__(self, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(input_shape[0], 20, 4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 40, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(40, 60, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.conv4 = nn.Sequential(nn.Conv2d(60, 80, 2), nn.ReLU(inplace=True))
        with torch.no_grad():
            try:
                p3 = self.trunk(torch.zeros(1, *input_shape))
                c4 = self.conv4(p3)
            except RuntimeError:
                raise ConfigError(f"input shape {input_shape} is too small for DeepID (at least 31x31)") from None
        self.fc1 = nn.Linear(p3.flatten(1).shape[1], 160)
        self.fc2 = nn.Linear(c4.flatten(1).shape[1], 160)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.trunk(x)
        return torch.relu(self.fc1(p3.flatten(1)) + self.fc2(self.conv4(p3).flatten(1)))


@register(
    "deepid",
    "Null embedding Table 11 (Face): DeepID, 4 conv (20 4x4, 40 3x3, 60 3x3, 80 2x2) + merged FC 160 + FC classes",
)
def deepid(input_shape: tuple[int, int, int], num_classes: int) -> SplitNet:
    return SplitNet(_DeepIDFeatures(input_shape), nn.Linear(160, num_classes), 160)


@register(
    "vgg16",
    "VGG-16 style (DSN's Pubfig net: 13 conv + 3 dense): 13 conv 3x3 with batch norm "
    "(64-128-256-512-512), FC 512 + FC 512 + FC classes",
)
def vgg16(input_shape: tuple[int, int, int], num_classes: int) -> SplitNet:
    plan: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers: list[nn.Module] = []
    ch = input_shape[0]
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(ch, int(item), 3, 1, 1), nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            ch = int(item)
    body = nn.Sequential(*layers)  # five poolings: at least 32x32 inputs
    features = nn.Sequential(
        body,
        nn.Flatten(),
        nn.Linear(_flat_dim(body, input_shape), 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
    )
    return SplitNet(features, nn.Linear(512, num_classes), 512)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


@register(
    "resnet18",
    "ResNet-18 for 32x32 inputs (He et al. 2016, CIFAR stem: one 3x3 conv, no max pooling): "
    "4 stages x 2 basic blocks (64-128-256-512), global average pooling + FC classes",
)
def resnet18(input_shape: tuple[int, int, int], num_classes: int) -> SplitNet:
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
        cin = cout
    features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return SplitNet(features, nn.Linear(512, num_classes), 512)


def visible_mask(model: nn.Module, input_shape: Sequence[int], samples: int = 8, seed: int = 0) -> torch.Tensor:
    """Boolean (H, W) mask of input pixels that influence the output of ``model`` as built.

    A pixel is visible when the gradient of the summed logits with respect to it is non-zero for
    at least one of ``samples`` random inputs (all channels pooled). Pixels cropped away by valid
    convolutions and flooring pooling have an exactly-zero gradient for every input.

    Visibility is a property of the architecture, so it is measured on a copy of ``model`` with
    freshly initialised weights: a trained model can have no gradient at all on random inputs (a DSN
    customer model whose features are silent without its serial number, a model broken by an
    attack), which would make every pixel look invisible.
    """
    import copy

    probe = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state as it was
        torch.manual_seed(seed)
        for m in probe.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, *input_shape, generator=g).requires_grad_(True)
    probe.eval()
    with torch.enable_grad():
        out = probe(x)
        out = out[0] if isinstance(out, tuple) else out
        (grad,) = torch.autograd.grad(out.sum(), x)
    return grad.abs().sum(dim=(0, 1)) > 0


def check_visible(model: nn.Module, geometry, input_shape: Sequence[int]) -> None:
    """Refuse a serial-number geometry with pixels the network can never see.

    A bit the network cannot see cannot be checked: keys that differ only there unlock the model
    (the DSN Table 7 net ignores input rows and columns 26-27 of a 28x28 image).
    """
    geometry.check_fits(tuple(input_shape))
    mask = visible_mask(model, input_shape)
    region = mask[geometry.region()]
    if not bool(region.all()):
        blind = int((~region).sum())
        rows = torch.nonzero(mask.any(dim=1)).flatten()
        cols = torch.nonzero(mask.any(dim=0)).flatten()
        if len(rows) == 0:
            raise GeometryError("no input pixel reaches this network's output; check the network")
        raise GeometryError(
            f"{blind} of the {geometry.nbits} serial-number pixels ({geometry.describe()}) never reach the "
            f"network's output; this network sees rows {int(rows.min())}-{int(rows.max())} and columns "
            f"{int(cols.min())}-{int(cols.max())}: move the serial number inside that field"
        )
