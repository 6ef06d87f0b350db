"""A prediction server for one model: FastAPI behind uvicorn.

``deepserial serve MODEL`` is how a customer runs the model they were issued. For a DSN customer model
the server holds the customer's serial number (from a file or an environment variable, never from
the command line, where other users of the machine could read it) and stamps it on every input, as
``deepserial predict`` does; it never logs or returns it. With ``raw_inputs`` the server stamps nothing
and answers on inputs exactly as sent (clients that stamp themselves, and the setting in which a
vendor can trace a served copy; see :mod:`deepserial.tracing`); its inputs may then hold the key's
levels (-A..+A for a geometry that writes bits at amplitude A, ``value_range`` in ``/v1/info``).
Ownership-watermarked models need no serial number.

API (all JSON answers):

- ``GET /v1/health``: ``{"status": "ok"}``.
- ``GET /v1/info``: network, input shape, label count, scheme, model digest, whether the server
  stamps a serial number, and the limits below. No secret.
- ``POST /v1/predict``: a batch as ``application/json`` (``{"inputs": [...]}``, nested arrays of
  shape (N, C, H, W), or (N, H, W) for one channel), ``application/x-npy`` (``numpy.save`` bytes of a
  float array in [0, 1], or uint8 0-255) or ``image/png`` (one image of exactly the input size).
  Answer: ``{"labels": [...], "confidences": [...]}``.

Every malformed request gets a 4xx answer whose JSON ``detail`` is one line saying what is wrong (400
unreadable body, 408 body too slow, 413 too large, 415 unsupported content type, 422 wrong shape, dtype
or value range), and the server logs no traceback for it. Limits are checked before the work they
bound: the body size while it is read, a ``.npy`` header's shape and dtype before its data is touched,
a PNG's width and height before it is decompressed, the JSON nesting depth while it is parsed. Anything
unexpected becomes a 500 with a generic message and a one-line log naming only the exception type (never
an input or a secret), and the server keeps serving. Slow clients are cut: request headers must be
complete within ``header_timeout`` seconds of the connection opening (or of the previous answer), the
body within ``body_timeout`` seconds of the headers; past ``max_inflight`` predictions in progress a
request is answered 503 at once rather than queued. What belongs in front of the server in production
(TLS, authentication, rate limits) is in docs/security.md.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import struct
from typing import Any

import numpy as np
import torch
from fastapi import Request  # at module level: FastAPI resolves the endpoints' annotations here
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, ValidationError

from deepserial.artifacts import LoadedModel
from deepserial.errors import ConfigError, InputError
from deepserial.inputs import ImageSizeError, image_pixels, npy_from_bytes, open_image, read_npy_header
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.training import predict_logits

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_BODY = 8 * 2**20
DEFAULT_HEADER_TIMEOUT = 10.0  # s from connection (or previous answer) to complete request headers
DEFAULT_BODY_TIMEOUT = 30.0  # s from the headers to the end of the body
DEFAULT_KEEP_ALIVE = 5.0  # s an idle keep-alive connection is kept
DEFAULT_MAX_CONNECTIONS = 1000  # open connections before every new request gets 503 (uvicorn's limit)
DEFAULT_MAX_INFLIGHT = 64  # predictions in progress (body read to answer) before new ones get 503
MAX_HEADER_BYTES = 16 * 1024  # request line and headers together
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

log = logging.getLogger("deepserial.serve")

_Number = StrictInt | StrictFloat


class _JSONBatch(BaseModel):
    """A JSON request body. Strict: numbers only (no strings, booleans or null), finite, and nested
    exactly three or four deep; the parser (pydantic's) refuses nesting past its recursion limit."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    inputs: list[list[list[list[_Number]]]] | list[list[list[_Number]]]


class RequestError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_batch(
    body: bytes,
    content_type: str,
    input_shape: tuple[int, int, int],
    max_batch: int = DEFAULT_MAX_BATCH,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """The float32 batch (N, C, H, W) with values in ``value_range`` (images: [0, 1]) a request body
    holds, or :class:`RequestError`.

    ``max_batch`` is enforced before the batch is decoded (from the ``.npy`` header, the JSON list's
    length); a PNG is one input, its size checked before it is decompressed."""
    ctype = content_type.split(";")[0].strip().lower()
    if not body:
        raise RequestError(400, "empty request body; send a batch as JSON, .npy bytes or a PNG image")
    if ctype == "application/json":
        arr = _json(body, input_shape, max_batch)
    elif ctype in ("application/x-npy", "application/octet-stream"):
        arr = _npy(body, input_shape, max_batch)
    elif ctype == "image/png":
        arr = _png(body, input_shape)
    else:
        raise RequestError(
            415, f"unsupported content type {ctype[:60]!r}; use application/json, application/x-npy or image/png"
        )
    return _check(arr, input_shape, value_range)


def _shape_text(input_shape: tuple[int, int, int]) -> str:
    c, h, w = input_shape
    return f"(N, {c}, {h}, {w})" + (f" or (N, {h}, {w})" if c == 1 else "")


def _batch_limit(n: int, max_batch: int) -> None:
    if n > max_batch:
        raise RequestError(413, f"batch of {n} inputs is over the limit of {max_batch}; split it")


def _json(body: bytes, input_shape: tuple[int, int, int], max_batch: int) -> np.ndarray:
    try:
        doc = _JSONBatch.model_validate_json(body)
    except ValidationError as e:
        err = e.errors(include_url=False, include_input=False)[0]
        if err["type"] == "json_invalid":
            why = str(err.get("ctx", {}).get("error", "syntax error"))[:120]
            raise RequestError(400, f'body is not valid JSON ({why}); send {{"inputs": [[...]]}}') from None
        if not err["loc"] or err["loc"][0] != "inputs" or err["type"] == "missing":
            raise RequestError(
                422, 'JSON body must be an object with key "inputs" (nested arrays (N, C, H, W))'
            ) from None
        raise RequestError(
            422, f'"inputs" must be nested arrays of finite numbers, shaped {_shape_text(input_shape)}'
        ) from None
    _batch_limit(len(doc.inputs), max_batch)
    try:
        return np.asarray(doc.inputs, dtype=np.float64)
    except (ValueError, OverflowError):  # ragged nesting; an integer past float64's range
        raise RequestError(
            422, f'"inputs" must be nested arrays of finite numbers, shaped {_shape_text(input_shape)}'
        ) from None


def _npy(body: bytes, input_shape: tuple[int, int, int], max_batch: int) -> np.ndarray:
    c, h, w = input_shape
    try:
        header = read_npy_header(io.BytesIO(body), "body")
    except InputError as e:
        raise RequestError(400, str(e)) from None
    shape = header.shape
    if not shape or shape[1:] not in ((c, h, w), (h, w) if c == 1 else (c, h, w)):
        raise RequestError(422, f"batch has shape {shape}; the model takes {_shape_text(input_shape)}")
    _batch_limit(shape[0], max_batch)
    try:
        return npy_from_bytes(body, header, "body")
    except InputError as e:
        raise RequestError(400, str(e)) from None


def _png(body: bytes, input_shape: tuple[int, int, int]) -> np.ndarray:
    if not body.startswith(PNG_SIGNATURE):
        raise RequestError(415, "body is not a PNG image (it lacks the PNG signature); send PNG")
    if len(body) >= 24 and body[12:16] == b"IHDR":  # the size, straight from the header, before Pillow
        w, h = struct.unpack(">II", body[16:24])
        if (w, h) != (input_shape[2], input_shape[1]):
            raise RequestError(
                422,
                f"image is {w}x{h}, the model takes {input_shape[2]}x{input_shape[1]} (width x height); "
                "resize it before sending (the server does not, a resized serial number is another one)",
            )
    try:
        img = open_image(io.BytesIO(body), input_shape, "image", formats=["PNG"])
    except ImageSizeError as e:
        raise RequestError(422, str(e)) from None
    except InputError:
        raise RequestError(400, "body is not a readable PNG image") from None
    try:
        return image_pixels(img, input_shape, "image")
    except InputError as e:
        raise RequestError(400, str(e)) from None


def _check(arr: np.ndarray, input_shape: tuple[int, int, int], value_range: tuple[float, float]) -> torch.Tensor:
    c, h, w = input_shape
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype.kind != "f":
        raise RequestError(422, f"array dtype {arr.dtype} is not supported; send float32 in [0, 1] or uint8 0-255")
    if arr.ndim == 3 and c == 1:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1:] != (c, h, w):
        raise RequestError(422, f"batch has shape {tuple(arr.shape)}; the model takes {_shape_text(input_shape)}")
    if arr.shape[0] == 0:
        raise RequestError(422, "batch is empty; send at least one input")
    with np.errstate(all="ignore"):
        ok = bool(np.isfinite(arr).all()) and arr.min() >= value_range[0] and arr.max() <= value_range[1]
    if not ok:
        lo, hi = value_range
        raise RequestError(422, f"input values must be finite and in [{lo:g}, {hi:g}]; scale 0-255 images by 1/255")
    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))


