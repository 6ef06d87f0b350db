"""Overwriting (piracy) attacks: an adversary trains its own key into the owner's model.

- **Null / dual embedding piracy**: Li, Wenger, Zheng, Zhao. "Piracy Resistant Watermarks for Deep
  Neural Networks." arXiv:1910.01226, §4 and §7.2 (Table 3, Figure 4). The adversary holds a limited
  part of the training data (at most 5,000 images, §7.1), draws a random pirate watermark and trains
  it into the already watermarked model with the owner's training recipe (Table 14) at the *last*
  learning rate of the owner's training, for 10 epochs on Digit and Object (§7.2). Against null / dual
  embedding the expected outcome is Table 3: normal accuracy falls to near chance (Digit 98.72% ->
  19.02%), the owner's watermark is destroyed with it, and the pirate watermark does not verify
  (pirate WM 9.31% on Digit).
- **Watermark overwriting** (any scheme): the adversary knows the method, not the owner's key, makes
  a key of its own and embeds it into the stolen model with the scheme's own embedding on its data
  (Rouhani, Chen, Koushanfar, "DeepSigns", ASPLOS 2019, §4.2 / Table 4: the owner's watermark must
  still be detected afterwards; Uchida et al. 2017 is the weight-regulariser case DeepSigns compares).
- **DSN overwriting**: Tang, Du, Hu. "Deep Serial Number." arXiv:2011.08960, §3.5 / Table 6. An
  adversary who knows the customer's serial number (a buyer redistributing the model) trains a new
  serial number into it with the DSN framework on 10-40% of the training data: cross-entropy on
  inputs stamped with the new number (the teacher is secret, so the distillation loss becomes the
  standard cross-entropy) and the SN embedding loss on raw inputs, wrong numbers and inputs stamped
  with the original number. Table 6: MNIST 93.2 / 93.7 / 94.3 / 95.8% with the new number, "about
  twice the cost of training from scratch".
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.data import TensorData
from deepserial.errors import ConfigError, DeepSerialError
from deepserial.identity import OwnerIdentity
from deepserial.nets import SplitNet, check_visible
from deepserial.schemes.base import Provenance, get_scheme
from deepserial.schemes.dsn import DSNConfig, DSNTrainNet, make_student_loss
from deepserial.schemes.null_embedding import (
    DualLoss,
    NullEmbeddingConfig,
    NullEmbeddingScheme,
    Watermark,
    transform,
    visible_field,
)
from deepserial.serial import SerialNumber, scale_for
from deepserial.training import EpochCallback, TrainConfig, TrainLog, fit

#: §7.1: the attacker has at most 5,000 training images.
PAPER_ATTACKER_IMAGES = 5000
#: §7.2: 10 epochs for Digit and Object (1 for Face, 25 for Traffic).
PAPER_PIRACY_EPOCHS = 10


def pirate_signature(pirate: bytes | np.random.Generator | int) -> bytes:
    """The pirate's secret: its own signature bytes, or 64 random bytes from a generator or seed.

    The pirate cannot forge the owner's signature; any bytes it signs or draws give it a valid-looking
    watermark of its own through the public Transform, which is all a piracy attack needs.
    """
    if isinstance(pirate, bytes | bytearray):
        if not pirate:
            raise ConfigError("pirate signature is empty")
        return bytes(pirate)
    rng = pirate if isinstance(pirate, np.random.Generator) else np.random.default_rng(int(pirate))
    return rng.integers(0, 256, size=64, dtype=np.uint8).tobytes()


def pirate_watermark(
    pirate: bytes,
    model: SplitNet,
    input_shape: tuple[int, int, int],
    num_classes: int,
    config: NullEmbeddingConfig | dict | None = None,
) -> Watermark:
    """The pirate watermark that :func:`pirate_null_embedding` embeds for the signature bytes ``pirate``
    (made by :func:`pirate_signature`), to measure the pirate's null / true accuracy afterwards."""
    cfg = _config(config)
    return transform(
        pirate,
        input_shape,
        num_classes,
        cfg.pattern_size,
        visible_field(model, input_shape),
        (cfg.lam_min, cfg.lam_max),
        cfg.pixels_per_bit or scale_for(input_shape),
    )


