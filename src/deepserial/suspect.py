"""Suspects: the models under verification, reached through one small interface.

A black-box verification only ever calls :meth:`Suspect.predict` (labels for a batch of inputs); a
white-box one (Uchida's weights, DeepSigns' hidden activations) also asks for :attr:`Suspect.module`,
which remote suspects do not have. Every suspect counts the queries it answered and enforces an
optional query budget, so a verdict can report what it cost.

Three implementations: a local PyTorch model (:class:`ModuleSuspect`, white-box), an ONNX file run by
onnxruntime (:class:`ONNXSuspect`) and a prediction server reached over HTTP (:class:`HTTPSuspect`,
speaking the API of ``deepserial serve``). :func:`open_suspect` picks one from a path or URL, so every
``verify`` and ``trace`` runs the same on all three.
"""

from __future__ import annotations

import io
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepserial.errors import ConfigError, InputError
from deepserial.training import EVAL_BATCH, model_device


class QueryBudgetError(InputError):
    """The verification needed more queries than the suspect's budget allows."""


class Suspect(ABC):
    """Anything that returns labels for inputs."""

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None and budget < 1:
            raise ConfigError(f"query budget must be >= 1, got {budget}")
        self.budget = budget
        self.queries = 0

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input."""

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Number of labels the suspect can answer (C, or C+1 for a new-label model)."""

    @abstractmethod
    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (N,) int64 for a batch (N, C, H, W)."""

    @property
    def module(self) -> nn.Module | None:
        """The network itself when the suspect is white-box, else None."""
        return None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels of ``x``, counting ``len(x)`` queries against the budget (refused before any is spent
        when the batch would exceed it)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise InputError(
                f"suspect expects inputs of shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        self.charge(len(x))
        return self._labels(x).to(torch.long).cpu()

    def reserve(self, n: int, lower: str = "the verification's query count") -> None:
        """Refuse, before any query is spent, a verification that may need ``n`` more queries than the
        budget leaves (``lower`` names the setting that reduces them)."""
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetError(
                f"query budget exhausted: {self.queries} used, {n} more needed, budget "
                f"{self.budget}; raise the budget or lower {lower}"
            )

    def charge(self, n: int) -> None:
        """Count ``n`` queries against the budget: label queries, and the forwards of white-box schemes
        that read activations, so that every verdict's query count means the same."""
        self.reserve(n)
        self.queries += n

    def require_module(self, scheme: str) -> nn.Module:
        """The white-box network, or a clear error for black-box suspects."""
        m = self.module
        if m is None:
            raise InputError(
                f"scheme {scheme!r} verifies white-box (weights or activations); this suspect "
                "answers labels only. Use a black-box scheme or a local model file."
            )
        return m


