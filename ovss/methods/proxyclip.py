"""ProxyCLIP: CLIP's last attention replaced by proxy attention from a self-supervised ViT.

Source: Lan et al., "ProxyCLIP: Proxy Attention Improves CLIP for Open-Vocabulary
Segmentation", ECCV 2024, Sec. 3.2 (Eq. 4-6); ``mc-lan/ProxyCLIP`` at e7b767f:
``open_clip/transformer.py::VisionTransformer.forward/custom_attn`` and
``proxyclip_segmentor.py::ProxyCLIPSegmentation.forward_feature/forward_slide``. Line numbers
below are those of the stored copies read: ``proxyclip_segmentor.py`` and ``myutils.py`` at
05c3c18, ``open_clip/transformer.py`` at e442aeb and f2919bb (identical but for L573).

Per window (the SCLIP-family sliding window of :mod:`ovss.methods.clip_dense`):

1. the proxy input is the CLIP-normalised crop mapped back to 0-1 (``x * s + m``, CLIP
   statistics) and normalised with ImageNet statistics (``myutils.UnNormalize`` then
   torchvision ``Normalize``: ``myutils.py`` L14 ``t.mul_(s).add_(m)``,
   ``proxyclip_segmentor.py`` L79-80, L113);
2. proxy features E (C, I, J): the proxy ViT's final-LayerNorm patch tokens (DINO
   ``get_intermediate_layers(x)[0]``, CLS dropped: ``proxyclip_segmentor.py`` L132, L154),
   position embedding resized as DINO does;
3. ``e = normalize(E)``, ``S = e^T e`` (M x M, M = I*J), ``Z = gamma * (S - beta * mean(S))``
   with the mean over all entries of the window's S, ``Z[Z < 0] = -inf``, ``A = softmax(Z)``,
   one A for every head (``transformer.py`` L569-578);
4. CLIP's last block: values of ``ln_1(x)`` without CLS, per head resized bilinearly from the
   CLIP grid to (I, J), ``out_proj(A v)``; no residual, no FFN; then ``ln_post`` and ``proj``:
   tokens on the proxy grid, cosine logits resized to the window (``transformer.py`` L528
   ``x = self.custom_attn(blk.attn, blk.ln_1(x), ...)``, L565-566, L580-586, L535-536).

Differences from the official code, none of which changes a number under its protocols:
float32 throughout (the official code forces fp16: ``proxyclip_segmentor.py`` L40
``create_model(..., precision='fp16')``, L74 ``self.vfm = self.vfm.half()``, L116
``imgs_norm = imgs_norm.half()``, L172 ``self.clip.encode_image(img.half(), ...)``;
``precision="fp16"`` is available);
non-square windows use the correct grids (the official code takes the DINO grid as
``(H//p, H//p)``, ``proxyclip_segmentor.py`` L149 ``I, J = imgs_norm[0].shape[-2] // patch_size,
imgs_norm[0].shape[-2] // patch_size``, and reshapes CLIP's values with height and width swapped,
``transformer.py`` L504 ``B, nc, w, h = x.shape`` / L521 ``token_size = h // self.patch_size[0],
w // self.patch_size[1]`` / L580 ``v[:, 1:, :].reshape(bsz*num_heads, token_size[0], token_size[1],
head_dim)``; it crashes or computes transposed features there, and equals this code on square
windows); the similarity mean is taken per window when windows are batched (``transformer.py``
L573: ``torch.mean(similarity)`` at f2919bb pools the whole batch, ``similarity.mean(dim=(1, 2),
keepdim=True)`` at e442aeb is per window; the official code runs one window at a time,
``proxyclip_segmentor.py`` L224 ``self.forward_feature(crop_img)`` inside the L208-209 window
loops); a window whose proxy similarities leave a row with no kept entry (possible only when
mean(S) > 1/beta) raises :class:`~ovss.errors.InputError` where the official code returns NaN
(``transformer.py`` L574 ``similarity[similarity < 0.0] = float('-inf')``, L578
``attn_weights = F.softmax(mask, dim=-1)``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..backbones.dino import LoadedViT, load_vit, patch_features
from ..backbones.vit_dense import merge_heads, patch_size, split_heads, tokens_before_last
from ..constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from ..errors import InputError
from ..options import Positive, PositiveInt
from ..protocols import dense_clip_table
from .clip_dense import DenseCLIPSegmenter, centred_padding

#: ``compute_padsize(H, W, 56)`` in ``proxyclip_segmentor.py::forward_slide`` (L220 at 05c3c18; centred
#: padding, ``compute_padsize`` L294-306)
OFFICIAL_PAD_MULTIPLE = 56

#: ProxyCLIP configs/base_config.py + configs/cfg_<dataset>.py at e7b767f (reference §1.7).
PROXYCLIP_PROTOCOLS = dense_clip_table("proxyclip", "proxyclip", dict(
    short_side=336, max_long_side=2048, crop=336, stride=112, logit_scale=40.0, class_sep="; ", pad_crops=True), {
    "voc21": dict(prob_threshold=0.2),
    "voc20": {},
    "context60": dict(prob_threshold=0.15),
    "context59": {},
    "coco_object": dict(prob_threshold=0.25),
    "coco_stuff": {},
    "cityscapes": dict(short_side=448, crop=224, stride=112),
    "ade20k": dict(short_side=448),
    "ade847": dict(short_side=448),
    "context459": dict(short_side=448),
}, "mc-lan/ProxyCLIP configs/cfg_{ds}.py")


def proxy_attention(feats: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """ProxyCLIP's attention weights from proxy features.

    Args:
        feats: (B, C, I, J) proxy patch features (one window per batch item).
        beta, gamma: the mask threshold factor and the temperature (paper: 1.2, 3.0).

    Returns:
        (B, M, M) row-stochastic weights, M = I*J: ``softmax`` of
        ``gamma * (S - beta * mean(S))`` with entries below 0 masked, S the cosine similarities
        (``open_clip/transformer.py::custom_attn``, L569-578 at e442aeb/f2919bb).

    Raises:
        InputError: a row is entirely masked (the official code returns NaN there: L574 sets the
            whole row to ``-inf``, L578 softmaxes it).
    """
    e = F.normalize(feats.flatten(2), dim=1)
    sim = torch.einsum("bcm,bcn->bmn", e, e)
    mean = sim.mean(dim=(1, 2), keepdim=True)
    z = (sim - mean * beta) * gamma
    keep = z >= 0
    if not bool(keep.any(dim=-1).all()):
        worst = float(mean.max())
        raise InputError(f"ProxyCLIP proxy attention is undefined for this image: the mean proxy similarity "
                         f"{worst:.3f} exceeds 1/beta = {1 / beta:.3f}, so some patch keeps no neighbour (the "
                         "official code returns NaN here). Use a smaller beta (beta <= 1 always works) or "
                         "another proxy model")
    return torch.softmax(z.masked_fill(~keep, float("-inf")), dim=-1)


class ProxyCLIP(DenseCLIPSegmenter):
    """ProxyCLIP (protocols: ``mc-lan/ProxyCLIP`` ``configs/cfg_*.py``; class files with
    ``'; '``-separated synonyms, VOC21/COCO-Object background = stuff words).

    Args:
        proxy_model: the vision foundation model: a timm name (``vit_base_patch8_224.dino``,
            the official DINO ViT-B/8; ``vit_base_patch16_224.dino``;
            ``vit_base_patch14_reg4_dinov2.lvd142m``) or a JSON file with a ``"timm"`` entry
            (see :mod:`ovss.backbones.dino`).
        proxy_pretrained: local checkpoint of the proxy model (DINO/timm keys); None downloads
            timm's hub weights.
        beta: mask threshold factor (entries below ``beta * mean(S)`` are masked).
        gamma: attention temperature.
        other arguments: see :class:`ovss.methods.clip_dense.DenseCLIPSegmenter` (ProxyCLIP has
            no PAMR and no area filter).

    Raises:
        UnknownNameError, ModelLoadError: bad CLIP or proxy model/weights.
        InputError: bad beta/gamma, or a crop smaller than a patch.
    """

    method = "proxyclip"
    protocols = PROXYCLIP_PROTOCOLS

    def __init__(self, model: str = "ViT-B-16", pretrained: str | None = "openai", *,
                 proxy_model: str = "vit_base_patch8_224.dino", proxy_pretrained: str | None = None,
                 beta: Positive = 1.2, gamma: Positive = 3.0, batch_size: PositiveInt | Literal["auto"] | None = 8,
                 **kwargs: Any) -> None:
        super().__init__(model, pretrained, batch_size=batch_size, **kwargs)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.proxy: LoadedViT = load_vit(proxy_model, proxy_pretrained, self.device,
                                         flag="--proxy-model", pretrained_flag="--proxy-pretrained")
        self.clip_patch = patch_size(self.clip.visual)
        biggest = max(max(self.clip_patch), self.proxy.patch_size)
        crop = self.protocol.crop
        if 0 < crop < biggest:
            raise InputError(f"crop {crop} is smaller than a patch ({self.clip.name}: {self.clip_patch[0]} px, "
                             f"{self.proxy.name}: {self.proxy.patch_size} px): use crop >= {biggest}")
        # OpenAI CLIP statistics on the 0-1 scale (``myutils.UnNormalize``, ``proxyclip_segmentor.py`` L79)
        self._mean01 = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std01 = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        self._in_mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._in_std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    # ----------------------------------------------------------------- hooks
    def window_padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """Centred zero padding of a window: to a multiple of 56 under a dataset protocol
        (``forward_slide``: ``compute_padsize(H, W, 56)``, ``proxyclip_segmentor.py`` L220 at 05c3c18,
        ``compute_padsize`` L294-306; never triggers with the official
        crops 336/224), else to a multiple of both patch sizes so both grids cover the window."""
        if not self.protocol.pad_crops:
            return (0, 0, 0, 0)
        if self.protocol.dataset is not None:
            multiple = OFFICIAL_PAD_MULTIPLE
        else:
            multiple = math.lcm(self.clip_patch[0], self.clip_patch[1], self.proxy.patch_size)
        return centred_padding(h, w, multiple)

    def proxy_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) CLIP-normalised -> ImageNet-normalised proxy input (multiply, add,
        subtract, divide in float32, as ``UnNormalize`` + ``Normalize`` do: ``myutils.py`` L14,
        ``proxyclip_segmentor.py`` L113 at 05c3c18, before the L116 cast to fp16)."""
        return (images * self._std01 + self._mean01 - self._in_mean) / self._in_std

    def proxy_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) CLIP-normalised crops -> (B, C, H//p, W//p) proxy patch features."""
        return patch_features(self.proxy, self.proxy_input(images))

    def proxy_tokens(self, images: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """CLIP output tokens with proxy attention in the last block.

        Args:
            images: (B, 3, H, W) CLIP-normalised crops.
            feats: (B, C, I, J) proxy features of the same crops.

        Returns:
            (B, I*J, E) tokens after ``ln_post`` and ``proj`` (not normalised), token t at grid
            cell (t // J, t % J).
        """
        visual = self.clip.visual
        if images.shape[-2] < self.clip_patch[0] or images.shape[-1] < self.clip_patch[1]:
            raise InputError(f"a {images.shape[-2]}x{images.shape[-1]} window is smaller than CLIP's "
                             f"{self.clip_patch[0]}x{self.clip_patch[1]} patch")
        x, (h, w) = tokens_before_last(visual, images)
        block = visual.transformer.resblocks[-1]
        _, _, v = split_heads(block, block.ln_1(x))  # (B, heads, 1+N, d)
        b, heads, _, d = v.shape
        grid = feats.shape[-2:]
        v = v[:, :, 1:].reshape(b * heads, h, w, d).permute(0, 3, 1, 2)
        v = F.interpolate(v, size=grid, mode="bilinear", align_corners=False)
        v = v.permute(0, 2, 3, 1).reshape(b, heads, grid[0] * grid[1], d)
        attn = proxy_attention(feats.float(), self.beta, self.gamma).to(v.dtype)
        out = merge_heads(block, attn.unsqueeze(1) @ v)
        return visual.ln_post(out) @ visual.proj

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) CLIP-normalised crops -> (B, E, H//q, W//q) unit-norm features on the
        proxy grid (q = proxy patch size)."""
        with self._autocast():
            feats = self.proxy_features(images)
            tokens = self.proxy_tokens(images, feats)
        tokens = tokens.float()
        tokens = tokens / tokens.norm(dim=-1, keepdim=True)
        b, m, e = tokens.shape
        return tokens.transpose(1, 2).reshape(b, e, feats.shape[-2], feats.shape[-1])

    def settings(self) -> dict[str, Any]:
        s = super().settings()
        s.update(proxy_model=self.proxy.name, proxy_pretrained=self.proxy.pretrained, beta=self.beta,
                 gamma=self.gamma)
        return s
