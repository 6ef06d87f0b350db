"""Smooth retraining: train a fresh student on the victim's answers averaged over augmented queries.

Lukas, Jiang, Li, Kerschbaum. "SoK: How Robust is Image Classification Deep Neural Network
Watermarking?" IEEE S&P 2022: smooth retraining is one of the removal attacks the SoK introduces,
the one that removes DAWN (a watermark that answers a share of queries wrongly on purpose). Each
attacker image is sent to the victim ``n_queries`` times, each time randomly shifted and flipped, and
the student learns the average of the victim's softmax outputs: label noise the victim adds per query,
and answers that depend on exact pixels (a trigger's), are averaged away. The student starts from
random weights and trains with the soft cross-entropy (:func:`deepserial.attacks.distillation.kd_loss`
at temperature 1: the same gradients).

Defaults from the Watermark-Robustness-Toolbox: ``wrt/training/datasets/cifar10.py``,
``CIFAR10AveragingStolenDataset`` ("Showcased to eliminate dawn"), used with
``query_labels_n_times: 3`` (``configs/imagenet/attack_configs/smooth_transfer_learning.yaml``), and
the retraining of ``wrt/attacks/removal/retraining.py`` (soft cross-entropy, 60 epochs in
``configs/cifar10/attack_configs/retraining.yaml``; the budget's ``epochs`` here):

- ``n_queries = 3`` augmented queries per image, their softmax outputs averaged;
- the augmentation of WRT's CIFAR-10 loader: a random crop of the image padded by ``padding = 4``
  pixels of zeros on each side (``RandomCrop(32, padding=4)``) and a horizontal flip with probability
  1/2 (``flip``; a flipped digit is another shape, so ``flip=False`` suits digit data);
- the student is the victim's architecture, freshly initialised, or the registered network ``arch``
  (WRT's retraining surrogate is a wide ResNet).

The student trains on the un-augmented images (WRT also augments the training images; the shared loop
does not augment). Every augmented query counts against ``budget.queries``: with a bound, the first
``queries // n_queries`` images are used.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from deepserial.attacks.base import AttackBudget, AttackLog, register_attack
from deepserial.attacks.distillation import Retraining
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import predict_logits


class SmoothRetrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_queries: int = Field(3, ge=1, description="augmented queries per image, averaged (WRT: 3)")
    padding: int = Field(4, ge=0, description="zero padding of the random crop, pixels per side (WRT: 4)")
    flip: bool = Field(True, description="random horizontal flips (WRT: yes)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the averaged targets (WRT: 1)")
    alpha: float = Field(1.0, ge=0, le=1, description="weight of the soft term (WRT: soft labels only)")
    arch: str | None = Field(None, description="the student's registered network (None: the victim's, fresh)")


def augment(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crops of ``x`` ``(N, C, H, W)`` padded by ``padding`` zero pixels per side, flipped left to
    right with probability 1/2 when ``flip``; same shape as ``x``."""
    n, _, h, w = x.shape
    out = x.clone()
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        for oy in range(2 * padding + 1):
            for ox in range(2 * padding + 1):
                sel = torch.nonzero((dy == oy) & (dx == ox)).flatten()
                if len(sel):
                    out[sel] = padded[sel, :, oy : oy + h, ox : ox + w]
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        out[flipped] = out[flipped].flip(-1)
    return out


@register_attack
class SmoothRetraining(Retraining):
    r"""Smooth retraining from 'SoK: How Robust is Image Classification Deep Neural Network
    Watermarking?' (Lukas et al., IEEE S&P 2022), WRT's ``CIFAR10AveragingStolenDataset`` + retraining.

    Arguments (``Config``):
        n_queries (int): augmented queries per image, softmax outputs averaged. (Default: 3)
        padding (int): zero padding of the random crop. (Default: 4)
        flip (bool): random horizontal flips. (Default: True)
        temperature (float): softmax temperature. (Default: 1)
        alpha (float): weight of the soft term. (Default: 1)
        arch (str | None): the student's registered network. (Default: the victim's, re-initialised)

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1] (labels unused: the victim labels them).
        - targets: :math:`(N, K)`, the mean of ``n_queries`` softmax outputs per image.

    Examples::
        >>> student, log = get_attack("smooth-retraining", {"n_queries": 3}).run(model, data, AttackBudget(epochs=60))
        >>> log.queries
    """

    name = "smooth-retraining"
    citation = (
        "Lukas, Jiang, Li, Kerschbaum. SoK: How Robust is Image Classification Deep Neural Network "
        "Watermarking? IEEE S&P 2022 (Smooth Retraining); WRT wrt/training/datasets/cifar10.py "
        "(CIFAR10AveragingStolenDataset) and wrt/attacks/removal/retraining.py"
    )
    Config = SmoothRetrainingConfig

    def victim_targets(
        self, model: SplitNet, data: TensorData, budget: AttackBudget, log: AttackLog
    ) -> tuple[TensorData, torch.Tensor]:
        cfg = self.config
        n = len(data)
        if budget.queries is not None:
            n = min(n, budget.queries // cfg.n_queries)
            if n < 1:
                raise ConfigError(
                    f"a query budget of {budget.queries} does not cover one image at {cfg.n_queries} queries each"
                )
        used = data if n == len(data) else data.subset(torch.arange(n))
        gen = torch.Generator().manual_seed(budget.seed)
        probs = torch.stack(
            [
                torch.softmax(predict_logits(model, augment(used.x, cfg.padding, cfg.flip, gen)) / cfg.temperature, 1)
                for _ in range(cfg.n_queries)
            ]
        ).mean(0)
        log.queries += n * cfg.n_queries
        log.details["target_entropy"] = float(-(probs * probs.clamp_min(1e-12).log()).sum(1).mean())
        log.details["n_queries"] = cfg.n_queries
        return used, probs
