"""Serial-number search against a DSN customer model: guess the key, reverse-engineer it, climb to it.

Tang, Du, Hu. "Deep Serial Number" (arXiv:2011.08960); the 2023 published version (ECML-PKDD 2023)
adds the reverse-engineering attack: ``min_{SN'} CE(f(A(x, SN')), y) + lambda * |SN'|`` with Adam,
where A writes the proxy SN into the input, reporting a reverse-engineered SN at 48.8 +/- 25.1% on
MNIST (best 68.9%). The paper's attack is the weakest reasonable one; a defence is only as good as it
is against the *adaptive* attacker, so this module also implements what an attacker who reads the
paper would add (an independent evaluation recovered the exact 5x7 key of a customer model this way):

- **Brute force** (black box): random serial numbers of the model's geometry, each stamped on a few
  of the attacker's labelled images and queried; a try that reaches ``unlock_accuracy`` on them is
  confirmed on 200 more, and *unlocks* the model when it reaches it there too. Reported: unlocks and
  candidates in N tries, the best confirmed accuracy, queries spent.
- **Reverse engineering** (white box, the attacker holds labelled data; ``method="reverse-engineer"``):
  in the known region (the manifest publishes the geometry), a relaxed pattern ``sigmoid(theta)``
  optimised with Adam on the cross-entropy of the model on stamped attacker images (plus the 2023
  paper's ``lam * |SN'|`` when ``lam > 0``), many restarts, rounded to bits, then a loss-guided
  greedy bit search (:func:`greedy_bit_search`: flip the bit that most lowers the attacker's own loss
  until no flip helps). The attacker's own stopping rule returns the restart with the lowest loss on
  a held-out part of its own data (:func:`reverse_engineer`); no test label is read. With
  ``region="unknown"``, a mask and pattern over the whole image as in Neural Cleanse.
- **Label-only hill climbing** (black box, ``method="hill-climb"``, :func:`hill_climb`): single-bit
  moves scored by accuracy on a few of the attacker's images, sideways moves on plateaus, random
  restarts, a hard query budget (100,000 by default), candidates confirmed on other images.
- **Unknown position** (``method="locate"``, :func:`locate`): the attacker does not know where the
  serial number is; candidate rectangles come from a Neural-Cleanse mask (its bounding box) or a
  grid scan of rectangles over the image ranked by a short relaxed search, and the best candidates
  get the full known-region search. Reported: the best key found, as a geometry and its bits.

Everything here sees only the model and the attacker's data. How good what was found really is (test
accuracy, Hamming distance to the true key) is measured afterwards by :func:`evaluate_found`, which
is the only function that is handed the true serial number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.serial import MAX_AMPLITUDE, SerialGeometry, SerialNumber, bit_levels, stamp, stamp_many, write_frame
from deepserial.suspect import ModuleSuspect, QueryBudgetError, Suspect
from deepserial.training import EpochCallback, model_device


class SerialSearchConfig(BaseModel):
    """Options of every serial-number search (each method reads its own; unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["brute-force", "reverse-engineer", "hill-climb", "locate"] = "brute-force"
    geometry: dict | None = Field(
        None,
        description="the serial number's geometry (SerialGeometry.to_dict, public in the model manifest); "
        "needed by every method but locate and the unknown-region reverse engineering",
    )
    tries: int = Field(100_000, ge=1, description="random serial numbers tried (brute force)")
    images_per_try: int = Field(10, ge=1, description="attacker images each try is scored on")
    unlock_accuracy: float = Field(0.5, gt=0, le=1, description="accuracy at which a try counts as unlocking")
    region: Literal["known", "unknown"] = "known"
    restarts: int = Field(20, ge=1, description="independent reverse-engineering starts")
    steps: int = Field(300, ge=1, description="Adam steps of each relaxed search")
    lr: float = Field(0.1, gt=0)
    init_scale: float = Field(
        0.5,
        gt=0,
        description="standard deviation of the relaxed search's start (the pattern's logits): 0.5 starts near "
        "the levels' midpoint, 3 near random binary keys (a thief's other start against a defence trained "
        "on the first)",
    )
    lam: float = Field(
        0.0,
        ge=0,
        description="weight of |SN'|, the L1 norm of the relaxed pattern (the 2023 paper's lambda). Off by "
        "default: far from the key a DSN model's loss is nearly flat, and Adam, which rescales gradients, then "
        "follows the L1 term: on a flat stand-in every restart at 1e-3 ended on the all-zero pattern",
    )
    mask_lam: float = Field(1e-3, ge=0, description="weight of the L1 norm of the mask (unknown region, locate)")
    batch_size: int = Field(128, ge=1)
    holdout: float = Field(
        0.3, gt=0, lt=1, description="share of the attacker's data kept to score patterns and pick a restart"
    )
    bit_search: bool = Field(True, description="refine each rounded pattern by a greedy bit search")
    search_images: int = Field(256, ge=1, description="attacker images the bit search's loss is computed on")
    search_flips: int = Field(64, ge=1, description="most flips of one bit search")
    search_tol: float = Field(
        1e-3,
        ge=0,
        description="least loss decrease (nats) a flip must bring: far from the key a DSN model's loss is "
        "flat, and flips that lower it by 1e-4 follow the noise of the images, not the key",
    )
    queries: int = Field(100_000, ge=1, description="query budget of the hill climb (AttackBudget.queries wins)")
    climb_images: int = Field(20, ge=1, description="attacker images each hill-climb step is scored on")
    confirm_images: int = Field(200, ge=1, description="other images a candidate key is confirmed on")
    patience: int | None = Field(
        None, ge=1, description="hill climb: proposals without improvement before a restart (None: 3 x bits)"
    )
    stop_on_unlock: bool = Field(True, description="hill climb: stop once a restart ends on a confirmed unlock")
    locate: Literal["mask", "grid"] = Field("mask", description="how locate proposes regions")
    sizes: list[tuple[int, int]] = Field(
        default_factory=lambda: [(8, 8)],
        description="grid scan: rectangle sizes (rows, cols) in pixels; a rectangle larger than the key "
        "that contains it unlocks as well (the extra pixels are searched too)",
    )
    stride: int = Field(2, ge=1, description="grid scan: step between candidate positions in pixels")
    scan_steps: int = Field(40, ge=1, description="grid scan: relaxed steps per candidate rectangle")
    top_k: int = Field(3, ge=1, description="locate: candidate regions given the full known-region search")
    locate_restarts: int = Field(5, ge=1, description="locate: restarts of the known-region search per candidate")
    pad: int = Field(1, ge=0, description="locate (mask): pixels added around the mask's bounding box")
    amplitude: int = Field(
        0, ge=0, le=MAX_AMPLITUDE, description="locate: how loudly the method writes bits (public, as in the manifest)"
    )


# ----- brute force -----------------------------------------------------------------------------------
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


# ----- scoring many keys at once ---------------------------------------------------------------------
class KeyScorer:
    """The attacker's own loss and accuracy of many candidate keys on a fixed set of its images.

    Each call stamps the N images with K keys at once (:func:`~deepserial.serial.stamp_many`, in chunks
    of at most ``chunk_samples`` forwards) and returns per key the mean cross-entropy and the accuracy
    (a fraction). Keys already scored are remembered, so restarts that end on the same pattern and a
    bit search stepping back cost nothing. ``forward_samples`` counts the forwards actually run.

    Example::

        score = KeyScorer(model, x, y, geometry)
        loss, acc = score(torch.stack([bits_a, bits_b]))  # shapes (2,), (2,)
    """

    def __init__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, geometry: SerialGeometry, chunk_samples: int = 8192
    ) -> None:
        self.model, self.geometry = model, geometry
        self.device = model_device(model)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.chunk = max(1, chunk_samples // max(1, len(x)))
        self.forward_samples = 0
        self._memo: dict[bytes, tuple[float, float]] = {}

    @torch.no_grad()
    def __call__(self, keys: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Loss and accuracy of each of the K keys (K, h, w): two arrays of shape (K,)."""
        flat = keys.detach().to(torch.uint8).cpu().flatten(1).numpy()
        names = [r.tobytes() for r in flat]
        first: dict[bytes, int] = {}
        for i, b in enumerate(names):
            first.setdefault(b, i)
        new = [b for b in first if b not in self._memo]
        if new:
            kb = keys[[first[b] for b in new]].float()
            n = len(self.y)
            self.model.eval()
            for s in range(0, len(kb), self.chunk):
                part = kb[s : s + self.chunk].to(self.device)
                logits = self.model(stamp_many(self.x, self.geometry, part)).float()
                yy = self.y.repeat(len(part))
                loss = F.cross_entropy(logits, yy, reduction="none").view(len(part), n).mean(1)
                acc = (logits.argmax(1) == yy).float().view(len(part), n).mean(1)
                for j, (lo, ac) in enumerate(zip(loss.tolist(), acc.tolist(), strict=True)):
                    self._memo[new[s + j]] = (lo, ac)
                self.forward_samples += len(part) * n
        out = np.array([self._memo[b] for b in names], dtype=np.float64).reshape(len(names), 2)
        return out[:, 0], out[:, 1]

    def loss(self, keys: torch.Tensor) -> np.ndarray:
        """The loss alone (what :func:`greedy_bit_search` minimises)."""
        return self(keys)[0]


def greedy_bit_search(
    loss_of: Callable[[torch.Tensor], np.ndarray], bits: torch.Tensor, max_flips: int = 64, tol: float = 0.0
) -> dict[str, Any]:
    """Steepest descent over single-bit flips: flip the bit that most lowers ``loss_of``, until none does.

    The adaptive refinement of the 2023 DSN paper's reverse engineering (Tang, Du, Hu,
    arXiv:2011.08960): a rounded relaxed pattern is often a few bits from the key, and DSN models are
    weakest exactly there (several one-bit neighbours unlock). Each round scores all ``h * w``
    neighbours in one call.

    Args:
        loss_of: keys (K, h, w) of 0/1 -> losses (K,); e.g. :meth:`KeyScorer.loss`.
        bits: the start (h, w).
        max_flips: most accepted flips.
        tol: a flip must lower the loss by more than this.

    Returns: ``bits`` (h x w list), ``loss``, ``start_loss``, ``flips`` ([row, col, loss] per accepted
    flip), ``rounds``, ``keys_scored``.

    Example::

        out = greedy_bit_search(KeyScorer(model, x, y, geometry).loss, torch.zeros(5, 7))
        out["bits"], out["loss"]
    """
    cur = (bits.detach().cpu() > 0.5).float()
    h, w = cur.shape
    eye = torch.eye(h * w).view(h * w, h, w)
    cur_loss = float(loss_of(cur[None])[0])
    start, flips, rounds, scored = cur_loss, [], 0, 1
    for _ in range(max_flips):
        rounds += 1
        nb = (cur[None] + eye) % 2  # every single-bit flip
        losses = np.asarray(loss_of(nb), dtype=np.float64)
        scored += len(nb)
        j = int(np.argmin(losses))
        if not losses[j] < cur_loss - tol:
            break
        cur, cur_loss = nb[j], float(losses[j])
        flips.append([j // w, j % w, cur_loss])
    return {
        "bits": cur.int().tolist(),
        "loss": cur_loss,
        "start_loss": start,
        "flips": flips,
        "rounds": rounds,
        "keys_scored": scored,
    }


# ----- reverse engineering (white box) ---------------------------------------------------------------
@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with no parameter gradients (the search differentiates the input only)."""
    flags = [p.requires_grad for p in model.parameters()]
    was = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was)


