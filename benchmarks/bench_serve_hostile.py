"""Benchmark: the prediction server under load with hostile traffic mixed in, on loopback.

Run: ``python benchmarks/bench_serve_hostile.py`` (writes ``benchmarks/results/bench_serve_hostile.{json,md,png}``).

``deepserial serve`` runs in its own process (default limits) on an mnist5k customer model. Two phases:

1. **Malformed mix**: ``--clients`` threads each send ``--requests`` requests over keep-alive
   connections; one in ten (``--malformed-every``) is malformed, cycling through the inputs that used to
   answer 500 or cost memory (400-digit integers, 100,000-deep JSON, ``.npz`` bytes sent as ``.npy``,
   ``.npy`` headers declaring huge shapes or object dtypes, a truncated ``.npy``, a 9000x9000 PNG
   decompression bomb, NaN values, an unsupported content type, a body over the size limit).
   Reported: answers by status for good and malformed requests (answers of 500 must be 0; every good
   request must be answered 200), latencies, and the server's resident memory (RSS, from /proc) before
   and after (growth must stay under 50 MB).
2. **Slow clients**: ``--slow-clients`` connections each send a request line and then one header byte
   per second (slowloris); reported: how long until the server had closed each (the header timeout is
   10 s), and what a well-behaved client got meanwhile.

Without ``--model`` a customer model is issued first (a short training: the answers' accuracy does not
matter here). Bounded: loopback only, a fixed number of requests, the slow phase capped at 60 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from bench_serve import issue_customer, wait_ready

from deepserial.artifacts import load_model
from deepserial.report import environment, mark_start, markdown_table, save_figure, write_json, write_text
from deepserial.serve import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INFLIGHT,
    bind,
)
from deepserial.workflow import DataSpec

OUT = Path(__file__).resolve().parent / "results"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The resident memory of process ``pid`` (or its peak, ``VmHWM``) in MB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def npy_header(shape: str, descr: str = "'<f4'") -> bytes:
    d = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}".ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode()


def png_bomb(w: int, h: int) -> bytes:
    """A valid greyscale PNG of w x h black pixels (about 80 KB for 9000 x 9000)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" * (w + 1)) for _ in range(h)) + z.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def malformed_bodies(shape: tuple[int, ...]) -> list[tuple[str, bytes, str]]:
    """(kind, body, content type) of each malformed request the mix cycles through."""
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros((1, *shape), np.float32))
    good = npy(np.zeros((1, *shape), np.float32))
    js, xnpy = "application/json", "application/x-npy"
    return [
        ("json: 400-digit integer", b'{"inputs": [[[' + b"9" * 400 + b"]]]}", js),
        ("json: 100,000 deep", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", js),
        (".npz sent as .npy", npz.getvalue(), xnpy),
        (".npy header: 10^10 x 1 x 28 x 28", npy_header("(10000000000, 1, 28, 28)") + b"\0" * 64, xnpy),
        (".npy header: 1 x 1 x 280000 x 280000", npy_header("(1, 1, 280000, 280000)") + b"\0" * 64, xnpy),
        (".npy header: object dtype", npy_header("(1, 1, 28, 28)", "'|O'") + b"\0" * 64, xnpy),
        (".npy truncated", good[:-100], xnpy),
        ("PNG bomb 9000 x 9000", png_bomb(9000, 9000), "image/png"),
        ("NaN values", npy(np.full((1, *shape), np.nan, np.float32)), xnpy),
        ("unsupported content type", b"hello", "text/plain"),
        ("body over the limit", b"\0" * (DEFAULT_MAX_BODY + 1), xnpy),
    ]


def mix_client(
    url: str,
    good: bytes,
    bad: list[tuple[str, bytes, str]],
    n: int,
    every: int,
    offset: int,
    rows: list[tuple[str, int, float]],
) -> None:
    """``n`` requests, one in ``every`` malformed; appends (kind, status or -1, seconds) per request."""
    with httpx.Client(timeout=60) as c:
        for i in range(n):
            if i % every == every - 1:
                kind, body, ctype = bad[(offset + i // every) % len(bad)]
            else:
                kind, body, ctype = "good", good, "application/x-npy"
            t = time.perf_counter()
            try:
                status = c.post(f"{url}/v1/predict", content=body, headers={"content-type": ctype}).status_code
            except httpx.HTTPError:
                status = -1
            rows.append((kind, status, time.perf_counter() - t))


def slow_client(addr: tuple[str, int], closed_after: list[float], stop: threading.Event) -> None:
    """A slowloris connection: a request line, then one header byte a second until the server closes."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nX-Slow: ")
            s.settimeout(1.0)
            while not stop.is_set():
                try:
                    if s.recv(4096) == b"":
                        break
                except TimeoutError:
                    s.sendall(b"a")
    except OSError:
        pass  # reset by the server: closed too
    closed_after.append(time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="customer model (default: issue one)")
    ap.add_argument("--serial-file", type=Path, help="its product key in a file (with --model)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500, help="requests per client")
    ap.add_argument("--malformed-every", type=int, default=10, help="one request in this many is malformed")
    ap.add_argument("--slow-clients", type=int, default=200)
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--student-epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model:
            model_path, product_key = args.model, args.serial_file.read_text().strip()
        else:
            model_path, product_key = issue_customer(root, args.teacher_epochs, args.student_epochs, args.seed)
        (root / "sn.txt").write_text(product_key)
        os.chmod(root / "sn.txt", 0o600)
        m = load_model(model_path)
        shape = tuple(m.input_shape)
        good = npy(DataSpec.from_manifest(m.manifest).load().test.x[:1].numpy())
        bad = malformed_bodies(shape)
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        sock.close()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepserial", "serve", str(model_path), "--serial-file", str(root / "sn.txt")]
            + ["--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        memory: list[tuple[float, float]] = []
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                try:
                    memory.append((time.perf_counter() - t0, rss_mb(proc.pid)))
                except (OSError, RuntimeError):
                    return
                time.sleep(0.25)

        try:
            wait_ready(url, proc)
            mix_client(url, good, bad, 200, 10**9, 0, [])  # warm-up: good requests only
            t0 = time.perf_counter()
            threading.Thread(target=watch, daemon=True).start()
            rss_before = rss_mb(proc.pid)
            rows: list[list[tuple[str, int, float]]] = [[] for _ in range(args.clients)]
            threads = [
                threading.Thread(
                    target=mix_client, args=(url, good, bad, args.requests, args.malformed_every, i, rows[i])
                )
                for i in range(args.clients)
            ]
            t_mix = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            mix_wall = time.perf_counter() - t_mix
            mix_end = time.perf_counter() - t0
            rss_after_mix = rss_mb(proc.pid)

            closed_after: list[float] = []
            stop = threading.Event()
            slow = [
                threading.Thread(target=slow_client, args=(("127.0.0.1", port), closed_after, stop), daemon=True)
                for _ in range(args.slow_clients)
            ]
            slow_start = time.perf_counter() - t0
            for th in slow:
                th.start()
            during: Counter[int] = Counter()
            deadline = time.monotonic() + 60
            with httpx.Client(timeout=10) as c:
                while any(th.is_alive() for th in slow) and time.monotonic() < deadline:
                    try:
                        r = c.post(f"{url}/v1/predict", content=good, headers={"content-type": "application/x-npy"})
                        during[r.status_code] += 1
                    except httpx.HTTPError:
                        during[-1] += 1
                    time.sleep(0.1)
            stop.set()
            for th in slow:
                th.join(5)
            slow_end = time.perf_counter() - t0
            after_slow = httpx.post(
                f"{url}/v1/predict", content=good, headers={"content-type": "application/x-npy"}
            ).status_code
            rss_end, rss_peak = rss_mb(proc.pid), rss_mb(proc.pid, "VmHWM")
        finally:
            watching.set()
            proc.terminate()
            _, server_log = proc.communicate(timeout=30)
    flat = [r for per in rows for r in per]
    by_kind: dict[str, Counter[int]] = {}
    for kind, status, _ in flat:
        by_kind.setdefault(kind, Counter())[status] += 1
    lat = {k: [s for kind, _, s in flat if (kind == "good") == (k == "good")] for k in ("good", "malformed")}
    rep = {
        "benchmark": "serve_hostile",
        "clients": args.clients,
        "requests_per_client": args.requests,
        "malformed_every": args.malformed_every,
        "requests": len(flat),
        "malformed": sum(1 for k, _, _ in flat if k != "good"),
        "answers_500": sum(1 for _, s, _ in flat if s >= 500),
        "failed_requests": sum(1 for _, s, _ in flat if s == -1),
        "good_not_200": sum(1 for k, s, _ in flat if k == "good" and s != 200),
        "malformed_not_4xx": sum(1 for k, s, _ in flat if k != "good" and not 400 <= s < 500),
        "statuses_by_kind": {k: dict(sorted(v.items())) for k, v in by_kind.items()},
        "latency_ms": {
            k: {q: float(np.percentile(v, p) * 1e3) for q, p in (("p50", 50), ("p99", 99), ("max", 100))}
            for k, v in lat.items()
        },
        "mix_wall_s": mix_wall,
        "throughput_rps": len(flat) / mix_wall,
        "rss_mb": {"before_mix": rss_before, "after_mix": rss_after_mix, "end": rss_end, "peak": rss_peak},
        "rss_growth_mb": rss_after_mix - rss_before,
        "slow_clients": args.slow_clients,
        "header_timeout_s": DEFAULT_HEADER_TIMEOUT,
        "max_connections": DEFAULT_MAX_CONNECTIONS,
        "max_inflight": DEFAULT_MAX_INFLIGHT,
        "slow_closed_after_s": {
            "min": min(closed_after, default=None),
            "max": max(closed_after, default=None),
            "closed": len(closed_after),
        },
        "good_during_slow": dict(sorted(during.items())),
        "good_after_slow": after_slow,
        "traceback_in_server_log": "Traceback" in server_log,
        "server_log_lines": len(server_log.splitlines()),
        "serial_in_server_log": product_key in server_log,
        "memory_trace": memory,
        "phases_s": {"mix": [0.0, mix_end], "slow": [slow_start, slow_end]},
        "model_sha256": m.manifest["integrity"]["sha256"],
        "seed": args.seed,
        "total_s": time.perf_counter() - t_all,
        "environment": environment(),
    }
    md = markdown(rep, bad)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ts, mb = zip(*memory, strict=True) if memory else ((), ())
    ax.plot(ts, mb, color="tab:blue")
    ax.axvspan(*rep["phases_s"]["mix"], color="tab:orange", alpha=0.15, label="malformed mix")
    ax.axvspan(*rep["phases_s"]["slow"], color="tab:red", alpha=0.15, label=f"{args.slow_clients} slow clients")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("server RSS (MB)")
    ax.set_ylim(0, max(mb, default=1) * 1.2)
    ax.legend(loc="lower right")
    ax.set_title("deepserial serve under hostile traffic, loopback")
    stem = args.out / "bench_serve_hostile"
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), rep)
    write_text(stem.with_suffix(".md"), md)
    save_figure(fig, stem.with_suffix(".png"))
    for suffix in (".md", ".json", ".png"):
        print(f"wrote {stem.with_suffix(suffix)}")
    print(md)


def markdown(rep: dict, bad: list[tuple[str, bytes, str]]) -> str:
    env, lat, rss, slow = rep["environment"], rep["latency_ms"], rep["rss_mb"], rep["slow_closed_after_s"]
    rows = [
        ["requests (malformed)", f"{rep['requests']} ({rep['malformed']})"],
        ["answers of 500 (must be 0)", rep["answers_500"]],
        ["good requests not answered 200", rep["good_not_200"]],
        ["malformed requests not answered 4xx", rep["malformed_not_4xx"]],
        ["requests that failed (no answer)", rep["failed_requests"]],
        ["throughput (requests/s)", f"{rep['throughput_rps']:.0f}"],
        [
            "latency p50 / p99 / max, good (ms)",
            f"{lat['good']['p50']:.1f} / {lat['good']['p99']:.1f} / {lat['good']['max']:.0f}",
        ],
        [
            "latency p50 / p99 / max, malformed (ms)",
            f"{lat['malformed']['p50']:.1f} / {lat['malformed']['p99']:.1f} / {lat['malformed']['max']:.0f}",
        ],
        ["server RSS before / after the mix (MB)", f"{rss['before_mix']:.0f} / {rss['after_mix']:.0f}"],
        ["RSS growth over the mix (MB, must be < 50)", f"{rep['rss_growth_mb']:.1f}"],
        ["RSS peak / at the end (MB)", f"{rss['peak']:.0f} / {rss['end']:.0f}"],
        [
            f"{rep['slow_clients']} slow clients: all closed by the server after (s)",
            f"{slow['min']:.1f}-{slow['max']:.1f} ({slow['closed']} closed)",
        ],
        ["a good client meanwhile: answers by status", json.dumps(rep["good_during_slow"])],
        ["a good request after them", rep["good_after_slow"]],
        ["traceback in the server's log", "yes" if rep["traceback_in_server_log"] else "no"],
        ["serial number in the server's log", "yes" if rep["serial_in_server_log"] else "no"],
    ]
    kinds = [
        [kind, ", ".join(f"{s}: {n}" for s, n in rep["statuses_by_kind"].get(kind, {}).items())]
        for kind in ["good", *(k for k, _, _ in bad)]
    ]
    return (
        "# Prediction server under hostile traffic\n\n"
        f"`python benchmarks/bench_serve_hostile.py --clients {rep['clients']} --requests "
        f"{rep['requests_per_client']}`: `deepserial serve` (default limits) in its own process on loopback, "
        f"{rep['clients']} client threads over keep-alive connections, one request in {rep['malformed_every']} "
        "malformed (cycling through the kinds below), the rest one good image (.npy); then "
        f"{rep['slow_clients']} slowloris connections (a request line, then a header byte a second) while "
        "a good client keeps asking.\n\n"
        + markdown_table(["measure", "value"], rows)
        + "\n\nAnswers by kind of request (status: count):\n\n"
        + markdown_table(["request", "answers"], kinds)
        + f"\n\nThe header timeout is {rep['header_timeout_s']:g} s. The server caps open connections at "
        f"{rep['max_connections']} (past that every new request is answered 503) and predictions in progress at "
        f"{rep['max_inflight']}: clients that have not finished their headers do not count against the latter, so a "
        "good client is served while they hang on, until there are as many of them as the connection cap (a "
        "reverse proxy in front is the defence against connection floods; see docs/security.md).\n\n"
        f"{env.get('cpu', '')} ({env.get('cpu_count', '?')} cores, shared with other work), torch "
        f"{env.get('torch')}, Python {env.get('python')}, seed {rep['seed']}; total {rep['total_s']:.0f} s.\n"
    )


if __name__ == "__main__":
    mark_start()  # the report names the git state the run started from, not the one it ends on
    main()
