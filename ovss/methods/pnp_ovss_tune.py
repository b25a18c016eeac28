"""Label-free hyperparameter tuning of PnP-OVSS: the paper's CLIP reward, swept over settings.

PnP-OVSS picks its cross-attention layer, head and mask threshold without segmentation labels
(paper, "hyperparameter tuning without segmentation annotations"; official code: ``Search`` and
``get_clipsim_for_pnmask`` in ``PnP_OVSS_0514_updated_segmentation*.py``, masks from
``Dataset.py::Wsupervised_pn_mask_for_allimgs``). For one setting (layer, head, ``min_att``) and
one image with classes ``c_1..c_K``:

1. the first-pass GradCAM map of each class (the official search runs ``drop_iter=1``) is
   min-max normalised and binarised ``> min_att``;
2. each binary mask is resized to the CLIP input size (bicubic, ``skimage`` order 3 after min-max),
   blurred (sigma ``0.04 * size``, min-max) and binarised ``> min_att`` again;
3. CLIP sees, for every class, the *positive* image (the photo under the mask) and a *negative*
   image (official code: the mask replaced by zeros, i.e. a blank image; ``negative="complement"``
   uses the photo outside the mask instead); ``p(c | x) = softmax_c(cos(x, text_c) / 0.01)`` over the
   image's class names;
4. the image's reward is ``pos_win = #{c : p(c | positive_c) > p(c | negative_c)}``; the official
   search also records ``pos_win * (1 - token_contrast)`` where ``token_contrast`` is the mean cosine
   similarity, over all pairs of 24 x 24 positions, of the positions' class-mask vectors.

The sweep optimises the total ``pos_win`` over the images (the value the official ``Search``
returns to its optimiser); ties are broken by the scaled reward, then by the order of the grid.

Where this differs from the official search: the official optimiser is a seeded random annealing
over (layer 1-12, head 0-11, min_att 0.05..0.45) with 34 evaluations on COCO val with the
ground-truth image-level class names and LAVIS CLIP ViT-L/14-336 features; here the grid is
exhaustive (or a seeded random subset with ``max_settings``), runs on any unlabelled images with
the classes you give (or the GPT-4o per-image lists of a protocol), with any open_clip CLIP, whose
input is the photo resized square to its input size with the CLIP mean/std (LAVIS uses its own
resize/crop processor). The GradCAM map normalisation before ``> min_att`` (min-max per class) is
our reading of the saved maps the official search loads. All settings of one image come from a
single forward/backward pass of BLIP (every layer's cross-attention captured at once).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import CLIP_MEAN, CLIP_STD
from ..errors import InputError, OvssError
from ..fileio import atomic_write_text
from .pnp_ovss import PnPOVSS, caption_pieces, lookup_image_id, merge_mean, merge_official, parse_gpt4o_entry, preprocess

TOKEN_CONTRAST_GRID = 24  # official: Attmap_resize((24, 24), pms)


@dataclass(frozen=True)
class TuneSetting:
    """One point of the sweep: 1-based text layer, head, and the mask threshold ``min_att``."""

    layer: int
    head: int
    min_att: float


@dataclass
class TuneScore:
    """Reward of one setting over the images.

    Attributes:
        reward: total ``pos_win`` (number of classes whose positive image beats its negative image).
        reward_scaled: total ``pos_win * (1 - token_contrast)``.
        max_reward: total number of classes (the best possible ``reward``).
        per_image: (image, pos_win, token_contrast) of each image.
    """

    setting: TuneSetting
    reward: int = 0
    reward_scaled: float = 0.0
    max_reward: int = 0
    per_image: list[tuple[str, int, float]] = field(default_factory=list)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    top = x.max()
    return x / top if top > 0 else x


def clip_masks(class_maps: torch.Tensor, min_att: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary masks (K, size, size) at the CLIP input size and their 24 x 24 soft versions for the
    token contrast, from per-class patch maps (K, g, g) (steps 1-2 of the module docstring)."""
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize

    masks, small = [], []
    for m in class_maps.numpy().astype(np.float64):
        binary = (_minmax(m) > min_att).astype(np.float64)
        pm = resize(_minmax(binary), (size, size), order=3, mode="constant")
        pm = _minmax(gaussian_filter(pm, 0.04 * size))
        small.append(resize(_minmax(pm), (TOKEN_CONTRAST_GRID, TOKEN_CONTRAST_GRID), order=3, mode="constant"))
        masks.append(pm > min_att)
    return np.stack(masks), np.stack(small)


def token_contrast(soft_masks: np.ndarray) -> float:
    """Mean cosine similarity between the class-mask vectors (K,) of every pair of positions of
    (K, h, w) masks (official ``token_cos_sim_map``: normalise over the class axis, eps 1e-8)."""
    x = torch.from_numpy(soft_masks.reshape(soft_masks.shape[0], -1)).double()
    x = F.normalize(x, p=2, dim=0, eps=1e-8)
    sim = x.T @ x
    return float(sim.sum() / (sim.shape[0] * sim.shape[1]))