def _split(data: TensorData, holdout: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(data), generator=gen)
    n_hold = max(1, int(round(holdout * len(data))))
    return order[:n_hold], order[n_hold:]


def _relaxed_search(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    geometry: SerialGeometry,
    steps: int,
    lr: float,
    lam: float,
    batch_size: int,
    gen: torch.Generator,
    init_scale: float = 0.5,
) -> torch.Tensor:
    """Adam on ``theta`` (h, w), started at N(0, init_scale^2): CE(model(stamp_soft(x, sigmoid(theta))), y)
    + lam * |sigmoid(theta)|.
    Returns the final ``sigmoid(theta)`` on the CPU. The model must be frozen (:func:`_frozen`)."""
    dev = model_device(model)
    theta = (torch.randn(geometry.height, geometry.width, generator=gen) * init_scale).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    full = len(x) <= batch_size
    xd, yd = (x.to(dev), y.to(dev)) if full else (x, y)
    for _ in range(steps):
        if full:
            xb, yb = xd, yd
        else:
            idx = torch.randint(0, len(x), (batch_size,), generator=gen)
            xb, yb = x[idx].to(dev), y[idx].to(dev)
        proxy = torch.sigmoid(theta)
        loss = F.cross_entropy(model(_stamp_soft(xb, geometry, proxy)), yb) + lam * proxy.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.sigmoid(theta).detach().cpu()


