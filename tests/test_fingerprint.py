"""Fingerprint tracing: the right customer named through what any server answers, nobody framed, and
nothing about any serial number in what the tracer sends."""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FingerprintedNet, LockedNet

from deepserial import stats
from deepserial.artifacts import LoadedModel
from deepserial.errors import ConfigError, IdentityError
from deepserial.fingerprint import DEFAULT_QUERIES, Fingerprint, codeword, decode, match_rate, query_set
from deepserial.identity import OwnerIdentity, VerifierString
from deepserial.ledger import Ledger, Licence
from deepserial.nets import create_model
from deepserial.schemes import dsn
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.suspect import HTTPSuspect, ModuleSuspect
from deepserial.tracing import trace
from deepserial.training import TrainConfig
from deepserial.workflow import DataSpec

GEOMETRY = SerialGeometry(6, 6, 20, 20)
SHAPE = (1, 28, 28)


def issue_records(led: Ledger, ident: OwnerIdentity, customers: list[str]) -> list[tuple[Licence, Fingerprint]]:
    """Ledger rows for ``customers`` as ``deepserial issue`` writes them, with each licence's fingerprint."""
    out = []
    for i, name in enumerate(customers):
        v = VerifierString(ident.fingerprint(), name, f"2026-01-01T00:00:{i:02d}+00:00", "dsn")
        sig = ident.sign(v)
        led.record(ident, v, SerialNumber.from_signature(sig, GEOMETRY), signature=sig, fingerprint_cost=10)
    for lic in led.licences():
        out.append((lic, Fingerprint.for_licence(ident, VerifierString.from_dict(lic.verifier), SHAPE, 10)))
    return out


def test_queries_and_codewords_are_the_owners_secret_and_deterministic() -> None:
    a, b = OwnerIdentity.generate(), OwnerIdentity.generate("rsa")
    qa = query_set(a, SHAPE)
    assert qa.shape == (DEFAULT_QUERIES, *SHAPE) and qa.min() >= 0 and qa.max() <= 1
    assert torch.equal(qa, query_set(a, SHAPE))  # re-derived, never stored
    assert torch.equal(query_set(b, SHAPE), query_set(b, SHAPE))  # RSA too (not from a randomised signature)
    assert not torch.equal(qa, query_set(b, SHAPE))
    assert query_set(a, (3, 32, 32)).shape == (DEFAULT_QUERIES, 3, 32, 32)
    v1, v2 = VerifierString("o", "c1", "t", "dsn"), VerifierString("o", "c2", "t", "dsn")
    c1 = codeword(a, v1, 10)
    assert torch.equal(c1, codeword(a, v1, 10)) and not torch.equal(c1, codeword(a, v2, 10))
    assert not torch.equal(c1, codeword(b, v1, 10))  # another owner cannot re-derive it
    assert c1.min() >= 0 and c1.max() < 10 and len(set(c1.tolist())) >= 8
    public_only = OwnerIdentity.from_public_pem(a.public_pem())
    with pytest.raises(IdentityError, match="private key"):
        query_set(public_only, SHAPE)
    with pytest.raises(ConfigError):
        codeword(a, v1, 1)
    with pytest.raises(ConfigError):
        Fingerprint(qa, c1[:10])


def test_decode_p_values_are_exact_and_the_family_wise_rate_holds() -> None:
    rng = np.random.default_rng(0)
    codes = [torch.from_numpy(rng.integers(0, 10, 100)) for _ in range(5)]
    answers = codes[2].clone()
    answers[:60] = torch.from_numpy(rng.integers(0, 10, 60))  # 40 kept + about 6 by chance
    rows = decode(answers, codes, 10, fpr=1e-3)
    assert [r.named for r in rows] == [False, False, True, False, False]
    for r, c in zip(rows, codes, strict=True):
        assert r.matches == int((answers == c).sum())
        assert r.p_adjusted == pytest.approx(min(1.0, r.p_value * 5))
    # answers spread evenly over the classes weigh every match alike: the plain binomial test
    even = torch.arange(100) % 10
    for r, c in zip(decode(even, codes, 10, fpr=1e-3), codes, strict=True):
        assert r.p_value == pytest.approx(stats.binom_tail(int((even == c).sum()), 100, 0.1), rel=1e-9)
    # Any answers independent of the codewords (here: random, constant, skewed, or another codeword's
    # symbols) name someone in at most ``fpr`` of the traces (binomial bound, 4 standard deviations).
    trials, fpr, named = 4000, 0.05, 0
    skewed = torch.from_numpy(np.where(rng.random(100) < 0.7, 3, rng.integers(0, 10, 100)))
    for t in range(trials):
        fresh = [torch.from_numpy(rng.integers(0, 10, 100)) for _ in range(5)]
        ans = [torch.from_numpy(rng.integers(0, 10, 100)), torch.full((100,), 3), codes[0], skewed][t % 4]
        named += any(r.named for r in decode(ans, fresh, 10, fpr))
    assert named / trials <= fpr + 4 * (fpr * (1 - fpr) / trials) ** 0.5


