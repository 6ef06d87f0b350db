"""Input preprocessing: transform every input before the suspect model sees it.

An attacker who deploys a stolen model can pass each query through a transformation first: natural
images keep their label, while a watermark's trigger inputs, often fragile patterns, lose theirs. The
attacked model is a wrapper (:class:`PreprocessedNet`) that transforms, then calls the model.
Evaluated as removal attacks by Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image
Classification DNN Watermarking?", IEEE S&P 2022; defaults from the Watermark-Robustness-Toolbox
(files under ``wrt/attacks/removal/``, configs ``configs/cifar10/attack_configs/``):

- ``jpeg``: JPEG compression at ``quality = 95`` (``jpeg_compression.py``; ``jpeg_compression1/2``:
  65 / 45), through Pillow (a dependency of this package): each image is scaled to 8 bits, saved as
  JPEG in memory (mode "L" for one channel, "RGB" for three) and decoded again. (WRT truncates to 8
  bits, here they are rounded.) Dziugaite, Ghahramani, Roy, arXiv:1608.00853.
- ``noise``: additive Gaussian noise of standard deviation ``sigma = 0.01`` and mean 0, clipped to
  [0, 1] (``input_noising.py``; ``input_noising1/2/3``: 0.03 / 0.05 / 0.1); fresh noise on every
  call, drawn from a generator seeded by ``budget.seed``. WRT's reference: arXiv:1707.06728.
- ``quantize``: ``levels = 16`` equal bins over [0, 1], each value replaced by its bin's midpoint
  (``input_quantization.py``, ``num_divisions``; ``input_quantization1/2``: 12 / 10). WRT's loop
  leaves the top bin unquantized; here every bin is, so at most ``levels`` values remain. WRT's
  reference: arXiv:1904.08444.
- ``gaussian-blur``: a Gaussian filter of standard deviation ``blur_sigma = 0.5`` over a
  ``2 * ceil(3 * sigma) + 1`` square kernel (WRT's ``ceil(6 sigma + 1)`` made odd; 5 x 5 for 0.5),
  normalised to sum 1, zero padding (``input_smoothing.py``, ``GaussianSmoothingPreprocessor``;
  ``input_gaussian_smoothing1/2``: 0.6 / 0.7). Xu, Evans, Qi, "Feature Squeezing: Detecting
  Adversarial Examples in Deep Neural Networks", NDSS 2018 (arXiv:1704.01155).
- ``mean-blur`` / ``median-blur``: a ``kernel_size = 3`` box mean (zero padding) or median (edges
  mirrored with the edge pixel repeated, scipy's "reflect") filter (``input_smoothing.py``; WRT
  fine-tunes 20 epochs behind the mean and median filters: ``fine_tune=True`` with
  ``AttackBudget(epochs=20)``).
- ``hflip``: every input mirrored left to right (``input_horizontal_flipping.py``; no parameters).

Every filter works per channel on ``(N, C, H, W)`` inputs in [0, 1] and returns the same shape. No
training happens unless ``fine_tune`` is set: then the wrapped model is fine-tuned on the attacker's
data seen through the transformation, for the budget's epochs (WRT's smoothing attacks). The wrapper
keeps the model's ``features`` and ``classifier`` as its own, so its state dict is the model's: a
saved attacked model holds the weights only, and the transformation is recorded in the attack log.
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from deepserial.attacks.base import Attack, AttackBudget, AttackLog, register_attack
from deepserial.attacks.targets import LabelSource, fine_tune, training_targets
from deepserial.data import TensorData
from deepserial.errors import ConfigError
from deepserial.nets import SplitNet
from deepserial.training import EpochCallback


class JpegCompression(nn.Module):
    """Round-trip every image through an in-memory JPEG file at ``quality`` (1-95, Pillow's scale)."""

    def __init__(self, quality: int = 95) -> None:
        super().__init__()
        if not 1 <= quality <= 100:
            raise ConfigError(f"JPEG quality must lie in 1..100, got {quality}")
        self.quality = int(quality)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels not in (1, 3):
            raise ConfigError(f"JPEG compression takes 1- or 3-channel images, got {channels} channels")
        mode = "L" if channels == 1 else "RGB"
        pixels = (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).numpy()
        out = np.empty_like(pixels)
        for i, img in enumerate(pixels):
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if mode == "L" else img, mode=mode).save(
                buf, format="JPEG", quality=self.quality
            )
            buf.seek(0)
            decoded = np.asarray(Image.open(buf).convert(mode))
            out[i] = decoded[..., None] if mode == "L" else decoded
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class GaussianNoise(nn.Module):
    """``clip(x + N(0, sigma^2), 0, 1)``, fresh noise on every call from a seeded generator."""

    def __init__(self, sigma: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator).to(x.device, x.dtype)
        return (x + self.sigma * noise).clamp(0, 1)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class InputQuantization(nn.Module):
    """Each value replaced by the midpoint of its bin among ``levels`` equal bins of [0, 1]."""

    def __init__(self, levels: int = 16) -> None:
        super().__init__()
        if levels < 2:
            raise ConfigError(f"input quantization needs at least 2 levels, got {levels}")
        self.levels = int(levels)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bins = torch.floor(x.clamp(0, 1) * self.levels).clamp(max=self.levels - 1)
        return (bins + 0.5) / self.levels

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The ``(2r + 1, 2r + 1)`` Gaussian kernel, ``r = ceil(3 sigma)``, summing to 1."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


