"""``ovss train``: the engine (batch layout, sample stream, schedules), distributed equivalence on CPU
(Gloo: 2 processes x batch 2 == 1 x 4 == 1 x 2 with 2 accumulation steps, for ZSSeg and FC-CLIP in one
torchrun launch), kill-and-resume, checkpoints that load with ``weights_only=True`` and through
``ovss segment --checkpoint``, evaluation while training, and ZSSeg's two stages (prompt learning, then the
segmentation stage with the learned prompts).

Cost: every extra process imports torch, torchvision and open_clip (~12 s of CPU), so the module starts
two: one ``torchrun --nproc-per-node 2`` (this file is its worker script, see ``__main__``) and the
process that is SIGKILLed; every other run is in-process on one thread (the subprocesses use one OpenMP
thread too, so the kill-and-resume legs compare bitwise)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.training.engine import BatchLayout, LRFactor, SampleStream

ROOT = Path(__file__).resolve().parents[1]

# the tiny MaskFormer of the ZSSeg/ZegFormer training tests (ResNet-50 layout, narrow)
ZS_ARCH = json.loads((ROOT / "tests" / "fixtures" / "tiny_maskformer_arch.json").read_text())
FC_TINY = {"MODEL.SEM_SEG_HEAD.CONVS_DIM": 32, "MODEL.SEM_SEG_HEAD.MASK_DIM": 32,
           "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 1, "MODEL.MASK_FORMER.HIDDEN_DIM": 32,
           "MODEL.MASK_FORMER.NHEADS": 4, "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 32,
           "MODEL.MASK_FORMER.DEC_LAYERS": 2, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 5, "MODEL.FC_CLIP.EMBED_DIM": 32}


# ------------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def semantic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 images, each with the same number of seen classes (so the class CE, a weighted mean per
    batch as in the official criterion, splits exactly over ranks)."""
    root = tmp_path_factory.mktemp("sem")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        lab = np.full((40, 48), 255, np.uint8)
        cut = 14 + 3 * i
        lab[:cut] = 0
        lab[cut:, :20 + 4 * i] = 2
        lab[cut:, 20 + 4 * i:] = 3  # unseen -> ignore
        img = (rng.random((40, 48, 3)) * 40).astype(np.uint8)
        img[:cut] += 180
        img[cut:, :20, 1] += 120
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(lab).save(root / "labels" / f"{i}.png")
    (root / "classes.txt").write_text("person\nbicycle\ncar\ncow\n")
    (root / "unseen.txt").write_text("cow\n")
    (root / "arch.json").write_text(json.dumps(ZS_ARCH))
    return root


@pytest.fixture(scope="module")
def panoptic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pan")
    (root / "images").mkdir()
    (root / "panoptic").mkdir()
    rng = np.random.default_rng(1)
    cats = [{"id": 1, "name": "cat", "isthing": 1}, {"id": 2, "name": "dog,puppy", "isthing": 1},
            {"id": 5, "name": "grass", "isthing": 0}]
    anns, imgs = [], []
    for i in range(4):
        img = (rng.random((32, 32, 3)) * 60).astype(np.uint8)
        img[..., 1] += 100
        ids = np.full((32, 32), 3, np.int64)
        y, x = rng.integers(0, 16, 2)
        img[y:y + 12, x:x + 12] = (200, 50, 50)
        ids[y:y + 12, x:x + 12] = 7
        ids[:2, :2] = 11  # crowd: dropped
        png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(png).save(root / "panoptic" / f"{i:04d}.png")
        segs = [{"id": 3, "category_id": 5, "iscrowd": 0}, {"id": 7, "category_id": 1 + i % 2, "iscrowd": 0},
                {"id": 11, "category_id": 1, "iscrowd": 1}]
        anns.append({"image_id": i, "file_name": f"{i:04d}.png", "segments_info": segs})
        imgs.append({"id": i, "file_name": f"{i:04d}.png", "height": 32, "width": 32})
    (root / "panoptic.json").write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    (root / "tiny.json").write_text(json.dumps(FC_TINY))
    return root


def _zsseg_args(data: Path, out: Path, parity: Path, *extra: str) -> list[str]:
    return ["zsseg", "--images", str(data / "images"), "--labels", str(data / "labels"), "--classes",
            str(data / "classes.txt"), "--unseen", str(data / "unseen.txt"), "--output", str(out), "--model",
            str(parity / "tiny_clip_b16.json"), "--pretrained", str(parity / "tiny_clip_b16.safetensors"),
            "--config", str(data / "arch.json"), "--crop-size", "32", "--min-sizes", "32", "--min-sizes", "40",
            "--workers", "0", "--log-period", "1", "--device", "cpu", "--no-progress", "--lr", "3e-4", *extra]


