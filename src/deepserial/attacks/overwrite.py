"""Overwriting (piracy) attacks: an adversary trains its own watermark into the owner's model.

Li, Wenger, Zheng, Zhao. "Piracy Resistant Watermarks for Deep Neural Networks." arXiv:1910.01226,
§4 and §7.2 (Table 3, Figure 4). The adversary holds a limited part of the training data (at most
5,000 images, §7.1), draws a random pirate watermark and trains it into the already watermarked model
with the owner's training recipe (Table 14) at the *last* learning rate of the owner's training, for
10 epochs on Digit and Object (§7.2). Against null / dual embedding the expected outcome is Table 3:
normal accuracy falls to near chance (Digit 98.72% -> 19.02%), the owner's watermark is destroyed
with it, and the pirate watermark does not verify (pirate WM 9.31% on Digit).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.schemes.null_embedding import (
    DualLoss,
    NullEmbeddingConfig,
    NullEmbeddingScheme,
    Watermark,
    transform,
    visible_field,
)
from deepserial.training import TrainConfig, TrainLog, fit

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


def pirate_watermark(pirate: bytes, model: SplitNet, input_shape: tuple[int, int, int], num_classes: int,
                     config: NullEmbeddingConfig | dict | None = None) -> Watermark:
    """The pirate watermark that :func:`pirate_null_embedding` embeds for the signature bytes ``pirate``
    (made by :func:`pirate_signature`), to measure the pirate's null / true accuracy afterwards."""
    cfg = _config(config)
    return transform(pirate, input_shape, num_classes, cfg.pattern_size, visible_field(model, input_shape),
                     (cfg.lam_min, cfg.lam_max))


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
            raise ConfigError("give the attack's learning rate (lr=...) or the owner's training log (owner_log=...) "
                              "to take its last learning rate, as §7.2 does")
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
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        plateau_patience=epochs + 1, seed=seed, device=device, progress=progress)
    log = fit(pirated, data, loss, train, on_epoch_end=epoch_end, desc="piracy")
    return pirated, log


def _config(config: NullEmbeddingConfig | dict | None) -> NullEmbeddingConfig:
    """Validated settings (a one-line :class:`ConfigError` for bad ones), the scheme's defaults for None."""
    return NullEmbeddingScheme(config).config
