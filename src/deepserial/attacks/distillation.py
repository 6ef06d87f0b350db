"""Distillation: train a fresh student on the victim's softened outputs.

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network." arXiv:1503.02531 (NIPS 2014
Deep Learning Workshop): the student matches the teacher's softmax at temperature ``T``,

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, argmax t),

``t`` and ``s`` the teacher's and the student's logits. As a removal attack (model extraction; Lukas,
Jiang, Li, Kerschbaum, "SoK: How Robust is Image Classification DNN Watermarking?", IEEE S&P 2022) the
victim is the teacher and the student starts from random weights: it learns the task from the
victim's answers on the attacker's images, and a watermark the victim never shows on those images is
not passed on. Defaults from the Watermark-Robustness-Toolbox ``wrt/attacks/removal/distillation.py``
and ``configs/cifar10/attack_configs/distillation.yaml``:

- ``temperature = 3``, ``alpha = 1.0`` (the KD term only), the victim's raw logits as targets
  (``apply_softmax: False``), 60 epochs in WRT (the budget's ``epochs``);
- WRT's student is another network (a wide ResNet, the surrogate of its config); ``arch`` names a
  registered network (:func:`deepserial.nets.available_models`), and by default the student is the
  victim's own architecture, freshly initialised (what the attacker can always build). Cross-
  architecture retraining (:mod:`deepserial.attacks.cross_architecture`) makes the other network the
  point.

WRT trains with SGD at 0.1 and a step schedule; the shared loop's optimiser of the budget is used
here (Adam at 1e-3 by default) with its divide-by-10-on-plateau schedule, as this project trains
every model from scratch (:mod:`deepserial.attacks.extraction` does the same). WRT's
``nn.KLDivLoss()`` averages over batch *and* classes; the KL here is averaged over the batch only
(the definition, and PyTorch's recommended ``batchmean``), which scales the loss by ``K``.

The victim's outputs on every attacker image are queries (:attr:`AttackLog.queries`), bounded by
``budget.queries`` when set (the first ``queries`` images are used).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.fine_tuning import reinitialise
from deepserial.attacks.targets import num_outputs
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet, create_model
from deepserial.training import EVAL_BATCH, Batch, BatchLoss, EpochCallback, LossOut, fit, predict_logits


class DistillationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(3.0, gt=0, description="softmax temperature T of teacher and student (WRT: 3)")
    alpha: float = Field(1.0, ge=0, le=1, description="weight of the KD term; 1 - alpha on CE with argmax (WRT: 1)")
    arch: str | None = Field(None, description="the student's registered network (None: the victim's, fresh)")


def kd_loss(teacher_probs: torch.Tensor, temperature: float, alpha: float) -> BatchLoss:
    """The shared loop's loss for Hinton et al.'s objective, with the teacher's ``softmax(t / T)``
    precomputed for every training sample (``(N, K)``, looked up by :attr:`Batch.idx`)."""

    def loss_fn(net: nn.Module, batch: Batch) -> LossOut:
        p = teacher_probs[batch.idx].to(batch.x.device)
        logits = net(batch.x)
        log_q = F.log_softmax(logits.float() / temperature, dim=1)
        kl = F.kl_div(log_q, p, reduction="batchmean")
        hard = p.argmax(1)
        loss = alpha * temperature**2 * kl
        if alpha < 1:
            loss = loss + (1 - alpha) * F.cross_entropy(logits, hard)
        acc = 100.0 * float((logits.argmax(1) == hard).float().mean())
        return LossOut(loss, len(batch.x), {"acc": acc})

    return loss_fn


def architecture_signature(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter and buffer names with their shapes: equal for two builds of the same network."""
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def fresh_student(
    victim: SplitNet, arch: str | None, input_shape: tuple[int, ...], classes: int, seed: int
) -> SplitNet:
    """A randomly initialised student: the victim's architecture (``arch`` None) or a registered one."""
    torch.manual_seed(seed)
    if arch is None:
        reinitialise(victim, seed)  # the victim is the attack's private copy, its teacher role is over
        return victim
    return create_model(arch, input_shape, classes)


class Retraining(Attack):
    """The steps every retraining attack shares: the victim's targets on the attacker's images, a
    fresh student, the KD objective. Subclasses change the targets and the student."""

    Config = DistillationConfig

    def victim_targets(
        self, model: SplitNet, data: TensorData, budget: AttackBudget, log: AttackLog
    ) -> tuple[TensorData, torch.Tensor]:
        """The images used and the victim's ``softmax(t / T)`` on each (``(N, K)``)."""
        n = len(data) if budget.queries is None else min(len(data), budget.queries)
        used = data if n == len(data) else data.subset(torch.arange(n))
        logits = predict_logits(model, used.x, EVAL_BATCH)
        log.queries += n
        return used, torch.softmax(logits / self.config.temperature, dim=1)

    def student_arch(self, model: SplitNet, input_shape: tuple[int, ...], classes: int) -> str | None:
        return self.config.arch

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
            raise ConfigError(
                f"{self.name} trains a student on the victim's answers to the attacker's images; give some"
            )
        input_shape = tuple(int(s) for s in data.x.shape[1:])
        classes = num_outputs(model, data)
        used, probs = self.victim_targets(model, data, budget, log)
        log.samples = len(used)
        arch = self.student_arch(model, input_shape, classes)
        student = fresh_student(model, arch, input_shape, classes, budget.seed)
        # student_arch: the registered network of a student that is not the victim's architecture (None if it is)
        log.details |= {"student_arch": arch, "temperature": cfg.temperature, "alpha": cfg.alpha}
        log.details["teacher_agreement_with_labels"] = 100.0 * float((probs.argmax(1) == used.y).float().mean())
        log.add_training(
            fit(
                student,
                used,
                kd_loss(probs, cfg.temperature, cfg.alpha),
                budget.train_config(constant_lr=False),
                on_epoch_end=on_epoch_end,
                desc=self.name,
            )
        )
        return student


@register_attack
class Distillation(Retraining):
    r"""Distillation from 'Distilling the Knowledge in a Neural Network' (Hinton, Vinyals, Dean, 2015),
    with WRT's defaults (``distillation.py``): a fresh student trained on the victim's softened logits.

    Arguments (``Config``):
        temperature (float): softmax temperature of teacher and student. (Default: 3)
        alpha (float): weight of the KD term, :math:`1-\alpha` on cross-entropy with the teacher's
            arg-max. (Default: 1)
        arch (str | None): the student's registered network. (Default: the victim's, re-initialised)

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1] (labels unused: the victim labels them).
        - targets: :math:`(N, K)`, the victim's :math:`\mathrm{softmax}(t / T)`.

    Examples::
        >>> student, log = get_attack("distillation", {"temperature": 3}).run(model, data, AttackBudget(epochs=60))
        >>> log.queries
    """

    name = "distillation"
    citation = (
        "Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. arXiv:1503.02531; WRT "
        "wrt/attacks/removal/distillation.py (Lukas et al., IEEE S&P 2022)"
    )
