"""Reading prediction inputs (image files or an ``.npz``) and checking them against a model.

A customer model expects float32 (N, C, H, W) in [0, 1] of exactly its manifest's input shape; any
other shape or range is refused with a one-line :class:`~deepserial.errors.InputError` rather than
silently resized, because a serial number stamped on a resized image is no longer the same pattern.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from deepserial.errors import DatasetError, InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff"}


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


def load_inputs(paths: Sequence[str | Path], input_shape: Sequence[int]) -> torch.Tensor:
    """Images (one sample each) or ``.npz`` files (array ``x``) as one checked batch."""
    from deepserial.data.formats import _npz_images

    if not paths:
        raise InputError("no input given; pass image files or an .npz with an array x")
    c = int(input_shape[0])
    batches: list[torch.Tensor] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"input file {p} does not exist")
        if p.suffix.lower() == ".npz":
            try:
                with np.load(p, allow_pickle=False) as z:
                    if "x" not in z.files:
                        raise InputError(f"{p} has no array 'x' (found: {', '.join(z.files) or 'nothing'})")
                    arr = z["x"]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise InputError(f"cannot read {p} as .npz ({type(e).__name__}); save it with numpy.savez") from None
            try:
                arr = _npz_images(arr, p, "x")
            except DatasetError as e:
                raise InputError(str(e)) from None
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(p) as im:
                    im = im.convert("L" if c == 1 else "RGB")
                    arr = np.asarray(im)
            except (OSError, UnidentifiedImageError):
                raise InputError(f"{p} is not a readable image") from None
            arr = arr[None, None] if arr.ndim == 2 else arr.transpose(2, 0, 1)[None]
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
