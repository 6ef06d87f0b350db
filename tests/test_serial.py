"""Tests for deepserial.serial: product keys, derivation, stamping (DSN Eq. 7) and wrong keys."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from deepserial.errors import DeepSerialError, GeometryError, SerialNumberError
from deepserial.serial import (
    SerialGeometry,
    SerialNumber,
    bits_from_strings,
    scale_for,
    stamp,
    stamp_many,
)

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

GEOMETRIES = [
    SerialGeometry(1, 1, 0, 0),
    SerialGeometry(1, 2, 3, 4),
    SerialGeometry(2, 2, 24, 24),
    SerialGeometry(3, 3, 20, 20),
    SerialGeometry(3, 3, 0, 0, (0,)),
    SerialGeometry(2, 5, 7, 1, (1, 2)),
    SerialGeometry(4, 4, 10, 12, (0, 2)),
    SerialGeometry(5, 7, 255, 0, (7,)),
    SerialGeometry(8, 8, 100, 200, (0, 1, 2, 3, 4, 5, 6, 7)),
    SerialGeometry(16, 16, 16, 16),
    SerialGeometry(16, 16, 0, 0, (1,)),
]


@contextmanager
def raises(exc: type[DeepSerialError] = SerialNumberError, match: str | None = None) -> Iterator[pytest.ExceptionInfo]:
    """Expect ``exc`` (matching ``match``) with a one-line, non-empty message."""
    with pytest.raises(exc, match=match) as excinfo:
        yield excinfo
    text = str(excinfo.value)
    assert text.strip() and "\n" not in text, f"not a one-line message: {text!r}"


def random_sn(g: SerialGeometry, rng: np.random.Generator) -> SerialNumber:
    return SerialNumber(g, rng.integers(0, 2, size=(g.height, g.width)))


def strip(key: str) -> str:
    return key.replace("-", "")


@pytest.fixture
def sn() -> SerialNumber:
    return SerialNumber(SerialGeometry(4, 4, 2, 3), bits_from_strings(["1010", "0110", "1100", "0011"]))


# ------------------------------------------------------------------------------------------------ geometry


def test_geometry_validation() -> None:
    for bad in [(0, 3, 0, 0), (3, 256, 0, 0), (3, 3, -1, 0), (3, 3, 0, 256)]:
        with raises(GeometryError):
            SerialGeometry(*bad)
    with raises(GeometryError):
        SerialGeometry(3, 3, 0, 0, (8,))
    with raises(GeometryError):
        SerialGeometry(3, 3, 0, 0, (1, 1))


def test_geometry_dict_roundtrip() -> None:
    for g in GEOMETRIES:
        assert SerialGeometry.from_dict(g.to_dict()) == g
    assert SerialGeometry(3, 3, 1, 2).nbits == 9


def test_serial_number_validation() -> None:
    g = SerialGeometry(2, 2, 0, 0)
    with raises(SerialNumberError, "shape"):
        SerialNumber(g, np.zeros((2, 3)))
    with raises(SerialNumberError, "0 or 1"):
        SerialNumber(g, np.array([[0, 2], [1, 0]]))
    a = SerialNumber(g, np.array([[0, 1], [1, 0]]))
    assert a.bits.dtype == np.uint8
    assert a == SerialNumber(g, np.array([[0, 1], [1, 0]], dtype=np.int64))
    assert hash(a) == hash(SerialNumber(g, np.array([[0, 1], [1, 0]])))
    assert a != SerialNumber(g, np.array([[1, 1], [1, 0]]))
    assert a != SerialNumber(SerialGeometry(2, 2, 0, 1), a.bits)


# ----------------------------------------------------------------------------------------- product keys


def test_product_key_roundtrip_many_geometries() -> None:
    rng = np.random.default_rng(1234)
    for g in GEOMETRIES:
        for _ in range(20):
            s = random_sn(g, rng)
            key = s.to_product_key()
            assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{1,5}(-[0-9A-HJKMNP-TV-Z]{1,5})*", key), key
            assert all(len(grp) == 5 for grp in key.split("-")[:-1])
            nbytes = 6 + (g.nbits + 7) // 8 + 2
            assert len(strip(key)) == math.ceil(nbytes * 8 / 5)
            back = SerialNumber.from_product_key(key)
            assert back == s
            assert back.geometry == g
            assert np.array_equal(back.bits, s.bits)
            assert SerialNumber.from_product_key(key, expect=g) == s


def test_product_key_all_zero_and_all_one_bits() -> None:
    for g in GEOMETRIES:
        for v in (0, 1):
            s = SerialNumber(g, np.full((g.height, g.width), v))
            assert SerialNumber.from_product_key(s.to_product_key()) == s


def test_product_key_distinct_for_distinct_serials() -> None:
    rng = np.random.default_rng(5)
    g = SerialGeometry(3, 3, 20, 20)
    sns = {SerialNumber(g, rng.integers(0, 2, (3, 3))) for _ in range(50)}
    keys = {s.to_product_key() for s in sns}
    assert len(keys) == len(sns) > 30
    assert {SerialNumber.from_product_key(k) for k in keys} == sns


def test_parse_is_case_insensitive_and_ignores_separators() -> None:
    rng = np.random.default_rng(7)
    for g in GEOMETRIES:
        s = random_sn(g, rng)
        key = s.to_product_key()
        assert SerialNumber.from_product_key(key.lower()) == s
        flat = strip(key)
        assert SerialNumber.from_product_key(flat) == s
        # Spaces and hyphens anywhere, including leading/trailing and repeated.
        messy = ""
        for ch in flat:
            messy += ch + str(rng.choice(["", "", " ", "-", "  ", "--", " - "]))
        assert SerialNumber.from_product_key("  " + messy + "\t") == s
        mixed = "".join(c.lower() if rng.random() < 0.5 else c for c in messy)
        assert SerialNumber.from_product_key(mixed) == s


def test_parse_reads_o_as_zero_and_i_l_as_one() -> None:
    rng = np.random.default_rng(11)
    exercised_zero = exercised_one = 0
    for _ in range(30):
        for g in GEOMETRIES:
            s = random_sn(g, rng)
            key = s.to_product_key()
            if "0" in key:
                exercised_zero += 1
                assert SerialNumber.from_product_key(key.replace("0", "O")) == s
                assert SerialNumber.from_product_key(key.replace("0", "o")) == s
            if "1" in key:
                exercised_one += 1
                assert SerialNumber.from_product_key(key.replace("1", "I")) == s
                assert SerialNumber.from_product_key(key.replace("1", "l")) == s
                assert SerialNumber.from_product_key(key.replace("1", "L")) == s
    # The header always starts with the version byte 1 (0000 0001 ...): the first character is "0".
    assert exercised_zero == 30 * len(GEOMETRIES)
    assert exercised_one > 50


def test_reject_empty_key() -> None:
    for key in ("", "   ", "- -"):
        with raises(SerialNumberError):
            SerialNumber.from_product_key(key)
    with raises(SerialNumberError, "empty"):
        SerialNumber.from_product_key("")


def test_reject_wrong_length() -> None:
    rng = np.random.default_rng(3)
    for g in GEOMETRIES:
        flat = strip(random_sn(g, rng).to_product_key())
        for pos in (0, len(flat) // 2, len(flat) - 1):
            with raises(SerialNumberError):
                SerialNumber.from_product_key(flat[:pos] + flat[pos + 1 :])
            for extra in ("0", "Z"):
                with raises(SerialNumberError):
                    SerialNumber.from_product_key(flat[:pos] + extra + flat[pos:])
        # Removing or adding at the end keeps the header intact: the message names the length problem.
        with raises(SerialNumberError, "missing or extra|incomplete"):  # 1x1 keys are the shortest possible
            SerialNumber.from_product_key(flat[:-1])
        with raises(SerialNumberError, "missing or extra"):
            SerialNumber.from_product_key(flat + "0")


def test_reject_too_short_key() -> None:
    with raises(SerialNumberError, "incomplete"):
        SerialNumber.from_product_key("0G3K2")


@pytest.mark.parametrize("bad", ["U", "u", "*", "!", "é", "_"])
def test_reject_forbidden_character(sn: SerialNumber, bad: str) -> None:
    flat = strip(sn.to_product_key())
    key = flat[:4] + bad + flat[5:]
    with raises(SerialNumberError, "not allowed") as excinfo:
        SerialNumber.from_product_key(key)
    assert "position 5" in str(excinfo.value)


def test_reject_single_character_typos() -> None:
    """Every substitution of one character by another valid one is caught (checksum of 16 bits)."""
    rng = np.random.default_rng(99)
    tried = passed = 0
    for g in (SerialGeometry(3, 3, 20, 20), SerialGeometry(8, 8, 0, 0, (1,)), SerialGeometry(16, 16, 4, 4)):
        s = random_sn(g, rng)
        flat = strip(s.to_product_key())
        positions = sorted({0, 1, 5, 9, len(flat) // 2, len(flat) - 3, len(flat) - 2, len(flat) - 1})
        for pos in positions:
            for c in ALPHABET:
                if c == flat[pos]:
                    continue
                tried += 1
                typo = flat[:pos] + c + flat[pos + 1 :]
                try:
                    parsed = SerialNumber.from_product_key(typo)
                except SerialNumberError as e:
                    assert "\n" not in str(e)
                    continue
                passed += 1
                assert parsed != s  # a typo that slips through must at least not be silently equal
    assert tried > 500
    assert passed <= 2, f"{passed} of {tried} single-character typos were accepted"


def test_typo_in_bits_mentions_checksum(sn: SerialNumber) -> None:
    flat = strip(sn.to_product_key())
    pos = 11  # inside the bit payload (header = 6 bytes = 9.6 characters)
    c = "7" if flat[pos] != "7" else "8"
    with raises(SerialNumberError, "checksum"):
        SerialNumber.from_product_key(flat[:pos] + c + flat[pos + 1 :])


def test_reject_wrong_geometry_via_expect(sn: SerialNumber) -> None:
    key = sn.to_product_key()
    for other in (
        SerialGeometry(4, 4, 2, 4),
        SerialGeometry(4, 4, 3, 3),
        SerialGeometry(3, 3, 2, 3),
        SerialGeometry(4, 4, 2, 3, (0,)),
    ):
        with raises(SerialNumberError, "model expects") as excinfo:
            SerialNumber.from_product_key(key, expect=other)
        assert other.describe() in str(excinfo.value)
        assert sn.geometry.describe() in str(excinfo.value)
    assert SerialNumber.from_product_key(key, expect=SerialGeometry(4, 4, 2, 3)) == sn


def test_reject_non_string() -> None:
    with raises(SerialNumberError):
        SerialNumber.from_product_key(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- derivation


@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 2), (3, 3), (4, 4), (5, 3), (8, 8), (16, 16)])
def test_from_signature_deterministic_and_balanced(hw: tuple[int, int]) -> None:
    g = SerialGeometry(hw[0], hw[1], 0, 0)
    n = g.nbits
    for i in range(10):
        sig = bytes([i]) * 64
        a = SerialNumber.from_signature(sig, g)
        assert a == SerialNumber.from_signature(sig, g)
        assert a.geometry == g and a.bits.shape == hw
        w = int(a.bits.sum())
        if n >= 3:
            assert n / 3 <= w <= 2 * n / 3, (hw, w)
        else:
            assert w >= 1
    # Different signatures give (almost always) different serial numbers on a large geometry.
    if n >= 16:
        assert len({SerialNumber.from_signature(bytes([i]) * 64, g) for i in range(10)}) == 10


def test_from_signature_depends_on_signature_not_position() -> None:
    sig = b"\x42" * 64
    a = SerialNumber.from_signature(sig, SerialGeometry(4, 4, 0, 0))
    b = SerialNumber.from_signature(sig, SerialGeometry(4, 4, 5, 5))
    assert np.array_equal(a.bits, b.bits)
    c = SerialNumber.from_signature(b"\x43" * 64, SerialGeometry(4, 4, 0, 0))
    assert not np.array_equal(a.bits, c.bits)


# -------------------------------------------------------------------------------------------------- stamp


def _reference_stamp(x: torch.Tensor, g: SerialGeometry, bits: np.ndarray, lo: float, hi: float) -> torch.Tensor:
    """Eq. 7, pixel by pixel: per-sample bits of shape (N, h, w)."""
    out = x.clone()
    chans = g.channels or range(x.shape[1])
    for n in range(x.shape[0]):
        for c in chans:
            for i in range(g.height):
                for j in range(g.width):
                    out[n, c, g.top + i, g.left + j] = hi if bits[n, i, j] else lo
    return out


def test_stamp_is_eq7() -> None:
    g = SerialGeometry(3, 3, 20, 20)
    bits = bits_from_strings(["101", "010", "110"])
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1  # never exactly 0/1
    x_before = x.clone()
    out = stamp(x, g, bits)
    assert torch.equal(x, x_before), "stamp modified its input"
    assert out.shape == x.shape and out.dtype == x.dtype
    region = out[:, 0, 20:23, 20:23]
    assert torch.equal(region, torch.from_numpy(bits).float().expand(5, 3, 3))
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[20:23, 20:23] = True
    assert torch.equal(out[:, :, ~mask], x[:, :, ~mask])
    assert torch.equal(out, _reference_stamp(x, g, np.broadcast_to(bits, (5, 3, 3)), 0.0, 1.0))


def test_stamp_accepts_tensor_bits_and_all_channels() -> None:
    g = SerialGeometry(2, 3, 0, 5)
    bits = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    x = torch.full((2, 3, 8, 8), 0.5)
    out = stamp(x, g, bits)
    for c in range(3):
        assert torch.equal(out[:, c, 0:2, 5:8], bits.expand(2, 2, 3))
    assert (out[:, :, 2:, :] == 0.5).all() and (out[:, :, :, :5] == 0.5).all()


def test_stamp_per_sample_bits() -> None:
    rng = np.random.default_rng(0)
    g = SerialGeometry(4, 4, 1, 2)
    bits = rng.integers(0, 2, size=(6, 4, 4))
    x = torch.rand(6, 2, 10, 10, generator=torch.Generator().manual_seed(1))
    out = stamp(x, g, torch.from_numpy(bits))
    assert torch.equal(out, _reference_stamp(x, g, bits, 0.0, 1.0))
    for n in range(6):
        assert torch.equal(out[n, :, 1:5, 2:6], torch.from_numpy(bits[n]).float().expand(2, 4, 4))


def test_stamp_channel_subset() -> None:
    g = SerialGeometry(3, 3, 4, 4, (0, 2))
    bits = bits_from_strings(["111", "000", "101"])
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    out = stamp(x, g, bits)
    assert torch.equal(out[:, 1], x[:, 1]), "channel 1 is not in the geometry and must be untouched"
    for c in (0, 2):
        assert torch.equal(out[:, c, 4:7, 4:7], torch.from_numpy(bits).float().expand(3, 3, 3))
    assert torch.equal(out, _reference_stamp(x, g, np.broadcast_to(bits, (3, 3, 3)), 0.0, 1.0))


def test_stamp_null_embedding_filter_values() -> None:
    g = SerialGeometry(2, 2, 0, 0, (1,))
    bits = bits_from_strings(["10", "01"])
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    out = stamp(x, g, bits, values=(-2000.0, 2000.0))
    expected = torch.tensor([[2000.0, -2000.0], [-2000.0, 2000.0]])
    assert torch.equal(out[:, 1, :2, :2], expected.expand(2, 2, 2))
    assert out.abs().max() == 2000.0  # not clamped to [0, 1]
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 2], x[:, 2])
    assert torch.equal(out, _reference_stamp(x, g, np.broadcast_to(bits, (2, 2, 2)), -2000.0, 2000.0))


def test_stamp_geometry_does_not_fit() -> None:
    x = torch.zeros(2, 1, 28, 28)
    bits = np.ones((3, 3))
    with raises(GeometryError, "does not fit"):
        stamp(x, SerialGeometry(3, 3, 26, 0), bits)
    with raises(GeometryError, "does not fit"):
        stamp(x, SerialGeometry(3, 3, 0, 26), bits)
    with raises(GeometryError, "channels"):
        stamp(x, SerialGeometry(3, 3, 0, 0, (1,)), bits)
    stamp(x, SerialGeometry(3, 3, 25, 25), bits)  # the last position that fits


def test_stamp_rejects_bad_shapes() -> None:
    g = SerialGeometry(3, 3, 0, 0)
    with raises(GeometryError):
        stamp(torch.zeros(1, 28, 28), g, np.ones((3, 3)))
    with raises(GeometryError):
        stamp(torch.zeros(2, 1, 8, 8), g, np.ones((2, 3)))
    with raises(GeometryError):
        stamp(torch.zeros(2, 1, 8, 8), g, np.ones((3, 3, 3)))  # 3 patterns for 2 samples


def test_stamp_many_equals_stacked_stamps() -> None:
    rng = np.random.default_rng(4)
    g = SerialGeometry(3, 3, 2, 2, (0,))
    keys = torch.from_numpy(rng.integers(0, 2, size=(4, 3, 3)).astype(np.float32))
    x = torch.rand(5, 2, 9, 9, generator=torch.Generator().manual_seed(5))
    out = stamp_many(x, g, keys)
    assert out.shape == (20, 2, 9, 9)
    expected = torch.cat([stamp(x, g, k) for k in keys])
    assert torch.equal(out, expected)
    # key-major: rows k*N .. (k+1)*N - 1 carry key k
    assert torch.equal(out[5:10, 0, 2:5, 2:5], keys[1].expand(5, 3, 3))


# --------------------------------------------------------------------------------------------- wrong keys


def _codes(t: torch.Tensor) -> set[bytes]:
    return {r.to(torch.uint8).numpy().tobytes() for r in t.reshape(len(t), -1)}


def test_random_wrong_excludes_key_and_is_distinct(sn: SerialNumber) -> None:
    wrong = sn.random_wrong(200, np.random.default_rng(0))
    assert wrong.shape == (200, 4, 4) and wrong.dtype == torch.float32
    assert set(wrong.unique().tolist()) <= {0.0, 1.0}
    codes = _codes(wrong)
    assert len(codes) == 200
    assert sn.bits.reshape(-1).tobytes() not in codes
    # Seeded: the same generator state gives the same keys.
    assert torch.equal(wrong, sn.random_wrong(200, np.random.default_rng(0)))


def test_random_wrong_returns_all_when_few_exist() -> None:
    rng = np.random.default_rng(0)
    for hw in [(1, 1), (1, 2), (2, 2), (1, 3), (2, 3)]:
        g = SerialGeometry(hw[0], hw[1], 0, 0)
        nbits = g.nbits
        for _ in range(3):
            s = random_sn(g, rng)
            for n in (2**nbits - 1, 2**nbits + 10):
                wrong = s.random_wrong(n, rng)
                assert wrong.shape == (2**nbits - 1, *hw)
                codes = _codes(wrong)
                assert len(codes) == 2**nbits - 1
                assert s.bits.astype(np.uint8).reshape(-1).tobytes() not in codes


def test_random_wrong_exhausts_almost_full_space() -> None:
    """Asking for nearly every wrong pattern still terminates with distinct, non-key rows."""
    s = SerialNumber(SerialGeometry(2, 2, 0, 0), bits_from_strings(["10", "01"]))
    wrong = s.random_wrong(14, np.random.default_rng(1))
    assert wrong.shape == (14, 2, 2)
    codes = _codes(wrong)
    assert len(codes) == 14 and s.bits.reshape(-1).tobytes() not in codes


@pytest.mark.parametrize("distance", [1, 2])
@pytest.mark.parametrize("hw", [(1, 2), (2, 2), (3, 3), (4, 5)])
def test_hamming_neighbours(distance: int, hw: tuple[int, int]) -> None:
    g = SerialGeometry(hw[0], hw[1], 0, 0)
    s = random_sn(g, np.random.default_rng(hw[0] * 10 + hw[1]))
    nb = s.hamming_neighbours(distance)
    n = g.nbits
    assert nb.shape == (math.comb(n, distance), *hw)
    own = torch.from_numpy(s.bits.astype(np.float32))
    dist = (nb != own).reshape(len(nb), -1).sum(1)
    assert (dist == distance).all()
    assert len(_codes(nb)) == math.comb(n, distance)
    before = s.bits.copy()
    s.hamming_neighbours(distance)
    assert np.array_equal(s.bits, before), "hamming_neighbours modified the serial number"


def test_as_tensor(sn: SerialNumber) -> None:
    t = sn.as_tensor()
    assert t.dtype == torch.float32 and t.shape == (4, 4)
    assert np.array_equal(t.numpy(), sn.bits)


# ------------------------------------------------------------------------------------------------ scaling
@pytest.mark.parametrize(("side", "scale"), [(28, 1), (32, 1), (48, 1), (95, 1), (96, 2), (224, 4), (512, 10)])
def test_scale_for_meets_the_papers_sizes(side: int, scale: int) -> None:
    # null embedding §9: 6x6 at 32-48 pixels, 24x24 pixels (6 bits x 4) at ImageNet's 224
    assert scale_for((3, side, side)) == scale


def test_scaled_stamp_covers_scale_squared_pixels_per_bit() -> None:
    g = SerialGeometry(2, 3, 4, 5, scale=3)
    assert (g.pixel_height, g.pixel_width) == (6, 9)
    bits = bits_from_strings(["101", "010"])
    x = torch.full((2, 3, 16, 16), 0.5)
    out = stamp(x, g, bits)
    rows, cols = g.region()
    want = torch.from_numpy(bits).float().repeat_interleave(3, 0).repeat_interleave(3, 1)
    for c in range(3):
        assert torch.equal(out[0, c, rows, cols], want)
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[rows, cols] = False
    assert torch.equal(out[:, :, mask], x[:, :, mask])  # nothing outside the scaled pattern changes


def test_scaled_geometry_must_fit_in_pixels() -> None:
    g = SerialGeometry(6, 6, 10, 10, scale=4)  # 24x24 pixels from (10, 10)
    g.check_fits((3, 34, 34))
    with raises(GeometryError, match="24x24-pixel"):
        g.check_fits((3, 33, 40))
    with raises(GeometryError, match="scale"):
        SerialGeometry(6, 6, 0, 0, scale=0)


def test_scaled_product_key_roundtrips_and_unscaled_keys_stay_version_1() -> None:
    rng = np.random.default_rng(0)
    plain = random_sn(SerialGeometry(6, 6, 20, 20), rng)
    scaled = SerialNumber(SerialGeometry(6, 6, 190, 190, scale=4), plain.bits)
    assert SerialNumber.from_product_key(scaled.to_product_key()) == scaled
    assert SerialNumber.from_product_key(plain.to_product_key()) == plain
    assert plain.to_product_key()[:2] != scaled.to_product_key()[:2]  # the version byte differs
    assert "scale" not in plain.geometry.to_dict()  # scale-1 manifests read exactly as before
    assert SerialGeometry.from_dict(scaled.geometry.to_dict()) == scaled.geometry
    with raises(SerialNumberError, match="expects"):
        SerialNumber.from_product_key(scaled.to_product_key(), expect=plain.geometry)
    key = strip(scaled.to_product_key())
    typo = key[:-3] + ("0" if key[-3] != "0" else "1") + key[-2:]
    with raises(SerialNumberError, match="checksum"):
        SerialNumber.from_product_key(typo)


# ----- guard frame ---------------------------------------------------------------------------------
def test_guard_frame_is_stamped_around_the_key_and_travels_in_the_product_key() -> None:
    import numpy as np
    import torch

    from deepserial.serial import SerialGeometry, SerialNumber, stamp

    g = SerialGeometry(3, 4, 5, 6, guard=1)
    sn = SerialNumber(g, np.random.default_rng(1).integers(0, 2, (3, 4)))
    x = torch.full((2, 1, 16, 16), 0.5)
    out = stamp(x, g, sn.as_tensor())
    rows, cols = g.region()
    assert torch.equal(out[0, 0, rows, cols], sn.as_tensor())
    frame, mask = g.frame()
    fr, fc = g.framed_region()
    assert torch.equal(out[0, 0, fr, fc][mask], frame[mask])  # the fixed checkerboard
    assert set(out[0, 0, fr, fc][mask].tolist()) == {0.0, 1.0}
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[fr, fc] = False
    assert bool((out[0, 0][outside] == 0.5).all())  # nothing else touched
    key = sn.to_product_key()
    assert SerialNumber.from_product_key(key) == sn and SerialNumber.from_product_key(key).geometry.guard == 1
    assert SerialGeometry.from_dict(g.to_dict()) == g and "guard" not in SerialGeometry(3, 4, 5, 6).to_dict()


def test_guard_frame_must_fit() -> None:
    import pytest

    from deepserial.errors import GeometryError
    from deepserial.serial import SerialGeometry

    with pytest.raises(GeometryError, match="guard frame"):
        SerialGeometry(3, 3, 0, 5, guard=1)
    with pytest.raises(GeometryError, match="does not fit"):
        SerialGeometry(3, 3, 13, 5, guard=1).check_fits((1, 16, 16))


def test_stamp_writes_into_what_the_geometry_prepares() -> None:
    """``SerialGeometry.prepare`` is the hook a key-dependent input uses (research prototypes): stamp
    writes the pattern into its output, and the shipped geometry leaves the input as it was."""

    @dataclass(frozen=True)
    class Flipped(SerialGeometry):
        def prepare(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
            return x.flip(-1) if bool(bits.flatten()[0] > 0.5) else x.clone()

    x = torch.rand(2, 1, 8, 8)
    plain, flipped = SerialGeometry(2, 2, 0, 0), Flipped(2, 2, 0, 0)
    one = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a, b = stamp(x, plain, one), stamp(x, flipped, one)
    assert torch.equal(a[:, :, 2:], x[:, :, 2:]) and torch.equal(b[:, :, 2:], x.flip(-1)[:, :, 2:])
    assert torch.equal(a[:, 0, :2, :2], one.expand(2, -1, -1)) and torch.equal(b[:, 0, :2, :2], a[:, 0, :2, :2])
    assert torch.equal(stamp(x, flipped, 1 - one)[:, :, 2:], x[:, :, 2:])


# ----- amplitude -----------------------------------------------------------------------------------
def test_amplified_bits_are_written_as_minus_and_plus_a_and_travel_in_the_product_key() -> None:
    g = SerialGeometry(3, 4, 5, 6, guard=1, amplitude=6)
    sn = SerialNumber(g, np.random.default_rng(2).integers(0, 2, (3, 4)))
    x = torch.full((2, 1, 16, 16), 0.5)
    out = stamp(x, g, sn.as_tensor())
    rows, cols = g.region()
    assert torch.equal(out[0, 0, rows, cols], 12.0 * sn.as_tensor() - 6.0)
    frame, mask = g.frame()
    fr, fc = g.framed_region()
    assert set(out[0, 0, fr, fc][mask].tolist()) == {-6.0, 6.0}  # the frame at the same levels
    assert torch.equal(g.pixels(torch.tensor([[0.25]])), torch.tensor([[-3.0]]))  # a relaxed bit: A (2p - 1)
    assert stamp(x, g, sn.as_tensor(), values=(-0.5, 0.5))[0, 0, rows, cols].abs().max() == 0.5  # explicit wins
    key = sn.to_product_key()
    back = SerialNumber.from_product_key(key)
    assert back == sn and back.geometry.amplitude == 6 and "-6/+6" in back.geometry.describe()
    plain = SerialNumber(SerialGeometry(3, 4, 5, 6, guard=1), sn.bits)
    assert plain.to_product_key()[:2] != key[:2]  # version 4 only when the bits are amplified
    with raises(match="expects"):
        SerialNumber.from_product_key(key, expect=plain.geometry)
    assert SerialGeometry.from_dict(g.to_dict()) == g and "amplitude" not in plain.geometry.to_dict()
    with raises(GeometryError, match="amplitude"):
        SerialGeometry(3, 3, 0, 0, amplitude=17)
    big = SerialNumber(SerialGeometry(5, 7, 8, 12, scale=2, guard=1, amplitude=16), np.ones((5, 7), np.uint8))
    assert SerialNumber.from_product_key(big.to_product_key()) == big


def test_a_product_key_with_an_impossible_amplitude_is_refused() -> None:
    import hashlib

    from deepserial.serial import _CHECK, _VERSION_AMPLIFIED, _b32encode

    payload = bytes([_VERSION_AMPLIFIED, 2, 2, 0, 0, 0, 1, 0, 99]) + bytes([0b10100000])
    key = _b32encode(payload + hashlib.sha256(payload).digest()[:_CHECK])
    with raises(match="invalid geometry"):
        SerialNumber.from_product_key(key)
