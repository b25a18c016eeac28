"""Reading images into the one layout ovss works on: an (H, W, 3) uint8 RGB numpy array."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

ImageInput = Union[str, Path, Image.Image, np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

#: default largest image, in pixels (width x height), read from a file; ``OVSS_MAX_PIXELS`` overrides it
DEFAULT_MAX_PIXELS = 100_000_000


def max_pixels() -> int:
    """The largest image (width x height) ovss decodes from a file: ``OVSS_MAX_PIXELS`` or
    :data:`DEFAULT_MAX_PIXELS` (100 megapixels). Decoding needs about 3 bytes a pixel and the methods
    several times that, so the limit keeps one file from exhausting the machine.

    Raises:
        InputError: ``OVSS_MAX_PIXELS`` is not a positive integer.
    """
    env = os.environ.get("OVSS_MAX_PIXELS")
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(env))
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"OVSS_MAX_PIXELS must be a positive number of pixels, got {env!r}")
    return value


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels.

    Raises:
        InputError: the file is missing, not a regular file, or Pillow cannot read its header.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if not path.is_file():
        raise InputError(f"{path} is not a regular image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        # Pillow refuses to even report sizes past twice its own limit: that is past ours too
        raise InputError(f"{path} is larger than {max_pixels():,} pixels: resize it first "
                         "(or raise OVSS_MAX_PIXELS)") from None
    except Exception as exc:
        raise InputError(f"cannot read {path} as an image ({exc.__class__.__name__}): "
                         "is it a JPEG/PNG/... file?") from None


def check_pixels(path: Path) -> None:
    """Refuse a file whose header says it is larger than :func:`max_pixels`, before decoding it.
    Files Pillow cannot parse are left to the decoder.

    Raises:
        InputError: the image is too large.
    """
    try:
        w, h = image_size(path)
    except InputError as exc:
        if "larger than" in str(exc):
            raise
        return
    if w * h > max_pixels():
        raise InputError(f"{path} is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
                         f"{max_pixels() / 1e6:g}: resize it first (or set OVSS_MAX_PIXELS)")


def load_image(image: ImageInput) -> np.ndarray:
    """Return ``image`` as an (H, W, 3) uint8 RGB array.

    Args:
        image: a file path, a PIL image (any mode) or an (H, W, 3) / (H, W) uint8 array in RGB
            order.

    Files are decoded with OpenCV, as the official mmseg pipelines do (``cv2.imread``, EXIF
    orientation applied), so JPEG decoding matches the reference numbers; formats OpenCV cannot
    read fall back to Pillow.

    Raises:
        InputError: the file is missing or is not a readable image, or the array has the
            wrong shape or dtype.
    """
    if isinstance(image, (str, Path)):
        return _read_file(Path(image))
    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise InputError(f"image array must be (H, W, 3) RGB, got shape {tuple(image.shape)}")
        if arr.dtype != np.uint8:
            raise InputError(f"image array must be uint8 (0-255), got dtype {arr.dtype}")
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputError(f"image array is empty: shape {tuple(image.shape)}")
        return np.ascontiguousarray(arr[:, :, :3])
    raise InputError(
        f"cannot read an image from a {type(image).__name__}: pass a file path, a PIL image "
        "or an (H, W, 3) uint8 RGB array"
    )


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file (a pipe or a device?)")
    check_pixels(path)
    data = np.fromfile(str(path), dtype=np.uint8)  # handles non-ASCII paths, unlike cv2.imread
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is not None:
        return np.ascontiguousarray(bgr[:, :, ::-1])
    try:
        with Image.open(path) as im:
            return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    except Exception as exc:  # PIL raises several types for broken files
        raise InputError(f"cannot read {path} as an image ({exc.__class__.__name__}): "
                         "is it a JPEG/PNG/... file?") from None


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of image files.

    Raises:
        InputError: a path does not exist, or a folder holds no image.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"folder {p} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"image file not found: {p}")
    return out


# --------------------------------------------------------------------------- detectron2's test input
def read_image_d2(image: ImageInput) -> np.ndarray:
    """(H, W, 3) uint8 RGB as detectron2 ``read_image(path, "RGB")`` reads it: Pillow decoding with the
    EXIF orientation applied (arrays and PIL images pass through :func:`load_image`).

    Raises:
        InputError: missing or unreadable file.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image file not found: {path}" if not path.exists()
                             else f"{path} is not a regular image file")
        check_pixels(path)
        try:
            with Image.open(path) as im:
                return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
        except Exception as exc:
            raise InputError(f"cannot read {path} as an image ({exc.__class__.__name__}): "
                             "is it a JPEG/PNG/... file?") from None
    return load_image(image)


def d2_test_size(h: int, w: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """(new_h, new_w) of detectron2 ``ResizeShortestEdge.get_output_shape`` (``int(x + 0.5)`` rounding)."""
    size = float(short_side)
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_long_side:
        scale = max_long_side * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def d2_resize(image: np.ndarray, short_side: int, max_long_side: int) -> np.ndarray:
    """detectron2 test resize of an (H, W, 3) uint8 image: Pillow bilinear (antialiased when shrinking)."""
    h, w = image.shape[:2]
    newh, neww = d2_test_size(h, w, short_side, max_long_side)
    return np.asarray(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))
