"""The one training loop every scheme and attack plugs into.

A scheme does not write its own loop: it hands :func:`fit` a module and a :data:`BatchLoss`, a
function from ``(module, batch)`` to a :class:`LossOut` (the loss to minimise, how many samples went
through a forward pass, and any metrics to log). The loop owns everything else: seeding, device
placement, shuffling (through ``DistributedSampler``, so the same code shards data when launched with
``torchrun``), DistributedDataParallel wrapping, Adam with the papers' "divide by 10 on plateau"
schedule, a progress bar that scripts can silence, per-epoch logs, callbacks for learning curves and
resumable checkpoints.

A checkpoint is a safetensors file (model and optimiser tensors) whose header holds the rest of the
state as JSON, validated by :mod:`deepserial.schema` on resume: reading one never unpickles, so a
checkpoint file from anywhere cannot run code.

Under DDP a loss function must call the module it is given (the DDP wrapper), not submodules of the
underlying network, or gradients are not synchronised; schemes that need several heads therefore
wrap them in one module whose ``forward`` returns all outputs.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from deepserial import distributed
from deepserial.console import on_terminal, print_epoch
from deepserial.data import TensorData
from deepserial.distributed import world
from deepserial.errors import ConfigError, DeepSerialError
from deepserial.files import check_writable, write_files_here
from deepserial.schema import CheckpointDoc, validate


@dataclass
class Batch:
    """One mini-batch: inputs, labels, and the indices of the samples in the training set (so a
    scheme can look up per-sample precomputed values such as cached teacher outputs)."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor


@dataclass
class LossOut:
    """What a batch loss returns: the loss, the number of samples forwarded, metrics to log."""

    loss: torch.Tensor
    forward_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