def _fc_args(data: Path, out: Path, parity: Path, *extra: str) -> list[str]:
    d = parity / "fc_clip"
    return ["fc_clip", "--images", str(data / "images"), "--panoptic-json", str(data / "panoptic.json"),
            "--panoptic-dir", str(data / "panoptic"), "--output", str(out), "--model", str(d / "convnext_fcclip_tiny.json"),
            "--pretrained", str(d / "tiny_convnext_clip.safetensors"), "--config", str(data / "tiny.json"),
            "--image-size", "32", "--num-points", "64", "--workers", "0", "--log-period", "1", "--device", "cpu",
            "--no-progress", *extra]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(extra or {})}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_losses(log: list[dict], ref: list[dict], first: float = 1e-5) -> None:
    """Every loss term and the gradient norm of step 1 within ``first`` relative; later steps start from
    weights that carry Adam's rounding amplification (see :func:`_assert_same_weights`): 1e-3."""
    assert [r["iteration"] for r in log] == [r["iteration"] for r in ref]
    for step, (a, b) in enumerate(zip(ref, log)):
        rel = first if step == 0 else 1e-3
        for key in a:
            if key.startswith("loss_") or key in ("total_loss", "grad_norm"):
                assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-6), (step, key, a[key], b[key])


def _assert_same_weights(w: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], lr: float, steps: int,
                         share: float = 0.005) -> None:
    """Updated weights equal to float tolerance. Adam divides each gradient element by its own magnitude,
    so an element whose gradient is the float-rounding residue of cancelling terms (it differs with the
    summation order of 1 process vs an all-reduce) moves by up to lr per step either way: such elements
    may differ by at most 2 lr per step and must stay rare (``share`` of the weights)."""
    assert w.keys() == ref.keys()
    total = bad = 0
    for key, v in ref.items():
        if not v.is_floating_point():
            continue
        diff = (w[key].double() - v.double()).abs()
        off = diff > 1e-6 + 1e-5 * v.double().abs()
        assert float(diff.max()) <= 2 * lr * steps + 1e-6, (key, float(diff.max()))
        total += v.numel()
        bad += int(off.sum())
    assert bad <= share * total, (bad, total)


def _run(args: list[str]) -> int:
    """``ovss train ARGS`` in this process, on one thread (as the subprocesses run)."""
    from ovss.training.cli import run_subcommand

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_subcommand(args[0], args[1:])
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- engine parts


def test_batch_layout_splits_the_global_batch_the_same_way() -> None:
    one = BatchLayout(4, 1, 1).positions(3, 0, 0)
    two = BatchLayout(4, 2, 1).positions(3, 0, 0) + BatchLayout(4, 2, 1).positions(3, 0, 1)
    acc = BatchLayout(4, 1, 2).positions(3, 0, 0) + BatchLayout(4, 1, 2).positions(3, 1, 0)
    assert one == two == acc == [12, 13, 14, 15]
    assert BatchLayout(4, 2, 1).per_rank == 2
    from ovss.errors import InputError

    with pytest.raises(InputError, match="not divisible"):
        BatchLayout(6, 4, 1)


def test_sample_stream_reshuffles_each_epoch_from_the_seed() -> None:
    s = SampleStream(5, seed=3)
    e0 = [s.index(p) for p in range(5)]
    e1 = [s.index(p) for p in range(5, 10)]
    assert sorted(e0) == sorted(e1) == list(range(5)) and e0 != e1
    assert [SampleStream(5, seed=3).index(p) for p in range(5, 10)] == e1  # a function of (seed, position)
    assert [SampleStream(5, seed=4).index(p) for p in range(5)] != e0


