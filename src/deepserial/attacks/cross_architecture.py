"""Cross-architecture retraining: train a *different* network on the victim's soft labels.

Tramèr, Zhang, Juels, Reiter, Ristenpart. "Stealing Machine Learning Models via Prediction APIs."
USENIX Security 2016 (arXiv:1609.02943, WRT's reference for retraining: a model trained on the
victim's answers), with a student of another architecture, evaluated as a watermark removal
attack by Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image Classification DNN
Watermarking?", IEEE S&P 2022. A watermark written into the
victim's particular weights, or into behaviour its architecture learns easily, has to survive the move
to a network with other layers. Defaults from the Watermark-Robustness-Toolbox
``wrt/attacks/removal/retraining.py`` and ``configs/cifar10/attack_configs/cross_architecture_retraining.yaml``:

- the targets are the victim's softmax (``CIFAR10StolenDataset`` with ``apply_softmax`` on), learnt
  with the soft cross-entropy: here :func:`deepserial.attacks.distillation.kd_loss` at temperature 1
  with ``alpha = 1``, which has the same gradients;
- the student is another architecture (WRT: a DenseNet for its ResNet victims), trained from scratch
  for 60 epochs (the budget's ``epochs``). ``arch`` names a registered network; by default the first
  of :data:`PREFERENCE` that builds for the input shape and is not the victim's architecture (the
  victim's is recognised by its parameter names and shapes).

The student is returned; its registered network name is ``log.details["student_arch"]``, which a
file of the student must name as its ``arch`` (``deepserial attack --out`` writes it there, through
:func:`deepserial.attacks.base.resulting_arch`, also after a combined attack). Optimiser and query
accounting as in :mod:`deepserial.attacks.distillation`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from deepserial.attacks.base import register_attack
from deepserial.attacks.distillation import Retraining, architecture_signature
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet, available_models, create_model

#: Students tried in order when ``arch`` is not given: small networks first.
PREFERENCE = ("null_digit", "dsn_mnist", "null_traffic", "dsn_gtsrb", "resnet18", "vgg16", "deepid")


class CrossArchitectureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: str | None = Field(None, description="the student's registered network (None: the first other one)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the targets (WRT: 1, softmax)")
    alpha: float = Field(1.0, ge=0, le=1, description="weight of the soft term (WRT: soft labels only)")


def other_architecture(victim: SplitNet, input_shape: tuple[int, ...], classes: int, arch: str | None) -> str:
    """``arch`` when given and different from the victim's; otherwise the first registered network of
    :data:`PREFERENCE` (then any other) that builds for ``input_shape`` and differs from the victim."""
    mine = architecture_signature(victim)
    names = [arch] if arch is not None else [*PREFERENCE, *sorted(set(available_models()) - set(PREFERENCE))]
    for name in names:
        try:
            candidate = create_model(name, input_shape, classes)
        except ConfigError:
            if arch is not None:
                raise
            continue
        if architecture_signature(candidate) != mine:
            return name
        if arch is not None:
            raise ConfigError(f"{arch} is the victim's own architecture; name another (see `deepserial models`)")
    raise ConfigError(f"no registered network other than the victim's builds for inputs {tuple(input_shape)}")


@register_attack
class CrossArchitectureRetraining(Retraining):
    r"""Cross-architecture retraining as evaluated in 'SoK: How Robust is Image Classification Deep
    Neural Network Watermarking?' (Lukas et al., IEEE S&P 2022), WRT's ``retraining.py`` with another
    network as the surrogate.

    Arguments (``Config``):
        arch (str | None): the student's registered network. (Default: the first other one that fits)
        temperature (float): softmax temperature of the targets. (Default: 1)
        alpha (float): weight of the soft term. (Default: 1)

    Shape:
        - data.x: :math:`(N, C, H, W)` in [0, 1] (labels unused: the victim labels them).
        - targets: :math:`(N, K)`, the victim's softmax.

    Examples::
        >>> student, log = get_attack("cross-architecture-retraining", {"arch": "null_digit"}).run(model, data)
        >>> log.details["student_arch"]
    """

    name = "cross-architecture-retraining"
    citation = (
        "Tramèr, Zhang, Juels, Reiter, Ristenpart. Stealing Machine Learning Models via Prediction APIs. "
        "USENIX Security 2016; WRT "
        "wrt/attacks/removal/retraining.py, configs/cifar10/attack_configs/cross_architecture_retraining.yaml "
        "(Lukas et al., IEEE S&P 2022)"
    )
    Config = CrossArchitectureConfig

    def student_arch(self, model: SplitNet, input_shape: tuple[int, ...], classes: int) -> str | None:
        return other_architecture(model, input_shape, classes, self.config.arch)