class ModuleSuspect(Suspect):
    """A local PyTorch model as a suspect (white-box: :attr:`module` is available)."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        num_outputs: int | None = None,
        budget: int | None = None,
        batch_size: int = EVAL_BATCH,
    ) -> None:
        super().__init__(budget)
        self._model = model.eval()
        self._shape = tuple(int(v) for v in input_shape)
        if num_outputs is None:
            with torch.no_grad():
                num_outputs = int(model(torch.zeros(1, *self._shape, device=model_device(model))).shape[1])
        self._num_outputs = int(num_outputs)
        self._bs = batch_size

    @classmethod
    def from_loaded(cls, loaded, budget: int | None = None) -> ModuleSuspect:  # noqa: ANN001 (LoadedModel)
        """A suspect from a :class:`~deepserial.artifacts.LoadedModel`."""
        return cls(loaded.model, loaded.input_shape, int(loaded.manifest["num_classes"]), budget)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def num_outputs(self) -> int:
        return self._num_outputs

    @property
    def module(self) -> nn.Module:
        return self._model

    @torch.no_grad()
    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        dev = model_device(self._model)
        self._model.eval()
        out = [self._model(x[i : i + self._bs].to(dev)).argmax(1).cpu() for i in range(0, len(x), self._bs)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class ONNXSuspect(Suspect):
    """An ONNX export (``deepserial export --format onnx``) run by onnxruntime on the CPU (black-box)."""

    def __init__(self, path: str | Path, budget: int | None = None, batch_size: int = 2048) -> None:
        import onnxruntime as ort

        from deepserial.artifacts import load_onnx

        super().__init__(budget)
        raw, self.manifest = load_onnx(path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._shape = tuple(int(v) for v in self.manifest["input_shape"])
        self._num_outputs = int(self.manifest["num_classes"])
        self._bs = batch_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def num_outputs(self) -> int:
        return self._num_outputs

    def logits(self, x: torch.Tensor) -> np.ndarray:
        """Raw logits (N, num_outputs) of a batch, without counting queries (parity checks)."""
        arr = x.detach().cpu().float().numpy()
        outs = [self._session.run(None, {self._input: arr[i : i + self._bs]})[0] for i in range(0, len(arr), self._bs)]
        return np.concatenate(outs) if outs else np.zeros((0, self._num_outputs), np.float32)

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.logits(x).argmax(1))


class HTTPSuspect(Suspect):
    """A prediction server speaking ``deepserial serve``'s API, reached over HTTP (black-box).

    ``GET /v1/info`` gives the input shape and label count; each batch goes to ``POST /v1/predict`` as
    ``.npy`` bytes, split to the server's ``max_batch``. Connection errors, timeouts, 429 and 5xx
    answers are retried ``retries`` times with exponential backoff (``backoff`` seconds, doubling);
    a 4xx answer is an error at once, with the server's reason. Queries are counted against the budget
    before they are sent."""

    def __init__(
        self,
        url: str,
        budget: int | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.25,
        client: Any = None,
    ) -> None:
        import httpx

        super().__init__(budget)
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ConfigError("HTTP suspect: timeout must be > 0, retries and backoff >= 0")
        self.url = url.rstrip("/").removesuffix("/v1/predict")
        self.retries, self.backoff = retries, backoff
        self.requests = 0
        self._client = client or httpx.Client(timeout=timeout)
        info = self._call("GET", "/v1/info").json()
        try:
            self._shape = tuple(int(v) for v in info["input_shape"])
            self._num_outputs = int(info["num_classes"])
            self.max_batch = int(info.get("max_batch", 256))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{self.url}/v1/info does not describe a deepserial prediction server") from None
        if len(self._shape) != 3:
            raise InputError(f"{self.url}/v1/info gives input shape {self._shape}; expected (C, H, W)")
        self.info = info

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def num_outputs(self) -> int:
        return self._num_outputs

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                self.requests += 1
                r = self._client.request(method, self.url + path, **kw)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}"
                continue
            if r.status_code >= 400:
                try:
                    why = r.json().get("detail", r.text)
                except ValueError:
                    why = r.text
                raise InputError(f"{self.url}{path} refused the request (HTTP {r.status_code}): {why}")
            return r
        raise InputError(
            f"{self.url}{path} did not answer after {self.retries + 1} tries ({last}); check the URL "
            "and that the server is running"
        )

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        arr = x.detach().cpu().float().numpy()
        for i in range(0, len(arr), self.max_batch):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr[i : i + self.max_batch]), allow_pickle=False)
            r = self._call("POST", "/v1/predict", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
            try:
                labels = [int(v) for v in r.json()["labels"]]
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{self.url}/v1/predict answered without a list of labels") from None
            if len(labels) != len(arr[i : i + self.max_batch]):
                raise InputError(
                    f"{self.url}/v1/predict answered {len(labels)} labels for {len(arr[i : i + self.max_batch])} inputs"
                )
            out.append(torch.tensor(labels, dtype=torch.long))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def close(self) -> None:
        self._client.close()


def open_suspect(spec: str | Path, budget: int | None = None, timeout: float = 10.0, retries: int = 3) -> Suspect:
    """A suspect from a URL (``http://`` or ``https://``: :class:`HTTPSuspect`), an ``.onnx`` file
    (:class:`ONNXSuspect`) or a deepserial ``.safetensors`` model file (:class:`ModuleSuspect`)."""
    text = str(spec)
    if text.startswith(("http://", "https://")):
        return HTTPSuspect(text, budget=budget, timeout=timeout, retries=retries)
    path = Path(text)
    if not path.exists():
        raise InputError(f"suspect {path} does not exist; give a model file (.safetensors, .onnx) or an http(s) URL")
    if path.suffix.lower() == ".onnx":
        return ONNXSuspect(path, budget=budget)
    from deepserial.artifacts import load_model

    return ModuleSuspect.from_loaded(load_model(path), budget=budget)
