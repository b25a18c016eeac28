"""PAMR's sparse and shifted kernels equal the official formulation (unfolded neighbours, weighted sum).

The reference below is the official one written out (1-stage-wseg ``PAMR``, as copied into SCLIP and
NACLIP): every step gathers the (B, Q, P, H, W) replicate-padded neighbours and sums them weighted by
the affinities. The fixture comparison of NACLIP (tests/test_parity_clip.py) covers PAMR against
the official outputs end to end.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovss.pamr import affinities, neighbour_offsets, pamr, propagation_matrix


def unfolded(x: torch.Tensor, dilations, centre: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        xp = F.pad(x, [d] * 4, mode="replicate")
        for i in range(3):
            for j in range(3):
                if centre or (i, j) != (1, 1):
                    out.append(xp[..., i * d:i * d + h, j * d:j * d + w])
    return torch.stack(out, dim=2)


def reference(image, logits, steps, dilations):
    std = unfolded(image, dilations, True).std(dim=2, keepdim=True)
    aff = -(unfolded(image, dilations, False) - image.unsqueeze(2)).abs() / (1e-8 + 0.1 * std)
    aff = F.softmax(aff.mean(dim=1, keepdim=True), dim=2)
    for _ in range(steps):
        logits = (unfolded(logits, dilations, False) * aff).sum(2)
    return logits


@pytest.mark.parametrize("size,dilations,steps", [((37, 53), (8, 16), 10), ((20, 9), (1, 2), 3), ((5, 40), (3,), 2)])
@pytest.mark.parametrize("kernel", ["sparse", "shifted", "auto"])
def test_pamr_kernels_equal_the_official_formulation(size, dilations, steps, kernel):
    torch.manual_seed(0)
    image = torch.randn(2, 3, *size)
    logits = torch.randn(2, 7, *size)
    ref = reference(image, logits, steps, dilations)
    out = pamr(image, logits, steps, dilations, kernel=kernel)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert torch.equal(pamr(image, logits, 0, dilations), logits)


def test_propagation_matrix_rows_are_the_affinities_at_the_neighbours():
    torch.manual_seed(1)
    h, w, dil = 6, 5, (1, 3)
    aff = affinities(torch.randn(1, 3, h, w), dil)[0]
    assert torch.allclose(aff.sum(0), torch.ones(h, w))
    dense = propagation_matrix(aff, dil).to_dense()
    assert torch.allclose(dense.sum(1), torch.ones(h * w))  # weights sum to 1, duplicates added
    for y, x in [(0, 0), (2, 3), (5, 4)]:
        row = torch.zeros(h * w)
        for n, (dy, dx) in enumerate(neighbour_offsets(dil)):
            row[min(max(y + dy, 0), h - 1) * w + min(max(x + dx, 0), w - 1)] += aff[n, y, x]
        assert torch.allclose(dense[y * w + x], row)
