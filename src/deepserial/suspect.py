"""Suspects: the models under verification, reached through one small interface.

A black-box verification only ever calls :meth:`Suspect.predict` (labels for a batch of inputs); a
white-box one (Uchida's weights, DeepSigns' hidden activations) also asks for :attr:`Suspect.module`,
which remote suspects do not have. Every suspect counts the queries it answered and enforces an
optional query budget, so a verdict can report what it cost.

Three implementations: a local PyTorch model (:class:`ModuleSuspect`, white-box), an ONNX file run by
onnxruntime (:class:`ONNXSuspect`) and a prediction server reached over HTTP (:class:`HTTPSuspect`,
speaking the API of ``deepserial serve``). :func:`open_suspect` picks one from a path or URL, so every
``verify`` and ``trace`` runs the same on all three. A remote suspect is treated as untrusted: its
answers are bounded in time and size and validated before any verdict uses them (:class:`RemoteClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import threading
import time
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Annotated

import numpy as np
import pydantic_core
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError
from torch import nn

from deepserial.artifacts import load_model, load_onnx
from deepserial.errors import ConfigError, DeepSerialError, InputError
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
        import onnxruntime as ort  # heavy and needed only for ONNX suspects: imported on first use

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


class RemoteError(DeepSerialError):
    """A remote suspect failed to answer, or answered in a way a deepserial prediction server does not
    (too slow, too large, a redirect, malformed or out-of-range values). Nothing it said is used."""


DEFAULT_TIMEOUT = 30.0  # s, one request all told: connect, send, wait, read the whole answer
DEFAULT_TOTAL_TIMEOUT = 600.0  # s, all requests of one suspect together (one command's network time)
DEFAULT_MAX_ANSWER = 4 * 2**20  # bytes of one answer
MAX_REMOTE_BATCH = 65_536  # the largest max_batch a server may announce
MAX_REMOTE_CLASSES = 100_000
MAX_REMOTE_INPUT = 2**24  # values in one input (C * H * W)

_Dim = Annotated[StrictInt, Field(ge=1, le=16_384)]


class _Info(BaseModel):
    """``GET /v1/info`` as a deepserial server answers it (other keys are kept, not used)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    input_shape: tuple[_Dim, _Dim, _Dim]
    num_classes: Annotated[StrictInt, Field(ge=2, le=MAX_REMOTE_CLASSES)]
    max_batch: Annotated[StrictInt, Field(ge=1, le=MAX_REMOTE_BATCH)] = 256
    max_body_bytes: Annotated[StrictInt, Field(ge=1024, le=2**40)] | None = None
    accepts: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=100)] | None = None


