"""Remote suspects against hostile servers on loopback: each misbehaviour (a trickled or stalled answer,
a flood, a redirect, malformed or out-of-range values) ends the verification within its deadline with
one :class:`RemoteError` line and no verdict; the CLI prints that line and exits 2 without a verdict."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from deepserial.artifacts import save_key
from deepserial.cli import main
from deepserial.errors import DeepSerialError
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import Ledger
from deepserial.schemes.base import OwnershipKey, Provenance
from deepserial.schemes.dsn import DSNScheme
from deepserial.serial import SerialGeometry, SerialNumber
from deepserial.suspect import HTTPSuspect, RemoteError
from deepserial.workflow import DataSpec

GEOMETRY = SerialGeometry(6, 6, 0, 0)
INFO = {"input_shape": [1, 28, 28], "num_classes": 10, "max_batch": 64}
Behaviour = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    """Hands every request to the server's behaviour; HTTP/1.1, so answers can be kept alive."""

    protocol_version = "HTTP/1.1"
    server: HostileServer

    def do_GET(self) -> None:
        self.server.behave(self)

    do_POST = do_GET  # noqa: N815 (http.server's naming)

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def batch_size(self) -> int:
        return int(np.load(io.BytesIO(self.body()), allow_pickle=False).shape[0])

    def answer(self, raw: bytes, status: int = 200, ctype: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(raw)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(raw)

    def pause(self, seconds: float) -> bool:
        """Sleep; False once the test is over (trickling and stalling handlers then stop)."""
        return not self.server.stop.wait(seconds)


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behave: Behaviour) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.behave = behave
        self.stop = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up on a flood or a trickle is the point, not news


@contextmanager
def hostile(behave: Behaviour) -> Iterator[str]:
    """A server on a free loopback port answering every request with ``behave``; yields its URL."""
    srv = HostileServer(behave)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        th.join(5)


def info_then(predict: Behaviour, info: dict | None = None) -> Behaviour:
    """A server with a valid /v1/info that answers /v1/predict with ``predict``."""

    def behave(h: Handler) -> None:
        if h.path == "/v1/info":
            h.answer(json.dumps(info or INFO).encode())
        else:
            predict(h)

    return behave


def labels_json(make: Callable[[int], str]) -> Behaviour:
    """/v1/predict answered with the raw JSON ``make(batch size)`` (so it can hold 1e20 or Infinity)."""
    return info_then(lambda h: h.answer(make(h.batch_size()).encode()))


def trickle_body(h: Handler) -> None:
    h.send_response(200)
    h.send_header("content-length", "1000")
    h.end_headers()
    h.wfile.flush()
    while h.pause(0.2):  # one byte every 0.2 s, for ever
        h.wfile.write(b" ")
        h.wfile.flush()


def trickle_headers(h: Handler) -> None:
    h.wfile.write(b"HTTP/1.1 200 OK\r\n")
    while h.pause(0.2):
        h.wfile.write(b"x")
        h.wfile.flush()


def stall(h: Handler) -> None:
    h.body()
    while h.pause(0.2):
        pass


def flood(h: Handler) -> None:
    h.send_response(200)
    h.send_header("connection", "close")  # no length: the answer ends when the server stops writing
    h.end_headers()
    chunk = b"[" * 65536
    while not h.server.stop.is_set():
        h.wfile.write(chunk)


def redirect(status: int) -> Behaviour:
    return lambda h: h.answer(b"", status, location="http://127.0.0.1:9/v1/info")


def raw_info(raw: bytes) -> Behaviour:
    return lambda h: h.answer(raw)


def dsn_key(n: int = 20, ident: OwnerIdentity | None = None) -> OwnershipKey:
    ident = ident or OwnerIdentity.generate()
    prov = Provenance.sign(ident, ident.fingerprint(), "c", "dsn")
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    meta = {"geometry": GEOMETRY.to_dict(), **prov.to_meta()}
    return OwnershipKey("dsn", meta, {"x": x, "y": torch.zeros(n, dtype=torch.long)})


def verify_through(url: str, **kw: float) -> object:
    """A DSN verification through ``url``; what it returns is a verdict."""
    with HTTPSuspect(url, **kw) as s:
        return DSNScheme().verify(s, dsn_key())


def one_line_refusal(url: str, want: str, within: float, **kw: float) -> RemoteError:
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as e:
        verify_through(url, **kw)
    took = time.monotonic() - t0
    msg = str(e.value)
    assert want in msg, msg
    assert "\n" not in msg and len(msg) < 400, msg
    assert took < within, f"{took:.2f} s: {msg}"
    return e.value


