"""PnP-OVSS (Luo et al., CVPR 2024): segmentation from the cross-attention of BLIP's image-text
matching model, sharpened with GradCAM and widened with Salience DropOut.

Exact to the official code (letitiabanana/PnP-OVSS at e439962, ``PnP_OVSS_0514_updated_segmentation.py``
for VOC / Pascal-Context / ADE20K, ``PnP_OVSS_0514_updated_segmentation_coco.py`` for COCO; LAVIS
with the repository's "Files to replace for BLIP"), checked step by step on
``shared/parity/pnp_ovss``. One image is one batch of one: the official runs use batches of 35 padded
captions, and padding changes the numbers (the ``[3:-1]`` slice of the salience sum then includes
the ``[SEP]`` of shorter captions), so a batch of one is the well-defined case.

Pipeline of one image (``S`` input size, ``g = S // 16``, ``K`` classes in the caption):

1. input: square bicubic resize to S x S (PIL), ToTensor, CLIP mean/std (Dataset.py transform);
2. caption ``"A picture of " + " ".join(class names)``, token 0 replaced by ``[ENC]``;
3. GradCAM (``blip_image_text_matching.py::compute_gradcam_ensemble``): backward of the raw ITM
   logit ``out[:, 1].sum()``; for the cross-attention of text layer ``layer`` (1-based, official
   ``--max_att_block_num 8``) and head ``head`` (``--prune_att_head 9``):
   ``A[..., 1:] * clamp(dA[..., 1:], min=0)`` (image CLS column dropped), text row 0 dropped;
4. Salience DropOut (``Inference_BLIP_filteredcaption``, ``--drop_iter 4``): after pass k the 10
   most salient patches (GradCAM summed over the class tokens, patches already dropped set to 0,
   ``numpy.argsort(...)[-10:]``) are zeroed in the normalised input of every later pass; each pass's
   token maps get the patches dropped before it zeroed; aggregate ``2*Z0 + Z1 + Z2 + Z3``;
5. token merge (``Mean_over_filtered_label_tokens``): word pieces of a class averaged, except that
   a multi-piece *last* class keeps the sum (official quirk, protocols only);
6. per-class min-max on the g x g map, mask ``>= 0.15``, raw map kept under the mask; bilinear
   (``align_corners=True``) to the photo's size; COCO and the first-pass path then rescale each
   channel to [0, 1] (``Scale_0_1``);
7. background channel ``(max over classes == 0)`` prepended: VOC and COCO-Object always,
   Pascal-Context / ADE20K / COCO-Stuff only when the caption has fewer than 3 classes;
8. Gaussian blur, sigma ``0.05 * max(H, W)`` (scipy), per-channel min-max;
9. DenseCRF (pydensecrf) on the softmax over channels: 10 iterations, Gaussian sxy 3 compat 7,
   bilateral sxy 50 srgb 5 compat 10, the photo as RGB uint8; argmax; channel -> dataset id.

``SegmentationResult.scores`` are the CRF probabilities (the output of the last step that is on)
scattered onto the vocabulary's channels (classes not in the caption get 0); ``labels`` the label
map. Dataset protocols keep the official quirks (noted at each place with file and line of the
official script); free-form use (``classes=`` and no ``dataset``) averages every class's word pieces,
relabels plainly and never produces NaN.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import CLIP_MEAN, CLIP_STD
from ..errors import InputError, ModelLoadError, did_you_mean
from ..imageio import ImageInput, check_pixels, load_image
from ..options import Count, Fraction, Positive, PositiveInt, Range
from ..protocols import Protocol, ProtocolTable
from ..segmenter import Capabilities, Segmentation, Segmenter, square_side
from ..vocabulary import Vocabulary

OFFICIAL_MAIN = "PnP_OVSS_0514_updated_segmentation.py"
OFFICIAL_COCO = "PnP_OVSS_0514_updated_segmentation_coco.py"

# ----------------------------------------------------------------------------------------------
# Dataset protocols: class names exactly as the official hard-coded dicts / COCO json give them.
# ----------------------------------------------------------------------------------------------

_VOC = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table",
        "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

_CONTEXT59 = ("aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
              "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
              "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
              "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
              "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
              "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
              "tvmonitor", "wall", "water", "window", "wood")

_ADE20K = ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
           "cabinet", "sidewalk", "person", "ground", "door", "table", "mountain", "plant", "curtain",
           "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
           "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
           "railing", "cushion", "base", "box", "pillar", "signboard", "chest of drawers", "counter",
           "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
           "runway", "case", "billiard table", "pillow", "screen", "stairway", "river", "bridge",
           "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
           "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
           "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
           "sunshade", "streetlight", "booth", "television receiver", "airplane", "dirt track",
           "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
           "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "toy",
           "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "motorbike",
           "cradle", "oven", "ball", "food", "stair", "tank", "marque", "microwave", "pot", "animal",
           "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
           "trafficlight", "tray", "trash can", "fan", "pier", "crt screen", "plate", "monitor",
           "bulletinboard", "shower", "radiator", "glass", "clock", "flag")

# COCO instances_val2017.json categories (name, id), in file order.
_COCO_THINGS = (
    ("person", 1), ("bicycle", 2), ("car", 3), ("motorcycle", 4), ("airplane", 5), ("bus", 6),
    ("train", 7), ("truck", 8), ("boat", 9), ("traffic light", 10), ("fire hydrant", 11),
    ("stop sign", 13), ("parking meter", 14), ("bench", 15), ("bird", 16), ("cat", 17), ("dog", 18),
    ("horse", 19), ("sheep", 20), ("cow", 21), ("elephant", 22), ("bear", 23), ("zebra", 24),
    ("giraffe", 25), ("backpack", 27), ("umbrella", 28), ("handbag", 31), ("tie", 32),
    ("suitcase", 33), ("frisbee", 34), ("skis", 35), ("snowboard", 36), ("sports ball", 37),
    ("kite", 38), ("baseball bat", 39), ("baseball glove", 40), ("skateboard", 41),
    ("surfboard", 42), ("tennis racket", 43), ("bottle", 44), ("wine glass", 46), ("cup", 47),
    ("fork", 48), ("knife", 49), ("spoon", 50), ("bowl", 51), ("banana", 52), ("apple", 53),
    ("sandwich", 54), ("orange", 55), ("broccoli", 56), ("carrot", 57), ("hot dog", 58),
    ("pizza", 59), ("donut", 60), ("cake", 61), ("chair", 62), ("couch", 63), ("potted plant", 64),
    ("bed", 65), ("dining table", 67), ("toilet", 70), ("tv", 72), ("laptop", 73), ("mouse", 74),
    ("remote", 75), ("keyboard", 76), ("cell phone", 77), ("microwave", 78), ("oven", 79),
    ("toaster", 80), ("sink", 81), ("refrigerator", 82), ("book", 84), ("clock", 85), ("vase", 86),
    ("scissors", 87), ("teddy bear", 88), ("hair drier", 89), ("toothbrush", 90))

# COCO stuff_val2017.json categories: ids 92..182 in this order, then 183 "other".
_COCO_STUFF_NAMES = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops",
    "window-blind", "window-other", "wood", "other")
_COCO_STUFF = tuple((n, 92 + i) for i, n in enumerate(_COCO_STUFF_NAMES))


def _despace(name: str) -> str:
    """Official caption spelling of a COCO / ADE name: spaces (and for COCO hyphens) removed
    (coco script ``main``: ``"".join("".join(name.split(" ")).split("-"))``;
    ``Load_datasets.py::load_ade20k``: ``"".join(name.split(" "))``)."""
    return "".join("".join(name.split(" ")).split("-"))


@dataclass(frozen=True)
class PnPProtocol(Protocol):
    """One dataset protocol of the official code, and the label space of the ovss dataset it
    serves (``ovss.data`` names and class order, which ``ovss eval`` scores).

    Attributes:
        data_type: the official ``--data_type``.
        script: the official script that runs it.
        caption_names: (K,) class names as written into the caption (official ``nms``).
        display_names: (K,) readable class names (the dataset's own names).
        dataset_ids: (K,) official label id of each class (0 is background / unlabeled / other).
        background_rule: ``"always"`` or ``"fewer_than_3"`` (official: a background channel only when
            the caption has fewer than 3 classes).
        rescale_after_upsample: ``Scale_0_1`` after upsampling in the Salience-DropOut path (COCO
            script) or not (main script, line ``# Blip_final_pred_drop = Scale_0_1(...)``).
        gpt4o_file: the official GPT-4o class-list JSON of the dataset.
        gpt4o_ids: ``"position"``: JSON ids are 1-based positions in ``nms`` (main script);
            ``"coco"``: COCO category ids looked up in the category list (coco script).
        gpt4o_empty_class: the id the official code falls back to for an empty GPT-4o answer.
        label_names: (C,) class names of the ovss label space (result ``classes``).
        label_of_id: official id -> index in ``label_names`` (ids without one, e.g. background on
            Context59 / ADE20K, take the best-scoring class of the label space).
        background_index: index of the background class in ``label_names``, or None.
    """

    data_type: str = ""
    script: str = ""
    caption_names: tuple[str, ...] = ()
    display_names: tuple[str, ...] = ()
    dataset_ids: tuple[int, ...] = ()
    background_rule: str = "always"
    rescale_after_upsample: bool = False
    gpt4o_file: str = ""
    gpt4o_ids: str = "position"
    gpt4o_empty_class: int = 1
    label_names: tuple[str, ...] = ()
    label_of_id: dict[int, int] = field(default_factory=dict, hash=False, compare=False)
    background_index: int | None = None

    @property
    def name(self) -> str | None:
        return self.dataset

    def vocabulary(self) -> Vocabulary | None:
        """The label space of the dataset (``label_names``), one query each."""
        if self.dataset is None:
            return None
        return Vocabulary(self.label_names, tuple((n,) for n in self.label_names), self.background_index,
                          official=True)


def _protocol(name: str, data_type: str, captions: Sequence[str], display: Sequence[str], ids: Sequence[int],
              rule: str, gpt4o: str, label_ids: Sequence[int], background: str | None) -> PnPProtocol:
    coco = data_type.startswith("coco")
    names = ([background] if background else []) + [display[list(ids).index(i)] for i in label_ids]
    label_of_id = {i: n + (1 if background else 0) for n, i in enumerate(label_ids)}
    if background:
        label_of_id[0] = 0
    return PnPProtocol(
        dataset=name, short_side=336, max_long_side=336, data_type=data_type,
        script=OFFICIAL_COCO if coco else OFFICIAL_MAIN, caption_names=tuple(captions), display_names=tuple(display),
        dataset_ids=tuple(ids), background_rule=rule, rescale_after_upsample=coco,
        gpt4o_file=f"GPT4o_classification/{gpt4o}_classification_noboundary.json",
        gpt4o_ids="coco" if coco else "position", gpt4o_empty_class=1, label_names=tuple(names),
        label_of_id=label_of_id, background_index=0 if background else None,
        source=(f"{OFFICIAL_COCO}::main (COCO json categories, nms despaced), save_img_union_attention, "
         "Load_predicted_classes" if coco else
         f"Load_datasets.py::load_{'voc' if data_type == 'voc' else data_type}; {OFFICIAL_MAIN}::"
         "save_img_union_attention, Load_predicted_classes") + f" (data_type {data_type!r})")


_THING_IDS = tuple(i for _, i in _COCO_THINGS)
_STUFF_IDS = tuple(i for _, i in _COCO_STUFF)
PROTOCOLS: dict[str, PnPProtocol] = {
    # official label ids = ovss indices (background 0)
    "voc21": _protocol("voc21", "voc", _VOC, _VOC, range(1, 21), "always", "voc", range(1, 21), "background"),
    # official psc scoring: 60 labels with background 0 (ovss context60); context59 ignores background
    "context60": _protocol("context60", "psc", _CONTEXT59, _CONTEXT59, range(1, 60), "fewer_than_3", "psc",
                           range(1, 60), "background"),
    "context59": _protocol("context59", "psc", _CONTEXT59, _CONTEXT59, range(1, 60), "fewer_than_3", "psc",
                           range(1, 60), None),
    "ade20k": _protocol("ade20k", "ade20k", tuple(_despace(n) for n in _ADE20K), _ADE20K, range(1, 151),
                        "fewer_than_3", "ade20k", range(1, 151), None),
    "coco_object": _protocol("coco_object", "coco_object", tuple(_despace(n) for n, _ in _COCO_THINGS),
                             tuple(n for n, _ in _COCO_THINGS), _THING_IDS, "always", "coco_object",
                             _THING_IDS, "background"),
    # ovss coco_stuff: the 171 classes (80 things + 91 stuff) without COCO's "other" (183)
    "coco_stuff": _protocol("coco_stuff", "coco_stuff", tuple(_despace(n) for n, _ in _COCO_THINGS + _COCO_STUFF),
                            tuple(n for n, _ in _COCO_THINGS + _COCO_STUFF), _THING_IDS + _STUFF_IDS,
                            "fewer_than_3", "coco_stuff", _THING_IDS + _STUFF_IDS[:-1], None),
}
PNP_PROTOCOLS = ProtocolTable("pnp_ovss", PROTOCOLS, free=PnPProtocol(
    dataset=None, short_side=336, max_long_side=336, source=f"{OFFICIAL_MAIN} settings (free-form: plain merge, "
    "no official quirks)"), aliases={"psc": "context59", "context": "context59", "coco": "coco_object"})


def get_protocol(name: str) -> PnPProtocol:
    """The protocol called ``name`` (or an alias such as ``psc`` or ``voc``).

    Raises:
        UnknownNameError: no such protocol.
    """
    return PNP_PROTOCOLS.get(name)


# ----------------------------------------------------------------------------------------------
# Official GPT-4o class lists
# ----------------------------------------------------------------------------------------------

def parse_gpt4o_entry(entry: str, protocol: PnPProtocol, min_prob: int = 70) -> list[int]:
    """Class positions (0-based, into ``protocol.caption_names``) that one official GPT-4o answer
    selects, in the answer's order.

    The answer is a string like ``"[2: 'bicycle', 15: 'person'], [100, 100]"``. Parsing follows
    ``Load_predicted_classes`` (main script for voc/psc/ade, coco script for COCO): the same
    ``replace`` chain and ``strip("][").split("], [")``, probabilities read as
    ``int(p.split(":")[-1].split("%")[0])``, classes kept when ``prob > min_prob`` (70); an empty
    answer selects class id 1, an answer that keeps nothing selects the first class (position 0).
    An answer without probabilities keeps every class (coco script; the main script stops in a
    debugger there); an id that does not parse or is unknown is skipped (coco script; the main
    script would stop or index ``nms[id - 1]``).
    """
    parts = (entry.replace("]\n\n[", "], [").replace("],\n\n[", "], [").replace("], \n[", "], [ ")
             .replace("],\n[", "], [ ").replace("]\n[", "], [ ").strip("][").split("], ["))
    cls_items = parts[0].split(",")
    if len(parts) == 1 and parts[0] == "":
        cls_items = [f"{protocol.gpt4o_empty_class}: ''"]
        probs = [100]
    elif len(parts) == 1:
        probs = [100] * len(cls_items)
    else:
        probs = []
        for p in parts[1].split(","):
            try:
                probs.append(int(p.split(":")[-1].split("%")[0]))
            except ValueError:
                probs.append(0)
    ids: list[int] = []
    for i, prob in enumerate(probs[:len(cls_items)]):
        if prob > min_prob:
            try:
                ids.append(int(cls_items[i].split(":")[0]))
            except ValueError:
                continue
    positions: list[int] = []
    for value in ids:
        if protocol.gpt4o_ids == "coco":
            if value in protocol.dataset_ids:
                positions.append(protocol.dataset_ids.index(value))
        elif 1 <= value <= len(protocol.caption_names):
            positions.append(value - 1)
    return positions or [0]


def load_class_lists(source: str | Path | dict[str, str]) -> dict[str, str]:
    """Read an official GPT-4o classification JSON (image id -> answer string).

    Raises:
        InputError: missing file or not a JSON object of strings.
    """
    if isinstance(source, dict):
        data: Any = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"class-list file not found: {path} (expected the official "
                             "GPT4o_classification/<dataset>_classification_noboundary.json)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"class-list file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InputError("a per-image class list must map image ids to GPT-4o answer strings, "
                         "e.g. {\"2007_000129\": \"[2: 'bicycle', 15: 'person'], [100, 100]\"}")
    return {str(k): v for k, v in data.items()}


def lookup_image_id(lists: dict[str, str], image_id: str) -> str | None:
    """The key of ``image_id`` in an official JSON: the file stem itself, or the official key forms
    (COCO ``str(int(id)).rjust(12, '0')``, ADE ``"ADE_val_" + id.rjust(8, '0')``)."""
    cands = [image_id]
    if image_id.isdigit():
        cands += [str(int(image_id)).rjust(12, "0"), "ADE_val_" + image_id.rjust(8, "0")]
    for c in cands:
        if c in lists:
            return c
    return None


# ----------------------------------------------------------------------------------------------
# The arithmetic (pure functions; shapes in the docstrings)
# ----------------------------------------------------------------------------------------------

def preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, S, S) float32: the official dataset transform
    ``Resize((S, S), BICUBIC)`` on the PIL image (aspect not kept), ``ToTensor``, ``Normalize``
    with the CLIP mean/std (``Dataset.py``; bitwise equal to torchvision)."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).unsqueeze(0)


def gradcam_tokens(blip: Any, pixel_values: torch.Tensor, input_ids: torch.Tensor, layer: int,
                   head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One GradCAM pass (``compute_gradcam_ensemble``).

    Args:
        blip: :class:`ovss.backbones.blip.LoadedBLIP`.
        pixel_values: (1, 3, S, S).
        input_ids: (1, L) caption ids with ``[CLS]`` first.
        layer: 0-based text layer (official ``max_att_block_num - 1``).
        head: attention head.

    Returns:
        itm_logits (1, 2) and the GradCAM (L-1, g, g) of text tokens 1..L-1 on CPU, float32:
        ``A[..., 1:] * clamp(dA[..., 1:], min=0)`` of the cross-attention probabilities A and their
        gradient dA for the loss ``itm_logits[:, 1].sum()``.
    """
    from ..backbones.blip import CrossAttentionCapture, inference_with_grad, itm_forward

    g = blip.grid
    with inference_with_grad(), CrossAttentionCapture(blip.model, layer) as cap:
        # clones: normal tensors even when the caller runs under torch.inference_mode()
        out = itm_forward(blip, pixel_values.clone(), input_ids.clone())
        out[:, 1].sum().backward()
        probs, grads = cap.probs[layer].detach(), cap.grad(layer).detach()
    cam = probs[0, head, :, 1:].reshape(-1, g, g) * grads[0, head, :, 1:].clamp(min=0).reshape(-1, g, g)
    return out.detach().cpu(), cam[1:].cpu()


def drop_patches(pixel_values: torch.Tensor, patches: Sequence[int], grid: int, patch: int) -> torch.Tensor:
    """Copy of (1, 3, S, S) ``pixel_values`` with each flat patch index ``row * grid + col`` set to
    0 over ``patch`` x ``patch`` pixels in all channels (0 in the normalised tensor: the mean colour)."""
    out = pixel_values.clone()
    for p in patches:
        r, c = (int(p) // grid) * patch, (int(p) % grid) * patch
        out[:, :, r:r + patch, c:c + patch] = 0
    return out


def zero_patches(maps: torch.Tensor, patches: Sequence[int], grid: int) -> torch.Tensor:
    """Copy of (T, g, g) ``maps`` with the given flat patch indices set to 0 in every map."""
    out = maps.clone()
    for p in patches:
        out[:, int(p) // grid, int(p) % grid] = 0
    return out


def select_salient_patches(cam_tokens: torch.Tensor, dropped: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` patches to drop next (ascending ``numpy.argsort`` order, as the official code).

    ``cam_tokens`` (L-1, g, g) is one pass's GradCAM; salience = sum over the class tokens
    ``cam_tokens[3:-1]`` (without "a picture of" and [SEP]), flattened row-major, patches already
    dropped set to 0. Returns (salience (g*g,) float32, indices (n,) int64) as a tuple."""
    salience = cam_tokens[3:-1].sum(dim=0).flatten().numpy().copy()
    for idx in dropped:
        salience[int(idx)] = 0
    return salience, np.argsort(salience)[-n:]


def caption_pieces(tokenizer: Any, input_ids: torch.Tensor) -> list[str]:
    """WordPieces of the class part of a caption: tokens after ``[CLS] a picture of`` up to [SEP]
    (official: decode each id of ``input_ids[1:]`` until id 102, then drop 3)."""
    pieces = []
    for tid in input_ids[0, 1:].tolist():
        if tid == tokenizer.sep_token_id:
            break
        pieces.append(tokenizer.convert_ids_to_tokens(tid))
    return pieces[3:]


def merge_official(cam_tokens: torch.Tensor, pieces: Sequence[str], n_classes: int) -> torch.Tensor:
    """Per-class maps (K, g, g) from token maps (L-1, g, g), as ``Mean_over_filtered_label_tokens``.

    If the number of pieces equals K the class rows are taken as they are. Otherwise a piece
    without ``##`` starts a class, ``##`` pieces are added to it and the sum is divided by the piece
    count only when another piece follows: a multi-piece last class keeps the sum.

    Raises:
        InputError: the pieces form more than K words (a class name with a space).
    """
    rows = cam_tokens[3:-1]
    if len(pieces) == n_classes:
        return rows[:n_classes].clone()
    out = torch.zeros((n_classes,) + tuple(rows.shape[1:]), dtype=rows.dtype)
    ind_class, length = 0, 1
    n = len(pieces)
    for i, piece in enumerate(pieces):
        nxt_is_word = i + 1 < n and not pieces[i + 1].startswith("##")
        if ind_class >= n_classes:
            raise InputError("the caption's word pieces form more words than there are classes: "
                             "the official merge needs class names without spaces")
        if not piece.startswith("##"):
            out[ind_class] = rows[i]
            if nxt_is_word:
                ind_class += 1
            length = 1
        else:
            length += 1
            out[ind_class] = out[ind_class] + rows[i]
            if nxt_is_word:
                out[ind_class] /= length
                ind_class += 1
    return out


def merge_mean(cam_tokens: torch.Tensor, piece_counts: Sequence[int]) -> torch.Tensor:
    """Per-class maps (K, g, g): the mean of each class's ``piece_counts[k]`` consecutive token maps
    (free-form use: a multi-word class is one class)."""
    rows = cam_tokens[3:-1]
    out, start = [], 0
    for n in piece_counts:
        out.append(rows[start:start + n].sum(dim=0) / n)
        start += n
    return torch.stack(out)


def threshold_maps(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """(K, g, g) -> (K, g, g): ``maps * ((m - min) / (max - min) >= threshold)`` per class (the raw
    map kept where its min-max value reaches the threshold; a constant map becomes 0)."""
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    return maps * ((maps - lo) / (hi - lo) >= threshold)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, g, g) -> (K, H, W): bilinear, ``align_corners=True`` (official resize to the GT size)."""
    return F.interpolate(maps.unsqueeze(0), size=size, mode="bilinear", align_corners=True)[0]


def scale_0_1(maps: torch.Tensor, official: bool = True) -> torch.Tensor:
    """Per-channel ``x -= x.min(); x /= x.max()`` (official ``Scale_0_1``; with one channel the
    official function returns the map unchanged because ``squeeze()`` made it 2-D). ``official=False``
    leaves an all-zero channel at 0 instead of NaN."""
    if maps.shape[0] == 1 and official:
        return maps
    flat = maps.reshape(maps.shape[0], -1)
    flat = flat - flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    if not official:
        hi = torch.where(hi > 0, hi, torch.ones_like(hi))
    return (flat / hi).reshape(maps.shape)


def add_background(maps: torch.Tensor) -> torch.Tensor:
    """(K, H, W) -> (K+1, H, W): channel 0 = 1.0 where every class map is exactly 0."""
    return torch.cat(((maps.amax(dim=0, keepdim=True) == 0).to(maps.dtype), maps), dim=0)


def blur_maps(maps: torch.Tensor, scale: float = 0.05, official: bool = True) -> torch.Tensor:
    """(C, H, W) -> (C, H, W): ``scipy.ndimage.gaussian_filter`` (sigma ``scale * max(H, W)``,
    mode reflect, truncate 4) of each float32 channel, then ``x -= x.min(); x /= x.max()``
    (official ``blurring``). A channel constant after blurring is NaN in the official code;
    ``official=False`` makes it 0."""
    from scipy.ndimage import gaussian_filter

    sigma = scale * max(maps.shape[1], maps.shape[2])
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for ch in maps.numpy():
            b = gaussian_filter(np.ascontiguousarray(ch, dtype=np.float32), sigma)
            b = b - b.min()
            top = b.max()
            b = b / top if (official or top > 0) else np.zeros_like(b)
            out.append(b)
    return torch.from_numpy(np.stack(out))


def dense_crf(scores: torch.Tensor, image: np.ndarray, iterations: int = 10) -> np.ndarray:
    """DenseCRF of the official ``densecrf``: unary ``-log(clip(softmax over channels, 1e-5))``
    (pydensecrf ``unary_from_softmax``), Gaussian pairwise sxy 3 compat 7, bilateral sxy 50 srgb 5
    compat 10 on ``image`` (H, W, 3) uint8 RGB, ``iterations`` mean-field steps.

    Returns:
        Q (C, H, W) float32, the CRF marginals.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    probs = F.softmax(scores, dim=0).numpy()
    c, h, w = probs.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        unary = np.ascontiguousarray(unary_from_softmax(probs))
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=3, compat=7)
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image).copy(), compat=10)
    q = d.inference(iterations)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def relabel_official(channels: np.ndarray, ids: Sequence[int], offset: int) -> np.ndarray:
    """Channel map -> dataset ids as the official code does: in place, from the last class to the
    first, ``pred[pred == i + offset] = ids[i]`` (offset 1 with a background channel, 0 without).
    An unsorted class list can relabel a pixel twice (official quirk, kept)."""
    pred = channels.astype(np.int64).copy()
    for i in range(len(ids) - 1, -1, -1):
        pred[pred == i + offset] = ids[i]
    return pred


# ----------------------------------------------------------------------------------------------
# The segmenter
# ----------------------------------------------------------------------------------------------

@dataclass
class PnPOutput:
    """Every intermediate of one image (for tests, debugging and the tuner).

    Attributes (K caption classes, C channels, g patch grid, P passes, L caption tokens):
        caption, input_ids (1, L), pieces: the caption, its ids and its class WordPieces.
        caption_positions: (K,) position of each caption class in the segmenter's vocabulary.
        input: (1, 3, S, S) pass-0 model input.
        itm_logits: (P, 2); gradcam_tokens: (P, L-1, g, g) before zeroing; salience: (P, g*g);
        dropped_patches: (P, n) (the last row is computed and unused, as in the official code).
        gradcam_iter: (P, K, g, g); gradcam_first, gradcam_agg: (K, g, g).
        seg_maps: (K, H, W) after threshold + upsampling (+ rescale where the path does it).
        background: True when a background channel is channel 0.
        final_maps: (C, H, W) after the background channel (input of blur / CRF).
        blur_maps: (C, H, W) or None; crf_probs: (C, H, W) or None.
        pred_channels: (H, W) argmax channel; official_nan: the official code would have met NaN.
    """

    caption: str
    input_ids: torch.Tensor
    pieces: list[str]
    caption_positions: list[int]
    input: torch.Tensor
    itm_logits: torch.Tensor
    gradcam_tokens: torch.Tensor
    salience: np.ndarray
    dropped_patches: np.ndarray
    gradcam_iter: torch.Tensor
    gradcam_first: torch.Tensor
    gradcam_agg: torch.Tensor
    seg_maps: torch.Tensor
    background: bool
    final_maps: torch.Tensor
    blur_maps: torch.Tensor | None
    crf_probs: torch.Tensor | None
    pred_channels: np.ndarray
    official_nan: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


class PnPOVSS(Segmenter):
    """PnP-OVSS on a BLIP ITM model (transformers ``BlipForImageTextRetrieval``).

    Args:
        model: hub name or a local directory. The default ``Salesforce/blip-itm-large-flickr`` is the
            paper's: the official ``blip_itm_large.yaml`` loads LAVIS ``model_large_retrieval_flickr.pth``;
            ``Salesforce/blip-itm-large-coco`` is the COCO-finetuned variant.
        pretrained: a local BLIP ITM directory (then used instead of ``model``); anything else
            (e.g. an open_clip tag) is ignored: BLIP weights come with ``model``.
        image_size: square input size S (official 336; the tiny parity model uses 224); ``short_side``
            (capped at ``max_long_side``) sets it too.
        layer: 1-based text layer whose cross-attention is used (official ``--max_att_block_num 8``).
        head: attention head (official ``--prune_att_head 9``).
        salience_dropout: False runs one pass and the official first-pass path ("filtered_caption":
            ``Scale_0_1`` after upsampling).
        drop_iter: passes of Salience DropOut (official 4).
        drop_patches: patches dropped after each pass (official hard-coded 10).
        threshold: min-max threshold on the patch maps (official 0.15); None switches it off.
        background_rule: ``"always"``, ``"fewer_than_3"`` or ``"never"``; None takes the protocol's
            (free-form: ``"always"``).
        blur: Gaussian blur + per-channel min-max (official on).
        blur_scale: blur sigma as a fraction of the longer image side (official 0.05).
        crf: DenseCRF (official on; needs ``pydensecrf2``).
        crf_iterations: mean-field iterations (official 10).
        merge: ``"official"`` (pieces averaged, a multi-piece last class summed) or ``"mean"``;
            None: official with a dataset protocol, mean for free-form use.
        rescale_after_upsample: ``Scale_0_1`` after upsampling in the Salience-DropOut path; None
            takes the protocol's (COCO script yes, main script no; free-form no).
        class_lists: official GPT-4o JSON (image id -> answer) or its path: each image gets the
            classes listed for its id (the file stem, or ``predict(..., image_id=)``); None: every
            class of the protocol goes into the caption.
        gpt4o_min_prob: GPT-4o classes kept when their stated probability exceeds this (official 70).
        caption_order: ``"given"`` (official: the caption lists the classes in the order given, and
            BLIP's text encoder sees them in that order, so the scores of a class depend on the order
            and on the other classes: ``PnP_OVSS_0514_updated_segmentation.py::save_img_union_attention``,
            ``"A picture of " + " ".join(nms)``) or ``"sorted"`` (the caption lists them in alphabetical
            order, so permuting the class list permutes the score channels and nothing else).
        **common: dataset (``voc21``, ``context59``/``psc``, ``context60``, ``ade20k``, ``coco_object``,
            ``coco_stuff``, or None for free-form use with ``classes=``), device, short_side,
            max_long_side, classes: see :class:`ovss.segmenter.Segmenter`.
    """

    method: ClassVar[str] = "pnp_ovss"
    capabilities = Capabilities(prob_threshold=True, image_id=True, decoder="pillow", class_order_invariant=False,
                                order_invariant_options=(("caption_order", "sorted"),),
                                score_kind="probability", needs_grad=True)
    protocols = PNP_PROTOCOLS

    def __init__(self, model: str = "Salesforce/blip-itm-large-flickr", pretrained: str | None = None, *,
                 image_size: PositiveInt = 336, layer: PositiveInt = 8, head: Count = 9,
                 salience_dropout: bool = True, drop_iter: PositiveInt = 4, drop_patches: PositiveInt = 10,
                 threshold: Fraction | None = 0.15,
                 background_rule: Literal["always", "fewer_than_3", "never"] | None = None, blur: bool = True,
                 blur_scale: Positive = 0.05, crf: bool = True, crf_iterations: Count = 10,
                 merge: Literal["official", "mean"] | None = None, rescale_after_upsample: bool | None = None,
                 class_lists: str | dict[str, str] | None = None, gpt4o_min_prob: Annotated[int, Range(0, 100)] = 70,
                 caption_order: Literal["given", "sorted"] = "given", **common: Any) -> None:
        super().__init__(**common)
        image_size = square_side(image_size, common.get("short_side"), common.get("max_long_side"))
        if pretrained and Path(pretrained).is_dir():
            model = pretrained  # a local BLIP directory given the CLIP way; CLIP tags ("openai") are ignored
        if background_rule not in (None, "always", "fewer_than_3", "never"):
            raise InputError(f"background_rule must be 'always', 'fewer_than_3' or 'never', got {background_rule!r}")
        if merge not in (None, "official", "mean"):
            raise InputError(f"merge must be 'official' or 'mean', got {merge!r}")
        if caption_order not in ("given", "sorted"):
            raise InputError(f"caption_order must be 'given' or 'sorted', got {caption_order!r}")
        if drop_iter < 1 or drop_patches < 1:
            raise InputError("drop_iter and drop_patches must be at least 1")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise InputError(f"threshold must be in [0, 1] (official 0.15), got {threshold}")
        if blur_scale <= 0:
            raise InputError(f"blur_scale must be > 0 (official 0.05), got {blur_scale}")
        if crf:
            try:
                import pydensecrf.densecrf  # noqa: F401
            except ImportError:
                raise ModelLoadError("the dense CRF of PnP-OVSS needs pydensecrf: `pip install "
                                     "pydensecrf2`, or pass crf=False") from None
        from ..backbones.blip import load_blip_itm

        self.blip = load_blip_itm(model, image_size=image_size, device=self.device)
        if not 1 <= layer <= self.blip.num_text_layers:
            raise InputError(f"layer must be in 1..{self.blip.num_text_layers} (1-based), got {layer}")
        if not 0 <= head < self.blip.num_heads:
            raise InputError(f"head must be in 0..{self.blip.num_heads - 1}, got {head}")
        self.model_name = model
        self.image_size = int(image_size)
        self.layer, self.head = int(layer), int(head)
        self.drop_iter = int(drop_iter) if salience_dropout else 1
        self.drop_patches = int(drop_patches)
        self.threshold = None if threshold is None else float(threshold)
        self.blur, self.blur_scale = bool(blur), float(blur_scale)
        self.crf, self.crf_iterations = bool(crf), int(crf_iterations)
        self.official = self.dataset is not None
        self.background_rule = background_rule or (self.protocol.background_rule if self.official else "always")
        self.merge = merge or ("official" if self.official else "mean")
        self.rescale_after_upsample = (rescale_after_upsample if rescale_after_upsample is not None
                                       else bool(self.official and self.protocol.rescale_after_upsample))
        self.class_lists = load_class_lists(class_lists) if class_lists else None
        if self.class_lists is not None and not self.official:
            raise InputError("class_lists (GPT-4o per-image classes) need a dataset protocol: pass dataset=")
        self.gpt4o_min_prob = int(gpt4o_min_prob)
        self.caption_order = caption_order

    def read_image(self, image: ImageInput) -> np.ndarray:
        """Files decoded with PIL like the official ``Image.open(path).convert('RGB')`` (with the EXIF
        orientation in free-form use only); at least 2 x 2 pixels."""
        return _read_rgb(image, exif=not self.official)[0]

    # -- vocabulary ----------------------------------------------------------------------------

    def caption_classes(self, vocab: Vocabulary) -> tuple[list[str], list[str], list[int]]:
        """(result class names, caption names of the caption classes, their positions)."""
        p = self.protocol
        if self.official:
            names = list(p.label_names)
            if vocab.official:
                return names, list(p.caption_names), list(range(len(p.caption_names)))
            lookup = {_despace(n).lower(): i for i, n in enumerate(p.caption_names)}
            lookup.update({_despace(n).lower(): i for i, n in enumerate(p.display_names)})
            skip = {"background", "unlabeled", "other"} - {_despace(n).lower() for n in p.caption_names}
            pos = []
            for n in vocab.names:
                key = _despace(n).lower()
                if key in skip:
                    continue  # a background entry of a class file: the protocol has its own rule
                if key not in lookup:
                    raise InputError(f"class {n!r} is not in the {p.dataset} protocol."
                                     f"{did_you_mean(n, list(p.display_names))} With dataset= the "
                                     "classes select among the dataset's classes; drop dataset= for free-form use")
                pos.append(lookup[key])
            if not pos:
                raise InputError("the class list holds only a background entry: give at least one class")
            return names, [p.caption_names[i] for i in pos], pos
        if vocab.background is not None:
            vocab = Vocabulary(tuple(n for i, n in enumerate(vocab.names) if i != vocab.background),
                               tuple(q for i, q in enumerate(vocab.queries) if i != vocab.background))
        names = list(vocab.names)
        bg = [] if self.background_rule == "never" else ["background"]
        return bg + names, names, list(range(len(names)))

    # -- the pipeline ----------------------------------------------------------------------------

    def run_pipeline(self, rgb: np.ndarray, vocab: Vocabulary, image_id: str | None = None
                     ) -> tuple[PnPOutput, list[str]]:
        """Run the whole pipeline on one decoded image and keep every intermediate.

        Returns:
            (intermediates, result class names).

        Raises:
            InputError: bad classes, a caption longer than the model accepts, or an image id missing
                from ``class_lists``.
        """
        names, cap_names, positions = self.caption_classes(vocab)
        if vocab.official and self.class_lists is not None:
            found = lookup_image_id(self.class_lists, image_id) if image_id else None
            if found is None:
                raise InputError(f"image id {image_id!r} is not in the class lists: pass image_id= or "
                                 "classes=, or name the file as in the dataset")
            positions = parse_gpt4o_entry(self.class_lists[found], self.protocol, self.gpt4o_min_prob)
            cap_names = [self.protocol.caption_names[i] for i in positions]
        if self.caption_order == "sorted":
            order = sorted(range(len(cap_names)), key=lambda i: (cap_names[i].lower(), positions[i]))
            cap_names, positions = [cap_names[i] for i in order], [positions[i] for i in order]
        tok = self.blip.tokenizer
        caption = "A picture of " + " ".join(cap_names)
        ids = torch.tensor([tok(caption).input_ids], dtype=torch.long)
        if ids.shape[1] > self.blip.max_text_tokens:
            raise InputError(f"the caption has {ids.shape[1]} tokens, more than the model's "
                             f"{self.blip.max_text_tokens}: pass fewer classes (e.g. per-image class lists)")
        pieces = caption_pieces(tok, ids)
        if self.merge == "mean":
            counts = [len(tok.tokenize(n)) for n in cap_names]
            if any(c == 0 for c in counts):
                raise InputError(f"class name(s) {[n for n, c in zip(cap_names, counts) if c == 0]} "
                                 "give no word pieces: use letters or digits")
            if sum(counts) != len(pieces):
                raise InputError("the class names do not tokenize separately as in the caption: "
                                 "avoid leading/trailing punctuation in class names")
        k = len(cap_names)

        # passes ------------------------------------------------------------------------------
        x0 = preprocess(rgb, self.image_size)
        g, patch = self.blip.grid, self.blip.patch_size
        dev_ids = ids.to(self.device)
        dropped: list[int] = []
        logits, cams, saliences, picks, zeroed = [], [], [], [], []
        for _ in range(self.drop_iter):
            x = drop_patches(x0, dropped, g, patch).to(self.device)
            out, cam = gradcam_tokens(self.blip, x, dev_ids, self.layer - 1, self.head)
            logits.append(out[0])
            cams.append(cam)
            zeroed.append(zero_patches(cam, dropped, g))
            sal, new = select_salient_patches(cam, dropped, self.drop_patches)
            saliences.append(sal)
            picks.append(new)
            dropped.extend(int(i) for i in new)

        def merge(m: torch.Tensor) -> torch.Tensor:
            if self.merge == "official":
                return merge_official(m, pieces, k)
            return merge_mean(m, counts)

        gradcam_iter = torch.stack([merge(z) for z in zeroed])
        agg = zeroed[0].clone()
        for z in zeroed:
            agg += z
        gradcam_agg = merge(agg)
        first_path = self.drop_iter == 1

        # post-processing ----------------------------------------------------------------------
        post = self.postprocess(gradcam_iter[0] if first_path else gradcam_agg, rgb, first_path)
        result = PnPOutput(caption, ids, pieces, positions, x0, torch.stack(logits), torch.stack(cams),
                           np.stack(saliences), np.stack(picks), gradcam_iter, gradcam_iter[0], gradcam_agg,
                           post["seg_maps"], post["background"], post["final_maps"], post["blur_maps"],
                           post["crf_probs"], post["pred_channels"], post["official_nan"])
        result.extras["scores"] = post["scores"]
        return result, names

    def postprocess(self, maps: torch.Tensor, image: np.ndarray, first_path: bool = False) -> dict[str, Any]:
        """Threshold, upsampling, background, blur, CRF and argmax of per-class patch maps.

        Args:
            maps: (K, g, g) per-class maps (``gradcam_agg``, or ``gradcam_first`` for the first-pass
                path).
            image: (H, W, 3) uint8 RGB photo (the CRF's colour image; its size is the output size).
            first_path: the official first-pass ("filtered_caption") path: ``Scale_0_1`` after
                upsampling.

        Returns:
            dict with ``seg_maps`` (K, H, W), ``background`` (bool), ``final_maps`` (C, H, W),
            ``blur_maps`` / ``crf_probs`` (C, H, W) or None when switched off, ``scores`` (the last of
            them), ``pred_channels`` (H, W) int64 and ``official_nan`` (the official code would have met
            a NaN: with a protocol the NaN is kept, as there).
        """
        k = maps.shape[0]
        h, w = image.shape[:2]
        seg = threshold_maps(maps, self.threshold) if self.threshold is not None else maps.clone()
        if not self.official:
            seg = torch.nan_to_num(seg, nan=0.0)
        seg = upsample(seg, (h, w))
        if first_path or self.rescale_after_upsample:
            # official Scale_0_1: first-pass path always, drop path only in the COCO script
            seg = scale_0_1(seg, official=self.official)
        official_nan = bool(torch.isnan(seg).any())
        use_bg = self.background_rule == "always" or (self.background_rule == "fewer_than_3" and k < 3)
        final = add_background(seg) if use_bg else seg
        scores, blurred, q = final, None, None
        if self.blur:
            blurred = blur_maps(final, self.blur_scale, official=self.official)
            official_nan |= bool(torch.isnan(blurred).any())
            scores = blurred
        if self.crf:
            q = torch.from_numpy(dense_crf(scores, image, self.crf_iterations))
            official_nan |= bool(torch.isnan(q).any())
            pred_channels = np.argmax(q.numpy(), axis=0)  # numpy: first max on ties, NaN counts as max
            scores = q
        else:
            pred_channels = torch.argmax(scores, dim=0).numpy()
        return {"seg_maps": seg, "background": use_bg, "final_maps": final, "blur_maps": blurred,
                "crf_probs": q, "scores": scores, "pred_channels": pred_channels.astype(np.int64),
                "official_nan": official_nan}

    def segment(self, rgb: np.ndarray, vocab: Vocabulary, *, prob_threshold: float | None = None,
                image_id: str | None = None, trace: bool = False) -> Segmentation:
        """Segment one image (a batch of one; see the module docstring).

        ``classes`` are free-form class names, or with ``dataset=`` a selection of the dataset's
        classes; the protocol's own list puts every class into the caption (or the image's GPT-4o
        list with ``class_lists``, looked up by ``image_id``, default the file stem).

        Returns:
            ``scores`` (C, H, W): the final scores (CRF probabilities, or the last step that is on)
            of every class of the label space (0 for classes not in the caption); ``labels`` (H, W)
            indices into ``classes``. Free-form: ``classes`` = background (label 0, unless
            ``background_rule="never"``) + the given classes. With a dataset protocol: the ovss
            dataset's classes in its order (what ``ovss eval`` scores: voc21 / context60 /
            coco_object have background 0; context59 / ade20k / coco_stuff have none, and pixels
            the official code labels background take their best caption class there);
            ``extras["official_labels"]`` holds the official label map in the official dataset
            ids (VOC / Context ids, ADE ids, COCO category ids), exactly as the official code
            relabels it. ``trace``: ``pnp`` (:class:`PnPOutput`).
        """
        out, names = self.run_pipeline(rgb, vocab, image_id)
        seg = self.result_from_output(out, names, prob_threshold=prob_threshold)
        if trace:
            seg.trace["pnp"] = out
        return seg

    def result_from_output(self, out: PnPOutput, names: list[str],
                           prob_threshold: float | None = None) -> Segmentation:
        """The :class:`~ovss.segmenter.Segmentation` of :meth:`run_pipeline`'s output (see :meth:`segment`)."""
        h, w = out.pred_channels.shape
        offset = 1 if out.background else 0
        scores = torch.nan_to_num(out.extras["scores"].float(), nan=0.0)
        logits = torch.zeros((len(names), h, w), dtype=torch.float32)
        official_ids = None
        if self.official:
            p = self.protocol
            ids = [p.dataset_ids[i] for i in out.caption_positions]
            official_ids = relabel_official(out.pred_channels, ids, offset)
            lut = np.full(max(max(p.dataset_ids), 0) + 1, -1, dtype=np.int64)
            for i, idx in p.label_of_id.items():
                lut[i] = idx
            labels = lut[official_ids]
            slot = [p.label_of_id.get(i) for i in ids]
            bg_index = p.background_index
        else:
            bg_index = None if self.background_rule == "never" else 0
            slot = [(0 if bg_index is None else 1) + i for i in out.caption_positions]
            lut = np.array(([0] if out.background else []) + slot, dtype=np.int64)
            labels = lut[out.pred_channels]
        if out.background and bg_index is not None:
            logits[bg_index] = scores[0]
        for c, s_idx in enumerate(slot):
            if s_idx is not None:
                logits[s_idx] = torch.maximum(logits[s_idx], scores[c + offset])
        labels_t = torch.from_numpy(np.ascontiguousarray(labels)).long()
        missing = labels_t < 0
        present = sorted({i for i in slot if i is not None})
        if bool(missing.any()) and present:  # official label outside the label space: best caption class
            best = torch.tensor(present)[logits[present].argmax(dim=0)]
            labels_t[missing] = best[missing]
        labels_t[labels_t < 0] = 0  # only COCO's "other" was in the caption: no class of the label space
        if prob_threshold is not None:
            if bg_index is None:
                raise InputError("prob_threshold needs a background class, and this label space has none")
            labels_t[logits.amax(dim=0) < float(prob_threshold)] = bg_index
        extras: dict[str, Any] = {
            "caption": out.caption,
            "caption_classes": [names[i] if i is not None else None for i in slot],
            "dropped_patches": out.dropped_patches[:-1].tolist(),
            "itm_logits": out.itm_logits.tolist(),
            "official_nan": out.official_nan,
        }
        if official_ids is not None:
            # the label map in the official dataset ids (what the official mIoU scores)
            extras["official_labels"] = torch.from_numpy(official_ids)
        return Segmentation(logits, labels_t, classes=list(names), background=bg_index, extras=extras,
                            settings={"prob_threshold": prob_threshold})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self.model_name, "fingerprint": self.blip.fingerprint,
                "image_size": self.image_size, "caption_order": self.caption_order,
                "layer": self.layer, "head": self.head, "drop_iter": self.drop_iter,
                "drop_patches": self.drop_patches, "threshold": self.threshold,
                "background_rule": self.background_rule, "blur": self.blur, "blur_scale": self.blur_scale,
                "crf": self.crf, "crf_iterations": self.crf_iterations, "merge": self.merge,
                "rescale_after_upsample": self.rescale_after_upsample,
                "class_lists": self.class_lists is not None, "gpt4o_min_prob": self.gpt4o_min_prob,
                "batch_size": 1}


def _read_rgb(image: ImageInput, exif: bool) -> tuple[np.ndarray, str | None]:
    """(H, W, 3) uint8 RGB and the file stem (None for arrays / PIL images). Files go through PIL
    like the official ``Image.open(path).convert('RGB')``."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            return load_image(path), None  # raises the standard InputError
        from PIL import Image, ImageOps

        check_pixels(path)
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im) if exif else im
                rgb = np.ascontiguousarray(np.asarray(im.convert("RGB")))
        except Exception:
            rgb = load_image(path)
        if rgb.shape[0] < 2 or rgb.shape[1] < 2:
            raise InputError(f"image {path} is too small ({rgb.shape[1]}x{rgb.shape[0]}): at least 2x2 pixels")
        return rgb, path.stem
    rgb = load_image(image)
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise InputError(f"image is too small ({rgb.shape[1]}x{rgb.shape[0]}): at least 2x2 pixels")
    return rgb, None
