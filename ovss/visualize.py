"""Pictures of a result: palette label maps, overlays with a legend.

The label PNG is an indexed ("P" mode) image, so its pixel values are the class indices and
any viewer shows the palette colours. The overlay blends the palette over the photo, outlines
each region, and adds a legend naming every class present with its pixel share.
"""

from __future__ import annotations

import colorsys
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, readable colours first (Kelly's / Tableau-like), then golden-ratio hues.
_BASE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
]
BACKGROUND_COLOR = (40, 40, 40)


def palette(n: int, background: int | None = None) -> np.ndarray:
    """(n, 3) uint8 colours, one per class; the background class (if any) is dark grey."""
    cols = []
    k = 0
    for i in range(n):
        if i == background:
            cols.append(BACKGROUND_COLOR)
            continue
        if k < len(_BASE):
            cols.append(_BASE[k])
        else:
            h = (k * 0.618033988749895) % 1.0
            r, g, b = colorsys.hsv_to_rgb(h, 0.65 + 0.35 * ((k // 7) % 2), 0.95 - 0.25 * ((k // 3) % 2))
            cols.append((int(r * 255), int(g * 255), int(b * 255)))
        k += 1
    return np.asarray(cols, dtype=np.uint8).reshape(n, 3)


def label_image(labels: np.ndarray, colors: np.ndarray) -> Image.Image:
    """PNG-ready label map whose pixel values are the class indices: an 8-bit palette image coloured
    by ``colors`` for up to 256 classes, a 16-bit greyscale image (mode ``I;16``) for more."""
    labels = np.asarray(labels)
    if len(colors) <= 256:
        im = Image.fromarray(labels.astype(np.uint8), mode="P")
        pal = np.zeros((256, 3), np.uint8)
        pal[: len(colors)] = colors
        im.putpalette(pal.reshape(-1).tolist())
        return im
    return Image.fromarray(labels.astype(np.uint16))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _edges(labels: np.ndarray) -> np.ndarray:
    e = np.zeros(labels.shape, bool)
    e[:-1] |= labels[:-1] != labels[1:]
    e[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return e


def overlay(rgb: np.ndarray, labels: np.ndarray, classes: Sequence[str], colors: np.ndarray | None = None,
            alpha: float = 0.5, background: int | None = None, legend: bool = True) -> Image.Image:
    """The photo with the coloured label map blended over it, region outlines and a legend.

    Args:
        rgb: (H, W, 3) uint8 photo.
        labels: (H, W) int class indices.
        classes: (C,) class names.
        colors: (C, 3) uint8 palette (default: :func:`palette`).
        alpha: opacity of the colours (0-1); the background class is drawn lighter.
        background: index of the background class, or None.
        legend: add a legend panel (classes present, largest first, with pixel share).

    Returns:
        RGB image, the photo's size plus the legend panel on the right.
    """
    labels = np.asarray(labels)
    colors = palette(len(classes), background) if colors is None else colors
    a = np.full(labels.shape, alpha, np.float32)
    if background is not None:
        a[labels == background] = alpha * 0.3
    out = rgb.astype(np.float32) * (1 - a[..., None]) + colors[labels].astype(np.float32) * a[..., None]
    out[_edges(labels)] = 255
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    if not legend:
        return img
    counts = np.bincount(labels.reshape(-1), minlength=len(classes))
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    h, w = labels.shape
    size = max(12, min(28, h // 28))
    font = _font(size)
    row = int(size * 1.5)
    rows_fit = max(1, (h - size) // row)
    shown = present[:rows_fit]
    text_w = max([font.getlength(f"{classes[i]}  100.0%") for i in shown] + [font.getlength("legend")])
    panel_w = int(size * 2.2 + text_w + size)
    canvas = Image.new("RGB", (w + panel_w, max(h, row * len(shown) + size)), (250, 250, 250))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    total = max(labels.size, 1)
    for k, i in enumerate(shown):
        y = size // 2 + k * row
        draw.rectangle([w + size // 2, y, w + size // 2 + size, y + size], fill=tuple(int(c) for c in colors[i]),
                       outline=(0, 0, 0))
        draw.text((w + int(size * 2), y - size // 8), f"{classes[i]}  {100 * counts[i] / total:.1f}%",
                  fill=(20, 20, 20), font=font)
    if len(present) > len(shown):
        draw.text((w + size // 2, h - row), f"+{len(present) - len(shown)} more", fill=(90, 90, 90), font=font)
    return canvas
