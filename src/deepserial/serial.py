"""Serial numbers (SN): a 0/1 bit pattern stamped at a position of the input (DSN, Tang et al., Eq. 7).

The stamp, the scaling rule and the derivation from a signature are written out in
docs/specification.md, section 2.

A :class:`SerialNumber` is its bits plus a :class:`SerialGeometry` (height, width, position and the
channels it covers). It can be

- derived from an owner's signature (:meth:`SerialNumber.from_signature`), so that the owner can
  always show where a serial number came from;
- stamped on a batch (:func:`stamp`): Eq. 7 sets pixels under 1 bits to 1 and under 0 bits to 0 and
  leaves every other pixel as it was; the null-embedding "filter" is the same operation with
  ``values=(-lam, +lam)``;
- written as a product key a person types (:meth:`SerialNumber.to_product_key`), and parsed back
  exactly, with one-line errors for a wrong length, character, checksum or geometry;
- surrounded by the wrong keys an evaluation needs: random ones and all Hamming-1/2 neighbours.

Product key format (decided here; the paper has none): the bytes ``version, h, w, top, left,
channel mask`` (version 2 adds ``scale``, the pixels per bit side, for patterns up-scaled to large
inputs; a scale-1 key stays version 1, so every key issued before scaling existed still parses) then
the bits packed MSB-first, then the first two bytes of SHA-256 of all that as a
checksum; encoded in Crockford base32 (digits and letters without I, L, O, U, case-insensitive,
O read as 0 and I/L as 1) in hyphen-separated groups of five. A typo is caught by the checksum with
probability 1 - 2^-16 instead of silently running the model with a wrong key.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepserial.errors import GeometryError, SerialNumberError
from deepserial.identity import derive

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
_DECODE = {c: i for i, c in enumerate(_ALPHABET)} | {"O": 0, "I": 1, "L": 1}
_VERSION = 1
_VERSION_SCALED = 2
_VERSION_GUARDED = 3  # scale and guard bytes
_VERSION_AMPLIFIED = 4  # scale, guard and amplitude bytes
_HEADER = 6
_HEADERS = {
    _VERSION: _HEADER,
    _VERSION_SCALED: _HEADER + 1,
    _VERSION_GUARDED: _HEADER + 2,
    _VERSION_AMPLIFIED: _HEADER + 3,
}
#: The largest bit amplitude a geometry may write (``SerialGeometry.amplitude``).
MAX_AMPLITUDE = 16
_CHECK = 2
_GROUP = 5


def bit_levels(amplitude: int) -> tuple[float, float]:
    """The pixel values a 0 bit and a 1 bit are written as: 0 and 1, or -A and +A at amplitude A."""
    return (0.0, 1.0) if not amplitude else (-float(amplitude), float(amplitude))


@dataclass(frozen=True)
class SerialGeometry:
    """Where and how big a serial number is: ``height x width`` bits with its top-left pixel at
    ``(top, left)``, on the listed channels (empty tuple = every channel, the default).

    ``scale`` is the side, in pixels, of the square each bit covers (default 1). DSN §3.2: "SN bit
    patterns would up-scale proportionally when deploying DNN systems to target high-resolution
    images"; a scaled pattern keeps its bits (and so its product key and every false-positive
    analysis) and grows in pixels (:func:`scale_for`).

    ``guard`` is the width, in bits, of a fixed public frame stamped around the pattern (a checkerboard
    of 0 and 1; default 0, no frame). Without it the pattern's border bits share a convolution's
    receptive field with image content, and a key one border bit away from the true one still half
    unlocks a small model; with it every key bit has stamped neighbours only. The frame is public: it
    adds no secret, and ``(top, left)`` stays the position of the key bits themselves.

    ``amplitude`` is how loudly the bits are written: 0 (the default, DSN's Eq. 7) writes them as 0 and 1,
    like image pixels; ``A`` >= 1 writes them as ``-A`` and ``+A`` (a relaxed bit ``p`` as ``A (2p - 1)``),
    the frame likewise. A one-bit flip then moves the input by ``2A`` instead of 1, so a small network
    can tell a key one bit off from the true one: on mnist5k the keys one bit off fall from 44-46% to
    at most 18-20%, but gradient reverse engineering recovered the exact key of one customer model, so the
    default recipe keeps 0/1 (docs/decisions.md, the DSN lock, item 15). The amplitude is public, like the
    position.
    """

    height: int
    width: int
    top: int
    left: int
    channels: tuple[int, ...] = ()
    scale: int = 1
    guard: int = 0
    amplitude: int = 0

    def prepare(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """The inputs (a copy) a pattern is written into: unchanged here; a research geometry may make
        them depend on the key (``benchmarks/dsn_lock_research.py``)."""
        return x.clone()

    def __post_init__(self) -> None:
        if not (1 <= self.height <= 255 and 1 <= self.width <= 255):
            raise GeometryError(f"serial number size {self.height}x{self.width} must be 1..255 on each side")
        if not (0 <= self.top <= 255 and 0 <= self.left <= 255):
            raise GeometryError(f"serial number position ({self.top},{self.left}) must be 0..255")
        if any(not 0 <= c < 8 for c in self.channels) or len(set(self.channels)) != len(self.channels):
            raise GeometryError(f"channels {self.channels} must be distinct indices 0..7 (empty = all)")
        if not 1 <= self.scale <= 32:
            raise GeometryError(f"serial number scale {self.scale} must be 1..32 pixels per bit side")
        if not 0 <= self.guard <= 4:
            raise GeometryError(f"serial number guard frame {self.guard} must be 0..4 bits wide")
        if not 0 <= self.amplitude <= MAX_AMPLITUDE:
            raise GeometryError(f"serial number amplitude {self.amplitude} must be 0..{MAX_AMPLITUDE} (0: bits as 0/1)")
        if self.guard and (self.top < self.guard * self.scale or self.left < self.guard * self.scale):
            raise GeometryError(
                f"a {self.guard}-bit guard frame does not fit above or left of a serial number at "
                f"({self.top},{self.left}); move it inside"
            )

    @property
    def nbits(self) -> int:
        return self.height * self.width

    @property
    def levels(self) -> tuple[float, float]:
        """The pixel values of a 0 bit and a 1 bit."""
        return bit_levels(self.amplitude)

    def pixels(self, bits: torch.Tensor) -> torch.Tensor:
        """Bits (..., h, w), 0/1 or relaxed in [0, 1], as the pixel values a stamp writes (..., h * scale,
        w * scale)."""
        lo, hi = self.levels
        return self.upsample(lo + (hi - lo) * bits)

    @property
    def pixel_height(self) -> int:
        return self.height * self.scale

    @property
    def pixel_width(self) -> int:
        return self.width * self.scale

    def region(self) -> tuple[slice, slice]:
        """The (rows, columns) of the input the pattern covers, in pixels."""
        return slice(self.top, self.top + self.pixel_height), slice(self.left, self.left + self.pixel_width)

    def framed_region(self) -> tuple[slice, slice]:
        """The (rows, columns) the pattern and its guard frame cover, in pixels."""
        pad = self.guard * self.scale
        return (
            slice(self.top - pad, self.top + self.pixel_height + pad),
            slice(self.left - pad, self.left + self.pixel_width + pad),
        )

    def frame(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The guard frame as pixels over :meth:`framed_region`: (values in {0, 1}, mask of frame pixels)."""
        gh, gw = self.height + 2 * self.guard, self.width + 2 * self.guard
        rows = torch.arange(gh).unsqueeze(1)
        cols = torch.arange(gw).unsqueeze(0)
        values = ((rows + cols) % 2).float()
        mask = torch.ones(gh, gw, dtype=torch.bool)
        mask[self.guard : self.guard + self.height, self.guard : self.guard + self.width] = False
        return self.upsample(values), self.upsample(mask)

    def upsample(self, bits: torch.Tensor) -> torch.Tensor:
        """Bits (..., h, w) as the pixels they cover (..., h * scale, w * scale)."""
        if self.scale == 1:
            return bits
        return bits.repeat_interleave(self.scale, dim=-2).repeat_interleave(self.scale, dim=-1)

    def check_fits(self, input_shape: Sequence[int]) -> None:
        """Raise unless the pattern lies inside an input of shape (C, H, W)."""
        c, h, w = input_shape
        pad = self.guard * self.scale
        if self.top + self.pixel_height + pad > h or self.left + self.pixel_width + pad > w:
            raise GeometryError(
                f"a {self.pixel_height}x{self.pixel_width}-pixel serial number at ({self.top},{self.left}) does "
                f"not fit a {h}x{w} input; choose a smaller size or another position"
            )
        if any(ch >= c for ch in self.channels):
            raise GeometryError(f"serial number channels {self.channels} do not exist in a {c}-channel input")

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "height": self.height,
            "width": self.width,
            "top": self.top,
            "left": self.left,
            "channels": list(self.channels),
        }
        if self.scale != 1:  # scale-1 geometries read and hash exactly as before scaling existed
            d["scale"] = self.scale
        if self.guard:  # likewise for geometries without a guard frame
            d["guard"] = self.guard
        if self.amplitude:  # and for those that write bits as 0/1
            d["amplitude"] = self.amplitude
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SerialGeometry:
        return cls(
            int(d["height"]),
            int(d["width"]),
            int(d["top"]),
            int(d["left"]),
            tuple(int(c) for c in d.get("channels", ())),
            int(d.get("scale", 1)),
            int(d.get("guard", 0)),
            int(d.get("amplitude", 0)),
        )

    def describe(self) -> str:
        ch = "all channels" if not self.channels else f"channels {list(self.channels)}"
        px = f" (each bit {self.scale}x{self.scale} pixels)" if self.scale != 1 else ""
        frame = f" in a {self.guard}-bit guard frame" if self.guard else ""
        amp = f", bits written as -{self.amplitude}/+{self.amplitude}" if self.amplitude else ""
        return f"{self.height}x{self.width}{px}{frame} at ({self.top},{self.left}), {ch}{amp}"


