"""``ovss train cat_seg``: the official recipe's parts (trainable CLIP weights, parameter groups, loss,
schedule), an end-to-end run whose checkpoint ``ovss segment -m cat_seg --checkpoint`` loads, and the
training step against the official code (``tests/fixtures/cat_seg_train``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cat_seg_train"


@pytest.fixture(scope="module")
def cs_dir(parity_dir: Path) -> Path:
    d = parity_dir / "cat_seg"
    if not (d / "catseg_tiny.pth").is_file():
        pytest.skip(f"CAT-Seg tiny model not found in {d}")
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 images (different sizes) with 3 classes and some ignored pixels."""
    root = tmp_path_factory.mktemp("cs")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (48, 40)]):
        lab = np.zeros((h, w), np.uint8)
        lab[h // 2:] = 1
        lab[:, : w // 3] = 2
        lab[:3] = 255
        img = (rng.random((h, w, 3)) * 50).astype(np.uint8) + (lab[..., None] % 3 * 60).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(lab).save(root / "labels" / f"{i}.png")
    (root / "classes.txt").write_text("sky\ngrass\ntree\n")
    return root


def _task(cs_dir: Path, **kw):
    from ovss.training.cat_seg_train import CATSegTask, CATSegTrainOptions

    opts = CATSegTrainOptions(model=str(cs_dir / "tiny_clip_catseg.json"), init=str(cs_dir / "catseg_tiny.pth"),
                              config=str(cs_dir / "catseg_tiny_config.yaml"), **kw)
    return CATSegTask(opts)


def test_trainable_weights_groups_and_schedule_follow_the_official_recipe(cs_dir: Path, data: Path) -> None:
    from ovss.training.cat_seg_train import param_groups

    task = _task(cs_dir, classes=str(data / "classes.txt"), pooling_size=(2, 2))
    clip_train = sorted(n for n, p in task.net.clip.named_parameters() if p.requires_grad)
    # CLIP_FINETUNE attention: q and v projection weights of every block of both towers, nothing else
    blocks = [f"visual.transformer.resblocks.{i}" for i in range(9)] + [f"transformer.resblocks.{i}" for i in range(2)]
    assert clip_train == sorted(f"{b}.attn.{w}_proj_weight" for b in blocks for w in "qv")
    assert all(p.requires_grad for n, p in task.net.named_parameters() if not n.startswith("clip."))
    groups = {g["name"]: g for g in param_groups(task.net, 2e-4, 1e-4, 0.01)}
    assert groups["clip.visual.transformer.resblocks.0.attn.q_proj_weight"]["lr"] == pytest.approx(2e-6)
    assert groups["clip.visual.transformer.resblocks.0.attn.q_proj_weight"]["weight_decay"] == 1e-4
    assert groups["transformer.conv1.weight"]["lr"] == 2e-4
    assert groups["transformer.layers.0.swin_block.block_1.norm1.weight"]["weight_decay"] == 0.0
    assert groups["transformer.decoder1.conv.double_conv.1.bias"]["weight_decay"] == 0.0  # GroupNorm
    assert groups["transformer.layers.0.attention.padding_tokens"]["weight_decay"] == 1e-4
    assert groups["upsample1.weight"]["lr"] == 2e-4
    assert len(groups) == sum(1 for p in task.net.parameters() if p.requires_grad)
    sched = task.schedule()
    assert sched(0) == 1.0 and sched(40000) == pytest.approx(0.5) and sched(80000) == pytest.approx(0.0, abs=1e-12)
    assert task.net.transformer.layers[0].attention.pooling_size == (2, 2)


def test_loss_counts_ignored_pixels_with_zero_targets() -> None:
    from ovss.training.cat_seg_train import semantic_bce

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    labels[0, :2] = 255
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    onehot = torch.nn.functional.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    onehot[0, :, :2] = 0.0  # cat_seg_model.py:166-168: an ignored pixel is a negative for every class
    want = torch.nn.functional.binary_cross_entropy_with_logits(up, onehot)
    assert float(semantic_bce(logits, labels)) == pytest.approx(float(want), rel=1e-6)


def test_train_two_iterations_then_segment_with_the_checkpoint(cs_dir: Path, data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ovss.checkpoints import load_checkpoint
    from ovss.cli import app

    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "cat_seg", "--images", str(data / "images"), "--labels", str(data / "labels"),
                              "--classes", str(data / "classes.txt"), "--output", str(out),
                              "--model", str(cs_dir / "tiny_clip_catseg.json"), "--init", str(cs_dir / "catseg_tiny.pth"),
                              "--config", str(cs_dir / "catseg_tiny_config.yaml"), "--pooling-size", "2",
                              "--max-iter", "2", "--batch-size", "1", "--workers", "0", "--log-period", "1",
                              "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    log = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2] and all(np.isfinite(r["loss_sem_seg"]) for r in log)
    assert log[0]["lr"] == 2e-4 and log[1]["lr"] == pytest.approx(1e-4)  # WarmupCosineLR over 2 iterations
    ck = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ck["iteration"] == 2 and ck["class_names"] == ["sky", "grass", "tree"]
    init = load_checkpoint(cs_dir / "catseg_tiny.pth").tensors
    saved = load_checkpoint(out / "model_final.pth").tensors
    assert set(saved) == set(init)  # the official key layout, CLIP included (q/k/v split)
    pre = "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.2.attn."
    assert torch.equal(saved[pre + "k_proj_weight"], init[pre + "k_proj_weight"])      # frozen
    assert torch.equal(saved[pre + "in_proj_bias"], init[pre + "in_proj_bias"])
    assert not torch.equal(saved[pre + "q_proj_weight"], init[pre + "q_proj_weight"])  # trained (lr x 0.01)
    head = "sem_seg_head.predictor.transformer.head.weight"
    assert not torch.equal(saved[head], init[head])

    res = runner.invoke(app, ["segment", str(data / "images" / "0.png"), "-m", "cat_seg", "--checkpoint",
                              str(out / "model_final.pth"), "--model", str(cs_dir / "tiny_clip_catseg.json"),
                              "--config", str(cs_dir / "catseg_tiny_config.yaml"), "-c", "sky, grass",
                              "--short-side", "40", "-o", str(tmp_path / "seg")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "seg" / "0_labels.png").is_file()


def test_train_reports_bad_input_in_one_line(cs_dir: Path, data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ovss.cli import app

    res = CliRunner().invoke(app, ["train", "cat_seg", "--images", str(data / "images"), "--labels",
                                   str(data / "labels"), "--output", str(tmp_path / "o"), "--device", "cpu",
                                   "--model", str(cs_dir / "tiny_clip_catseg.json"), "--init",
                                   str(cs_dir / "catseg_tiny.pth"), "--clip-finetune", "bias"])
    assert res.exit_code == 2 and "--clip-finetune 'bias'" in res.output