def test_decode_p_values_are_valid_at_every_level_for_skewed_answers() -> None:
    """The weighted test's p-value is uniform-or-larger under the null, also when the suspect piles
    its answers onto one class (the case the weights are for)."""
    rng = np.random.default_rng(1)
    ans = torch.from_numpy(np.where(rng.random(100) < 0.6, 7, rng.integers(0, 10, 100)))
    ps = np.array([decode(ans, [torch.from_numpy(rng.integers(0, 10, 100))], 10, 0.5)[0].p_value for _ in range(6000)])
    for level in (0.01, 0.05, 0.2, 0.5):
        assert (ps <= level).mean() <= level + 4 * (level * (1 - level) / len(ps)) ** 0.5


def test_weighted_tails_match_brute_force_enumeration() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        m, p0 = int(rng.integers(1, 8)), float(rng.choice([0.1, 1 / 3, 0.5, 0.9]))
        w = rng.integers(0, 6, m)
        tails = stats.weighted_bernoulli_tails(w, p0)
        exact = np.zeros(int(w.sum()) + 1)
        for bits in itertools.product((0, 1), repeat=m):
            b = np.array(bits)
            exact[int((w * b).sum())] += p0 ** b.sum() * (1 - p0) ** (m - b.sum())
        assert np.allclose(tails, np.cumsum(exact[::-1])[::-1], atol=1e-12) and tails[0] == 1.0
    with pytest.raises(ConfigError):
        stats.weighted_bernoulli_tails(np.array([1, -1]), 0.1)
    with pytest.raises(ConfigError):
        stats.weighted_bernoulli_tails(np.array([1, 2]), 1.0)


def test_decode_refuses_malformed_answers_with_a_config_error() -> None:
    codes = [torch.randint(0, 10, (100,))]
    for bad in (
        torch.tensor([], dtype=torch.long),  # nothing answered
        torch.full((100,), 10),  # out of range
        torch.full((100,), -1),
        torch.zeros(100),  # floats, not labels
        torch.zeros(100, dtype=torch.bool),
        torch.zeros(10, 10, dtype=torch.long),  # 2-D
        torch.zeros(50, dtype=torch.long),  # fewer answers than symbols
    ):
        with pytest.raises(ConfigError):
            decode(bad, codes, 10, 1e-3)
    with pytest.raises(ConfigError):
        decode(torch.zeros(100, dtype=torch.long), codes, 1, 1e-3)
    with pytest.raises(ConfigError):
        decode(torch.zeros(100, dtype=torch.long), codes, 10.0, 1e-3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Fingerprint(torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.long), random_stamps=1.5)


def test_decode_weights_stay_informative_with_more_classes_than_queries() -> None:
    """With 5,000 classes and 100 queries every answer given once weighs fully: a model that answers
    its codeword is named, as with ten classes."""
    rng = np.random.default_rng(4)
    codes = [torch.from_numpy(rng.integers(0, 5000, 100)) for _ in range(3)]
    rows = decode(codes[0].clone(), codes, 5000, 1e-3)
    assert [r.named for r in rows] == [True, False, False] and rows[0].p_value < 1e-100


