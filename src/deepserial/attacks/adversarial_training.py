"""Adversarial training: fine-tune on adversarial examples of the attacker's data, labelled correctly.

Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards Deep Learning Models Resistant to Adversarial
Attacks." ICLR 2018 (PGD); Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015 (FGSM). As a watermark removal attack (Lukas, Jiang, Li, Kerschbaum, "SoK: How
Robust is Image Classification DNN Watermarking?", IEEE S&P 2022): watermarks built on the decision
boundary's fine structure (frontier stitching, backdoors near the data) are smoothed away when the
model learns to keep its answer in an eps-ball around each input. Defaults from the
Watermark-Robustness-Toolbox ``wrt/attacks/removal/adversarial_training.py`` and
``configs/cifar10/attack_configs/adversarial_training.yaml``:

- ``method = "pgd"``, L-infinity, ``eps = [0.01, 0.1, 0.25]`` (one set of examples per radius),
  ``eps_step = 0.01``, ``max_iter = 40``, starting from the clean input (ART's ``num_random_init =
  0``), untargeted against the model's own current prediction (ART's default with no label given);
  ``method = "fgsm"`` takes one step of size ``eps``;
- every epoch, ``n_max = 1000`` attacker images are drawn afresh, attacked with the *current* model
  for every radius, and added to the attacker's data with the labels of the images they came from;
  the model then trains one epoch on the union (WRT ``boost_factor = 1``); 5 epochs in WRT (the
  budget's ``epochs``: pass ``AttackBudget(epochs=5)`` for WRT's setting).

The cost the log reports counts every forward pass: ``max_iter + 1`` per adversarial example (WRT's
generation dominates its runtime), plus the training epochs on clean and adversarial images. Each
epoch is one run of the shared loop, so the optimiser's state starts afresh every epoch (WRT keeps its
optimiser). WRT labels with the victim's softmax (``labels="victim"``); the default here uses the
attacker's labels (:mod:`deepserial.attacks.targets`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.targets import LabelSource, fine_tune, training_targets
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import EVAL_BATCH, EpochCallback, model_device, resolve_device


class AdversarialTrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["pgd", "fgsm"] = "pgd"
    eps: list[float] = Field([0.01, 0.1, 0.25], min_length=1, description="L-inf radii, one set each (WRT)")
    eps_step: float = Field(0.01, gt=0, description="PGD step size (WRT: 0.01)")
    max_iter: int = Field(40, ge=1, description="PGD iterations (WRT CIFAR-10: 40)")
    n_max: int = Field(1000, ge=1, description="attacker images attacked per epoch and radius (WRT: 1000)")
    labels: LabelSource = "true"


def linf_attack(
    model: nn.Module, x: torch.Tensor, eps: float, step: float, iters: int, batch_size: int = EVAL_BATCH
) -> torch.Tensor:
    """Untargeted L-infinity PGD (FGSM when ``iters == 1`` and ``step == eps``) against ``model``'s own
    predictions, from the clean input, projected to the ``eps``-ball and to [0, 1].

    ``x``: ``(N, C, H, W)`` in [0, 1]; returns the adversarial images, same shape, on ``x``'s device.
    The model's parameters get no gradient.
    """
    dev = model_device(model)
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    out = []
    try:
        for i in range(0, len(x), batch_size):
            clean = x[i : i + batch_size].to(dev)
            with torch.no_grad():
                y = model(clean).argmax(1)
            adv = clean.clone()
            for _ in range(iters):
                adv.requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(model(adv), y)
                    (grad,) = torch.autograd.grad(loss, adv)
                adv = adv.detach() + step * grad.sign()
                adv = torch.min(torch.max(adv, clean - eps), clean + eps).clamp(0, 1)
            out.append(adv.detach().to(x.device))
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    return torch.cat(out) if out else x.clone()


@register_attack
class AdversarialTraining(Attack):
    r"""Adversarial training from 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    (Madry et al., ICLR 2018), with WRT's defaults (``adversarial_training.py``).

    Arguments (``Config``):
        method (str): "pgd" or "fgsm". (Default: "pgd")
        eps (list[float]): L-infinity radii, one set of examples each. (Default: [0.01, 0.1, 0.25])
        eps_step (float): PGD step. (Default: 0.01)
        max_iter (int): PGD iterations. (Default: 40)
        n_max (int): images attacked per epoch and radius. (Default: 1000)
        labels (str): the attacker's labels ("true") or the victim's softmax ("victim").

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1]; data.y: :math:`(N)`.
        - one epoch trains on :math:`N + |\epsilon| \cdot \min(n_{max}, N)` images.

    Examples::
        >>> attacked, log = get_attack("adversarial-training", {"eps": [0.1]}).run(model, data, AttackBudget(epochs=5))
        >>> log.details["adversarial_per_epoch"]
    """

    name = "adversarial-training"
    citation = (
        "Madry, Makelov, Schmidt, Tsipras, Vladu. Towards Deep Learning Models Resistant to Adversarial "
        "Attacks. ICLR 2018; WRT wrt/attacks/removal/adversarial_training.py (Lukas et al., IEEE S&P 2022)"
    )
    Config = AdversarialTrainingConfig

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
            raise ConfigError("adversarial training perturbs the attacker's images; give some")
        if any(e < 0 for e in cfg.eps):
            raise ConfigError(f"adversarial radii must be >= 0, got {cfg.eps}")
        model.to(resolve_device(budget.device))
        train_data, targets = training_targets(model, data, cfg.labels, budget, log)
        n = min(cfg.n_max, len(train_data))
        iters = cfg.max_iter if cfg.method == "pgd" else 1
        rng = np.random.default_rng(budget.seed)
        for epoch in range(budget.epochs):
            pick = torch.from_numpy(np.sort(rng.permutation(len(train_data))[:n]))
            xs, ys, ts = [train_data.x], [train_data.y], [targets]
            for eps in cfg.eps:
                step = cfg.eps_step if cfg.method == "pgd" else eps
                xs.append(linf_attack(model, train_data.x[pick], eps, step, iters))
                ys.append(train_data.y[pick])
                ts.append(targets[pick])
                log.forward_samples += n * (iters + 1)
            callback = None
            if on_epoch_end is not None:
                callback = (lambda e: lambda _i, m: on_epoch_end(e, m))(epoch + 1)
            before = len(log.curve)
            fine_tune(
                model,
                TensorData(torch.cat(xs), torch.cat(ys)),
                torch.cat(ts),
                budget.model_copy(update={"seed": budget.seed + epoch}),
                log,
                callback,
                desc=f"adversarial training {epoch + 1}/{budget.epochs}",
                epochs=1,
            )
            for row in log.curve[before:]:
                row["epoch"] = epoch + 1
        log.details |= {
            "method": cfg.method,
            "adversarial_per_epoch": n * len(cfg.eps),
            "clean_per_epoch": len(train_data),
        }
        return model