class KernelFilter(nn.Module):
    """Filter every channel with one 2-D kernel (odd size, zero padding, same output size)."""

    def __init__(self, kernel: torch.Tensor, name: str) -> None:
        super().__init__()
        if kernel.dim() != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[0] != kernel.shape[1]:
            raise ConfigError(f"{name} needs an odd square kernel, got shape {tuple(kernel.shape)}")
        self.register_buffer("kernel", kernel.float(), persistent=False)
        self.label = name

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = x.shape[1], self.kernel.shape[0]
        weight = self.kernel.to(x.device, x.dtype).expand(c, 1, k, k)
        return F.conv2d(x, weight, padding=k // 2, groups=c)

    def extra_repr(self) -> str:
        return f"{self.label}, kernel {tuple(self.kernel.shape)}"


class MedianFilter(nn.Module):
    """The median of each ``kernel_size`` x ``kernel_size`` window per channel (edges mirrored)."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"the median filter needs an odd kernel size, got {kernel_size}")
        self.kernel_size = int(kernel_size)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size // 2
        if p == 0:
            return x
        if p > min(x.shape[-2:]):
            raise ConfigError(f"a {self.kernel_size}-pixel median filter is too large for {tuple(x.shape[-2:])} images")
        # scipy's "reflect" edges (d c b a | a b c d | d c b a): the border pixel is repeated
        x = torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], dim=-2)
        x = torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], dim=-1)
        windows = x.unfold(-2, self.kernel_size, 1).unfold(-2, self.kernel_size, 1)
        return windows.reshape(*windows.shape[:4], -1).median(dim=-1).values

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class HorizontalFlip(nn.Module):
    """Every image mirrored left to right (the last axis)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


class PreprocessedNet(SplitNet):
    """A :class:`~deepserial.nets.SplitNet` that transforms its inputs with ``preprocess`` first.

    It shares ``features`` and ``classifier`` with the wrapped model (its state dict is the model's,
    so it saves and loads as the bare network) and answers ``classifier(features(preprocess(x)))``.
    Wrapping a wrapper chains the transformations, the earlier one first.
    """

    def __init__(self, model: SplitNet, preprocess: nn.Module) -> None:
        super().__init__(model.features, model.classifier, model.feature_dim)
        if isinstance(model, PreprocessedNet):
            preprocess = nn.Sequential(model.preprocess, preprocess)
        self.preprocess = preprocess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.preprocess(x)))


Method = Literal["jpeg", "noise", "quantize", "gaussian-blur", "mean-blur", "median-blur", "hflip"]


class InputPreprocessingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Method = "jpeg"
    quality: int = Field(95, ge=1, le=100, description="JPEG quality (WRT: 95)")
    sigma: float = Field(0.01, ge=0, description="Gaussian noise standard deviation (WRT: 0.01)")
    levels: int = Field(16, ge=2, description="input quantization bins over [0, 1] (WRT: 16)")
    blur_sigma: float = Field(0.5, gt=0, description="Gaussian blur standard deviation (WRT: 0.5)")
    kernel_size: int = Field(3, ge=1, description="mean / median filter size, odd (WRT: 3)")
    fine_tune: bool = Field(False, description="fine-tune behind the transformation for the budget's epochs")
    labels: LabelSource = "true"


