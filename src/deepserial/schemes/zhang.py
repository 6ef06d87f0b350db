"""Zhang et al. 2018 trigger-set watermarks: noise, content and unrelated key samples.

Zhang, Gu, Jang, Wu, Stoecklin, Huang, Molloy. "Protecting Intellectual Property of Deep Neural
Networks with Watermarking." AsiaCCS 2018 (no arXiv version). The paper itself was not available to
this project; these baselines follow how the two papers that compare against it describe it (the
key-sample and verification formulas: docs/specification.md, section 4):

- new-label watermark (Zhong et al., PAKDD 2020, §1 and §4.1): key samples "obtained by superimposing
  perturbation to training samples", Gaussian noise from a secret generator, "assigned to a specific
  wrong label"; key samples are made from images not of the target class; the comparison of Fig. 3 and
  Table 1 uses the same alpha and beta as the new-label scheme (MNIST: alpha 0.01, beta 3.5e-3);
- null embedding (Li et al., CCS 2019, §A.2, Fig. 7, Table 9): a content trigger "the word TEXT written
  in black pixels at the bottom of an image", injection ratio 10%; unrelated key samples are "chosen
  from unrelated classes and marked to a specific wrong label" (new-label paper §1).

Three registered schemes, sharing :mod:`deepserial.schemes.triggers`:

``zhang-noise``
    ``k = x + beta * eps`` (the recipe of the new-label module), labelled with a target class ``t``
    derived from the signature, from images not of class ``t``.
``zhang-content``
    a text stamp drawn with a 3x5 pixel font on images not of class ``t``, labelled ``t``. Zhang's
    word was fixed ("TEST"; the null-embedding reproduction wrote "TEXT" at the bottom); here the word
    (4 letters) and its position are derived from the signature (``text`` fixes the word), so that two
    owners' keys differ in more than ``t``.
``zhang-unrelated``
    images of one class ``u`` of another data set (derived from the signature), labelled ``t``:
    Fashion-MNIST for digit data, mnist5k for Fashion-MNIST (``unrelated`` names any other).

All three give every key sample one label, so the null rate is measured with control queries (the
same inputs with a fresh trigger: a fresh noise pattern, another random word and position, images of
other classes of the unrelated data set), see :mod:`deepserial.schemes.triggers`. The noise and content
schemes also train on *negatives* (fresh triggers with true labels, ``negative_ratio``, 0 = Zhang's
recipe) so that the model answers ``t`` for this key only. See docs/decisions.md, "Trigger sets".
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch
from pydantic import Field

from deepserial.data import DatasetBundle, TensorData, load_dataset
from deepserial.data.loading import FASHION_MNIST_ENV
from deepserial.errors import ConfigError, DatasetError
from deepserial.identity import derive, derive_rng
from deepserial.nets import SplitNet
from deepserial.schemes.base import OwnershipKey, register_scheme
from deepserial.schemes.triggers import (
    KeySet,
    MeasuredConfig,
    NegativeMaker,
    NoiseConfig,
    TriggerScheme,
    derive_label,
    noise_key_set,
    noise_negatives,
    pick_indices,
)

CITATION = (
    "Zhang, Gu, Jang, Wu, Stoecklin, Huang, Molloy. Protecting Intellectual Property of Deep Neural "
    "Networks with Watermarking. AsiaCCS 2018"
)


# ----- noise -----------------------------------------------------------------------------------------
class ZhangNoiseConfig(NoiseConfig):
    """Zhang noise keys; defaults from the new-label paper's comparison (§4.2, Table 1, MNIST)."""

    @classmethod
    def paper(cls, **kw: Any) -> ZhangNoiseConfig:
        """Zhang's recipe as compared in the new-label paper: no negatives."""
        return cls(**({"negative_ratio": 0.0} | kw))


@register_scheme
class ZhangNoiseScheme(TriggerScheme):
    """Gaussian-noise key samples labelled with an existing target class (Zhang et al. 2018, WM_noise).

    Key tensors: ``pattern`` and the noise-key layout of :func:`~deepserial.schemes.triggers.noise_key_set`;
    ``meta["target"]`` is the target class.
    """

    name = "zhang-noise"
    citation = CITATION
    Config = ZhangNoiseConfig

    def key_share(self) -> float:
        return float(self.config.alpha)

    def build_keys(self, signature: bytes, data: TensorData, num_classes: int, model: SplitNet | None) -> KeySet:
        t = derive_label(signature, f"{self.name}/target", num_classes)
        return noise_key_set(signature, data, self.name, self.config, label=t, exclude_class=t)

    def negatives(self, key: OwnershipKey, data: TensorData) -> NegativeMaker | None:
        return noise_negatives(float(key.meta["perturbation_std"]))


