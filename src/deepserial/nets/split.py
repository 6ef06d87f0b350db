"""The two-part network every deepserial model is: its own module, below the registry and the adapters.

:mod:`deepserial.nets` (the registry of built-in networks) and :mod:`deepserial.nets.adapters` (which
splits your own classifier) both need the class; here it depends on neither, so they import it
without importing each other in a circle.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SplitNet"]


class SplitNet(nn.Module):
    """A classifier split into Ge (``features``: input -> penultimate vector) and Gy (``classifier``)."""

    def __init__(self, features: nn.Module, classifier: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
