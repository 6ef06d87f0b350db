"""Reading prediction inputs (image files or an ``.npz``) and checking them against a model.

A customer model expects float32 (N, C, H, W) in [0, 1] of exactly its manifest's input shape; any
other shape or range is refused with a one-line :class:`~deepserial.errors.InputError` rather than
silently resized, because a serial number stamped on a resized image is no longer the same pattern.

Inputs may come from anyone (``deepserial predict`` reads files a customer was handed; ``deepserial
serve`` reads request bodies), so both decoders here check sizes from headers before they decode:
an image's width and height before any pixel is decompressed (a 300 KB PNG can declare 9000x9000
pixels), and a ``.npy`` array's shape and dtype against the bytes actually there before anything is
allocated (a 100-byte ``.npy`` can declare a terabyte).
"""

from __future__ import annotations

import math
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import torch

from deepserial.data.formats import npz_images
from deepserial.errors import DatasetError, InputError

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff"}
NPY_MAX_HEADER = 10_000  # numpy's own default bound on the header text


class ImageSizeError(InputError):
    """An image whose header declares another size than the model's input (found before decoding)."""


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header declares, and where its data starts."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of data the header promises."""
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(fp: IO[bytes], name: str) -> NpyHeader:
    """The header of the ``.npy`` data at ``fp``'s position, or a one-line :class:`InputError`.

    Only the header is read (numpy's own parser, at most :data:`NPY_MAX_HEADER` characters), so a
    caller can refuse a shape or dtype before allocating anything. Plain numeric dtypes only: no
    object, structured or sub-array dtype (those are what ``allow_pickle`` guards)."""
    fmt = np.lib.format
    start = fp.tell()
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp, max_header_size=NPY_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp, max_header_size=NPY_MAX_HEADER)
        else:
            raise InputError(f"{name}: .npy format version {version} is not supported; write it with numpy.save")
    except InputError:
        raise
    except Exception:  # numpy parses the header with ast and tokenize: any failure is the bytes'
        raise InputError(f"{name} is not a .npy array (write it with numpy.save, allow_pickle=False)") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise InputError(f"{name}: array dtype {dtype} is not supported; store uint8 0-255 or floats in [0, 1]")
    if any(d < 0 for d in shape):
        raise InputError(f"{name}: .npy header declares a negative dimension {shape}")
    return NpyHeader(tuple(shape), bool(fortran), dtype, fp.tell() - start)


def npy_from_bytes(body: bytes, header: NpyHeader, name: str) -> np.ndarray:
    """The array ``body`` (a whole ``.npy``) holds, once its ``header`` was accepted: a read-only view
    of ``body`` itself, refused unless the data is exactly as long as the header declares."""
    have = len(body) - header.offset
    if have != header.nbytes:
        raise InputError(
            f"{name}: .npy header declares shape {header.shape} of {header.dtype} ({header.nbytes} bytes of data), "
            f"the body holds {have}"
        )
    flat = np.frombuffer(body, dtype=header.dtype, count=math.prod(header.shape), offset=header.offset)
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C")


def open_image(
    source: str | Path | IO[bytes], input_shape: Sequence[int], name: str, formats: list[str] | None = None
) -> Image:
    """An image opened lazily (header only), refused with :class:`ImageSizeError` unless it is exactly
    the model's width and height: nothing is decompressed before that check, so a decompression bomb
    costs its header. Pillow's own bomb guard (``Image.MAX_IMAGE_PIXELS``) is made an error here too
    rather than a warning printed on stderr."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = (int(v) for v in input_shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source, formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageSizeError(
            f"{name} declares over {Image.MAX_IMAGE_PIXELS} pixels; the model takes {w}x{h} (width x height)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise InputError(f"{name} is not a readable image") from None
    if im.size != (w, h):
        im.close()
        iw, ih = im.size
        raise ImageSizeError(
            f"{name} is {iw}x{ih} pixels, shape ({c}, {ih}, {iw}); the model takes ({c}, {h}, {w}): resize it "
            "first (deepserial never resizes: a resized serial number is another one)"
        )
    return im


def image_pixels(im: Image, input_shape: Sequence[int], name: str) -> np.ndarray:
    """The pixels of an image accepted by :func:`open_image`, as uint8 (1, C, H, W)."""
    c = int(input_shape[0])
    try:
        with im:
            arr = np.asarray(im.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
    except Exception:  # Pillow's decoders raise many types on corrupt data; all mean the same
        raise InputError(f"{name} is not a readable image (its data is corrupt or truncated)") from None
    return arr[None, None] if arr.ndim == 2 else arr.transpose(2, 0, 1)[None]


def check_batch(x: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """Refuse a batch that is not float (N, *input_shape) with finite values in [0, 1]."""
    want = tuple(int(s) for s in input_shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != want:
        raise InputError(f"input has shape {tuple(x.shape)}, the model takes (N, {', '.join(map(str, want))})")
    if not torch.is_floating_point(x):
        raise InputError(f"input dtype {x.dtype} is not floating point; scale uint8 images by 1/255")
    if x.numel() and (not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1):
        raise InputError("input values must be finite and in [0, 1]; scale 0-255 images by 1/255")
    return x.float()


def _npz_x(p: Path) -> np.ndarray:
    """Array ``x`` of an ``.npz``, its header checked against the bytes stored before it is read."""
    try:
        with zipfile.ZipFile(p) as zf:
            stored = zf.namelist()
            if "x.npy" not in stored and "x" not in stored:
                found = ", ".join(n.removesuffix(".npy") for n in stored) or "nothing"
                raise InputError(f"{p} has no array 'x' (found: {found})")
            member = zf.getinfo("x.npy" if "x.npy" in stored else "x")
            with zf.open(member) as f:
                header = read_npy_header(f, f"{p}[x]")
            if member.file_size != header.offset + header.nbytes:
                raise InputError(
                    f"{p}[x]: header declares shape {header.shape} of {header.dtype} ({header.nbytes} bytes), "
                    f"the archive stores {member.file_size - header.offset}"
                )
        with np.load(p, allow_pickle=False) as z:
            return z["x"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read {p} as .npz ({type(e).__name__}); save it with numpy.savez") from None


def load_inputs(paths: Sequence[str | Path], input_shape: Sequence[int]) -> torch.Tensor:
    """Images (one sample each) or ``.npz`` files (array ``x``) as one checked batch."""
    if not paths:
        raise InputError("no input given; pass image files or an .npz with an array x")
    batches: list[torch.Tensor] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"input file {p} does not exist")
        if p.suffix.lower() == ".npz":
            arr = _npz_x(p)
            try:
                arr = npz_images(arr, p, "x")
            except DatasetError as e:
                raise InputError(str(e)) from None
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            arr = image_pixels(open_image(p, input_shape, str(p)), input_shape, str(p))
        else:
            raise InputError(f"{p}: unsupported input type {p.suffix!r}; use images or an .npz with array x")
        if arr.dtype == np.uint8:
            t = torch.from_numpy(arr.astype(np.float32) / 255.0)
        elif arr.dtype.kind == "f":
            t = torch.from_numpy(arr.astype(np.float32))
        else:
            raise InputError(f"{p}: values of dtype {arr.dtype}; store uint8 0-255 or floats in [0, 1]")
        batches.append(check_batch(t, input_shape))
    return torch.cat(batches)
