"""Property tests of the server's input parsing: whatever a client sends, :func:`decode_batch` either
returns a valid batch or refuses it with a 4xx :class:`RequestError` of one line, and the HTTP endpoint
never answers 5xx. Inputs are drawn near the valid ones (mutated .npy, PNG and JSON bodies, headers
that declare anything) as well as at random, since that is where parsers break."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deepserial.artifacts import LoadedModel
from deepserial.serve import RequestError, create_app, decode_batch

SHAPE = (1, 4, 4)  # a tiny model input keeps every example cheap; the parsing is the same
MAX_BATCH = 8
CTYPES = ["application/json", "application/x-npy", "application/octet-stream", "image/png"]


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid body with a few bytes overwritten, inserted or cut off."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "insert", "truncate"]))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(max_size=16))
        else:
            del data[at:]
    return bytes(data)


dims = st.integers(-2, 10**12) | st.integers(0, 6)
npy_arrays = st.builds(
    lambda n, dt, lead3: np.zeros((n, *SHAPE[1:]) if lead3 else (n, *SHAPE), dtype=dt),
    st.integers(0, MAX_BATCH + 2),
    st.sampled_from(["<f4", ">f8", "<f2", "|u1", "<i4", "|b1", "<c8"]),
    st.booleans(),
)
npy_bodies = npy_arrays.map(npy_bytes)


@st.composite
def npy_headers(draw: st.DrawFn) -> bytes:
    """A .npy header declaring any shape and dtype, followed by any number of bytes."""
    shape = tuple(draw(st.lists(dims, max_size=5)))
    descr = draw(st.sampled_from(["'<f4'", "'|O'", "'|u1'", "[('a', '<f4')]", "('<f4', (2,))", "'<U3'", "'V8'", "1"]))
    order = draw(st.sampled_from(["False", "True", "1"]))
    d = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape!r}, }}"
    d = d.ljust(draw(st.integers(len(d), len(d) + 64))) + "\n"
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00"]))
    size = struct.pack("<H" if version == b"\x01\x00" else "<I", len(d))
    return b"\x93NUMPY" + version + size + d.encode() + draw(st.binary(max_size=600))


png_bodies = st.builds(
    lambda w, h, mode: png_bytes(np.zeros((h, w, 3) if mode == "RGB" else (h, w), np.uint8)),
    st.integers(1, 6),
    st.integers(1, 6),
    st.sampled_from(["L", "RGB"]),
)


@st.composite
def png_headers(draw: st.DrawFn) -> bytes:
    """A PNG signature and an IHDR declaring any size and pixel format, then any bytes."""
    ihdr = struct.pack(
        ">IIBBBBB",
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.sampled_from([1, 2, 4, 8, 16, 3])),
        draw(st.sampled_from([0, 2, 3, 4, 6, 5])),
        0,
        0,
        draw(st.integers(0, 1)),
    )
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + draw(st.binary(max_size=200))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**400), 10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=40,
)
json_inputs = st.builds(
    lambda a: {"inputs": a},
    st.lists(st.lists(st.lists(st.lists(st.floats(-1, 2) | st.integers(-5, 300), max_size=5), max_size=5), max_size=2))
    | st.lists(st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=4, max_size=4), max_size=10)
    | json_values,
)
json_bodies = (json_inputs | json_values).map(lambda v: json.dumps(v, allow_nan=True).encode())
deep_json = st.integers(1, 50_000).map(lambda n: b'{"inputs": ' + b"[" * n + b"0" + b"]" * n + b"}")

bodies = st.one_of(
    st.binary(max_size=300),
    npy_bodies,
    mutated(npy_bodies),
    npy_headers(),
    png_bodies,
    mutated(png_bodies),
    png_headers(),
    json_bodies,
    mutated(json_bodies),
    deep_json,
)
content_types = st.sampled_from(CTYPES) | st.text(max_size=30)


def check_decoded(body: bytes, ctype: str) -> None:
    """The property: a batch of the model's shape within the limits, or a one-line 4xx refusal."""
    try:
        x = decode_batch(body, ctype, SHAPE, MAX_BATCH)
    except RequestError as e:
        assert 400 <= e.status < 500 and str(e) and "\n" not in str(e), (e.status, str(e))
        return
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == SHAPE and 1 <= len(x) <= MAX_BATCH
    assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0 and float(x.max()) <= 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=bodies, ctype=content_types)
def test_decode_batch_answers_a_batch_or_a_4xx(body: bytes, ctype: str) -> None:
    check_decoded(body, ctype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=bodies, ctype=st.sampled_from(CTYPES))
def test_decode_batch_with_the_right_content_type(body: bytes, ctype: str) -> None:
    check_decoded(body, ctype)


@pytest.fixture(scope="module")
def client() -> TestClient:
    """The real application on a tiny linear model, exceptions raised into the test (not turned 500)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    app = create_app(
        LoadedModel(net, {"arch": "tiny", "num_classes": 3, "input_shape": list(SHAPE)}),
        raw_inputs=True,
        max_batch=MAX_BATCH,
        max_body=4096,
    )
    return TestClient(app, raise_server_exceptions=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    body=bodies | st.binary(min_size=4000, max_size=5000),
    ctype=content_types,
    length=st.none() | st.text(st.characters(codec="latin-1"), max_size=12),
)
def test_the_endpoint_never_answers_5xx(client: TestClient, body: bytes, ctype: str, length: str | None) -> None:
    headers = {"content-type": ctype}
    if length is not None:
        headers["content-length"] = length  # what a client declares need not be true (TestClient passes it)
    try:
        r = client.post("/v1/predict", content=body, headers=headers)
    except UnicodeEncodeError:
        return  # not sendable as a header at all
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail
    else:
        assert 1 <= len(r.json()["labels"]) <= MAX_BATCH
