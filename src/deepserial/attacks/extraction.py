"""Model extraction: label inputs with the victim's answers and train a substitute on them.

Li, Wenger, Zheng, Zhao. "Piracy Resistant Watermarks for DNNs" (arXiv:1910.01226), §8.3 / Table 6:
the attacker queries the watermarked model and trains a model of its own on the answers; the
question is whether the substitute reaches useful accuracy and whether it inherits the watermark.
The DSN paper (2023 version) states model extraction as a limit it does not defend against once a
customer queries with the serial number.

Query sources (``source``):

- ``data``: the inputs given to :meth:`run` (in distribution: the attacker's split; out of
  distribution: another data set's images of the same shape), as many as ``budget.queries`` allows;
- ``noise``: ``budget.queries`` uniform random images.

The victim is queried as a black box (:class:`deepserial.suspect.ModuleSuspect`, labels only, every
query counted); the substitute is the victim's architecture, freshly initialised, trained through the
shared loop on the answers. A query-volume sweep is several runs with growing ``budget.queries``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.fine_tuning import reinitialise
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.suspect import ModuleSuspect
from deepserial.training import EpochCallback, fit, supervised_loss


class ExtractionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["data", "noise"] = "data"
    query_batch: int = 1000  # inputs per request to the victim


@register_attack
class ModelExtraction(Attack):
    """Train a fresh substitute on the victim's labels for the attacker's (or random) inputs."""

    name = "extraction"
    citation = "Li, Wenger, Zheng, Zhao. Piracy Resistant Watermarks for DNNs, arXiv:1910.01226, §8.3 / Table 6"
    Config = ExtractionConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        if len(data) == 0 and self.config.source == "data":
            raise ConfigError("extraction from data needs the attacker's inputs; give data or use source=noise")
        shape = tuple(int(s) for s in data.x.shape[1:])
        if self.config.source == "noise":
            if budget.queries is None:
                raise ConfigError("extraction with random-noise queries needs a query budget (queries=N)")
            gen = torch.Generator().manual_seed(budget.seed)
            x = torch.rand(budget.queries, *shape, generator=gen)
        else:
            n = min(budget.queries or len(data), len(data))
            x = data.x[:n]
        victim = ModuleSuspect(model, shape, budget=budget.queries)
        labels = torch.cat(
            [victim.predict(x[i : i + self.config.query_batch]) for i in range(0, len(x), self.config.query_batch)]
        )
        log.queries = victim.queries
        log.samples = len(x)
        counts = torch.bincount(labels, minlength=victim.num_outputs)
        log.details["label_histogram"] = [int(c) for c in counts]
        substitute = model  # a private copy already: re-initialise it in place
        reinitialise(substitute, budget.seed)
        log.add_training(
            fit(
                substitute,
                TensorData(x, labels),
                supervised_loss,
                budget.train_config(constant_lr=False),
                on_epoch_end=on_epoch_end,
                desc="extraction",
            )
        )
        return substitute