def pirate_null_embedding(
    model: SplitNet,
    attacker_data: TensorData,
    pirate_signature_or_rng: bytes | np.random.Generator | int,
    epochs: int = PAPER_PIRACY_EPOCHS,
    lr: float | None = None,
    *,
    owner_log: TrainLog | None = None,
    config: NullEmbeddingConfig | dict | None = None,
    max_images: int = PAPER_ATTACKER_IMAGES,
    batch_size: int = 128,
    optimizer: str = "adam",
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    on_epoch_end=None,  # noqa: ANN001 (deepserial.training.EpochCallback)
) -> tuple[SplitNet, TrainLog]:
    """§7.2 piracy attack: dual-embed a random pirate watermark into a copy of the owner's ``model``.

    The attacker trains on at most ``max_images`` (5,000, §7.1) of ``attacker_data`` (all of it when
    it holds fewer, as the ``mnist5k`` attacker split does) for ``epochs`` (10, §7.2) with the owner's
    recipe (``config``: pattern size, lambda range, Table 14 injection ratios, warm-up; the defaults
    of :class:`NullEmbeddingConfig`) at learning rate ``lr``, the last one of the owner's training:
    pass it, or ``owner_log`` to read it from the owner's :class:`TrainLog`. The learning rate is held
    constant during the attack; ``optimizer`` is the shared loop's ("adam", or "sgd" as Table 14 trains
    Digit). ``model`` itself is left untouched; the attacked copy and its training
    log are returned. The pirate watermark is that of :func:`pirate_signature` (bytes are used as
    they are; a generator or seed draws random bytes), recoverable with :func:`pirate_watermark`.
    """
    if lr is None:
        if owner_log is None or not owner_log.epochs:
            raise ConfigError(
                "give the attack's learning rate (lr=...) or the owner's training log (owner_log=...) "
                "to take its last learning rate, as §7.2 does"
            )
        lr = float(owner_log.epochs[-1]["lr"])
    if len(attacker_data) == 0:
        raise ConfigError("the attacker holds no data; give the attacker split")
    if max_images < 1:
        raise ConfigError(f"max_images must be >= 1, got {max_images}")
    cfg = _config(config)
    shape = tuple(int(v) for v in attacker_data.x.shape[1:])
    num_classes = int(model.classifier.out_features) if hasattr(model.classifier, "out_features") else None
    if num_classes is None:
        raise ConfigError("the model's classifier must be a Linear layer (a SplitNet from deepserial.nets)")
    data = attacker_data
    if len(data) > max_images:
        order = np.random.default_rng(seed).permutation(len(data))[:max_images]
        data = data.subset(torch.from_numpy(np.sort(order)))
    pirated = copy.deepcopy(model)
    wm = pirate_watermark(pirate_signature(pirate_signature_or_rng), pirated, shape, num_classes, cfg)  # type: ignore[arg-type]
    loss = DualLoss(wm, cfg.ratio_true, cfg.ratio_null, cfg.lam_warmup_epochs, cfg.lam_warmup_start)

    def epoch_end(epoch: int, net: torch.nn.Module) -> dict[str, float]:
        out = loss.on_epoch_end(epoch, net)
        if on_epoch_end is not None:
            out |= on_epoch_end(epoch, net)
        return out

    # A constant learning rate, as in the paper's attack: the plateau schedule never fires.
    train = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        plateau_patience=epochs + 1,
        seed=seed,
        device=device,
        progress=progress,
    )
    log = fit(pirated, data, loss, train, on_epoch_end=epoch_end, desc="piracy")
    return pirated, log


def _config(config: NullEmbeddingConfig | dict | None) -> NullEmbeddingConfig:
    """Validated settings (a one-line :class:`ConfigError` for bad ones), the scheme's defaults for None."""
    return NullEmbeddingScheme(config).config


class DSNOverwriteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    serial: str = Field(description="the customer's product key (the adversary knows it)")
    new_signature: str = Field("pirate", description="bytes the adversary derives its new serial number from")