BatchLoss = Callable[[nn.Module, Batch], LossOut]
EpochCallback = Callable[[int, nn.Module], dict[str, float]]


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training path (defaults: the DSN paper's §3.2)."""

    epochs: int = 10
    batch_size: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # "adam" (DSN §3.2) or "sgd" (null embedding Table 14, for the Digit task)
    momentum: float = 0.0  # SGD only
    plateau_patience: int = 2
    seed: int = 0
    device: str | None = None
    precision: str = "auto"  # "auto" (bf16 autocast on a CUDA GPU that supports it, else fp32), "fp32", "bf16"
    channels_last: bool | None = None  # None: on for convolutional nets on CUDA, off on CPU
    progress: bool = True
    checkpoint: Path | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")


@dataclass
class TrainLog:
    """Per-epoch record of a run: losses, metrics, learning rate, samples and wall time."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    forward_samples: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "forward_samples": self.forward_samples, "wall_s": self.wall_s}


def resolve_device(spec: str | None = None) -> torch.device:
    """``None``/"auto": CUDA when present, else CPU; otherwise the named device. Under torchrun with
    GPUs, "auto" and "cuda" mean this rank's GPU (``cuda:LOCAL_RANK``)."""
    spec = distributed.local_device(spec)
    if spec in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available; use --device cpu")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """Where a model's parameters live (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that a run repeats exactly on the same machine and build."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: full fp32). "auto" uses bf16 only on a CUDA GPU with bf16
    support. On CPU it stays fp32 by default, so that CPU runs reproduce the committed fp32 reports
    (benchmarks/results/bench_precision.md measures what opting in gains); ``precision="bf16"`` opts in."""
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def use_channels_last(cfg: TrainConfig, model: nn.Module, device: torch.device) -> bool:
    """channels_last memory format: on by default for convolutional nets on CUDA (cuDNN's fast path for
    bf16). Off by default on CPU so that runs reproduce the committed reports, although it is faster
    there too (benchmarks/results/bench_precision.md); opt in with ``channels_last=True``
    (``--channels-last``)."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def fit(
    model: nn.Module,
    data: TensorData,
    loss_fn: BatchLoss,
    cfg: TrainConfig,
    *,
    params: list[nn.Parameter] | None = None,
    on_epoch_end: EpochCallback | None = None,
    desc: str = "train",
) -> TrainLog:
    """Train ``model`` in place on ``data`` with ``loss_fn`` and return the per-epoch log.

    ``params`` restricts optimisation to some parameters (fine-tuning the last layer only);
    ``on_epoch_end`` is called after every epoch with the unwrapped model and its returned metrics
    are logged (learning curves). With ``cfg.checkpoint`` set, the state is saved after each epoch and
    a run restarted with the same path resumes from the last completed epoch.
    """
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    rank, world_size = world()
    model.to(device)
    amp = autocast_dtype(cfg, device)
    fmt = torch.channels_last if use_channels_last(cfg, model, device) else torch.contiguous_format
    if fmt is torch.channels_last:
        model.to(memory_format=fmt)
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=cfg.plateau_patience)
    net: nn.Module = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        # Rank 0 draws what a single process would; the others draw their own random keys, noise and
        # masks (identical streams on every rank would repeat the same draws N times per global batch).
        seed_everything(cfg.seed + rank)
    sampler = DistributedSampler(range(len(data)), num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed)
    log = TrainLog()
    start_epoch = 0
    if cfg.checkpoint is not None:
        check_writable(cfg.checkpoint)  # before the first epoch, not after it
        if Path(cfg.checkpoint).exists():
            # The state is that of the unwrapped model, its optimiser and schedule: none depends on the
            # number of processes, so a run checkpointed with N ranks resumes with any other number.
            start_epoch, log = _load_checkpoint(Path(cfg.checkpoint), model, opt, sched)
    x_all, y_all = data.x, data.y
    per_rank = max(1, cfg.batch_size // world_size)
    t_start = time.perf_counter()
    # A live bar on a terminal; elsewhere (logs, CI) one plain line per epoch instead.
    bars = cfg.progress and rank == 0 and on_terminal()
    lines = cfg.progress and rank == 0 and not bars
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)), dtype=torch.long)
        nb = math.ceil(len(order) / per_rank)
        t0 = time.perf_counter()
        tot_loss, tot_n, samples = 0.0, 0, 0
        sums: dict[str, float] = {}
        bar = tqdm(
            range(nb),
            desc=f"{desc} {epoch + 1}/{cfg.epochs}",
            disable=not bars,
            leave=False,
            dynamic_ncols=True,
        )
        for b in bar:
            idx = order[b * per_rank : (b + 1) * per_rank]
            xb = x_all[idx].to(device, non_blocking=True)
            if xb.dim() == 4:
                xb = xb.contiguous(memory_format=fmt)
            batch = Batch(xb, y_all[idx].to(device, non_blocking=True), idx)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = loss_fn(net, batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            n = len(idx)
            tot_loss += float(out.loss.detach()) * n
            tot_n += n
            samples += out.forward_samples
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            if b % 10 == 0:
                bar.set_postfix(loss=f"{tot_loss / tot_n:.4f}")
        bar.close()
        stats = torch.tensor([tot_loss, tot_n, samples, *sums.values()], dtype=torch.float64, device=device)
        if world_size > 1:
            dist.all_reduce(stats)
        tot_loss, tot_n, samples = float(stats[0]), float(stats[1]), int(stats[2])
        epoch_log = {
            "epoch": epoch + 1,
            "loss": tot_loss / max(tot_n, 1),
            "lr": opt.param_groups[0]["lr"],
            "samples": samples,
            "wall_s": time.perf_counter() - t0,
            "world_size": world_size,
        }
        epoch_log |= {k: float(v) / max(tot_n, 1) for k, v in zip(sums, stats[3:].tolist(), strict=True)}
        sched.step(epoch_log["loss"])
        if on_epoch_end is not None:
            model.eval()
            epoch_log |= on_epoch_end(epoch + 1, model)
        log.epochs.append(epoch_log)
        if lines:
            print_epoch(desc, epoch_log, cfg.epochs)
        log.forward_samples += samples
        if cfg.checkpoint is not None:
            distributed.main_only(partial(_save_checkpoint, cfg.checkpoint, model, opt, sched, epoch, log))
    log.wall_s += time.perf_counter() - t_start
    model.eval()
    return log


CHECKPOINT_FORMAT = "deepserial-checkpoint/1"


def _save_checkpoint(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: object, epoch: int, log: TrainLog
) -> None:
    """Write the training state after ``epoch`` atomically: tensors in safetensors, the rest as JSON
    in its header (no pickle). Called by the one rank that writes it."""
    from safetensors.torch import save as st_save

    tensors = {f"model/{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    optim = opt.state_dict()
    state: dict[str, dict] = {}
    for pid, entries in optim["state"].items():
        state[str(pid)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{pid}/{name}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                state[str(pid)][name] = value
    doc = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "log": log.to_dict(),
        "optimizer": {"type": type(opt).__name__, "param_groups": optim["param_groups"], "state": state},
        "scheduler": sched.state_dict(),  # type: ignore[attr-defined]
    }
    write_files_here([(path, st_save(tensors, metadata={"deepserial": json.dumps(doc)}), None)])


def _load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: object) -> tuple[int, TrainLog]:
    """Restore model, optimiser and schedule from a checkpoint; returns the first epoch still to run
    and the log so far. Anything wrong with the file is one :class:`ConfigError`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        raw = json.loads(meta["deepserial"])
        if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a deepserial checkpoint")
        doc = validate(CheckpointDoc, raw, path, "checkpoint")
        if doc.optimizer.get("type") != type(opt).__name__:
            raise ValueError(f"state of another optimiser ({doc.optimizer.get('type')!r})")
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        state: dict[int, dict] = {int(pid): dict(entries) for pid, entries in doc.optimizer.get("state", {}).items()}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, pid, name = key.split("/", 2)
                state.setdefault(int(pid), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": doc.optimizer["param_groups"]})
        sched.load_state_dict(doc.scheduler)  # type: ignore[attr-defined]
        return doc.epoch + 1, TrainLog(**doc.log.model_dump())
    except Exception as e:  # a foreign, damaged or pickled file, another network or optimiser
        kind = "invalid" if isinstance(e, DeepSerialError) else type(e).__name__
        raise ConfigError(
            f"checkpoint {path} cannot resume this run ({kind}): it is damaged, was written by another "
            "version or belongs to another model; delete it or choose another --checkpoint"
        ) from None


# Evaluation batch: on one CPU thread 256 is faster than 2048 (benchmarks/bench_threads.py: 0.30 vs 0.39 s per
# 1,000 dsn_mnist images beside one other job, 0.35 vs 0.66 s with both cores busy); larger batches only
# pay off with more threads than this project's reproductions use.
EVAL_BATCH = 256


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH, device: torch.device | None = None
) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in evaluation mode, batched, returned on the CPU."""
    device = device or model_device(model)
    model.eval()
    # An empty batch still goes through the network once, so the result has its (0, classes) shape.
    starts = range(0, len(x), batch_size) if len(x) else [0]
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in starts])


def accuracy(model: nn.Module, data: TensorData, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy in percent."""
    pred = predict_logits(model, data.x, batch_size).argmax(1)
    return 100.0 * float((pred == data.y).float().mean())


def supervised_loss(net: nn.Module, batch: Batch) -> LossOut:
    """Plain cross-entropy on the true labels: teachers, unmarked references, from-scratch baselines."""
    logits = net(batch.x)
    loss = nn.functional.cross_entropy(logits, batch.y)
    return LossOut(loss, len(batch.x), {"acc": 100.0 * float((logits.argmax(1) == batch.y).float().mean())})
