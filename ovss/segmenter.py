"""The method contract: :class:`Segmenter`, its :class:`Capabilities`, and :class:`SegmentationResult`.

A method is one class in one file under ``ovss/methods`` that

* declares ``method`` (its registry name), ``capabilities`` (what it can do, read by the CLI,
  ``ovss eval`` and the web page instead of inspecting signatures) and ``protocols`` (its official
  benchmark settings, :class:`ovss.protocols.ProtocolTable`);
* takes ``(model, pretrained, *, <its options>, **common)`` in its constructor, every option
  keyword-only, type-annotated and defaulted (:mod:`ovss.options` checks values against the
  annotations), and passes ``**common`` (dataset, device, short_side, max_long_side, precision,
  classes, background) on to :meth:`Segmenter.__init__`;
* implements one hook, :meth:`Segmenter.segment`: a decoded image and a resolved
  :class:`~ovss.vocabulary.Vocabulary` in, per-class scores at the image size out.

:meth:`Segmenter.predict` does the rest the same way for every method: decoding with the method's
declared decoder, the class list (explicit, the constructor's, or the protocol's class file),
background words and ``prob_threshold`` as declared, and a result on the CPU. docs/architecture.md
walks through adding a method.
"""

from __future__ import annotations

import abc
import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch

from .errors import InputError, OvssError
from .imageio import ImageInput, load_image, read_image_d2
from .kernels import use_onednn_linears
from .options import OptionSpec, Pixels, Precision, Range, check_options, option_specs
from .protocols import Protocol, ProtocolTable
from .vocabulary import ClassesInput, Vocabulary, parse_classes

ScoreKind = Literal["probability", "sigmoid", "mask_classification", "calibrated", "cosine"]

#: what each score kind means (``ovss methods NAME`` and the JSON reports say it)
SCORE_KINDS: dict[str, str] = {
    "probability": "class probabilities: softmax over the class queries (max over synonyms), in [0, 1]",
    "sigmoid": "per-class sigmoid probabilities, each in [0, 1], not normalised over classes",
    "mask_classification": "sum over mask queries of class probability x mask probability, >= 0, not "
                           "normalised over classes",
    "calibrated": "mask-classification scores with a constant subtracted from the seen classes (may be negative)",
    "cosine": "cosine similarities (gated), in [-1, 1]",
}


@dataclass(frozen=True)
class Capabilities:
    """What a method can do, declared once as ``Segmenter.capabilities``.

    Attributes:
        background: ``predict(background=...)`` adds a background class (index 0) scored by the
            words, and a ``prob_threshold`` without one adds a "background" class.
        prob_threshold: ``predict(prob_threshold=...)`` sends pixels whose top score is below it to
            the background class.
        panoptic: the ``panoptic=True`` option fills ``extras["panoptic"]`` (``panoptic_seg`` id map and
            ``segments``), which ``ovss eval`` scores as PQ.
        instance: the ``instance=True`` option fills ``extras["instances"]``.
        image_id: the method uses a per-image id (``predict(image_id=...)``, default the file stem).
        decoder: how files are decoded: ``"opencv"`` (mmseg pipelines: ``cv2.imdecode``) or
            ``"pillow"`` (detectron2 ``read_image``: Pillow with the EXIF orientation).
        tiling: memory stays bounded on huge photos (the work is done tile by tile).
        trainable: ``ovss train`` trains it.
        class_order_invariant: permuting the class list permutes the score channels and nothing
            else. False where the official output depends on the order (cited in the class docstring).
        order_invariant_options: for such a method, the option values ``((name, value), ...)`` of
            its order-independent variant (e.g. PnP-OVSS's ``caption_order="sorted"``).
        score_kind: what ``SegmentationResult.scores`` holds (see :data:`SCORE_KINDS`).
        precisions: arithmetic the method runs in (``precision=``).
        needs_grad: ``predict`` runs autograd (GradCAM methods), so callers must not wrap it in
            ``torch.no_grad``.
    """

    background: bool = False
    prob_threshold: bool = False
    panoptic: bool = False
    instance: bool = False
    image_id: bool = False
    decoder: Literal["opencv", "pillow"] = "opencv"
    tiling: bool = False
    trainable: bool = False
    class_order_invariant: bool = True
    order_invariant_options: tuple[tuple[str, Any], ...] = ()
    score_kind: ScoreKind = "probability"
    precisions: tuple[str, ...] = ("fp32",)
    needs_grad: bool = False

    @property
    def score_range(self) -> Range:
        """The values ``prob_threshold`` may take for this score kind."""
        if self.score_kind in ("probability", "sigmoid"):
            return Range(0, 1)
        if self.score_kind == "cosine":
            return Range(-1, 1)
        return Range() if self.score_kind == "calibrated" else Range(0)


