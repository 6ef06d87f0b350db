"""Neural laundering: reverse-engineer the watermark trigger, reset the neurons it drives, retrain.

Aiken, Kim, Woo, Ryoo. "Neural Network Laundering: Removing Black-Box Backdoor Watermarks from Deep
Neural Networks." Computers & Security 2021 (arXiv:2004.11368). Three steps:

1. **Trigger recovery** with Neural Cleanse (:func:`deepserial.attacks.neural_cleanse.scan`, the
   project's implementation and defaults) on the attacker's clean data; the reversed trigger with the
   smallest mask norm is used (WRT sorts the triggers by L1 norm and takes the first), whether or not
   Neural Cleanse flags its label.
2. **Neuron reset**: the mean activation of every unit over the clean data and over the same data
   carrying the trigger is compared; a convolution channel whose largest difference over positions
   (triggered minus clean) exceeds ``ct``, or a dense unit whose difference exceeds ``dt``, has its
   incoming weights set to zero (its bias is kept, as in WRT) and must be relearnt.
3. **Retraining** on the clean data and on every image with the trigger and its *correct* label, for
   the budget's epochs.

Defaults from the Watermark-Robustness-Toolbox ``wrt/attacks/removal/laundering.py`` and
``configs/cifar10/attack_configs/neural_laundering.yaml``: ``ct = 0.5``, ``dt = 0.2``, 5 retraining
epochs (the budget's; pass ``AttackBudget(epochs=5)``), one triggered copy of each image
(``boost_factor = 1``), only the convolutions of the network's second half reset (WRT's CIFAR map
resets ``layer2`` and ``layer3`` of its ResNet, "original paper only resets weights in the second
half"). Activations are the outputs of the Conv2d / Linear modules themselves.

Where this differs from WRT: WRT registers the *partial* variant (a source-specific trigger from its
Neural Cleanse extension; other classes' triggered images relabelled to the least infected class);
the original all-source laundering of Aiken et al. is done here, with this project's Neural Cleanse.
WRT's CIFAR reset map covers no dense layer; the hidden dense layers (every Linear but the
classification layer) are candidates here, as in Aiken et al., with threshold ``dt``.
WRT's data are the victim's top-1 labels (``top_k: 1``); ``labels="victim"`` does that (arg-max of the
victim's softmax), the default keeps the attacker's own labels (:mod:`deepserial.attacks.targets`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.neural_cleanse import NeuralCleanseConfig, apply_trigger, scan
from deepserial.attacks.targets import LabelSource, fine_tune, one_hot, training_targets
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import EVAL_BATCH, EpochCallback, model_device


class NeuralLaunderingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ct: float = Field(0.5, description="reset a convolution channel above this activation increase (WRT: 0.5)")
    dt: float = Field(0.2, description="reset a dense unit above this activation increase (WRT: 0.2)")
    layers: Literal["second-half", "all"] = Field("second-half", description="convolutions that may be reset")
    scan_steps: int = Field(400, ge=1, description="Neural Cleanse optimisation steps (the project's default)")
    labels: LabelSource = "true"


def candidate_layers(model: nn.Module, which: str = "second-half") -> list[tuple[str, nn.Module]]:
    """The layers laundering may reset: the convolutions (the later half of them, or all), and every
    dense layer but the last (the classification layer), in module order."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    dense = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][:-1]
    if which == "second-half":
        convs = convs[len(convs) // 2 :]
    return convs + dense


@torch.no_grad()
def mean_activations(
    model: nn.Module, layers: list[nn.Module], x: torch.Tensor, batch_size: int = EVAL_BATCH
) -> list[torch.Tensor]:
    """Each layer's output averaged over the samples of ``x``: ``(C, H, W)`` or ``(U,)`` per layer."""
    sums: list[torch.Tensor | None] = [None] * len(layers)

    def hook_for(i: int):  # noqa: ANN202
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            s = out.detach().double().sum(0).cpu()
            sums[i] = s if sums[i] is None else sums[i] + s

        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(layers)]
    dev = model_device(model)
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
    return [(s / max(len(x), 1)).float() for s in sums]  # type: ignore[operator]


