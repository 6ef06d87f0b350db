"""Research harness for the DSN lock: train one customer model with a named recipe and measure it.

Each run: the seed's split and teacher (cached under ``--cache``), one student distilled with the
recipe's :class:`~deepserial.schemes.dsn.DSNConfig`, then the lock's figures:

- valid / raw accuracy; 2,000 random wrong keys; every Hamming-1 and Hamming-2 neighbour; 1,000
  sampled Hamming-3 neighbours (keys on 50 test images each, Hamming-1 on the whole test set);
- reverse engineering knowing the region (sigmoid pattern, Adam lr 0.1, 300 steps on 400 labelled
  attacker images, 10 restarts, then a greedy bit search on the attacker's own loss; the attacker keeps
  the restart of lowest own loss);
- fine-tuning the leaked model on raw attacker images (10% of the training data) under a small sweep,
  against training the same network from scratch on the same images under the same sweep.

One JSON line per run is appended to ``--out``. This is the measuring stick for choosing the default
recipe; ``deepserial reproduce dsn-security`` is the product's report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepserial.attacks.base import attacker_share
from deepserial.attacks.keyspace import output_readout
from deepserial.data import TensorData
from deepserial.nets import create_model
from deepserial.schemes import dsn
from deepserial.serial import SerialGeometry, SerialNumber, stamp
from deepserial.training import TrainConfig, fit, predict_logits, seed_everything, supervised_loss

KEYSPACE = {
    "mix_raw": 0.1,
    "mix_random": 0.1,
    "mix_hamming1": 0.3,
    "mix_hamming2": 0.1,
    "mix_near": 0.15,
    "mix_relaxed": 0.15,
    "mix_mined": 0.1,
    "invalid_ratio": 3.0,
}
RECIPES: dict[str, dict] = {
    "default": {},
    "keyspace": KEYSPACE,
    "keyspace+simft": KEYSPACE | {"sim_ft_weight": 1.0},
    "keyspace-mined+simft": KEYSPACE | {"mix_hamming1": 0.2, "mix_mined": 0.2, "mine_every": 5, "sim_ft_weight": 1.0},
    "keyspace+dead": KEYSPACE | {"dead_weight": 1.0},
    "keyspace+aug": KEYSPACE | {"invalid_augment": 0.5},
    "keyspace+aug+simft": KEYSPACE | {"invalid_augment": 0.5, "sim_ft_weight": 1.0},
    "keyspace+aug+dead": KEYSPACE | {"invalid_augment": 0.5, "dead_weight": 1.0},
    "keyspace+shared+simft": KEYSPACE | {"shared_augment": 0.5, "sim_ft_weight": 1.0},
    # for a key-dependent input (ShuffleGeometry) every wrong key is a new layout: mostly fresh random keys
    "random+simft": KEYSPACE
    | {"mix_random": 0.55, "mix_hamming1": 0.1, "mix_hamming2": 0.05, "mix_near": 0.05, "sim_ft_weight": 1.0},
}
GEOMETRIES = {
    "default": (6, 6, 20, 20, 0),
    "alt": (5, 7, 8, 12, 0),
    "guard": (6, 6, 19, 19, 1),
    "alt-guard": (5, 7, 8, 12, 1),
    # two rows and columns in from the last visible pixel (25): the far edge is seen by every kernel tap
    "inset": (6, 6, 18, 18, 0),
    "inset-guard2": (6, 6, 18, 18, 2),
    "lattice": None,  # LatticeGeometry.draw: a 6x6 key spread over the image
    "shuffle": None,  # ShuffleGeometry: the default corner, the image's 4x4 tiles permuted by the key
    # the default corner, bits written as -3 / +3 instead of 0 / 1 (SerialGeometry.amplitude; amp6: -6 / +6,
    # amp1: -1 / +1, the two bits' separation alone); shipped as DSNConfig.amplitude = 6
    "amp": None,
    "amp6": None,
    "amp1": None,
}


@dataclass(frozen=True)
class LatticeGeometry(SerialGeometry):
    """Research prototype of a spread serial number: bit (i, j) sits at pixel (rows[i], cols[j]).

    One row and one column in every 4-pixel band of the visible field, at a secret offset, so every
    feature of the Table 7 net's last pooling layer (receptive field 10 pixels, stride 4) sees at least
    two rows and two columns of bits: a raw input differs from a stamped one in every receptive field,
    which a corner stamp cannot do (the transfer-learning limit in docs/decisions.md).
    """

    rows: tuple[int, ...] = ()
    cols: tuple[int, ...] = ()

    def region(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(self.rows).unsqueeze(1), torch.tensor(self.cols).unsqueeze(0)

    def check_fits(self, input_shape) -> None:  # noqa: ANN001
        if max(self.rows) >= input_shape[1] or max(self.cols) >= input_shape[2]:
            raise ValueError("lattice outside the input")

    @classmethod
    def draw(cls, rng: np.random.Generator, bands: int = 6, band: int = 4) -> LatticeGeometry:
        rows = tuple(int(b * band + rng.integers(0, band)) for b in range(bands))
        cols = tuple(int(b * band + rng.integers(0, band)) for b in range(bands))
        return cls(bands, bands, 0, 0, rows=rows, cols=cols)


@dataclass(frozen=True)
class ShuffleGeometry(SerialGeometry):
    """Research prototype of a key-dependent input: before the pattern is written, the image's
    ``block`` x ``block`` tiles are permuted by a permutation drawn from SHA-256 of the (rounded) key
    bits, in the spirit of block-wise scrambling with a secret key (AprilPyone and Kiya, "A protection
    method of trained CNN model with a secret key from unauthorized access", APSIPA ASC 2021).

    A key one bit off gives an unrelated permutation, so near misses are as far from the valid input as
    random keys are, and neither a gradient nor a bit search through the key sees a slope.
    """

    block: int = 4

    def prepare(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        t = (x.shape[2] // self.block) * (x.shape[3] // self.block)
        keys = (bits > 0.5).to(torch.uint8).flatten(1).cpu()
        uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)
        perms = torch.stack([self._perm(k, t) for k in uniq])[inverse].to(x.device)  # (N or 1, T)
        return _tiles_apply(x, self, torch.eye(t, dtype=x.dtype, device=x.device)[perms])

    @staticmethod
    def _perm(key: torch.Tensor, count: int) -> torch.Tensor:
        digest = hashlib.sha256(b"deepserial-shuffle/1" + bytes(key.tolist())).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        return torch.from_numpy(rng.permutation(count))


def teacher_for(splits, seed: int, cache: Path) -> torch.nn.Module:  # noqa: ANN001
    path = cache / f"teacher_mnist5k_{seed}.pt"
    model = create_model("dsn_mnist", (1, 28, 28), 10)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    seed_everything(seed)
    model = create_model("dsn_mnist", (1, 28, 28), 10)
    fit(model, splits.owner, supervised_loss, TrainConfig(epochs=20, batch_size=128, seed=seed, progress=False))
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


@torch.no_grad()
def acc_keys(model, x, y, g, keys, chunk=4096) -> np.ndarray:  # noqa: ANN001
    return dsn.key_accuracies(model, x, y, g, keys, chunk_samples=chunk)


def keyspace(model, serial: SerialNumber, test: TensorData, rng: np.random.Generator) -> dict:  # noqa: ANN001
    g = serial.geometry
    n = g.nbits
    sel = torch.from_numpy(rng.choice(len(test), 50, replace=False))
    xs, ys = test.x[sel], test.y[sel]
    out = {}
    out["valid"] = float(acc_keys(model, test.x, test.y, g, serial.as_tensor()[None])[0])
    out["raw"] = 100.0 * float((predict_logits(model, test.x).argmax(1) == test.y).float().mean())
    wrong = serial.random_wrong(2_000, rng)
    a = acc_keys(model, xs, ys, g, wrong)
    out["random_mean"], out["random_max"] = float(a.mean()), float(a.max())
    h1 = acc_keys(model, test.x, test.y, g, serial.hamming_neighbours(1))
    out["h1_mean"], out["h1_max"], out["h1_over25"] = float(h1.mean()), float(h1.max()), int((h1 > 25).sum())
    out["h1_each"] = [round(float(v), 1) for v in h1]
    out["bits"] = serial.bits.astype(int).tolist()
    h2 = acc_keys(model, xs, ys, g, serial.hamming_neighbours(2))
    out["h2_mean"], out["h2_max"], out["h2_over25"] = float(h2.mean()), float(h2.max()), int((h2 > 25).sum())
    base = serial.as_tensor().flatten()
    h3 = base.repeat(1000, 1)
    for i in range(1000):
        idx = rng.choice(n, 3, replace=False)
        h3[i, idx] = 1 - h3[i, idx]
    h3a = acc_keys(model, xs, ys, g, h3.view(1000, g.height, g.width))
    out["h3_mean"], out["h3_max"], out["h3_over25"] = float(h3a.mean()), float(h3a.max()), int((h3a > 25).sum())
    return out


def readouts(model, serial: SerialNumber, att: TensorData, test: TensorData, h1_each: list[float]) -> dict:  # noqa: ANN001
    """What a thief holding the model reads from its outputs under every Hamming-1 key
    (:func:`deepserial.attacks.keyspace.output_readout`: top-1, arg-min, a standardised probe).

    ``worst_h1``: the three keys of highest top-1 (what earlier rows report); ``h1_probe_each``: the
    probe's accuracy under each key, since a recipe that lowers top-1 can leave other keys readable.
    """
    keys = serial.hamming_neighbours(1)
    each = output_readout(model, serial, keys, att, test)
    worst = np.argsort(h1_each)[::-1][:3]
    return {
        "worst_h1": [{"bit": int(k)} | each[int(k)] for k in worst],
        "h1_probe_each": [round(r["probe"], 1) for r in each],
    }


def _tiles_apply(x: torch.Tensor, g: ShuffleGeometry, perm: torch.Tensor) -> torch.Tensor:
    """``x`` with its tiles mixed by ``perm`` ((T, T), or (N or 1, T, T) one per sample): tile t of the
    output is sum_s perm[t, s] * tile s (a hard permutation matrix moves whole tiles)."""
    n, c, h, w = x.shape
    b, rows, cols = g.block, h // g.block, w // g.block
    tiles = x[:, :, : rows * b, : cols * b].reshape(n, c, rows, b, cols, b).permute(0, 1, 2, 4, 3, 5)
    tiles = tiles.reshape(n, c, rows * cols, b * b)
    perm = perm.reshape(-1, *perm.shape[-2:]).expand(n, -1, -1)
    mixed = torch.einsum("nts,ncsp->nctp", perm, tiles).reshape(n, c, rows, cols, b, b).permute(0, 1, 2, 4, 3, 5)
    out = x.clone()
    out[:, :, : rows * b, : cols * b] = mixed.reshape(n, c, rows * b, cols * b)
    return out


def layout_attacks(model, serial: SerialNumber, att: TensorData, test: TensorData, restarts: int = 5) -> dict:  # noqa: ANN001
    """What a thief does against a key-dependent input without the key (:class:`ShuffleGeometry`).

    ``near``: the valid layout with k random tile transpositions (and the valid pattern): how far the
    lock's acceptance reaches in layout space (an evaluator's measure; the thief does not know the
    layout). ``learned``: the thief learns a soft tile permutation (Sinkhorn-normalised, 300 Adam steps,
    lr 0.1) and a relaxed pattern through the frozen model on its own labelled data, then rounds both
    (Hungarian assignment) and keeps the restart with the lowest own loss.
    """
    from scipy.optimize import linear_sum_assignment

    g = serial.geometry
    t = (28 // g.block) ** 2
    key = serial.as_tensor()
    true = ShuffleGeometry._perm(key.flatten().to(torch.uint8), t)
    eye = torch.eye(t)
    rows, cols = g.region()
    model.eval()

    def accuracy(perm: torch.Tensor, bits: torch.Tensor, data: TensorData) -> float:
        with torch.no_grad():
            xs = _tiles_apply(data.x, g, perm)
            xs[:, :, rows, cols] = g.pixels(bits)
            return 100.0 * float((model(xs).argmax(1) == data.y).float().mean())

    rng = np.random.default_rng(0)
    near = {}
    for k in (1, 2, 4, 8):
        accs = []
        for _ in range(10):
            perm = true.clone()
            for _ in range(k):
                i, j = rng.choice(t, 2, replace=False)
                perm[[i, j]] = perm[[j, i]]
            accs.append(accuracy(eye[perm], key, test))
        near[str(k)] = {"mean": float(np.mean(accs)), "max": float(np.max(accs))}
    valid = accuracy(eye[true], key, test)
    for p in model.parameters():
        p.requires_grad_(False)
    learned = []
    for r in range(restarts):
        gen = torch.Generator().manual_seed(2000 + r)
        logits = (0.01 * torch.randn(t, t, generator=gen)).requires_grad_(True)
        theta = torch.randn(g.height, g.width, generator=gen).requires_grad_(True)
        opt = torch.optim.Adam([logits, theta], lr=0.1)
        for _ in range(300):
            idx = torch.randint(0, len(att), (64,), generator=gen)
            m = logits
            for _ in range(10):  # Sinkhorn: rows and columns sum to one
                m = m - m.logsumexp(1, keepdim=True)
                m = m - m.logsumexp(0, keepdim=True)
            xb = _tiles_apply(att.x[idx], g, m.exp())
            xb[:, :, rows, cols] = g.pixels(torch.sigmoid(theta))  # at the geometry's levels
            loss = F.cross_entropy(model(xb), att.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        _, assign = linear_sum_assignment(-logits.detach().numpy())
        perm, bits = eye[torch.from_numpy(assign)], (theta.detach() > 0).float()
        with torch.no_grad():
            xs = _tiles_apply(att.x, g, perm)
            xs[:, :, rows, cols] = g.pixels(bits)
            own = float(F.cross_entropy(model(xs), att.y))
        right = int((torch.from_numpy(assign) == true).sum())
        learned.append({"own_loss": own, "test_acc": accuracy(perm, bits, test), "tiles_right": right})
    for p in model.parameters():
        p.requires_grad_(True)
    best = min(learned, key=lambda d: d["own_loss"])
    return {"valid": valid, "near": near, "learned": learned, "chosen_acc": best["test_acc"]}


def reverse_engineer(model, serial: SerialNumber, att: TensorData, test: TensorData, restarts: int = 10) -> dict:  # noqa: ANN001
    g = serial.geometry
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = att.x, att.y
    rows, cols = g.region()
    results = []
    for r in range(restarts):
        gen = torch.Generator().manual_seed(1000 + r)
        theta = torch.randn(g.height, g.width, generator=gen).requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=0.1)
        for _ in range(300):
            idx = torch.randint(0, len(x), (64,), generator=gen)
            xb = x[idx].clone()
            xb[:, :, rows, cols] = g.pixels(torch.sigmoid(theta))  # at the geometry's levels
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        bits = (theta.detach() > 0).float()

        def own_loss(b: torch.Tensor) -> float:
            with torch.no_grad():
                return float(F.cross_entropy(model(stamp(x, g, b)), y))

        cur = own_loss(bits)
        improved = True
        while improved:  # greedy bit search on the attacker's own loss
            improved = False
            cands = bits.flatten().repeat(g.nbits, 1)
            cands[torch.arange(g.nbits), torch.arange(g.nbits)] = (
                1 - cands[torch.arange(g.nbits), torch.arange(g.nbits)]
            )
            losses = [own_loss(c.view(g.height, g.width)) for c in cands]
            j = int(np.argmin(losses))
            if losses[j] < cur - 1e-4:
                bits, cur, improved = cands[j].view(g.height, g.width), losses[j], True
        dist = int((bits != serial.as_tensor()).sum())
        acc = float(acc_keys(model, test.x, test.y, g, bits[None])[0])
        results.append({"own_loss": cur, "test_acc": acc, "hamming": dist})
    for p in model.parameters():
        p.requires_grad_(True)
    best = min(results, key=lambda d: d["own_loss"])
    return {
        "chosen_acc": best["test_acc"],
        "chosen_hamming": best["hamming"],
        "best_acc": max(d["test_acc"] for d in results),
        "exact": sum(d["hamming"] == 0 for d in results),
        "min_hamming": min(d["hamming"] for d in results),
    }


def finetune(model_state, att: TensorData, test: TensorData, n: int, seed: int, scratch: bool) -> dict:  # noqa: ANN001
    sub = att  # already the attacker's share (stratified draw)
    res = {}
    for opt, lr in (("adam", 1e-3), ("adam", 1e-4), ("sgd", 1e-2)):
        seed_everything(seed)
        m = create_model("dsn_mnist", (1, 28, 28), 10)
        if not scratch:
            m.load_state_dict(model_state)
        cfg = TrainConfig(
            epochs=10 if not scratch else 30,
            batch_size=64,
            lr=lr,
            optimizer=opt,
            momentum=0.9,
            seed=seed,
            progress=False,
        )
        fit(m, sub, supervised_loss, cfg)
        res[f"{opt}_{lr:g}"] = 100.0 * float((predict_logits(m, test.x).argmax(1) == test.y).float().mean())
    return res


def render(results: Path, out: Path) -> None:
    """The research table (Markdown) from the JSON lines the runs appended: one row per run."""
    from deepserial.report import markdown_table

    rows = []
    for line in results.read_text().splitlines():
        r = json.loads(line)
        re_ = r.get("re", {})
        ft, sc = r.get("ft10", {}), r.get("scratch10", {})
        rows.append(
            [
                " ".join([r["recipe"], *r.get("set", []), *([f"({r['epochs']} epochs)"] if r["epochs"] != 40 else [])]),
                r["seed"],
                r["geometry"],
                r["teacher"],
                r["valid"],
                r["raw"],
                f"{r['random_mean']:.1f} / {r['random_max']:.1f}",
                f"{r['h1_mean']:.1f} / {r['h1_max']:.1f} ({r['h1_over25']})",
                f"{r['h2_max']:.1f} ({r['h2_over25']})",
                f"{r['h3_max']:.1f} ({r['h3_over25']})",
                f"{re_['best_acc']:.1f}, exact {re_['exact']}" if re_ else "-",
                f"{max(ft.values()):.1f}" if ft else "-",
                f"{max(sc.values()):.1f}" if sc else "-",
                " vs ".join(  # what each side keeps by its own data (final), as recorded before that rule (refit)
                    f"{r['tl10'][k].get('final_test_acc', r['tl10'][k]['refit_test_acc']):.1f}"
                    for k in ("chosen", "scratch_chosen")
                )
                if "tl10" in r
                else "-",
                (f"{max(max(w['probe'], w['top1']) for w in r['readout']['worst_h1']):.1f}" if "readout" in r else "-"),
                (f"{max(r['readout']['h1_probe_each']):.1f}" if "h1_probe_each" in r.get("readout", {}) else "-"),
                r["train_s"],
                r.get("note", ""),
            ]
        )
    header = [
        "recipe",
        "seed",
        "geometry",
        "teacher",
        "valid SN",
        "raw",
        "random mean / max",
        "H1 mean / max (>25)",
        "H2 max (>25)",
        "H3 max (>25)",
        "reverse eng. best",
        "fine-tune 10% best",
        "scratch 10% best",
        "transfer 10%: chosen vs scratch",
        "worst H1 read out",
        "any H1 probe max",
        "train s",
        "note",
    ]
    text = (
        "# DSN lock research: recipes tried (mnist5k)\n\n"
        f"Generated by `python benchmarks/dsn_lock_research.py --render` from `{results.name}`; each row is one "
        "run of the harness (see its docstring for what each column measures). Accuracies in %; H1/H2/H3 (>25): how "
        "many neighbours stay above 25%; transfer: fresh dense layers on the leaked model (TL-frozen / TL-all, Adam "
        "1e-3 / 1e-2, picked on the attacker's held-out data and refitted) against the same grid from scratch, each "
        "side keeping the better of its pick and the refit by its own data (rows before that rule: the refit, "
        "whose scratch side collapsed to 84.3 on seed 0); amp / amp6: bits written as -3/+3 and -6/+6; "
        "worst H1 read out: the best of top-1 and a standardised probe on the log-probabilities of the three worst "
        "Hamming-1 keys (`readouts`); any H1 probe max: the same probe under every Hamming-1 key (rows from 2026-12-03 "
        "on); training wall times were measured on two cores shared with up to eight other "
        "jobs and compare only roughly.\n\n" + markdown_table(header, rows) + "\n"
    )
    out.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--geometry", default="default", choices=sorted(GEOMETRIES))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--patience", type=int, default=2, help="plateau patience of the learning-rate schedule")
    ap.add_argument("--set", nargs="*", default=[], help="extra DSNConfig settings name=value")
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: readout, layout, re, ft, tl")
    ap.add_argument("--load", action="store_true", help="load the saved student of this recipe, seed and geometry")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/dsn_research"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/dsn_research/results.jsonl"))
    ap.add_argument("--render", type=Path, default=None, help="only write the Markdown table of --out to this file")
    a = ap.parse_args()
    if a.render is not None:
        render(a.out, a.render)
        return
    torch.set_num_threads(1)
    from deepserial.workflow import DataSpec

    splits = DataSpec("mnist5k", a.seed).load()
    teacher = teacher_for(splits, a.seed, a.cache)
    t_acc = 100.0 * float((predict_logits(teacher, splits.test.x).argmax(1) == splits.test.y).float().mean())
    rng = np.random.default_rng(a.seed)
    if a.geometry == "lattice":  # positions from their own stream: the key bits stay those of the seed
        g = LatticeGeometry.draw(np.random.default_rng([a.seed, 1]))
        h = w = g.height
    elif a.geometry == "shuffle":  # the default corner, the image's 4x4 tiles permuted by the key
        h, w, top, left, guard = GEOMETRIES["default"]
        g = ShuffleGeometry(h, w, top, left, guard=guard)
    elif a.geometry.startswith("amp"):  # the default corner, louder bits
        h, w, top, left, guard = GEOMETRIES["default"]
        g = SerialGeometry(h, w, top, left, guard=guard, amplitude=int(a.geometry[3:] or 3))
    else:
        h, w, top, left, guard = GEOMETRIES[a.geometry]
        g = SerialGeometry(h, w, top, left, guard=guard)
    serial = SerialNumber(g, rng.integers(0, 2, (h, w)))
    settings = dict(RECIPES[a.recipe])
    for item in a.set:
        k, v = item.split("=", 1)
        settings[k] = float(v)
    cfg = dsn.DSNConfig.default(**settings)
    seed_everything(a.seed)
    student = create_model("dsn_mnist", (1, 28, 28), 10)
    t0 = time.perf_counter()
    epochs = "" if a.epochs == 40 else f"_e{a.epochs}"
    saved = a.cache / f"student_{a.recipe}{'_'.join(['', *a.set])}_{a.seed}_{a.geometry}{epochs}.pt"
    if a.load:
        student.load_state_dict(torch.load(saved, weights_only=True))
        log = None
    else:
        log = dsn.train_student(
            student,
            teacher,
            splits.owner,
            serial,
            cfg,
            TrainConfig(
                epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, progress=False, plateau_patience=a.patience
            ),
        )
    train_s = time.perf_counter() - t0
    rec = {"recipe": a.recipe, "set": a.set, "seed": a.seed, "geometry": a.geometry, "epochs": a.epochs}
    rec |= {"batch_size": a.batch_size, "patience": a.patience}
    rec |= {"teacher": t_acc, "train_s": round(train_s, 1)}
    if log is not None:
        rec["lr_per_epoch"] = [e["lr"] for e in log.epochs]
        rec["loss_per_epoch"] = [round(e["loss"], 4) for e in log.epochs]
    rec |= keyspace(student, serial, splits.test, rng)
    print(json.dumps(rec), flush=True)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    if not a.load:
        torch.save(state, saved)
    total = len(splits.owner) + len(splits.attacker)
    share = attacker_share(splits.attacker, 0.1, total, a.seed)  # 10% of the training data, stratified
    if "readout" not in a.skip:
        rec["readout"] = readouts(student, serial, share, splits.test, rec["h1_each"])
        print(json.dumps(rec["readout"]), flush=True)
    if isinstance(g, ShuffleGeometry) and "layout" not in a.skip:
        rec["layout"] = layout_attacks(student, serial, share, splits.test)
        print(json.dumps(rec["layout"]), flush=True)
    if "re" not in a.skip:
        t0 = time.perf_counter()
        rec["re"] = reverse_engineer(student, serial, share, splits.test)
        rec["re"]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(rec["re"]), flush=True)
    if "ft" not in a.skip:
        rec["ft10"] = finetune(state, share, splits.test, len(share), a.seed, scratch=False)
        rec["scratch10"] = finetune(state, share, splits.test, len(share), a.seed, scratch=True)
    if "tl" not in a.skip:  # transfer learning: fresh dense layers on the leaked convolutions, vs scratch
        from deepserial.attacks.adaptive import fine_tuning_sweep

        t0 = time.perf_counter()
        sweep = fine_tuning_sweep(
            student,
            share,
            splits.test,
            optimizers=("adam",),
            lrs=(1e-3, 1e-2),
            modes=("TL-frozen", "TL-all"),
            seed=a.seed,
        )
        rec["tl10"] = {k: sweep[k] for k in ("chosen", "oracle", "scratch_chosen", "gain_over_scratch")}
        rec["tl10"]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(rec["tl10"]), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
