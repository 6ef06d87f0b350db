"""Uchida et al. 2017: a watermark in the weights of one convolution, embedded by a regulariser.

Uchida, Nagai, Sakazawa, Satoh. "Embedding Watermarks into Deep Neural Networks." ACM ICMR 2017;
arXiv:1701.04082.

The owner picks one convolution with kernel W of shape (L out, D in, S, S); its weights averaged over
the L output channels, flattened, give w of length M = S * S * D. A secret matrix X (T x M, entries
N(0, 1): Uchida's "random" embedding) maps w to T bits, b_j = 1 when sigmoid(X_j . w) > 0.5. Training
adds lambda * E_R(w) to the task loss, E_R the binary cross-entropy between sigmoid(X w) and the T
signature bits, summed over the bits. Verification is white-box: read W from the suspect, decode,
count bit errors.

The paper was not among the texts this project was specified from; the defaults below come from
the paper as it is widely described (its §4 and its public reference code), and from the DeepSigns
and piracy-resistance papers' accounts of it (the formulas: docs/specification.md, section 6):

- lambda = 0.01 (Uchida's embedding parameter);
- the paper embeds T = 256 bits into a 3 x 3 x 64 convolution of a wide residual network
  (M = 576, T / M = 0.44). The DSN MNIST net (Table 7 of DSN) has two 3 x 3 convolutions: the first
  sees one input channel (M = 9, far too few weights for a significant test at 1e-3: at least 10
  bits are needed, and T <= M), the second 32 (M = 288). The default layer is therefore the
  second convolution (``conv_index = 1``) with T = 128 bits, the paper's T / M ratio;
- the bits are derived from the owner's signature with their own domain tag, independent of X and
  of any model not trained with them, so for such a model the bit errors are exactly
  Binomial(T, 1/2) over the draw of the signature (:func:`deepserial.stats.ber_p_value`), whatever
  bits its weights decode to. The decision is "carries the key" when the errors are at most
  :func:`deepserial.stats.ber_threshold` (T, fpr).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepserial import stats
from deepserial.data import TensorData
from deepserial.errors import ConfigError, InputError
from deepserial.identity import derive_rng
from deepserial.nets import SplitNet
from deepserial.schemes.base import OwnershipKey, Scheme, Verdict, check_derived, key_signature, register_scheme
from deepserial.schemes.deepsigns import ber_verdict, signature_bits
from deepserial.suspect import Suspect
from deepserial.training import Batch, LossOut, TrainConfig, TrainLog, fit

SCHEME = "uchida"


class UchidaConfig(BaseModel):
    """Settings of Uchida's weight watermark (validated; unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    bits: int = Field(128, ge=1, le=65536, description="T, watermark bits (Uchida: 256 for M = 576)")
    lam: float = Field(0.01, ge=0, description="lambda, weight of the embedding regulariser E_R (Uchida: 0.01)")
    conv_index: int = Field(1, ge=0, description="which Conv2d (0-based, in module order) carries the watermark")


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The model's 2-D convolutions with their module names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def flat_mean_weights(weight: torch.Tensor) -> torch.Tensor:
    """Uchida's w: the kernel (L, D, S, S) averaged over its L output channels, flattened to D * S * S."""
    return weight.mean(0).reshape(-1)


