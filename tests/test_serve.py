"""The prediction server on loopback (a free port chosen inside each test), its 4xx answers, and the
HTTP suspect: verification and tracing through a URL give what they give on the local model."""

from __future__ import annotations

import io
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import torch
from conftest import LockedNet
from PIL import Image

from deepserial.artifacts import LoadedModel, load_model
from deepserial.errors import ConfigError, InputError
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import Ledger
from deepserial.schemes.base import OwnershipKey
from deepserial.schemes.dsn import DSNScheme
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.serve import DEFAULT_MAX_BODY, bind, create_app, server
from deepserial.suspect import HTTPSuspect, ModuleSuspect, QueryBudgetError, RemoteError, open_suspect
from deepserial.tracing import trace_by_serial as trace
from deepserial.training import predict_logits
from deepserial.workflow import DataSpec

if TYPE_CHECKING:
    from conftest import Vendor


@contextmanager
def serving(app: Any, **limits: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 at a free port in a thread (``limits``: :func:`server`'s); yield its
    base URL."""
    sock = bind("127.0.0.1", 0)
    srv = server(app, **limits)
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield url
    finally:
        srv.should_exit = True
        th.join(10)
        sock.close()


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_customer_server_predicts_like_the_cli_and_refuses_bad_requests(vendor: Vendor) -> None:
    m = vendor.customer()
    x = vendor.splits.test.x[:16]
    want = predict_logits(m.model, stamp(x, vendor.serial.geometry, vendor.serial.as_tensor())).argmax(1).tolist()
    with serving(create_app(m, vendor.serial, max_batch=32, max_body=256 * 1024)) as url, httpx.Client() as c:
        assert c.get(f"{url}/v1/health").json() == {"status": "ok"}
        info = c.get(f"{url}/v1/info").json()
        assert info["input_shape"] == [1, 28, 28] and info["stamps_serial"] is True and info["max_batch"] == 32
        assert vendor.product_key not in json.dumps(info)
        r = c.post(f"{url}/v1/predict", content=npy(x.numpy()), headers={"content-type": "application/x-npy"})
        assert r.status_code == 200 and r.json()["labels"] == want
        r = c.post(f"{url}/v1/predict", json={"inputs": x[:, 0].tolist()})  # (N, H, W) for one channel
        assert r.json()["labels"] == want and all(0 < p <= 1 for p in r.json()["confidences"])
        img = (x[0, 0].numpy() * 255).round().astype(np.uint8)
        r = c.post(f"{url}/v1/predict", content=png(img), headers={"content-type": "image/png"})
        assert r.status_code == 200 and len(r.json()["labels"]) == 1
        u8 = c.post(
            f"{url}/v1/predict",
            content=npy((x.numpy() * 255).round().astype(np.uint8)),
            headers={"content-type": "application/x-npy"},
        )
        assert u8.status_code == 200 and len(u8.json()["labels"]) == 16
        bad: list[tuple[dict, int, str]] = [
            ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty"),
            ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
            ({"json": {"x": [1]}}, 422, '"inputs"'),
            ({"json": {"inputs": [[1, 2], [3]]}}, 422, "nested arrays"),
            ({"json": {"inputs": np.zeros((2, 1, 27, 28)).tolist()}}, 422, "the model takes (N, 1, 28, 28)"),
            ({"json": {"inputs": (np.ones((1, 1, 28, 28)) * 2).tolist()}}, 422, "in [0, 1]"),
            (
                {
                    "content": npy(np.full((1, 1, 28, 28), np.nan, np.float32)),
                    "headers": {"content-type": "application/x-npy"},
                },
                422,
                "finite",
            ),
            (
                {"content": npy(np.zeros((1, 1, 28, 28), np.int32)), "headers": {"content-type": "application/x-npy"}},
                422,
                "dtype int32",
            ),
            (
                {
                    "content": npy(np.zeros((0, 1, 28, 28), np.float32)),
                    "headers": {"content-type": "application/x-npy"},
                },
                422,
                "empty",
            ),
            ({"content": b"\x93NUMPY garbage", "headers": {"content-type": "application/x-npy"}}, 400, ".npy"),
            ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
            ({"content": b"not an image", "headers": {"content-type": "image/png"}}, 415, "PNG signature"),
            ({"content": png(np.zeros((20, 20), np.uint8)), "headers": {"content-type": "image/png"}}, 422, "resize"),
            (
                {"content": png(np.zeros((28, 28), np.uint8), "BMP"), "headers": {"content-type": "image/png"}},
                415,
                "PNG signature",
            ),
            (
                {
                    "content": npy(np.zeros((33, 1, 28, 28), np.float32)),
                    "headers": {"content-type": "application/x-npy"},
                },
                413,
                "over the limit of 32",
            ),
            (
                {
                    "content": npy(np.zeros((90, 1, 28, 28), np.float32)),
                    "headers": {"content-type": "application/x-npy"},
                },
                413,
                "bytes",
            ),
        ]
        for kw, status, msg in bad:
            r = c.post(f"{url}/v1/predict", **kw)
            assert r.status_code == status and msg in r.json()["detail"], (kw.get("headers"), r.text)
        assert c.get(f"{url}/v1/predict").status_code == 405
        assert c.get(f"{url}/v1/health").json() == {"status": "ok"}  # still serving after all that


def test_server_refuses_bad_configurations(vendor: Vendor, strong_teacher: LoadedModel) -> None:
    m = vendor.customer()
    with pytest.raises(ConfigError, match="serial-number protected"):
        create_app(m, None)
    with pytest.raises(ConfigError, match="raw-inputs"):
        create_app(m, vendor.serial, raw_inputs=True)
    other = SerialNumber.from_signature(b"x" * 64, SerialGeometry(6, 6, 0, 0))
    with pytest.raises(ConfigError, match="model expects"):
        create_app(m, other)
    with pytest.raises(ConfigError, match="takes no serial number"):
        create_app(strong_teacher, vendor.serial)
    with pytest.raises(ConfigError, match="max batch"):
        create_app(strong_teacher, max_batch=0)


def test_dsn_verification_and_trace_through_http_match_the_local_model(
    tmp_path: Path,
    strong_teacher: LoadedModel,
) -> None:
    ident = OwnerIdentity.generate()
    led = Ledger(tmp_path / "l.db")
    g = SerialGeometry(6, 6, 0, 0)
    serials = []
    for i, name in enumerate(["a", "b", "c"]):
        v = VerifierString(ident.fingerprint(), name, f"t{i}", "dsn")
        sig = ident.sign(v)
        serials.append(SerialNumber.from_signature(sig, g))
        led.record(ident, v, serials[-1], signature=sig, fingerprint_cost=10)
    cands = [(lic, led.serial(lic, ident)) for lic in led.licences()]
    leaked = LockedNet(strong_teacher.model, serials[2]).eval()
    manifest = dict(strong_teacher.manifest, serial_geometry=g.to_dict())
    test = DataSpec("mnist5k", seed=0, limit=2000).load().test
    with serving(create_app(LoadedModel(leaked, manifest), raw_inputs=True, max_batch=64)) as url:
        remote, local = HTTPSuspect(url), ModuleSuspect(leaked, (1, 28, 28))
        r_res, l_res = trace(remote, cands, test), trace(local, cands, test)
        assert r_res.found and r_res.licence.customer == "c"
        assert r_res.to_dict() == l_res.to_dict() and remote.queries == local.queries == r_res.queries
        # a scheme's verify gives the same verdict through the URL
        sig_c = ident.sign(VerifierString(ident.fingerprint(), "c", "t2", "dsn"))
        k = OwnershipKey(
            "dsn", {"geometry": g.to_dict(), "signature": sig_c.hex()}, {"x": test.x[:300], "y": test.y[:300]}
        )
        vr, vl = DSNScheme().verify(HTTPSuspect(url), k), DSNScheme().verify(ModuleSuspect(leaked, (1, 28, 28)), k)
        assert vr.decision and vr.to_dict() == vl.to_dict()
        # the budget is enforced before anything is sent
        capped = HTTPSuspect(url, budget=10)
        with pytest.raises(QueryBudgetError):
            capped.predict(test.x[:11])
        assert capped.queries == 0
        # a batch larger than the server's limit is split into requests it accepts
        big = HTTPSuspect(url)
        assert torch.equal(big.predict(test.x[:150]), local.predict(test.x[:150]))
        assert big.requests == 1 + 3  # /v1/info, then 64 + 64 + 22
        with pytest.raises(InputError, match="shape"):
            big.predict(torch.zeros(2, 1, 20, 20))


def test_http_suspect_retries_then_says_what_failed() -> None:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="did not answer after 3 tries"):
        HTTPSuspect(f"http://127.0.0.1:{port}", retries=2, backoff=0.05, timeout=2)
    assert time.monotonic() - t0 >= 0.05 + 0.1  # backoff 0.05 then 0.1
    with pytest.raises(InputError, match="does not exist"):
        open_suspect("/nonexistent/model.onnx")


def test_serve_command_never_logs_the_serial_number(vendor: Vendor, tmp_path: Path) -> None:
    serial_file = tmp_path / "sn.txt"
    serial_file.write_text(vendor.product_key + "\n")
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deepserial",
            "serve",
            str(vendor.customer_path),
            "--serial-file",
            str(serial_file),
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and p.poll() is None, "server did not start"
            time.sleep(0.2)
        x = vendor.splits.test.x[:4]
        r = httpx.post(f"{url}/v1/predict", content=npy(x.numpy()), headers={"content-type": "application/x-npy"})
        assert r.status_code == 200
        m = load_model(vendor.customer_path)
        assert (
            r.json()["labels"]
            == predict_logits(m.model, stamp(x, vendor.serial.geometry, vendor.serial.as_tensor())).argmax(1).tolist()
        )
        assert httpx.post(f"{url}/v1/predict", json={"inputs": [1]}).status_code == 422
        assert vendor.product_key not in httpx.get(f"{url}/v1/info").text
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=30)
    assert "POST /v1/predict" in out  # the access log ran
    assert vendor.product_key not in out and vendor.product_key.replace("-", "") not in out


def npy_header(shape: str, descr: str = "'<f4'") -> bytes:
    """A hand-written .npy v1.0 header (its data is up to the caller): a header may declare anything."""
    d = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}".ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode()


def png_bomb(w: int, h: int, rows: int | None = None) -> bytes:
    """A greyscale PNG of w x h black pixels: a few hundred KB that decode to w * h bytes (with
    ``rows``, only that many rows of data follow the header: enough for anything that reads headers)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" * (w + 1)) for _ in range(h if rows is None else rows)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_hostile_requests_get_one_line_4xx_and_no_traceback(
    strong_teacher: LoadedModel, capfd: pytest.CaptureFixture[str]
) -> None:
    """Each input that answered 500 with a traceback (or was decoded before its size was checked) gets
    a 4xx with a one-line detail, quickly, and the server's log stays free of tracebacks."""
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros((1, 1, 28, 28), np.float32))
    ok = npy(np.zeros((1, 1, 28, 28), np.float32))
    js, xnpy, ipng = "application/json", "application/x-npy", "image/png"
    cases: list[tuple[bytes, str, int, str]] = [
        (b'{"inputs": [[[' + b"9" * 400 + b"]]]}", js, 422, "finite numbers"),
        (b'{"inputs": [' + b"9" * 400 + b"]}", js, 422, "finite numbers"),
        (b'{"inputs": [[[' + b"9" * 5000 + b"]]]}", js, 400, "not valid JSON"),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", js, 400, "recursion limit"),
        (b'{"inputs": [[[NaN]]]}', js, 422, "finite numbers"),
        (b'{"inputs": [[[true, "0.5", null]]]}', js, 422, "finite numbers"),
        (b"[1, 2]", js, 422, 'key "inputs"'),
        (npz.getvalue(), xnpy, 400, "not a .npy"),
        (npy_header("(10000000000, 1, 28, 28)") + b"\0" * 64, xnpy, 413, "over the limit of 256"),
        (npy_header("(1, 1, 280000, 280000)") + b"\0" * 64, xnpy, 422, "the model takes (N, 1, 28, 28)"),
        (npy_header("(1, 1, 28, 28)", "'|O'") + b"\0" * 64, xnpy, 400, "dtype object"),
        (npy_header("(1, 1, 28, 28)", "[('a', '<f4')]") + b"\0" * 64, xnpy, 400, "not supported"),
        (npy_header("(-1, 1, 28, 28)") + b"\0" * 64, xnpy, 400, "negative"),
        (npy_header("(" * 5000) + b"\0" * 64, xnpy, 400, "not a .npy"),
        (ok[:-10], xnpy, 400, "declares shape (1, 1, 28, 28)"),
        (ok + b"\0" * 8, xnpy, 400, "the body holds 3144"),
        (png_bomb(9000, 9000), ipng, 422, "image is 9000x9000"),
        (png_bomb(28, 28)[:40], ipng, 400, "not a readable PNG"),
    ]
    app = create_app(LoadedModel(strong_teacher.model, strong_teacher.manifest))
    with serving(app) as url, httpx.Client(timeout=30) as c:
        for body, ctype, status, msg in cases:
            t0 = time.monotonic()
            r = c.post(f"{url}/v1/predict", content=body, headers={"content-type": ctype})
            took = time.monotonic() - t0
            detail = r.json()["detail"]
            assert r.status_code == status and msg in detail and "\n" not in detail, (body[:60], r.text)
            assert took < 2.0, (body[:60], took)  # refused from headers, not after decoding
        # a body over the limit, declared or streamed (chunked: no length given), is refused while read
        big = b"0" * (DEFAULT_MAX_BODY + 1)
        assert c.post(f"{url}/v1/predict", content=big, headers={"content-type": xnpy}).status_code == 413
        r = c.post(f"{url}/v1/predict", content=iter([big[:65536]] * 200), headers={"content-type": xnpy})
        assert r.status_code == 413 and "over the limit" in r.json()["detail"]
        assert c.get(f"{url}/v1/health").json() == {"status": "ok"}
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in ASGI" not in err, err[-2000:]