def test_decode_weights_find_a_fingerprint_under_answers_piled_on_one_class() -> None:
    """A leaked model a thief fine-tuned answers most queries with one class and keeps a few codeword
    symbols elsewhere: the plain match count misses it at 1e-3, the weighted count names it."""
    rng = np.random.default_rng(2)
    codes = [torch.from_numpy(rng.integers(0, 10, 100)) for _ in range(5)]
    code = codes[1]
    ans = torch.full((100,), 3)
    kept = np.flatnonzero(code.numpy() != 3)[:14]
    ans[kept] = code[kept]
    plain = stats.binom_tail(int((ans == code).sum()), 100, 0.1) * 5
    assert plain > 1e-3
    rows = decode(ans, codes, 10, fpr=1e-3)
    assert [r.named for r in rows] == [False, True, False, False, False]


def test_trace_names_the_customer_and_nobody_for_unissued_models(tmp_path: Path, strong_teacher: LoadedModel) -> None:
    ident = OwnerIdentity.generate()
    led = Ledger(tmp_path / "l.db")
    issued = issue_records(led, ident, [f"c{i}" for i in range(5)])
    lics = [lic for lic, _ in issued]
    for lic, fp in issued:
        net = FingerprintedNet(LockedNet(strong_teacher.model, lic.serial(ident)), fp, GEOMETRY).eval()
        s = ModuleSuspect(net, SHAPE)
        res = trace(s, lics, ident, fpr=1e-3)
        assert res.found and res.licence.id == lic.id and [n.id for n in res.named] == [lic.id]
        assert res.p_value <= 1e-3 and res.queries == s.queries == DEFAULT_QUERIES
        assert "carries the fingerprint of licence" in res.summary()
        # a server that stamps the key on every input answers the same
        stamping = ModuleSuspect(torch.nn.Sequential(StampLayer(lic.serial(ident)), net), SHAPE)
        assert trace(stamping, lics, ident).licence.id == lic.id
    other = OwnerIdentity.generate()
    unissued = Fingerprint.for_licence(other, VerifierString("x", "y", "z", "dsn"), SHAPE, 10)
    for net in (strong_teacher.model, FingerprintedNet(strong_teacher.model, unissued, GEOMETRY)):
        res = trace(ModuleSuspect(net.eval(), SHAPE), lics, ident, fpr=1e-3)
        assert not res.found and not res.named and "no issued licence matches" in res.summary()
    with pytest.raises(ConfigError, match="no DSN licence"):
        trace(ModuleSuspect(strong_teacher.model, SHAPE), [], ident)


class StampLayer(torch.nn.Module):
    """What a thief's server does that stamps the serial number itself."""

    def __init__(self, serial: SerialNumber) -> None:
        super().__init__()
        self.serial = serial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stamp(x, self.serial.geometry, self.serial.as_tensor())


class Averaged(torch.nn.Module):
    """Colluders who average their models' output probabilities."""

    def __init__(self, *nets: torch.nn.Module) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([n(x).softmax(1) for n in self.nets]).mean(0).log()


def test_colluders_averaging_outputs_are_named_and_no_innocent(tmp_path: Path, strong_teacher: LoadedModel) -> None:
    ident = OwnerIdentity.generate()
    issued = issue_records(Ledger(tmp_path / "l.db"), ident, [f"c{i}" for i in range(6)])
    lics = [lic for lic, _ in issued]
    nets = [FingerprintedNet(strong_teacher.model, fp, GEOMETRY).eval() for _, fp in issued]
    for group in ([0, 1], [2, 3, 4]):
        res = trace(ModuleSuspect(Averaged(*(nets[i] for i in group)), SHAPE), lics, ident, fpr=1e-3)
        named = {lic.id for lic in res.named}
        assert named and named <= {lics[i].id for i in group}, res.candidates