def _clip_input(image: np.ndarray, size: int) -> torch.Tensor:
    from PIL import Image

    arr = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def clip_pos_win(clip: Any, image: torch.Tensor, masks: np.ndarray, text_features: torch.Tensor,
                 negative: str = "zeros") -> int:
    """Number of classes c with ``p(c | image * mask_c) > p(c | negative_c)`` (step 3-4).

    Args:
        clip: :class:`ovss.backbones.clip.LoadedCLIP`.
        image: (3, S, S) CLIP-normalised photo.
        masks: (K, S, S) bool.
        text_features: (K, D) L2-normalised text embeddings of the class names.
        negative: ``"zeros"`` (official) or ``"complement"``.
    """
    m = torch.from_numpy(masks).float()[:, None]
    pos = image[None] * m
    neg = torch.zeros_like(pos) if negative == "zeros" else image[None] * (1 - m)
    dev = text_features.device
    with torch.no_grad():
        feats = F.normalize(clip.model.encode_image(torch.cat([pos, neg]).to(dev)).float(), dim=-1)
    probs = torch.softmax(feats @ text_features.T / 0.01, dim=-1).cpu()
    k = masks.shape[0]
    idx = torch.arange(k)
    return int((probs[:k][idx, idx] > probs[k:][idx, idx]).sum())


def _grid(values: str, cast: type) -> list[Any]:
    out: list[Any] = []
    for part in str(values).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part and cast is int:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(cast(part))
        except ValueError:
            raise InputError(f"bad sweep range {values!r}: give numbers like '8', '6-10' or '0.1,0.2'") from None
    if not out:
        raise InputError(f"empty sweep range {values!r}")
    return out