def test_an_unexpected_failure_is_a_clean_500(
    strong_teacher: LoadedModel, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The last resort: a failure inside the model is a generic 500 and one log line, then service goes on."""

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("secret internals /etc/passwd")

    app = create_app(LoadedModel(Broken(), strong_teacher.manifest))
    with serving(app) as url, httpx.Client() as c:
        r = c.post(
            f"{url}/v1/predict",
            content=npy(np.zeros((1, 1, 28, 28), np.float32)),
            headers={"content-type": "application/x-npy"},
        )
        assert r.status_code == 500 and "secret" not in r.text and r.json()["detail"].startswith("internal error")
        assert c.get(f"{url}/v1/health").status_code == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "secret" not in err, err
    logged = [r for r in caplog.records if r.name.startswith(("deepserial", "uvicorn"))]
    assert [r.getMessage() for r in logged] == ["request failed: RuntimeError"] and not logged[0].exc_info


def _closed_within(sock: socket.socket, trickle: bytes, every: float, limit: float) -> tuple[float, bytes]:
    """Send ``trickle`` a byte every ``every`` s until the server closes; (seconds taken, what it said)."""
    t0, said = time.monotonic(), b""
    sock.settimeout(every)
    for i in itertools.count():
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"still connected after {limit} s")
        try:
            sock.sendall(trickle[i % len(trickle) : i % len(trickle) + 1])
            got = sock.recv(4096)
            said += got
            if not got:
                break
        except TimeoutError:
            continue
        except OSError:  # reset: closed too
            break
    return time.monotonic() - t0, said


def test_slow_clients_are_cut_within_the_stated_timeouts(strong_teacher: LoadedModel) -> None:
    """Slowloris: a client trickling its headers, or one idle after connecting, is closed at the header
    timeout; one trickling its body gets 408 at the body timeout; requests past the in-flight limit get
    503 at once; while a hundred clients hold connections, a normal request is still answered."""
    app = create_app(LoadedModel(strong_teacher.model, strong_teacher.manifest), body_timeout=1.0, max_inflight=2)
    with serving(app, header_timeout=1.0, max_connections=200) as url:
        host, port = url.removeprefix("http://").split(":")
        addr = (host, int(port))
        with socket.create_connection(addr) as s:
            took, said = _closed_within(s, b"GET /v1/health HTTP/1.1\r\nX-Slow: " + b"a" * 1000, 0.2, 5)
        assert 0.8 < took < 2.5 and said == b"", (took, said)
        with socket.create_connection(addr) as s:  # connects, says nothing
            s.settimeout(5)
            t0 = time.monotonic()
            assert s.recv(10) == b""
            assert 0.8 < time.monotonic() - t0 < 2.5
        with socket.create_connection(addr) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n")
            s.sendall(b"Content-Length: 3264\r\n\r\n")
            took, said = _closed_within(s, b"\x93NUMPY", 0.2, 5)
        assert said.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 1 s" in said and took < 2.5, said
        # two bodies in progress fill max_inflight=2: a third request is 503 at once, not queued
        senders = [socket.create_connection(addr) for _ in range(2)]
        for s in senders:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3264\r\n\r\n\x93NUMPY")
        time.sleep(0.3)
        busy = httpx.post(f"{url}/v1/predict", content=b"x", timeout=5)
        assert busy.status_code == 503 and "server busy" in busy.json()["detail"]
        for s in senders:
            s.settimeout(3)
            assert s.recv(4096).startswith(b"HTTP/1.1 408 ")
            s.close()
        one = npy(np.zeros((1, 1, 28, 28), np.float32))
        ok = httpx.post(f"{url}/v1/predict", content=one, headers={"content-type": "application/x-npy"}, timeout=5)
        assert ok.status_code == 200  # served again once they are gone
        # a hundred clients holding connections do not count as predictions: a normal request goes through
        crowd = [socket.create_connection(addr) for _ in range(100)]
        try:
            for s in crowd:
                s.sendall(b"GET /v1/health HTTP/1.1\r\n")
            t0 = time.monotonic()
            assert httpx.get(f"{url}/v1/health", timeout=5).status_code == 200
            for s in crowd:
                s.settimeout(max(0.1, 3.0 - (time.monotonic() - t0)))
                assert s.recv(10) == b""  # closed by the server, not by this timeout (which would raise)
            assert time.monotonic() - t0 < 3.0
        finally:
            for s in crowd:
                s.close()


def test_predict_refuses_bombs_in_one_line(vendor: Vendor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The loader ``deepserial predict`` shares with the server checks sizes from headers too: a
    decompression-bomb PNG and an .npz whose header declares a huge array are one-line errors."""
    from deepserial.cli import main

    (tmp_path / "bomb.png").write_bytes(png_bomb(9000, 9000))
    (tmp_path / "giant.png").write_bytes(png_bomb(20000, 20000, rows=1))  # over Pillow's own bomb limit
    with zipfile.ZipFile(tmp_path / "lying.npz", "w") as z:
        z.writestr("x.npy", npy_header("(100000000000, 1, 28, 28)") + b"\0" * 64)
    base = ["--model", str(vendor.customer_path), "--serial", vendor.product_key]
    for name, msg in [
        ("bomb.png", "is 9000x9000 pixels, shape (1, 9000, 9000); the model takes (1, 28, 28)"),
        ("giant.png", "declares over"),
        ("lying.npz", "header declares shape (100000000000, 1, 28, 28)"),
    ]:
        capsys.readouterr()
        assert main(["predict", str(tmp_path / name), *base]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and msg in err, err


def test_a_raw_input_server_takes_inputs_its_clients_stamped_at_the_keys_levels(strong_teacher: LoadedModel) -> None:
    g = SerialGeometry(6, 6, 20, 20, amplitude=6)
    sn = SerialNumber.from_signature(b"y" * 64, g)
    manifest = dict(strong_teacher.manifest, serial_geometry=g.to_dict())
    loud = LoadedModel(strong_teacher.model, manifest)
    x = stamp(torch.rand(3, 1, 28, 28), g, sn.as_tensor())  # what a client that stamps itself sends
    with serving(create_app(loud, raw_inputs=True)) as url, httpx.Client() as c:
        assert c.get(f"{url}/v1/info").json()["value_range"] == [-6.0, 6.0]
        r = c.post(f"{url}/v1/predict", json={"inputs": x.tolist()})
        assert r.status_code == 200 and len(r.json()["labels"]) == 3
        r = c.post(f"{url}/v1/predict", json={"inputs": (x * 2).tolist()})  # past the levels: refused
        assert r.status_code == 422 and "[-6, 6]" in r.json()["detail"]
    with serving(create_app(loud, sn)) as url, httpx.Client() as c:  # a server that stamps: images only
        assert c.get(f"{url}/v1/info").json()["value_range"] == [0.0, 1.0]
        assert c.post(f"{url}/v1/predict", json={"inputs": x.tolist()}).status_code == 422