def embedding_loss(weight: torch.Tensor, X: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """E_R(w) = sum_j BCE(sigmoid(X_j . w), b_j), summed over the T bits as in Uchida's code."""
    return F.binary_cross_entropy_with_logits(X @ flat_mean_weights(weight), bits, reduction="sum")


def decode(weight: torch.Tensor, X: torch.Tensor) -> np.ndarray:
    """Bits b_j = [sigmoid(X_j . w) > 0.5] = [X_j . w > 0] of a kernel, uint8 (T,)."""
    with torch.no_grad():
        return (X.float() @ flat_mean_weights(weight.detach().float().cpu()) > 0).to(torch.uint8).numpy()


@register_scheme
class Uchida(Scheme):
    """Uchida et al.'s white-box weight watermark behind the common Scheme interface.

    Key: meta ``signature`` (hex), ``layer`` (the parameter name of the kernel, e.g.
    ``features.0.3.weight``), ``weight_shape``, ``bits``; tensors ``X`` (T, M float32) and ``bits``
    (T uint8). :meth:`embed` trains ``model`` (from scratch or fine-tuning, whichever it is) with
    cross-entropy + lambda E_R.
    """

    name = SCHEME
    citation = (
        "Uchida, Nagai, Sakazawa, Satoh. Embedding Watermarks into Deep Neural Networks. ICMR 2017, arXiv:1701.04082"
    )
    white_box = True
    Config = UchidaConfig

    def make_key(
        self, signature: bytes, data: TensorData, num_classes: int, model: SplitNet | None = None
    ) -> OwnershipKey:
        cfg: UchidaConfig = self.config  # type: ignore[assignment]
        if model is None:
            raise ConfigError(f"{self.name} watermarks a convolution of the network: pass model= to size the key")
        convs = conv_layers(model)
        if cfg.conv_index >= len(convs):
            raise ConfigError(
                f"{self.name}: conv_index = {cfg.conv_index} but the network has {len(convs)} "
                "convolutions; choose 0 to {}".format(max(len(convs) - 1, 0))
            )
        name, conv = convs[cfg.conv_index]
        M = int(conv.weight[0].numel())
        if cfg.bits > M:
            raise ConfigError(
                f"{self.name}: {cfg.bits} bits do not fit the {M} averaged weights of {name}; "
                f"use at most {M} bits or a larger layer"
            )
        X = derive_rng(signature, "uchida/projection").standard_normal((cfg.bits, M)).astype(np.float32)
        bits = signature_bits(signature, "uchida/bits", cfg.bits)
        meta = {
            "signature": signature.hex(),
            "layer": f"{name}.weight" if name else "weight",
            "weight_shape": list(conv.weight.shape),
            "bits": cfg.bits,
            "num_classes": int(num_classes),
            "config": cfg.model_dump(),
        }
        return OwnershipKey(self.name, meta, {"X": torch.from_numpy(X), "bits": torch.from_numpy(bits)})

    def _parts(self, key: OwnershipKey) -> tuple[str, torch.Tensor, torch.Tensor]:
        self.check_key(key)
        X, bits = key.tensor("X"), key.tensor("bits")
        layer = key.meta.get("layer")
        if not isinstance(layer, str) or X.dim() != 2 or bits.shape != (X.shape[0],):
            raise ConfigError(
                f"{self.name} key is damaged (layer {layer!r}, X {tuple(X.shape)}, bits {tuple(bits.shape)})"
            )
        return layer, X, bits

    @staticmethod
    def _weight(module: nn.Module, layer: str, X: torch.Tensor) -> torch.Tensor:
        params = dict(module.named_parameters())
        w = params.get(layer)
        if w is None or w.dim() != 4 or int(w[0].numel()) != X.shape[1]:
            shape = None if w is None else tuple(w.shape)
            raise InputError(
                f"the model has no convolution {layer!r} with {X.shape[1]} weights per output channel "
                f"(found {shape}); this key belongs to another architecture"
            )
        return w

    def embed(self, model: SplitNet, data: TensorData, key: OwnershipKey, train: TrainConfig) -> TrainLog:
        cfg: UchidaConfig = self.config  # type: ignore[assignment]
        layer, X, bits = self._parts(key)
        weight = self._weight(model, layer, X)
        consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

        def loss_fn(net: nn.Module, batch: Batch) -> LossOut:
            dev = batch.x.device
            if dev not in consts:
                consts[dev] = (X.to(dev), bits.to(dev).float())
            x_mat, b = consts[dev]
            logits = net(batch.x)
            ce = F.cross_entropy(logits, batch.y)
            reg = embedding_loss(weight, x_mat, b)
            return LossOut(
                ce + cfg.lam * reg,
                len(batch.x),
                {
                    "ce": float(ce.detach()),
                    "e_r": float(reg.detach()),
                    "acc": 100.0 * float((logits.argmax(1) == batch.y).float().mean()),
                },
            )

        def on_epoch_end(epoch: int, m: nn.Module) -> dict[str, float]:
            return {"ber": stats.bit_error_rate(decode(weight, X), bits.numpy())}

        return fit(model, data, loss_fn, train, on_epoch_end=on_epoch_end, desc=self.name)

    def verify(self, suspect: Suspect, key: OwnershipKey, fpr: float = 1e-3) -> Verdict:
        stats.check_fpr(fpr)
        layer, X, bits = self._parts(key)
        sig = key_signature(key)
        check_derived(key, "X", derive_rng(sig, "uchida/projection").standard_normal(tuple(X.shape)).astype(np.float32))
        check_derived(key, "bits", signature_bits(sig, "uchida/bits", len(bits)))
        module = suspect.require_module(self.name)
        decoded = decode(self._weight(module, layer, X), X)
        return ber_verdict(self.name, decoded, bits.numpy(), fpr, 0, {"layer": layer})