def test_lr_schedules_follow_detectron2() -> None:
    m = LRFactor("multistep", 100, steps=(60, 80), warmup_iters=10, warmup_factor=0.001)
    assert m(0) == pytest.approx(0.001) and m(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert m(10) == 1.0 and m(60) == pytest.approx(0.1) and m(80) == pytest.approx(0.01)
    p = LRFactor("poly", 100)
    assert p(0) == 1.0 and p(50) == pytest.approx(0.5 ** 0.9) and p(100) == 0.0
    c = LRFactor("cosine", 100, warmup_iters=10, warmup_factor=0.005, warmup_method="constant")
    assert c(3) == pytest.approx(0.005 * 0.5 * (1 + math.cos(math.pi * 3 / 100)))
    assert c(50) == pytest.approx(0.5)


# ------------------------------------------------------------------ distributed equivalence

EQ_ITERS = ["--max-iter", "2", "--batch-size", "4", "--checkpoint-period", "0"]


@pytest.fixture(scope="module")
def one_rank(semantic_data: Path, panoptic_data: Path, parity_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    """1 process x batch 4 for both methods (the reference of the equivalence test; the checkpoints of
    the checkpoint test)."""
    out = tmp_path_factory.mktemp("one_rank")
    assert _run(_zsseg_args(semantic_data, out / "zs", parity_dir, *EQ_ITERS)) == 0
    assert _run(_fc_args(panoptic_data, out / "fc", parity_dir, *EQ_ITERS)) == 0
    return {"zs": out / "zs", "fc": out / "fc"}


def test_two_ranks_equal_one_rank_and_accumulation(semantic_data: Path, panoptic_data: Path, parity_dir: Path,
                                                   one_rank: dict[str, Path], tmp_path: Path) -> None:
    zs_ddp, fc_ddp = tmp_path / "zs_ddp", tmp_path / "fc_ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           __file__, json.dumps([_zsseg_args(semantic_data, zs_ddp, parity_dir, *EQ_ITERS),
                                 _fc_args(panoptic_data, fc_ddp, parity_dir, *EQ_ITERS)])]
    ddp = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # the accumulation runs meanwhile, in this process
        assert _run(_zsseg_args(semantic_data, tmp_path / "zs_acc", parity_dir, *EQ_ITERS, "--accumulation", "2")) == 0
        assert _run(_fc_args(panoptic_data, tmp_path / "fc_acc", parity_dir, *EQ_ITERS, "--accumulation", "2")) == 0
        output, _ = ddp.communicate(timeout=600)
    finally:
        ddp.kill()
    assert ddp.returncode == 0, output[-3000:]

    ref = _weights(one_rank["zs"] / "model_final.pth")
    for run in (tmp_path / "zs_acc", zs_ddp):
        _assert_same_losses(_log(run), _log(one_rank["zs"]))
        _assert_same_weights(_weights(run / "model_final.pth"), ref, 3e-4, 2)
    init = _zsseg_task(semantic_data, parity_dir, tmp_path / "init").model_state()["model"]
    moved = sum(not torch.equal(init[key], v) for key, v in ref.items() if key in init)
    assert moved > 10  # the steps changed the weights (so the comparison above means something)

    ref = _weights(one_rank["fc"] / "model_final.pth")
    for run in (tmp_path / "fc_acc", fc_ddp):
        # 1e-4: oneDNN picks other conv kernels for batch 2 and 4 (~1e-7 relative on the features),
        # which FC-CLIP's logit scale (up to 100) lifts to ~4e-5 on the class CE
        _assert_same_losses(_log(run), _log(one_rank["fc"]), first=1e-4)
        # the 0.01 full-model clip scales FC-CLIP's gradients (norm ~100) by 1e-4, which puts many
        # elements near Adam's eps (1e-8), where the update follows rounding: measured 1.2 %
        _assert_same_weights(_weights(run / "model_final.pth"), ref, 1e-4, 2, share=0.02)
    assert [r["iteration"] for r in _log(fc_ddp)] == [1, 2] and not (fc_ddp / "model_0000000.pth").exists()


def _zsseg_task(data: Path, parity: Path, out: Path):
    from ovss.training.maskformer_train import ProposalTrainer, TrainConfig

    cfg = TrainConfig(method="zsseg", images=str(data / "images"), labels=str(data / "labels"), out=str(out),
                      class_names=["person", "bicycle", "car", "cow"], unseen=["cow"], arch=dict(ZS_ARCH),
                      clip_model=str(parity / "tiny_clip_b16.json"),
                      clip_pretrained=str(parity / "tiny_clip_b16.safetensors"), max_iter=2, lr=3e-4, crop_size=32,
                      min_sizes=[32, 40], seed=0)
    return ProposalTrainer(cfg)


# ------------------------------------------------------------------------- resume, checkpoints