def make_preprocessor(cfg: InputPreprocessingConfig, seed: int = 0) -> nn.Module:
    """The transformation ``cfg`` names, as a parameter-free module."""
    if cfg.method == "jpeg":
        return JpegCompression(cfg.quality)
    if cfg.method == "noise":
        return GaussianNoise(cfg.sigma, seed)
    if cfg.method == "quantize":
        return InputQuantization(cfg.levels)
    if cfg.method == "gaussian-blur":
        return KernelFilter(gaussian_kernel(cfg.blur_sigma), f"Gaussian blur sigma={cfg.blur_sigma}")
    if cfg.method == "mean-blur":
        k = cfg.kernel_size
        if k % 2 == 0:
            raise ConfigError(f"the mean filter needs an odd kernel size, got {k}")
        return KernelFilter(torch.full((k, k), 1.0 / (k * k)), f"mean blur {k}x{k}")
    if cfg.method == "hflip":
        return HorizontalFlip()
    return MedianFilter(cfg.kernel_size)


@register_attack
class InputPreprocessing(Attack):
    r"""Input preprocessing (JPEG, noise, quantization, blur) as evaluated in 'SoK: How Robust is Image
    Classification Deep Neural Network Watermarking?' (Lukas et al., IEEE S&P 2022), WRT's
    ``jpeg_compression.py``, ``input_noising.py``, ``input_quantization.py``, ``input_smoothing.py``,
    ``input_horizontal_flipping.py``.

    Arguments (``Config``):
        method (str): "jpeg", "noise", "quantize", "gaussian-blur", "mean-blur", "median-blur" or "hflip".
        quality (int): JPEG quality. (Default: 95)
        sigma (float): noise standard deviation. (Default: 0.01)
        levels (int): quantization bins. (Default: 16)
        blur_sigma (float): Gaussian blur standard deviation. (Default: 0.5)
        kernel_size (int): mean / median filter size. (Default: 3)
        fine_tune (bool): fine-tune behind the transformation for ``budget.epochs``. (Default: False)
        labels (str): fine-tune on the attacker's labels ("true") or the victim's softmax ("victim").

    Shape:
        - inputs: :math:`(N, C, H, W)` in [0, 1] (JPEG: C = 1 or 3); transformed: the same shape.

    Examples::
        >>> attacked, log = get_attack("input-preprocessing", {"method": "jpeg", "quality": 65}).run(model, data)
        >>> attacked.preprocess
    """

    name = "input-preprocessing"
    citation = (
        "Lukas, Jiang, Li, Kerschbaum. SoK: How Robust is Image Classification Deep Neural Network "
        "Watermarking? IEEE S&P 2022; WRT wrt/attacks/removal/jpeg_compression.py, input_noising.py, "
        "input_quantization.py, input_smoothing.py, input_horizontal_flipping.py"
    )
    Config = InputPreprocessingConfig

    def _run(
        self,
        model: SplitNet,
        data: TensorData,
        budget: AttackBudget,
        log: AttackLog,
        on_epoch_end: EpochCallback | None,
    ) -> SplitNet:
        cfg = self.config
        if cfg.fine_tune:
            train_data, targets = training_targets(model, data, cfg.labels, budget, log)
        wrapped = PreprocessedNet(model, make_preprocessor(cfg, budget.seed))
        log.details["preprocess"] = repr(wrapped.preprocess)
        if cfg.fine_tune:
            fine_tune(wrapped, train_data, targets, budget, log, on_epoch_end, desc=f"{cfg.method}: fine-tuning")
        else:
            log.samples = 0
        return wrapped


def transforms_inputs(attack: Attack) -> bool:
    """Whether ``attack`` returns a model that transforms its inputs (input preprocessing, alone or as a
    step of a combined attack): the transformation is not in the weights, so a saved file would lose it."""
    if isinstance(attack, InputPreprocessing):
        return True
    return any(transforms_inputs(a) for a in getattr(attack, "attacks", []))