@dataclass
class Segmentation:
    """What a method's :meth:`Segmenter.segment` hook returns for one image.

    Attributes:
        scores: float (C, H, W) per-class scores at the original image size (any device).
        labels: int (H, W) label map, or None for ``scores.argmax(0)``.
        classes: (C,) class names when they are not the vocabulary's (a method with its own label
            space); None: ``vocab.names``.
        background: background index when ``classes`` is given.
        extras: method-specific outputs (panoptic segments, instances, counters), JSON-able or tensors.
        settings: per-call settings to add to the result's settings (the threshold used...).
        trace: every intermediate, filled only when asked (``trace=True``; :meth:`Segmenter.run`).
        allow_nonfinite: the official code produces NaN for this input and the method keeps it on
            purpose (documented per method); otherwise non-finite scores are an error.
    """

    scores: torch.Tensor
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    background: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    allow_nonfinite: bool = False


@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.predict` returns for one image.

    Attributes:
        scores: float32 (C, H, W) final per-class scores at the original image size, always on
            the CPU; what they are is ``score_kind`` (see :data:`SCORE_KINDS`).
        labels: int64 (H, W) label map on the CPU, values in [0, C).
        classes: (C,) class display names, in channel order.
        background: index of the background class, or None.
        settings: every setting that produced the result (method, model, protocol, ...), JSON-able.
        extras: method-specific outputs (e.g. panoptic segments), JSON-able or tensors.
        score_kind: the method's declared score kind.
    """

    scores: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    background: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    score_kind: str = "probability"

    @property
    def logits(self) -> torch.Tensor:
        """Deprecated alias of :attr:`scores` (they were never logits); removed in the next release."""
        warnings.warn("SegmentationResult.logits is deprecated: use .scores (see .score_kind)", DeprecationWarning,
                      stacklevel=2)
        return self.scores

    def pixel_share(self) -> dict[str, float]:
        """Fraction of pixels (0-1) labelled with each class, in class order."""
        counts = torch.bincount(self.labels.reshape(-1), minlength=len(self.classes)).double()
        share = (counts / max(self.labels.numel(), 1)).tolist()
        return {name: float(s) for name, s in zip(self.classes, share)}

    def labels_numpy(self) -> np.ndarray:
        """(H, W) label map as a numpy array: uint8 for up to 256 classes, else uint16 (the label
        PNGs are written 8- or 16-bit accordingly)."""
        dtype = np.uint8 if len(self.classes) <= 256 else np.uint16
        return self.labels.cpu().numpy().astype(dtype)


class Segmenter(abc.ABC):
    """Base class of every method; see the module docstring for the contract.

    Args:
        dataset: benchmark whose official protocol to use (``ovss methods NAME`` lists them; aliases
            such as ``ade150`` or ``pc59`` accepted), including the method's class file; None for
            free-form use with the method's default settings.
        device: "cpu", "cuda", "cuda:1", ...
        short_side: override the protocol's test resize of the short side, pixels.
        max_long_side: override the protocol's cap of the long side, pixels.
        precision: "fp32" (exact), or "bf16" / "fp16" where ``capabilities.precisions`` has them.
        classes: default classes of :meth:`predict` (overrides the protocol's class file).
        background: default background words of :meth:`predict` (comma-separated or a list).

    Raises:
        InputError: a bad value (device, size, precision, background words the method cannot use).
        UnknownNameError: a dataset without a protocol of this method.
    """

    method: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    protocols: ClassVar[ProtocolTable[Any]] = ProtocolTable("", {}, free=Protocol())

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every method's constructor checks its keyword options against their declarations
        (:func:`ovss.options.check_options`) before anything loads, however it is called."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_checks_options", False):
            return

        @functools.wraps(init)
        def checked_init(self: Segmenter, *args: Any, **options: Any) -> None:
            outermost = not self.__dict__.get("_options_checked")
            if outermost:  # the outermost constructor checks, once
                self.__dict__["_options_checked"] = True
                options = check_options(type(self).method or type(self).__name__, option_specs(type(self)), options)
            init(self, *args, **options)
            if outermost:
                self.use_fast_kernels()

        checked_init._checks_options = True  # type: ignore[attr-defined]
        cls.__init__ = checked_init  # type: ignore[method-assign]

    def __init__(self, *, dataset: str | None = None, device: str | torch.device = "cpu",
                 short_side: Pixels | None = None, max_long_side: Pixels | None = None,
                 precision: Precision = "fp32", classes: ClassesInput | None = None,
                 background: str | Sequence[str] | None = None) -> None:
        cap = self.capabilities
        self.device = resolve_device(device)
        if precision not in cap.precisions:
            raise InputError(f"{self.method} runs in {' / '.join(cap.precisions)} only, not precision={precision!r}")
        self.precision: str = precision
        check_test_size(short_side, max_long_side)
        self.dataset: str | None = self.protocols.resolve(dataset) if dataset is not None else None
        self.protocol = self.protocols.get(self.dataset).with_overrides(short_side=short_side,
                                                                        max_long_side=max_long_side)
        self.background_words = parse_words(background)
        if self.background_words and not cap.background:
            raise InputError(self._no_background())
        self.default_classes: Vocabulary | None = None
        if classes is not None:
            self.default_classes = classes if isinstance(classes, Vocabulary) else parse_classes(classes)
        self._protocol_vocab: Vocabulary | None = None

    def use_fast_kernels(self) -> None:
        """Route the plain ``nn.Linear`` layers of this method's networks (the ``nn.Module``
        attributes, and the ``.model`` of loaded CLIPs) through oneDNN on the CPU
        (:func:`ovss.kernels.use_onednn_linears`: the same float32 products, faster than MKL's on
        AMD CPUs; untouched where a gradient is recorded or off the CPU). Called once after
        construction."""
        for value in vars(self).values():
            net = value if isinstance(value, torch.nn.Module) else getattr(value, "model", None)
            if isinstance(net, torch.nn.Module):
                use_onednn_linears(net)

    # ------------------------------------------------------------------------- the one hook
    @abc.abstractmethod
    def segment(self, rgb: np.ndarray, vocab: Vocabulary, *, prob_threshold: float | None = None,
                image_id: str | None = None, trace: bool = False) -> Segmentation:
        """Segment one decoded image with a resolved vocabulary.

        Args:
            rgb: (H, W, 3) uint8 RGB, decoded with the method's declared decoder.
            vocab: the classes (background included when the call has one).
            prob_threshold: a validated threshold, or None for the protocol's.
            image_id: the image's id (its file stem by default), for methods that use one.
            trace: also return every intermediate in ``Segmentation.trace`` (parity tests).

        Returns:
            Scores (C, H, W) at the image size, labels when they are not the argmax.
        """

    # ------------------------------------------------------------------------- the public API
    def predict(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None, *,
                background: str | Sequence[str] | None = None, prob_threshold: float | None = None,
                image_id: str | None = None) -> SegmentationResult:
        """Segment one image.

        Args:
            image: a file path, a PIL image or an (H, W, 3) uint8 RGB array.
            classes: the class names (see :func:`ovss.vocabulary.parse_classes`), or None for the
                constructor's ``classes`` or the dataset protocol's class file.
            background: words that score a background class at index 0, comma-separated or a list
                (overrides the constructor's and the protocol's); methods without a background
                notion refuse them (``capabilities.background``).
            prob_threshold: pixels whose top score is below this become background (within the
                score kind's range; ``capabilities.prob_threshold``).
            image_id: the image's id for methods with per-image inputs (default: the file stem).

        Returns:
            Scores (float32, CPU) and labels at the image's original size.

        Raises:
            InputError: unreadable image, empty or duplicate class list, background words or a
                threshold the method cannot use, a threshold out of range.
        """
        return self._result(self._call(image, classes, background, prob_threshold, image_id, trace=False))

    def predict_batch(self, images: Sequence[ImageInput], classes: ClassesInput | Vocabulary | None = None, *,
                      background: str | Sequence[str] | None = None, prob_threshold: float | None = None,
                      image_ids: Sequence[str | None] | None = None) -> list[SegmentationResult]:
        """Segment many images with one vocabulary: ``[predict(image, classes, ...) for image in images]``
        with the same results, faster.

        The vocabulary and its text classifier are resolved once; the next images are decoded in a
        background thread while the network runs; images go through :meth:`segment_batch`
        :attr:`batch_images` at a time (methods that gain from batching several images, such as the
        CLIP family's sliding windows, override it).

        Args:
            images: file paths, PIL images or (H, W, 3) uint8 RGB arrays.
            classes, background, prob_threshold: as :meth:`predict`, for every image.
            image_ids: per-image ids (default: each file's stem).

        Returns:
            One result per image, in order.

        Raises:
            InputError: as :meth:`predict` (the first bad image stops the batch), or ``image_ids``
                of another length.
        """
        from concurrent.futures import ThreadPoolExecutor

        images = list(images)
        ids = list(image_ids) if image_ids is not None else [None] * len(images)
        if len(ids) != len(images):
            raise InputError(f"{len(ids)} image_ids for {len(images)} images")
        ids = [i if i is not None or not isinstance(im, (str, Path)) else Path(im).stem for i, im in zip(ids, images)]
        words, prob_threshold = self._call_settings(background, prob_threshold)
        vocab = self.vocabulary(classes, words, prob_threshold)
        step = max(1, int(self.batch_images))
        groups = [list(range(i, min(i + step, len(images)))) for i in range(0, len(images), step)]
        results: list[SegmentationResult] = []
        with ThreadPoolExecutor(max_workers=1) as pool:  # decodes group g + 1 while group g runs
            pending = pool.submit(lambda g: [self.read_image(images[i]) for i in g], groups[0]) if groups else None
            for g, group in enumerate(groups):
                rgbs = pending.result()
                if g + 1 < len(groups):
                    pending = pool.submit(lambda g: [self.read_image(images[i]) for i in g], groups[g + 1])
                segs = self.segment_batch(rgbs, vocab, prob_threshold=prob_threshold, image_ids=[ids[i] for i in group])
                results += [self._result((seg, vocab)) for seg in segs]
        return results

    #: images per :meth:`segment_batch` call in :meth:`predict_batch`
    batch_images: ClassVar[int] = 1

    def segment_batch(self, rgbs: Sequence[np.ndarray], vocab: Vocabulary, *, prob_threshold: float | None = None,
                      image_ids: Sequence[str | None] | None = None) -> list[Segmentation]:
        """:meth:`segment` of several decoded images with one vocabulary (default: one by one;
        methods override it where batching images helps, with the same results)."""
        ids = list(image_ids) if image_ids is not None else [None] * len(rgbs)
        return [self.segment(rgb, vocab, prob_threshold=prob_threshold, image_id=i) for rgb, i in zip(rgbs, ids)]

    def run(self, image: ImageInput, classes: ClassesInput | Vocabulary | None = None, *,
            background: str | Sequence[str] | None = None, prob_threshold: float | None = None,
            image_id: str | None = None) -> dict[str, Any]:
        """Like :meth:`predict`, returning every intermediate the method records (parity tests,
        inspection) together with ``scores``, ``labels``, ``classes`` and ``vocab``."""
        seg, vocab = self._call(image, classes, background, prob_threshold, image_id, trace=True)
        res = self._result((seg, vocab))
        return {**seg.trace, "vocab": vocab, "scores": res.scores, "labels": res.labels, "classes": res.classes,
                "extras": res.extras}

    def read_image(self, image: ImageInput) -> np.ndarray:
        """Decode ``image`` the way the method's official code does (``capabilities.decoder``):
        (H, W, 3) uint8 RGB. Arrays and PIL images pass through unchanged.

        Raises:
            InputError: a missing or unreadable file, a bad array.
        """
        if self.capabilities.decoder == "pillow":
            return read_image_d2(image)
        return load_image(image)

    def vocabulary(self, classes: ClassesInput | Vocabulary | None = None,
                   background: str | Sequence[str] | None = None,
                   prob_threshold: float | None = None) -> Vocabulary:
        """The vocabulary of one call: ``classes``, else the constructor's, else the protocol's
        class file; with the background class the call asks for.

        Raises:
            InputError: no classes anywhere, or a bad class list.
        """
        words = parse_words(background) if background is not None else self.background_words
        if classes is None:
            vocab = self.default_vocabulary()
            if vocab is None:
                raise InputError("no classes: pass classes=[...] (or --classes), or a dataset protocol "
                                 f"(dataset=...; {self.method} has {', '.join(self.datasets()) or 'none'}) "
                                 "to use its class names")
        else:
            vocab = classes if isinstance(classes, Vocabulary) else parse_classes(classes)
        return self.with_background(vocab, words, self.effective_threshold(prob_threshold))

    def default_vocabulary(self) -> Vocabulary | None:
        """The constructor's ``classes``, else the protocol's official class list, else None."""
        if self.default_classes is not None:
            return self.default_classes
        if self._protocol_vocab is None:
            self._protocol_vocab = self.protocol.vocabulary()
        return self._protocol_vocab

    def with_background(self, vocab: Vocabulary, words: list[str] | None, prob_threshold: float) -> Vocabulary:
        """Add the background class a call asks for: ``words`` score a class at index 0 (replacing
        the words of a background the list already has); a threshold without a background class adds
        one scored by the word "background". Methods without ``capabilities.background`` keep ``vocab``."""
        if not self.capabilities.background:
            return vocab
        if words:
            return vocab.with_background(words)
        if prob_threshold > 0 and vocab.background is None:
            return vocab.with_background(None)
        return vocab

    def effective_threshold(self, prob_threshold: float | None) -> float:
        """The threshold a call uses: its own, else the protocol's (0: none)."""
        if prob_threshold is not None:
            return float(prob_threshold)
        return float(getattr(self.protocol, "prob_threshold", 0.0) or 0.0)

    def settings(self) -> dict[str, Any]:
        """Every setting of this segmenter, JSON-able (written to the reports)."""
        from .registry import method_info

        return {"method": self.method, "paper": method_info(self.method).paper if self.method else "",
                "dataset": self.dataset, "protocol": self.protocol.as_dict(), "device": str(self.device),
                "precision": self.precision, "score_kind": self.score_kind}

    @property
    def short_side(self) -> int:
        """The test resize of the short side in use, pixels (settable)."""
        return int(self.protocol.short_side)

    @short_side.setter
    def short_side(self, value: int) -> None:
        check_test_size(value, None)
        self.protocol = self.protocol.with_overrides(short_side=int(value))

    @property
    def max_long_side(self) -> int:
        """The cap of the long side in use, pixels (settable)."""
        return int(self.protocol.max_long_side)

    @max_long_side.setter
    def max_long_side(self, value: int) -> None:
        check_test_size(None, value)
        self.protocol = self.protocol.with_overrides(max_long_side=int(value))

    @property
    def score_kind(self) -> str:
        """What this segmenter's scores are (the declared kind unless an option changes it)."""
        return self.capabilities.score_kind

    @classmethod
    def datasets(cls) -> list[str]:
        """Benchmarks for which this method has an official protocol (``dataset=``)."""
        return cls.protocols.datasets()

    @classmethod
    def options(cls) -> dict[str, OptionSpec]:
        """Every constructor option with its type, default and range (:func:`ovss.options.option_specs`)."""
        return option_specs(cls)

    # ------------------------------------------------------------------------- internals
    def _no_background(self) -> str:
        return (f"{self.method} scores no background words (it has no background class): leave background "
                "unset, or use a method that has one (ovss methods)")

    def _call_settings(self, background: str | Sequence[str] | None,
                       prob_threshold: float | None) -> tuple[list[str] | None, float | None]:
        cap = self.capabilities
        words = parse_words(background)
        if words and not cap.background:
            raise InputError(self._no_background())
        if prob_threshold is not None:
            if not cap.prob_threshold:
                raise InputError(f"{self.method} has no background class to send low scores to: leave "
                                 "prob_threshold unset")
            prob_threshold = check_threshold(prob_threshold, cap)
        return words, prob_threshold

    def _call(self, image: ImageInput, classes: ClassesInput | Vocabulary | None,
              background: str | Sequence[str] | None, prob_threshold: float | None, image_id: str | None,
              trace: bool) -> tuple[Segmentation, Vocabulary]:
        words, prob_threshold = self._call_settings(background, prob_threshold)
        if image_id is None and isinstance(image, (str, Path)):
            image_id = Path(image).stem
        rgb = self.read_image(image)
        vocab = self.vocabulary(classes, words, prob_threshold)
        seg = self.segment(rgb, vocab, prob_threshold=prob_threshold, image_id=image_id, trace=trace)
        return seg, vocab

    def _result(self, call: tuple[Segmentation, Vocabulary]) -> SegmentationResult:
        seg, vocab = call
        classes = list(seg.classes) if seg.classes is not None else list(vocab.names)
        background = seg.background if seg.classes is not None else vocab.background
        scores = seg.scores.detach().to("cpu", torch.float32)
        if scores.ndim != 3 or scores.shape[0] != len(classes):
            raise RuntimeError(f"{self.method} returned scores of shape {tuple(scores.shape)} for "
                               f"{len(classes)} classes")
        if not seg.allow_nonfinite and not bool(torch.isfinite(scores.sum())):
            # the sum is finite when every score is (an overflow would need scores near 1e38); only
            # then count, a channel at a time (torch.isfinite of the whole map costs several copies)
            bad = sum(int((~torch.isfinite(c)).sum()) for c in scores)
            if bad:
                raise OvssError(f"{self.method} produced non-finite scores for this image and settings "
                                f"({bad} values): check the options")
        labels = seg.labels if seg.labels is not None else scores.argmax(0)
        settings = {**self.settings(), **seg.settings}
        settings.setdefault("queries", [list(q) for q in vocab.queries] if seg.classes is None else None)
        return SegmentationResult(scores, labels.detach().to("cpu", torch.int64), classes, background, settings,
                                  seg.extras, self.score_kind)


def parse_words(value: str | Sequence[str] | None) -> list[str] | None:
    """Background words as a list: a comma-separated string is split on commas; blanks dropped.
    None (or nothing left) gives None.

    Raises:
        InputError: an item that is not a string.
    """
    if value is None:
        return None
    if isinstance(value, str):
        words = [w.strip() for w in value.split(",")]
    else:
        if not all(isinstance(w, str) for w in value):
            raise InputError(f"background words must be strings, got {list(value)!r}")
        words = [w.strip() for w in value]
    words = [w for w in words if w]
    return words or None


def check_threshold(value: Any, cap: Capabilities) -> float:
    """``prob_threshold`` as a float within the score kind's range.

    Raises:
        InputError: not a number, NaN, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InputError(f"prob_threshold must be a number, got {value!r}")
    cap.score_range.check("prob_threshold", float(value))
    return float(value)


def check_test_size(short_side: int | None, max_long_side: int | None) -> None:
    """Validate the test-size options every method takes (None: the protocol's).

    Raises:
        InputError: a value that is not a positive integer number of pixels.
    """
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