def units_to_reset(diff: torch.Tensor, ct: float, dt: float) -> torch.Tensor:
    """Indices of the units whose activation the trigger raises past the threshold: a channel's
    ``(C, H, W)`` difference is reduced by its maximum over positions and compared with ``ct``; a
    dense layer's ``(U,)`` difference is compared with ``dt``."""
    if diff.dim() == 3:
        return torch.nonzero(diff.amax(dim=(1, 2)) > ct).flatten()
    return torch.nonzero(diff.flatten() > dt).flatten()


@register_attack
class NeuralLaundering(Attack):
    r"""Neural laundering from 'Neural Network Laundering: Removing Black-Box Backdoor Watermarks from
    Deep Neural Networks' (Aiken et al., Computers & Security 2021), with WRT's thresholds
    (``laundering.py``).

    Arguments (``Config``):
        ct (float): activation increase above which a convolution channel is reset. (Default: 0.5)
        dt (float): activation increase above which a dense unit is reset. (Default: 0.2)
        layers (str): "second-half" (WRT) or "all" convolutions may be reset.
        scan_steps (int): Neural Cleanse steps. (Default: 400)
        labels (str): retrain on the attacker's labels ("true") or the victim's top-1 ("victim").

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1]; data.y: :math:`(N)`.
        - retraining set: :math:`2N` images (each clean and with the trigger).

    Examples::
        >>> attacked, log = get_attack("neural-laundering").run(model, data, AttackBudget(epochs=5))
        >>> log.details["reset"]
    """

    name = "neural-laundering"
    citation = (
        "Aiken, Kim, Woo, Ryoo. Neural Network Laundering: Removing Black-Box Backdoor Watermarks from "
        "Deep Neural Networks. Computers & Security 2021 (arXiv:2004.11368); WRT "
        "wrt/attacks/removal/laundering.py (Lukas et al., IEEE S&P 2022)"
    )
    Config = NeuralLaunderingConfig

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
            raise ConfigError("neural laundering reverse-engineers the trigger on the attacker's data; give some")
        train_data, targets = training_targets(model, data, cfg.labels, budget, log)
        if cfg.labels == "victim":  # WRT's top_k: 1
            targets = one_hot(targets.argmax(1), targets.shape[1])
        rep = scan(model, train_data, NeuralCleanseConfig(steps=cfg.scan_steps, unlearn=False), seed=budget.seed)
        log.forward_samples += rep.forward_samples
        label = int(torch.tensor(rep.norms).argmin())
        mask, pattern = rep.masks[label], rep.patterns[label]
        triggered = apply_trigger(train_data.x, mask, pattern)
        layers = candidate_layers(model, cfg.layers)
        clean_act = mean_activations(model, [m for _, m in layers], train_data.x)
        trig_act = mean_activations(model, [m for _, m in layers], triggered)
        log.forward_samples += 2 * len(train_data)
        reset: dict[str, list[int]] = {}
        with torch.no_grad():
            for (name, layer), clean, trig in zip(layers, clean_act, trig_act, strict=True):
                idx = units_to_reset(trig - clean, cfg.ct, cfg.dt)
                if len(idx):
                    layer.weight[idx.to(layer.weight.device)] = 0
                    reset[name] = [int(i) for i in idx]
        log.details |= {
            "trigger_label": label,
            "trigger_norm": rep.norms[label],
            "scan": rep.to_dict(),
            "reset": reset,
            "reset_units": sum(len(v) for v in reset.values()),
        }
        retrain = TensorData(torch.cat([train_data.x, triggered]), torch.cat([train_data.y, train_data.y]))
        fine_tune(model, retrain, torch.cat([targets, targets]), budget, log, on_epoch_end, desc="neural laundering")
        return model
