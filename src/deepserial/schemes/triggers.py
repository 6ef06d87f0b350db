"""Trigger-set watermarks: the shared machinery of schemes whose key is a set of labelled key samples.

The new-label watermark (:mod:`deepserial.schemes.new_label`), the Zhang et al. 2018 baselines
(:mod:`deepserial.schemes.zhang`) and Adi et al. 2018 (:mod:`deepserial.schemes.adi`) all work the
same way and differ only in how the key samples are made (formulas: docs/specification.md, sections 4
and 7):

- **key**: training key samples with the labels the model must learn for them, and *verification*
  key samples made the same way (for the noise and stamp schemes from other base images, as the
  new-label paper's judge does with ``K' = KsGen(S, D2)``), all derived from the owner's signature;
- **embedding**: ordinary training in :func:`deepserial.training.fit` where every batch of ``n`` clean
  samples gets about ``share * n`` key samples appended (:func:`make_trigger_loss`);
- **verification**: the suspect is queried on verification key samples a few at a time and each
  answer is compared with the key's label. A binomial test decides, and a sequential version of it
  (:class:`~deepserial.stats.SequentialBinomial`) stops querying as soon as the outcome is certain.

The null hypothesis is "the suspect does not carry this key". Two kinds of null rate ``p0`` exist:

``exact`` (Adi)
    Every key sample has its own uniformly random label, drawn from the signature independently of
    the images. A suspect that never saw the key answers independently of those labels, so each
    match has probability at most ``1/C`` and the match count is exactly Binomial(n, 1/C).
``measured`` (new label, Zhang noise/content/unrelated)
    All key samples carry *one* label (the new class, or one target class). ``1/C`` is not a bound
    then: an unmarked model may send every noisy image to one class, and a model marked by another
    owner with the new-label scheme answers the new class on anything it learned to flag. So the
    verifier also sends *control* queries, inputs made exactly like the key samples but from fresh
    secrets (a fresh noise pattern, a fresh stamp, another class of the unrelated data set), and
    bounds ``p0`` from above with the suspect's own rate of answering the key's label on them
    (Clopper-Pearson, confidence ``1 - fpr/2``); the binomial test then runs at ``fpr/2``
    (:func:`deepserial.stats.controlled_p_value`). A suspect that never saw our secret cannot tell it
    from a fresh one, so its answers to key samples and to controls have the same rate.
    Controls cost queries only when needed: key samples are asked first, one round at a time, and
    a suspect that never gives the key's label within the budget is rejected without any control.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepserial import stats
from deepserial.data import TensorData
from deepserial.errors import ConfigError, IdentityError, InputError
from deepserial.identity import derive, derive_rng
from deepserial.nets import SplitNet
from deepserial.schemes.base import OwnershipKey, Provenance, Scheme, Verdict
from deepserial.suspect import Suspect
from deepserial.training import Batch, BatchLoss, LossOut, TrainConfig, TrainLog, fit, predict_logits

__all__ = [
    "TriggerConfig",
    "MeasuredConfig",
    "NoiseConfig",
    "KeySet",
    "TriggerScheme",
    "make_trigger_loss",
    "derive_label",
    "pick_indices",
    "noise_key_set",
    "noise_negatives",
    "NegativeMaker",
    "UNLABELLED",
]


class TriggerConfig(BaseModel):
    """Verification settings shared by every trigger-set scheme (subclasses add their key recipe)."""

    model_config = ConfigDict(extra="forbid")

    verify_queries: int = Field(30, ge=1, description="most key samples asked per verification (the test's budget)")
    query_batch: int = Field(
        1,
        ge=1,
        description="key samples sent per round; 1 = one query at a time, as a judge "
        "would, so that verification stops at the first decisive answer",
    )


class MeasuredConfig(TriggerConfig):
    """Settings of schemes whose key samples share one label, so that the null rate is measured."""

    verify_keys: int = Field(100, ge=1, le=100_000, description="verification key samples stored in the key")
    control_queries: int = Field(20, ge=1, le=100_000, description="control queries that bound the null rate")


class NoiseConfig(MeasuredConfig):
    """Settings of Gaussian-noise keys ``k = x + beta * eps`` (new label, Zhang noise)."""

    alpha: float = Field(
        0.01,
        gt=0,
        le=1,
        description="key samples as a share of the training data, |D1|/|D|; "
        "also the share of key samples in each batch",
    )
    beta: float = Field(3.5e-3, gt=0, le=10, description="perturbation strength")
    pattern_scale: float = Field(
        255.0,
        gt=0,
        description="standard deviation of eps in units of the [0, 1] pixel "
        "range: 255 draws eps on the 8-bit grey-level scale (docs/decisions.md)",
    )
    negative_ratio: float = Field(
        1.0,
        ge=0,
        le=10,
        description="training inputs with a fresh noise pattern and "
        "their true label, per key sample (0 = the paper's recipe)",
    )


@dataclass
class KeySet:
    """What a scheme's key recipe produces; :meth:`TriggerScheme.make_key` wraps it in an OwnershipKey."""

    train_samples: torch.Tensor
    train_labels: torch.Tensor
    samples: torch.Tensor
    labels: torch.Tensor
    controls: torch.Tensor | None = None
    target: int | None = None  # the one label of every key sample (measured null), else None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # recipe-specific (noise pattern, stamp)
    meta: dict[str, Any] = field(default_factory=dict)


