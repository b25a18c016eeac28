"""The gradio page of ``ovss demo``: a thin layer over :func:`ovss.create_segmenter` / ``predict``.

Two endpoints, usable from the page and from ``gradio_client``:

- ``/segment`` (photo, classes, background, prob_threshold, method, model, pretrained, device,
  dataset, short_side, crop, stride, options) -> (annotated image, [overlay PNG, label PNG,
  JSON report], pixel-share table, report dict);
- ``/compare`` (the same inputs, a second method and its options) -> two annotated images,
  a table of both methods' pixel shares and a summary line.

Models stay loaded between requests (:class:`ModelCache`, keyed by method, model, weights,
device and options); requests go through gradio's queue with a bounded concurrency; bad input
raises ``gr.Error`` with the one-line message of the :mod:`ovss.errors` class, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from ..errors import InputError, ModelLoadError, OvssError
from ..imageio import image_size
from ..options import parse_option_tokens
from ..protocols import DATASETS
from ..registry import available_methods, method_class, method_info, method_options, parse_options
from ..segmenter import SegmentationResult, Segmenter
from ..visualize import palette
from ..vocabulary import BOM, Vocabulary, looks_like_file_name, parse_classes

log = logging.getLogger("ovss.demo")

NO_DATASET = "none (free-form)"
#: longest side of the photo shown in the page (the downloadable PNGs keep the full size)
DISPLAY_SIDE = 1024
#: with more classes than this, the legend lists only the classes present in the result
LEGEND_ALL_UP_TO = 64
#: opacity of the class masks in the page (gradio draws a mask's 0-1 values as its alpha)
MASK_ALPHA = 0.6
MASK_ALPHA_BG = 0.25
#: scikit-image photos shipped with the package (no download), with classes worth trying
EXAMPLES = (
    ("astronaut", "astronaut.png", "person, flag, rocket, sky, wall"),
    ("chelsea", "chelsea.png", "cat, wall, floor"),
    ("coffee", "coffee.png", "cup, saucer, spoon, table"),
    ("rocket", "rocket.png", "rocket, sky, tree, building"),
)
WORK_DIR = Path(tempfile.gettempdir()) / "ovss-demo"
RESULT_MAX_AGE_S = 3600

CSS = """
#ovss-status p { margin: 0.2em 0; }
"""


@dataclass(frozen=True)
class DemoConfig:
    """Defaults and limits of one demo server.

    Attributes:
        model, pretrained, device, method: what the page shows when it opens.
        concurrency: requests that run at once (each holds a model's activations in memory).
        max_queue: requests that may wait; more get "the queue is full".
        max_models: loaded models kept in memory (least recently used are dropped).
        max_megapixels: largest photo accepted.
        lock_model: visitors cannot change model, weights, device or method options.
        models_dir: the only folder whose files visitors may name as model, weights, config,
            checkpoint or any other file option (relative names are looked up in it); None: no
            file of the server at all, only model names (open_clip names and tags, hub ids, zoo
            names) and the defaults given here (:func:`check_file_options`).
        max_short_side: largest short side a visitor may ask for, pixels (the network input
            grows with its square).
    """

    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    device: str = "cpu"
    method: str = "sclip"
    concurrency: int = 1
    max_queue: int = 16
    max_models: int = 2
    max_megapixels: float = 40.0
    lock_model: bool = False
    models_dir: str | None = None
    max_short_side: int = 1024


# --------------------------------------------------------------------------- models
class ModelCache:
    """Loaded segmenters kept between requests, least recently used dropped beyond ``max_models``.

    The key is (method, model, pretrained, device, dataset, options); loads are serialised so
    two requests for the same new model load it once.
    """

    def __init__(self, max_models: int = 2, factory: Callable[..., Segmenter] | None = None) -> None:
        from ..registry import create_segmenter

        self.max_models = max(1, int(max_models))
        self._factory = factory or create_segmenter
        self._models: OrderedDict[tuple[Any, ...], Segmenter] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    @staticmethod
    def key(method: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """(method, model, pretrained, device, dataset, other options); a local checkpoint or
        config file counts with its modification time, so a replaced file is loaded again."""
        def version(value: Any) -> Any:
            if isinstance(value, str) and value:
                try:
                    path = Path(value)
                    if path.is_file():
                        return (value, path.stat().st_mtime_ns)
                except (OSError, ValueError):
                    pass
            return value

        rest = tuple(sorted((k, repr(version(v))) for k, v in kwargs.items()
                            if k not in ("model", "pretrained", "device", "dataset")))
        return (method, version(kwargs.get("model")), version(kwargs.get("pretrained")), kwargs.get("device"),
                kwargs.get("dataset"), rest)

    def get(self, method: str, kwargs: dict[str, Any]) -> tuple[Segmenter, float]:
        """The segmenter for these settings and the seconds spent loading it (0 when cached).

        Raises:
            OvssError: from :func:`ovss.create_segmenter` (unknown names, unreachable weights).
        """
        key = self.key(method, kwargs)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key], 0.0
            # drop the least recently used first, so memory never holds max_models + 1
            if len(self._models) >= self.max_models:
                while len(self._models) >= self.max_models:
                    self._models.popitem(last=False)
                _release_memory()
            t0 = time.perf_counter()
            seg = self._factory(method, **kwargs)
            self.loads += 1
            self._models[key] = seg
            return seg, time.perf_counter() - t0

    def __len__(self) -> int:
        return len(self._models)


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def method_kwargs(method: str, model: str | None, pretrained: str | None, device: str | None,
                  dataset: str | None, settings: dict[str, Any], options: str | None) -> dict[str, Any]:
    """Constructor options of one request: the backbone fields, the protocol, the custom
    settings that are set (None: the protocol's) and the ``--name value`` options text, parsed and
    checked against the method's declared options (:func:`ovss.registry.parse_options`).

    Raises:
        InputError: a setting the method does not have, a value of the wrong type or out of range,
            or unparsable options.
    """
    method_info(method)
    accepted = set(method_options(method))
    text: dict[str, str] = {}
    for name, value in (("model", model), ("pretrained", pretrained), ("device", device)):
        value = (value or "").strip()
        if value and name in accepted:
            text[name] = value
    if text.get("pretrained", "").lower() == "random":
        text["pretrained"] = "none"
    if dataset and dataset != NO_DATASET:
        text["dataset"] = dataset
    for name, value in settings.items():
        if value is None:
            continue
        if name not in accepted:
            raise InputError(f"{method} has no {name.replace('_', ' ')} setting: leave that box empty")
        text[name] = str(value)
    text.update(parse_option_tokens((options or "").split()) if options and options.strip() else {})
    return parse_options(method, text, from_text=True)


def custom_settings(short_side: float | str | None, crop: float | str | None,
                    stride: float | str | None, max_short_side: int | None = None) -> dict[str, Any]:
    """The custom-settings boxes as constructor options (blank: None, the protocol's value).

    Args:
        max_short_side: largest short side accepted (the page's :attr:`DemoConfig.max_short_side`).

    Raises:
        InputError: a negative or non-integer value, a short side over ``max_short_side``, or a
            stride below a quarter of the crop (16 times the windows of the usual half-crop stride).
    """
    out: dict[str, Any] = {}
    for name, value, least in (("short_side", short_side, 1), ("crop", crop, 0), ("stride", stride, 1)):
        if value is None or str(value).strip() == "":
            out[name] = None
            continue
        try:
            v = float(str(value).strip())
        except ValueError:
            v = float("nan")
        if not v.is_integer() or v < least:
            raise InputError(f"{name.replace('_', ' ')} must be a whole number >= {least} (pixels), got {value}")
        out[name] = int(v)
    if max_short_side is not None and out["short_side"] is not None and out["short_side"] > max_short_side:
        raise InputError(f"short side must be at most {max_short_side} px on this page, got {out['short_side']}")
    if out["crop"] and out["stride"] is not None and out["stride"] * 4 < out["crop"]:
        raise InputError(f"stride must be at least a quarter of the crop on this page ({-(-out['crop'] // 4)} px "
                         f"for crop {out['crop']}), got {out['stride']}")
    return out


# --------------------------------------------------------------------------- files visitors may name
#: suffixes of files a value may name (weights, configs, class lists, prompt lists)
FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pkl", ".npz", ".npy", ".json", ".yaml", ".yml",
                 ".txt", ".csv", ".onnx", ".h5", ".msgpack")
#: a Hugging Face hub repository id (``Salesforce/blip-itm-large-coco``), not a path
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9]$")


def is_path_like(value: str) -> bool:
    """Whether a text value may be read as a path or a URL by the loaders: it exists on the server
    (relative to the working folder), is absolute, starts with ``.`` or ``~``, holds a backslash, a
    URL scheme or a folder separator (other than a hub id ``org/name``), or ends with a file suffix.
    ``hf-hub:org/name`` (open_clip) and ``hf_hub:org/name`` (timm) are hub names."""
    v = value.strip()
    for scheme in ("hf-hub:", "hf_hub:"):  # open_clip's and timm's spelling of a hub model
        if v.startswith(scheme):
            return not HUB_ID.match(v[len(scheme):])
    try:
        exists = os.path.lexists(v)
    except (OSError, ValueError):
        exists = True  # a name the file system chokes on is no model name either
    return (exists or os.path.isabs(v) or v.startswith((".", "~")) or "\\" in v or "://" in v
            or ("/" in v and not HUB_ID.match(v)) or Path(v).suffix.lower() in FILE_SUFFIXES)


def check_file_options(method: str, kwargs: dict[str, Any], config: DemoConfig) -> dict[str, Any]:
    """Refuse every option value of a request that names a file or URL on the server, unless it is
    under ``config.models_dir`` (then it is replaced by its resolved path), or a default the
    operator or the method set. Model names, hub ids and zoo names pass.

    Raises:
        InputError: a path outside the models folder (or any path without one), a URL, a file
            that does not exist under the models folder.
    """
    trusted = {config.model, config.pretrained}
    for spec in method_options(method).values():
        if isinstance(spec.default, (str, Path)):
            trusted.add(str(spec.default))
    out = dict(kwargs)
    for name, value in kwargs.items():
        if not isinstance(value, (str, Path)) or str(value) in trusted or not is_path_like(str(value)):
            continue
        text = str(value).strip()
        flag = name.replace("_", " ")
        if "://" in text:
            raise InputError(f"{flag}: this page downloads no URLs; use a model name, or a file in the models folder")
        if config.models_dir is None:
            raise InputError(f"{flag}: this page loads no files from the server, only model names (the server can "
                             "allow a folder of models with ovss demo --models-dir DIR)")
        root = Path(os.path.realpath(Path(config.models_dir).expanduser()))
        target = Path(os.path.realpath(root / Path(text).expanduser()))  # an absolute path replaces root
        if not (target == root or root in target.parents) or not target.exists():
            raise InputError(f"{flag}: {Path(text).name!r} is not a file of this page's models folder "
                             "(files are looked up by their name inside it)")
        out[name] = str(target)
    return out


def check_models_dir(models_dir: str | None) -> None:
    """Refuse a models folder that holds the folders gradio writes visitors' uploads to (or the
    page its results), so no uploaded file can be named as a model.

    Raises:
        InputError: not a folder, or it holds an upload folder.
    """
    if models_dir is None:
        return
    root = Path(os.path.realpath(Path(models_dir).expanduser()))
    if not root.is_dir():
        raise InputError(f"--models-dir {models_dir} is not a folder")
    from gradio.utils import get_upload_folder

    for where in (get_upload_folder(), str(WORK_DIR), tempfile.gettempdir()):
        w = Path(os.path.realpath(where))
        if w == root or root in w.parents:
            raise InputError(f"--models-dir {models_dir} holds {w}, where visitors' uploads or the page's "
                             "results are written: give a folder of model files only")


# --------------------------------------------------------------------------- input checks
def check_photo(path: str | None, max_megapixels: float) -> tuple[int, int]:
    """Check the uploaded photo from its header before any model loads: (width, height).

    Raises:
        InputError: no photo, not an image, or over ``max_megapixels``.
    """
    if not path:
        raise InputError("no photo: upload, paste or drop one (or pick an example below it)")
    limit = max_megapixels * 1e6
    try:
        size = image_size(path)
    except InputError:
        raise InputError(f"{Path(path).name} is not an image this demo can read: "
                         "upload a JPEG, PNG, WebP, BMP or TIFF photo") from None
    w, h = size
    if w * h > limit:
        raise InputError(f"the photo is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
                         f"{max_megapixels:g}: resize it first")
    return size


def decode_photo(seg: Segmenter, path: str) -> np.ndarray:
    """The photo decoded the way the method decodes files (``Segmenter.read_image``).

    Raises:
        InputError: an unreadable photo.
    """
    try:
        return seg.read_image(path)
    except InputError:
        raise InputError(f"{Path(path).name} is not an image this demo can read: "
                         "upload a JPEG, PNG, WebP, BMP or TIFF photo") from None


def check_classes(text: str | None, dataset: str | None) -> Vocabulary | None:
    """Parse the classes box (comma-separated, or one class a line with synonyms); None when it
    is empty and a dataset protocol gives the classes.

    Raises:
        InputError: empty (without a dataset) or duplicate classes.
    """
    if not text or not text.strip():
        if dataset and dataset != NO_DATASET:
            return None
        raise InputError("the class list is empty: type what to look for, e.g. \"cat, sofa, window\" "
                         "(or pick a dataset protocol to use its classes)")
    text = text.strip().lstrip(BOM)
    if "\n" not in text and "," not in text and looks_like_file_name(text):
        raise InputError("this page reads no files: type the class names, separated by commas or one a line")
    return parse_classes(text)  # text only: parse_classes never opens a file for a string


def _threshold(value: float | str | None) -> float | None:
    """The threshold box: None or 0 mean the protocol's value (0 for free-form use).

    Raises:
        InputError: not a number in [0, 1].
    """
    if value is None or str(value).strip() == "":
        return None
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not 0.0 <= v <= 1.0:
        raise InputError(f"probability threshold must be between 0 and 1, got {value}")
    return v or None


# --------------------------------------------------------------------------- outputs
def hex_color(c: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in c))


def _display(rgb: np.ndarray, labels: np.ndarray, side: int = DISPLAY_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Photo and label map shrunk (nearest for labels) so the longer side is at most ``side``."""
    h, w = labels.shape
    f = min(1.0, side / max(h, w))
    if f >= 1.0:
        return rgb, labels
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    rows = np.minimum((np.arange(nh) + 0.5) / f, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(nw) + 0.5) / f, w - 1).astype(np.int64)
    small = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    return small, labels[rows][:, cols]


def annotated(rgb: np.ndarray, res: SegmentationResult) -> gr.AnnotatedImage:
    """``gr.AnnotatedImage`` update: one mask per class (legend: every class when there are at
    most :data:`LEGEND_ALL_UP_TO`, else those present), colours of :func:`ovss.visualize.palette`."""
    labels = res.labels_numpy()
    colors = palette(len(res.classes), res.background)
    small, lab = _display(rgb, labels)
    counts = np.bincount(lab.reshape(-1), minlength=len(res.classes))
    show = range(len(res.classes)) if len(res.classes) <= LEGEND_ALL_UP_TO else np.flatnonzero(counts)
    # partly transparent so the photo shows through; the background class lighter still
    masks = [((lab == c) * (MASK_ALPHA_BG if c == res.background else MASK_ALPHA), res.classes[c]) for c in show]
    cmap = {res.classes[c]: hex_color(colors[c]) for c in show}
    return gr.AnnotatedImage(value=(small, masks), color_map=cmap)


def share_table(res: SegmentationResult) -> pd.DataFrame:
    """Pixel share of each class, largest first: class, share (%), pixels."""
    counts = np.bincount(res.labels_numpy().reshape(-1).astype(np.int64), minlength=len(res.classes))
    total = max(int(counts.sum()), 1)
    rows = [(name, round(100.0 * n / total, 2), int(n)) for name, n in zip(res.classes, counts)]
    rows.sort(key=lambda r: -r[2])
    return pd.DataFrame(rows, columns=["class", "share (%)", "pixels"])


def compare_table(ra: SegmentationResult, rb: SegmentationResult, name_a: str, name_b: str) -> pd.DataFrame:
    """Pixel share (%) of each class under two results, by the first one's order."""
    a = share_table(ra).set_index("class")["share (%)"]
    b = share_table(rb).set_index("class")["share (%)"]
    names = list(a.index) + [n for n in b.index if n not in a.index]
    return pd.DataFrame({"class": names, f"{name_a} (%)": [float(a.get(n, 0.0)) for n in names],
                         f"{name_b} (%)": [float(b.get(n, 0.0)) for n in names]})


def _stem(path: str | None) -> str:
    stem = Path(path).stem if path else "photo"
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:60]
    return safe or "photo"


def _clean_old_results() -> None:
    root = WORK_DIR / "results"
    if not root.is_dir():
        return
    now = time.time()
    for d in root.iterdir():
        try:
            if now - d.stat().st_mtime > RESULT_MAX_AGE_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def write_files(rgb: np.ndarray, res: SegmentationResult, stem: str, info: dict[str, Any]) -> tuple[list[str], dict]:
    """Write ``<stem>_overlay.png``, ``<stem>_labels.png`` (indexed: pixel = class index) and
    ``<stem>.json`` as ``ovss segment`` does; return their paths and the JSON report."""
    from ..outputs import write_outputs

    _clean_old_results()
    out = WORK_DIR / "results" / uuid.uuid4().hex[:12]
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, stem, rgb, res, info)
    files = [str(out / f"{stem}_overlay.png"), str(out / f"{stem}_labels.png"), str(out / f"{stem}.json")]
    report = json.loads((out / f"{stem}.json").read_text())
    return files, report