@torch.no_grad()
def _soft_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: SerialGeometry, proxy: torch.Tensor) -> float:
    dev = model_device(model)
    tot = 0.0
    for i in range(0, len(x), 512):
        xb, yb = x[i : i + 512].to(dev), y[i : i + 512].to(dev)
        tot += float(F.cross_entropy(model(_stamp_soft(xb, g, proxy.to(dev))), yb, reduction="sum"))
    return tot / max(1, len(x))


def _known_region(
    model: nn.Module,
    geometry: SerialGeometry,
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    select: KeyScorer,
    cfg: SerialSearchConfig,
    restarts: int,
    gen: torch.Generator,
    xh: torch.Tensor,
    yh: torch.Tensor,
) -> tuple[list[dict[str, Any]], int]:
    """Restarts of relaxed search -> rounding -> bit search in one region; per restart its record.
    Returns the records and the forwards spent (relaxed steps + bit search)."""
    n_search = min(cfg.search_images, len(x_fit))
    search = KeyScorer(model, x_fit[:n_search], y_fit[:n_search], geometry)
    records = []
    spent = 0
    for r in range(restarts):
        t0 = time.perf_counter()
        proxy = _relaxed_search(
            model, x_fit, y_fit, geometry, cfg.steps, cfg.lr, cfg.lam, cfg.batch_size, gen, cfg.init_scale
        )
        spent += cfg.steps * min(cfg.batch_size, len(x_fit)) + len(xh)  # the steps, then the relaxed loss
        rounded = (proxy > 0.5).float()
        round_loss, round_acc = select(rounded[None])
        rec: dict[str, Any] = {
            "restart": r,
            "relaxed_loss": _soft_loss(model, xh, yh, geometry, proxy),
            "rounded_loss": float(round_loss[0]),
            "rounded_accuracy": float(round_acc[0]),
            "rounded_bits": rounded.int().tolist(),
        }
        final = rounded
        if cfg.bit_search:
            gs = greedy_bit_search(search.loss, rounded, cfg.search_flips, cfg.search_tol)
            final = torch.tensor(gs["bits"], dtype=torch.float32)
            rec |= {"search_flips": len(gs["flips"]), "search_fit_loss": gs["loss"], "keys_scored": gs["keys_scored"]}
        loss, acc = select(final[None])
        rec |= {"loss": float(loss[0]), "accuracy": float(acc[0]), "bits": final.int().tolist()}
        rec["wall_s"] = time.perf_counter() - t0
        records.append(rec)
    return records, spent + search.forward_samples


