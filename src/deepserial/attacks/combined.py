"""Combined attacks: several registered attacks in a row, each on the previous one's result.

Lukas, Jiang, Li, Kerschbaum. "SoK: How Robust is Image Classification Deep Neural Network
Watermarking?" IEEE S&P 2022: no single removal attack removed every watermark, but combinations
did (the SoK's "Weight Shifting + Input Smoothing" is one). The Watermark-Robustness-Toolbox chains
attacks with ``wrt/attacks/removal/stacked_attack.py`` (``stacked_attack_removal``: each attack starts
from the surrogate the previous one returned); the presets here are its CIFAR-10 configurations
``configs/cifar10/attack_configs/combined_attack{1,2,3,4}.yaml`` with each step's own WRT defaults:

- ``wrt-combined1``: weight shifting (``lmbda = 1.5``, 10 epochs) then Gaussian input smoothing
  (``sigma = 0.5``) — the default;
- ``wrt-combined2``: weight shifting (10 epochs), fine-pruning (``rate = 0.96``, 10 epochs), Gaussian
  input smoothing (0.5);
- ``wrt-combined3``: weight shifting (10 epochs), horizontal input flipping, Gaussian input smoothing;
- ``wrt-combined4``: adversarial training (``eps = [0.01, 0.1, 0.25]``, 5 epochs), then RTAL (5 epochs).

(``combined_attack.yaml`` starts from transfer learning out of an ImageNet-pretrained ResNet-34, a
model this project does not have; it is not offered.) ``steps`` gives any other sequence: each step
names a registered attack, its options, and optionally its ``share`` of the budget's epochs.

**Budget.** The whole sequence spends at most ``budget.epochs`` epochs: a step's share of them is
its ``share``, or an equal part of what the explicit shares leave (the presets split the training
epochs as WRT's configs do: 10 + 10 -> halves; input preprocessing gets none); shares are turned
into whole epochs by largest remainders, so they add up to ``floor(sum of shares * epochs)``. Each step
sees the same attacker data; queries to the victim count against ``budget.queries`` across steps. The
log adds every step's epochs, forward samples, queries and curve (rows tagged with the step) and
keeps each step's own log in ``details["steps"]``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, get_attack, register_attack
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import EpochCallback


class Step(BaseModel):
    """One attack of a sequence."""

    model_config = ConfigDict(extra="forbid")
    attack: str
    options: dict[str, Any] = Field(default_factory=dict)
    share: float | None = Field(None, ge=0, le=1, description="share of the budget's epochs (None: an equal part)")


_SMOOTH = Step(attack="input-preprocessing", options={"method": "gaussian-blur", "blur_sigma": 0.5}, share=0)
PRESETS: dict[str, list[Step]] = {
    "wrt-combined1": [Step(attack="weight-shifting", options={"lmbda": 1.5}, share=1.0), _SMOOTH],
    "wrt-combined2": [
        Step(attack="weight-shifting", options={"lmbda": 1.5}, share=0.5),
        Step(attack="fine-pruning", options={"rate": 0.96}, share=0.5),
        _SMOOTH,
    ],
    "wrt-combined3": [
        Step(attack="weight-shifting", options={"lmbda": 1.5}, share=1.0),
        Step(attack="input-preprocessing", options={"method": "hflip"}, share=0),
        _SMOOTH,
    ],
    "wrt-combined4": [
        Step(attack="adversarial-training", options={}, share=0.5),
        Step(attack="fine-tuning", options={"mode": "RTAL"}, share=0.5),
    ],
}


class CombinedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: Literal["wrt-combined1", "wrt-combined2", "wrt-combined3", "wrt-combined4"] = "wrt-combined1"
    steps: list[Step] | None = Field(None, min_length=1, description="a sequence of its own (overrides preset)")


def split_epochs(shares: list[float | None], epochs: int) -> list[int]:
    """Whole epochs per step: explicit shares as given, ``None`` ones splitting the rest equally,
    rounded by largest remainders; the total never exceeds ``epochs``."""
    fixed = sum(s for s in shares if s is not None)
    if fixed > 1 + 1e-9:
        raise ConfigError(f"the steps' shares of the budget add up to {fixed:g}, more than the whole budget")
    free = [s for s in shares if s is None]
    rest = (1 - fixed) / len(free) if free else 0.0
    exact = [(s if s is not None else rest) * epochs for s in shares]
    whole = [math.floor(e + 1e-9) for e in exact]
    total = min(epochs, math.floor(sum(exact) + 1e-9))
    for i in sorted(range(len(exact)), key=lambda i: whole[i] - exact[i])[: max(0, total - sum(whole))]:
        whole[i] += 1
    return whole


@register_attack
class Combined(Attack):
    r"""Combined attacks of 'SoK: How Robust is Image Classification Deep Neural Network Watermarking?'
    (Lukas et al., IEEE S&P 2022), WRT's ``stacked_attack.py`` with its ``combined_attack*.yaml``.

    Arguments (``Config``):
        preset (str): "wrt-combined1" (weight shifting + Gaussian smoothing), "wrt-combined2" (+
            fine-pruning), "wrt-combined3" (+ flipping), "wrt-combined4" (adversarial training + RTAL).
        steps (list[Step] | None): a sequence of its own; each ``{"attack", "options", "share"}``.

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1]; data.y: :math:`(N)`, passed to every step.

    Examples::
        >>> attacked, log = get_attack("combined", {"preset": "wrt-combined2"}).run(model, data, AttackBudget())
        >>> [s["attack"] for s in log.details["steps"]]
    """

    name = "combined"
    citation = (
        "Lukas, Jiang, Li, Kerschbaum. SoK: How Robust is Image Classification Deep Neural Network "
        "Watermarking? IEEE S&P 2022; WRT wrt/attacks/removal/stacked_attack.py, "
        "configs/cifar10/attack_configs/combined_attack*.yaml"
    )
    Config = CombinedConfig

    def __init__(self, config: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.steps = list(self.config.steps or PRESETS[self.config.preset])
        for step in self.steps:
            if step.attack == self.name:
                raise ConfigError("a combined attack cannot contain another combined attack")
        self.attacks = [get_attack(s.attack, s.options) for s in self.steps]  # options checked now, not mid-run
        split_epochs([s.share for s in self.steps], 0)  # shares checked now too

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        epochs = split_epochs([s.share for s in self.steps], budget.epochs)
        log.details["steps"] = []
        for i, (step, attack, n) in enumerate(zip(self.steps, self.attacks, epochs, strict=True)):
            left = None if budget.queries is None else budget.queries - log.queries
            if left is not None and left < 1:
                raise ConfigError(f"the query budget is spent before step {i + 1} ({step.attack})")
            sub = budget.model_copy(update={"epochs": n, "queries": left})
            model, sub_log = attack.run(model, data, sub, on_epoch_end=on_epoch_end)
            log.epochs += sub_log.epochs
            log.forward_samples += sub_log.forward_samples
            log.queries += sub_log.queries
            log.curve += [row | {"step": i + 1} for row in sub_log.curve]
            log.details["steps"].append(sub_log.to_dict() | {"epochs_budget": n})
        return model
