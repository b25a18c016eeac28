"""Training the ZSSeg / ZegFormer proposal network on a tiny COCO-Stuff-format dataset (CPU): losses,
Hungarian matching, seen-class filtering, checkpoint round trip through the importers, resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.errors import DatasetError
from ovss.training.losses import dice_loss
from ovss.training.maskformer_train import SeenClassDataset, hungarian_match

CLASSES = ["person", "bicycle", "car", "cow"]
TINY_ARCH = json.loads((Path(__file__).parent / "fixtures" / "tiny_maskformer_arch.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cocostuff")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        lab = np.full((64, 64), 255, np.uint8)
        lab[:32] = 0  # person
        lab[32:, :40] = 2  # car
        lab[32:, 40:] = 3  # cow (unseen -> ignore)
        img = (rng.random((64, 64, 3)) * 40).astype(np.uint8)
        img[:32] += 180
        img[32:, :40, 1] += 120
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(lab).save(root / "labels" / f"{i}.png")
    return root


def test_dataset_maps_unseen_to_ignore(data: Path, tmp_path: Path) -> None:
    ds = SeenClassDataset(data / "images", data / "labels", CLASSES, ["cow"])
    assert ds.seen_names == ["person", "bicycle", "car"]
    _, lab = ds.load(0)
    assert set(np.unique(lab).tolist()) == {0, 2, 255}  # car keeps id 2 among seen; cow -> 255
    with pytest.raises(DatasetError):
        SeenClassDataset(tmp_path / "nope", data / "labels", CLASSES, [])


def test_hungarian_matches_brute_force() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 3)
    masks = torch.randn(1, 4, 6, 6)
    tgt = [{"labels": torch.tensor([0, 2]), "masks": (torch.rand(2, 12, 12) > 0.5).float()}]
    (i, j), = hungarian_match(logits, masks, tgt)
    # brute force over assignments with the same cost terms
    tm = torch.nn.functional.interpolate(tgt[0]["masks"][:, None], size=(6, 6), mode="nearest")[:, 0].flatten(1)
    om = masks[0].flatten(1)
    prob = logits[0].softmax(-1)
    best = None
    for perm in itertools.permutations(range(4), 2):
        cost = 0.0
        for t, q in enumerate(perm):
            p = om[q].sigmoid()
            focal = (((1 - p) ** 2) * torch.nn.functional.binary_cross_entropy_with_logits(
                om[q], torch.ones_like(p), reduction="none") * 0.25 * tm[t]
                + (p ** 2) * torch.nn.functional.binary_cross_entropy_with_logits(
                    om[q], torch.zeros_like(p), reduction="none") * 0.75 * (1 - tm[t])).mean()
            dice = 1 - (2 * (p * tm[t]).sum() + 1) / (p.sum() + tm[t].sum() + 1)
            cost += float(20 * focal - prob[q, tgt[0]["labels"][t]] + dice)
        if best is None or cost < best[0] - 1e-9:
            best = (cost, perm)
    got = dict(zip(j.tolist(), i.tolist()))
    assert tuple(got[t] for t in range(2)) == best[1]
    assert float(dice_loss(torch.full((1, 4), 20.0), torch.ones(1, 4), 1.0)) < 1e-6