def test_killed_run_resumes_to_the_same_losses(semantic_data: Path, parity_dir: Path, tmp_path: Path) -> None:
    base = ["--max-iter", "4", "--batch-size", "2", "--checkpoint-period", "2"]
    assert _run(_zsseg_args(semantic_data, tmp_path / "straight", parity_dir, *base)) == 0
    killed = subprocess.run([sys.executable, "-m", "ovss", "train",
                             *_zsseg_args(semantic_data, tmp_path / "killed", parity_dir, *base)],
                            env=_env({"OVSS_TRAIN_KILL_AT": "3"}), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILLed after iteration 3, whose checkpoint was never written
    assert (tmp_path / "killed" / "last_checkpoint").read_text() == "model_0000001.pth"
    assert [r["iteration"] for r in _log(tmp_path / "killed")] == [1, 2, 3]
    assert _run(_zsseg_args(semantic_data, tmp_path / "killed", parity_dir, *base, "--resume")) == 0
    a, b = _log(tmp_path / "straight"), _log(tmp_path / "killed")
    assert [r["iteration"] for r in b] == [1, 2, 3, 4]  # the killed run's line 3 was replaced
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "images_per_s"} == {k: v for k, v in rb.items() if k != "images_per_s"}
    wa, wb = _weights(tmp_path / "straight" / "model_final.pth"), _weights(tmp_path / "killed" / "model_final.pth")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoints_load_safely_and_through_ovss_segment(semantic_data: Path, panoptic_data: Path, parity_dir: Path,
                                                          one_rank: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ovss.cli import app

    ck = torch.load(one_rank["zs"] / "model_final.pth", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "iteration", "trainer", "rng", "ovss_config"} <= set(ck)
    assert ck["iteration"] == 2 and ck["trainer"]["stream_position"] == 8
    runner = CliRunner()
    res = runner.invoke(app, ["segment", str(semantic_data / "images" / "0.png"), "--method", "zsseg", "--classes",
                              "person, car, cow", "--model", str(parity_dir / "tiny_clip_b16.json"), "--pretrained",
                              str(parity_dir / "tiny_clip_b16.safetensors"), "--checkpoint",
                              str(one_rank["zs"] / "model_final.pth"), "--short-side", "40", "-o", str(tmp_path / "seg")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "seg" / "0_labels.png").is_file()

    d = parity_dir / "fc_clip"
    res = runner.invoke(app, ["segment", str(panoptic_data / "images" / "0000.png"), "--method", "fc_clip",
                              "--classes", "cat, dog, grass", "--model", str(d / "convnext_fcclip_tiny.json"),
                              "--pretrained", str(d / "tiny_convnext_clip.safetensors"), "--checkpoint",
                              str(one_rank["fc"] / "model_final.pth"), "--short-side", "64", "-o",
                              str(tmp_path / "seg2")])
    assert res.exit_code == 0, res.output
    saved = _weights(one_rank["fc"] / "model_final.pth")
    assert "sem_seg_head.predictor.query_feat.weight" in saved and "criterion.empty_weight" in saved


def test_train_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ovss.cli import app

    res = CliRunner().invoke(app, ["train", "fc_clip", "--images", str(tmp_path), "--panoptic-json",
                                   str(tmp_path / "none.json"), "--panoptic-dir", str(tmp_path), "--output",
                                   str(tmp_path / "o"), "--device", "cpu"])
    assert res.exit_code == 2 and "panoptic JSON not found" in res.output
    res = CliRunner().invoke(app, ["train", "zsseg", "--images", str(tmp_path / "none"), "--labels", str(tmp_path),
                                   "--output", str(tmp_path / "o"), "--device", "cpu", "--batch-size", "3",
                                   "--accumulation", "2"])
    assert res.exit_code == 2 and "error" in res.output
    res = CliRunner().invoke(app, ["train", "zsseg", "--images", str(tmp_path), "--labels", str(tmp_path), "--output",
                                   str(tmp_path / "o"), "--device", "cpu", "--prompt", "learnable"])
    assert res.exit_code == 2 and "--prompt learnable needs --prompt-checkpoint" in res.output


# ------------------------------------------------------------------ evaluation, ZSSeg's two stages


def _coco_stuff_split(root: Path, semantic_data: Path) -> Path:
    """Two images of COCO-Stuff's detectron2 layout (val2017 + stuffthingmaps_detectron2/val2017)."""
    (root / "val2017").mkdir(parents=True)
    (root / "stuffthingmaps_detectron2" / "val2017").mkdir(parents=True)
    for i in range(2):
        Image.open(semantic_data / "images" / f"{i}.png").convert("RGB").save(root / "val2017" / f"{i:012d}.jpg")
        lab = np.asarray(Image.open(semantic_data / "labels" / f"{i}.png")).copy()
        lab[lab == 2] = 100  # COCO-Stuff ids: person 0, some stuff class, ignore
        Image.fromarray(lab).save(root / "stuffthingmaps_detectron2" / "val2017" / f"{i:012d}.png")
    return root


def test_evaluation_while_training_scores_like_ovss_eval(semantic_data: Path, parity_dir: Path, tmp_path: Path) -> None:
    from ovss.evaluation.runner import evaluate
    from ovss.registry import create_segmenter

    split = _coco_stuff_split(tmp_path / "coco", semantic_data)
    out = tmp_path / "run"
    assert _run(_zsseg_args(semantic_data, out, parity_dir, "--max-iter", "2", "--batch-size", "2", "--checkpoint-period",
                            "0", "--eval-dataset", "coco_stuff", "--eval-root", str(split), "--eval-period", "1",
                            "--eval-limit", "1", "--eval-set", "short_side=64")) == 0
    evals = [r for r in _log(out) if "eval/mIoU" in r]
    assert [r["iteration"] for r in evals] == [1, 2]  # every --eval-period and at the end
    assert (out / "eval" / "iter_0000001").is_dir() and (out / "eval" / "iter_0000002").is_dir()
    seg = create_segmenter("zsseg", model=str(parity_dir / "tiny_clip_b16.json"),
                           pretrained=str(parity_dir / "tiny_clip_b16.safetensors"),
                           checkpoint=str(out / "model_final.pth"), dataset="coco_stuff", device="cpu", short_side=64)
    res = evaluate("coco_stuff", split, segmenter=seg, device="cpu", limit=1, output_dir=tmp_path / "eval",
                   resume=False, progress=False)
    assert res.num_images == 1
    assert evals[-1]["eval/mIoU"] == float(res.metrics.mIoU)  # the same code as `ovss eval`, same checkpoint


def test_prompt_learning_then_segmentation_stage(semantic_data: Path, parity_dir: Path, tmp_path: Path) -> None:
    from ovss.training.maskformer_train import PromptConfig, PromptTrainer

    data = ["--images", str(semantic_data / "images"), "--labels", str(semantic_data / "labels"), "--classes",
            str(semantic_data / "classes.txt"), "--unseen", str(semantic_data / "unseen.txt"), "--model",
            str(parity_dir / "tiny_clip_b16.json"), "--pretrained", str(parity_dir / "tiny_clip_b16.safetensors")]
    prompts = tmp_path / "prompts"
    assert _run(["zsseg-prompts", *data, "--output", str(prompts), "--prompt-length", "4", "--sample-per-class", "3",
                 "--max-iter", "2", "--batch-size", "2", "--workers", "0", "--log-period", "1", "--device", "cpu",
                 "--no-progress"]) == 0
    log = _log(prompts)
    assert [r["iteration"] for r in log] == [1, 2] and all(math.isfinite(r["loss_cls"]) for r in log)
    # WarmupCosineLR with a constant warmup (factor 0.005 over 100 iterations) of lr 0.02 over 2 iterations
    assert [r["lr"] for r in log] == pytest.approx([0.02 * 0.005, 0.02 * 0.005 * 0.5])
    learned = _weights(prompts / "model_final.pth")
    initial = PromptTrainer(PromptConfig(images=str(semantic_data / "images"), labels=str(semantic_data / "labels"),
                                         class_names=["person", "bicycle", "car", "cow"], unseen=["cow"],
                                         clip_model=data[9], clip_pretrained=data[11], prompt_shape=(4, 0),
                                         sample_per_class=3)).model_state()["model"]
    key = "clip_adapter.prompt_learner.prefix_prompt"
    assert learned[key].shape == initial[key].shape == (4, 64) and not torch.equal(learned[key], initial[key])

    stage2 = tmp_path / "stage2"
    assert _run(_zsseg_args(semantic_data, stage2, parity_dir, "--max-iter", "1", "--batch-size", "2", "--prompt",
                            "learnable", "--prompt-checkpoint", str(prompts / "model_final.pth"))) == 0
    assert torch.equal(_weights(stage2 / "model_final.pth")[key], learned[key])  # stage 2 keeps them, frozen


if __name__ == "__main__":  # the torchrun worker of test_two_ranks_equal_one_rank_and_accumulation
    import torch.distributed as dist

    from ovss.training.cli import run_subcommand

    dist.init_process_group("gloo")  # one group for every run: `ovss train` joins it and leaves it up
    try:
        for run_args in json.loads(sys.argv[1]):
            if run_subcommand(run_args[0], run_args[1:]) != 0:
                raise SystemExit(f"ovss train {run_args[0]} failed")
    finally:
        dist.destroy_process_group()
