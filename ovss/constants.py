"""Normalisation statistics and prompt templates that several methods share, each once, on the
scale and to the digits its official source writes it (the digits matter: the methods' parity
with their official code rests on them).
"""

from __future__ import annotations

#: OpenAI CLIP's RGB normalisation, 0-1 scale (``clip/clip.py::_transform``; open_clip
#: ``OPENAI_DATASET_MEAN`` / ``_STD``; BLIP's ``blip_image_eval`` processor uses the same).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: The same on the 0-255 scale as the SCLIP-family mmseg configs write it
#: (``configs/base_config.py``: ``SegDataPreProcessor(mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323])``).
CLIP_MEAN_255_MMSEG = (122.771, 116.746, 104.094)
CLIP_STD_255_MMSEG = (68.501, 66.632, 70.323)

#: The same on the 0-255 scale as the detectron2 configs of FC-CLIP / ZegFormer / CAT-Seg write it
#: (``MODEL.PIXEL_MEAN`` / ``MODEL.CLIP_PIXEL_MEAN`` and their ``*_STD``).
CLIP_MEAN_255_D2 = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD_255_D2 = (68.5005327, 66.6321579, 70.32316305)

#: ImageNet normalisation, 0-1 scale (torchvision ``Normalize`` of the DINO family).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ImageNet normalisation, 0-255 scale (detectron2 / MaskFormer ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``).
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)

#: ViLD's 14 prompt templates, in order (Gu et al., ICLR 2022; FC-CLIP ``fcclip/fcclip.py: VILD_PROMPT``,
#: ZSSeg ``CLIP.VILD_PROMPT`` / ``PROMPT_LEARNER vild``).
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)
