"""Neural Cleanse: find backdoor triggers by reverse engineering, flag outlier labels, unlearn them.

Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao. "Neural Cleanse: Identifying and Mitigating Backdoor
Attacks in Neural Networks." IEEE S&P 2019. Used against null embedding in Li, Wenger, Zheng, Zhao,
"Piracy Resistant Watermarks for DNNs" (arXiv:1910.01226), §8.3 / Table 5: a watermark that behaves
like a backdoor would be found and removed; null embedding's is not flagged.

For every label t the scan looks for the smallest trigger (a mask m in [0, 1]^(H x W) and a pattern
p in [0, 1]^(C x H x W)) that sends clean inputs to t:

    min_{m, p}  CE(f((1 - m) * x + m * p), t) + lambda_t * |m|_1,

with lambda_t adjusted during the search so that the attack succeeds on at least ``asr_threshold``
of the inputs (raised while it does, lowered while it does not, as the paper's implementation does).
A real backdoor label needs a far smaller trigger than the others. The anomaly index of a label is
``|L1_t - median| / (1.4826 * MAD)`` over all labels' mask norms; a label whose norm lies below the
median with index above 2 is flagged (the paper's threshold, 95% under a normal model of the norms).

What this implementation does beyond the paper, and why (docs/decisions.md, "Neural Cleanse"): all
labels are optimised together in one batch (one forward/backward per step for every label, with
its own lambda and best-so-far mask), so a 10-class scan of the Table 7 net takes well under a minute
on 2 CPU cores; only the inputs get gradients, never the weights.

Mitigation (§6.2, "unlearning"): fine-tune on the attacker's clean data where a share
``unlearn_ratio`` (20% in the paper) of each batch carries the reversed trigger of a flagged label
with its *correct* label, so the network learns to ignore it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import Batch, EpochCallback, LossOut, fit, model_device

MAD_CONSISTENCY = 1.4826  # makes the MAD estimate the standard deviation of normally distributed norms


class NeuralCleanseConfig(BaseModel):
    """Search and decision settings (defaults: the paper's, scaled to 28 x 28 inputs and 2 CPU cores)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(400, ge=1, description="optimisation steps of the joint search over all labels")
    images_per_label: int = Field(24, ge=1, description="clean inputs per label and step")
    lr: float = Field(0.1, gt=0, description="Adam learning rate of mask and pattern (the paper's 0.1)")
    init_cost: float = Field(1e-3, gt=0, description="initial lambda (the paper's 1e-3)")
    cost_multiplier: float = Field(1.5, gt=1, description="lambda up by this, down by its 1.5th power")
    patience: int = Field(5, ge=1, description="steps of (un)success before lambda moves")
    asr_threshold: float = Field(0.99, gt=0, le=1, description="attack success a trigger must reach")
    anomaly_threshold: float = Field(2.0, gt=0, description="anomaly index above which a label is flagged")
    unlearn: bool = Field(True, description="fine-tune away flagged triggers (the attack); False: scan only")
    unlearn_ratio: float = Field(0.2, gt=0, lt=1, description="share of each batch stamped with the trigger")


@dataclass
class CleanseReport:
    """What a scan found: per label the reversed trigger's mask norm, its success rate and anomaly index."""

    norms: list[float]
    success: list[float]
    anomaly_index: list[float]
    flagged: list[int]
    median: float
    mad: float
    masks: torch.Tensor = field(repr=False)  # (L, 1, H, W)
    patterns: torch.Tensor = field(repr=False)  # (L, C, H, W)
    steps: int = 0
    forward_samples: int = 0

    @property
    def max_anomaly(self) -> float:
        """The largest anomaly index of a label below the median (the paper's figure per model)."""
        below = [a for a, n in zip(self.anomaly_index, self.norms, strict=True) if n <= self.median]
        return max(below) if below else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "norms": self.norms,
            "success": self.success,
            "anomaly_index": self.anomaly_index,
            "max_anomaly_index": self.max_anomaly,
            "flagged": self.flagged,
            "median": self.median,
            "mad": self.mad,
            "steps": self.steps,
            "forward_samples": self.forward_samples,
        }


