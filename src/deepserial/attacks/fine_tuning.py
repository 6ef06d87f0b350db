"""Fine-tuning attacks and the from-scratch reference they are judged against.

The variants are those Adi, Baum, Cisse, Pinkas, Keshet name ("Turning Your Weakness Into a Strength:
Watermarking Deep Neural Networks by Backdooring", USENIX Security 2018, §5.1): FTLL fine-tunes the
last layer, FTAL all layers, RTLL re-initialises the last layer and trains only it, RTAL
re-initialises it and trains all layers. The papers that use them:

- Tang, Du, Hu. "Deep Serial Number" (arXiv:2011.08960), §3.5 / Table 3 and Fig. 2: an attacker
  holding 10-40% of the training data fine-tunes a DSN customer model to work without the serial
  number; the "*" rows train the same network from scratch on the same data (:class:`FromScratch`).
- Li, Wenger, Zheng, Zhao. "Piracy Resistant Watermarks for DNNs" (arXiv:1910.01226), §8.1.
- Zhong et al. "A New Label Helps" (PAKDD 2020), §4.2 / Table 1; Rouhani, Chen, Koushanfar.
  "DeepSigns" (ASPLOS 2019), §4.2 / Table 3: fine-tuning at the final learning rate of the original
  training, without the watermark's loss terms.

The attacker trains with plain cross-entropy on its own labelled data through the shared loop; the
learning rate is constant (the budget's, else 1e-3, the last rate of this project's default Adam
training) unless ``plateau`` asks for the loop's plateau schedule.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.data import TensorData
from deepserial.nets import SplitNet
from deepserial.training import EpochCallback, fit, supervised_loss

CITATION_ADI = (
    "Adi, Baum, Cisse, Pinkas, Keshet. Turning Your Weakness Into a Strength: Watermarking Deep "
    "Neural Networks by Backdooring. USENIX Security 2018 (variant names); Tang, Du, Hu. Deep Serial "
    "Number, arXiv:2011.08960, §3.5"
)


def reinitialise(module: nn.Module, seed: int) -> None:
    """Fresh parameters for every layer of ``module`` that can reset itself (PyTorch's default init)."""
    torch.manual_seed(seed)
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


class FineTuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["FTAL", "FTLL", "RTAL", "RTLL"] = "FTAL"
    plateau: bool = False  # use the shared loop's plateau schedule instead of a constant rate


@register_attack
class FineTuning(Attack):
    """Train the stolen model further on the attacker's data (FTAL / FTLL / RTAL / RTLL)."""

    name = "fine-tuning"
    citation = CITATION_ADI
    Config = FineTuningConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        mode = self.config.mode
        if mode.startswith("RT"):
            reinitialise(model.classifier, budget.seed)
        params = list(model.classifier.parameters()) if mode.endswith("LL") else None
        train = budget.train_config(constant_lr=not self.config.plateau)
        log.add_training(
            fit(
                model,
                data,
                supervised_loss,
                train,
                params=params,
                on_epoch_end=on_epoch_end,
                desc=f"fine-tuning {mode}",
            )
        )
        log.details["trained_parameters"] = sum(p.numel() for p in (params or model.parameters()))
        return model


class FromScratchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plateau: bool = True  # an honest reference trains as well as the loop can


@register_attack
class FromScratch(Attack):
    """The reference every removal attack is judged against: the victim's architecture, freshly
    initialised, trained on the attacker's data with the same budget (DSN's "MNIST*" rows). An attack
    that does no better than this has not stolen anything the attacker's data did not already give."""

    name = "from-scratch"
    citation = "Tang, Du, Hu. Deep Serial Number, arXiv:2011.08960, Tables 3 and 5 (rows marked *)"
    Config = FromScratchConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        reinitialise(model, budget.seed)
        train = budget.train_config(constant_lr=not self.config.plateau)
        log.add_training(fit(model, data, supervised_loss, train, on_epoch_end=on_epoch_end, desc="from scratch"))
        return model