def test_a_well_behaved_stand_in_gives_a_verdict() -> None:
    """The control for every case below: the same harness with valid answers reaches a verdict."""
    with hostile(labels_json(lambda n: json.dumps({"labels": [0] * n, "confidences": [0.5] * n}))) as url:
        v = verify_through(url, timeout=2)
    assert v.queries == 40 and not v.decision


@pytest.mark.parametrize(
    ("behave", "want"),
    [
        (info_then(trickle_body), "did not answer within 1 s"),
        (info_then(trickle_headers), "did not answer within 1 s"),
        (info_then(stall), "did not answer within 1 s"),
        (trickle_headers, "did not answer within 1 s"),
        (stall, "did not answer within 1 s"),
    ],
    ids=["trickled-answer", "trickled-headers", "stalled-answer", "trickled-info", "stalled-info"],
)
def test_slow_servers_are_cut_at_the_request_timeout(behave: Behaviour, want: str) -> None:
    with hostile(behave) as url:
        one_line_refusal(url, want, within=2.5, timeout=1, total_timeout=30)


def test_a_server_slow_on_every_request_is_cut_at_the_total_timeout() -> None:
    def slow_but_valid(h: Handler) -> None:
        n = h.batch_size()
        h.pause(0.3)
        h.answer(json.dumps({"labels": [0] * n}).encode())

    with hostile(info_then(slow_but_valid, dict(INFO, max_batch=2))) as url:
        one_line_refusal(url, "total timeout of 1.5 s", within=3.0, timeout=1, total_timeout=1.5)


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "declared"])
def test_a_flood_is_abandoned_at_the_answer_cap(declared: bool) -> None:
    def huge_declared(h: Handler) -> None:
        h.send_response(200)
        h.send_header("content-length", str(400 * 2**20))
        h.end_headers()
        flood(h)

    with hostile(info_then(huge_declared if declared else flood)) as url:
        one_line_refusal(url, "answer over 1048576 bytes", within=5.0, timeout=10, max_answer=2**20)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_refused_not_followed(status: int) -> None:
    with hostile(redirect(status)) as url:
        one_line_refusal(url, f"redirect (HTTP {status} to http://127.0.0.1:9/v1/info)", within=2.0)


@pytest.mark.parametrize(
    "raw",
    [
        b"<html>nope</html>",
        b"",
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps(dict(INFO, max_batch=-1)).encode(),
        json.dumps(dict(INFO, max_batch=0)).encode(),
        json.dumps(dict(INFO, max_batch=10**9)).encode(),
        json.dumps(dict(INFO, max_batch="8")).encode(),
        json.dumps(dict(INFO, max_batch=8.0)).encode(),
        json.dumps(dict(INFO, num_classes=1)).encode(),
        b'{"input_shape": [1, 28, 28], "num_classes": 1e20}',
        b'{"input_shape": [1, 28, Infinity], "num_classes": 10}',
        json.dumps(dict(INFO, input_shape=[1, 28])).encode(),
        json.dumps(dict(INFO, input_shape=[1, -28, 28])).encode(),
        json.dumps(dict(INFO, input_shape=[16384, 16384, 16384])).encode(),
        json.dumps(dict(INFO, accepts=["image/png"])).encode(),
        json.dumps(dict(INFO, max_body_bytes=2048)).encode(),
        json.dumps({"num_classes": 10}).encode(),
    ],
    ids=[
        "html",
        "empty",
        "deep",
        "max_batch=-1",
        "max_batch=0",
        "max_batch=1e9",
        "max_batch-string",
        "max_batch-float",
        "one-class",
        "classes=1e20",
        "shape-infinity",
        "shape-2d",
        "shape-negative",
        "shape-huge",
        "no-npy",
        "body-too-small",
        "no-shape",
    ],
)
def test_malformed_info_is_refused(raw: bytes) -> None:
    with hostile(raw_info(raw)) as url:
        one_line_refusal(url, "/v1/info", within=2.0)