def derive_label(signature: bytes, purpose: str, num_classes: int, exclude: int | None = None) -> int:
    """A class index in ``[0, num_classes)`` from the signature (uniform up to 2^-64), skipping ``exclude``."""
    choices = [c for c in range(num_classes) if c != exclude]
    return choices[int.from_bytes(derive(signature, purpose, 16), "big") % len(choices)]


def pick_indices(rng: np.random.Generator, pool: np.ndarray, n: int, what: str) -> np.ndarray:
    """``n`` distinct indices drawn from ``pool`` (sorted), or a ConfigError saying how much data is missing."""
    if n > len(pool):
        raise ConfigError(
            f"{what} needs {n} samples but only {len(pool)} are available; "
            "use more data or lower the key sizes (verify_keys, the key ratio)"
        )
    return np.sort(rng.choice(pool, size=n, replace=False))


def noise_key_set(
    signature: bytes, data: TensorData, tag: str, cfg: NoiseConfig, *, label: int, exclude_class: int | None
) -> KeySet:
    """Gaussian-noise key samples ``k = x + beta * eps`` (new-label paper §3.2 KsGen; Zhang's noise keys).

    ``eps`` ~ N(0, pattern_scale^2) of the input's shape comes from ``derive_rng(signature, tag + "/pattern")``.
    ``round(alpha * |D|)`` training bases (D1) and ``verify_keys`` verification bases (D2) are drawn
    without overlap from the samples not of ``exclude_class``; every key sample gets ``label``.
    The ``control_queries`` controls are the first D2 bases, each with its own fresh pattern of the
    same strength. Values are not clamped to [0, 1]: the paper adds the pattern as is, and clamping
    would erase its negative half wherever the image is black (most of an MNIST image).
    """
    alpha, verify_keys, control_queries = cfg.alpha, cfg.verify_keys, cfg.control_queries
    beta = cfg.beta * cfg.pattern_scale  # the perturbation's standard deviation in [0, 1] pixel units
    n = len(data)
    pool = np.arange(n) if exclude_class is None else np.nonzero(data.y.numpy() != exclude_class)[0]
    n_train = max(1, int(round(alpha * n)))
    rng = derive_rng(signature, tag + "/bases")
    both = pick_indices(rng, pool, n_train + verify_keys, f"{tag} (training + verification key samples)")
    rng.shuffle(both)
    train_idx, verify_idx = np.sort(both[:n_train]), np.sort(both[n_train:])
    shape = tuple(data.x.shape[1:])
    pattern = torch.from_numpy(derive_rng(signature, tag + "/pattern").standard_normal(shape).astype(np.float32))
    fresh = derive_rng(signature, tag + "/controls").standard_normal((control_queries, *shape)).astype(np.float32)
    base = data.x[torch.from_numpy(verify_idx)]
    ctrl_base = base[torch.arange(control_queries) % len(base)]
    return KeySet(
        train_samples=data.x[torch.from_numpy(train_idx)] + beta * pattern,
        train_labels=torch.full((n_train,), label, dtype=torch.long),
        samples=base + beta * pattern,
        labels=torch.full((verify_keys,), label, dtype=torch.long),
        controls=ctrl_base + beta * torch.from_numpy(fresh),
        target=label,
        tensors={"pattern": pattern},
        meta={"perturbation_std": beta, "train_keys": n_train},
    )


