"""Training targets shared by the WRT removal attacks: whose labels the attacker trains on, and the
soft cross-entropy that trains towards a probability vector per sample.

Lukas, Jiang, Li, Kerschbaum. "SoK: How Robust is Image Classification Deep Neural Network
Watermarking?" IEEE S&P 2022; Watermark-Robustness-Toolbox (WRT) ``steal.py``: unless an attack's
config sets ``true_labels``, WRT relabels the attacker's images with the *source model's* softmax
(``CIFAR10StolenDataset``) and trains with a soft-label cross-entropy (the ``CELoss`` classes of
``regularization.py``, ``label_smoothing.py``, ``retraining.py``).

This project's attacker holds a *labelled* share of the training data (``attacker_share``), and a DSN
customer model answers garbage to unstamped inputs, so its softmax would teach nothing. The attacks
here therefore train on the attacker's true labels by default (``labels="true"``, as
:mod:`deepserial.attacks.fine_tuning` does) and take WRT's choice with ``labels="victim"``, which
counts every relabelled image as a query to the victim (:attr:`AttackLog.queries`).

Targets are an ``(N, K)`` float tensor aligned with the training data; :func:`soft_target_loss` looks
them up per batch through :attr:`deepserial.training.Batch.idx`, the shared loop's hook for
per-sample precomputed values.

Example::

    targets = smooth(one_hot(data.y, 10), 0.3)
    fit(model, data, soft_target_loss(targets), cfg)
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from deepserial.attacks.base import AttackBudget, AttackLog
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.training import EVAL_BATCH, Batch, BatchLoss, EpochCallback, LossOut, fit, predict_logits

LabelSource = Literal["true", "victim"]


def num_outputs(model: nn.Module, data: TensorData) -> int:
    """How many logits ``model`` answers for inputs shaped like ``data``'s."""
    return int(predict_logits(model, torch.zeros(1, *data.x.shape[1:])).shape[1])


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N,)`` int64 labels -> ``(N, K)`` float32 one-hot rows."""
    if len(y) and int(y.max()) >= num_classes:
        raise ConfigError(f"labels go up to {int(y.max())} but the model answers {num_classes} classes")
    return F.one_hot(y, num_classes).float()


def smooth(targets: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Label smoothing (Szegedy et al., CVPR 2016, §7; WRT ``trainer.py``): ``(1 - eps) * t + eps / K``."""
    if not 0.0 <= epsilon <= 1.0:
        raise ConfigError(f"label smoothing epsilon must lie in [0, 1], got {epsilon}")
    return (1.0 - epsilon) * targets + epsilon / targets.shape[1]


@torch.no_grad()
def victim_probabilities(
    model: nn.Module, x: torch.Tensor, temperature: float = 1.0, batch_size: int = EVAL_BATCH
) -> torch.Tensor:
    """``softmax(model(x) / T)`` for ``x`` ``(N, C, H, W)``: an ``(N, K)`` float32 tensor on the CPU."""
    return torch.softmax(predict_logits(model, x, batch_size) / temperature, dim=1)


def training_targets(
    model: nn.Module, data: TensorData, labels: LabelSource, budget: AttackBudget, log: AttackLog
) -> tuple[TensorData, torch.Tensor]:
    """The samples the attacker trains on and their ``(N, K)`` targets.

    ``labels="true"``: all of ``data`` with one-hot rows of its labels. ``labels="victim"``: the
    victim's softmax on the first ``budget.queries`` samples (all when unbounded), each counted in
    ``log.queries``; ``log.samples`` becomes the number relabelled.
    """
    k = num_outputs(model, data)
    if labels == "true":
        return data, one_hot(data.y, k)
    n = len(data) if budget.queries is None else min(len(data), budget.queries)
    used = data if n == len(data) else data.subset(torch.arange(n))
    probs = victim_probabilities(model, used.x)
    log.queries += n
    log.samples = n
    return used, probs


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-sum_k t_k log softmax(z)_k``, averaged over the batch (WRT's soft ``CELoss``)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def soft_target_loss(targets: torch.Tensor) -> BatchLoss:
    """The shared loop's loss for training towards ``targets[i]`` on training sample ``i``; logs the
    agreement of the prediction with the target's arg-max as ``acc``."""

    def loss_fn(net: nn.Module, batch: Batch) -> LossOut:
        t = targets[batch.idx].to(batch.x.device)
        logits = net(batch.x)
        acc = 100.0 * float((logits.argmax(1) == t.argmax(1)).float().mean())
        return LossOut(soft_cross_entropy(logits, t), len(batch.x), {"acc": acc})

    return loss_fn


def fine_tune(
    model: nn.Module,
    data: TensorData,
    targets: torch.Tensor,
    budget: AttackBudget,
    log: AttackLog,
    on_epoch_end: EpochCallback | None,
    *,
    desc: str,
    epochs: int | None = None,
    default_lr: float = 1e-3,
    weight_decay: float = 0.0,
    constant_lr: bool = True,
) -> None:
    """Train ``model`` towards ``targets`` (``(N, K)``, aligned with ``data``) through the shared loop
    with the budget's settings (``epochs`` overrides the budget's, e.g. one phase of several), and
    account for it in ``log``. Nothing happens for zero epochs."""
    cfg = budget.train_config(default_lr, constant_lr)
    n_epochs = budget.epochs if epochs is None else epochs
    patience = n_epochs + 1 if constant_lr else cfg.plateau_patience
    cfg = dataclasses.replace(cfg, epochs=n_epochs, weight_decay=weight_decay, plateau_patience=patience)
    if cfg.epochs == 0 or len(data) == 0:
        return
    log.add_training(fit(model, data, soft_target_loss(targets), cfg, on_epoch_end=on_epoch_end, desc=desc))
