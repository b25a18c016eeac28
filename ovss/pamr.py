"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020, "Single-Stage Semantic
Segmentation from Image Labels", Sec. 3.2), as used by NACLIP (on by default) and SCLIP.

Follows ``pamr.py`` of the SCLIP/NACLIP repositories (copied there from 1-stage-wseg).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _neighbours(x: torch.Tensor, dilations: Sequence[int], centre: bool) -> torch.Tensor:
    """(B, K, H, W) -> (B, K, P, H, W): the 8 (or 9 with ``centre``) 3x3 neighbours at each
    dilation, replicate-padded, stacked dilation by dilation in raster order."""
    out = []
    h, w = x.shape[-2:]
    for d in dilations:
        xp = F.pad(x, [d] * 4, mode="replicate")
        for i in range(3):
            for j in range(3):
                if i == 1 and j == 1 and not centre:
                    continue
                out.append(xp[..., i * d:i * d + h, j * d:j * d + w])
    return torch.stack(out, dim=2)


@torch.no_grad()
def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int = 10,
         dilations: Sequence[int] = (8, 16)) -> torch.Tensor:
    """Refine per-pixel logits with colour affinities of the image.

    Affinity of a pixel to each of its 8·len(dilations) neighbours: ``-|I_n - I| / (1e-8 +
    0.1·σ)``, σ the per-channel unbiased std over the 9·len(dilations) samples of the dilated
    3x3 windows (centre included once per dilation); mean over colour channels; softmax over the
    neighbours. Then ``steps`` times: each pixel's logits become the affinity-weighted sum of its
    neighbours' logits.

    Args:
        image: (B, 3, H, W) guide image (the normalised network input resized to H, W).
        logits: (B, Q, H, W) logits to refine (cosine similarities in NACLIP).
        steps: number of propagation steps.
        dilations: neighbourhood dilations in pixels.

    Returns:
        (B, Q, H, W) refined logits.
    """
    std = _neighbours(image, dilations, centre=True).std(dim=2, keepdim=True)
    aff = -(_neighbours(image, dilations, centre=False) - image.unsqueeze(2)).abs() / (1e-8 + 0.1 * std)
    aff = F.softmax(aff.mean(dim=1, keepdim=True), dim=2)
    for _ in range(steps):
        # accumulate neighbour by neighbour: memory 2x the logits instead of 16x
        h, w = logits.shape[-2:]
        out = torch.zeros_like(logits)
        n = 0
        for d in dilations:
            lp = F.pad(logits, [d] * 4, mode="replicate")
            for i in range(3):
                for j in range(3):
                    if i == 1 and j == 1:
                        continue
                    out += lp[..., i * d:i * d + h, j * d:j * d + w] * aff[:, :, n]
                    n += 1
        logits = out
    return logits
