"""Any classifier ``nn.Module`` as a :class:`~deepserial.nets.SplitNet`: bring your own network.

DSN trains a second head on the feature extractor Ge, DeepSigns reads the penultimate activations,
transfer-learning and fine-tuning attacks replace or retrain the classification layer Gy: each needs
the network in two parts. The registry's networks are built split; :func:`as_split_net` splits yours,
at a named child (the final ``nn.Linear``: ``fc`` of a torchvision ResNet, ``classifier.6`` of a VGG)
or from the two modules when you already have them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from deepserial.errors import ConfigError
from deepserial.nets.split import SplitNet

__all__ = ["as_split_net"]


def as_split_net(
    model: nn.Module | None = None,
    *,
    classifier: str | nn.Module | None = None,
    features: nn.Module | None = None,
    input_shape: Sequence[int] | None = None,
) -> SplitNet:
    """A :class:`SplitNet` that computes what ``model`` computes, split before its classification layer.

    Three uses:

    - ``as_split_net(model, classifier="fc")``: ``classifier`` names the model's final ``nn.Linear``
      (a dotted path such as ``"head.2"`` reaches nested children; default: the last ``nn.Linear`` in
      module order). Ge is a copy of ``model`` with that child replaced by ``nn.Identity``, so it
      returns the vector the layer used to receive; Gy is the copied layer. ``model`` itself is left
      untouched and shares no parameter with the result.
    - ``as_split_net(features=ge, classifier=gy)``: two modules used as they are; ``gy`` is one
      ``nn.Linear`` applied to the ``(N, D)`` output of ``ge``.
    - a :class:`SplitNet` (and nothing else) comes back as it is.

    Splitting at a child is right when that layer is the last thing ``model.forward`` does, applied to
    a flat vector: true of most classifiers (ResNet, VGG, MobileNet, a ``Sequential`` ending in a
    ``Linear``). With ``input_shape`` the split is checked on a probe input in eval mode: the same
    outputs as ``model`` and features of shape ``(N, D)``; a one-line ConfigError says what differs.

    Arguments:
        model: the classifier to split (None when ``features`` is given).
        classifier: the name of ``model``'s final ``nn.Linear``; with ``features``, the layer itself.
        features: the feature extractor Ge, when you have it as a module of its own.
        input_shape: ``(C, H, W)`` of one input, to check the split on a probe batch.

    Shape:
        - input: ``(N, C, H, W)``; ``features(x)``: ``(N, D)`` with ``D = classifier.in_features``;
          output: ``(N, K)`` logits.

    Example::

        >>> net = as_split_net(torchvision.models.resnet18(num_classes=10), classifier="fc", input_shape=(3, 32, 32))
        >>> net.features(x).shape, net(x).shape  # (N, 512), (N, 10)
    """
    if isinstance(model, SplitNet) and classifier is None and features is None:
        return model
    reference: nn.Module | None = None
    if features is not None:
        if model is not None:
            raise ConfigError("pass either model (to split it) or features and classifier (already split), not both")
        if not isinstance(features, nn.Module) or not isinstance(classifier, nn.Linear):
            raise ConfigError(
                f"features must be an nn.Module and classifier one nn.Linear layer, got "
                f"{type(features).__name__} and {type(classifier).__name__}"
            )
        net = SplitNet(features, classifier, int(classifier.in_features))
    else:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"as_split_net needs an nn.Module to split, got {type(model).__name__}")
        if classifier is not None and not isinstance(classifier, str):
            raise ConfigError(
                "name the classification layer of model (classifier='fc'), or pass features= and classifier= modules"
            )
        name = classifier or _last_linear(model)
        ge = copy.deepcopy(model)
        head = _child(ge, name)
        if not isinstance(head, nn.Linear):
            raise ConfigError(
                f"{name!r} is a {type(head).__name__}, not an nn.Linear; name the final linear layer "
                "(the one that outputs the class scores)"
            )
        parent, _, attr = name.rpartition(".")
        setattr(ge.get_submodule(parent) if parent else ge, attr, nn.Identity())
        net = SplitNet(ge, head, int(head.in_features))
        reference = model
    if input_shape is not None:
        _check(net, reference, tuple(int(s) for s in input_shape))
    return net


def _last_linear(model: nn.Module) -> str:
    """The name of the last ``nn.Linear`` in module order (the root itself does not count)."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear child to split at; name its classification layer "
            "(classifier='...') or pass features= and classifier= modules"
        )
    return names[-1]


def _child(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted path ``name``, or a one-line error listing the top-level children."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children()) or "none"
        raise ConfigError(f"{type(model).__name__} has no child {name!r}; its children: {children}") from None


def _run(module: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    """``module(x)``, or a one-line ConfigError starting with ``what`` when it fails."""
    try:
        out = module(x)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what}: {first}") from None
    return out[0] if isinstance(out, tuple) else out


def _check(net: SplitNet, reference: nn.Module | None, shape: tuple[int, ...]) -> None:
    """Run a probe batch through ``net`` (and ``reference``) in eval mode; refuse a split that differs.

    On PyTorch's ``meta`` device (networks sized without memory, as model files are checked) only the
    shapes can be compared."""
    params = list(net.parameters())
    device = params[0].device if params else torch.device("cpu")
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0), device="cpu").to(device)
    modes = [(m, m.training) for m in (net, reference) if m is not None]
    try:
        for m, _ in modes:
            m.eval()
        with torch.no_grad():
            want = None
            what = f"the features do not take inputs of shape {shape}"
            if reference is not None:
                want = _run(reference, x, f"the network does not take inputs of shape {shape}")
                what = "splitting the model there breaks its forward (name its final nn.Linear)"
            f = _run(net.features, x, what)
            if f.dim() != 2 or f.shape[1] != net.feature_dim:
                raise ConfigError(
                    f"the features end in shape {tuple(f.shape[1:])}, but the classifier takes vectors of "
                    f"{net.feature_dim}; split at the layer applied to the flat feature vector"
                )
            out = net.classifier(f)
            same = want is None or (
                want.shape == out.shape and (out.is_meta or torch.allclose(out, want, rtol=1e-4, atol=1e-5))
            )
            if not same:
                raise ConfigError(
                    "splitting the model there changes its output: the named layer must be the last thing its "
                    "forward does (name the final nn.Linear, or pass features= and classifier=)"
                )
    finally:
        for m, was in modes:
            m.train(was)