def scale_for(input_shape: Sequence[int]) -> int:
    """Pixels per bit side for an input of shape (C, H, W): ``max(1, min(H, W) // 48)``.

    The rule is chosen to meet both sizes the papers give: a 6x6 pattern at 32-48 pixels (null
    embedding §9, as on MNIST's 28) and 24x24 pixels at ImageNet's 224 (6 bits x 4), i.e. the pattern
    grows in proportion to the input (DSN §3.2).
    """
    _, h, w = (int(s) for s in input_shape)
    return max(1, min(h, w) // 48)


@dataclass(frozen=True)
class SerialNumber:
    """A serial number: its geometry and its bits (a ``height x width`` array of 0/1)."""

    geometry: SerialGeometry
    bits: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        b = np.asarray(self.bits)
        if b.shape != (self.geometry.height, self.geometry.width):
            raise SerialNumberError(
                f"serial number bits have shape {b.shape}, expected {(self.geometry.height, self.geometry.width)}"
            )
        if not np.isin(b, (0, 1)).all():
            raise SerialNumberError("serial number bits must be 0 or 1")
        object.__setattr__(self, "bits", b.astype(np.uint8))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SerialNumber)
            and self.geometry == other.geometry
            and bool(np.array_equal(self.bits, other.bits))
        )

    def __hash__(self) -> int:
        return hash((self.geometry, self.bits.tobytes()))

    # ----- derivation ------------------------------------------------------------------------------
    @classmethod
    def from_signature(cls, signature: bytes, geometry: SerialGeometry) -> SerialNumber:
        """The serial number an owner's signature determines for this geometry.

        Patterns whose share of 1 bits lies outside [1/3, 2/3] are skipped (the next candidate is
        derived with a counter): on inputs with a dark or bright background a pattern of almost all
        0s or all 1s is nearly the raw input itself, i.e. a serial number a few bits away from "no
        serial number at all".
        """
        n = geometry.nbits
        lo, hi = math.ceil(n / 3), math.floor(2 * n / 3)
        if lo > hi:  # 1 or 2 bits: no balanced pattern exists; take any nonzero one
            lo, hi = 1, n
        for attempt in range(10_000):
            raw = derive(signature, f"serial-number/bits/{attempt}", (n + 7) // 8)
            bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n]
            if lo <= int(bits.sum()) <= hi:
                return cls(geometry, bits.reshape(geometry.height, geometry.width))
        raise SerialNumberError("could not derive a balanced serial number")  # pragma: no cover

    # ----- product key -----------------------------------------------------------------------------
    def to_product_key(self) -> str:
        """The grouped base32 form a customer types, e.g. ``0G3K2-8M0Q1-...``."""
        g = self.geometry
        mask = sum(1 << c for c in g.channels)
        payload = bytes([_VERSION, g.height, g.width, g.top, g.left, mask])
        if g.amplitude:
            payload = bytes([_VERSION_AMPLIFIED]) + payload[1:] + bytes([g.scale, g.guard, g.amplitude])
        elif g.guard:
            payload = bytes([_VERSION_GUARDED]) + payload[1:] + bytes([g.scale, g.guard])
        elif g.scale != 1:
            payload = bytes([_VERSION_SCALED]) + payload[1:] + bytes([g.scale])
        payload += np.packbits(self.bits.reshape(-1)).tobytes()
        payload += hashlib.sha256(payload).digest()[:_CHECK]
        chars = _b32encode(payload)
        return "-".join(chars[i : i + _GROUP] for i in range(0, len(chars), _GROUP))

    @classmethod
    def from_product_key(cls, key: str, expect: SerialGeometry | None = None) -> SerialNumber:
        """Parse a product key; with ``expect``, also refuse a key made for another geometry."""
        if not isinstance(key, str) or not key.strip():
            raise SerialNumberError("empty product key; type the key you were given, e.g. 0G3K2-8M0Q1-...")
        chars = re.sub(r"[\s\-]", "", key).upper()
        for i, ch in enumerate(chars):
            if ch not in _DECODE:
                raise SerialNumberError(
                    f"product key character {ch!r} at position {i + 1} is not allowed "
                    "(allowed: digits and letters except I, L, O, U); check for a typo"
                )
        min_chars = math.ceil((_HEADER + 1 + _CHECK) * 8 / 5)
        if len(chars) < min_chars:
            raise SerialNumberError(
                f"product key has {len(chars)} characters, at least {min_chars} expected; it is incomplete"
            )
        version = _b32decode(chars[:2])[0]
        if version not in _HEADERS:
            raise SerialNumberError(
                f"product key version {version} is not supported (this is v1-v{_VERSION_AMPLIFIED})"
            )
        header = _HEADERS[version]
        head = _b32decode(chars[: math.ceil(header * 8 / 5)])[:header]
        _, h, w, top, left, mask = head[:6]
        scale = head[6] if version >= _VERSION_SCALED else 1
        guard = head[7] if version >= _VERSION_GUARDED else 0
        amplitude = head[8] if version >= _VERSION_AMPLIFIED else 0
        if h == 0 or w == 0:
            raise SerialNumberError("product key is corrupt (zero-sized serial number); check for a typo")
        nbytes = header + (h * w + 7) // 8 + _CHECK
        want = math.ceil(nbytes * 8 / 5)
        if len(chars) != want:
            raise SerialNumberError(
                f"product key has {len(chars)} characters, expected {want} for a {h}x{w} serial number; "
                "a character is missing or extra"
            )
        data = _b32decode(chars)
        if len(data) < nbytes or any(data[nbytes:]) or _pad_bits(chars, nbytes):
            raise SerialNumberError("product key checksum does not match; check for a typo")
        payload, check = data[: nbytes - _CHECK], data[nbytes - _CHECK : nbytes]
        if hashlib.sha256(payload).digest()[:_CHECK] != check:
            raise SerialNumberError("product key checksum does not match; check for a typo")
        channels = tuple(c for c in range(8) if mask >> c & 1)
        try:
            geometry = SerialGeometry(h, w, top, left, channels, scale, guard, amplitude)
        except Exception as e:
            raise SerialNumberError(f"product key encodes an invalid geometry: {e}") from None
        bits = np.unpackbits(np.frombuffer(payload[header:], dtype=np.uint8))[: h * w].reshape(h, w)
        sn = cls(geometry, bits)
        if expect is not None and geometry != expect:
            raise SerialNumberError(
                f"this product key is for a serial number {geometry.describe()}, but the model expects "
                f"{expect.describe()}; use the key issued with this model"
            )
        return sn

    # ----- wrong keys for evaluation ---------------------------------------------------------------
    def as_tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.bits.astype(np.float32))

    def random_wrong(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` distinct random bit patterns other than this one, shape (n, h, w); all of them when
        fewer than ``n`` wrong patterns exist."""
        nbits = self.geometry.nbits
        own = int("".join(map(str, self.bits.reshape(-1))), 2)
        if nbits <= 20 and 2**nbits - 1 <= n:
            codes = np.array([c for c in range(2**nbits) if c != own], dtype=np.int64)
            return _codes_to_bits(codes, self.geometry)
        out: set[bytes] = set()
        rows = []
        own_bytes = self.bits.reshape(-1).tobytes()
        while len(rows) < n:
            cand = rng.integers(0, 2, size=(n, nbits), dtype=np.uint8)
            for r in cand:
                b = r.tobytes()
                if b != own_bytes and b not in out:
                    out.add(b)
                    rows.append(r)
                    if len(rows) == n:
                        break
        return torch.from_numpy(np.stack(rows).astype(np.float32)).view(n, *self.bits.shape)

    def hamming_neighbours(self, distance: int) -> torch.Tensor:
        """Every pattern exactly ``distance`` bits away from this one, shape (K, h, w)."""
        flat = self.bits.reshape(-1)
        combos = list(itertools.combinations(range(flat.size), distance))
        out = np.repeat(flat[None, :], len(combos), axis=0)
        for row, idx in enumerate(combos):
            out[row, list(idx)] ^= 1
        return torch.from_numpy(out.astype(np.float32)).view(len(combos), *self.bits.shape)


def stamp(
    x: torch.Tensor,
    geometry: SerialGeometry,
    bits: torch.Tensor | np.ndarray,
    values: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Eq. 7 of DSN on a batch: a copy of ``x`` (N, C, H, W) with the pattern written in.

    ``bits`` is one pattern (h, w), applied to every sample, or one per sample (N, h, w). Pixels
    under 0 bits become ``values[0]``, under 1 bits ``values[1]``: by default the geometry's
    :attr:`~SerialGeometry.levels`; null embedding uses ``(-lam, lam)``. To stamp K patterns on the
    same N inputs, use :func:`stamp_many`.
    """
    if x.dim() != 4:
        raise GeometryError(f"stamp expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    geometry.check_fits(tuple(x.shape[1:]))
    b = torch.as_tensor(bits, dtype=x.dtype, device=x.device)
    if b.dim() == 2:
        b = b.unsqueeze(0)
    if b.shape[-2:] != (geometry.height, geometry.width) or b.shape[0] not in (1, x.shape[0]):
        raise GeometryError(f"bits of shape {tuple(b.shape)} do not match geometry {geometry.describe()}")
    g = geometry
    lo, hi = values or g.levels
    patch = g.upsample(lo + (hi - lo) * b).unsqueeze(1)  # (N|1, 1, h * scale, w * scale)
    out = write_frame(g.prepare(x, b), g, values)
    rows, cols = g.region()
    if g.channels:
        for c in g.channels:
            out[:, c : c + 1, rows, cols] = patch
    else:
        out[:, :, rows, cols] = patch.expand(-1, x.shape[1], -1, -1)
    return out


def write_frame(x: torch.Tensor, geometry: SerialGeometry, values: tuple[float, float] | None = None) -> torch.Tensor:
    """Write the geometry's guard frame (if any) into ``x`` (N, C, H, W) in place, at ``values`` (by
    default the geometry's levels); returns ``x``."""
    g = geometry
    if not g.guard:
        return x
    frame, mask = g.frame()
    lo, hi = values or g.levels
    pixels = (lo + (hi - lo) * frame).to(x.dtype).to(x.device)
    mask = mask.to(x.device)
    rows, cols = g.framed_region()
    for c in g.channels or range(x.shape[1]):
        x[:, c, rows, cols] = torch.where(mask, pixels, x[:, c, rows, cols])
    return x


def stamp_many(x: torch.Tensor, geometry: SerialGeometry, bits: torch.Tensor) -> torch.Tensor:
    """Stamp each of K patterns (K, h, w) on all N inputs: returns (K * N, C, H, W), key-major."""
    k, n = bits.shape[0], x.shape[0]
    xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
    per_sample = bits.to(x.device).repeat_interleave(n, dim=0)
    return stamp(xs, geometry, per_sample)


def bits_from_strings(rows: Iterable[str]) -> np.ndarray:
    """Bits from rows like ``["101", "010"]``: a helper for tests and configs."""
    return np.array([[int(c) for c in r] for r in rows], dtype=np.uint8)


def _codes_to_bits(codes: np.ndarray, g: SerialGeometry) -> torch.Tensor:
    shifts = np.arange(g.nbits - 1, -1, -1, dtype=np.int64)
    bits = (codes[:, None] >> shifts[None, :]) & 1
    return torch.from_numpy(bits.astype(np.float32)).view(len(codes), g.height, g.width)


def _b32encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    nbits = len(data) * 8
    nchars = math.ceil(nbits / 5)
    n <<= nchars * 5 - nbits
    return "".join(_ALPHABET[(n >> (5 * (nchars - 1 - i))) & 31] for i in range(nchars))


def _b32decode(chars: str) -> bytes:
    n = 0
    for ch in chars:
        n = n << 5 | _DECODE[ch]
    nbits = len(chars) * 5
    nbytes = nbits // 8
    return (n >> (nbits - nbytes * 8)).to_bytes(nbytes, "big")


def _pad_bits(chars: str, nbytes: int) -> int:
    """The value of the padding bits past ``nbytes`` (must be 0 in a well-formed key)."""
    n = 0
    for ch in chars:
        n = n << 5 | _DECODE[ch]
    extra = len(chars) * 5 - nbytes * 8
    return n & ((1 << extra) - 1) if extra > 0 else 0
