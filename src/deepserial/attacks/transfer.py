"""Transfer learning: reuse the stolen model's features for the attacker's task, with new dense layers.

- Tang, Du, Hu. "Deep Serial Number" (arXiv:2011.08960), Table 5: the attacker replaces the fully
  connected layers and trains on its own data (10-40% of the training data, half of the classes in
  the 2023 version), to get a working model without the serial number; judged against the same net
  trained from scratch on that data.
- Li, Wenger, Zheng, Zhao. "Piracy Resistant Watermarks for DNNs" (arXiv:1910.01226), §8.4, Tables
  7-8: a student copies every layer but the last, adds a classification layer for its own labels, and
  trains the new layer, the dense layers or all layers. The watermark "persists" if, after
  :func:`recover` (a fresh layer of the teacher's size fine-tuned on the teacher's data the same
  way, §8.4), the owner's key still verifies.

Our networks have two dense layers (the features' hidden layer and the classifier), so the paper's
"last two dense layers" and "all dense layers" are the same here (``train="dense"``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.fine_tuning import reinitialise
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import EpochCallback, TrainConfig, TrainLog, fit, supervised_loss


class TransferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replace: Literal["head", "dense"] = Field(
        "dense",
        description="layers given fresh weights: the classification layer only, or every dense layer (DSN Table 5)",
    )
    train: Literal["head", "dense", "all"] = Field("dense", description="layers the attacker trains")
    num_classes: int | None = Field(None, ge=2, description="the attacker's label count (None: the victim's)")


def dense_layers(model: SplitNet) -> list[nn.Linear]:
    """Every fully connected layer, the classification layer last."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _head(model: SplitNet, num_classes: int | None, seed: int) -> None:
    """A fresh classification layer with ``num_classes`` outputs (the victim's count when None)."""
    old = model.classifier
    if not isinstance(old, nn.Linear):
        raise ConfigError("transfer learning needs a SplitNet whose classifier is one Linear layer")
    torch.manual_seed(seed)
    model.classifier = nn.Linear(old.in_features, num_classes or old.out_features).to(old.weight.device)


def _trainable(model: SplitNet, which: str) -> list[nn.Parameter] | None:
    if which == "all":
        return None
    layers = [model.classifier] if which == "head" else dense_layers(model)
    return [p for m in layers for p in m.parameters()]


@register_attack
class TransferLearning(Attack):
    """New dense layers on the stolen features, trained on the attacker's (possibly new) task."""

    name = "transfer-learning"
    citation = (
        "Tang, Du, Hu. Deep Serial Number, arXiv:2011.08960, Table 5; Li, Wenger, Zheng, Zhao. Piracy "
        "Resistant Watermarks for DNNs, arXiv:1910.01226, §8.4"
    )
    Config = TransferConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        cfg = self.config
        classes = cfg.num_classes or int(model.classifier.out_features)
        if len(data) and int(data.y.max()) >= classes:
            raise ConfigError(
                f"the attacker's labels go up to {int(data.y.max())}; give num_classes > that (now {classes})"
            )
        if cfg.replace == "dense":
            for layer in dense_layers(model)[:-1]:
                reinitialise(layer, budget.seed)
        _head(model, classes, budget.seed)
        params = _trainable(model, cfg.train)
        log.add_training(
            fit(
                model,
                data,
                supervised_loss,
                budget.train_config(),
                params=params,
                on_epoch_end=on_epoch_end,
                desc=f"transfer ({cfg.train})",
            )
        )
        log.details["num_classes"] = classes
        return model


def recover(
    student: SplitNet,
    num_classes: int,
    teacher_data: TensorData,
    train: TrainConfig,
    trainable: Literal["head", "dense", "all"] = "head",
) -> tuple[SplitNet, TrainLog]:
    """§8.4's watermark recovery: a copy of ``student`` with a fresh classification layer of the
    teacher's ``num_classes``, fine-tuned on the teacher's data with the layers the transfer trained.
    A transparent, deterministic step a third party can audit; the owner's key is verified on the
    result."""
    import copy

    model = copy.deepcopy(student)
    _head(model, num_classes, train.seed)
    log = fit(model, teacher_data, supervised_loss, train, params=_trainable(model, trainable), desc="recovery")
    model.eval()
    return model, log
