"""Regularization: train under strong L2 weight decay, then fine-tune back to accuracy.

Shafieinejad, Lukas, Wang, Li, Kerschbaum. "On the Robustness of Backdoor-based Watermarking in Deep
Neural Networks." ACM IH&MMSec 2021 (arXiv:1906.07745): a heavy L2 penalty pulls every weight towards zero and wipes out
what the watermark wrote into them; fine-tuning without the penalty then restores the accuracy, the
watermark staying lost. Defaults from the Watermark-Robustness-Toolbox (Lukas et al., IEEE S&P 2022)
``wrt/attacks/removal/regularization.py`` and ``configs/cifar10/attack_configs/regularization.yaml``:

- ``l2_decay = 0.1`` (``regularization1.yaml``: 0.25), the optimiser's ``weight_decay`` during the
  regularization phase, back to 0 (the victim's own, in WRT) for fine-tuning;
- ``reg_epochs = 5`` regularization epochs; WRT then fine-tunes up to 50 epochs with early stopping
  (patience 5) on validation loss. The attacker here has no validation split and a fixed budget: it
  regularises for ``min(reg_epochs, budget.epochs)`` epochs and fine-tunes for the rest of
  ``budget.epochs`` (10 by default: 5 + 5), so the whole attack stays within the budget.

WRT's optimiser is the victim's SGD (lr 0.1, momentum 0.9 on CIFAR), where ``weight_decay`` adds
``l2_decay * w`` to the gradient; the budget's optimiser is used here (Adam by default, whose
``weight_decay`` adds the same term before Adam's normalisation, a stronger pull at small gradients).
WRT trains on the victim's softmax labels (``labels="victim"``); the default here is the attacker's
labels (:mod:`deepserial.attacks.targets`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.targets import LabelSource, fine_tune, training_targets
from deepserial.data import TensorData
from deepserial.nets import SplitNet
from deepserial.training import EpochCallback


class RegularizationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    l2_decay: float = Field(0.1, ge=0, description="weight decay of the regularization phase (WRT: 0.1)")
    reg_epochs: int = Field(5, ge=0, description="regularization epochs, the rest of the budget fine-tunes (WRT: 5)")
    labels: LabelSource = "true"


def phase_epochs(total: int, reg_epochs: int) -> tuple[int, int]:
    """(regularization, fine-tuning) epochs within a budget of ``total``."""
    reg = min(reg_epochs, total)
    return reg, total - reg


@register_attack
class Regularization(Attack):
    r"""Regularization in the paper 'On the Robustness of Backdoor-based Watermarking in Deep Neural
    Networks' (Shafieinejad et al., IH&MMSec 2021), with WRT's defaults (``regularization.py``).

    Arguments (``Config``):
        l2_decay (float): weight decay while regularising. (Default: 0.1)
        reg_epochs (int): regularization epochs; the rest of ``budget.epochs`` fine-tunes. (Default: 5)
        labels (str): train on the attacker's labels ("true") or the victim's softmax ("victim").

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1]; data.y: :math:`(N)`.

    Examples::
        >>> attacked, log = get_attack("regularization", {"l2_decay": 0.1}).run(model, data, AttackBudget(epochs=10))
        >>> log.details["phases"]
    """

    name = "regularization"
    citation = (
        "Shafieinejad, Lukas, Wang, Li, Kerschbaum. On the Robustness of Backdoor-based Watermarking in "
        "Deep Neural Networks. ACM IH&MMSec 2021; WRT wrt/attacks/removal/regularization.py"
    )
    Config = RegularizationConfig

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
        reg, ft = phase_epochs(budget.epochs, cfg.reg_epochs)
        log.details["phases"] = {"regularization_epochs": reg, "fine_tuning_epochs": ft, "l2_decay": cfg.l2_decay}
        common = (model, train_data, targets, budget, log, on_epoch_end)
        fine_tune(*common, desc="regularization", epochs=reg, weight_decay=cfg.l2_decay)
        fine_tune(*common, desc="regularization: fine-tuning", epochs=ft)
        return model