@pytest.mark.parametrize(
    ("make", "want"),
    [
        (lambda n: json.dumps({"labels": [99] * n}), "label 99, outside 0..9"),
        (lambda n: json.dumps({"labels": [-3] * n}), "label -3, outside 0..9"),
        (lambda n: json.dumps({"labels": [10**400] * n}), "label a huge number"),
        (lambda n: '{"labels": [' + ", ".join(["1e20"] * n) + "]}", "valid integer"),
        (lambda n: '{"labels": [' + ", ".join(["Infinity"] * n) + "]}", "valid list of labels"),
        (lambda n: '{"labels": [' + ", ".join(["NaN"] * n) + "]}", "valid list of labels"),
        (lambda n: json.dumps({"labels": ["1"] * n}), "valid integer"),
        (lambda n: json.dumps({"labels": [1.5] * n}), "valid integer"),
        (lambda n: json.dumps({"labels": [1.0] * n}), "valid integer"),
        (lambda n: json.dumps({"labels": [True] * n}), "valid integer"),
        (lambda n: json.dumps({"labels": [None] * n}), "valid integer"),
        (lambda n: json.dumps({"labels": 3}), "valid list"),
        (lambda n: json.dumps({"label": [0] * n}), "labels: Field required"),
        (lambda n: json.dumps([0] * n), "valid list of labels"),
        (lambda n: json.dumps({"labels": [0] * (n - 1)}), f"answered {19} labels for 20 inputs"),
        (lambda n: json.dumps({"labels": [0] * (n + 1)}), "answered 21 labels for 20 inputs"),
        (lambda n: json.dumps({"labels": [0] * n, "confidences": [2.0] * n}), "confidences"),
        (lambda n: '{"labels": [0], "confidences": [Infinity]}', "valid list of labels"),
        (lambda n: "not json at all", "valid list of labels"),
    ],
    ids=[
        "99",
        "-3",
        "400-digits",
        "1e20",
        "Infinity",
        "NaN",
        "strings",
        "floats",
        "whole-floats",
        "booleans",
        "nulls",
        "not-a-list",
        "no-labels",
        "bare-list",
        "too-few",
        "too-many",
        "confidence-2",
        "confidence-infinite",
        "text",
    ],
)
def test_malformed_labels_give_no_verdict(make: Callable[[int], str], want: str) -> None:
    with hostile(labels_json(make)) as url:
        one_line_refusal(url, want, within=3.0)


def test_refusals_and_failures_are_one_sanitised_line() -> None:
    def refuse(h: Handler) -> None:
        h.body()
        h.answer(json.dumps({"detail": "no\n\x1b[31mred\x1b[0m " + "x" * 5000}).encode(), 403)

    with hostile(info_then(refuse)) as url:
        e = one_line_refusal(url, "refused the request (HTTP 403): no [31mred [0m xxx", within=2.0)
        assert "\x1b" not in str(e) and str(e).endswith("...")

    def fail(h: Handler) -> None:
        h.body()
        h.answer(b"oops", 503)

    with hostile(info_then(fail)) as url:
        one_line_refusal(url, "did not answer after 3 tries (HTTP 503)", within=3.0, retries=2, backoff=0.01)

    def not_http(h: Handler) -> None:
        h.wfile.write(b"\x00\x01 hello\r\n\r\n")
        h.close_connection = True

    with hostile(not_http) as url:
        one_line_refusal(url, "did not answer after 2 tries (RemoteProtocolError", within=3.0, retries=1, backoff=0.01)

    def gzipped(h: Handler) -> None:
        h.answer(b"\x1f\x8b", content_encoding="gzip")

    with hostile(gzipped) as url:
        one_line_refusal(url, "compressed answer (gzip)", within=2.0)


def test_cli_prints_one_line_and_no_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ident = OwnerIdentity.generate()
    key, _ = ident.save(tmp_path / "owner.pem")
    wm_key = tmp_path / "wm.key"
    save_key(wm_key, dsn_key(ident=ident), owner=ident)
    led = Ledger(tmp_path / "l.db")
    v = VerifierString(ident.fingerprint(), "acme", "2026-01-01T00:00:00+00:00", "dsn")
    sig = ident.sign(v)
    led.record(
        ident,
        v,
        SerialNumber.from_signature(sig, GEOMETRY),
        signature=sig,
        dataset=DataSpec("mnist5k", seed=0, limit=2000).to_dict(),
        fingerprint_cost=10,
    )
    trace = ["trace", "--ledger", str(tmp_path / "l.db"), "--key", str(key)]
    bad_labels = labels_json(lambda n: json.dumps({"labels": [99] * n}))
    cases = [
        (bad_labels, ["watermark", "verify", "URL", "--key", str(wm_key)], "label 99", 10),
        (redirect(302), ["watermark", "verify", "URL", "--key", str(wm_key)], "redirect", 10),
        (bad_labels, [*trace[:1], "URL", *trace[1:]], "label 99", 30),
        (info_then(trickle_body), [*trace[:1], "URL", *trace[1:], "--timeout", "1"], "within 1 s", 30),
        (raw_info(json.dumps(dict(INFO, max_batch=-1)).encode()), [*trace[:1], "URL", *trace[1:]], "max_batch", 30),
    ]
    for behave, argv, want, within in cases:
        with hostile(behave) as url:
            capsys.readouterr()
            t0 = time.monotonic()
            assert main([url if a == "URL" else a for a in argv]) == 2
            took = time.monotonic() - t0
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("deepserial: error: ") and want in err, err
        assert took < within, (argv, took)
    assert Ledger(tmp_path / "l.db").traces() == []  # no trace result was recorded


def test_remote_error_is_a_user_error() -> None:
    assert issubclass(RemoteError, DeepSerialError)