@register_attack
class DSNOverwrite(Attack):
    """Train a new serial number into a DSN customer model, suppressing the original (Table 6)."""

    name = "dsn-overwrite"
    citation = "Tang, Du, Hu. Deep Serial Number, arXiv:2011.08960, §3.5 / Table 6"
    Config = DSNOverwriteConfig

    def new_serial(self) -> SerialNumber:
        """The adversary's serial number: same geometry as the original, its own bits."""
        old = SerialNumber.from_product_key(self.config.serial)
        return SerialNumber.from_signature(self.config.new_signature.encode(), old.geometry)

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        old = SerialNumber.from_product_key(self.config.serial)
        new = self.new_serial()
        check_visible(model, new.geometry, tuple(int(v) for v in data.x.shape[1:]))
        cfg = DSNConfig.default()
        classes = int(model.classifier.out_features)
        # one-hot targets at the DSN temperature: the distillation term becomes cross-entropy (+ a constant)
        targets = torch.nn.functional.one_hot(data.y, classes).float() * (10.0 * cfg.temperature)
        loss = make_student_loss(new, targets, cfg, classes, also_invalid=old.as_tensor())
        net = DSNTrainNet(model, cfg.grl_coefficient)
        # the training net wraps the model (two heads); callers' curves are measured on the model itself
        callback = (lambda epoch, _net: on_epoch_end(epoch, model)) if on_epoch_end is not None else None
        log.add_training(
            fit(
                net,
                data,
                loss,
                budget.train_config(constant_lr=False),
                on_epoch_end=callback,
                desc="overwrite serial number",
            )
        )
        log.details["new_product_key"] = new.to_product_key()
        return model


class PiracyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pirate_seed: int = Field(0, description="seed of the pirate's random signature bytes")
    lam_warmup_epochs: int = Field(
        0,
        ge=0,
        description="0: the paper's recipe (full lambda from the first "
        "step); > 0: this project's warm-up (an adaptive pirate)",
    )


@register_attack
class NullEmbeddingPiracy(Attack):
    """§7.2's piracy attack as a registered attack: a random pirate null / dual embedding trained into
    the model for ``budget.epochs`` at ``budget.lr`` (pass the owner's last rate) with the budget's
    optimiser (Table 14 for Digit: SGD, 0.001)."""

    name = "piracy"
    citation = "Li, Wenger, Zheng, Zhao. Piracy Resistant Watermarks for DNNs, arXiv:1910.01226, §7.2 / Table 3"
    Config = PiracyConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        cfg = NullEmbeddingScheme().config.model_dump() | {"lam_warmup_epochs": self.config.lam_warmup_epochs}
        signature = pirate_signature(self.config.pirate_seed)
        pirated, train_log = pirate_null_embedding(
            model,
            data,
            signature,
            epochs=budget.epochs,
            lr=budget.lr or 1e-3,
            config=cfg,
            batch_size=budget.batch_size,
            optimizer=budget.optimizer,
            seed=budget.seed,
            device=budget.device,
            progress=budget.progress,
            on_epoch_end=on_epoch_end,
        )
        log.add_training(train_log)
        log.samples = min(len(data), PAPER_ATTACKER_IMAGES)
        log.details["pirate_signature"] = signature.hex()
        return pirated


class WatermarkOverwriteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scheme: str = Field(description="the watermark scheme the adversary uses (the owner's, known to it)")
    settings: dict = Field(default_factory=dict, description="the scheme's settings")


@register_attack
class WatermarkOverwrite(Attack):
    """Embed the adversary's own watermark of the same scheme into the stolen model (its key is
    returned in ``log.key``). The adversary is simulated: its identity derives from the budget's seed,
    so a report's adversary key can be re-created (with the signing time, ``SOURCE_DATE_EPOCH``)."""

    name = "watermark-overwrite"
    citation = "Rouhani, Chen, Koushanfar. DeepSigns, ASPLOS 2019, §4.2 / Table 4 (overwriting)"
    Config = WatermarkOverwriteConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        scheme = get_scheme(self.config.scheme, self.config.settings)
        if scheme.name == "dsn":
            raise ConfigError("overwrite a DSN serial number with the dsn-overwrite attack")
        classes = int(model.classifier.out_features)
        task = classes - (scheme.num_outputs(classes) - classes)  # a new-label model answers C + 1 labels
        prov = Provenance.sign(
            OwnerIdentity.for_experiment(budget.seed, "adversary"), "adversary", "overwrite", scheme.name
        )
        key = scheme.make_signed_key(prov, data, task, model=model)
        log.details["scheme"] = scheme.name
        try:
            log.add_training(scheme.embed(model, data, key, budget.train_config()))
        except DeepSerialError as e:
            # the adversary's training ran but its watermark did not take (DeepSigns' output layer checks
            # that before selecting keys): an outcome of the attack, not a failure of the run
            log.details["adversary_watermark_failed"] = str(e)
            return model
        key.meta.setdefault("config", scheme.config.model_dump())
        log.key = key
        return model
