"""Suspects: the models under verification, reached through one small interface.

A black-box verification only ever calls :meth:`Suspect.predict` (labels for a batch of inputs); a
white-box one (Uchida's weights, DeepSigns' hidden activations) also asks for :attr:`Suspect.module`,
which remote suspects do not have. Every suspect counts the queries it answered and enforces an
optional query budget, so a verdict can report what it cost.

This module holds the local implementation (:class:`ModuleSuspect`); ONNX and HTTP suspects implement
the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from deepserial.errors import ConfigError, InputError
from deepserial.training import model_device


class QueryBudgetError(InputError):
    """The verification needed more queries than the suspect's budget allows."""


class Suspect(ABC):
    """Anything that returns labels for inputs."""

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None and budget < 1:
            raise ConfigError(f"query budget must be >= 1, got {budget}")
        self.budget = budget
        self.queries = 0

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input."""

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Number of labels the suspect can answer (C, or C+1 for a new-label model)."""

    @abstractmethod
    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (N,) int64 for a batch (N, C, H, W)."""

    @property
    def module(self) -> nn.Module | None:
        """The network itself when the suspect is white-box, else None."""
        return None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels of ``x``, counting ``len(x)`` queries against the budget (refused before any is spent
        when the batch would exceed it)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise InputError(f"suspect expects inputs of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")
        self.charge(len(x))
        return self._labels(x).to(torch.long).cpu()

    def reserve(self, n: int, lower: str = "the verification's query count") -> None:
        """Refuse, before any query is spent, a verification that may need ``n`` more queries than the
        budget leaves (``lower`` names the setting that reduces them)."""
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetError(f"query budget exhausted: {self.queries} used, {n} more needed, budget "
                                   f"{self.budget}; raise the budget or lower {lower}")

    def charge(self, n: int) -> None:
        """Count ``n`` queries against the budget: label queries, and the forwards of white-box schemes
        that read activations, so that every verdict's query count means the same."""
        self.reserve(n)
        self.queries += n

    def require_module(self, scheme: str) -> nn.Module:
        """The white-box network, or a clear error for black-box suspects."""
        m = self.module
        if m is None:
            raise InputError(f"scheme {scheme!r} verifies white-box (weights or activations); this suspect "
                             "answers labels only. Use a black-box scheme or a local model file.")
        return m


class ModuleSuspect(Suspect):
    """A local PyTorch model as a suspect (white-box: :attr:`module` is available)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], num_outputs: int | None = None,
                 budget: int | None = None, batch_size: int = 2048) -> None:
        super().__init__(budget)
        self._model = model.eval()
        self._shape = tuple(int(v) for v in input_shape)
        if num_outputs is None:
            with torch.no_grad():
                num_outputs = int(model(torch.zeros(1, *self._shape, device=model_device(model))).shape[1])
        self._num_outputs = int(num_outputs)
        self._bs = batch_size

    @classmethod
    def from_loaded(cls, loaded, budget: int | None = None) -> ModuleSuspect:  # noqa: ANN001 (LoadedModel)
        """A suspect from a :class:`~deepserial.artifacts.LoadedModel`."""
        return cls(loaded.model, loaded.input_shape, int(loaded.manifest["num_classes"]), budget)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def num_outputs(self) -> int:
        return self._num_outputs

    @property
    def module(self) -> nn.Module:
        return self._model

    @torch.no_grad()
    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        dev = model_device(self._model)
        self._model.eval()
        out = [self._model(x[i: i + self._bs].to(dev)).argmax(1).cpu() for i in range(0, len(x), self._bs)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
