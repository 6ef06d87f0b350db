"""Null / dual embedding: a piracy-resistant ownership watermark trained in from scratch.

Li, Wenger, Zheng, Zhao. "Piracy Resistant Watermarks for Deep Neural Networks." arXiv:1910.01226
(2019; revised 2020). Transform, the filter, the training batch and the verification statistic are
written out in docs/specification.md, section 3.

The owner signs a verifier string (Algorithm 1); ``Transform(signature)`` (Algorithm 2) derives a
watermark from the signature: an ``n x n`` square of 0/1 bits at a position, a true-embedding label
``y_W`` and an extreme value ``lambda``, each from SHA-256 of the signature with its own domain tag
(:func:`deepserial.identity.derive`). The filter ``x ⊗ p`` writes ``+lambda`` under the 1 bits and
``-lambda`` under the 0 bits and leaves every other pixel alone; ``p̄`` swaps 0 and 1 (§5.1, §5.2).
The model is trained from scratch on normal data plus

- the **null embedding** ``F(x ⊗ p) = y`` (the true label: the pattern must not change the answer),
- the **true embedding** ``F(x ⊗ p̄) = y_W`` (the swapped pattern is a trigger for ``y_W``),

mixed into each batch at the injection ratios of Table 14 (§6.2). Verification (Algorithm 3) checks
the owner's signature over the verifier string, re-derives the watermark from the signature and
queries the suspect on owner-held images with ``p`` and with ``p̄``. The paper's claim (§5.1,
Observation 2; §7.2, Table 3) is that because normal classification is learnt inside the constraint
that ``p`` defines, training a pirate pattern into the model later breaks it; the attack is
:func:`deepserial.attacks.overwrite.pirate_null_embedding`, and whether the claim holds here is
measured, not assumed (docs/decisions.md).

Defaults, with where they come from:

- pattern 6 x 6 (§9, "6 x 6 = 36 pixels" for the paper's inputs; the Digit task is 28 x 28), on
  every channel, inside the part of the input the network can see (the DSN Table 7 net never sees
  rows/columns 26-27 of a 28 x 28 image; see docs/decisions.md);
- ``lambda`` an integer in [2000, 3000] derived from the signature: §7.1 uses 2000 and Algorithm 2
  derives ``lambda`` from a hash, but the range in Algorithm 2 did not survive in the paper's text
  (decision, docs/decisions.md). Inputs are never clamped: ``x ⊗ p`` is far outside [0, 1] on purpose;
- injection ratio 0.5 for both embeddings: Table 14, row "Digit" (MNIST), the row for ``mnist5k`` and
  ``fashion-mnist``. Read as samples: each batch of ``B`` normal images adds ``round(0.5 B)``
  null-embedded and ``round(0.5 B)`` true-embedded copies of images of that batch, and the loss is
  the mean cross-entropy over all ``2 B`` of them (the paper "combines the watermark training data
  with its original training data", §6.2). Table 14 (``traffic``, ``object``) uses 0.1;
- lambda warm-up (ours, not in the paper): during the first 3 epochs lambda grows geometrically from
  20 to its value, then stays there. The paper trains Digit for 300 epochs on 60,000 images (Table 14);
  with the few thousand images and tens of epochs of ``mnist5k``, training at +-2000 from the first
  step often never learns the null embedding (normal accuracy rises, null accuracy stays near 10%),
  while after the warm-up the model keeps its null embedding at every lambda from 200 up. Set
  ``lam_warmup_epochs=0`` for the paper's recipe exactly (docs/decisions.md);
- threshold ``T`` = 0.8: the value of ``T`` in §7.1 was lost from the text; the paper says outcomes
  were the same for ``T`` from 0.5 to 0.8, and we take the strict end;
- 200 verification images (the paper does not say how many), drawn from the data given to
  :meth:`NullEmbeddingScheme.make_key` by a generator seeded from the signature.

The verdict is a hypothesis test, not only the paper's ``min(acc_null, acc_true) >= T``; see
:meth:`NullEmbeddingScheme.verify` for the statistic and its null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from deepserial import stats
from deepserial.data import TensorData
from deepserial.errors import ConfigError, GeometryError, IdentityError, InputError, IntegrityError
from deepserial.identity import derive, derive_rng
from deepserial.nets import SplitNet, check_visible, visible_mask
from deepserial.schemes.base import OwnershipKey, Provenance, Scheme, Verdict, register_scheme
from deepserial.serial import SerialGeometry, scale_for, stamp
from deepserial.suspect import Suspect
from deepserial.training import Batch, BatchLoss, LossOut, TrainConfig, TrainLog, fit

SCHEME = "null-embedding"
CITATION = "Li, Wenger, Zheng, Zhao. Piracy Resistant Watermarks for Deep Neural Networks. arXiv:1910.01226"
KEY_VERSION = 1

# Domain tags of Transform (Algorithm 2): one per derived quantity, so they are independent.
TAG_BITS = "null_embedding/bits"
TAG_POSITION = "null_embedding/position"
TAG_LABEL = "null_embedding/true-label"
TAG_LAMBDA = "null_embedding/lambda"
TAG_VERIFY_IMAGES = "null_embedding/verification-images"

#: Injection ratio per task of Table 14 (the same for true and null embedding).
TABLE14_INJECT_RATIO = {"digit": 0.5, "face": 0.5, "traffic": 0.1, "object": 0.1}

Field4 = tuple[int, int, int, int]  # (first row, last row, first column, last column), inclusive


class NullEmbeddingConfig(BaseModel):
    """Settings of null / dual embedding (validated; unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    pattern_size: int = Field(6, ge=1, le=255, description="side n of the n x n pattern (§9: 6 x 6)")
    pixels_per_bit: int = Field(
        0,
        ge=0,
        le=32,
        description="pixels per pattern bit side; 0: from the input size "
        "(§9: 6 x 6 at 32-48 px, 24 x 24 pixels at 224; deepserial.serial.scale_for)",
    )
    lam_min: int = Field(2000, ge=1, description="smallest extreme value lambda (§7.1: 2000)")
    lam_max: int = Field(3000, ge=1, description="largest extreme value lambda (Algorithm 2 derives it)")
    ratio_true: float = Field(0.5, ge=0, le=8, description="true-embedding samples per normal sample (Table 14)")
    ratio_null: float = Field(0.5, ge=0, le=8, description="null-embedding samples per normal sample (Table 14)")
    lam_warmup_epochs: int = Field(3, ge=0, description="epochs over which lambda grows to its value (ours)")
    lam_warmup_start: float = Field(20.0, gt=0, description="lambda of the first warm-up epoch")
    threshold: float = Field(0.8, gt=0, le=1, description="T of Algorithm 3: min(acc_null, acc_true) >= T")
    verify_samples: int = Field(200, ge=1, description="owner-held images the key keeps for verification")
    verify_chunk: int = Field(50, ge=1, description="images asked per round of verification queries")
    sequential: bool = Field(True, description="stop verifying once min(acc_null, acc_true) >= T is impossible")

    @model_validator(mode="after")
    def _ranges(self) -> NullEmbeddingConfig:
        if self.lam_max < self.lam_min:
            raise ValueError(f"lam_max ({self.lam_max}) must be >= lam_min ({self.lam_min})")
        if self.ratio_true + self.ratio_null <= 0:
            raise ValueError("ratio_true + ratio_null must be > 0, or nothing is embedded")
        return self

    @classmethod
    def for_task(cls, task: str, **kw: object) -> NullEmbeddingConfig:
        """The Table 14 injection ratio of ``task`` (digit, face, traffic, object) for both embeddings."""
        try:
            r = TABLE14_INJECT_RATIO[task]
        except KeyError:
            raise ConfigError(
                f"unknown Table 14 task {task!r}; choose one of {', '.join(TABLE14_INJECT_RATIO)}"
            ) from None
        return cls(ratio_true=r, ratio_null=r, **kw)  # type: ignore[arg-type]


# ----- Transform (Algorithm 2) and the filter ------------------------------------------------------
@dataclass(frozen=True)
class Watermark:
    """The output of Transform: pattern bits at a geometry, the true-embedding label, lambda."""

    geometry: SerialGeometry
    bits: np.ndarray  # (n, n) uint8
    y_w: int
    lam: float

    def null(self, x: torch.Tensor) -> torch.Tensor:
        """``x ⊗ p``: +lambda under the 1 bits, -lambda under the 0 bits, the rest unchanged (no clamp)."""
        return stamp(x, self.geometry, self.bits, values=(-self.lam, self.lam))

    def true(self, x: torch.Tensor) -> torch.Tensor:
        """``x ⊗ p̄``: the same with 0 and 1 swapped."""
        return stamp(x, self.geometry, 1 - self.bits, values=(-self.lam, self.lam))

    def same_as(self, other: Watermark) -> bool:
        return (
            self.geometry == other.geometry
            and np.array_equal(self.bits, other.bits)
            and self.y_w == other.y_w
            and self.lam == other.lam
        )


def _uint(signature: bytes, tag: str) -> int:
    """A 128-bit integer from the signature for one purpose (modulo bias below 2^-100 here)."""
    return int.from_bytes(derive(signature, tag, 16), "big")


def transform(
    signature: bytes,
    input_shape: Sequence[int],
    num_classes: int,
    pattern_size: int = 6,
    field: Field4 | None = None,
    lam_range: tuple[int, int] = (2000, 3000),
    scale: int = 1,
) -> Watermark:
    """Algorithm 2: the ownership watermark defined by ``signature``.

    ``bits`` (n x n) from the tag ``null_embedding/bits``; the top-left corner from
    ``null_embedding/position``, uniform over the positions where the square lies inside ``field``
    (default: the whole image; :func:`visible_field` gives the part a network can see); ``y_W`` from
    ``null_embedding/true-label`` modulo ``num_classes``; ``lambda`` from ``null_embedding/lambda``,
    an integer in ``lam_range`` (inclusive). ``scale``: pixels per bit side (§9's larger patterns on
    larger inputs). Deterministic: the same inputs give the same watermark on every machine.
    """
    if not signature:
        raise IdentityError("empty signature: sign a verifier string with the owner's key first")
    c, h, w = (int(v) for v in input_shape)
    n = int(pattern_size)
    px = n * int(scale)
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    lo, hi = int(lam_range[0]), int(lam_range[1])
    if not (1 <= lo <= hi):
        raise ConfigError(f"lambda range {lam_range} must satisfy 1 <= min <= max")
    r0, r1, c0, c1 = field if field is not None else (0, h - 1, 0, w - 1)
    if not (0 <= r0 <= r1 < h and 0 <= c0 <= c1 < w):
        raise GeometryError(f"field rows {r0}-{r1}, columns {c0}-{c1} is not inside a {h}x{w} input")
    n_rows, n_cols = r1 - r0 + 2 - px, c1 - c0 + 2 - px  # possible top rows / left columns
    if n < 1 or n_rows < 1 or n_cols < 1:
        raise GeometryError(
            f"a {px}x{px}-pixel pattern does not fit rows {r0}-{r1}, columns {c0}-{c1} of the input; "
            "choose a smaller pattern_size"
        )
    pos = derive(signature, TAG_POSITION, 32)
    top = r0 + int.from_bytes(pos[:16], "big") % n_rows
    left = c0 + int.from_bytes(pos[16:], "big") % n_cols
    raw = derive(signature, TAG_BITS, (n * n + 7) // 8)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[: n * n].reshape(n, n).astype(np.uint8)
    y_w = _uint(signature, TAG_LABEL) % int(num_classes)
    lam = float(lo + _uint(signature, TAG_LAMBDA) % (hi - lo + 1))
    return Watermark(SerialGeometry(n, n, top, left, scale=int(scale)), bits, int(y_w), lam)


def visible_field(model: nn.Module, input_shape: Sequence[int]) -> Field4:
    """Rows and columns of the input that reach ``model``'s output (bounding box of the gradient
    check :func:`deepserial.nets.visible_mask`): a pattern pixel the network cannot see embeds nothing."""
    mask = visible_mask(model, tuple(input_shape))
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if len(rows) == 0:
        raise GeometryError("no input pixel reaches the network's output; is the network built correctly?")
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


# ----- training (§6.2) ---------------------------------------------------------------------------
def _count(ratio: float, b: int) -> int:
    return int(math.floor(ratio * b + 0.5))


def dual_batch(
    x: torch.Tensor, y: torch.Tensor, wm: Watermark, ratio_true: float, ratio_null: float
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """One training batch of §6.2: the ``B`` normal samples, then ``round(ratio_null * B)`` copies
    with ``p`` labelled with their true label, then ``round(ratio_true * B)`` copies with ``p̄``
    labelled ``y_W``. The copies are taken from the batch in order (cycling when a ratio exceeds 1),
    so with ratios 0.5 + 0.5 every image of the batch is embedded exactly once.
    Returns inputs, labels and the three counts."""
    b = len(x)
    k_null, k_true = _count(ratio_null, b), _count(ratio_true, b)
    idx = torch.arange(k_null + k_true, device=x.device) % max(b, 1)
    i_null, i_true = idx[:k_null], idx[k_null:]
    xs = torch.cat([x, wm.null(x[i_null]), wm.true(x[i_true])])
    ys = torch.cat([y, y[i_null], torch.full((k_true,), wm.y_w, dtype=y.dtype, device=y.device)])
    return xs, ys, {"normal": b, "null": k_null, "true": k_true}


class DualLoss:
    """The per-batch loss of §6.2 for :func:`deepserial.training.fit`: mean cross-entropy over the
    normal, null-embedded and true-embedded samples of :func:`dual_batch`, with their accuracies (%)
    as metrics ``acc``, ``acc_null`` and ``acc_true``.

    ``warmup_epochs`` > 0 raises lambda geometrically from ``warmup_start`` to the watermark's value
    over the first epochs (epoch ``e`` < W uses ``lam * (warmup_start / lam) ** (1 - e / W)``), then
    keeps it; :meth:`on_epoch_end` is the :func:`fit` callback that advances it. Not in the paper: see
    the module docstring and docs/decisions.md.
    """

    def __init__(
        self,
        wm: Watermark,
        ratio_true: float = 0.5,
        ratio_null: float = 0.5,
        warmup_epochs: int = 0,
        warmup_start: float = 20.0,
    ) -> None:
        self.wm, self.ratio_true, self.ratio_null = wm, ratio_true, ratio_null
        self.warmup_epochs, self.warmup_start = int(warmup_epochs), float(warmup_start)
        self.current = wm
        self.set_epoch(0)

    def lam_at(self, epoch: int) -> float:
        """Lambda used in (0-based) ``epoch``."""
        lam = self.wm.lam
        if epoch >= self.warmup_epochs or self.warmup_start >= lam:
            return lam
        return float(lam * (self.warmup_start / lam) ** (1.0 - epoch / self.warmup_epochs))

    def set_epoch(self, epoch: int) -> None:
        self.current = replace(self.wm, lam=self.lam_at(epoch))

    def on_epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        """``fit`` callback (``epoch`` counts from 1): log this epoch's lambda, set the next one's."""
        lam = self.current.lam
        self.set_epoch(epoch)
        return {"lam": lam}

    def __call__(self, net: nn.Module, batch: Batch) -> LossOut:
        xs, ys, n = dual_batch(batch.x, batch.y, self.current, self.ratio_true, self.ratio_null)
        logits = net(xs)
        loss = F.cross_entropy(logits, ys)
        hit = (logits.detach().argmax(1) == ys).float()
        a, b = n["normal"], n["normal"] + n["null"]
        metrics = {"acc": 100.0 * float(hit[:a].mean())}
        if n["null"]:
            metrics["acc_null"] = 100.0 * float(hit[a:b].mean())
        if n["true"]:
            metrics["acc_true"] = 100.0 * float(hit[b:].mean())
        return LossOut(loss, len(xs), metrics)


def make_dual_loss(wm: Watermark, ratio_true: float = 0.5, ratio_null: float = 0.5) -> BatchLoss:
    """The §6.2 loss at the watermark's own lambda throughout (no warm-up)."""
    return DualLoss(wm, ratio_true, ratio_null)


# ----- the scheme ----------------------------------------------------------------------------------
@register_scheme
class NullEmbeddingScheme(Scheme):
    """Null / dual embedding (Li et al., arXiv:1910.01226) behind the common Scheme interface.

    Ownership key: ``meta`` holds the provenance (``verifier``, ``signature`` hex, ``owner_public_key``
    PEM, written by :meth:`~deepserial.schemes.base.Scheme.make_signed_key`), the Transform parameters
    (input shape, classes, pattern size, field, lambda range) and, for reading only, the derived
    geometry, ``y_w`` and ``lam``; ``tensors`` hold ``bits`` (n x n, uint8; informative: verification
    re-derives them and refuses a key where they differ), ``verify_x`` and ``verify_y`` (the
    owner-held verification images and their labels).
    """

    name = SCHEME
    citation = CITATION
    Config = NullEmbeddingConfig
    config: NullEmbeddingConfig

    # ----- keys (Algorithms 1 and 2) -----
    def make_key(
        self, signature: bytes, data: TensorData, num_classes: int, model: SplitNet | None = None
    ) -> OwnershipKey:
        """The ownership key of ``signature`` (Algorithm 2). Use :meth:`make_signed_key` with a
        :class:`~deepserial.schemes.base.Provenance`: it checks the signature first and records the
        verifier string and the owner's public key, without which :meth:`verify` refuses the key.

        ``data`` supplies the verification images (drawn by a generator seeded from the signature;
        held-out owner images are best). ``model`` is the (untrained) network to be watermarked: the
        pattern is then placed where that network can see every pixel; without it, anywhere in the image.
        """
        cfg = self.config
        if len(data) == 0:
            raise ConfigError("no data to draw verification images from; pass the owner's images")
        shape = tuple(int(v) for v in data.x.shape[1:])
        field = visible_field(model, shape) if model is not None else (0, shape[1] - 1, 0, shape[2] - 1)
        if model is not None:
            out = _outputs(model, shape)
            if out != num_classes:
                raise ConfigError(f"the network has {out} outputs but num_classes={num_classes}")
        scale = cfg.pixels_per_bit or scale_for(shape)
        wm = transform(signature, shape, num_classes, cfg.pattern_size, field, (cfg.lam_min, cfg.lam_max), scale)
        if model is not None:
            check_visible(model, wm.geometry, shape)
        rng = derive_rng(signature, TAG_VERIFY_IMAGES)
        sel = torch.from_numpy(np.sort(rng.choice(len(data), min(cfg.verify_samples, len(data)), replace=False)))
        meta = {
            "signature": bytes(signature).hex(),
            "key_version": KEY_VERSION,
            "input_shape": list(shape),
            "num_classes": int(num_classes),
            "pattern_size": cfg.pattern_size,
            "pixels_per_bit": scale,
            "field": list(field),
            "lam_range": [cfg.lam_min, cfg.lam_max],
            "geometry": wm.geometry.to_dict(),
            "y_w": wm.y_w,
            "lam": wm.lam,
        }
        tensors = {
            "bits": torch.from_numpy(wm.bits.copy()),
            "verify_x": data.x[sel].clone(),
            "verify_y": data.y[sel].clone(),
        }
        return OwnershipKey(self.name, meta, tensors)

    def watermark(self, key: OwnershipKey) -> Watermark:
        """Algorithm 3, lines 1-4: check the signature, then re-derive the watermark from it.

        The stored bits, geometry, ``y_w`` and ``lam`` are compared with the re-derived ones and a key
        where they differ is refused (:class:`IntegrityError`); only the re-derived watermark is used.
        """
        self.check_key(key)
        signature = Provenance.from_meta(key.meta).check()  # IdentityError: no provenance, or not the owner's
        m = key.meta
        try:
            shape = tuple(int(v) for v in m["input_shape"])
            field = tuple(int(v) for v in m["field"])
            lam_range = (int(m["lam_range"][0]), int(m["lam_range"][1]))
            wm = transform(
                signature,
                shape,
                int(m["num_classes"]),
                int(m["pattern_size"]),
                field,
                lam_range,
                int(m.get("pixels_per_bit", 1)),
            )  # type: ignore[arg-type]
            stored = Watermark(
                SerialGeometry.from_dict(m["geometry"]),
                key.tensor("bits").cpu().numpy().astype(np.uint8),
                int(m["y_w"]),
                float(m["lam"]),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise IntegrityError(
                "null-embedding key is malformed (Transform parameters missing or unreadable); "
                "re-create it with make_key"
            ) from None
        if not wm.same_as(stored):
            raise IntegrityError(
                "the pattern stored in the key differs from the one derived from its signature: "
                "the key was altered; re-create it from the licence"
            )
        return wm

    # ----- embedding (§6.2) -----
    def embed(self, model: SplitNet, data: TensorData, key: OwnershipKey, train: TrainConfig) -> TrainLog:
        """Train ``model`` from scratch (it should be freshly initialised: null embedding constrains how
        normal classification is learnt, §5.1) on ``data`` with dual embedding of ``key``."""
        wm = self.watermark(key)
        shape = tuple(int(v) for v in key.meta["input_shape"])
        if tuple(data.x.shape[1:]) != shape:
            raise InputError(f"training images have shape {tuple(data.x.shape[1:])}, the key was made for {shape}")
        out = _outputs(model, shape)
        if out != int(key.meta["num_classes"]):
            raise ConfigError(f"the network has {out} outputs, the key was made for {key.meta['num_classes']} classes")
        cfg = self.config
        loss = DualLoss(wm, cfg.ratio_true, cfg.ratio_null, cfg.lam_warmup_epochs, cfg.lam_warmup_start)
        return fit(model, data, loss, train, on_epoch_end=loss.on_epoch_end, desc="null-embedding")

    # ----- verification (Algorithm 3 + a binomial test) -----
    def verify(self, suspect: Suspect, key: OwnershipKey, fpr: float = 1e-3) -> Verdict:
        """Algorithm 3 with a p-value.

        After the signature check and re-derivation (:meth:`watermark`), each of the key's ``N``
        images is asked twice: with ``p`` (null embedding, expect the true label) and with ``p̄``
        (true embedding, expect ``y_W``). The paper's rule is ``min(acc_null, acc_true) >= T``.

        The test statistic ``M`` counts the images whose label is not ``y_W`` and on which both
        embeddings answer as the key says (a *dual match*). Images of class ``y_W`` are left out
        because on them a suspect that answers ``y_W`` to every extreme-valued input would match both.
        A suspect that treats ``p`` and ``p̄`` alike (it ignores the patch, or any extreme patch sends
        it to one class, which is what unmarked networks do) can have no dual match at all: the two
        answers of an image would be equal, yet one must be ``y`` and the other ``y_W != y``.

        Null hypothesis: the suspect does not carry this key, so ``y_W`` (derived from the signature
        with its own domain tag) is unrelated to the suspect, and each image's answer to ``x ⊗ p̄``
        is ``y_W`` with probability at most ``p0``, independently across images, where ``p0`` is the
        larger of ``1/C`` and the largest share of any single class among the suspect's answers to the
        null queries ``x ⊗ p`` (the same extreme values in the complementary arrangement: how much an
        extreme patch concentrates this suspect's answers). ``M ~ Binomial(N', p0)`` at most, with
        ``N'`` the images not of class ``y_W``; the p-value is ``P[X >= M]`` and the threshold the
        smallest count with tail probability ``<= fpr``. The decision requires both the paper's rule
        and ``p <= fpr``. Independence across images is an assumption; the false-positive rate over
        many random keys against unmarked models is measured in the reproduction.

        Queries go in chunks of ``verify_chunk`` images (two queries each). With ``sequential`` set,
        verification stops as soon as either accuracy can no longer reach ``T`` even if every
        remaining answer were right: the decision ("does not carry") is then the same as with all
        ``N`` images, at a fraction of the queries (unmarked models usually stop after one chunk).
        The p-value and accuracies are then those of the images asked (``details['images_queried']``).
        """
        stats.check_fpr(fpr)
        wm = self.watermark(key)
        cfg = self.config
        shape = tuple(int(v) for v in key.meta["input_shape"])
        num_classes = int(key.meta["num_classes"])
        if tuple(suspect.input_shape) != shape:
            raise InputError(
                f"the suspect takes inputs of shape {tuple(suspect.input_shape)}, the key was made "
                f"for {shape}; verify a model of the same task"
            )
        if suspect.num_outputs != num_classes:
            raise InputError(
                f"the suspect has {suspect.num_outputs} outputs, the key was made for {num_classes} "
                "classes; verify a model of the same task"
            )
        x, y = key.tensor("verify_x"), key.tensor("verify_y").long()
        n = len(x)
        if n == 0 or tuple(x.shape[1:]) != shape or len(y) != n:
            raise IntegrityError("null-embedding key holds no usable verification images; re-create it")
        suspect.reserve(2 * n, lower="verify_samples")
        T = float(cfg.threshold)
        allowed_misses = n - math.ceil(T * n - 1e-9)  # acc >= T  <=>  misses <= allowed_misses
        start = suspect.queries
        a_parts: list[torch.Tensor] = []
        b_parts: list[torch.Tensor] = []
        seen, stopped = 0, False
        for i in range(0, n, cfg.verify_chunk):
            xi = x[i : i + cfg.verify_chunk]
            ans = suspect.predict(torch.cat([wm.null(xi), wm.true(xi)]))
            a_parts.append(ans[: len(xi)])
            b_parts.append(ans[len(xi) :])
            seen += len(xi)
            a, b = torch.cat(a_parts), torch.cat(b_parts)
            miss_null, miss_true = int((a != y[:seen]).sum()), int((b != wm.y_w).sum())
            if cfg.sequential and seen < n and max(miss_null, miss_true) > allowed_misses:
                stopped = True
                break
        a, b, ys = torch.cat(a_parts), torch.cat(b_parts), y[:seen]
        right_null, right_true = a == ys, b == wm.y_w
        acc_null, acc_true = float(right_null.float().mean()), float(right_true.float().mean())
        paper_pass = (not stopped) and min(acc_null, acc_true) >= T
        eligible = ys != wm.y_w
        n_elig = int(eligible.sum())
        m = int((eligible & right_null & right_true).sum())
        share = 1.0
        if n_elig:
            counts = torch.bincount(a[eligible].clamp(min=0), minlength=suspect.num_outputs)
            share = float(counts.max()) / n_elig
        p0 = min(1.0, max(1.0 / num_classes, share))
        if n_elig == 0 or p0 >= 1.0:
            p_value, thr = 1.0, n_elig + 1
        else:
            p_value, thr = stats.binom_tail(m, n_elig, p0), stats.binom_threshold(n_elig, p0, fpr)
        binomial_p = p_value
        if not paper_pass:  # Algorithm 3's rule failed: no evidence is claimed, whatever the dual matches
            p_value = 1.0
        decision = bool(paper_pass and p_value <= fpr)
        details = {
            "acc_null": acc_null,
            "acc_true": acc_true,
            "wm_acc": min(acc_null, acc_true),
            "T": T,
            "paper_pass": bool(paper_pass),
            "binomial_p": binomial_p,
            "p0": p0,
            "eligible_images": n_elig,
            "images": n,
            "images_queried": seen,
            "stopped_early": stopped,
            "signature_verified": True,
            "pattern_size": int(key.meta["pattern_size"]),
        }
        return Verdict(
            self.name,
            float(m),
            "dual matches (null answers y and true answers y_W)",
            float(thr),
            float(p_value),
            float(fpr),
            decision,
            suspect.queries - start,
            details,
        )


def _outputs(model: nn.Module, shape: tuple[int, ...]) -> int:
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(torch.zeros(1, *shape, device=dev)).shape[1])
    finally:
        model.train(was)
