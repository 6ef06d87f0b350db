"""Serial-number search against a DSN customer model: guess the key, or reverse-engineer it.

Tang, Du, Hu. "Deep Serial Number" (arXiv:2011.08960); the 2023 published version (ECML-PKDD 2023)
adds the reverse-engineering attack: ``min_{SN'} CE(f(A(x, SN')), y) + lambda * |SN'|`` with Adam,
where A writes the proxy SN into the input, reporting a reverse-engineered SN at 48.8 +/- 25.1% on
MNIST (best 68.9%).

- **Brute force** (black box): random serial numbers of the model's geometry, each stamped on a few
  of the attacker's labelled images and queried; a try that reaches ``unlock_accuracy`` on them is
  confirmed on 200 more, and *unlocks* the model when it reaches it there too. Reported: unlocks and
  candidates in N tries, the best confirmed accuracy, queries spent.
- **Reverse engineering** (white box, the attacker holds labelled data): a continuous proxy pattern
  optimised by gradient, in the serial number's region when the attacker knows where it is
  (``region="known"``), or as a mask and pattern over the whole image like Neural Cleanse when it
  does not (``region="unknown"``); then rounded to bits (known region) or kept as the found trigger
  (unknown region) and scored on held-out images. ``restarts`` independent starts give mean, std
  and best, as the paper reports.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.serial import SerialGeometry, stamp
from deepserial.suspect import ModuleSuspect
from deepserial.training import EpochCallback, model_device


class SerialSearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["brute-force", "reverse-engineer"] = "brute-force"
    geometry: dict | None = Field(
        None,
        description="the serial number's geometry (SerialGeometry.to_dict); "
        "needed for brute force and the known-region reverse engineering",
    )
    tries: int = Field(100_000, ge=1, description="random serial numbers tried (brute force)")
    images_per_try: int = Field(10, ge=1, description="attacker images each try is scored on")
    unlock_accuracy: float = Field(0.5, gt=0, le=1, description="accuracy at which a try counts as unlocking")
    region: Literal["known", "unknown"] = "known"
    restarts: int = Field(5, ge=1, description="independent reverse-engineering starts")
    steps: int = Field(300, ge=1)
    lr: float = Field(0.1, gt=0)
    lam: float = Field(1e-3, ge=0, description="weight of the L1 norm of the proxy pattern (or mask)")
    batch_size: int = Field(128, ge=1)
    holdout: float = Field(0.3, gt=0, lt=1, description="share of the attacker's data kept to score patterns")


def brute_force(
    model: SplitNet,
    geometry: SerialGeometry,
    data: TensorData,
    tries: int,
    images_per_try: int,
    unlock_accuracy: float,
    seed: int = 0,
    chunk: int = 256,
    confirm_images: int = 200,
) -> dict:
    """Random serial numbers through black-box queries: how many unlock the model, the best accuracy.

    Each try is screened on ``images_per_try`` images; a try that reaches ``unlock_accuracy`` there is
    a *candidate* and is confirmed on ``confirm_images`` other images (what an attacker would do:
    5 of 10 images right by luck happens about once in 600 tries at 10% chance). Unlocks are confirmed
    candidates; every query, screening and confirming, is counted.
    """
    if len(data) < images_per_try:
        raise ConfigError(
            f"brute force scores each try on {images_per_try} labelled images; the attacker has {len(data)}"
        )
    shape = tuple(int(s) for s in data.x.shape[1:])
    suspect = ModuleSuspect(model, shape)
    rng = np.random.default_rng(seed)
    n_confirm = min(confirm_images, len(data))
    unlocks, candidates, best, best_bits = 0, 0, -1.0, None
    confirmed: list[float] = []
    accs = []
    for start in range(0, tries, chunk):
        k = min(chunk, tries - start)
        bits = torch.from_numpy(rng.integers(0, 2, size=(k, geometry.height, geometry.width)).astype(np.float32))
        pick = torch.from_numpy(rng.choice(len(data), size=images_per_try, replace=False))
        x, y = data.x[pick], data.y[pick]
        xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * images_per_try, *x.shape[1:])
        stamped = stamp(xs, geometry, bits.repeat_interleave(images_per_try, 0))
        right = (suspect.predict(stamped).view(k, images_per_try) == y.unsqueeze(0)).float().mean(1)
        accs.append(right.numpy())
        for i in torch.nonzero(right >= unlock_accuracy).flatten().tolist():
            candidates += 1
            sel = torch.from_numpy(rng.choice(len(data), size=n_confirm, replace=False))
            acc = float((suspect.predict(stamp(data.x[sel], geometry, bits[i])) == data.y[sel]).float().mean())
            confirmed.append(acc)
            unlocks += int(acc >= unlock_accuracy)
            if acc > best:
                best, best_bits = acc, bits[i]
    all_acc = np.concatenate(accs)
    return {
        "tries": tries,
        "unlocks": unlocks,
        "candidates": candidates,
        "candidate_confirm_accuracy_max": max(confirmed) if confirmed else None,
        "candidate_confirm_accuracy_mean": float(np.mean(confirmed)) if confirmed else None,
        "confirm_images": n_confirm,
        "best_accuracy": best if best >= 0 else None,
        "screen_accuracy_max": float(all_acc.max()),
        "mean_accuracy": float(all_acc.mean()),
        "queries": suspect.queries,
        "best_bits": best_bits.int().tolist() if best_bits is not None else None,
    }


def _accuracy(model: SplitNet, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x.to(model_device(model))).argmax(1).cpu() == y).float().mean())


def reverse_engineer(
    model: SplitNet, data: TensorData, cfg: SerialSearchConfig, geometry: SerialGeometry | None, seed: int = 0
) -> dict:
    """Gradient search for a pattern that unlocks the model; per restart the held-out accuracy of the
    found pattern (rounded to bits in a known region)."""
    if cfg.region == "known" and geometry is None:
        raise ConfigError("reverse engineering in the known region needs the serial number's geometry")
    if len(data) < 10:
        raise ConfigError("reverse engineering needs labelled attacker images (at least 10)")
    dev = model_device(model)
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=gen)
    n_hold = max(1, int(round(cfg.holdout * len(data))))
    hold, fit_idx = order[:n_hold], order[n_hold:]
    xh, yh = data.x[hold], data.y[hold]
    c, h, w = (int(s) for s in data.x.shape[1:])
    results = []
    try:
        for _ in range(cfg.restarts):
            if cfg.region == "known":
                param = (torch.randn(geometry.height, geometry.width, generator=gen) * 0.5).to(dev).requires_grad_(True)
                params = [param]
            else:
                mask_p = (torch.rand(1, 1, h, w, generator=gen) * 0.2 - 2.0).to(dev).requires_grad_(True)
                pat_p = (torch.rand(1, c, h, w, generator=gen) * 2 - 1).to(dev).requires_grad_(True)
                params = [mask_p, pat_p]
            opt = torch.optim.Adam(params, lr=cfg.lr)
            for _ in range(cfg.steps):
                idx = fit_idx[torch.randint(0, len(fit_idx), (cfg.batch_size,), generator=gen)]
                x, y = data.x[idx].to(dev), data.y[idx].to(dev)
                if cfg.region == "known":
                    proxy = torch.sigmoid(param)
                    xs, norm = _stamp_soft(x, geometry, proxy), proxy.sum()
                else:
                    m, p = (torch.tanh(mask_p) + 1) / 2, (torch.tanh(pat_p) + 1) / 2
                    xs, norm = (1 - m) * x + m * p, m.sum()
                loss = F.cross_entropy(model(xs), y) + cfg.lam * norm
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                if cfg.region == "known":
                    bits = (torch.sigmoid(param) > 0.5).float().cpu()
                    acc = _accuracy(model, stamp(xh, geometry, bits), yh)
                    results.append({"accuracy": acc, "bits": bits.int().tolist()})
                else:
                    m, p = ((torch.tanh(mask_p) + 1) / 2).cpu(), ((torch.tanh(pat_p) + 1) / 2).cpu()
                    acc = _accuracy(model, (1 - m) * xh + m * p, yh)
                    results.append({"accuracy": acc, "mask_l1": float(m.sum())})
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    accs = np.array([r["accuracy"] for r in results])
    return {
        "region": cfg.region,
        "restarts": results,
        "accuracy_mean": float(accs.mean()),
        "accuracy_std": float(accs.std()),
        "accuracy_best": float(accs.max()),
        "holdout_images": n_hold,
    }


def _stamp_soft(x: torch.Tensor, g: SerialGeometry, proxy: torch.Tensor) -> torch.Tensor:
    """Write a continuous pattern in [0, 1] into the serial number's region (differentiable)."""
    out = x.clone()
    rows, cols = g.region()
    chans = list(g.channels) or list(range(x.shape[1]))
    for ch in chans:
        out[:, ch, rows, cols] = g.upsample(proxy)
    return out


@register_attack
class SerialSearch(Attack):
    """Find a serial number that unlocks a DSN customer model (the model itself is returned unchanged;
    what was found is in the log's ``details``)."""

    name = "serial-search"
    citation = (
        "Tang, Du, Hu. Deep Serial Number, arXiv:2011.08960 (2023 version: reverse-engineering attack, "
        "48.8 +/- 25.1% on MNIST)"
    )
    Config = SerialSearchConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        cfg = self.config
        geometry = SerialGeometry.from_dict(cfg.geometry) if cfg.geometry else None
        if cfg.method == "brute-force":
            if geometry is None:
                raise ConfigError("brute force draws serial numbers of the model's geometry; give geometry")
            out = brute_force(model, geometry, data, cfg.tries, cfg.images_per_try, cfg.unlock_accuracy, budget.seed)
            log.queries = out["queries"]
        else:
            out = reverse_engineer(model, data, cfg, geometry, budget.seed)
            log.forward_samples += cfg.restarts * cfg.steps * cfg.batch_size
        log.details |= out
        return model