def example_photos(folder: Path | None = None) -> list[list[str]]:
    """Write the scikit-image example photos as PNGs (once) and return ``[[path, classes], ...]``
    (empty without scikit-image: the page works without examples)."""
    try:
        from skimage import data
    except ImportError:
        log.warning("scikit-image is not installed: no example photos (pip install scikit-image)")
        return []

    folder = folder or WORK_DIR / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, filename, classes in EXAMPLES:
        path = folder / filename
        try:
            if not path.is_file():
                tmp = path.with_suffix(f".{uuid.uuid4().hex[:6]}.tmp.png")
                Image.fromarray(getattr(data, name)()).save(tmp)
                tmp.replace(path)
        except Exception as exc:  # a missing sample must not stop the demo
            log.warning("example photo %s unavailable: %s", name, exc)
            continue
        rows.append([str(path), classes])
    return rows


# --------------------------------------------------------------------------- the photo input
class PhotoInput(gr.Image):
    """``gr.Image`` that answers a file which is not an image, or a huge one, with a readable
    message instead of gradio's bare "Error" (gradio opens uploads with Pillow before our code)."""

    #: largest photo accepted (set from :class:`DemoConfig` after construction: gradio sends the
    #: constructor's arguments to the page, which knows no such property)
    max_megapixels: float = 40.0

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload: Any) -> Any:
        path = getattr(payload, "path", None)
        if path:  # the header alone gives the size: refuse a huge photo before gradio decodes it
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(path) as im:
                        w, h = im.size
            except Exception:  # not an image, or a bomb Pillow refuses: handled below
                w = h = 0
            if w * h > self.max_megapixels * 1e6:
                raise gr.Error(f"the photo is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
                               f"{self.max_megapixels:g}: resize it first", print_exception=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return super().preprocess(payload)
        except Image.DecompressionBombError:
            raise gr.Error("the photo has too many pixels for this demo: resize it first",
                           print_exception=False) from None
        except gr.Error:
            raise
        except Exception:
            name = getattr(payload, "orig_name", None) or "the file"
            raise gr.Error(f"{name} is not an image this demo can read: "
                           "upload a JPEG, PNG, WebP, BMP or TIFF photo", print_exception=False) from None


# --------------------------------------------------------------------------- the page
class DemoBackend:
    """The request handlers behind the page (also callable directly, as the tests do)."""

    def __init__(self, config: DemoConfig, cache: ModelCache | None = None) -> None:
        self.config = config
        self.cache = cache or ModelCache(config.max_models)

    def _request_kwargs(self, method: str, model: str | None, pretrained: str | None, device: str | None,
                        dataset: str | None, short_side: Any, crop: Any, stride: Any,
                        options: str | None) -> dict[str, Any]:
        cfg = self.config
        if cfg.lock_model:
            model, pretrained, device, options = cfg.model, cfg.pretrained, cfg.device, ""
        kwargs = method_kwargs(method, model, pretrained, device, dataset,
                               custom_settings(short_side, crop, stride, cfg.max_short_side), options)
        return check_file_options(method, kwargs, cfg)

    def run(self, photo: str | None, classes: str | None, background: str | None, prob_threshold: Any,
            method: str, model: str | None, pretrained: str | None, device: str | None, dataset: str | None,
            short_side: Any, crop: Any, stride: Any, options: str | None,
            progress: Callable[..., Any] | None = None) -> tuple[np.ndarray, SegmentationResult, dict[str, Any]]:
        """One segmentation: checks, model (cached), predict. Returns (rgb, result, info).

        Raises:
            OvssError: any bad input (photo, classes, settings, names, weights).
        """
        step = progress or (lambda *a, **k: None)
        step(0.05, desc="reading the photo")
        method = (method or self.config.method).strip()
        dataset = None if not dataset or dataset == NO_DATASET else dataset
        vocab = check_classes(classes, dataset)
        thd = _threshold(prob_threshold)
        bg = background.strip() if background and background.strip() else None
        kwargs = self._request_kwargs(method, model, pretrained, device, dataset, short_side, crop, stride, options)
        check_photo(photo, self.config.max_megapixels)
        step(0.2, desc=f"loading {method} (the first time takes a while)")
        try:
            seg, load_s = self.cache.get(method, kwargs)
        except ModelLoadError as exc:
            where = ("type the file name of a checkpoint of the models folder into the 'pretrained' box"
                     if self.config.models_dir and not self.config.lock_model
                     else "start ovss demo with --pretrained /path (or --models-dir DIR)")
            raise ModelLoadError(f"{exc}. In this page: {where}") from None
        step(0.5, desc=f"segmenting with {method}")
        assert photo is not None
        rgb = decode_photo(seg, photo)
        t0 = time.perf_counter()
        res = seg.predict(rgb, vocab, background=bg, prob_threshold=thd, image_id=Path(photo).stem)
        info = {"image": Path(photo).name if photo else None, "size": [int(rgb.shape[0]), int(rgb.shape[1])],
                "seconds": round(time.perf_counter() - t0, 3), "load_seconds": round(load_s, 3)}
        return rgb, res, info

    def segment(self, photo: str | None, classes: str | None, background: str | None, prob_threshold: Any,
                method: str, model: str | None, pretrained: str | None, device: str | None, dataset: str | None,
                short_side: Any, crop: Any, stride: Any, options: str | None,
                progress: gr.Progress = gr.Progress()) -> tuple[Any, list[str], pd.DataFrame, dict, str]:
        """The ``/segment`` endpoint: annotated image, [overlay, label map, JSON] files, pixel
        shares, report, status line."""
        def work() -> tuple[Any, list[str], pd.DataFrame, dict, str]:
            rgb, res, info = self.run(photo, classes, background, prob_threshold, method, model, pretrained,
                                      device, dataset, short_side, crop, stride, options, progress)
            progress(0.9, desc="drawing")
            files, report = write_files(rgb, res, _stem(photo), info)
            status = _status(method, res, info)
            return annotated(rgb, res), files, share_table(res), report, status

        return _readable(work)

    def compare(self, photo: str | None, classes: str | None, background: str | None, prob_threshold: Any,
                method: str, model: str | None, pretrained: str | None, device: str | None, dataset: str | None,
                short_side: Any, crop: Any, stride: Any, options: str | None, method_b: str,
                options_b: str | None, progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, pd.DataFrame, str]:
        """The ``/compare`` endpoint: the same photo and classes through two methods."""
        def work() -> tuple[Any, Any, pd.DataFrame, str]:
            if not method_b:
                raise InputError("pick the second method to compare with")
            outs = []
            for k, (m, opts) in enumerate(((method, options), (method_b, options_b))):
                def sub(frac: float, desc: str = "", k: int = k, m: str = m) -> None:
                    progress(0.5 * k + 0.5 * frac, desc=f"{m}: {desc}")
                # the second method keeps a typed backbone, else takes its own default one
                mdl, pre = (model, pretrained) if k == 0 else _backbone_for(m, model, pretrained)
                outs.append(self.run(photo, classes, background, prob_threshold, m, mdl, pre, device,
                                     dataset, short_side, crop, stride, opts, sub))
            (rgb, ra, ia), (_, rb, ib) = outs
            table = compare_table(ra, rb, method, method_b if method_b != method else f"{method_b} (2)")
            status = f"{_status(method, ra, ia)}  \n{_status(method_b, rb, ib)}"
            return annotated(rgb, ra), annotated(rgb, rb), table, status

        return _readable(work)


def _status(method: str, res: SegmentationResult, info: dict[str, Any]) -> str:
    s = res.settings
    model = s.get("model", "?")
    weights = s.get("pretrained") or "random weights"
    if isinstance(weights, str) and ("/" in weights or "\\" in weights):
        weights = Path(weights).name
    load = f", model loaded in {info['load_seconds']:.1f} s" if info["load_seconds"] else ""
    h, w = info["size"]
    return (f"**{method}** on {model} ({weights}) · {w}×{h} px · {len(res.classes)} classes · "
            f"{info['seconds']:.1f} s{load}")


def _readable(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; bad input and failures become a ``gr.Error`` with one readable line (the
    traceback of unexpected failures goes to the server log only)."""
    try:
        return fn()
    except gr.Error:
        raise
    except OvssError as exc:
        log.warning("request refused: %s", exc)
        raise gr.Error(str(exc), title="Cannot segment this", print_exception=False) from None
    except MemoryError:
        log.warning("request ran out of memory")
        raise gr.Error("out of memory: try a smaller photo, a smaller short side, or fewer classes",
                       title="Cannot segment this", print_exception=False) from None
    except Exception as exc:  # last resort: the page shows one line, the log the details
        if "out of memory" in str(exc).lower():  # torch.cuda.OutOfMemoryError and friends
            log.warning("request ran out of memory: %s", str(exc).splitlines()[0])
            raise gr.Error("out of memory on the device: try a smaller photo, a smaller short side, or fewer "
                           "classes", title="Cannot segment this", print_exception=False) from None
        log.exception("demo request failed")
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise gr.Error(f"{exc.__class__.__name__}: {msg} (details in the server log)",
                       title="Something went wrong", print_exception=False) from None


def _datasets_for(method: str) -> list[str]:
    try:
        found = method_class(method).datasets()
    except Exception:  # an optional dependency of that method is missing: still offer the list
        found = []
    return [NO_DATASET] + (found or list(DATASETS))


def method_defaults(method: str) -> tuple[str, str]:
    """(model, pretrained) the method uses when the boxes are blank (its constructor defaults)."""
    options = method_options(method)
    out = []
    for name in ("model", "pretrained"):
        p = options.get(name)
        out.append(p.default if p is not None and isinstance(p.default, str) else "")
    return out[0], out[1]


def _backbone_for(method: str, model: str | None, pretrained: str | None) -> tuple[str, str]:
    """The backbone boxes for ``method``: kept when they hold a backbone the user typed, the
    method's own default when blank or holding another method's default."""
    current = ((model or "").strip(), (pretrained or "").strip())
    if not current[0] or current in {method_defaults(m) for m in available_methods()}:
        return method_defaults(method)
    return current


def _on_method_change(method: str, model: str | None, pretrained: str | None) -> tuple[Any, str, str]:
    """A new method: its protocols in the dataset list, the backbone boxes as :func:`_backbone_for`."""
    return (gr.Dropdown(choices=_datasets_for(method), value=NO_DATASET), *_backbone_for(method, model, pretrained))


def _devices() -> list[str]:
    import torch

    devs = ["cpu"]
    if torch.cuda.is_available():
        devs += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devs


_UNSET: Any = object()


def build_demo(model: str | None = None, pretrained: str | None = _UNSET, device: str | None = None,
               method: str | None = None, *, config: DemoConfig | None = None,
               cache: ModelCache | None = None) -> gr.Blocks:
    """Build the page (not started: see :func:`launch`).

    Args:
        model, pretrained, device, method: defaults shown in the page (override ``config``;
            ``pretrained=None`` means random weights).
        config: every default and limit (:class:`DemoConfig`).
        cache: model cache to share between pages (default: a new one).

    Returns:
        The ``gr.Blocks`` with the queue set up (``config.concurrency`` at once, at most
        ``config.max_queue`` waiting); endpoints ``/segment`` and ``/compare``.
    """
    cfg = config or DemoConfig()
    over = {k: v for k, v in (("model", model), ("device", device), ("method", method)) if v is not None}
    if pretrained is not _UNSET:
        over["pretrained"] = pretrained
    if over:
        cfg = DemoConfig(**{**cfg.__dict__, **over})
    method_info(cfg.method)
    check_models_dir(cfg.models_dir)
    backend = DemoBackend(cfg, cache)
    methods = [(f"{m} — {method_info(m).summary}", m) for m in available_methods()]
    editable = not cfg.lock_model

    with gr.Blocks(title="ovss: open-vocabulary segmentation", analytics_enabled=False,
                   delete_cache=(1800, RESULT_MAX_AGE_S)) as demo:
        gr.Markdown("## ovss: segment anything you can name\n"
                    "Drop a photo, type the names of what you look for, press **Segment**. "
                    "Every registered method, any CLIP backbone; compare two methods in the second tab.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320):
                photo = PhotoInput(label="photo (upload, paste or drop)", type="filepath", image_mode=None,
                                   sources=["upload", "clipboard"], height=340, elem_id="ovss-image")
                photo.max_megapixels = cfg.max_megapixels
                classes = gr.Textbox(label="classes", lines=3, elem_id="ovss-classes",
                                     placeholder="cat, sofa, window\n— or one class a line, synonyms after "
                                                 "commas:\nperson, man, woman\nsky")
                with gr.Row():
                    background = gr.Textbox(label="background words (optional)", placeholder="e.g. background, wall",
                                            elem_id="ovss-background", min_width=200)
                    threshold = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="probability threshold",
                                          info="below it: background (0: the protocol's)",
                                          elem_id="ovss-threshold", min_width=200)
                method_box = gr.Dropdown(methods, value=cfg.method, label="method", elem_id="ovss-method")
                with gr.Accordion("backbone and settings", open=False):
                    with gr.Row():
                        model_box = gr.Textbox(value=cfg.model, label="model", interactive=editable,
                                               info="open_clip name (ViT-B-16)" + (
                                                   " or a model-config JSON of the models folder"
                                                   if cfg.models_dir else ""),
                                               elem_id="ovss-model")
                        pretrained_box = gr.Textbox(value=cfg.pretrained or "", label="pretrained",
                                                    interactive=editable, elem_id="ovss-pretrained",
                                                    info="tag (openai, laion2b_s34b_b88k)" + (
                                                        " or a checkpoint of the models folder"
                                                        if cfg.models_dir else ""))
                        device_box = gr.Dropdown(_devices(), value=cfg.device, label="device", allow_custom_value=True,
                                                 interactive=editable, elem_id="ovss-device")
                    dataset_box = gr.Dropdown(_datasets_for(cfg.method), value=NO_DATASET, label="dataset protocol",
                                              allow_custom_value=True,
                                              info="a benchmark's official settings and classes "
                                                   "(leave the classes empty to use its class names)",
                                              elem_id="ovss-dataset")
                    with gr.Row():
                        short_side = gr.Textbox(label=f"short side (px, at most {cfg.max_short_side})",
                                                placeholder="protocol's",
                                                elem_id="ovss-short-side")
                        crop = gr.Textbox(label="crop (px, 0: whole image)", placeholder="protocol's",
                                          elem_id="ovss-crop")
                        stride = gr.Textbox(label="stride (px)", placeholder="protocol's", elem_id="ovss-stride")
                    options = gr.Textbox(label="method options", placeholder="--gaussian-std 5 --residual false",
                                         interactive=editable, elem_id="ovss-options",
                                         info="--name value, as on the command line; "
                                              "blank boxes: the protocol's values")
                examples = example_photos()
                if examples:
                    gr.Examples(examples=examples, inputs=[photo, classes], label="example photos (scikit-image)")
            with gr.Column(scale=7, min_width=360):
                with gr.Tabs():
                    with gr.Tab("Segment", id="segment"):
                        run = gr.Button("Segment", variant="primary", elem_id="ovss-run")
                        status = gr.Markdown(elem_id="ovss-status")
                        result = gr.AnnotatedImage(label="result (hover a class in the legend)", height=460,
                                                   elem_id="ovss-result")
                        table = gr.Dataframe(label="pixel share per class", interactive=False, elem_id="ovss-share",
                                             headers=["class", "share (%)", "pixels"], max_height=260)
                        files = gr.File(label="downloads: overlay PNG, label map PNG (pixel = class index), JSON",
                                        file_count="multiple", interactive=False, elem_id="ovss-files")
                        report = gr.JSON(label="settings and report", elem_id="ovss-report")
                    with gr.Tab("Compare", id="compare"):
                        gr.Markdown("Runs the photo, classes and backbone on the left through the method on "
                                    "the left and a second one.")
                        with gr.Row():
                            method_b = gr.Dropdown(methods, value=_second(cfg.method), label="second method",
                                                   elem_id="ovss-method-b")
                            options_b = gr.Textbox(label="its options", interactive=editable,
                                                   elem_id="ovss-options-b")
                        run_b = gr.Button("Compare", variant="primary", elem_id="ovss-compare")
                        status_b = gr.Markdown(elem_id="ovss-compare-status")
                        with gr.Row():
                            result_a = gr.AnnotatedImage(label="method on the left", elem_id="ovss-result-a")
                            result_b = gr.AnnotatedImage(label="second method", elem_id="ovss-result-b")
                        table_b = gr.Dataframe(label="pixel share per class (%)", interactive=False,
                                               elem_id="ovss-compare-share")

        inputs = [photo, classes, background, threshold, method_box, model_box, pretrained_box, device_box,
                  dataset_box, short_side, crop, stride, options]
        run.click(backend.segment, inputs, [result, files, table, report, status], api_name="segment",
                  concurrency_id="ovss", concurrency_limit=cfg.concurrency)
        run_b.click(backend.compare, inputs + [method_b, options_b], [result_a, result_b, table_b, status_b],
                    api_name="compare", concurrency_id="ovss", concurrency_limit=cfg.concurrency)
        method_box.change(_on_method_change, [method_box, model_box, pretrained_box],
                          [dataset_box, model_box, pretrained_box], api_visibility="private", queue=False)
    demo.queue(max_size=cfg.max_queue, default_concurrency_limit=cfg.concurrency)
    demo.ovss_backend = backend  # type: ignore[attr-defined]  # for tests and embedding
    return demo


def _second(method: str) -> str:
    for m in ("clearclip", "naclip", "sclip"):
        if m != method and m in available_methods():
            return m
    return method


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = False) -> tuple[str, str | None]:
    """Start the server in a background thread; return (local URL, share URL or None).

    ``block=True`` then waits until Ctrl+C. Listens on loopback unless ``host`` says otherwise.
    """
    _, local_url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
        ssr_mode=False, css=CSS, max_file_size="200mb", allowed_paths=[str(WORK_DIR)],
        footer_links=["api"], show_error=False)
    if block:
        demo.block_thread()
    return local_url, share_url