def reverse_engineer(
    model: SplitNet, data: TensorData, cfg: SerialSearchConfig, geometry: SerialGeometry | None, seed: int = 0
) -> dict:
    """White-box key recovery with the attacker's own stopping rule (2023 DSN paper's attack, adapted).

    Known region: ``cfg.restarts`` relaxed searches (Adam, ``cfg.steps`` steps at ``cfg.lr`` on the
    cross-entropy of stamped images, ``+ cfg.lam * |SN'|``), each rounded to bits and, with
    ``cfg.bit_search``, refined by :func:`greedy_bit_search` on ``cfg.search_images`` of the fitting
    images. Every restart is scored on the held-out part of the attacker's data (``cfg.holdout``); the
    attacker returns the restart with the lowest held-out loss (``chosen``) and never reads test labels.
    Unknown region: a mask and pattern over the whole image as in Neural Cleanse, kept as found.

    Args:
        model: the customer model (its parameters are not changed).
        data: the attacker's labelled images (N, C, H, W) in [0, 1], labels (N,).
        cfg: the options (restarts, steps, lr, lam, holdout, bit_search, search_images, ...).
        geometry: the serial number's geometry (public in the manifest); None only for ``region="unknown"``.
        seed: seeds the split, the starts and the batches.

    Returns: ``restarts`` (per restart: ``loss`` and ``accuracy`` (a fraction) on the held-out images,
    ``bits``, the relaxed and rounded losses, flips made), ``chosen`` (index), ``chosen_bits``,
    ``chosen_loss``, ``chosen_accuracy``, ``accuracy_mean/std/best``, ``holdout_images``,
    ``forward_samples``.

    Example::

        cfg = SerialSearchConfig(method="reverse-engineer", geometry=g.to_dict())
        out = reverse_engineer(model, attacker, cfg, g); out["chosen_bits"]
    """
    if cfg.region == "known" and geometry is None:
        raise ConfigError("reverse engineering in the known region needs the serial number's geometry")
    if len(data) < 10:
        raise ConfigError("reverse engineering needs labelled attacker images (at least 10)")
    gen = torch.Generator().manual_seed(seed)
    hold, fit_idx = _split(data, cfg.holdout, gen)
    xh, yh = data.x[hold], data.y[hold]
    with _frozen(model):
        if cfg.region == "unknown":
            results, spent = _mask_restarts(model, data.x[fit_idx], data.y[fit_idx], xh, yh, cfg, gen)
        else:
            select = KeyScorer(model, xh, yh, geometry)
            results, spent = _known_region(
                model, geometry, data.x[fit_idx], data.y[fit_idx], select, cfg, cfg.restarts, gen, xh, yh
            )
            spent += select.forward_samples
    accs = np.array([r["accuracy"] for r in results])
    out = {
        "region": cfg.region,
        "restarts": results,
        "accuracy_mean": float(accs.mean()),
        "accuracy_std": float(accs.std()),
        "accuracy_best": float(accs.max()),
        "holdout_images": len(hold),
        "forward_samples": int(spent),
    }
    if cfg.region == "known":
        i = int(np.argmin([r["loss"] for r in results]))
        out |= {
            "chosen": i,
            "chosen_bits": results[i]["bits"],
            "chosen_loss": results[i]["loss"],
            "chosen_accuracy": results[i]["accuracy"],
            "geometry": geometry.to_dict(),
        }
    return out


