"""FC-CLIP training: data in COCO-panoptic format, matching, losses, a few CPU steps, checkpoints
that load back through the importer, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def _make_dataset(root: Path, n: int = 4, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "panoptic").mkdir()
    cats = [{"id": 1, "name": "cat", "isthing": 1}, {"id": 2, "name": "dog,puppy", "isthing": 1},
            {"id": 5, "name": "grass", "isthing": 0}]
    anns, imgs = [], []
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[:] = (40, 160, 40)
        ids = np.full((size, size), 3, np.int64)
        y, x = rng.integers(0, size // 2, 2)
        img[y:y + size // 3, x:x + size // 3] = (200, 50, 50)
        ids[y:y + size // 3, x:x + size // 3] = 7
        y, x = rng.integers(0, size // 2, 2)
        img[y:y + size // 4, x:x + size // 4] = (50, 50, 200)
        ids[y:y + size // 4, x:x + size // 4] = 9
        ids[:2, :2] = 11  # a crowd segment: dropped
        png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(png).save(root / "panoptic" / f"{i:04d}.png")
        segs = [{"id": 3, "category_id": 5, "iscrowd": 0}, {"id": 7, "category_id": 1, "iscrowd": 0},
                {"id": 9, "category_id": 2, "iscrowd": 0}, {"id": 11, "category_id": 1, "iscrowd": 1}]
        anns.append({"image_id": i, "file_name": f"{i:04d}.png", "segments_info": segs})
        imgs.append({"id": i, "file_name": f"{i:04d}.png", "height": size, "width": size})
    (root / "panoptic.json").write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("pan"))


@pytest.fixture(scope="module")
def clip_files(parity_dir: Path) -> tuple[str, str]:
    d = parity_dir / "fc_clip"
    if not (d / "tiny_convnext_clip.safetensors").is_file():
        pytest.skip(f"FC-CLIP parity fixtures not found in {d}")
    return str(d / "convnext_fcclip_tiny.json"), str(d / "tiny_convnext_clip.safetensors")


TINY = {"MODEL.SEM_SEG_HEAD.CONVS_DIM": 64, "MODEL.SEM_SEG_HEAD.MASK_DIM": 64,
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 1, "MODEL.MASK_FORMER.HIDDEN_DIM": 64,
        "MODEL.MASK_FORMER.NHEADS": 4, "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 64,
        "MODEL.MASK_FORMER.DEC_LAYERS": 3, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 6, "MODEL.FC_CLIP.EMBED_DIM": 32}


def test_dataset_items(data_root):
    from ovss.training.fc_clip_train import COCOPanopticDataset, dataset_vocabulary

    ds = COCOPanopticDataset(data_root / "images", data_root / "panoptic.json", data_root / "panoptic", 48)
    item = ds[0]
    again = ds.load(0)
    assert torch.equal(item["image"], again["image"])  # seeded per sample
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.uint8
    assert item["masks"].shape[1:] == (48, 48) and item["masks"].dtype == torch.bool
    assert len(item["labels"]) == item["masks"].shape[0] and set(item["labels"].tolist()) <= {0, 1, 2}
    assert not (item["masks"].sum(0) > 1).any()  # panoptic masks do not overlap
    vocab = dataset_vocabulary(ds.categories)
    assert vocab.queries == (("cat",), ("dog", "puppy"), ("grass",))


def test_matcher_recovers_perfect_predictions():
    from ovss.training.fc_clip_train import HungarianMatcher

    torch.manual_seed(0)
    masks = torch.zeros(3, 16, 16)
    masks[0, :8] = 1
    masks[1, 8:, :8] = 1
    masks[2, 8:, 8:] = 1
    labels = torch.tensor([2, 0, 1])
    perm = torch.tensor([3, 0, 4])  # target j predicted by query perm[j]
    logits = torch.full((1, 5, 4), -5.0)
    pred = torch.full((1, 5, 16, 16), -10.0)
    for j, q in enumerate(perm):
        logits[0, q, labels[j]] = 5.0
        pred[0, q] = masks[j] * 20 - 10
    (src, tgt), = HungarianMatcher(num_points=256)({"pred_logits": logits, "pred_masks": pred},
                                                   [{"labels": labels, "masks": masks}])
    assert dict(zip(tgt.tolist(), src.tolist())) == {0: 3, 1: 0, 2: 4}


def test_command_reports_missing_data(tmp_path, capsys):
    from ovss.training.fc_clip_train import main

    rc = main(["--images", str(tmp_path), "--panoptic-json", str(tmp_path / "none.json"),
               "--panoptic-dir", str(tmp_path), "--output", str(tmp_path / "o"), "--device", "cpu"])
    assert rc == 2
