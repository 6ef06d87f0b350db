"""What every attack shares: the attacker's budget, the log of what an attack spent, the registry.

An attack takes a model (it never changes it: the attacked model is a copy), the attacker's data and
an explicit :class:`AttackBudget`, and returns the attacked model with an :class:`AttackLog` (epochs,
samples through a forward pass, queries to the victim, wall time, per-epoch curve). The papers state
budgets as a fraction of the victim's training data (DSN §3.5: 10-40%); :func:`attacker_share`
draws that many samples from the attacker's split, which the data splits reserve for exactly this.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.registry import Registry
from deepserial.training import EpochCallback, TrainConfig, TrainLog


class AttackBudget(BaseModel):
    """What the attacker may spend. ``lr`` None means the attack's own default (the victim's last
    learning rate where the paper says so); ``queries`` bounds queries to the victim (extraction)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(10, ge=0, description="training epochs on the attacker's data")
    lr: float | None = Field(None, gt=0, description="learning rate (None: the attack's default)")
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (ignored by Adam)")
    queries: int | None = Field(None, ge=1, description="most queries to the victim (model extraction)")
    seed: int = 0
    device: str | None = None
    progress: bool = False

    @classmethod
    def parse(cls, **kw: Any) -> AttackBudget:
        """A validated budget; a one-line ConfigError naming the bad field otherwise."""
        try:
            return cls(**kw)
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"attack budget: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None

    def train_config(self, default_lr: float = 1e-3, constant_lr: bool = True) -> TrainConfig:
        """The shared loop's settings for this budget (a constant rate unless ``constant_lr`` is False)."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr or default_lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            plateau_patience=self.epochs + 1 if constant_lr else 2,
            seed=self.seed,
            device=self.device,
            progress=self.progress,
        )


@dataclass
class AttackLog:
    """What an attack did and spent."""

    attack: str
    budget: dict[str, Any]
    samples: int  # attacker samples it trained on (or queried with)
    epochs: int = 0
    forward_samples: int = 0
    queries: int = 0  # queries to the victim
    wall_s: float = 0.0
    curve: list[dict[str, float]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    key: Any = None  # an ownership key the attack embedded (overwriting), to verify it afterwards; not in to_dict

    def add_training(self, log: TrainLog) -> None:
        """Account for a run of the shared training loop."""
        self.epochs += len(log.epochs)
        self.forward_samples += log.forward_samples
        self.curve += log.epochs

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "budget": self.budget,
            "samples": self.samples,
            "epochs": self.epochs,
            "forward_samples": self.forward_samples,
            "queries": self.queries,
            "wall_s": self.wall_s,
            "curve": self.curve,
            "details": self.details,
        }


def attacker_share(attacker: TensorData, fraction: float, total: int, seed: int = 0) -> TensorData:
    """``round(fraction * total)`` samples of the attacker's split, stratification kept by a seeded draw.

    ``total`` is the size of the victim's whole training set (owner + attacker parts), so a fraction
    reads as the papers' "the attacker holds 10% of the training data".
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"attacker data fraction must lie in (0, 1], got {fraction}")
    n = int(round(fraction * total))
    if n < 1:
        raise ConfigError(f"a fraction {fraction} of {total} training samples is no sample at all")
    if n > len(attacker):
        raise ConfigError(
            f"the attacker's split holds {len(attacker)} samples, {n} asked ({fraction:.0%} of "
            f"{total}); the splits reserve {len(attacker) / total:.0%} of the data for the attacker"
        )
    order = np.random.default_rng(seed).permutation(len(attacker))[:n]
    return attacker.subset(torch.from_numpy(np.sort(order)))


class Attack(ABC):
    """One attack of the papers. Subclasses cite their paper and declare their options as ``Config``."""

    name: ClassVar[str]
    citation: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel | dict[str, Any] | None = None) -> None:
        if isinstance(config, BaseModel):
            config = config.model_dump()
        try:
            self.config = self.Config(**(config or {}))
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"{self.name}: {'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}") from None
        except TypeError as e:
            raise ConfigError(f"{self.name}: {e}") from None

    def run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget | None = None,
        *,
        on_epoch_end: EpochCallback | None = None,
    ) -> tuple[SplitNet, AttackLog]:
        """Attack a copy of ``model`` with ``data`` within ``budget``; ``model`` is left untouched."""
        budget = budget or AttackBudget()
        victim = copy.deepcopy(model)
        log = AttackLog(self.name, budget.model_dump() | {"config": self.config.model_dump()}, samples=len(data))
        t0 = time.perf_counter()
        attacked = self._run(victim, data, budget, log, on_epoch_end)
        log.wall_s = time.perf_counter() - t0
        attacked.eval()
        return attacked, log

    @abstractmethod
    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        """Attack ``model`` (already a private copy) in place or return a new one."""


ATTACKS: Registry[type[Attack]] = Registry("attack", populate="deepserial.attacks")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an attack available by name (CLI, reproduce), described by its paper."""
    return ATTACKS.register(cls.name, cls, doc=cls.citation)


def get_attack(name: str, config: dict[str, Any] | None = None) -> Attack:
    """An attack instance by name, with validated options."""
    return ATTACKS.get(name)(config)


def resulting_arch(victim_arch: str, log: dict[str, Any]) -> str:
    """The registered network of the model an attack returned, from its log (``AttackLog.to_dict()``):
    a retraining attack's student names its own (``details["student_arch"]``; None: the victim's,
    re-initialised), and in a combined attack each step starts from the previous step's model, so the
    last step that named a student decides. A file of the attacked model must carry this ``arch`` to load."""
    arch = victim_arch
    steps = log.get("details", {}).get("steps")
    for step in steps if steps is not None else [log]:
        arch = step.get("details", {}).get("student_arch") or arch
    return arch
