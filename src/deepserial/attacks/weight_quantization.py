"""Weight quantization: round every parameter tensor to ``2**bits`` evenly spaced values.

Hubara, Courbariaux, Soudry, El-Yaniv, Bengio. "Quantized Neural Networks: Training Neural Networks
with Low Precision Weights and Activations." arXiv:1609.07061 (JMLR 2017; WRT's reference). As a
watermark removal attack: Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image Classification
Deep Neural Network Watermarking?" IEEE S&P 2022 (model modification, as model compression would
do); defaults from the Watermark-Robustness-Toolbox ``wrt/attacks/removal/weight_quantization.py``
and ``configs/cifar10/attack_configs/weight_quantization.yaml``: ``bits = 5`` (``weight_quantization1``:
6), each parameter tensor on its own grid from its minimum to its maximum, then 1 epoch of fine-tuning
(the budget's ``epochs``; pass ``AttackBudget(epochs=1)`` for WRT's setting).

A tensor ``w`` becomes ``min + step * round((w - min) / step)`` with ``step = (max - min) / (2**bits - 1)``:
the nearest of ``2**bits`` levels, so it holds at most ``2**bits`` distinct values. (WRT maps a weight
strictly inside one of the ``2**bits - 1`` intervals to the interval's midpoint and leaves a weight
lying exactly on a grid point as it is; the nearest-level code here is the standard ``bits``-bit
uniform quantizer and keeps the count bound exact.) Every parameter is quantized, weights and biases
alike (WRT: ``named_parameters()``); buffers (batch-norm statistics) are not parameters and are kept.

WRT fine-tunes after quantizing and ships the fine-tuned float weights; with ``requantize`` (the
default here) the fine-tuned model is quantized again, so what the attacker ships is a ``bits``-bit
model; ``requantize=False`` reproduces WRT. WRT fine-tunes on the victim's softmax
(``labels="victim"``); the default here is the attacker's labels (:mod:`deepserial.attacks.targets`).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.targets import LabelSource, fine_tune, training_targets
from deepserial.data import TensorData
from deepserial.nets import SplitNet
from deepserial.training import EpochCallback


class WeightQuantizationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bits: int = Field(5, ge=1, le=16, description="bits per weight: 2**bits levels per tensor (WRT: 5)")
    requantize: bool = Field(True, description="quantize again after fine-tuning (WRT: no)")
    labels: LabelSource = "true"


@torch.no_grad()
def quantize_tensor(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` rounded to the nearest of ``2**bits`` evenly spaced values from ``w.min()`` to ``w.max()``
    (any shape; a constant tensor is returned as it is)."""
    lo, hi = w.min(), w.max()
    if not bool(hi > lo):
        return w.clone()
    step = (hi - lo) / (2**bits - 1)
    return lo + step * torch.round((w - lo) / step)


@torch.no_grad()
def quantize_parameters(model: nn.Module, bits: int) -> int:
    """Quantize every parameter of ``model`` in place (:func:`quantize_tensor`); returns how many."""
    params = list(model.parameters())
    for p in params:
        p.copy_(quantize_tensor(p, bits))
    return len(params)


@register_attack
class WeightQuantization(Attack):
    r"""Weight quantization as evaluated in 'SoK: How Robust is Image Classification Deep Neural Network
    Watermarking?' (Lukas et al., IEEE S&P 2022), WRT's ``weight_quantization.py``.

    Arguments (``Config``):
        bits (int): :math:`2^{bits}` levels per parameter tensor. (Default: 5)
        requantize (bool): quantize again after fine-tuning. (Default: True)
        labels (str): fine-tune on the attacker's labels ("true") or the victim's softmax ("victim").

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1]; data.y: :math:`(N)`.
        - every parameter keeps its shape, with at most :math:`2^{bits}` distinct values.

    Examples::
        >>> attacked, log = get_attack("weight-quantization", {"bits": 5}).run(model, data, AttackBudget(epochs=1))
        >>> log.details["quantized_tensors"]
    """

    name = "weight-quantization"
    citation = (
        "Lukas, Jiang, Li, Kerschbaum. SoK: How Robust is Image Classification Deep Neural Network "
        "Watermarking? IEEE S&P 2022; WRT wrt/attacks/removal/weight_quantization.py"
    )
    Config = WeightQuantizationConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        cfg = self.config
        train_data, targets = training_targets(model, data, cfg.labels, budget, log)
        log.details["quantized_tensors"] = quantize_parameters(model, cfg.bits)
        trained_before = log.epochs
        fine_tune(model, train_data, targets, budget, log, on_epoch_end, desc="weight quantization: fine-tuning")
        if cfg.requantize and log.epochs > trained_before:
            quantize_parameters(model, cfg.bits)
        log.details["bits"] = cfg.bits
        return model
