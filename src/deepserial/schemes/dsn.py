"""Deep Serial Number (DSN): a customer model that works only with its serial number.

Tang, Du, Hu. "Deep Serial Number: Computational Watermarking for DNN Intellectual Property
Protection." arXiv:2011.08960 (v1 2020; ECML-PKDD 2023 version v3).

A private teacher is trained first; each customer's student is distilled from it (Eq. 1, 3) on inputs
stamped with that customer's serial number (Eq. 7), while on inputs without the valid serial number
it must behave like random guessing (Eq. 2). The equations are written out in
docs/specification.md, section 2. Two modes:

``paper``
    §2.2 exactly: a second head Gd sits behind a gradient reversal layer (GRL) on the features Ge(x)
    of raw inputs and is trained with cross-entropy on the true labels (Eq. 5, 6); the GRL multiplies
    the gradient flowing into Ge by ``-grl_coefficient`` (the paper does not give the value).
``default`` (this project's)
    Calibration (reports/dsn_research.md) found that the GRL head alone does not make raw accuracy
    drop, and that serial numbers one bit away are the hard part. The default mode trains the student's own
    output towards the uniform distribution (KL(U || P_S), i.e. "random guessing") on raw inputs, on
    random wrong serial numbers and on Hamming-1 and Hamming-2 neighbours of the valid one, and keeps
    the GRL head at a small weight, which lowers what a linear probe recovers from the features of
    raw inputs (a lever against transfer learning). The 2023 version of the paper also trains the
    invalid branch on wrong patterns.

The shipped customer model is Ge + Gy only (no Gd, no serial number inside).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from deepserial import stats
from deepserial.data import TensorData
from deepserial.errors import ConfigError, GeometryError
from deepserial.fingerprint import Fingerprint
from deepserial.identity import derive_rng
from deepserial.nets import SplitNet, check_visible, visible_mask
from deepserial.schemes.base import OwnershipKey, Scheme, Verdict, register_scheme
from deepserial.serial import MAX_AMPLITUDE, SerialGeometry, SerialNumber, stamp, stamp_many
from deepserial.suspect import Suspect
from deepserial.training import Batch, LossOut, TrainConfig, TrainLog, fit, predict_logits

SCHEME = "dsn"


class DSNConfig(BaseModel):
    """Settings of DSN student training (validated; unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["default", "paper"] = "default"
    temperature: float = Field(2.0, gt=0, description="distillation temperature T (Eq. 1, 3)")
    grl_coefficient: float = Field(1.0, ge=0, description="GRL gradient multiplier lambda (§2.2)")
    gd_weight: float = Field(1.0, ge=0, description="weight of the Gd cross-entropy (Eq. 5)")
    uniform_weight: float = Field(1.0, ge=0, description="default mode: weight of KL(U || P_S) on invalid inputs")
    invalid_ratio: float = Field(1.0, gt=0, description="invalid inputs per valid one in a batch (paper: 1)")
    # Share of each kind of invalid input. Near misses get the most: raw inputs and random wrong keys
    # are easy to reject, keys one bit away are not (calibration runs: reports/dsn_research.md).
    mix_raw: float = Field(0.1, ge=0)
    mix_random: float = Field(0.1, ge=0)
    mix_hamming1: float = Field(0.6, ge=0)
    mix_hamming2: float = Field(0.2, ge=0)
    # Calibration levers for large serial numbers (reports/dsn_research.md), off unless set:
    hard_hamming1: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of Hamming-1 inputs drawn in proportion to "
        "each neighbour's recent loss on the uniform target (hard negatives)",
    )
    ring_noise: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability that the 2-pixel band around the serial "
        "number of a training input is replaced with uniform noise",
    )
    # Lock mechanisms (docs/decisions.md, "The DSN lock"), off unless set:
    # (1) cover the key space the model still accepts
    mix_near: float = Field(
        0.0, ge=0, description="share of invalid inputs stamped with keys 3..near_max_distance bits away"
    )
    near_max_distance: int = Field(6, ge=3, description="largest distance of the 'near' keys")
    mix_relaxed: float = Field(
        0.0,
        ge=0,
        description="share of invalid inputs stamped with relaxed (non-binary) patterns near the key: some "
        "pixels moved at least 0.3 towards the flipped value (what a gradient attacker's sigmoid pattern sees)",
    )
    mix_mined: float = Field(
        0.0, ge=0, description="share of invalid inputs stamped with keys mined from what the student still accepts"
    )
    mix_scaled: float = Field(
        0.0,
        ge=0,
        description="share of invalid inputs stamped with the key at another contrast (the levels' midpoint plus "
        "alpha times the key's offset from it, alpha below 0.8 or from 1.3 to 2.5): the ramp from a blank pattern "
        "to the key that a relaxed search climbs",
    )
    mix_searched: float = Field(
        0.0,
        ge=0,
        description="share of invalid inputs stamped with the patterns of persistent relaxed searches run against "
        "the current student (a thief's gradient reverse engineering, continued through training and restarted "
        "from the thief's starts): what the search climbs is trained invalid before it reaches the key",
    )
    search_chains: int = Field(32, ge=1, description="relaxed-search chains kept (mix_searched)")
    search_every: int = Field(4, ge=1, description="training steps between two rounds of the chains' search")
    search_images: int = Field(16, ge=1, description="images each chain's search step is computed on")
    search_age: int = Field(
        300, ge=1, description="search steps after which a chain restarts (the thief's search length)"
    )
    search_restart: float = Field(
        0.2,
        ge=0.01,
        lt=0.5,
        description="a chain restarts once every pixel of its pattern is within this of the key's bit (in "
        "pattern units, 0..1, before the bit levels are applied): the patterns further out are trained "
        "invalid, so a smaller radius narrows the key's basin",
    )
    search_approach: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of chain restarts that start on the way to the key (logits (2*key-1)*u, u uniform in "
        "0..1.2, plus the thief's noise) instead of at the thief's start: a thief's search that reaches the key "
        "climbs a faint slope there for 25-200 steps, which chains from the thief's start rarely visit "
        "(most drift away from the key); research, docs/decisions.md",
    )
    mine_every: int = Field(20, ge=1, description="steps between two mining rounds")
    mine_pool: int = Field(64, ge=1, description="mined keys kept (the most accepted ones)")
    mine_images: int = Field(
        32, ge=1, description="batch images each candidate key is scored on in a mining round (its cost per round)"
    )
    # (2) simulate the thief's fine-tuning on raw inputs and push the fine-tuned model to chance (first-order)
    sim_ft_weight: float = Field(0.0, ge=0, description="weight of the uniform loss after simulated fine-tuning")
    sim_ft_every: int = Field(2, ge=1, description="steps between two simulated fine-tunings")
    sim_ft_steps: int = Field(3, ge=1, description="inner fine-tuning steps")
    sim_ft_lr: float = Field(0.05, gt=0, description="inner fine-tuning learning rate (SGD)")
    # (3) louder key bits: a one-bit flip becomes a large input change (SerialGeometry.amplitude). Alone
    # (docs/decisions.md, item 15) gradient reverse engineering found the exact key at 6; the shipped recipe
    # pairs it with the searched patterns above (items 20-21)
    amplitude: int = Field(
        0,
        ge=0,
        le=MAX_AMPLITUDE,
        description="serial-number bits written as -A/+A instead of 0/1 (0: Eq. 7); research, see decisions",
    )
    invalid_augment: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability that an invalid input's image is first mixed with another image, shifted up to "
        "3 pixels and noised: its target (uniform) needs no label, and a model that memorised 'these training "
        "images with a near-miss key are invalid' otherwise lets the same key unlock new images",
    )
    shared_augment: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability that a training image is shifted up to 2 pixels and noised before it is used, "
        "for the valid input (distilled towards the teacher's output on the shifted image) and the invalid ones "
        "alike, so near misses cannot be memorised per image (research: measured worse on the border bits, "
        "docs/decisions.md, not shipped)",
    )
    center_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the squared standardised advantage of the true class's logit on invalid inputs "
        "(research: it moves the arg-max off the true class and leaves the class readable by a probe, "
        "docs/decisions.md; not shipped)",
    )
    output_adversary: float = Field(
        0.0,
        ge=0,
        description="weight of an adversarial readout of invalid inputs' outputs: a linear probe on their "
        "log-probabilities (standardised over the batch, as a thief would) learns the true class, and the "
        "student, behind a gradient reversal, learns to hide it (research: lowers top-1 of near keys, not what a "
        "per-key probe reads, docs/decisions.md; not shipped)",
    )
    key_decorrelation: float = Field(
        0.0,
        ge=0,
        description="weight of the squared cross-correlation, per Hamming-1 key, between the standardised "
        "log-probabilities of the inputs stamped with that key and their one-hot labels: zero when no linear "
        "probe a thief fits on that key's outputs can read the class (scale-free, unlike the uniform loss, "
        "which shrinks the residual but not its direction; research: measured worse, docs/decisions.md; not shipped)",
    )
    decorrelation_keys: int = Field(
        4, ge=1, description="Hamming-1 keys per batch when key_decorrelation is set (enough rows per key)"
    )
    # (3) dead features: the penultimate activations of invalid inputs pushed to zero
    dead_weight: float = Field(0.0, ge=0, description="weight of the mean penultimate activation of invalid inputs")

    @model_validator(mode="after")
    def _mix(self) -> DSNConfig:
        if self.mode == "default" and self.mix_raw + self.mix_random + self.mix_hamming1 + self.mix_hamming2 <= 0:
            raise ValueError("at least one of mix_raw, mix_random, mix_hamming1, mix_hamming2 must be > 0")
        return self

    @classmethod
    def paper(cls, **kw: float) -> DSNConfig:
        """§2.2 as written: raw inputs only on the invalid side, Gd behind a GRL, no uniform loss."""
        return cls(mode="paper", **kw)

    @classmethod
    def default(cls, **kw: float) -> DSNConfig:
        """The shipped recipe (docs/decisions.md, "The DSN lock against an adaptive thief", item 21): near
        misses at every distance, relaxed patterns, keys mined from what the student still accepts and the
        patterns of a thief's relaxed search continued against the student on the invalid side, key bits
        written at +-6, and the thief's fine-tuning simulated inside distillation."""
        return cls(mode="default", **(RECIPE | kw))

    @classmethod
    def for_mode(cls, mode: str) -> DSNConfig:
        """The recipe a user names (``issue --mode``): ``default`` (:meth:`default`) or ``paper``
        (:meth:`paper`); any other name is a one-line ConfigError."""
        if mode not in ("default", "paper"):
            raise ConfigError(f"unknown DSN mode {mode!r}; use 'default' or 'paper'")
        return cls.default() if mode == "default" else cls.paper()

    @classmethod
    def previous_default(cls, **kw: float) -> DSNConfig:
        """The recipe before the adaptive-thief study (uniform loss on raw, random and Hamming-1/2 keys)."""
        kw = {"grl_coefficient": 1.0, "gd_weight": 0.1, "uniform_weight": 2.0, "invalid_ratio": 2.0} | kw
        return cls(mode="default", **kw)


