"""A prediction server for one model: FastAPI behind uvicorn.

``deepserial serve MODEL`` is how a customer runs the model they were issued. For a DSN customer model
the server holds the customer's serial number (from a file or an environment variable, never from
the command line, where other users of the machine could read it) and stamps it on every input, as
``deepserial predict`` does; it never logs or returns it. With ``raw_inputs`` the server stamps nothing
and answers on inputs exactly as sent (clients that stamp themselves, and the setting in which a
vendor can trace a served copy; see :mod:`deepserial.tracing`). Ownership-watermarked models need
no serial number.

API (all JSON answers):

- ``GET /v1/health``: ``{"status": "ok"}``.
- ``GET /v1/info``: network, input shape, label count, scheme, model digest, whether the server
  stamps a serial number, and the limits below. No secret.
- ``POST /v1/predict``: a batch as ``application/json`` (``{"inputs": [...]}``, nested arrays of
  shape (N, C, H, W), or (N, H, W) for one channel), ``application/x-npy`` (``numpy.save`` bytes of a
  float array in [0, 1], or uint8 0-255) or ``image/png`` (one image of exactly the input size).
  Answer: ``{"labels": [...], "confidences": [...]}``.

Every malformed request gets a 4xx answer that says what is wrong (400 unreadable body, 413 too
large, 415 unsupported content type, 422 wrong shape, dtype or value range); an unexpected failure
inside the model is a 500 with a generic message, and the server keeps serving.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from typing import Any

import numpy as np
import torch
from fastapi import Request  # at module level: FastAPI resolves the endpoints' annotations here

from deepserial.artifacts import LoadedModel
from deepserial.errors import ConfigError, InputError
from deepserial.serial import SerialNumber, stamp
from deepserial.training import predict_logits

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_BODY = 8 * 2**20

log = logging.getLogger("deepserial.serve")


class RequestError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_batch(body: bytes, content_type: str, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """The float32 batch (N, C, H, W) in [0, 1] a request body holds, or :class:`RequestError`."""
    ctype = content_type.split(";")[0].strip().lower()
    if not body:
        raise RequestError(400, "empty request body; send a batch as JSON, .npy bytes or a PNG image")
    if ctype == "application/json":
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, 'body is not valid JSON; send {"inputs": [[...]]}') from None
        if not isinstance(doc, dict) or "inputs" not in doc:
            raise RequestError(422, 'JSON body must be an object with key "inputs" (nested arrays (N, C, H, W))')
        try:
            arr = np.asarray(doc["inputs"], dtype=np.float64)
        except (ValueError, TypeError):
            raise RequestError(422, '"inputs" must be nested arrays of numbers (N, C, H, W)') from None
    elif ctype in ("application/x-npy", "application/octet-stream"):
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise RequestError(400, "body is not a .npy array (write it with numpy.save, allow_pickle=False)") from None
    elif ctype == "image/png":
        arr = _png(body, input_shape)
    else:
        raise RequestError(
            415, f"unsupported content type {ctype!r}; use application/json, application/x-npy or image/png"
        )
    return _check(arr, input_shape)


def _png(body: bytes, input_shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = input_shape
    try:
        img = Image.open(io.BytesIO(body))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(400, "body is not a readable PNG image") from None
    if img.format != "PNG":
        raise RequestError(415, f"body is a {img.format} image; send PNG")
    if img.size != (w, h):
        raise RequestError(
            422,
            f"image is {img.size[0]}x{img.size[1]}, the model takes {w}x{h} (width x height); "
            "resize it before sending (the server does not, a resized serial number is another one)",
        )
    arr = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
    arr = arr[None, None] if c == 1 else arr.transpose(2, 0, 1)[None]
    return arr


def _check(arr: np.ndarray, input_shape: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = input_shape
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype.kind != "f":
        raise RequestError(422, f"array dtype {arr.dtype} is not supported; send float32 in [0, 1] or uint8 0-255")
    if arr.ndim == 3 and c == 1:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1:] != (c, h, w):
        raise RequestError(
            422,
            f"batch has shape {tuple(arr.shape)}; the model takes (N, {c}, {h}, {w})"
            + (f" or (N, {h}, {w})" if c == 1 else ""),
        )
    if arr.shape[0] == 0:
        raise RequestError(422, "batch is empty; send at least one input")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise RequestError(422, "input values must be finite and in [0, 1]; scale 0-255 images by 1/255")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def create_app(
    model: LoadedModel,
    serial: SerialNumber | None = None,
    *,
    raw_inputs: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body: int = DEFAULT_MAX_BODY,
) -> Any:
    """The FastAPI application serving ``model`` (see the module docstring for the API)."""
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    from deepserial.serial import SerialGeometry

    if max_batch < 1 or max_body < 1024:
        raise ConfigError("max batch must be >= 1 and max body >= 1024 bytes")
    man = model.manifest
    shape = model.input_shape
    protected = "serial_geometry" in man
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
        expect = SerialGeometry.from_dict(man["serial_geometry"])
        if serial.geometry != expect:
            raise ConfigError(
                f"the serial number is for {serial.geometry.describe()}, the model expects "
                f"{expect.describe()}; use the key issued with this model"
            )
    bits = serial.as_tensor() if serial is not None else None
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
        "accepts": ["application/json", "application/x-npy", "image/png"],
    }

    def infer(x: torch.Tensor) -> dict[str, list]:
        if bits is not None:
            x = stamp(x, serial.geometry, bits)  # type: ignore[union-attr]
        probs = torch.softmax(predict_logits(net, x), 1)
        conf, pred = probs.max(1)
        return {"labels": pred.tolist(), "confidences": [round(float(v), 6) for v in conf]}

    app = FastAPI(title="deepserial prediction server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def bad_request(_: Request, e: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.exception_handler(Exception)
    async def failure(_: Request, e: Exception) -> JSONResponse:
        log.error("prediction failed: %s", type(e).__name__)  # the type only: never an input or a secret
        return JSONResponse({"detail": "internal error while predicting; the server is still up"}, status_code=500)

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/info")
    async def get_info() -> dict[str, Any]:
        return info

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, list]:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            raise RequestError(413, f"body of {declared} bytes is over the limit of {max_body} bytes; split the batch")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise RequestError(413, f"body is over the limit of {max_body} bytes; split the batch")
        x = decode_batch(bytes(body), request.headers.get("content-type", ""), shape)
        if len(x) > max_batch:
            raise RequestError(413, f"batch of {len(x)} inputs is over the limit of {max_batch}; split it")
        try:
            return await run_in_threadpool(infer, x)
        except InputError as e:
            raise RequestError(422, str(e)) from None

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


def server(app: Any, log_level: str = "warning") -> Any:
    """A uvicorn server for ``app``: ``.run(sockets=[bind(...)])`` serves, ``.should_exit = True`` stops."""
    import uvicorn

    cfg = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"), lifespan="off")
    return uvicorn.Server(cfg)