def noise_negatives(std: float) -> NegativeMaker:
    """Negatives for noise keys: each image gets its own fresh Gaussian pattern of the key's strength."""

    def make(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + std * torch.randn(x.shape, device=x.device), y

    return make


#: ``(images, labels) -> (negative inputs, their labels)`` for a random pick of batch samples; a label of
#: -1 means "no class": the target is then the uniform distribution (chance on every class).
NegativeMaker = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
UNLABELLED = -1


def _stochastic_round(value: float) -> int:
    """``floor(value)`` plus one with probability ``value - floor(value)`` (seeded by the training loop)."""
    base = math.floor(value)
    return int(base) + int(float(torch.rand(())) < value - base)


def make_trigger_loss(
    key_x: torch.Tensor,
    key_y: torch.Tensor,
    share: float,
    negatives: NegativeMaker | None = None,
    negative_ratio: float = 0.0,
) -> BatchLoss:
    """Per-batch loss for :func:`~deepserial.training.fit`: cross-entropy over the batch with key samples
    appended, about ``share`` of them per clean sample.

    With ``negatives``, about ``negative_ratio`` *negative* inputs per key sample are appended too:
    batch images given a fresh trigger of the same kind (a fresh noise pattern, another stamp) with
    their true labels, or images of an unrelated data set's other classes with the labels a plain
    classifier of the task gives them (a label of :data:`UNLABELLED` asks for the uniform distribution
    instead). They teach the model to answer the key's label for *this* key only, not for anything
    that looks like a trigger; without them a new-label model flags every noisy image, and so would
    verify the key of any other owner under a null that ignored this (docs/decisions.md).

    The count per batch is ``floor(share * n)`` plus one more with probability equal to the remainder
    (so the long-run share is exact even when ``share * n < 1``, e.g. the new-label paper's 1% of a
    batch of 64). Key samples are drawn with replacement from the training key set. The loss is the
    mean over clean and key samples together, as when the key set is simply mixed into the data.
    """
    if not 0.0 < share <= 10.0:
        raise ConfigError(f"key share must be in (0, 10], got {share}")
    if len(key_x) == 0 or len(key_x) != len(key_y):
        raise ConfigError("the training key set is empty or its samples and labels differ in number")
    if negative_ratio < 0 or (negative_ratio > 0 and negatives is None):
        raise ConfigError("negative_ratio > 0 needs a scheme that can make negative inputs")

    def loss_fn(net: nn.Module, batch: Batch) -> LossOut:
        n = len(batch.x)
        m = _stochastic_round(share * n)
        k = _stochastic_round(share * n * negative_ratio) if negatives is not None else 0
        dev = batch.x.device
        xs, ys = [batch.x], [batch.y]
        if m:
            pick = torch.randint(0, len(key_x), (m,))
            xs.append(key_x[pick].to(dev))
            ys.append(key_y[pick].to(dev))
        if k:
            pick = torch.randint(0, n, (k,), device=dev)
            nx, ny = negatives(batch.x[pick], batch.y[pick])  # type: ignore[misc]
            xs.append(nx.to(dev))
            ys.append(ny.to(dev))
        x, y = (torch.cat(xs), torch.cat(ys)) if len(xs) > 1 else (batch.x, batch.y)
        logits = net(x)
        free = y == UNLABELLED
        if bool(free.any()):  # cross-entropy against the uniform distribution for inputs without a class
            logp = F.log_softmax(logits, 1)
            per = torch.where(free, -logp.mean(1), -logp.gather(1, y.clamp(min=0)[:, None]).squeeze(1))
            loss = per.mean()
        else:
            loss = F.cross_entropy(logits, y)
        metrics = {
            "acc": 100.0 * float((logits[:n].argmax(1) == batch.y).float().mean()),
            "key_share": m / (n + m + k),
            "negative_share": k / (n + m + k),
        }
        return LossOut(loss, n + m + k, metrics)

    return loss_fn


class TriggerScheme(Scheme):
    """Base of the trigger-set schemes: key layout, embedding through :func:`make_trigger_loss`, and the
    sequential binomial verification described in the module docstring.

    Ownership key: ``meta`` holds ``num_classes``, ``num_outputs``, ``target`` (the shared label, or
    None), ``null`` ("exact" or "measured"), ``p0`` (exact null only), the settings used, the signature
    (hex) and, when made with :meth:`Scheme.make_signed_key`, the verifier string and the owner's public
    key (PEM).
    Tensors: ``samples``/``labels`` (what :meth:`verify` asks), ``train_samples``/``train_labels`` (what
    :meth:`embed` mixes in; absent when ``meta["trains_on_samples"]``, as for Adi, whose trigger set is
    both), ``controls`` (measured null only), and recipe-specific ones.
    """

    Config: ClassVar[type[BaseModel]] = TriggerConfig
    #: True: the null rate is 1/C exactly (independent random labels); False: measured with controls.
    exact_null: ClassVar[bool] = False

    # ----- key -------------------------------------------------------------------------------------
    @abstractmethod
    def key_share(self) -> float:
        """Key samples appended per clean sample in each training batch."""

    def negatives(self, key: OwnershipKey, data: TensorData) -> NegativeMaker | None:
        """Maker of negative training inputs (a fresh trigger of the key's kind), or None; ``data`` is
        the training data given to :meth:`embed`."""
        return None

    def negative_ratio(self) -> float:
        """Negative inputs per key sample in training (0 when the scheme has none)."""
        return float(getattr(self.config, "negative_ratio", 0.0))

    @abstractmethod
    def build_keys(self, signature: bytes, data: TensorData, num_classes: int, model: SplitNet | None) -> KeySet:
        """The scheme's recipe: training and verification key samples (and controls) from ``signature``."""

    def make_key(
        self, signature: bytes, data: TensorData, num_classes: int, model: SplitNet | None = None
    ) -> OwnershipKey:
        """The ownership key of ``signature`` for a task of ``num_classes`` classes on ``data``.

        The key depends on the signature and the data only, never on ``model`` (a key chosen with the
        suspect in hand would bias the false-positive measurement). :meth:`Scheme.make_signed_key`
        adds the verifier string and the owner's public key, which :meth:`verify` then checks.
        """
        if not isinstance(signature, bytes | bytearray) or not signature:
            raise IdentityError("empty signature: sign a verifier string with the owner's key first")
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
        if len(data) == 0:
            raise ConfigError("no training data given: trigger-set keys are made from the owner's data")
        if int(data.y.max()) >= num_classes or int(data.y.min()) < 0:
            raise ConfigError(
                f"training labels lie in [{int(data.y.min())}, {int(data.y.max())}], outside "
                f"the {num_classes} classes given"
            )
        signature = bytes(signature)
        meta: dict[str, Any] = {"signature": signature.hex()}
        ks = self.build_keys(signature, data, num_classes, model)
        tensors = {"samples": ks.samples.float().contiguous(), "labels": ks.labels.long()}
        same = ks.train_samples is ks.samples and ks.train_labels is ks.labels  # Adi: one set for both
        if not same:
            tensors |= {"train_samples": ks.train_samples.float().contiguous(), "train_labels": ks.train_labels.long()}
        if ks.controls is not None:
            tensors["controls"] = ks.controls.float().contiguous()
        tensors |= ks.tensors
        meta |= {
            "num_classes": int(num_classes),
            "num_outputs": self.num_outputs(num_classes),
            "input_shape": list(data.x.shape[1:]),
            "target": ks.target,
            "null": "exact" if self.exact_null else "measured",
            "config": self.config.model_dump(),
            "key_share": self.key_share(),
            "trains_on_samples": same,
        }
        if self.exact_null:
            meta["p0"] = 1.0 / num_classes
        meta |= ks.meta
        return OwnershipKey(self.name, meta, tensors)

    def parts(self, key: OwnershipKey) -> KeySet:
        """The key's tensors, checked for the layout this scheme wrote (a ConfigError otherwise)."""
        self.check_key(key)
        for name in ("num_classes", "num_outputs", "input_shape", "null"):
            if name not in key.meta:
                raise ConfigError(f"ownership key for {self.name!r} lacks meta field {name!r}; make it again")
        x, y = key.tensor("samples"), key.tensor("labels")
        if key.meta.get("trains_on_samples"):
            tx, ty = x, y
        else:
            tx, ty = key.tensor("train_samples"), key.tensor("train_labels")
        shape = tuple(int(v) for v in key.meta["input_shape"])
        for what, a, b in (("verification", x, y), ("training", tx, ty)):
            if a.dim() != 4 or tuple(a.shape[1:]) != shape or len(a) != len(b) or len(a) == 0:
                raise ConfigError(
                    f"ownership key for {self.name!r} has malformed {what} key samples "
                    f"{tuple(a.shape)} / labels {tuple(b.shape)} for inputs {shape}"
                )
        controls = None
        if not self.exact_null:
            controls = key.tensor("controls")
            if key.meta.get("target") is None or controls.dim() != 4 or tuple(controls.shape[1:]) != shape:
                raise ConfigError(f"ownership key for {self.name!r} has no usable control samples or target label")
        return KeySet(tx, ty, x, y, controls, key.meta.get("target"))

    def check_provenance(self, key: OwnershipKey) -> bool:
        """Check the owner's signature over the verifier string when the key records them (True), or
        return False when it does not. Raises IdentityError when they are recorded but do not verify."""
        if "verifier" not in key.meta and "owner_public_key" not in key.meta:
            return False
        Provenance.from_meta(key.meta).check()
        return True

    # ----- embedding -------------------------------------------------------------------------------
    def embed(self, model: SplitNet, data: TensorData, key: OwnershipKey, train: TrainConfig) -> TrainLog:
        """Train ``model`` (built with :meth:`num_outputs` outputs) on ``data`` with the key mixed in.

        The per-epoch log also records the model's accuracy on the training key samples
        (``key_train_acc``) and on the verification key samples (``key_acc``), in percent.
        """
        ks = self.parts(key)
        want = int(key.meta["num_outputs"])
        got = _outputs(model)
        if got is not None and got != want:
            raise ConfigError(
                f"{self.name} needs a network with {want} outputs, this one has {got}; build it with "
                f"create_model(..., scheme.num_outputs({key.meta['num_classes']}))"
            )
        if tuple(data.x.shape[1:]) != tuple(key.meta["input_shape"]):
            raise ConfigError(
                f"training data of shape {tuple(data.x.shape[1:])} does not match the key's inputs "
                f"{tuple(key.meta['input_shape'])}"
            )
        neg = self.negatives(key, data) if self.negative_ratio() > 0 else None
        loss_fn = make_trigger_loss(
            ks.train_samples,
            ks.train_labels,
            float(key.meta["key_share"]),
            neg,
            self.negative_ratio() if neg is not None else 0.0,
        )

        def on_epoch_end(epoch: int, net: nn.Module) -> dict[str, float]:
            return {
                "key_train_acc": 100.0 * _rate(net, ks.train_samples, ks.train_labels),
                "key_acc": 100.0 * _rate(net, ks.samples, ks.labels),
            }

        return fit(model, data, loss_fn, train, on_epoch_end=on_epoch_end, desc=self.name)

    # ----- evaluation (local model, no query accounting) -------------------------------------------
    def key_accuracy(self, model: nn.Module, key: OwnershipKey) -> float:
        """Share of verification key samples ``model`` labels as the key says: the paper's ``p``."""
        ks = self.parts(key)
        return _rate(model, ks.samples, ks.labels)

    def control_rate(self, model: nn.Module, key: OwnershipKey) -> float | None:
        """Share of control samples ``model`` gives the key's label (the measured null rate), or None."""
        ks = self.parts(key)
        if ks.controls is None:
            return None
        return _rate(model, ks.controls, torch.full((len(ks.controls),), int(ks.target), dtype=torch.long))

    # ----- verification ----------------------------------------------------------------------------
    def screen(self, suspect: Suspect, key: OwnershipKey, fpr: float) -> Verdict | None:
        """Checks before any query: the suspect must answer the key's label space (an InputError
        otherwise). Subclasses may return a verdict here (new label: a C-output suspect)."""
        want = int(key.meta["num_outputs"])
        if suspect.num_outputs != want:
            raise InputError(
                f"suspect answers {suspect.num_outputs} labels but this {self.name} key was made "
                f"for a model with {want} outputs; verify with the key made for this task"
            )
        return None

    def verify(self, suspect: Suspect, key: OwnershipKey, fpr: float = 1e-3) -> Verdict:
        """Test whether ``suspect`` carries ``key`` at false-positive rate ``fpr`` (see the module
        docstring for the null). ``queries`` counts what this verification spent."""
        stats.check_fpr(fpr)
        ks = self.parts(key)
        self.check_provenance(key)
        if tuple(suspect.input_shape) != tuple(key.meta["input_shape"]):
            raise InputError(
                f"suspect takes inputs {tuple(suspect.input_shape)}, the key's samples are "
                f"{tuple(key.meta['input_shape'])}: a key for another task"
            )
        early = self.screen(suspect, key, fpr)
        if early is not None:
            return early
        cfg = self.config
        start = suspect.queries
        budget = min(int(cfg.verify_queries), len(ks.samples))
        step = int(cfg.query_batch)
        asked: list[bool] = []
        first: int | None = None

        def ask(k: int) -> np.ndarray:
            lo, hi = len(asked), min(len(asked) + k, budget)
            hit = (suspect.predict(ks.samples[lo:hi]) == ks.labels[lo:hi]).numpy()
            asked.extend(bool(v) for v in hit)
            return hit

        details: dict[str, Any] = {"budget": budget, "null": key.meta["null"]}
        if self.exact_null:
            p0 = 1.0 / int(key.meta["num_classes"])  # labels uniform on the key's C classes
            seq = stats.SequentialBinomial(budget, p0, fpr)
            while not seq.done:
                hit = ask(step)
                if first is None and hit.any():
                    first = len(asked) - len(hit) + int(np.argmax(hit)) + 1
                seq.update(hit)
            p_value = stats.binom_tail(seq.matches, seq.asked, p0)
            threshold = seq.threshold
            decision = bool(seq.decided)
            details |= {"p0": p0}
        else:
            # Phase 1: key samples until the first answer with the key's label (the new-label paper's Ver).
            while first is None and len(asked) < budget:
                hit = ask(step)
                if hit.any():
                    first = len(asked) - len(hit) + int(np.argmax(hit)) + 1
            if first is None:
                # No match at all: not verified whatever the controls would say, so none is sent. The
                # threshold reported is the lowest any control outcome could have set (no control hit).
                best = stats.binom_threshold(budget, stats.binom_upper(0, len(ks.controls), 1.0 - fpr / 2), fpr / 2)
                return self._verdict(
                    0,
                    len(asked),
                    best,
                    1.0,
                    fpr,
                    False,
                    suspect,
                    start,
                    details | {"queries_to_first_match": None, "control_queries": 0},
                )
            # Phase 2: controls bound the null rate; Phase 3: the sequential test at fpr/2 continues.
            ctrl = suspect.predict(ks.controls)
            h = int((ctrl == int(ks.target)).sum())
            n_c = len(ks.controls)
            p0 = stats.binom_upper(h, n_c, 1.0 - fpr / 2)
            seq = stats.SequentialBinomial(budget, p0, fpr / 2)
            seq.update(asked)
            while not seq.done:
                seq.update(ask(step))
            p_value = stats.controlled_p_value(seq.matches, seq.asked, h, n_c)
            threshold = seq.threshold
            decision = bool(seq.decided)
            details |= {"control_hits": h, "control_queries": n_c, "control_rate": h / n_c, "p0_bound": p0}
        details |= {
            "queries_to_first_match": first,
            "matches": seq.matches,
            "asked": seq.asked,
            "hit_rate": seq.matches / seq.asked if seq.asked else 0.0,
        }
        return self._verdict(seq.matches, seq.asked, threshold, p_value, fpr, decision, suspect, start, details)

    def _verdict(
        self,
        matches: int,
        asked: int,
        threshold: int,
        p_value: float,
        fpr: float,
        decision: bool,
        suspect: Suspect,
        start: int,
        details: dict[str, Any],
    ) -> Verdict:
        details.setdefault("matches", matches)
        details.setdefault("asked", asked)
        details.setdefault("hit_rate", matches / asked if asked else 0.0)
        return Verdict(
            self.name,
            float(matches),
            f"key matches of {asked} asked",
            float(threshold),
            float(p_value),
            float(fpr),
            bool(decision),
            int(suspect.queries - start),
            details,
        )


# ----- helpers ---------------------------------------------------------------------------------------
def _outputs(model: nn.Module) -> int | None:
    cls = getattr(model, "classifier", None)
    return int(cls.out_features) if isinstance(cls, nn.Linear) else None


def _rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) == 0:
        return 0.0
    return float((predict_logits(model, x).argmax(1) == y).float().mean())
