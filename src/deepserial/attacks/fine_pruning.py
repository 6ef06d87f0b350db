"""Fine-pruning: remove the convolution channels clean data leaves dormant, then fine-tune.

Liu, Dolan-Gavitt, Garg. "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks." RAID 2018: a backdoor (and a backdoor watermark) tends to live in neurons that clean inputs
barely use; pruning the channels of the last convolution in increasing order of their mean activation
on clean data, then fine-tuning, removes it. Evaluated as a watermark removal attack in Lukas et al.,
"SoK: How Robust is Image Classification DNN Watermarking?", IEEE S&P 2022, with the defaults of the
Watermark-Robustness-Toolbox ``wrt/attacks/removal/fine_pruning.py`` and
``configs/cifar10/attack_configs/fine_pruning.yaml``:

- ``rate = 0.96`` (WRT ``ratio``), the share pruned, rounded down (WRT: ``floor(units * ratio)``);
- the lowest mean activations over the attacker's data are pruned (WRT ``np.argpartition`` of the
  activations averaged over its data), then 10 epochs of fine-tuning (the budget's) with the
  pruned units held at zero (WRT keeps its mask module in place during fine-tuning).

Where this differs from WRT, and why: WRT masks *individual activation units* (channel x position) of
a ResNet stage's output with a wrapper module; a mask module is not in this project's model files, so
here whole *channels* (Liu et al.'s unit) are pruned, and the mask lives in the weights: the channel's
kernel and bias, and the affine weight and bias of a batch norm that follows it, are zero, so the
channel outputs exactly 0 after its ReLU. The layer is the last convolution by default (Liu et al.;
WRT prunes ``layer3`` of its CIFAR ResNet, a network this project does not have); ``layer`` picks
another by index among the Conv2d layers in module order. In a residual block the skip connection
still carries the channel's input. WRT fine-tunes on the victim's softmax (``labels="victim"``);
the default here is the attacker's labels (:mod:`deepserial.attacks.targets`).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils import prune

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.targets import LabelSource, fine_tune, training_targets
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import EVAL_BATCH, EpochCallback, model_device

_NORMS = (nn.BatchNorm2d,)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU)


class FinePruningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float = Field(0.96, ge=0.0, lt=1.0, description="share of the layer's channels pruned (WRT: 0.96)")
    layer: int = Field(-1, description="which Conv2d, by index in module order (-1: the last, Liu et al.)")
    labels: LabelSource = "true"


def pick_conv(model: nn.Module, index: int) -> tuple[str, nn.Conv2d]:
    """The ``index``-th Conv2d of ``model`` in module order, with its name."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("fine-pruning needs a convolutional network; this model has no Conv2d layer")
    if not -len(convs) <= index < len(convs):
        raise ConfigError(f"layer {index} is out of range: this network has {len(convs)} convolutions")
    return convs[index]


def activation_site(model: nn.Module, conv: nn.Conv2d) -> tuple[nn.Module, list[nn.Module], bool]:
    """Where ``conv``'s channels are read, the batch norms between, and whether a nonlinearity was found.

    In the ``nn.Sequential`` that holds ``conv``, the modules after it are followed past batch norms
    to the first activation function: its output is the channel's activation. Without one (the end of
    a residual branch), the last module reached stands in, clamped at 0 by the caller.
    """
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.children())
        if not any(k is conv for k in kids):
            continue
        i = next(j for j, k in enumerate(kids) if k is conv)
        norms: list[nn.Module] = []
        site: nn.Module = conv
        for k in kids[i + 1 :]:
            if isinstance(k, _NORMS):
                norms.append(k)
                site = k
                continue
            if isinstance(k, _ACTIVATIONS):
                return k, norms, True
            break
        return site, norms, False
    return conv, [], False


@torch.no_grad()
def mean_channel_activation(
    model: nn.Module, conv: nn.Conv2d, data: TensorData, batch_size: int = EVAL_BATCH
) -> torch.Tensor:
    """Mean activation of each of ``conv``'s output channels over ``data`` (all samples and positions),
    read after the channel's nonlinearity (:func:`activation_site`): how much clean inputs use it."""
    site, _, activated = activation_site(model, conv)
    total = torch.zeros(conv.out_channels, dtype=torch.float64)

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        a = out if activated else out.clamp(min=0)
        total.add_(a.mean(dim=(2, 3)).sum(0).double().cpu())

    dev = model_device(model)
    handle = site.register_forward_hook(hook)
    try:
        model.eval()
        for i in range(0, len(data), batch_size):
            model(data.x[i : i + batch_size].to(dev))
    finally:
        handle.remove()
    return (total / max(len(data), 1)).float()


def mask_channels(conv: nn.Conv2d, norms: list[nn.Module], drop: torch.Tensor) -> list[tuple[nn.Module, str]]:
    """Hold channels ``drop`` of ``conv`` at zero (kernel, bias, and the affine parameters of the batch
    norms after it) with ``torch.nn.utils.prune`` masks; returns the (module, name) pairs masked."""
    keep = torch.ones(conv.out_channels, device=conv.weight.device)
    keep[drop.to(keep.device)] = 0
    masked: list[tuple[nn.Module, str]] = []
    for module in [conv, *norms]:
        for name in ("weight", "bias"):
            p = getattr(module, name, None)
            if p is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            prune.custom_from_mask(module, name, keep.view(shape).expand_as(p).clone())
            masked.append((module, name))
    return masked


@register_attack
class FinePruning(Attack):
    r"""Fine-pruning in the paper 'Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
    Networks' (Liu, Dolan-Gavitt, Garg, RAID 2018), with WRT's defaults (``fine_pruning.py``).

    Arguments (``Config``):
        rate (float): share of the layer's channels pruned, rounded down. (Default: 0.96)
        layer (int): which Conv2d, by index in module order. (Default: -1, the last)
        labels (str): fine-tune on the attacker's labels ("true") or the victim's softmax ("victim").

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1]; data.y: :math:`(N)`.
        - log.details["channel_activity"]: :math:`(L)`, the layer's mean activation per channel.

    Examples::
        >>> attacked, log = get_attack("fine-pruning", {"rate": 0.5}).run(model, data, AttackBudget(epochs=10))
        >>> log.details["pruned_channels"]
    """

    name = "fine-pruning"
    citation = (
        "Liu, Dolan-Gavitt, Garg. Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural "
        "Networks. RAID 2018; WRT wrt/attacks/removal/fine_pruning.py (Lukas et al., IEEE S&P 2022)"
    )
    Config = FinePruningConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        cfg = self.config
        if len(data) == 0:
            raise ConfigError("fine-pruning ranks channels by their activation on the attacker's data; give some")
        name, conv = pick_conv(model, cfg.layer)
        train_data, targets = training_targets(model, data, cfg.labels, budget, log)
        activity = mean_channel_activation(model, conv, data)
        log.forward_samples += len(data)
        k = math.floor(cfg.rate * conv.out_channels)
        drop = torch.argsort(activity, stable=True)[:k]  # ascending: the most dormant first
        _, norms, _ = activation_site(model, conv)
        masked = mask_channels(conv, norms, drop)
        log.details |= {
            "layer": name,
            "pruned_channels": sorted(int(i) for i in drop),
            "channel_activity": [float(a) for a in activity],
        }
        fine_tune(model, train_data, targets, budget, log, on_epoch_end, desc="fine-pruning: fine-tuning")
        for module, pname in masked:
            prune.remove(module, pname)
        return model