def anomaly_indices(norms: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``|norm - median| / (1.4826 MAD)`` for each label, with the median and the MAD."""
    med = float(np.median(norms))
    mad = float(np.median(np.abs(norms - med)))
    scale = MAD_CONSISTENCY * mad
    dev = np.abs(norms - med)
    # all norms equal but one: that one is infinitely anomalous
    idx = dev / scale if scale > 0 else np.where(dev > 0, np.inf, 0.0)
    return idx, med, mad


def _by_label(data: TensorData, n: int, labels: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` clean inputs for each target label (any class; the paper uses clean samples regardless)."""
    idx = rng.integers(0, len(data), size=(labels, n))
    return data.x[torch.from_numpy(idx).flatten()]


def scan(
    model: nn.Module, data: TensorData, config: NeuralCleanseConfig | dict | None = None, *, seed: int = 0
) -> CleanseReport:
    """Reverse-engineer a minimal trigger for every output label of ``model`` on clean ``data``."""
    cfg = config if isinstance(config, NeuralCleanseConfig) else NeuralCleanseConfig(**(config or {}))
    if len(data) == 0:
        raise ConfigError("Neural Cleanse needs clean inputs to reverse-engineer triggers on; give some data")
    dev = model_device(model)
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    c, h, w = (int(s) for s in data.x.shape[1:])
    with torch.no_grad():
        labels = int(model(data.x[:1].to(dev)).shape[1])
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    # tanh parameterisation keeps mask and pattern in [0, 1] without clipping (the paper's choice)
    mask_p = (torch.rand(labels, 1, h, w, generator=gen) * 0.2 - 2.0).to(dev).requires_grad_(True)
    pat_p = (torch.rand(labels, c, h, w, generator=gen) * 2 - 1).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([mask_p, pat_p], lr=cfg.lr, betas=(0.5, 0.9))
    cost = torch.full((labels,), cfg.init_cost, device=dev)
    target = torch.arange(labels, device=dev).repeat_interleave(cfg.images_per_label)
    best_norm = torch.full((labels,), math.inf)
    best_mask = torch.zeros(labels, 1, h, w)
    best_pat = torch.zeros(labels, c, h, w)
    best_asr = torch.zeros(labels)
    up = torch.zeros(labels, dtype=torch.long)
    down = torch.zeros(labels, dtype=torch.long)
    forward = 0
    try:
        for _ in range(cfg.steps):
            x = _by_label(data, cfg.images_per_label, labels, rng).to(dev)
            mask = (torch.tanh(mask_p) + 1) / 2
            pat = (torch.tanh(pat_p) + 1) / 2
            m = mask.repeat_interleave(cfg.images_per_label, 0)
            p = pat.repeat_interleave(cfg.images_per_label, 0)
            logits = model((1 - m) * x + m * p)
            forward += len(x)
            ce = F.cross_entropy(logits, target, reduction="none").view(labels, -1).mean(1)
            l1 = mask.flatten(1).sum(1)
            loss = (ce + cost * l1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                asr = (logits.argmax(1) == target).float().view(labels, -1).mean(1).cpu()
                l1c = l1.detach().cpu()
                ok = asr >= cfg.asr_threshold
                better = ok & (l1c < best_norm)
                best_norm = torch.where(better, l1c, best_norm)
                best_mask[better] = mask.detach().cpu()[better]
                best_pat[better] = pat.detach().cpu()[better]
                best_asr = torch.where(better, asr, best_asr)
                up = torch.where(ok, up + 1, torch.zeros_like(up))
                down = torch.where(ok, torch.zeros_like(down), down + 1)
                raise_ = (up >= cfg.patience).to(dev)
                lower = (down >= cfg.patience).to(dev)
                cost = torch.where(raise_, cost * cfg.cost_multiplier, cost)
                cost = torch.where(lower, cost / cfg.cost_multiplier**1.5, cost)
                up[raise_.cpu()] = 0
                down[lower.cpu()] = 0
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    # a label never reached at the threshold keeps its last trigger, with its (lower) success rate
    never = torch.isinf(best_norm)
    if never.any():
        with torch.no_grad():
            last_mask = ((torch.tanh(mask_p) + 1) / 2).detach().cpu()
            last_pat = ((torch.tanh(pat_p) + 1) / 2).detach().cpu()
        best_mask[never], best_pat[never] = last_mask[never], last_pat[never]
        best_norm[never] = last_mask[never].flatten(1).sum(1)
        best_asr[never] = asr[never]
    norms = best_norm.numpy().astype(np.float64)
    idx, med, mad = anomaly_indices(norms)
    flagged = [int(t) for t in range(labels) if norms[t] < med and idx[t] > cfg.anomaly_threshold]
    return CleanseReport(
        [float(v) for v in norms],
        [float(v) for v in best_asr],
        [float(v) for v in idx],
        flagged,
        med,
        mad,
        best_mask,
        best_pat,
        cfg.steps,
        forward,
    )


def apply_trigger(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Inputs ``x`` stamped with a reversed trigger: ``(1 - m) * x + m * p``."""
    return (1 - mask) * x + mask * pattern


def unlearning_loss(masks: torch.Tensor, patterns: torch.Tensor, ratio: float, seed: int = 0):  # noqa: ANN201
    """The shared loop's loss for §6.2 unlearning: a share ``ratio`` of each batch carries one of the
    reversed triggers (chosen at random) and keeps its true label."""
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(net: nn.Module, batch: Batch) -> LossOut:
        x = batch.x.clone()
        n = int(round(ratio * len(x)))
        if n:
            pick = torch.randint(0, len(masks), (n,), generator=gen)
            x[:n] = apply_trigger(x[:n], masks[pick].to(x.device), patterns[pick].to(x.device))
        logits = net(x)
        return LossOut(F.cross_entropy(logits, batch.y), len(x))

    return loss_fn


@register_attack
class NeuralCleanse(Attack):
    """Scan for backdoor labels; with ``unlearn``, fine-tune the flagged triggers away."""

    name = "neural-cleanse"
    citation = (
        "Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao. Neural Cleanse: Identifying and Mitigating Backdoor "
        "Attacks in Neural Networks. IEEE S&P 2019; as used in Li et al. arXiv:1910.01226 §8.3"
    )
    Config = NeuralCleanseConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        rep = scan(model, data, self.config, seed=budget.seed)
        log.forward_samples += rep.forward_samples
        log.details["scan"] = rep.to_dict()
        if self.config.unlearn and rep.flagged and budget.epochs > 0:
            sel = torch.tensor(rep.flagged)
            loss = unlearning_loss(rep.masks[sel], rep.patterns[sel], self.config.unlearn_ratio, budget.seed)
            log.add_training(
                fit(model, data, loss, budget.train_config(), on_epoch_end=on_epoch_end, desc="unlearning")
            )
            log.details["unlearned"] = rep.flagged
        return model