class Recorder(BaseHTTPRequestHandler):
    """A prediction server that keeps every input it is sent and answers with ``server.answer``."""

    def do_GET(self) -> None:
        self._json({"arch": "x", "input_shape": list(SHAPE), "num_classes": 10, "max_batch": 64})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        x = torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False))
        self.server.seen.append(body)  # type: ignore[attr-defined]
        self._json({"labels": self.server.answer(x).tolist()})  # type: ignore[attr-defined]

    def _json(self, obj: dict) -> None:
        raw = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def recording(answer: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[tuple[str, list[bytes]]]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    srv.seen, srv.answer = [], answer  # type: ignore[attr-defined]
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv.seen  # type: ignore[attr-defined]
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_recording_server_learns_nothing_about_any_serial_number(tmp_path: Path, strong_teacher: LoadedModel) -> None:
    """What the tracer sends is the owner's query set, byte for byte the same whichever licences the
    ledger holds, and no serial number of the ledger is stamped on it."""
    ident = OwnerIdentity.generate()
    sent = []
    for ledger, customers in (("a.db", ["acme", "beta"]), ("b.db", ["gamma", "delta", "eps"])):
        issued = issue_records(Ledger(tmp_path / ledger), ident, customers)
        net = FingerprintedNet(strong_teacher.model, issued[0][1], GEOMETRY).eval()
        with recording(lambda x, net=net: net(x).argmax(1)) as (url, seen):
            res = trace(HTTPSuspect(url), [lic for lic, _ in issued], ident)
        assert res.licence.customer == customers[0]
        sent.append(b"".join(seen))
        images = torch.cat([torch.from_numpy(np.load(io.BytesIO(b), allow_pickle=False)) for b in seen])
        assert torch.equal(images, query_set(ident, SHAPE))
        rows, cols = GEOMETRY.region()
        for lic, _ in issued:
            bits = lic.serial(ident).as_tensor()
            assert not (images[:, 0, rows, cols] == bits).flatten(1).all(1).any()
    assert sent[0] == sent[1]


def test_a_server_that_answers_as_a_customer_only_for_its_serial_number_frames_nobody(
    tmp_path: Path, strong_teacher: LoadedModel
) -> None:
    """The server holds customer A's model but answers as it only when A's serial number is stamped on
    the input (the old stamping trace named A on such a server); the fingerprint trace sends no stamp."""
    ident = OwnerIdentity.generate()
    issued = issue_records(Ledger(tmp_path / "l.db"), ident, ["a", "b", "c"])
    lic_a, fp_a = issued[0]
    sn_a = lic_a.serial(ident)
    model_a = FingerprintedNet(strong_teacher.model, fp_a, GEOMETRY).eval()
    rows, cols = GEOMETRY.region()

    def answer(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            is_a = (x[:, 0, rows, cols] == sn_a.as_tensor()).flatten(1).all(1)
            return torch.where(is_a, model_a(x).argmax(1), strong_teacher.model(x).argmax(1))

    with recording(answer) as (url, _):
        res = trace(HTTPSuspect(url), [lic for lic, _ in issued], ident)
    assert not res.found and not res.named


def test_a_student_learns_its_fingerprint_raw_and_stamped() -> None:
    """A short distillation (small data, the cheap previous recipe) learns the codeword through the
    stamp, a random pattern and no stamp alike; the full recipe is measured by ``reproduce tracing``."""
    torch.manual_seed(0)
    splits = DataSpec("mnist5k", seed=0, limit=1200).load()
    teacher = create_model("dsn_mnist", SHAPE, 10)
    student = create_model("dsn_mnist", SHAPE, 10)
    ident = OwnerIdentity.generate()
    serial = SerialNumber.from_signature(ident.sign(b"s"), GEOMETRY)
    fp = Fingerprint.for_licence(ident, VerifierString("o", "c", "t", "dsn"), SHAPE, 10, n=50)
    train = TrainConfig(epochs=6, batch_size=32, progress=False)
    dsn.train_student(student, teacher, splits.owner, serial, dsn.DSNConfig.previous_default(), train, fingerprint=fp)
    assert match_rate(student, fp) >= 0.8
    assert match_rate(student, fp, lambda q: stamp(q, GEOMETRY, serial.as_tensor())) >= 0.8
    other = torch.randint(0, 2, (6, 6)).float()
    assert match_rate(student, fp, lambda q: stamp(q, GEOMETRY, other)) >= 0.7


def test_trace_cli_names_the_customer_by_fingerprint_and_refuses_nothing_secret(
    tmp_path: Path, strong_teacher: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    """`deepserial trace` defaults to the fingerprint: the customer of a leaked model file is named,
    the verdict kept in the ledger, and a plain model names nobody (exit status 1)."""
    from deepserial.artifacts import export_onnx
    from deepserial.cli import main

    ident = OwnerIdentity.generate()
    key, _ = ident.save(tmp_path / "owner.pem")
    issued = issue_records(Ledger(tmp_path / "l.db"), ident, ["acme", "beta", "gamma"])
    manifest = dict(strong_teacher.manifest, serial_geometry=GEOMETRY.to_dict())
    leak = FingerprintedNet(strong_teacher.model, issued[1][1], GEOMETRY).eval()
    export_onnx(tmp_path / "leak.onnx", LoadedModel(leak, manifest))
    export_onnx(tmp_path / "plain.onnx", LoadedModel(strong_teacher.model, manifest))
    base = ["--ledger", str(tmp_path / "l.db"), "--key", str(key)]
    assert main(["trace", str(tmp_path / "leak.onnx"), *base]) == 0
    out = capsys.readouterr().out
    assert "carries the fingerprint of licence 2 of customer 'beta'" in out and "100 queries" in out
    assert main(["trace", str(tmp_path / "plain.onnx"), *base, "--json"]) == 1
    res = json.loads(capsys.readouterr().out)
    assert res["found"] is False and res["method"] == "fingerprint" and res["queries"] == DEFAULT_QUERIES
    assert [t["licence_id"] for t in Ledger(tmp_path / "l.db").traces()] == [2, None]


def test_colluders_majority_vote_answers_what_most_of_them_answer() -> None:
    from deepserial.experiments.tracing import _MajorityVote

    class Fixed(torch.nn.Module):
        def __init__(self, logits: list[float]) -> None:
            super().__init__()
            self.logits = torch.tensor([logits], dtype=torch.float32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits.expand(len(x), -1)

    x = torch.zeros(2, 1, 4, 4)
    two_for_1 = _MajorityVote(Fixed([0, 1, 0]), Fixed([0, 1, 0]), Fixed([0, 0, 9]))  # class 2 most confident
    assert two_for_1(x).argmax(1).tolist() == [1, 1]
    tie = _MajorityVote(Fixed([0, 1, 0]), Fixed([0, 0, 9]))  # one vote each: the higher mean probability
    assert tie(x).argmax(1).tolist() == [2, 2]


def test_reproduce_tracing_issues_the_models_whose_lock_the_dsn_security_report_measures() -> None:
    """The traced customer models follow each data set's DSN lock schedule, not a shorter one of their
    own (at 10 student epochs the fingerprint was learnt half as well as at the product's 40)."""
    from deepserial.experiments.dsn_security import CONFIGS
    from deepserial.experiments.tracing import for_dataset

    for name in ("mnist5k", "fashion-mnist"):
        cfg, sec = for_dataset(name), CONFIGS[name]
        assert (cfg.teacher_epochs, cfg.student_epochs, cfg.batch_size) == (
            sec.teacher_epochs,
            sec.student_epochs,
            sec.batch_size,
        )
    assert (for_dataset("mnist5k").customers, for_dataset("fashion-mnist").customers) == (20, 10)
    cfg = for_dataset("fashion-mnist", customers=None, student_epochs=3, seed=2)  # None: the data set's
    assert (cfg.customers, cfg.student_epochs, cfg.seed) == (10, 3, 2)


def test_tracing_summary_counts_the_leaks_worth_serving_against_the_thiefs_own_model() -> None:
    """A leak the thief's attack left below its own from-scratch model is counted apart: it is traced or
    not, but no thief would serve it."""
    from deepserial.experiments.tracing import TracingConfig, summarise

    def row(right: bool, acc: float | None = None) -> dict[str, object]:
        return {"right": right, "innocent_named": [], "queries": 100} | ({} if acc is None else {"valid_acc": acc})

    cfg = TracingConfig(ft_settings=[("adam", 1e-3)])
    customers = [
        {
            "valid_acc": acc,
            "stamping_server": row(True),
            "raw_server": row(True),
            "fine_tuning": {"adam 0.001": row(right, ft)},
            "pruning": row(True, acc - 1),
        }
        for acc, right, ft in ((95.0, True, 94.0), (94.0, False, 60.0), (96.0, False, 93.0))
    ]
    collusion = {"weights": [row(True, 14.0) | {"pair": [0, 1]}], "outputs": [row(True, 95.0) | {"pair": [0, 1]}]}
    s = summarise(customers, collusion, {}, [], cfg, {"adam 0.001": 90.0})
    ft = s["rows"]["fine-tuned (adam 0.001, 10 epochs, 10% of the data)"]
    assert (ft["right"], ft["worth_serving"], ft["right_worth_serving"]) == (1, 2, 1)
    assert s["rows"]["through a raw-input server"]["worth_serving"] == 3  # the customers' own accuracy
    assert s["rows"]["collusion: pairs averaging weights"] == {
        "traces": 1,
        "right": 1,
        "innocent_named": 0,
        "valid_acc_mean": 14.0,
        "worth_serving": 0,
        "right_worth_serving": 0,
    }
    assert "worth_serving" not in summarise(customers, collusion, {}, [], cfg)["rows"]["pruned 50%"]


def test_reproduce_tracing_runs_end_to_end_on_small_data(tmp_path: Path) -> None:
    """The reproduction's plumbing on tiny settings (its figures are meaningless at this size): every
    model issued and cached, every kind of trace run, the report written with its provenance, and a
    second run reuses the cached models."""
    from deepserial.experiments.tracing import TracingConfig, run

    cfg = TracingConfig(
        limit=600,
        customers=3,
        unissued=1,
        twins=1,
        teacher_epochs=1,
        student_epochs=1,
        queries=20,
        ft_epochs=1,
        ft_settings=[("adam", 1e-3)],
        pairs=1,
        triples=1,
        wrong_keys=10,
        lock_eval_samples=20,
    )
    paths = run(cfg, tmp_path / "reports", work=tmp_path / "work")
    rep = json.loads(paths[1].read_text())
    assert rep["summary"]["customers"] == 3 and rep["summary"]["max_queries"] == 20
    assert set(rep["innocents"]) == {"teacher", "unissued-0"}
    assert [len(v) for v in rep["collusion"].values()] == [1, 1, 1, 1]
    assert list(rep["collusion"])[2:] == ["weights, then fine-tuned (adam 0.001)", "triples, majority of outputs"]
    assert len(rep["collusion"]["triples, majority of outputs"][0]["coalition"]) == 3
    assert rep["twins"][0]["customer"] == "customer-00" and set(rep["twins"][0]) == {
        "customer",
        "fingerprinted",
        "plain",
    }
    assert rep["signed_at_epoch"] and rep["environment"]["git_commit"] is not None
    assert set(rep["from_scratch"]) == {"adam 0.001"} and "trained from scratch" in paths[0].read_text()
    # no licence of the ledger may be named for a model that must name nobody, whatever the training
    assert rep["summary"]["innocents_named"] == []
    models = sorted(p.name for p in (tmp_path / "work").glob("*.safetensors"))
    assert models == [
        "customer-00.safetensors",
        "customer-01.safetensors",
        "customer-02.safetensors",
        "teacher.safetensors",
        "twin-00.safetensors",
        "unissued-0.safetensors",
    ]
    stamp_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("*.safetensors")}
    (stages,) = (tmp_path / "work").glob("eval-*")  # every measurement kept: an interrupted run resumes
    assert sorted(p.name for p in stages.iterdir()) == [
        "customer-00.json",
        "customer-01.json",
        "customer-02.json",
        "from-scratch.json",
        "innocents.json",
        "pair-00-tuned-adam-0.001.json",
        "pair-00.json",
        "triple-00-majority.json",
        "twin-00.json",
    ]
    (stages / "customer-01.json").unlink()  # as if the run had stopped there
    again = json.loads(run(cfg, tmp_path / "reports", work=tmp_path / "work")[1].read_text())
    assert (rep["measurements_read_back"], again["measurements_read_back"]) == (0, 8)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("*.safetensors")} == stamp_before
    for k in ("customers", "collusion", "from_scratch", "innocents", "twins"):
        assert again[k] == rep[k]  # the kept measurements read back, the missing one measured again alike
    run(cfg.model_copy(update={"fpr": 1e-2}), tmp_path / "reports", work=tmp_path / "work")
    assert len(list((tmp_path / "work").glob("eval-*"))) == 2  # another evaluation is kept apart
    with pytest.raises(ConfigError, match="another configuration"):
        run(cfg.model_copy(update={"student_epochs": 2}), tmp_path / "reports", work=tmp_path / "work")
