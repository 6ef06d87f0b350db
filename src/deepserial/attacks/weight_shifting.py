"""Weight shifting: move every convolution's kernels away from their mean filter, then fine-tune.

Lukas, Jiang, Li, Kerschbaum. "SoK: How Robust is Image Classification Deep Neural Network
Watermarking?" IEEE S&P 2022 (a removal attack the SoK introduces); defaults from the
Watermark-Robustness-Toolbox, ``wrt/attacks/removal/weight_shifting.py`` and
``configs/cifar10/attack_configs/weight_shifting.yaml``.

For every convolution kernel ``W`` of shape ``(L, D, S, S)`` (``L`` output filters)::

    W <- W - lmbda * mean_L(W) - lmbda2 * N(0, std(W)^2)

``mean_L(W)`` (shape ``(D, S, S)``, the filter averaged over the output channels) is subtracted from
every filter, and Gaussian noise with the kernel's own standard deviation (over all its entries) is
added on top. With ``lmbda > 1`` the mean filter changes sign: that is exactly the quantity Uchida et
al.'s regulariser writes its bits into (:func:`deepserial.schemes.uchida.flat_mean_weights`), and the
noise disturbs everything else. The network then recovers its accuracy by fine-tuning on the
attacker's data.

WRT defaults followed: ``lmbda = 1.5`` (``weight_shifting1.yaml``: 2.5), ``lmbda2 = 1.0``, only
convolution weights (WRT: parameters whose name holds "conv" and "weight"; ``layers="all"`` adds the
dense layers' weights), then 10 epochs of fine-tuning (the budget's ``epochs``; the project's default
budget is 10 too) at the attack's learning rate. WRT fine-tunes on the victim's softmax labels
(``true_labels: False``): ``labels="victim"``; the default here is the attacker's own labels
(:mod:`deepserial.attacks.targets` says why).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.targets import LabelSource, fine_tune, training_targets
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import EpochCallback


class WeightShiftingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lmbda: float = Field(1.5, description="multiple of the mean filter subtracted from every filter (WRT: 1.5)")
    lmbda2: float = Field(1.0, ge=0, description="noise, in standard deviations of each kernel (WRT: 1.0)")
    layers: Literal["conv", "all"] = Field("conv", description="convolution weights only (WRT), or dense too")
    labels: LabelSource = "true"


def shifted_weights(model: nn.Module, layers: str = "conv") -> list[nn.Parameter]:
    """The weights weight shifting moves: every Conv2d kernel, and with ``layers="all"`` every Linear."""
    kinds: tuple[type[nn.Module], ...] = (nn.Conv2d,) if layers == "conv" else (nn.Conv2d, nn.Linear)
    return [m.weight for m in model.modules() if isinstance(m, kinds)]


@torch.no_grad()
def shift_weights(
    weights: list[nn.Parameter], lmbda: float, lmbda2: float, generator: torch.Generator
) -> list[dict[str, float]]:
    """Shift each weight in place: ``W -= lmbda * W.mean(0) + lmbda2 * N(0, W.std()^2)``.

    Returns per weight the norm of the mean filter before and after (the part Uchida reads)."""
    stats = []
    for w in weights:
        before = float(w.mean(0).norm())
        noise = torch.randn(w.shape, generator=generator).to(w.device, w.dtype) * w.std()
        w.sub_(lmbda * w.mean(0, keepdim=True) + lmbda2 * noise)
        stats.append({"mean_filter_norm_before": before, "mean_filter_norm_after": float(w.mean(0).norm())})
    return stats


@register_attack
class WeightShifting(Attack):
    r"""Weight shifting in the paper 'SoK: How Robust is Image Classification Deep Neural Network
    Watermarking?' (Lukas et al., IEEE S&P 2022), as WRT's ``weight_shifting.py`` implements it.

    Arguments (``Config``):
        lmbda (float): multiple of the mean filter subtracted from each filter. (Default: 1.5)
        lmbda2 (float): Gaussian noise added, in standard deviations of each kernel. (Default: 1.0)
        layers (str): "conv" (every Conv2d weight, WRT) or "all" (and every Linear weight).
        labels (str): fine-tune on the attacker's labels ("true") or the victim's softmax ("victim").

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1]; data.y: :math:`(N)`.
        - each kernel: :math:`(L, D, S, S)`, shifted by :math:`-\lambda\,\bar W` with
          :math:`\bar W` of shape :math:`(1, D, S, S)`.

    Examples::
        >>> attacked, log = get_attack("weight-shifting", {"lmbda": 1.5}).run(model, data, AttackBudget(epochs=10))
        >>> log.details["shifted"]
    """

    name = "weight-shifting"
    citation = (
        "Lukas, Jiang, Li, Kerschbaum. SoK: How Robust is Image Classification Deep Neural Network "
        "Watermarking? IEEE S&P 2022; WRT wrt/attacks/removal/weight_shifting.py"
    )
    Config = WeightShiftingConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        cfg = self.config
        weights = shifted_weights(model, cfg.layers)
        if not weights:
            raise ConfigError(f"weight shifting ({cfg.layers}) found no weight to shift in this network")
        train_data, targets = training_targets(model, data, cfg.labels, budget, log)
        gen = torch.Generator().manual_seed(budget.seed)
        log.details["shifted"] = shift_weights(weights, cfg.lmbda, cfg.lmbda2, gen)
        fine_tune(model, train_data, targets, budget, log, on_epoch_end, desc="weight shifting: fine-tuning")
        return model