#: The shipped default recipe's settings (see :meth:`DSNConfig.default`).
RECIPE: dict[str, float] = {
    "grl_coefficient": 1.0,
    "gd_weight": 0.1,
    "uniform_weight": 2.0,
    "invalid_ratio": 2.0,
    "mix_raw": 0.1,
    "mix_random": 0.1,
    "mix_hamming1": 0.3,
    "mix_hamming2": 0.1,
    "mix_near": 0.15,
    "mix_relaxed": 0.15,
    "mix_mined": 0.1,
    "mine_every": 40,
    "mix_searched": 0.15,
    "search_every": 4,
    "search_approach": 0.5,
    "amplitude": 6,
    "sim_ft_weight": 1.0,
}


class _GradReverse(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``-coefficient`` backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coefficient: float) -> torch.Tensor:  # noqa: ANN001
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return -ctx.coefficient * grad, None


def grad_reverse(x: torch.Tensor, coefficient: float) -> torch.Tensor:
    return _GradReverse.apply(x, coefficient)


class DSNTrainNet(nn.Module):
    """The two-branch training network of Fig. 1: Ge shared, Gy (shipped) and Gd (kept, then dropped).

    One ``forward`` returns both heads' logits so the shared training loop can wrap it in DDP.
    """

    def __init__(self, student: SplitNet, grl_coefficient: float, readout: bool = False) -> None:
        super().__init__()
        self.student = student
        self.gd = nn.Linear(student.feature_dim, student.classifier.out_features)
        c = student.classifier.out_features
        # the thief's probe on invalid inputs' outputs (DSNConfig.output_adversary); made after Gd, and only
        # when asked, so the random draws of every other recipe stay as they were
        self.readout = nn.Linear(c, c) if readout else None
        self.grl_coefficient = grl_coefficient

    def forward(self, x: torch.Tensor, n_gd: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of Gy on all of ``x``, of Gd(GRL(Ge)) on its last ``n_gd`` rows, and the features Ge(x)."""
        e = self.student.features(x)
        y = self.student.classifier(e)
        d = self.gd(grad_reverse(e[len(e) - n_gd :], self.grl_coefficient)) if n_gd else y[:0]
        return y, d, e


@dataclass
class WrongKeys:
    """Precomputed invalid serial numbers that training samples from."""

    hamming1: torch.Tensor
    hamming2: torch.Tensor


def _counts(n: int, cfg: DSNConfig) -> dict[str, int]:
    total = int(round(n * cfg.invalid_ratio))
    if cfg.mode == "paper":
        return {"raw": total, "random": 0, "hamming1": 0, "hamming2": 0}
    weights = {
        "raw": cfg.mix_raw,
        "random": cfg.mix_random,
        "hamming1": cfg.mix_hamming1,
        "hamming2": cfg.mix_hamming2,
        "near": cfg.mix_near,
        "relaxed": cfg.mix_relaxed,
        "mined": cfg.mix_mined,
        "scaled": cfg.mix_scaled,
        "searched": cfg.mix_searched,
    }
    weights = {k: w for k, w in weights.items() if w > 0 or k in ("raw", "random", "hamming1", "hamming2")}
    s = sum(weights.values())
    counts = {k: int(math.floor(total * w / s)) for k, w in weights.items()}
    counts[max(weights, key=weights.get)] += total - sum(counts.values())  # type: ignore[arg-type]
    return counts


def make_student_loss(
    serial: SerialNumber,
    teacher_logits: torch.Tensor,
    cfg: DSNConfig,
    num_classes: int,
    also_invalid: torch.Tensor | None = None,
    fingerprint: Fingerprint | None = None,
    teacher: nn.Module | None = None,
):
    """The per-batch DSN loss for the shared training loop.

    Each batch of n images becomes n inputs stamped with the valid serial number (distilled towards
    the teacher's soft labels at temperature T) plus ``invalid_ratio * n`` invalid inputs (raw, and in
    default mode also random wrong and Hamming-1/2 serial numbers) on which Gy is pushed to uniform
    (default mode) and Gd, behind the GRL, learns the true label (both modes). ``also_invalid`` (one
    pattern of the same geometry) takes the place of half of the random wrong keys: the overwriting
    attack's "SN embedding loss with inputs stamped with the original K" (DSN §3.5). ``fingerprint``
    (the licence's tracing fingerprint, :mod:`deepserial.fingerprint`) adds its queries to every batch,
    each raw, stamped with the serial number or stamped with a random pattern, with its codeword
    symbol as the cross-entropy target. ``teacher`` is needed when ``cfg.shared_augment`` is set (the
    soft labels of shifted images are computed on the fly).
    """
    if cfg.shared_augment > 0 and teacher is None:
        raise ValueError("shared_augment needs the teacher: soft labels of shifted images are computed per step")
    geometry = serial.geometry
    valid = serial.as_tensor()
    wrong = WrongKeys(
        serial.hamming_neighbours(1),
        serial.hamming_neighbours(2) if geometry.nbits >= 2 else serial.hamming_neighbours(1),
    )
    T = cfg.temperature
    log_c = math.log(num_classes)

    n_h1 = len(wrong.hamming1)
    hardness = torch.ones(n_h1)  # running mean of each Hamming-1 neighbour's uniform loss (hard negatives)

    def draw_hamming1(k: int) -> torch.Tensor:
        if cfg.key_decorrelation > 0:  # a few keys per batch, each with enough rows for its correlation
            keys = torch.randperm(n_h1)[: cfg.decorrelation_keys]
            return keys[torch.randint(0, len(keys), (k,))]
        n_hard = int(round(k * cfg.hard_hamming1))
        easy = torch.randint(0, n_h1, (k - n_hard,))
        if n_hard == 0:
            return easy
        hard = torch.multinomial(hardness / hardness.sum(), n_hard, replacement=True)
        return torch.cat([easy, hard])

    nbits = geometry.nbits
    flat_valid = valid.flatten()
    state = {"step": 0, "pool": None}  # mined keys: the wrong keys the current student accepts most

    def near_keys(k: int, dev: torch.device) -> torch.Tensor:
        """Keys 3..near_max_distance bits from the valid one (a uniform distance, then random bits)."""
        hi = max(3, min(cfg.near_max_distance, nbits))
        d = torch.randint(min(3, nbits), hi + 1, (k, 1))
        flip = torch.rand(k, nbits).argsort(1) < d
        return torch.where(flip, 1 - flat_valid, flat_valid).view(k, geometry.height, geometry.width).to(dev)

    def relaxed_keys(k: int, dev: torch.device) -> torch.Tensor:
        """Non-binary patterns near the key: a random subset of pixels moved 0.3-1 towards the flipped value."""
        q = torch.rand(k, 1) * 0.5
        moved = torch.rand(k, nbits) < q
        moved[torch.arange(k), torch.randint(0, nbits, (k,))] = True  # at least one pixel leaves the key
        step = (0.3 + 0.7 * torch.rand(k, nbits)) * moved
        rel = flat_valid + (1 - 2 * flat_valid) * step
        return rel.view(k, geometry.height, geometry.width).to(dev)

    def scaled_keys(k: int, dev: torch.device) -> torch.Tensor:
        """The key at another contrast, in bit units around 0.5: three in four below (alpha in [0, 0.8], each
        bit's alpha jittered by a quarter), one in four beyond it (alpha in [1.3, 2.5])."""
        alpha = torch.rand(k, 1) * 0.8
        alpha = (alpha * (1 + 0.25 * torch.randn(k, nbits))).clamp(0, 0.8)
        beyond = torch.rand(k) < 0.25
        alpha[beyond] = 1.3 + 1.2 * torch.rand(int(beyond.sum()), 1)
        rel = 0.5 + alpha * (flat_valid - 0.5)
        return rel.view(k, geometry.height, geometry.width).to(dev)

    chains: dict[str, torch.Tensor] = {}
    toward_key = 2 * valid.float().cpu() - 1  # the key's side of each chain logit (search_approach)

    def restart_chains(rows: torch.Tensor) -> None:
        """The thief's start (:func:`deepserial.attacks.serial_search.reverse_engineer`): sigmoid of N(0, 0.25);
        for a ``search_approach`` share of the chains, shifted towards the key by a random fraction."""
        k = int(rows.sum())
        theta = torch.randn(k, geometry.height, geometry.width) * 0.5
        if cfg.search_approach > 0:
            on_way = torch.rand(k) < cfg.search_approach
            theta[on_way] += toward_key * torch.rand(int(on_way.sum()), 1, 1) * 1.2
        chains["theta"][rows] = theta
        chains["m"][rows] = 0
        chains["v"][rows] = 0
        chains["age"][rows] = 0
        chains["t"][rows] = 0

    def search_round(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
        """One Adam step (lr 0.1, the thief's) of every chain's relaxed search on the current student, each
        chain on its own images; a chain that got within ``search_restart`` of the key (where the valid input lives) or
        ran the thief's whole search restarts. Returns the samples it forwarded."""
        c = cfg.search_chains
        if not chains:
            chains.update(
                theta=torch.zeros(c, geometry.height, geometry.width),
                m=torch.zeros(c, geometry.height, geometry.width),
                v=torch.zeros(c, geometry.height, geometry.width),
                age=torch.zeros(c, dtype=torch.long),
                t=torch.zeros(c),
            )
            restart_chains(torch.ones(c, dtype=torch.bool))
            chains["age"] = torch.randint(0, cfg.search_age, (c,))  # staggered, so every search stage is seen
        was = student.training
        student.eval()
        dev = x.device
        m_img = min(cfg.search_images, len(x))
        idx = torch.randint(0, len(x), (c, m_img), device=dev)
        theta = chains["theta"].detach().clone().to(dev).requires_grad_(True)
        xs = x[idx.flatten()]
        pats = torch.sigmoid(theta).repeat_interleave(m_img, 0)
        out = student(stamp(xs, geometry, pats))
        loss = F.cross_entropy(out, y[idx.flatten()], reduction="sum") / m_img  # each chain's mean, summed
        (g,) = torch.autograd.grad(loss, theta)
        g = g.detach().cpu()
        student.train(was)
        b1, b2 = 0.9, 0.999
        chains["t"] += 1
        chains["m"] = b1 * chains["m"] + (1 - b1) * g
        chains["v"] = b2 * chains["v"] + (1 - b2) * g * g
        t = chains["t"].view(c, 1, 1)
        step = (chains["m"] / (1 - b1**t)) / ((chains["v"] / (1 - b2**t)).sqrt() + 1e-8)
        chains["theta"] = chains["theta"] - 0.1 * step
        chains["age"] += 1
        near = (torch.sigmoid(chains["theta"]) - valid).abs().flatten(1).amax(1) < cfg.search_restart
        old = chains["age"] >= cfg.search_age
        if bool((near | old).any()):
            restart_chains(near | old)
        return c * m_img

    @torch.no_grad()
    def mine(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
        """Keep the wrong keys (all Hamming-1, sampled Hamming-2..4, the last pool) the student accepts
        most; returns how many samples it forwarded."""
        was = student.training
        student.eval()
        dev = x.device
        cands = [wrong.hamming1, wrong.hamming2[torch.randint(0, len(wrong.hamming2), (128,))], near_keys(192, "cpu")]
        if state["pool"] is not None:
            cands.append(state["pool"])
        keys = torch.cat(cands).to(dev)
        xs, ys = x[: cfg.mine_images], y[: cfg.mine_images]
        pred = student(stamp_many(xs, geometry, keys)).argmax(1).view(len(keys), len(xs))
        acc = (pred == ys.unsqueeze(0)).float().mean(1)
        top = acc.argsort(descending=True)[: cfg.mine_pool]
        state["pool"] = keys[top].cpu()
        student.train(was)
        return len(keys) * len(xs)

    def simulated_finetune(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Uniform loss of the student after a few SGD steps of a thief's fine-tuning on raw inputs.

        First-order (as first-order MAML): the inner steps are taken on detached copies, and the outer
        gradient at the fine-tuned weights is applied to the student's own (SOPHON, Deng et al. 2024,
        simulates fine-tuning the same way with several inner steps).
        """
        params = dict(student.named_parameters())
        fast = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        half = len(x) // 2
        for _ in range(cfg.sim_ft_steps):
            out = torch.func.functional_call(student, fast, (x[:half],))
            grads = torch.autograd.grad(F.cross_entropy(out, y[:half]), list(fast.values()))
            fast = {
                k: (v - cfg.sim_ft_lr * g).detach().requires_grad_(True)
                for (k, v), g in zip(fast.items(), grads, strict=True)
            }
        adapted = {k: params[k] + (fast[k] - params[k]).detach() for k in params}
        out = torch.func.functional_call(student, adapted, (x[half:],))
        return (-F.log_softmax(out, 1).mean(1) - log_c).mean()

    def fingerprint_after_finetune(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fingerprint cross-entropy of the student after a few SGD steps of a licensee-thief's
        fine-tuning on inputs stamped with the serial number (first-order, as :func:`simulated_finetune`):
        the fingerprint should outlast the fine-tuning a thief who holds the key can afford."""
        fp = fingerprint
        params = dict(student.named_parameters())
        fast = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        xs = stamp(x, geometry, valid.to(x.device))
        for _ in range(fp.ft_steps):
            out = torch.func.functional_call(student, fast, (xs,))
            grads = torch.autograd.grad(F.cross_entropy(out, y), list(fast.values()))
            fast = {
                k: (v - fp.ft_lr * g).detach().requires_grad_(True)
                for (k, v), g in zip(fast.items(), grads, strict=True)
            }
        adapted = {k: params[k] + (fast[k] - params[k]).detach() for k in params}
        fp_x, fp_y = fingerprint_inputs(fp, serial, x.device, len(x))
        out = torch.func.functional_call(student, adapted, (fp_x,))
        return F.cross_entropy(out, fp_y)

    def augment(xi: torch.Tensor) -> torch.Tensor:
        """Images for invalid inputs: mixed with another image, shifted and noised (before the stamp)."""
        k = len(xi)
        if k == 0 or cfg.invalid_augment <= 0:
            return xi
        lam = torch.rand(k, 1, 1, 1, device=xi.device)
        mixed = lam * xi + (1 - lam) * xi[torch.randperm(k, device=xi.device)]
        dy, dx = (int(v) for v in torch.randint(-3, 4, (2,)))
        mixed = torch.roll(mixed, shifts=(dy, dx), dims=(2, 3))
        mixed = (mixed + 0.1 * torch.rand(k, 1, 1, 1, device=xi.device) * torch.randn_like(mixed)).clamp(0, 1)
        use = torch.rand(k, 1, 1, 1, device=xi.device) < cfg.invalid_augment
        return torch.where(use, mixed, xi)

    def shared(x: torch.Tensor, zt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Shift (up to 2 pixels) and noise a random share of the batch; the teacher labels the new images."""
        use = torch.rand(len(x), device=x.device) < cfg.shared_augment
        k = int(use.sum())
        if k == 0:
            return x, zt, 0
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,)))
        xa = torch.roll(x[use], shifts=(dy, dx), dims=(2, 3))
        xa = (xa + 0.05 * torch.randn_like(xa)).clamp(0, 1)
        x, zt = x.clone(), zt.clone()
        x[use] = xa
        with torch.no_grad():
            zt[use] = teacher.to(x.device).eval()(xa).to(zt.dtype)
        return x, zt, k

    def loss_fn(net: nn.Module, batch: Batch) -> LossOut:
        x, y = batch.x, batch.y
        n = len(x)
        dev = x.device
        zt = teacher_logits[batch.idx].to(dev)
        n_shared = 0
        if cfg.shared_augment > 0:
            x, zt, n_shared = shared(x, zt)
        train_net = net.module if hasattr(net, "module") else net
        mined = 0  # samples the mining round forwards (counted in the training cost)
        if cfg.mix_mined > 0 and state["step"] % cfg.mine_every == 0:
            mined = mine(train_net.student, x, y)
        if cfg.mix_searched > 0 and (not chains or state["step"] % cfg.search_every == 0):
            mined += search_round(train_net.student, x, y)  # forwards, as the simulated fine-tuning counts
        state["step"] += 1
        counts = _counts(n, cfg)
        parts = [stamp(x, geometry, valid)]
        labels = []
        h1_rows = h1_idx = None
        pick = torch.randint(0, n, (sum(counts.values()),), device=dev)
        off = 0
        for kind, k in counts.items():
            if k == 0:
                continue
            xi = augment(x[pick[off : off + k]])
            if kind == "raw":
                parts.append(xi)
            else:
                if kind == "random":
                    bits = torch.randint(0, 2, (k, geometry.height, geometry.width), device=dev).float()
                    same = (bits == valid.to(dev)).flatten(1).all(1)
                    bits[same] = wrong.hamming1[0].to(dev)  # a random pattern equal to the key is replaced
                    if also_invalid is not None:
                        bits[: (k + 1) // 2] = also_invalid.to(dev)
                elif kind == "hamming1":
                    h1_idx = draw_hamming1(k)
                    h1_rows = n + off
                    bits = wrong.hamming1[h1_idx].to(dev)
                elif kind == "near":
                    bits = near_keys(k, dev)
                elif kind == "relaxed":
                    bits = relaxed_keys(k, dev)
                elif kind == "scaled":
                    bits = scaled_keys(k, dev)
                elif kind == "searched":
                    rows = torch.randint(0, len(chains["theta"]), (k,))
                    bits = torch.sigmoid(chains["theta"][rows]).detach().to(dev)
                elif kind == "mined":
                    pool = state["pool"] if state["pool"] is not None else wrong.hamming1
                    bits = pool[torch.randint(0, len(pool), (k,))].to(dev)
                else:
                    bits = wrong.hamming2[torch.randint(0, len(wrong.hamming2), (k,))].to(dev)
                parts.append(stamp(xi, geometry, bits))
            labels.append(y[pick[off : off + k]])
            off += k
        inputs = torch.cat(parts)
        if cfg.ring_noise > 0:
            ring = ring_mask(geometry, inputs.shape[2], inputs.shape[3]).to(dev)
            noisy = (torch.rand(len(inputs), 1, 1, 1, device=dev) < cfg.ring_noise) & ring
            inputs = torch.where(noisy, torch.rand_like(inputs), inputs)
        n_inv = len(inputs) - n
        n_fp = 0
        if fingerprint is not None:
            fp_x, fp_y = fingerprint_inputs(fingerprint, serial, dev, n)
            n_fp = len(fp_x)
            inputs = torch.cat([inputs, fp_x])
        # Gd sees the invalid rows (the fingerprint rows after them ride along and are not scored)
        logits_y, logits_d, feats = net(inputs, n_gd=n_inv + n_fp if cfg.gd_weight > 0 and n_inv else 0)
        logits_d = logits_d[:n_inv]
        distill = (
            F.kl_div(
                F.log_softmax(logits_y[:n] / T, 1), F.log_softmax(zt / T, 1), log_target=True, reduction="batchmean"
            )
            * T
            * T
        )
        loss = distill
        metrics = {"distill": float(distill.detach())}
        if n_inv and cfg.mode == "default" and cfg.uniform_weight > 0:
            per_sample = -F.log_softmax(logits_y[n : n + n_inv], 1).mean(1) - log_c
            uniform = per_sample.mean()
            if h1_idx is not None and cfg.hard_hamming1 > 0:
                seen = per_sample[h1_rows - n : h1_rows - n + len(h1_idx)].detach().float().cpu()
                total = torch.zeros(n_h1).index_add_(0, h1_idx, seen)
                count = torch.zeros(n_h1).index_add_(0, h1_idx, torch.ones(len(h1_idx)))
                hit = count > 0
                hardness[hit] = 0.9 * hardness[hit] + 0.1 * (total[hit] / count[hit] + 1e-3)
            loss = loss + cfg.uniform_weight * uniform
            metrics["uniform"] = float(uniform.detach())
        if n_inv and cfg.center_weight > 0:
            z = logits_y[n : n + n_inv].float()
            true = z.gather(1, torch.cat(labels).unsqueeze(1)).squeeze(1)
            advantage = (true - z.mean(1)) / (z.std(1) + 1e-3)
            center = advantage.pow(2).mean()
            loss = loss + cfg.center_weight * center
            metrics["center"] = float(center.detach())
        if n_inv > 1 and cfg.output_adversary > 0 and getattr(train_net, "readout", None) is not None:
            lp = F.log_softmax(logits_y[n : n + n_inv].float(), 1)
            zs = (lp - lp.mean(0)) / (lp.std(0) + 1e-6)
            read = train_net.readout(grad_reverse(zs, 1.0))
            adv = F.cross_entropy(read, torch.cat(labels))
            loss = loss + cfg.output_adversary * adv
            metrics["readout_ce"] = float(adv.detach())
        if h1_idx is not None and cfg.key_decorrelation > 0:
            rows = slice(h1_rows, h1_rows + len(h1_idx))
            decor = key_cross_correlation(logits_y[rows], torch.cat(labels)[rows.start - n : rows.stop - n], h1_idx)
            loss = loss + cfg.key_decorrelation * decor
            metrics["key_correlation"] = float(decor.detach())
        if n_inv and cfg.gd_weight > 0:
            gd = F.cross_entropy(logits_d, torch.cat(labels))
            loss = loss + cfg.gd_weight * gd
            metrics["gd_ce"] = float(gd.detach())
        if n_inv and cfg.dead_weight > 0:
            dead = feats[n : n + n_inv].mean()
            loss = loss + cfg.dead_weight * dead
            metrics["dead"] = float(dead.detach())
        if n_fp:
            fp_ce = F.cross_entropy(logits_y[n + n_inv :], fp_y)
            loss = loss + fingerprint.weight * fp_ce
            metrics["fingerprint_ce"] = float(fp_ce.detach())
        forwarded = len(inputs) + mined + n_shared
        if n_fp and fingerprint.ft_steps and state["step"] % fingerprint.ft_every == 0:
            fp_ft = fingerprint_after_finetune(train_net.student, x, y)
            loss = loss + fingerprint.weight * fp_ft
            metrics["fingerprint_ce_after_ft"] = float(fp_ft.detach())
            forwarded += fingerprint.ft_steps * n + n_fp
        if cfg.sim_ft_weight > 0 and state["step"] % cfg.sim_ft_every == 0:
            sim = simulated_finetune(train_net.student, x, y)
            loss = loss + cfg.sim_ft_weight * sim
            metrics["sim_ft_uniform"] = float(sim.detach())
            forwarded += cfg.sim_ft_steps * (n // 2) + (n - n // 2)  # the inner steps and the outer forward
        metrics["valid_acc"] = 100.0 * float((logits_y[:n].argmax(1) == y).float().mean())
        return LossOut(loss, forwarded, metrics)

    return loss_fn


def key_cross_correlation(logits: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Mean over the keys in ``keys`` of the summed squared correlations between each output's
    log-probability and each class indicator, over the rows stamped with that key.

    Zero means every class has the same mean output under that key, so a linear probe on the
    standardised log-probabilities (what :func:`deepserial.attacks.keyspace.output_readout` fits) reads
    nothing; a flat output whose small residual still points at the class scores as high as a confident
    one.
    """
    c = logits.shape[1]
    total, count = logits.new_zeros(()), 0
    for key in keys.unique():
        rows = keys.to(logits.device) == key
        if int(rows.sum()) < 3:
            continue
        z = F.log_softmax(logits[rows].float(), 1)
        z = (z - z.mean(0)) / (z.std(0) + 1e-6)
        y = F.one_hot(labels[rows], c).float()
        y = (y - y.mean(0)) / (y.std(0) + 1e-6)
        total = total + ((z.T @ y) / (len(z) - 1)).pow(2).sum() / c
        count += 1
    return total / max(count, 1)


def fingerprint_inputs(
    fingerprint: Fingerprint, serial: SerialNumber, device: torch.device | str, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fingerprint's queries as one training step sees them, with their codeword symbols: at most
    ``batch`` of them (all when the batch is at least as large as the query set, so small batches are
    not swamped), each at random raw (a third), or stamped: with a random pattern of its geometry (a
    share ``fingerprint.random_stamps`` of the stamped ones) or with ``serial`` (whatever a server does
    with the stamp, the answer must stay the codeword's)."""
    m = len(fingerprint.queries)
    pick = torch.randperm(m)[:batch] if batch < m else torch.arange(m)
    q = fingerprint.queries[pick].to(device)
    g = serial.geometry
    k = len(q)
    patterns = torch.randint(0, 2, (k, g.height, g.width), device=device).float()
    patterns[torch.rand(k, device=device) < 1 - fingerprint.random_stamps] = serial.as_tensor().to(device)
    stamped = stamp(q, g, patterns)
    x = torch.where((torch.rand(k, 1, 1, 1, device=device) < 1 / 3), q, stamped)
    return x, fingerprint.codeword[pick].to(device)


def ring_mask(geometry: SerialGeometry, height: int, width: int, band: int = 2) -> torch.Tensor:
    """Boolean (H, W) mask of the ``band``-pixel frame around the serial number (clipped to the image):
    the pixels a convolution sees together with the pattern's border bits."""
    m = torch.zeros(height, width, dtype=torch.bool)
    t, left = geometry.top, geometry.left
    band *= geometry.scale  # the frame grows with the pattern (a convolution sees more pixels per bit)
    m[max(0, t - band) : t + geometry.pixel_height + band, max(0, left - band) : left + geometry.pixel_width + band] = (
        True
    )
    m[geometry.region()] = False
    return m


def train_student(
    student: SplitNet,
    teacher: nn.Module,
    data: TensorData,
    serial: SerialNumber,
    dsn: DSNConfig,
    train: TrainConfig,
    fingerprint: Fingerprint | None = None,
) -> TrainLog:
    """Distil ``teacher`` into ``student`` with ``serial`` embedded (and ``fingerprint``, when given, for
    tracing; in place); returns the log.

    The geometry is first checked against the student as built: every serial-number pixel must
    reach the output (see :func:`deepserial.nets.check_visible`).
    """
    input_shape = tuple(data.x.shape[1:])
    check_visible(student, serial.geometry, input_shape)
    teacher_logits = predict_logits(teacher, data.x)
    net = DSNTrainNet(student, dsn.grl_coefficient, readout=dsn.output_adversary > 0)
    loss_fn = make_student_loss(
        serial, teacher_logits, dsn, student.classifier.out_features, fingerprint=fingerprint, teacher=teacher
    )
    return fit(net, data, loss_fn, train, desc="student")


def default_geometry(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    height: int,
    width: int,
    margin: int = 0,
    scale: int = 1,
    amplitude: int = 0,
) -> SerialGeometry:
    """A pattern in the bottom-right corner of what the network can see, ``margin`` pixels inside.

    The corner disturbs the task least (DSN §2.2: "less important position such as corners"), and
    the visible field, not the raw image size, is what decides which corner is real. ``scale``:
    pixels per bit side (:func:`deepserial.serial.scale_for`); ``amplitude``: how loudly the bits are
    written (:class:`~deepserial.serial.SerialGeometry`).
    """
    mask = visible_mask(model, input_shape)
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    top = int(rows.max()) - margin - height * scale + 1
    left = int(cols.max()) - margin - width * scale + 1
    if top < int(rows.min()) or left < int(cols.min()):
        raise GeometryError(
            f"a {height}x{width} serial number (x{scale} pixels per bit) does not fit the "
            "network's visible field; choose a smaller size"
        )
    g = SerialGeometry(height, width, top, left, scale=scale, amplitude=amplitude)
    check_visible(model, g, input_shape)
    return g


# ----- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def key_accuracies(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    geometry: SerialGeometry,
    keys: torch.Tensor,
    chunk_samples: int = 8192,
) -> np.ndarray:
    """Accuracy (%) of ``model`` on (x, y) stamped with each of the K keys (K, h, w): shape (K,)."""
    device = next(model.parameters()).device
    model.eval()
    xd, yd = x.to(device), y.to(device)
    n = len(x)
    per = max(1, chunk_samples // n)
    accs = []
    for i in range(0, len(keys), per):
        kb = keys[i : i + per].to(device)
        pred = model(stamp_many(xd, geometry, kb)).argmax(1).view(len(kb), n)
        accs.append((pred == yd.unsqueeze(0)).float().mean(1).mul(100).cpu())
    return torch.cat(accs).numpy() if accs else np.zeros(0)


def linear_probe(model: SplitNet, train: TensorData, test: TensorData, seed: int = 0) -> float:
    """Accuracy (%) of a logistic regression trained on the model's features Ge(x) of raw inputs.

    A transfer-learning attacker keeps Ge and fits a new head on data without the serial number; this
    measures how much task information Ge still hands out to such an attacker.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    with torch.no_grad():
        ftr = torch.cat([model.features(train.x[i : i + 2048]) for i in range(0, len(train), 2048)]).numpy()
        fte = torch.cat([model.features(test.x[i : i + 2048]) for i in range(0, len(test), 2048)]).numpy()
    scaler = StandardScaler().fit(ftr)
    clf = LogisticRegression(max_iter=300, random_state=seed)
    clf.fit(scaler.transform(ftr), train.y.numpy())
    return 100.0 * float(clf.score(scaler.transform(fte), test.y.numpy()))


def evaluate(
    student: SplitNet,
    serial: SerialNumber,
    test: TensorData,
    probe_train: TensorData,
    *,
    teacher: nn.Module | None = None,
    n_wrong: int = 1000,
    wrong_eval_samples: int | None = None,
    seed: int = 0,
) -> dict:
    """Every figure DSN users care about, as a flat dict (the fields of ``dsn_report.json``).

    Valid, raw, Hamming-1 and probe accuracies use the whole test set; random wrong keys (at least
    1,000, or all of them when fewer exist) and Hamming-2 neighbours (630 for 36 bits) use
    ``wrong_eval_samples`` test images each when given.
    """
    t0 = time.perf_counter()
    g = serial.geometry
    x, y = test.x, test.y
    rng = np.random.default_rng(seed)
    out: dict = {}
    if teacher is not None:
        out["teacher_acc"] = _acc(teacher, x, y)
    out["valid_sn_acc"] = float(key_accuracies(student, x, y, g, serial.as_tensor()[None])[0])
    out["raw_acc"] = _acc(student, x, y)
    wrong = serial.random_wrong(n_wrong, rng)
    if wrong_eval_samples is not None and wrong_eval_samples < len(x):
        sel = torch.from_numpy(rng.choice(len(x), wrong_eval_samples, replace=False))
        xw, yw = x[sel], y[sel]
    else:
        xw, yw = x, y
    acc_w = key_accuracies(student, xw, yw, g, wrong)
    out |= {
        "wrong_sn_mean": float(acc_w.mean()),
        "wrong_sn_max": float(acc_w.max()),
        "wrong_sn_count": len(wrong),
        "wrong_sn_eval_samples": len(xw),
        "hamming2_eval_samples": len(xw),
    }
    for d in (1, 2):  # Hamming-1 on every test image (the figure that matters most); Hamming-2 like random keys
        nb = serial.hamming_neighbours(d)
        acc = key_accuracies(student, x, y, g, nb) if d == 1 else key_accuracies(student, xw, yw, g, nb)
        out |= {
            f"hamming{d}_mean": float(acc.mean()),
            f"hamming{d}_max": float(acc.max()),
            f"hamming{d}_count": len(nb),
        }
        if d == 1:  # which bit flips still unlock the model: the per-bit view that calibration needs
            out["hamming1_each"] = [round(float(a), 2) for a in acc]
    out["probe_acc"] = linear_probe(student, probe_train, test, seed)
    out["eval_wall_s"] = time.perf_counter() - t0
    return out


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((predict_logits(model, x).argmax(1) == y).float().mean())


# ----- the Scheme interface ------------------------------------------------------------------------
@register_scheme
class DSNScheme(Scheme):
    """DSN behind the common :class:`~deepserial.schemes.base.Scheme` interface (tracing, comparisons).

    The ownership key is the serial number's signature and geometry plus ``verify_samples`` labelled
    images of the owner's. :meth:`embed` distils ``teacher`` into the model (DSN has no from-scratch
    embedding). :meth:`verify` asks whether this key unlocks the suspect: each verification image is
    queried once stamped with the key and once with a fresh random wrong key. Under the null "the key
    is just another wrong key to this suspect" the two answers of an image are exchangeable, so the
    number of images right with the key and wrong with the control (b), among the discordant pairs
    (b + c), is Binomial(b + c, 1/2): McNemar's exact test. A plain (unprotected) model is right with
    both, a locked model with neither, so neither is declared unlocked.
    """

    name = SCHEME
    citation = "Tang, Du, Hu. Deep Serial Number. arXiv:2011.08960"
    Config = DSNConfig

    def __init__(
        self,
        config: DSNConfig | dict | None = None,
        teacher: nn.Module | None = None,
        size: tuple[int, int] = (6, 6),
        verify_samples: int = 100,
    ) -> None:
        # no settings: the shipped recipe, as `deepserial issue` trains it (not the options' bare defaults,
        # which would write the key at other levels than the customer models of that recipe read)
        super().__init__(DSNConfig.default() if config is None else config)
        self.teacher, self.size, self.verify_samples = teacher, size, verify_samples

    def make_key(
        self, signature: bytes, data: TensorData, num_classes: int, model: SplitNet | None = None
    ) -> OwnershipKey:
        shape = tuple(data.x.shape[1:])
        if model is None:
            raise ConfigError("DSN needs the student network to place the serial number in its visible field")
        margin = 3 if self.size[0] * self.size[1] <= 9 else 0
        geometry = default_geometry(model, shape, self.size[0], self.size[1], margin, amplitude=self.config.amplitude)
        rng = derive_rng(signature, "dsn/verification-samples")
        sel = torch.from_numpy(rng.choice(len(data), min(self.verify_samples, len(data)), replace=False))
        return OwnershipKey(
            self.name,
            {"geometry": geometry.to_dict(), "signature": signature.hex()},
            {"x": data.x[sel].clone(), "y": data.y[sel].clone()},
        )

    def serial(self, key: OwnershipKey) -> SerialNumber:
        self.check_key(key)
        try:
            return SerialNumber.from_signature(
                bytes.fromhex(key.meta["signature"]), SerialGeometry.from_dict(key.meta["geometry"])
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ConfigError(
                f"DSN ownership key is malformed ({type(e).__name__}: {e}); make it with DSNScheme.make_key"
            ) from None

    def embed(self, model: SplitNet, data: TensorData, key: OwnershipKey, train: TrainConfig) -> TrainLog:
        if self.teacher is None:
            raise ConfigError(
                "DSN embeds by distillation from a teacher: use `deepserial issue` (or DSNScheme(teacher=...))"
            )
        return train_student(model, self.teacher, data, self.serial(key), self.config, train)  # type: ignore[arg-type]

    def verify(self, suspect: Suspect, key: OwnershipKey, fpr: float = 1e-3, seed: int = 0) -> Verdict:
        stats.check_fpr(fpr)
        serial = self.serial(key)
        x, y = key.tensor("x"), key.tensor("y")
        if len(x) == 0:
            raise ConfigError("DSN ownership key holds no verification images")
        start = suspect.queries
        wrong = serial.random_wrong(len(x), np.random.default_rng(seed)) if len(x) else serial.as_tensor()[:0]
        if len(wrong) < len(x):  # tiny serial numbers: fewer wrong patterns than images, reuse them
            wrong = wrong[torch.arange(len(x)) % len(wrong)]
        with_key = suspect.predict(stamp(x, serial.geometry, serial.as_tensor())) == y
        control = suspect.predict(stamp(x, serial.geometry, wrong)) == y
        b = int((with_key & ~control).sum())
        c = int((~with_key & control).sum())
        p = stats.binom_tail(b, b + c, 0.5)
        thr = stats.binom_threshold(b + c, 0.5, fpr) if b + c else 1
        return Verdict(
            self.name,
            float(b),
            "right with key, wrong with a random key (of b + c discordant)",
            float(thr),
            p,
            fpr,
            bool(p <= fpr),
            suspect.queries - start,
            {
                "b": b,
                "c": c,
                "acc_key": 100.0 * float(with_key.float().mean()),
                "acc_random_key": 100.0 * float(control.float().mean()),
                "images": len(x),
            },
        )