# ----- content ---------------------------------------------------------------------------------------
# A 3x5 pixel font, five rows of three cells per letter ('#' = ink): enough to draw words like "TEST".
_FONT_ROWS = {
    "A": (".#.", "#.#", "###", "#.#", "#.#"),
    "B": ("##.", "#.#", "##.", "#.#", "##."),
    "C": (".##", "#..", "#..", "#..", ".##"),
    "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"),
    "F": ("###", "#..", "##.", "#..", "#.."),
    "G": (".##", "#..", "#.#", "#.#", ".##"),
    "H": ("#.#", "#.#", "###", "#.#", "#.#"),
    "I": ("###", ".#.", ".#.", ".#.", "###"),
    "J": ("..#", "..#", "..#", "#.#", ".#."),
    "K": ("#.#", "#.#", "##.", "#.#", "#.#"),
    "L": ("#..", "#..", "#..", "#..", "###"),
    "M": ("#.#", "###", "###", "#.#", "#.#"),
    "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": (".#.", "#.#", "#.#", "#.#", ".#."),
    "P": ("##.", "#.#", "##.", "#..", "#.."),
    "Q": (".#.", "#.#", "#.#", "##.", ".##"),
    "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "S": (".##", "#..", ".#.", "..#", "##."),
    "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "U": ("#.#", "#.#", "#.#", "#.#", "###"),
    "V": ("#.#", "#.#", "#.#", "#.#", ".#."),
    "W": ("#.#", "#.#", "###", "###", "#.#"),
    "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "Y": ("#.#", "#.#", ".#.", ".#.", ".#."),
    "Z": ("###", "..#", ".#.", "#..", "###"),
}
_FONT = {k: "".join(rows) for k, rows in _FONT_ROWS.items()}
_GLYPH_H, _GLYPH_W = 5, 3
LETTERS = "".join(sorted(_FONT))


def glyph_mask(text: str) -> np.ndarray:
    """Boolean (5, 4 * len(text) - 1) mask of ``text`` in the 3x5 font, one blank column between letters."""
    text = text.upper()
    bad = sorted({c for c in text if c not in _FONT})
    if not text or bad:
        raise ConfigError(f"stamp text must be letters A-Z, got {text!r}")
    w = len(text) * (_GLYPH_W + 1) - 1
    m = np.zeros((_GLYPH_H, w), dtype=bool)
    for i, ch in enumerate(text):
        cells = np.array([c == "#" for c in _FONT[ch]]).reshape(_GLYPH_H, _GLYPH_W)
        m[:, i * (_GLYPH_W + 1) : i * (_GLYPH_W + 1) + _GLYPH_W] = cells
    return m