class _Answer(BaseModel):
    """``POST /v1/predict``'s answer: integer labels, and optionally confidences (finite numbers)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    labels: Annotated[list[StrictInt], Field(max_length=MAX_REMOTE_BATCH)]
    confidences: Annotated[list[StrictInt | StrictFloat], Field(max_length=MAX_REMOTE_BATCH)] | None = None


def _show(text: str, limit: int = 160) -> str:
    """Untrusted text (a server's words) made fit for one line of a terminal: printable, bounded."""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text[: 8 * limit]).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _first_error(e: ValidationError) -> str:
    """The first problem pydantic found, as ``where: what`` (never the offending value itself)."""
    err = e.errors(include_url=False, include_input=False, include_context=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return _show(f"{where}: {err['msg']}" if where else err["msg"])


class RemoteClient:
    """The one HTTP client of remote suspects, for servers that may be slow, broken or hostile.

    Every request ends within ``timeout`` seconds, all told (connecting, sending, waiting and reading
    the whole answer, however slowly it trickles), and all requests together within ``total_timeout``
    seconds; an answer is read as a stream and abandoned past ``max_answer`` bytes; a redirect is an
    error, never followed (a server cannot send the client, or its batches, elsewhere); compressed
    answers are neither asked for nor accepted (a small gzip body can inflate a thousandfold).
    Connection failures, 429 and 5xx answers are retried ``retries`` times with exponential backoff
    (``backoff`` seconds, doubling); a request that ran out of time is not (it already cost the whole
    timeout). Every failure is one :class:`RemoteError` line.

    The requests run on an asyncio loop in a daemon thread of this client, so that a deadline cancels
    whatever is pending, a connect as well as a read in the middle of a response header; callers stay
    synchronous."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_answer: int = DEFAULT_MAX_ANSWER,
        retries: int = 3,
        backoff: float = 0.25,
    ) -> None:
        import httpx

        if not timeout > 0 or not total_timeout > 0 or retries < 0 or backoff < 0 or max_answer < 1024:
            raise ConfigError(
                "HTTP suspect: timeouts must be > 0 s, retries and backoff >= 0, the answer cap >= 1024 bytes"
            )
        self.base_url = base_url
        self.timeout, self.total_timeout, self.max_answer = float(timeout), float(total_timeout), int(max_answer)
        self.retries, self.backoff = retries, backoff
        self.requests = 0
        self.spent = 0.0  # seconds spent on requests and backoff, against total_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="deepserial-http", daemon=True)
        self._thread.start()
        self._client = httpx.AsyncClient(follow_redirects=False, headers={"accept-encoding": "identity"})
        self._stop = weakref.finalize(self, _stop_loop, self._loop, self._thread)

    def request(self, method: str, path: str, content: bytes | None = None, content_type: str | None = None) -> bytes:
        """The body of a 200 answer to ``method path``, or :class:`RemoteError`."""
        headers = {"content-type": content_type} if content_type else None
        future = asyncio.run_coroutine_threadsafe(self._request(method, path, content, headers), self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C: the pending request is abandoned, not left running
            raise

    async def _request(self, method: str, path: str, content: bytes | None, headers: dict | None) -> bytes:
        import httpx

        url = self.base_url + path
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await self._wait(self.backoff * 2 ** (attempt - 1), url)
            left = self.total_timeout - self.spent
            if left <= 0:
                raise self._out_of_time(url)
            limit = min(self.timeout, left)
            self.requests += 1
            t0 = time.monotonic()
            try:
                status, body = await asyncio.wait_for(self._once(method, url, content, headers, limit), limit)
            except (asyncio.TimeoutError, httpx.TimeoutException):
                if limit < self.timeout:
                    raise self._out_of_time(url) from None
                raise RemoteError(
                    f"{url} did not answer within {self.timeout:g} s; for a slow server, raise the request "
                    "timeout (trace --timeout)"
                ) from None
            except httpx.TransportError as e:  # refused, reset, not HTTP: perhaps passing, so tried again
                last = _show(f"{type(e).__name__}: {e}")
                continue
            except httpx.HTTPError as e:
                raise RemoteError(f"{url}: {_show(f'{type(e).__name__}: {e}')}") from None
            finally:
                self.spent += time.monotonic() - t0
            if status == 429 or status >= 500:
                last = f"HTTP {status}"
                continue
            if status >= 400:
                raise RemoteError(f"{url} refused the request (HTTP {status}): {_reason(body)}")
            if status != 200:
                raise RemoteError(f"{url} answered HTTP {status}, not 200 with a JSON body")
            return body
        raise RemoteError(
            f"{url} did not answer after {self.retries + 1} tries ({last}); check the URL and that the server is "
            "running"
        )

    async def _once(
        self, method: str, url: str, content: bytes | None, headers: dict | None, limit: float
    ) -> tuple[int, bytes]:
        async with self._client.stream(method, url, content=content, headers=headers, timeout=limit) as r:
            if r.is_redirect or 300 <= r.status_code < 400:
                where = _show(r.headers.get("location", "nowhere"), 100)
                raise RemoteError(
                    f"{url} answered a redirect (HTTP {r.status_code} to {where}); redirects are not followed: "
                    "give the prediction server's own URL"
                )
            encoding = r.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise RemoteError(f"{url} sent a compressed answer ({_show(encoding, 40)}) though none was asked for")
            declared = r.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > self.max_answer:
                raise self._too_large(url)
            body = bytearray()
            async for chunk in r.aiter_raw():
                body += chunk
                if len(body) > self.max_answer:
                    raise self._too_large(url)
            return r.status_code, bytes(body)

    async def _wait(self, seconds: float, url: str) -> None:
        left = self.total_timeout - self.spent
        if seconds >= left:
            self.spent = self.total_timeout
            raise self._out_of_time(url)
        await asyncio.sleep(seconds)
        self.spent += seconds

    def _out_of_time(self, url: str) -> RemoteError:
        return RemoteError(
            f"{url}: the server used up the total timeout of {self.total_timeout:g} s over {self.requests} "
            "requests; for a slow server, raise it (trace --total-timeout)"
        )

    def _too_large(self, url: str) -> RemoteError:
        return RemoteError(f"{url} sent an answer over {self.max_answer} bytes; a prediction server's are far smaller")

    def close(self) -> None:
        """Close the connections and stop the client's thread."""
        if self._stop.alive:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(5)
            self._stop()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop a :class:`RemoteClient`'s loop and thread (also run when a client is garbage-collected)."""
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    if not thread.is_alive():
        loop.close()


def _reason(body: bytes) -> str:
    """A refusing server's ``detail``, or its body, as one bounded line."""
    try:
        doc = pydantic_core.from_json(body)
    except ValueError:
        return _show(body.decode("utf-8", "replace")) or "no reason given"
    return _show(str(doc.get("detail", doc) if isinstance(doc, dict) else doc)) or "no reason given"


class HTTPSuspect(Suspect):
    """A prediction server speaking ``deepserial serve``'s API, reached over HTTP (black-box).

    ``GET /v1/info`` gives the input shape, label count and limits; each batch goes to ``POST
    /v1/predict`` as ``.npy`` bytes, split to the server's ``max_batch`` (and ``max_body_bytes``). Every
    answer is validated before any of it is used: the info against a schema with sane ranges, each
    prediction as exactly one integer label in ``[0, num_classes)`` per input (and finite confidences,
    if sent); anything else is a :class:`RemoteError`, so a malformed answer never becomes a verdict.
    Timeouts, size caps, redirects and retries are :class:`RemoteClient`'s. Queries are counted against
    the budget before they are sent."""

    def __init__(
        self,
        url: str,
        budget: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.25,
        *,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_answer: int = DEFAULT_MAX_ANSWER,
    ) -> None:
        import httpx

        super().__init__(budget)
        self.url = url.rstrip("/").removesuffix("/v1/predict")
        try:
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"{_show(url, 100)} is not an http(s)://host[:port] URL")
        self._http = RemoteClient(
            self.url,
            timeout=timeout,
            total_timeout=total_timeout,
            max_answer=max_answer,
            retries=retries,
            backoff=backoff,
        )
        try:
            info = _Info.model_validate_json(self._http.request("GET", "/v1/info"))
        except ValidationError as e:
            self.close()
            raise RemoteError(
                f"{self.url}/v1/info does not describe a deepserial prediction server ({_first_error(e)})"
            ) from None
        except BaseException:
            self.close()
            raise
        if math.prod(info.input_shape) > MAX_REMOTE_INPUT:
            self.close()
            raise RemoteError(f"{self.url}/v1/info gives an input shape of over {MAX_REMOTE_INPUT} values")
        if info.accepts is not None and "application/x-npy" not in info.accepts:
            self.close()
            raise RemoteError(f"{self.url}/v1/info says the server does not accept .npy batches")
        self._shape = info.input_shape
        self._num_outputs = info.num_classes
        self.max_batch = info.max_batch
        if info.max_body_bytes is not None:  # a batch's .npy must fit the body limit too (header: < 1 KiB)
            per_input = 4 * math.prod(self._shape)
            fit = (info.max_body_bytes - 1024) // per_input
            if fit < 1:
                self.close()
                raise RemoteError(
                    f"{self.url}/v1/info: its body limit of {info.max_body_bytes} bytes is smaller than one input"
                )
            self.max_batch = min(self.max_batch, fit)
        self.info = info.model_dump()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def num_outputs(self) -> int:
        return self._num_outputs

    @property
    def requests(self) -> int:
        """HTTP requests sent so far (tries included)."""
        return self._http.requests

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        arr = x.detach().cpu().float().numpy()
        for i in range(0, len(arr), self.max_batch):
            part = np.ascontiguousarray(arr[i : i + self.max_batch])
            buf = io.BytesIO()
            np.save(buf, part, allow_pickle=False)
            body = self._http.request("POST", "/v1/predict", buf.getvalue(), "application/x-npy")
            out.append(torch.tensor(self._check_answer(body, len(part)), dtype=torch.long))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def _check_answer(self, body: bytes, n: int) -> list[int]:
        """The labels of a ``/v1/predict`` answer for ``n`` inputs, or :class:`RemoteError`."""
        where = f"{self.url}/v1/predict"
        try:
            answer = _Answer.model_validate_json(body)
        except ValidationError as e:
            raise RemoteError(f"{where} answered without a valid list of labels ({_first_error(e)})") from None
        labels = answer.labels
        if len(labels) != n:
            raise RemoteError(f"{where} answered {len(labels)} labels for {n} inputs")
        bad = next((v for v in labels if not 0 <= v < self._num_outputs), None)
        if bad is not None:
            shown = str(bad) if abs(bad) < 10**12 else "a huge number"
            raise RemoteError(f"{where} answered label {shown}, outside 0..{self._num_outputs - 1}")
        conf = answer.confidences
        if conf is not None and (len(conf) != n or any(not 0 <= v <= 1 for v in conf)):
            raise RemoteError(f"{where} answered confidences that are not {n} numbers in [0, 1]")
        return labels

    def close(self) -> None:
        """Close the connections to the server."""
        self._http.close()

    def __enter__(self) -> HTTPSuspect:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_suspect(
    spec: str | Path,
    budget: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = 3,
    *,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
) -> Suspect:
    """A suspect from a URL (``http://`` or ``https://``: :class:`HTTPSuspect`, ``timeout`` seconds per
    request and ``total_timeout`` for all of them), an ``.onnx`` file (:class:`ONNXSuspect`) or a
    deepserial ``.safetensors`` model file (:class:`ModuleSuspect`)."""
    text = str(spec)
    if text.lower().startswith(("http://", "https://")):
        return HTTPSuspect(text, budget=budget, timeout=timeout, retries=retries, total_timeout=total_timeout)
    path = Path(text)
    if not path.exists():
        raise InputError(f"suspect {path} does not exist; give a model file (.safetensors, .onnx) or an http(s) URL")
    if path.suffix.lower() == ".onnx":
        return ONNXSuspect(path, budget=budget)
    return ModuleSuspect.from_loaded(load_model(path), budget=budget)