def _mask_search(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: SerialSearchConfig, steps: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neural Cleanse's mask and pattern (Wang et al., S&P 2019) on the true labels: returns mask
    (1, 1, H, W) in [0, 1] and pattern (1, C, H, W) between the bit levels of ``cfg.amplitude`` (the
    method's, public: [0, 1] for 0/1 bits), on the CPU. The model must be frozen."""
    dev = model_device(model)
    lo, hi = bit_levels(cfg.amplitude)
    c, h, w = (int(s) for s in x.shape[1:])
    mask_p = (torch.rand(1, 1, h, w, generator=gen) * 0.2 - 2.0).to(dev).requires_grad_(True)
    pat_p = (torch.rand(1, c, h, w, generator=gen) * 2 - 1).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([mask_p, pat_p], lr=cfg.lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(cfg.batch_size, len(x)),), generator=gen)
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        m, p = (torch.tanh(mask_p) + 1) / 2, lo + (hi - lo) * (torch.tanh(pat_p) + 1) / 2
        loss = F.cross_entropy(model((1 - m) * xb + m * p), yb) + cfg.mask_lam * m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((torch.tanh(mask_p) + 1) / 2).cpu(), (lo + (hi - lo) * (torch.tanh(pat_p) + 1) / 2).cpu()


def _mask_restarts(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xh: torch.Tensor,
    yh: torch.Tensor,
    cfg: SerialSearchConfig,
    gen: torch.Generator,
) -> tuple[list[dict[str, Any]], int]:
    results = []
    for _ in range(cfg.restarts):
        m, p = _mask_search(model, x, y, cfg, cfg.steps, gen)
        results.append(
            {"accuracy": _accuracy(model, (1 - m) * xh + m * p, yh), "mask_l1": float(m.sum()), "mask": m, "pattern": p}
        )
    spent = cfg.restarts * cfg.steps * min(cfg.batch_size, len(x))
    for r in results:  # tensors stay out of the JSON-able record
        r.pop("mask"), r.pop("pattern")
    return results, spent


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        dev = model_device(model)
        right = [model(x[i : i + 512].to(dev)).argmax(1).cpu() == y[i : i + 512] for i in range(0, len(x), 512)]
        return float(torch.cat(right).float().mean())


def _stamp_soft(x: torch.Tensor, g: SerialGeometry, proxy: torch.Tensor) -> torch.Tensor:
    """Write a continuous pattern in [0, 1] into the serial number's region (differentiable), at the
    geometry's levels, inside its public guard frame if it has one."""
    out = write_frame(x.clone(), g)
    rows, cols = g.region()
    chans = list(g.channels) or list(range(x.shape[1]))
    for ch in chans:
        out[:, ch, rows, cols] = g.pixels(proxy)
    return out


# ----- label-only hill climbing (black box) ----------------------------------------------------------
def hill_climb(
    suspect: Suspect,
    geometry: SerialGeometry,
    data: TensorData,
    *,
    queries: int = 100_000,
    images: int = 20,
    confirm_images: int = 200,
    unlock_accuracy: float = 0.5,
    patience: int | None = None,
    stop_on_unlock: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Label-only key search: hill climbing over single-bit flips, scored by accuracy on own images.

    The black-box adaptive attacker against DSN (Tang, Du, Hu, arXiv:2011.08960): it sees predicted
    labels only. Each restart draws a random key and ``images`` of its images, proposes one-bit flips
    in random order and accepts a flip that does not lower the accuracy (sideways moves cross the
    plateaus of a coarse signal); after ``patience`` proposals without a strict improvement it restarts.
    A key that reaches ``unlock_accuracy`` on the screening images is confirmed on ``confirm_images``
    other images (a confirmed *unlock* when it reaches it there too). Every query counts against
    ``queries``; the search stops before a batch would exceed it.

    Args:
        suspect: the model as a label oracle (:class:`~deepserial.suspect.ModuleSuspect`, ONNX, HTTP).
        geometry: where the serial number is (public in the manifest).
        data: the attacker's labelled images.
        queries: the query budget.
        images: images each step is scored on.
        confirm_images: images a candidate is confirmed on (other than the screening ones).
        unlock_accuracy: fraction at which a key counts as unlocking.
        patience: proposals without improvement before a restart (None: 3 x bits).
        stop_on_unlock: stop when a restart ends having found a confirmed unlock.
        seed: seeds starts, images and proposal order.

    Returns: ``best_bits`` and ``best_accuracy`` (the best confirmed key, else the best screened),
    ``unlocks`` (distinct confirmed keys), ``queries``, ``queries_to_first_unlock``, ``restarts``
    (per restart: start and end screening accuracy, steps, queries), ``steps``.

    Example::

        out = hill_climb(ModuleSuspect(model, (1, 28, 28)), geometry, attacker, queries=100_000)
        out["best_bits"], out["queries"]
    """
    if len(data) < images:
        raise ConfigError(f"the hill climb scores each step on {images} labelled images; the attacker has {len(data)}")
    rng = np.random.default_rng(seed)
    n = geometry.nbits
    patience = patience or 3 * n
    q0 = suspect.queries
    spent = lambda: suspect.queries - q0  # noqa: E731

    def ask(x: torch.Tensor, y: torch.Tensor, bits: torch.Tensor) -> float | None:
        if spent() + len(x) > queries:
            return None
        try:
            return float((suspect.predict(stamp(x, geometry, bits)) == y).float().mean())
        except QueryBudgetError:
            return None

    confirmed: dict[bytes, float] = {}
    best_bits, best_acc, best_confirmed = None, -1.0, False
    first_unlock = None
    restarts: list[dict[str, Any]] = []
    total_steps = 0
    exhausted = False
    while not exhausted:
        pick = rng.permutation(len(data))
        screen, rest = torch.from_numpy(pick[:images]), torch.from_numpy(pick[images:])
        xs, ys = data.x[screen], data.y[screen]
        bits = torch.from_numpy(rng.integers(0, 2, size=(geometry.height, geometry.width)).astype(np.float32))
        acc = ask(xs, ys, bits)
        if acc is None:
            break
        rec = {"start_accuracy": acc, "steps": 0, "queries_at_start": spent()}
        stall, order, pos = 0, rng.permutation(n), 0
        while stall < patience:
            if pos == n:
                order, pos = rng.permutation(n), 0
            j = int(order[pos])
            pos += 1
            cand = bits.clone()
            cand.view(-1)[j] = 1 - cand.view(-1)[j]
            a = ask(xs, ys, cand)
            if a is None:
                exhausted = True
                break
            rec["steps"] += 1
            stall = 0 if a > acc else stall + 1
            if a >= acc:
                bits, acc = cand, a
            if acc >= unlock_accuracy and bits.numpy().tobytes() not in confirmed and len(rest):
                sel = rest[torch.from_numpy(rng.permutation(len(rest))[:confirm_images])]
                c = ask(data.x[sel], data.y[sel], bits)
                if c is None:
                    exhausted = True
                    break
                confirmed[bits.numpy().tobytes()] = c
                if c >= unlock_accuracy and first_unlock is None:
                    first_unlock = spent()
                if not best_confirmed or c > best_acc:  # a confirmed key beats any screened one
                    best_bits, best_acc, best_confirmed = bits.clone(), c, True
            if not best_confirmed and acc > best_acc:
                best_bits, best_acc = bits.clone(), acc
        rec |= {"end_accuracy": acc, "queries": spent() - rec.pop("queries_at_start")}
        restarts.append(rec)
        total_steps += rec["steps"]
        if stop_on_unlock and first_unlock is not None:
            break
    return {
        "best_bits": best_bits.int().tolist() if best_bits is not None else None,
        "best_accuracy": best_acc if best_acc >= 0 else None,
        "best_confirmed": best_confirmed,
        "unlocks": sum(c >= unlock_accuracy for c in confirmed.values()),
        "candidates": len(confirmed),
        "queries": spent(),
        "query_budget": queries,
        "queries_to_first_unlock": first_unlock,
        "steps": total_steps,
        "restarts": restarts,
        "screen_images": images,
        "confirm_images": confirm_images,
        "unlock_accuracy": unlock_accuracy,
    }


# ----- unknown position ------------------------------------------------------------------------------
def _mask_box(mask: torch.Tensor, pad: int, link: int = 2) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the cluster of strong mask pixels around the mask's peak, ``pad`` added.

    Strong: at least half the peak. The cluster grows from the peak through strong pixels at most
    ``link`` rows and columns apart (a serial number's mask marks its 1 bits, which a random key
    scatters over its rectangle), so strong pixels elsewhere, e.g. on the digit, do not stretch the box.
    """
    m = mask.reshape(mask.shape[-2], mask.shape[-1])
    strong = [tuple(p) for p in torch.nonzero(m >= 0.5 * float(m.max())).tolist()]
    peak = divmod(int(m.argmax()), m.shape[1])
    cluster, todo, rest = {peak}, [peak], set(strong) - {peak}
    while todo:
        r, c = todo.pop()
        near = {p for p in rest if abs(p[0] - r) <= link and abs(p[1] - c) <= link}
        rest -= near
        cluster |= near
        todo += near
    rows, cols = [p[0] for p in cluster], [p[1] for p in cluster]
    top, left = max(0, min(rows) - pad), max(0, min(cols) - pad)
    bottom, right = min(m.shape[0] - 1, max(rows) + pad), min(m.shape[1] - 1, max(cols) + pad)
    return top, left, bottom - top + 1, right - left + 1


def locate(model: SplitNet, data: TensorData, cfg: SerialSearchConfig, seed: int = 0) -> dict[str, Any]:
    """Key search without knowing where the serial number is: propose regions, then search the best.

    ``cfg.locate="mask"``: ``cfg.locate_restarts`` Neural-Cleanse mask-and-pattern searches on the true
    labels (Wang et al., S&P 2019), each proposing the bounding box of its mask's strong pixels (half
    the peak or more) clustered around the peak, ``cfg.pad`` added. ``"grid"``: every rectangle of
    ``cfg.sizes`` (pixels) at ``cfg.stride`` inside the image. Every region is ranked by the held-out
    loss of a ``cfg.scan_steps``-step relaxed search (a rectangle that contains the key unlocks too).
    The ``cfg.top_k`` best regions get the known-region search (:func:`reverse_engineer`'s restarts,
    rounding and bit search, ``cfg.locate_restarts`` restarts each); the key found is the region and
    bits with the lowest held-out loss. The attacker assumes one bit per pixel on all channels, written
    at ``cfg.amplitude`` (the method's, public).

    Args:
        model: the customer model.
        data: the attacker's labelled images.
        cfg: options (locate, sizes, stride, scan_steps, top_k, locate_restarts, pad, steps, ...).
        seed: seeds everything random.

    Returns: ``candidates`` (geometry and scan loss of each proposed region), ``searched`` (per region
    searched: its chosen bits, loss, accuracy), ``best`` (``geometry``, ``bits``, ``loss``,
    ``accuracy`` on held-out attacker images), ``forward_samples``.

    Example::

        out = locate(model, attacker, SerialSearchConfig(method="locate", locate="grid", sizes=[(8, 8)]))
        out["best"]["geometry"], out["best"]["bits"]
    """
    if len(data) < 10:
        raise ConfigError("locating a serial number needs labelled attacker images (at least 10)")
    gen = torch.Generator().manual_seed(seed)
    hold, fit_idx = _split(data, cfg.holdout, gen)
    xh, yh, xf, yf = data.x[hold], data.y[hold], data.x[fit_idx], data.y[fit_idx]
    _, H, W = (int(s) for s in data.x.shape[1:])
    spent = 0
    boxes: list[tuple[int, int, int, int]] = []  # (height, width, top, left) in pixels
    with _frozen(model):
        if cfg.locate == "mask":
            for _ in range(cfg.locate_restarts):
                m, _ = _mask_search(model, xf, yf, cfg, cfg.steps, gen)
                spent += cfg.steps * min(cfg.batch_size, len(xf))
                top, left, h, w = _mask_box(m, cfg.pad)
                boxes.append((h, w, top, left))
        else:
            for h, w in cfg.sizes:
                if h > H or w > W:
                    raise ConfigError(f"grid rectangle {h}x{w} does not fit a {H}x{W} input")
                tops = sorted(set(range(0, H - h + 1, cfg.stride)) | {H - h})
                lefts = sorted(set(range(0, W - w + 1, cfg.stride)) | {W - w})
                boxes += [(h, w, top, left) for top in tops for left in lefts]
        cands: dict[tuple[int, int, int, int], float] = {}
        for box in dict.fromkeys(boxes):  # each distinct region: a short relaxed search, its held-out loss
            g = SerialGeometry(*box, amplitude=cfg.amplitude)
            proxy = _relaxed_search(
                model, xf, yf, g, cfg.scan_steps, cfg.lr, cfg.lam, cfg.batch_size, gen, cfg.init_scale
            )
            spent += cfg.scan_steps * min(cfg.batch_size, len(xf)) + len(xh)
            cands[box] = _soft_loss(model, xh, yh, g, proxy)
        ranked = sorted(cands.items(), key=lambda kv: kv[1])
        searched = []
        for (h, w, top, left), _ in ranked[: cfg.top_k]:
            g = SerialGeometry(h, w, top, left, amplitude=cfg.amplitude)
            select = KeyScorer(model, xh, yh, g)
            recs, s = _known_region(model, g, xf, yf, select, cfg, cfg.locate_restarts, gen, xh, yh)
            spent += s + select.forward_samples
            i = int(np.argmin([r["loss"] for r in recs]))
            searched.append(
                {
                    "geometry": g.to_dict(),
                    "bits": recs[i]["bits"],
                    "loss": recs[i]["loss"],
                    "accuracy": recs[i]["accuracy"],
                }
            )
    best = min(searched, key=lambda r: r["loss"])
    return {
        "locate": cfg.locate,
        "candidates": [
            {"geometry": SerialGeometry(h, w, t, lf, amplitude=cfg.amplitude).to_dict(), "scan_loss": v}
            for (h, w, t, lf), v in ranked
        ],
        "searched": searched,
        "best": best,
        "holdout_images": len(hold),
        "forward_samples": int(spent),
    }


# ----- evaluation only (reads the true key and the test set) -----------------------------------------
def _pixel_map(g: SerialGeometry, bits: torch.Tensor | list, shape: tuple[int, int]) -> torch.Tensor:
    """(H, W) map of what a stamp writes: 0/1 under the pattern, NaN elsewhere (channels pooled)."""
    out = torch.full(shape, float("nan"))
    out[g.region()] = g.upsample(torch.as_tensor(bits, dtype=torch.float32))
    return out


def evaluate_found(details: dict[str, Any], model: nn.Module, test: TensorData, serial: SerialNumber) -> dict[str, Any]:
    """How good what a search found really is: test accuracy and distance to the true key.

    For evaluation only: the attacks never call it. Takes the ``details`` of a serial search
    (:func:`reverse_engineer`, :func:`hill_climb`, :func:`locate`, :func:`brute_force`) and returns a new
    dict: per reverse-engineering restart ``test_accuracy`` (fraction) and ``hamming`` to the true
    key (its rounded bits too), and for the returned key (``chosen``/``best``) the same, plus
    ``exact``; for a located key, ``true_bit_errors``: true bits whose pixel the found stamp does not
    write to the true value (uncovered bits count as errors), 0 meaning the found stamp contains the key.

    Example::

        ev = evaluate_found(reverse_engineer(model, attacker, cfg, g), model, test, serial)
        ev["chosen"]["exact"], ev["exact_restarts"]
    """
    g = serial.geometry
    true = serial.as_tensor()

    def score(geometry: SerialGeometry, bits: Any) -> float:
        return _accuracy(model, stamp(test.x, geometry, torch.as_tensor(bits, dtype=torch.float32)), test.y)

    def ham(bits: Any) -> int:
        return int((torch.as_tensor(bits, dtype=torch.float32) != true).sum())

    out: dict[str, Any] = {"true_key_test_accuracy": score(g, true), "nbits": g.nbits}
    if "chosen_bits" in details:  # known-region reverse engineering
        per = []
        for r in details["restarts"]:
            per.append(
                {
                    "loss": r["loss"],
                    "test_accuracy": score(g, r["bits"]),
                    "hamming": ham(r["bits"]),
                    "rounded_hamming": ham(r["rounded_bits"]),
                    "rounded_test_accuracy": score(g, r["rounded_bits"]),
                }
            )
        c = per[details["chosen"]]
        out |= {
            "restarts": per,
            "exact_restarts": sum(p["hamming"] == 0 for p in per),
            "exact_rounded_restarts": sum(p["rounded_hamming"] == 0 for p in per),
            "oracle_best_test_accuracy": max(p["test_accuracy"] for p in per),
            "chosen": c | {"exact": c["hamming"] == 0},
        }
    elif "best" in details:  # locate
        b = details["best"]
        fg = SerialGeometry.from_dict(b["geometry"])
        shape = (int(test.x.shape[2]), int(test.x.shape[3]))
        found, want = _pixel_map(fg, b["bits"], shape), _pixel_map(g, true, shape)
        rows, cols = g.region()
        top_left = (slice(rows.start, rows.stop, g.scale), slice(cols.start, cols.stop, g.scale))
        errors = int((found[top_left] != want[top_left]).sum())  # NaN (not written) differs from 0 and 1
        out["best"] = {"test_accuracy": score(fg, b["bits"]), "true_bit_errors": errors, "exact": errors == 0}
        out["same_geometry"] = fg == g
    elif details.get("best_bits") is not None:  # hill climb, brute force
        out["best"] = {
            "test_accuracy": score(g, details["best_bits"]),
            "hamming": ham(details["best_bits"]),
        }
        out["best"]["exact"] = out["best"]["hamming"] == 0
    return out


# ----- the attack interface --------------------------------------------------------------------------
@register_attack
class SerialSearch(Attack):
    """Find a serial number that unlocks a DSN customer model (the model itself is returned unchanged;
    what was found is in the log's ``details``)."""

    name = "serial-search"
    citation = (
        "Tang, Du, Hu. Deep Serial Number, arXiv:2011.08960 (2023 version: reverse-engineering attack, "
        "48.8 +/- 25.1% on MNIST); adaptive additions: restarts with the attacker's own stopping rule, greedy "
        "bit search, label-only hill climbing, unknown-position search"
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
        if cfg.method in ("brute-force", "hill-climb") and geometry is None:
            raise ConfigError(f"{cfg.method} searches serial numbers of the model's geometry; give geometry")
        if cfg.method == "brute-force":
            out = brute_force(model, geometry, data, cfg.tries, cfg.images_per_try, cfg.unlock_accuracy, budget.seed)
            log.queries = out["queries"]
        elif cfg.method == "hill-climb":
            suspect = ModuleSuspect(model, tuple(int(s) for s in data.x.shape[1:]))
            out = hill_climb(
                suspect,
                geometry,
                data,
                queries=budget.queries or cfg.queries,
                images=cfg.climb_images,
                confirm_images=cfg.confirm_images,
                unlock_accuracy=cfg.unlock_accuracy,
                patience=cfg.patience,
                stop_on_unlock=cfg.stop_on_unlock,
                seed=budget.seed,
            )
            log.queries = out["queries"]
        elif cfg.method == "locate":
            out = locate(model, data, cfg, budget.seed)
            log.forward_samples += out["forward_samples"]
        else:
            out = reverse_engineer(model, data, cfg, geometry, budget.seed)
            log.forward_samples += out["forward_samples"]
        log.details |= out
        return model
