"""Runs across processes and GPUs with PyTorch's own engine, launched with ``torchrun``.

``torchrun --nproc_per_node N -m deepserial teacher ...`` runs the same command in N processes. The
command line does not change; what changes is handled here, in one place:

- :func:`init_from_env` joins the process group torchrun describes in the environment (gloo on CPU,
  NCCL on GPU, one GPU per local rank) before the command runs;
- the training loop (:func:`deepserial.training.fit`) wraps the model in DistributedDataParallel and
  shards every epoch with a ``DistributedSampler`` whenever :func:`world` reports more than one
  process, keeping the *global* batch of the config;
- every process computes the same things, so only what is not a pure function of the seed has to be
  agreed on: :func:`broadcast` hands rank 0's object to every rank (a fresh owner key, the time in a
  verifier string);
- files are collective: every rank calls the writer, rank 0 writes, and every rank waits until it has
  (:func:`deepserial.identity.atomic_write`), so a rank can read back what was just written and exactly
  one copy of each model, key and report exists; the ledger is opened by rank 0 only;
- :func:`sweep` spreads independent jobs (the ten keyed models of a reproduction, a thousand random
  keys) over the ranks; inside a job each rank trains alone (:func:`solo`) and the results are
  gathered on every rank in the order of the jobs.

Without torchrun (no ``WORLD_SIZE`` above 1 in the environment) every function here is a no-op and
the world is ``(rank 0, size 1)``. All ranks are assumed to share one file system (one machine).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from deepserial.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

_SOLO = 0  # depth of solo() sections: inside one, this process trains and writes alone


def launched() -> bool:
    """Whether this process was started by torchrun (or an equivalent launcher) with several ranks."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def active() -> bool:
    """Whether collectives run now: a process group is up and this process is not inside :func:`solo`."""
    return _SOLO == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world size) for training: (0, 1) without a process group and inside :func:`solo`."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank() -> int:
    """This process's global rank (also inside :func:`solo`; from the launcher's environment before
    the process group is up)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    """Rank 0: the one process that writes files, ledger rows and output."""
    return rank() == 0


def writes_here() -> bool:
    """Whether this process writes the files it is asked to: rank 0, or any rank inside :func:`solo`
    (a sweep's job writes its own files)."""
    return _SOLO > 0 or is_main_process()


def local_device(spec: str | None) -> str | None:
    """The device this rank trains on: under a launcher with CUDA, ``cuda:LOCAL_RANK`` for ``auto`` and
    ``cuda`` (one GPU per process); otherwise ``spec`` unchanged."""
    if not launched() or not torch.cuda.is_available() or spec not in (None, "", "auto", "cuda"):
        return spec
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def init_from_env(device: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun described (no-op without one); returns whether one is up.

    The backend follows the device: NCCL when this rank trains on a GPU, gloo on CPU (``--device cpu``
    or no GPU present).
    """
    if not launched():
        return False
    if dist.is_initialized():
        return True
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run without torchrun")
    dev = local_device(device)
    use_cuda = dev is not None and str(dev).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(torch.device(dev))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Leave the process group (after a last barrier, so no rank exits while another still writes)."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op unless collectives are :func:`active`)."""
    if active():
        dist.barrier()


def main_only(action: Callable[[], None]) -> None:
    """Run ``action`` (a write) on the rank that writes; every rank waits for it and raises the same
    one-line ConfigError when it failed, instead of waiting at a barrier rank 0 never reaches."""
    error = None
    if writes_here():
        try:
            action()
        except ConfigError as e:
            error = str(e)
    error = broadcast(error)
    if error is not None:
        raise ConfigError(error)


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (no-op unless collectives are :func:`active`). For what is not a
    pure function of the seed: a fresh key pair, a timestamp."""
    if not active():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """A section where this process trains, decides and writes alone (no DDP, no collectives, no
    broadcast)."""
    global _SOLO
    _SOLO += 1
    try:
        yield
    finally:
        _SOLO -= 1


def sweep(items: Sequence[T], fn: Callable[[int, T], R]) -> list[R]:
    """``[fn(i, item) for i, item in enumerate(items)]``, with the jobs spread over the ranks.

    Rank r runs jobs r, r + N, r + 2N, ... each inside :func:`solo`; the results (which must pickle)
    are gathered and returned on every rank in job order (return CPU tensors: a tensor pickled on one
    rank's GPU is restored onto that GPU). A job must depend only on its index and
    item (seed it from ``i``), so the result does not depend on how many processes ran the sweep.
    Without a process group this is a plain loop.
    """
    if not active():
        return [fn(i, item) for i, item in enumerate(items)]
    r, n = dist.get_rank(), dist.get_world_size()
    mine: list[tuple[int, Any]] = []
    with solo():
        for i in range(r, len(items), n):
            mine.append((i, fn(i, items[i])))
    gathered: list[Any] = [None] * n
    dist.all_gather_object(gathered, mine)
    out: dict[int, Any] = {}
    for part in gathered:
        out.update(dict(part))
    return [out[i] for i in range(len(items))]
