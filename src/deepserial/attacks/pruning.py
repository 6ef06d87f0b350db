"""Pruning attacks: remove weights or neurons, optionally fine-tune the survivors.

- **Global L1 unstructured weight pruning**: the ``rate`` smallest-magnitude weights over every
  convolution and linear layer together are set to zero (Tang, Du, Hu, "Deep Serial Number",
  arXiv:2011.08960, Table 4; Rouhani, Chen, Koushanfar, "DeepSigns", ASPLOS 2019, §4.2 / Fig. 6;
  Zhong et al., "A New Label Helps", PAKDD 2020, Fig. 4). Biases are kept, as in those papers.
- **Ascending neuron pruning**: the channels of the last convolution that clean inputs activate
  least are removed first (Liu, Dolan-Gavitt, Garg, "Fine-Pruning", RAID 2018; used against null
  embedding in Li, Wenger, Zheng, Zhao, arXiv:1910.01226, §8.2 / Fig. 6).

With ``budget.epochs > 0`` the pruned model is fine-tuned on the attacker's data with the pruned
weights held at zero (PyTorch's pruning masks stay in place during training, then are made
permanent), the "pruning + fine-tuning" variant the papers also report.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils import prune

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import EpochCallback, fit, model_device, supervised_loss


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every convolution and linear layer's weight, the parameters global pruning ranks together."""
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def zero_fraction(model: nn.Module) -> float:
    """The share of exactly-zero weights over :func:`prunable` layers."""
    weights = [getattr(m, n) for m, n in prunable(model)]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights)) / max(total, 1)


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last convolution of the network (Fine-Pruning's target layer)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("neuron pruning needs a convolutional network; this model has no Conv2d layer")
    return convs[-1]


@torch.no_grad()
def channel_activity(model: nn.Module, conv: nn.Conv2d, data: TensorData, batch_size: int = 512) -> torch.Tensor:
    """Mean activation (after the ReLU that follows, i.e. clamped at 0) of each of ``conv``'s channels
    over ``data``: how much clean inputs use each neuron."""
    dev = model_device(model)
    total = torch.zeros(conv.out_channels, dtype=torch.float64)
    seen = 0

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        total.add_(out.clamp(min=0).mean(dim=(2, 3)).sum(0).double().cpu())

    handle = conv.register_forward_hook(hook)
    try:
        model.eval()
        for i in range(0, len(data), batch_size):
            model(data.x[i : i + batch_size].to(dev))
            seen += len(data.x[i : i + batch_size])
    finally:
        handle.remove()
    return (total / max(seen, 1)).float()


class PruningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["global-l1", "neuron"] = "global-l1"
    rate: float = Field(0.5, ge=0.0, lt=1.0, description="share of weights (global-l1) or channels (neuron)")


@register_attack
class Pruning(Attack):
    """Prune a copy of the model (global L1 weights, or ascending neurons), then optionally fine-tune."""

    name = "pruning"
    citation = (
        "Tang, Du, Hu. Deep Serial Number, arXiv:2011.08960, Table 4; Rouhani et al. DeepSigns, ASPLOS "
        "2019, Fig. 6; Liu, Dolan-Gavitt, Garg. Fine-Pruning, RAID 2018 (neuron pruning, as in Li et al. "
        "arXiv:1910.01226 §8.2)"
    )
    Config = PruningConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        rate = float(self.config.rate)
        if self.config.method == "global-l1":
            prune.global_unstructured(prunable(model), pruning_method=prune.L1Unstructured, amount=rate)
            pruned = prunable(model)
        else:
            if len(data) == 0:
                raise ConfigError(
                    "neuron pruning ranks channels by their activation on the attacker's data; give it some"
                )
            conv = last_conv(model)
            activity = channel_activity(model, conv, data)
            k = int(round(rate * conv.out_channels))
            drop = torch.argsort(activity)[:k]  # ascending: least used first
            keep = torch.ones(conv.out_channels)
            keep[drop] = 0
            prune.custom_from_mask(conv, "weight", keep.view(-1, 1, 1, 1).expand_as(conv.weight).to(conv.weight.device))
            if conv.bias is not None:
                prune.custom_from_mask(conv, "bias", keep.to(conv.bias.device))
            pruned = [(conv, "weight")] + ([(conv, "bias")] if conv.bias is not None else [])
            log.details["pruned_channels"] = sorted(int(i) for i in drop)
            log.details["channel_activity"] = [float(a) for a in activity]
        if budget.epochs > 0:
            log.add_training(
                fit(
                    model,
                    data,
                    supervised_loss,
                    budget.train_config(),
                    on_epoch_end=on_epoch_end,
                    desc="fine-tuning after pruning",
                )
            )
        for module, name in pruned:
            prune.remove(module, name)
        log.details["zero_weight_fraction"] = zero_fraction(model)
        return model
