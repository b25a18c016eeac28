"""Reading images into the one layout ovss works on: an (H, W, 3) uint8 RGB numpy array."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

ImageInput = Union[str, Path, Image.Image, np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

#: default largest image, in pixels (width x height), read from a file; ``OVSS_MAX_PIXELS`` overrides it
DEFAULT_MAX_PIXELS = 100_000_000


_max_pixels: int | None = None  # set_max_pixels (the --max-pixels flags); None: OVSS_MAX_PIXELS or the default


def set_max_pixels(value: int | None) -> None:
    """Set the limit of :func:`max_pixels` for this process (``ovss segment/eval --max-pixels``);
    None goes back to ``OVSS_MAX_PIXELS`` or the default.

    Raises:
        InputError: not a positive integer.
    """
    global _max_pixels
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"--max-pixels must be a positive number of pixels, got {value!r}")
    _max_pixels = value


def max_pixels() -> int:
    """The largest image (width x height) ovss decodes from a file: :func:`set_max_pixels`'s value,
    else ``OVSS_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS` (100 megapixels). Decoding needs about
    3 bytes a pixel and the methods several times that, so the limit keeps one file from exhausting
    the machine; the header is checked before any pixel is decoded.

    Raises:
        InputError: ``OVSS_MAX_PIXELS`` is not a positive integer.
    """
    if _max_pixels is not None:
        return _max_pixels
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
                         "(or raise --max-pixels / OVSS_MAX_PIXELS)") from None
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
                         f"{max_pixels() / 1e6:g}: resize it first (or raise --max-pixels / OVSS_MAX_PIXELS)")


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


def list_images(paths: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> list[Path]:
    """Expand files and folders into a list of image files (see :func:`find_images`)."""
    return [f.path for f in find_images(paths, exclude)]


@dataclass(frozen=True)
class ImageFile:
    """One input image: its ``path`` as found, and ``rel``, the same path relative to ``base``
    (the folder given on the command line, or the file's own folder for a file given by name)."""

    path: Path
    base: Path
    rel: Path


def find_images(paths: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> list[ImageFile]:
    """Expand files and folders into image files: a folder gives its regular files with an image
    suffix (:data:`IMAGE_SUFFIXES`), recursively and sorted, leaving out anything under an
    ``exclude`` folder (an output folder inside the input folder); a file is taken as given. A file
    listed twice is kept once.

    Raises:
        InputError: a URL (ovss reads local files only), a path that does not exist, a named pipe or
            device, a folder without images.
    """
    skip = [os.path.abspath(e) for e in exclude]

    def excluded(f: Path) -> bool:
        a = os.path.abspath(f)
        return any(a == e or a.startswith(e.rstrip(os.sep) + os.sep) for e in skip)

    out: list[ImageFile] = []
    seen: set[str] = set()

    def add(f: Path, base: Path) -> None:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            out.append(ImageFile(f, base, Path(os.path.relpath(f, base))))

    for raw in paths:
        text = str(raw)
        if "://" in text:
            raise InputError(f"{text} is a URL: ovss reads local files only, download it first "
                             "(e.g. curl -O URL) and pass the file")
        p = Path(raw)
        if p.is_dir():
            # regular files only: a named pipe with an image suffix would block the decoder forever
            found = sorted(f for f in p.rglob("*")
                           if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not excluded(f))
            if not found:
                raise InputError(f"folder {p} holds no image files ({', '.join(IMAGE_SUFFIXES)})"
                                 + (" outside the output folder" if skip else ""))
            for f in found:
                add(f, p)
        elif p.is_file():
            add(p, p.parent)
        elif p.exists() or p.is_symlink():
            raise InputError(f"{p} is not a regular file (a pipe, a device or a broken link?)")
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