def sweep(segmenter: PnPOVSS, images: Sequence[Any], clip: Any, classes: Any = None,
          layers: Sequence[int] = (8,), heads: Sequence[int] = tuple(range(12)),
          min_atts: Sequence[float] = (0.05, 0.15, 0.25, 0.35, 0.45), negative: str = "zeros",
          max_settings: int | None = None, seed: int = 0) -> list[TuneScore]:
    """Score every setting of the grid on unlabelled images, best first.

    Args:
        segmenter: a :class:`PnPOVSS` (its model, input size, dataset protocol and class lists
            are used; its layer/head/threshold are what is swept).
        images: file paths or (H, W, 3) uint8 arrays.
        clip: :class:`ovss.backbones.clip.LoadedCLIP` that scores the masked images.
        classes: class names for every image; None uses the protocol (or its GPT-4o lists).
        layers: 1-based text layers; heads: attention heads; min_atts: mask thresholds.
        negative: ``"zeros"`` (official) or ``"complement"``.
        max_settings: score only a seeded random subset of this many settings.

    Returns:
        One :class:`TuneScore` per setting, sorted by (reward, reward_scaled) descending.

    Raises:
        InputError: no images, a bad range, or an image the segmenter rejects.
    """
    from ..backbones.blip import CrossAttentionCapture, inference_with_grad, itm_forward

    if not images:
        raise InputError("give at least one image to tune on")
    if negative not in ("zeros", "complement"):
        raise InputError(f"negative must be 'zeros' or 'complement', got {negative!r}")
    blip = segmenter.blip
    for layer in layers:
        if not 1 <= layer <= blip.num_text_layers:
            raise InputError(f"layer {layer} out of range 1..{blip.num_text_layers}")
    for head in heads:
        if not 0 <= head < blip.num_heads:
            raise InputError(f"head {head} out of range 0..{blip.num_heads - 1}")
    settings = [TuneSetting(int(l), int(h), float(a)) for l, h, a in itertools.product(layers, heads, min_atts)]
    if max_settings is not None and max_settings < len(settings):
        settings = random.Random(seed).sample(settings, max_settings)
    scores = {s: TuneScore(s) for s in settings}
    size = getattr(clip.model.visual, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    dev = next(clip.model.parameters()).device
    wanted_layers = sorted({s.layer - 1 for s in settings})
    for n, image in enumerate(images):
        rgb = segmenter.read_image(image)
        stem = Path(image).stem if isinstance(image, (str, Path)) else None
        name = str(image) if isinstance(image, (str, Path)) else f"image {n}"
        vocab = segmenter.vocabulary(classes)
        _, cap_names, _ = segmenter.caption_classes(vocab)
        if vocab.official and segmenter.class_lists is not None:
            key = lookup_image_id(segmenter.class_lists, stem or "")
            if key is None:
                raise InputError(f"{name} is not in the class lists")
            pos = parse_gpt4o_entry(segmenter.class_lists[key], segmenter.protocol, segmenter.gpt4o_min_prob)
            cap_names = [segmenter.protocol.caption_names[i] for i in pos]
        tok = blip.tokenizer
        ids = torch.tensor([tok("A picture of " + " ".join(cap_names)).input_ids], dtype=torch.long)
        if ids.shape[1] > blip.max_text_tokens:
            raise InputError(f"{name}: the caption is longer than {blip.max_text_tokens} tokens")
        pieces = caption_pieces(tok, ids)
        counts = [len(tok.tokenize(c)) for c in cap_names]
        x = preprocess(rgb, blip.image_size).to(segmenter.device)
        with inference_with_grad(), CrossAttentionCapture(blip.model, wanted_layers) as cap:
            out = itm_forward(blip, x.clone(), ids.to(segmenter.device).clone())
            out[:, 1].sum().backward()
            probs = {l: cap.probs[l].detach().cpu() for l in wanted_layers}
            grads = {l: cap.grad(l).detach().cpu() for l in wanted_layers}
        g = blip.grid
        with torch.no_grad():
            text = clip.tokenizer(list(cap_names)).to(dev)
            text_features = F.normalize(clip.model.encode_text(text).float(), dim=-1)
        clip_img = _clip_input(rgb, size)
        for s in settings:
            a, d = probs[s.layer - 1][0, s.head], grads[s.layer - 1][0, s.head]
            cam = (a[:, 1:].reshape(-1, g, g) * d[:, 1:].clamp(min=0).reshape(-1, g, g))[1:]
            maps = (merge_official(cam, pieces, len(cap_names)) if segmenter.merge == "official"
                    else merge_mean(cam, counts))
            masks, small = clip_masks(maps, s.min_att, size)
            win = clip_pos_win(clip, clip_img, masks, text_features, negative)
            tc = token_contrast(small)
            sc = scores[s]
            sc.reward += win
            sc.reward_scaled += win * (1 - tc)
            sc.max_reward += len(cap_names)
            sc.per_image.append((name, win, tc))
    order = {s: i for i, s in enumerate(settings)}
    return sorted(scores.values(), key=lambda t: (-t.reward, -t.reward_scaled, order[t.setting]))


def main(argv: Sequence[str] | None = None, prog: str = "ovss pnp-tune") -> int:
    """``ovss pnp-tune --images DIR --classes "cat, dog" --clip-model ViT-B-16 --clip-pretrained
    openai`` (or ``python -m ovss.methods.pnp_ovss_tune``): print the best setting as the
    ``ovss segment --method pnp_ovss`` options that use it, and write every score as JSON."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", required=True, help="image files or folders (no labels needed)")
    ap.add_argument("--classes", default=None, help="class names (comma separated, or @FILE for a class file)")
    ap.add_argument("--dataset", default=None, help="PnP-OVSS protocol (voc21, context59, ...)")
    ap.add_argument("--class-lists", default=None, help="official GPT-4o per-image class JSON")
    ap.add_argument("--model", default="Salesforce/blip-itm-large-coco")
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--clip-model", default="ViT-L-14-336")
    ap.add_argument("--clip-pretrained", default="openai")
    ap.add_argument("--layers", default="8", help="1-based layers, e.g. '8' or '6-10'")
    ap.add_argument("--heads", default="0-11")
    ap.add_argument("--min-att", default="0.05,0.15,0.25,0.35,0.45")
    ap.add_argument("--negative", default="zeros", choices=("zeros", "complement"))
    ap.add_argument("--max-settings", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--output", default=None, help="JSON file for every score")
    args = ap.parse_args(argv)
    try:
        from ..backbones.clip import load_clip
        from ..fileio import ensure_output_dir
        from ..imageio import list_images
        from ..vocabulary import classes_argument

        # the inputs and the output first: loading BLIP and CLIP (or finding the hub unreachable) takes long
        images = list_images(args.images)
        classes = classes_argument(args.classes) if args.classes is not None else None
        grid = (_grid(args.layers, int), _grid(args.heads, int), _grid(args.min_att, float))
        if args.output:
            if Path(args.output).is_dir():
                raise InputError(f"--output {args.output} is a folder: give a JSON file name")
            ensure_output_dir(Path(args.output).parent, "--output")
        seg = PnPOVSS(model=args.model, dataset=args.dataset, image_size=args.image_size, device=args.device,
                      crf=False, class_lists=args.class_lists)
        clip = load_clip(args.clip_model, args.clip_pretrained, args.device)
        results = sweep(seg, images, clip, classes=classes,
                        layers=grid[0], heads=grid[1], min_atts=grid[2], negative=args.negative,
                        max_settings=args.max_settings)
    except OvssError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = results[0]
    print(f"best: layer={best.setting.layer} head={best.setting.head} min_att={best.setting.min_att:g} "
          f"reward={best.reward}/{best.max_reward} scaled={best.reward_scaled:.3f}")
    # min_att is the per-class min-max threshold of the maps: the segmenter's ``threshold``
    print(f"use it: ovss segment ... --method pnp_ovss --layer {best.setting.layer} "
          f"--head {best.setting.head} --threshold {best.setting.min_att:g}")
    if args.output:
        atomic_write_text(args.output, json.dumps([{**asdict(r.setting), "reward": r.reward,
                                                  "reward_scaled": r.reward_scaled,
                                                  "max_reward": r.max_reward, "per_image": r.per_image}
                                                 for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m ovss.methods.pnp_ovss_tune"))
