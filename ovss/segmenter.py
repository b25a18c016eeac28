"""The one interface every method implements: :class:`Segmenter` and :class:`SegmentationResult`."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from .imageio import ImageInput
from .vocabulary import ClassesInput, Vocabulary


@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.predict` returns for one image.

    Attributes:
        logits: float32 (C, H, W) final per-class scores at the original image size (for the
            CLIP family: probabilities after the softmax over queries and the max over
            synonyms; each method's docstring says what its scores are).
        labels: int64 (H, W) label map, values in [0, C).
        classes: (C,) class display names, in channel order.
        background: index of the background class, or None.
        settings: every setting that produced the result (method, model, protocol, ...), JSON-able.
        extras: method-specific outputs (e.g. panoptic segments), JSON-able or tensors.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    background: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def pixel_share(self) -> dict[str, float]:
        """Fraction of pixels (0-1) labelled with each class, in class order."""
        counts = torch.bincount(self.labels.reshape(-1), minlength=len(self.classes)).double()
        share = (counts / max(self.labels.numel(), 1)).tolist()
        return {name: float(s) for name, s in zip(self.classes, share)}

    def labels_numpy(self) -> np.ndarray:
        """(H, W) label map as a numpy array (uint8 when C <= 256, else int32)."""
        dtype = np.uint8 if len(self.classes) <= 256 else np.int32
        return self.labels.cpu().numpy().astype(dtype)


class Segmenter(abc.ABC):
    """Base class of every method.

    Subclasses set ``method`` (registry name) and ``paper`` (citation) and implement
    :meth:`predict`. Construction loads the weights; ``predict`` may be called many times, with
    the same or different classes.
    """

    method: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)

    @abc.abstractmethod
    def predict(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None, *,
                background: list[str] | str | None = None,
                prob_threshold: float | None = None) -> SegmentationResult:
        """Segment one image.

        Args:
            image: a file path, a PIL image or an (H, W, 3) uint8 RGB array.
            classes: the class names (see :func:`ovss.vocabulary.parse_classes`), or None to
                use the dataset protocol's class file (an error when no dataset was given).
            background: words that score the background class (overrides the protocol).
            prob_threshold: pixels whose top class score is below this become background.

        Returns:
            The scores and label map at the image's original size.

        Raises:
            InputError: unreadable image, empty or duplicate class list.
        """

    def settings(self) -> dict[str, Any]:
        """Every setting of this segmenter, JSON-able (written to the CLI's JSON report)."""
        return {"method": self.method, "device": str(self.device)}

    #: the method's own table of official protocols (dataset -> settings), for methods whose
    #: protocols are not in :mod:`ovss.protocols`
    protocol_table: ClassVar[Mapping[str, Any] | None] = None

    @classmethod
    def datasets(cls) -> list[str]:
        """Benchmarks for which this method has an official protocol (``dataset=``)."""
        if cls.protocol_table is not None:
            return list(cls.protocol_table)
        from .protocols import protocol_datasets

        return protocol_datasets(cls.method)


def check_test_size(short_side: int | None, max_long_side: int | None) -> None:
    """Validate the test-size options every method takes (None: the protocol's).

    Raises:
        InputError: a value that is not a positive integer number of pixels.
    """
    from .errors import InputError

    for name, v in (("short_side", short_side), ("max_long_side", max_long_side)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
            raise InputError(f"{name} must be a positive integer (pixels), got {v!r}")


def square_side(side: int, short_side: int | None = None, max_long_side: int | None = None) -> int:
    """Side of a square network input given the test-size options every method takes: for a
    square, short and long side coincide, so it is ``short_side`` (default ``side``) capped at
    ``max_long_side``.

    Raises:
        InputError: see :func:`check_test_size`.
    """
    check_test_size(short_side, max_long_side)
    out = int(short_side) if short_side is not None else int(side)
    return min(out, int(max_long_side)) if max_long_side is not None else out


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that exists on this machine.

    Raises:
        InputError: a name torch does not know ("gpu"), CUDA asked for where there is none, or
            a GPU index beyond the GPUs present.
    """
    from .errors import InputError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {str(device)!r} asked for but CUDA is not available here: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {str(device)!r} asked for but MPS is not available here: use --device cpu")
    return dev


def image_id_kwargs(segmenter: Any, image_id: str) -> dict[str, Any]:
    """``{"image_id": image_id}`` when ``segmenter.predict`` takes one (methods with per-image
    inputs, such as PnP-OVSS's GPT-4o class lists), else ``{}``."""
    import inspect

    try:
        params = inspect.signature(segmenter.predict).parameters
    except (TypeError, ValueError):
        return {}
    return {"image_id": image_id} if "image_id" in params else {}