class _Contain:
    """ASGI middleware: an exception that escapes the application becomes a 500 with a generic JSON
    message and one log line naming its type, instead of a traceback in the log and internals in the
    answer (Starlette's own last-resort handler logs the traceback)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # the last resort: nothing may reach the log as a traceback
            log.error("request failed: %s", type(e).__name__)  # the type only: never an input or a secret
            if not started:
                from fastapi.responses import JSONResponse

                answer = JSONResponse({"detail": "internal error; the server is still up"}, status_code=500)
                await answer(scope, receive, send)


def create_app(
    model: LoadedModel,
    serial: SerialNumber | None = None,
    *,
    raw_inputs: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body: int = DEFAULT_MAX_BODY,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
) -> Any:
    """The FastAPI application serving ``model`` (see the module docstring for the API and limits).

    At most ``max_inflight`` predictions are in progress at once (each holds up to ``max_body`` bytes
    of body, so that bounds their memory); past it a request is answered 503 at once. This limit counts
    requests, not connections, so clients that hold connections open without finishing a request
    (until the header timeout cuts them) do not crowd out the ones that send requests."""
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect

    if max_batch < 1 or max_body < 1024:
        raise ConfigError("max batch must be >= 1 and max body >= 1024 bytes")
    if not body_timeout > 0 or max_inflight < 1:
        raise ConfigError(
            f"body timeout must be > 0 seconds and max in-flight >= 1, got {body_timeout}, {max_inflight}"
        )
    man = model.manifest
    shape = model.input_shape
    protected = "serial_geometry" in man
    geometry = SerialGeometry.from_dict(man["serial_geometry"]) if protected else None
    if protected and serial is None and not raw_inputs:
        raise ConfigError(
            "this is a serial-number protected model: give its serial number (--serial-file FILE or "
            "DEEPSERIAL_SERIAL), or --raw-inputs if clients stamp it themselves"
        )
    if serial is not None and raw_inputs:
        raise ConfigError("--raw-inputs serves inputs unstamped: do not give a serial number with it")
    if serial is not None:
        if not protected:
            raise ConfigError(
                "this model takes no serial number (its manifest has no serial geometry); serve it without one"
            )
        if serial.geometry != geometry:
            raise ConfigError(
                f"the serial number is for {serial.geometry.describe()}, the model expects "
                f"{geometry.describe()}; use the key issued with this model"
            )
    bits = serial.as_tensor() if serial is not None else None
    # clients of a raw-input server stamp the key themselves, at the geometry's levels (-A/+A when loud)
    value_range = (0.0, 1.0)
    if geometry is not None and raw_inputs:
        lo, hi = geometry.levels
        value_range = (min(0.0, lo), max(1.0, hi))
    net = model.model.eval()
    info = {
        "arch": man["arch"],
        "input_shape": list(shape),
        "num_classes": int(man["num_classes"]),
        "scheme": man.get("scheme"),
        "model_sha256": man.get("integrity", {}).get("sha256"),
        "stamps_serial": bits is not None,
        "max_batch": max_batch,
        "max_body_bytes": max_body,
        "body_timeout_s": body_timeout,
        "accepts": ["application/json", "application/x-npy", "image/png"],
        "value_range": list(value_range),
    }

    def infer(x: torch.Tensor) -> dict[str, list]:
        if bits is not None:
            x = stamp(x, serial.geometry, bits)  # type: ignore[union-attr]
        probs = torch.softmax(predict_logits(net, x), 1)
        conf, pred = probs.max(1)
        return {"labels": pred.tolist(), "confidences": [round(float(v), 6) for v in conf]}

    async def read_body(request: Request) -> bytes:
        """The body, refused past ``max_body`` bytes (declared or streamed) or ``body_timeout`` seconds."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise RequestError(400, "Content-Length is not a number")
            if int(declared) > max_body:
                raise RequestError(
                    413, f"body of {declared[:20]} bytes is over the limit of {max_body} bytes; split the batch"
                )
        body = bytearray()

        async def collect() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > max_body:
                    raise RequestError(413, f"body is over the limit of {max_body} bytes; split the batch")

        try:
            await asyncio.wait_for(collect(), body_timeout)
        except asyncio.TimeoutError:
            raise RequestError(408, f"body did not arrive within {body_timeout:g} s; send it at once") from None
        except ClientDisconnect:
            raise RequestError(400, "the client disconnected before the body was complete") from None
        return bytes(body)

    app = FastAPI(title="deepserial prediction server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Contain)

    @app.exception_handler(RequestError)
    async def bad_request(_: Request, e: RequestError) -> JSONResponse:
        # 408, 413 and 503 may leave a body unread: closing is the only way to stop its sender
        close = {"connection": "close"} if e.status in (408, 413, 503) else None
        return JSONResponse({"detail": str(e)}, status_code=e.status, headers=close)

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/info")
    async def get_info() -> dict[str, Any]:
        return info

    inflight = 0  # changed on the event loop only: no lock needed

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, list]:
        nonlocal inflight
        if inflight >= max_inflight:
            raise RequestError(503, f"server busy ({max_inflight} predictions in progress); try again shortly")
        inflight += 1
        try:
            body = await read_body(request)
            x = decode_batch(body, request.headers.get("content-type", ""), shape, max_batch, value_range)
            try:
                return await run_in_threadpool(infer, x)
            except InputError as e:
                raise RequestError(422, str(e)) from None
        finally:
            inflight -= 1

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so callers and tests know the port before serving."""
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None
    # Accepted connections inherit this: without it, a response written as headers then body waits for
    # the client's delayed ACK (Nagle), ~40 ms on every request on Linux.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline on request headers.

    uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but any byte resets that
    timer and a connection that was never used has none: a client sending its headers one byte at a
    time holds a connection for as long as it likes. Here every connection must deliver complete
    request headers within ``header_timeout`` seconds of opening, and again of each answer; otherwise
    it is closed."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _headers_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.info("closed a connection whose request headers took over %g s", header_timeout)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # a keep-alive connection: the next request's headers get the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineH11


def server(
    app: Any,
    log_level: str = "warning",
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    keep_alive: float = DEFAULT_KEEP_ALIVE,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> Any:
    """A uvicorn server for ``app``: ``.run(sockets=[bind(...)])`` serves, ``.should_exit = True`` stops.

    Request headers are bounded to :data:`MAX_HEADER_BYTES` and ``header_timeout`` seconds, idle
    keep-alive connections to ``keep_alive`` seconds; past ``max_connections`` open connections new
    requests are answered 503 rather than queued (each connection is a file descriptor: keep the
    process's limit, ``ulimit -n``, above it)."""
    import uvicorn

    if not header_timeout > 0 or not keep_alive > 0 or max_connections < 1:
        raise ConfigError("header timeout and keep-alive must be > 0 seconds, max connections >= 1")
    cfg = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=log_level in ("info", "debug"),
        lifespan="off",
        http=_protocol(header_timeout),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=keep_alive,
        limit_concurrency=max_connections,
    )
    return uvicorn.Server(cfg)
