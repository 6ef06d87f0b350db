"""Feature permutation: reorder the hidden units of every layer, and the next layer's inputs with them.

Lukas, Jiang, Li, Kerschbaum. "SoK: How Robust is Image Classification Deep Neural Network
Watermarking?" IEEE S&P 2022, "Feature Permutation" (model modification): a network computes the
same function whatever order its hidden units are stored in. Permuting the output channels of a
layer (its kernels, bias and the batch-norm parameters and statistics after it) and the input
channels of the layer that reads them by the same permutation changes no output, costs no data and no
training, and scrambles every white-box watermark that reads weights or activations by position:
Uchida et al.'s mean filter is read over the input channels of its convolution, DeepSigns' projection
over the penultimate units. The SoK's runtime chart gives it zero cost and lists it as the fastest
attack that removes DeepSigns (WRT ``visualization/barchart_fastest_attack.py``).

WRT itself (``wrt/attacks/removal/feature_shuffling.py``) only switches on a flag of its classifier
wrapper; there are no hyperparameters to follow. This module does the weight-space permutation:

- the network is read as chains of modules (``nn.Sequential`` contents, nested ones flattened; a
  :class:`~deepserial.nets.SplitNet`'s ``features`` followed by its ``classifier``). Within a chain, a
  Conv2d or Linear *producer* is paired with the next Conv2d or Linear *consumer* when only
  channel-wise modules lie between (activations, pooling, dropout, batch norms, a Flatten): those
  commute with a channel permutation. A Flatten between a convolution and a dense layer makes each
  channel a block of ``H * W`` consecutive inputs of the dense layer, moved as a block;
- other modules (a residual block, DeepID's two-branch layer) end a chain; the Sequentials inside them
  are chains of their own (the two convolutions inside a residual branch are paired, the stream
  between blocks is not);
- the classifier's outputs are never permuted (they are the labels), grouped convolutions are left
  alone.

Every paired layer gets its own uniformly random permutation (seeded by ``budget.seed``). Outputs are
unchanged up to floating-point summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.data import TensorData
from deepserial.nets import SplitNet
from deepserial.training import EpochCallback

_WEIGHTED = (nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
#: Modules that act on each channel alone (or not at all): a channel permutation passes through them.
_CHANNELWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)


class FeaturePermutationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_layers: int | None = Field(None, ge=1, description="permute at most this many layers (None: every one)")


@dataclass
class Pair:
    """A producer whose output units feed ``consumer`` directly (through channel-wise modules)."""

    producer: nn.Conv2d | nn.Linear
    norms: list[nn.Module]
    consumer: nn.Conv2d | nn.Linear
    block: int  # consumer inputs per producer unit (H * W across a Flatten, else 1)


def _units_out(m: nn.Module) -> int:
    return int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)


def _units_in(m: nn.Module) -> int:
    return int(m.in_channels if isinstance(m, nn.Conv2d) else m.in_features)


def _flatten(module: nn.Module) -> list[nn.Module]:
    """The modules a Sequential applies in order, nested Sequentials unpacked."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module.children() for leaf in _flatten(child)]
    return [module]


def _pairs_in_chain(chain: list[nn.Module]) -> list[Pair]:
    pairs = []
    for i, producer in enumerate(chain):
        if not isinstance(producer, _WEIGHTED) or getattr(producer, "groups", 1) != 1:
            continue
        norms: list[nn.Module] = []
        flattened = False
        for m in chain[i + 1 :]:
            if isinstance(m, _NORMS):
                norms.append(m)
            elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
                flattened = True
            elif isinstance(m, _CHANNELWISE):
                continue
            elif isinstance(m, _WEIGHTED) and getattr(m, "groups", 1) == 1:
                units, inputs = _units_out(producer), _units_in(m)
                fits = all(int(n.num_features) == units for n in norms) and inputs % units == 0
                conv_in = isinstance(producer, nn.Conv2d)
                if conv_in and isinstance(m, nn.Conv2d):
                    fits = fits and not flattened and inputs == units
                elif conv_in:  # convolution -> dense: only across a Flatten, a block of H * W per channel
                    fits = fits and flattened
                else:  # dense -> dense (a Flatten of a 2-D batch changes nothing); dense -> conv never
                    fits = fits and isinstance(m, nn.Linear) and inputs == units
                if fits:
                    pairs.append(Pair(producer, norms, m, inputs // units))
                break
            else:
                break
    return pairs


def permutable_pairs(model: nn.Module) -> list[Pair]:
    """Every (producer, consumer) pair of ``model`` that a consistent permutation leaves unchanged."""
    pairs: list[Pair] = []

    def visit(module: nn.Module, chain: list[nn.Module] | None) -> None:
        if chain is not None:
            pairs.extend(_pairs_in_chain(chain))
            inner = chain
        else:
            inner = list(module.children())
        for m in inner:
            if isinstance(m, nn.Sequential):
                visit(m, _flatten(m))
            elif isinstance(m, SplitNet):
                visit(m, _flatten(m.features) + _flatten(m.classifier))
            elif any(True for _ in m.children()):
                visit(m, None)

    if isinstance(model, SplitNet):
        visit(model, _flatten(model.features) + _flatten(model.classifier))
    else:
        visit(model, _flatten(model) if isinstance(model, nn.Sequential) else None)
    return pairs


@torch.no_grad()
def permute_pair(pair: Pair, perm: torch.Tensor) -> None:
    """Reorder the producer's output units by ``perm`` (new unit ``k`` is old unit ``perm[k]``) and the
    consumer's inputs the same way, in place."""
    p, c = pair.producer, pair.consumer
    perm = perm.to(p.weight.device)
    p.weight.copy_(p.weight[perm])
    if p.bias is not None:
        p.bias.copy_(p.bias[perm])
    for n in pair.norms:
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(n, name, None)
            if t is not None:
                t.copy_(t[perm])
    w = c.weight
    if pair.block == 1:
        w.copy_(w[:, perm])
    else:
        shaped = w.view(w.shape[0], -1, pair.block)
        w.copy_(shaped[:, perm, :].reshape(w.shape))


@register_attack
class FeaturePermutation(Attack):
    r"""Feature permutation from 'SoK: How Robust is Image Classification Deep Neural Network
    Watermarking?' (Lukas et al., IEEE S&P 2022): a function-preserving reordering of hidden units.

    Arguments (``Config``):
        max_layers (int | None): permute at most this many layers, the first ones found. (Default: all)

    Shape:
        - data: unused (the attack needs no data; ``log.samples`` is 0).
        - a producer weight :math:`(L, \dots)` becomes ``W[perm]``; its consumer's :math:`(O, L \cdot B, \dots)`
          has its input units (blocks of :math:`B`) reordered by the same ``perm``.

    Examples::
        >>> attacked, log = get_attack("feature-permutation").run(model, data, AttackBudget(epochs=0))
        >>> log.details["permuted_layers"]
    """

    name = "feature-permutation"
    citation = (
        "Lukas, Jiang, Li, Kerschbaum. SoK: How Robust is Image Classification Deep Neural Network "
        "Watermarking? IEEE S&P 2022 (Feature Permutation); WRT wrt/attacks/removal/feature_shuffling.py"
    )
    Config = FeaturePermutationConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        pairs = permutable_pairs(model)[: self.config.max_layers]
        names = {id(m): n for n, m in model.named_modules()}
        gen = torch.Generator().manual_seed(budget.seed)
        for pair in pairs:
            permute_pair(pair, torch.randperm(_units_out(pair.producer), generator=gen))
        log.samples = 0
        log.details["permuted_layers"] = [names[id(p.producer)] for p in pairs]
        return model
