"""The prediction server on loopback (a free port chosen inside each test), its 4xx answers, and the
HTTP suspect: verification and tracing through a URL give what they give on the local model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
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
from deepserial.serve import bind, create_app, server
from deepserial.suspect import HTTPSuspect, ModuleSuspect, QueryBudgetError, RemoteError, open_suspect
from deepserial.tracing import trace
from deepserial.training import predict_logits
from deepserial.workflow import DataSpec

if TYPE_CHECKING:
    from conftest import Vendor


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 at a free port in a thread; yield its base URL."""
    sock = bind("127.0.0.1", 0)
    srv = server(app)
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