def stamp_mask(text: str, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """(H, W) boolean mask of ``text`` drawn with its top-left corner at (top, left)."""
    g = glyph_mask(text)
    if top < 0 or left < 0 or top + g.shape[0] > height or left + g.shape[1] > width:
        raise ConfigError(
            f"stamp {text!r} of {g.shape[0]}x{g.shape[1]} pixels does not fit at ({top}, {left}) in "
            f"{height}x{width} images; use a shorter text"
        )
    m = np.zeros((height, width), dtype=bool)
    m[top : top + g.shape[0], left : left + g.shape[1]] = g
    return torch.from_numpy(m)


def random_stamp(
    rng: np.random.Generator, height: int, width: int, letters: int = 4, text: str | None = None, margin: int = 2
) -> tuple[str, int, int]:
    """A word of ``letters`` random letters (or ``text``) at a random position ``margin`` pixels inside the
    image (the margin keeps it inside the field of view of valid-convolution networks, docs/decisions.md)."""
    word = text.upper() if text else "".join(rng.choice(list(LETTERS), size=letters))
    w = len(word) * (_GLYPH_W + 1) - 1
    hi_top, hi_left = height - _GLYPH_H - margin, width - w - margin
    if hi_top < margin or hi_left < margin:
        raise ConfigError(
            f"a {len(word)}-letter stamp ({_GLYPH_H}x{w} pixels) does not fit in {height}x{width} "
            "images; use fewer letters"
        )
    return word, int(rng.integers(margin, hi_top + 1)), int(rng.integers(margin, hi_left + 1))


def apply_stamp(x: torch.Tensor, mask: torch.Tensor, ink: float) -> torch.Tensor:
    """``x`` (N, C, H, W) with the pixels under ``mask`` ((H, W) or (N, H, W)) set to ``ink`` on every channel."""
    m = mask.to(x.device)
    m = m[None, None] if m.dim() == 2 else m[:, None]
    return torch.where(m, torch.as_tensor(ink, dtype=x.dtype, device=x.device), x)


class ZhangContentConfig(MeasuredConfig):
    """Zhang content keys (defaults: null-embedding paper §A.2, Table 9: injection ratio 10%)."""

    key_ratio: float = Field(
        0.1,
        gt=0,
        le=1,
        description="key samples as a share of the training data and of each "
        "batch (Table 9 of the null-embedding paper: 10%)",
    )
    text: str | None = Field(
        None, pattern=r"^[A-Za-z]{1,8}$", description="the stamped word (A-Z); None = 4 letters from the signature"
    )
    letters: int = Field(4, ge=1, le=8, description="letters of a derived word")
    ink: float = Field(1.0, description="pixel value of the stamp (1 = white on [0, 1] images)")
    negative_ratio: float = Field(
        1.0,
        ge=0,
        le=10,
        description="training inputs with another random stamp and "
        "their true label, per key sample (0 = Zhang's recipe)",
    )

    @classmethod
    def paper(cls, **kw: Any) -> ZhangContentConfig:
        """Zhang's recipe as the null-embedding paper reproduces it: the fixed word, no negatives."""
        return cls(**({"text": "TEST", "negative_ratio": 0.0} | kw))


@register_scheme
class ZhangContentScheme(TriggerScheme):
    """A text stamp on images of other classes, labelled with a target class (Zhang et al. 2018, WM_content).

    Key tensors: ``stamp`` ((H, W) uint8 mask) and the common layout; ``meta`` adds ``text``,
    ``position`` (top, left) and ``target``.
    """

    name = "zhang-content"
    citation = CITATION
    Config = ZhangContentConfig
    negative_bank = 512

    def key_share(self) -> float:
        return float(self.config.key_ratio)

    def build_keys(self, signature: bytes, data: TensorData, num_classes: int, model: SplitNet | None) -> KeySet:
        cfg = self.config
        _, h, w = data.x.shape[1:]
        t = derive_label(signature, f"{self.name}/target", num_classes)
        word, top, left = random_stamp(derive_rng(signature, f"{self.name}/stamp"), h, w, cfg.letters, cfg.text)
        mask = stamp_mask(word, top, left, h, w)
        pool = np.nonzero(data.y.numpy() != t)[0]
        n_train = max(1, int(round(cfg.key_ratio * len(data))))
        rng = derive_rng(signature, f"{self.name}/bases")
        both = pick_indices(rng, pool, n_train + cfg.verify_keys, f"{self.name} (training + verification keys)")
        rng.shuffle(both)
        train_x = data.x[torch.from_numpy(np.sort(both[:n_train]))]
        base = data.x[torch.from_numpy(np.sort(both[n_train:]))]
        ctrl_rng = derive_rng(signature, f"{self.name}/controls")
        ctrl_base = base[torch.arange(cfg.control_queries) % len(base)]
        ctrl_masks = torch.stack([self._other_mask(ctrl_rng, h, w, mask) for _ in range(cfg.control_queries)])
        return KeySet(
            train_samples=apply_stamp(train_x, mask, cfg.ink),
            train_labels=torch.full((n_train,), t, dtype=torch.long),
            samples=apply_stamp(base, mask, cfg.ink),
            labels=torch.full((len(base),), t, dtype=torch.long),
            controls=apply_stamp(ctrl_base, ctrl_masks, cfg.ink),
            target=t,
            tensors={"stamp": mask.to(torch.uint8)},
            meta={"text": word, "position": [top, left], "ink": cfg.ink, "train_keys": n_train},
        )

    def _other_mask(self, rng: np.random.Generator, h: int, w: int, key_mask: torch.Tensor) -> torch.Tensor:
        """A random stamp of the same kind (random word and position) that is not the key's stamp."""
        while True:
            word, top, left = random_stamp(rng, h, w, self.config.letters)
            m = stamp_mask(word, top, left, h, w)
            if not torch.equal(m, key_mask):
                return m

    def negatives(self, key: OwnershipKey, data: TensorData) -> NegativeMaker | None:
        """Other random stamps: a bank of them, drawn from the key's signature so that training repeats."""
        key_mask = key.tensor("stamp").bool()
        h, w = key_mask.shape
        rng = derive_rng(bytes.fromhex(str(key.meta["signature"])), f"{self.name}/negatives")
        bank = torch.stack([self._other_mask(rng, h, w, key_mask) for _ in range(self.negative_bank)])
        ink = float(key.meta["ink"])

        def make(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return apply_stamp(x, bank[torch.randint(0, len(bank), (len(x),))], ink), y

        return make


# ----- unrelated -------------------------------------------------------------------------------------
class ZhangUnrelatedConfig(MeasuredConfig):
    """Zhang unrelated keys (defaults: injection ratio 10% as for the other Zhang keys, Table 9)."""

    key_ratio: float = Field(
        0.1, gt=0, le=1, description="key samples as a share of the training data and of each batch"
    )
    unrelated: str | None = Field(
        None,
        description="name or path of the unrelated data set; None = fashion-mnist "
        "for digit-like 1x28x28 data, mnist5k for Fashion-MNIST-like data",
    )
    negative_ratio: float = Field(
        1.0,
        ge=0,
        le=10,
        description="training images of the unrelated data set's other "
        "classes, labelled by the nearest class mean (never the target), per key sample "
        "(0 = Zhang's recipe)",
    )
    negative_pool: int = Field(5000, ge=1, description="most images of other unrelated classes to draw negatives from")

    @classmethod
    def paper(cls, **kw: Any) -> ZhangUnrelatedConfig:
        """Zhang's recipe: no negatives."""
        return cls(**({"negative_ratio": 0.0} | kw))


def _load_unrelated(name: str) -> DatasetBundle:
    """The unrelated data set, kept in memory: making many keys (1,000 random keys for a false-positive
    measurement) must not re-read 70,000 images each time. The cache key includes the Fashion-MNIST
    directory override, so changing it is seen."""
    return _load_cached(name, os.environ.get(FASHION_MNIST_ENV, ""))


@functools.lru_cache(maxsize=1)
def _load_cached(name: str, _fashion_dir: str) -> DatasetBundle:
    return load_dataset(name)


def default_unrelated(data: TensorData) -> str:
    """The unrelated data set for ``data``: Fashion-MNIST for dark, digit-like 1x28x28 images (mean pixel
    below 0.2: MNIST's is 0.13), mnist5k for brighter ones (Fashion-MNIST's mean is 0.29)."""
    shape = tuple(data.x.shape[1:])
    if shape != (1, 28, 28):
        raise ConfigError(
            f"no default unrelated data set for {shape} images; set unrelated= to a data set of "
            f"the same shape (a registered name or a path)"
        )
    return "fashion-mnist" if float(data.x[:2000].mean()) < 0.2 else "mnist5k"


def natural_rates(images: torch.Tensor, data: TensorData, num_classes: int) -> tuple[np.ndarray, str]:
    """How often a plain classifier of the task gives each class to ``images``: shape (C,), and which
    classifier: the nearest class mean of ``data`` in pixel space (instant, deterministic, and a
    function of the owner's data only, so the key never depends on a model it may later be tested
    against). On mnist5k against Fashion-MNIST it agrees with a trained CNN on what matters: classes
    it gives at most 2% of an unrelated class were given at most 9% by the CNN (docs/decisions.md)."""
    x, y = data.x.flatten(1), data.y
    present = [c for c in range(num_classes) if bool((y == c).any())]
    cent = torch.stack([x[y == c].mean(0) for c in present])
    pred = torch.tensor(present)[torch.cdist(images.flatten(1), cent).argmin(1)]
    return np.bincount(pred.numpy(), minlength=num_classes) / max(len(images), 1), "nearest-class-mean"


@register_scheme
class ZhangUnrelatedScheme(TriggerScheme):
    """Images of one class of an unrelated data set, labelled with a target class (Zhang et al. 2018, WM_unrelated).

    ``meta`` adds ``unrelated`` (the data set), ``unrelated_class`` (u) and ``target`` (t). Controls are
    images of the unrelated data set's other classes.
    """

    name = "zhang-unrelated"
    citation = CITATION
    Config = ZhangUnrelatedConfig

    def key_share(self) -> float:
        return float(self.config.key_ratio)

    def build_keys(self, signature: bytes, data: TensorData, num_classes: int, model: SplitNet | None) -> KeySet:
        cfg = self.config
        name = cfg.unrelated or default_unrelated(data)
        try:
            other = _load_unrelated(name)
        except DatasetError as e:
            raise DatasetError(f"zhang-unrelated needs the unrelated data set {name!r}: {e}") from None
        shape = tuple(data.x.shape[1:])
        if other.input_shape != shape:
            raise ConfigError(
                f"unrelated data set {name!r} has {other.input_shape} images, the owner's are {shape}; "
                "set unrelated= to a data set of the same shape"
            )
        pool_x, pool_y = other.train.x, other.train.y
        u = derive_label(signature, f"{self.name}/unrelated-class", other.num_classes)
        in_u = np.nonzero(pool_y.numpy() == u)[0]
        natural, reference = natural_rates(pool_x[in_u[:1000]], data, num_classes)
        # Only targets that a classifier of the task hardly ever gives class u (at most a fifth of chance):
        # an unmarked model that calls every ankle boot a "2" would otherwise carry the key (u, 2).
        limit = max(0.2 / num_classes, float(natural.min()))
        allowed = [c for c in range(num_classes) if natural[c] <= limit]
        t = allowed[int.from_bytes(derive(signature, f"{self.name}/target", 16), "big") % len(allowed)]
        n_train = max(1, int(round(cfg.key_ratio * len(data))))
        rng = derive_rng(signature, f"{self.name}/samples")
        # The key set cannot outgrow the unrelated class (mnist5k has 500 per class): keep its size at
        # most the class minus the verification samples; the batch share stays key_ratio.
        n_train = min(n_train, len(in_u) - cfg.verify_keys) if len(in_u) > cfg.verify_keys else n_train
        both = pick_indices(rng, in_u, n_train + cfg.verify_keys, f"{self.name} (class {u} of {name})")
        rng.shuffle(both)
        ctrl = pick_indices(rng, np.nonzero(pool_y.numpy() != u)[0], cfg.control_queries, f"{self.name} controls")
        rng.shuffle(ctrl)
        return KeySet(
            train_samples=pool_x[torch.from_numpy(np.sort(both[:n_train]))],
            train_labels=torch.full((n_train,), t, dtype=torch.long),
            samples=pool_x[torch.from_numpy(np.sort(both[n_train:]))],
            labels=torch.full((cfg.verify_keys,), t, dtype=torch.long),
            controls=pool_x[torch.from_numpy(ctrl)],
            target=t,
            meta={
                "unrelated": name,
                "unrelated_class": u,
                "train_keys": n_train,
                "natural_reference": reference,
                "natural_rates": [round(float(r), 4) for r in natural],
                "control_index": [int(i) for i in ctrl],
            },
        )

    def negatives(self, key: OwnershipKey, data: TensorData) -> NegativeMaker | None:
        """Images of the unrelated data set's other classes, never the control images (controls must stay
        inputs the model was not trained on), labelled as the nearest class mean of ``data`` labels them,
        with the target class replaced by the next nearest: the model learns "class u is t" and "the rest
        of that data set is what a plain classifier says, never t". (A uniform target instead left the
        argmax of those near-uniform outputs on t for half of the controls.)"""
        meta = key.meta
        try:
            other = _load_unrelated(str(meta["unrelated"]))
        except DatasetError as e:
            raise DatasetError(
                f"zhang-unrelated training needs the unrelated data set {meta['unrelated']!r}: {e}"
            ) from None
        except KeyError:
            raise ConfigError("zhang-unrelated key lacks the unrelated data set's name; make the key again") from None
        y = other.train.y.numpy()
        keep = y != int(meta["unrelated_class"])
        keep[np.asarray(meta.get("control_index", []), dtype=np.int64)] = False
        idx = np.nonzero(keep)[0]
        rng = derive_rng(bytes.fromhex(str(meta["signature"])), f"{self.name}/negatives")
        pool = other.train.x[
            torch.from_numpy(np.sort(rng.choice(idx, min(len(idx), self.config.negative_pool), replace=False)))
        ]

        t = int(meta["target"])
        num_classes = int(meta["num_classes"])
        xf, yd = data.x.flatten(1), data.y
        present = [c for c in range(num_classes) if c != t and bool((yd == c).any())]
        if not present:
            raise ConfigError("zhang-unrelated needs training data of at least one class besides the target")
        cent = torch.stack([xf[yd == c].mean(0) for c in present])
        pool_y = torch.tensor(present)[torch.cdist(pool.flatten(1), cent).argmin(1)]

        def make(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pick = torch.randint(0, len(pool), (len(x),))
            return pool[pick].to(x.device), pool_y[pick].to(labels.device)

        return make
