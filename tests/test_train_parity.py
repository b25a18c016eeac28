"""Training-step parity with the official code: ovss's engine runs the tiny FC-CLIP / ZSSeg / ZegFormer for
the iterations the official code ran in ``tests/fixtures/{fc_clip,maskformer}_train`` (same initial
weights, images, targets and global RNG state per iteration) and must give the same loss terms,
matchings, learning rates, per-group gradient norms and updated weights.

Bars (the fixtures' README explains them): loss terms, gradient norms and weights within 1e-5 relative,
or within 4x what the official code itself moves when run with 2 threads instead of 1 (recorded in each
manifest as ``official_self_noise``) where that is larger (the deep ResNet-101 of ZSSeg / ZegFormer; FC-CLIP
after its first update, see the test);
weights are compared relative to their tensor's scale, and elements whose step-1 gradient is below 1e-2
of their tensor's RMS (Adam's epsilon regime) only up to one update; FC-CLIP's importance-sampling
near ties (recorded gaps) loosen the mask terms of that decoder layer. On a CPU of another SIMD class
than the one that made the fixture the bars are 10x wider (tests/conftest.py ``fp32_close``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.checkpoints import read_checkpoint
from ovss.training.engine import EngineConfig, seed_iteration, train

FIXTURES = Path(__file__).parent / "fixtures"
SMALL_GRAD = 1e-2  # elements with |g| below this share of their tensor's gradient RMS: Adam's epsilon regime


def _load(folder: str, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    man = json.loads((FIXTURES / folder / f"{prefix}manifest.json").read_text())
    npz = dict(np.load(FIXTURES / folder / f"{man['method']}_train.npz"))
    return man, npz


def _same_cpu(man: dict[str, Any]) -> bool:
    """Whether this CPU dispatches to the kernels (ATen SIMD level) that made the fixture."""
    return torch.backends.cpu.get_cpu_capability() == man["provenance"]["cpu_capability"]


class Capture:
    """What the engine did in each iteration, keyed by official parameter names."""

    def __init__(self, params: dict[str, torch.nn.Parameter], official_name: Callable[[str], str]) -> None:
        self.params = {official_name(n): p for n, p in params.items()}
        self.by_id = {id(p): n for n, p in self.params.items()}
        self.records: list[dict[str, Any]] = []
        self.grad_norms: list[dict[str, float]] = []
        self.lrs: list[dict[str, float]] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.indices: list[list[Any]] = []

    def on_grads(self, iteration: int, opt: torch.optim.Optimizer) -> None:
        norms, lrs = {}, {}
        for g in opt.param_groups:
            for p in g["params"]:
                norms[self.by_id[id(p)]] = float(p.grad.double().norm()) if p.grad is not None else 0.0
                lrs[self.by_id[id(p)]] = g["lr"]
        self.grad_norms.append(norms)
        self.lrs.append(lrs)

    def on_step(self, iteration: int, record: dict[str, Any]) -> None:
        self.records.append(dict(record))
        self.weights.append({n: p.detach().clone() for n, p in self.params.items() if p.requires_grad})


def _run(task: Any, cap: Capture, out: Path, iters: int) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixture ran: one thread, so the same CPU gives the same kernels
    try:
        train(task, EngineConfig(output=str(out), max_iter=iters, batch_size=2, clip_grad=0.01, log_period=0,
                                 checkpoint_period=0, progress=False, seed=0),
              on_step=cap.on_step, on_grads=cap.on_grads)
    finally:
        torch.set_num_threads(threads)


def _compare(man: dict[str, Any], z: dict[str, np.ndarray], cap: Capture, noise_from: int,
             near_tie_terms: Callable[[int], set[str]] = lambda i: set()) -> dict[str, float]:
    """Assert the bars of the module docstring; return the measured worst values (printed with -s).

    ``noise_from``: from this iteration on, widen every bar to 4x the official code's own thread-count
    variation (1: every iteration, for deep stacks); on another CPU class this is always done, and the
    strict bars are 10x wider."""
    same = _same_cpu(man)
    factor = 1.0 if same else 10.0
    if not same:
        noise_from = 1
    noise = {s["iteration"]: s for s in man["official_self_noise"]["steps"] if s["iteration"] >= noise_from}
    assert sorted(n for n, p in cap.params.items() if p.requires_grad) == man["trainable"]
    worst = {"loss": 0.0, "grad": 0.0, "weight": 0.0, "lr": 0.0}
    for i, st in enumerate(man["steps"]):
        it = i + 1
        nz = noise.get(it, {})
        rec = cap.records[i]
        ties = near_tie_terms(i) if same else set(st["losses"])
        loss_bar = factor * max(1e-5, 4 * nz.get("loss_rel", 0.0))
        for key, ref in st["losses"].items():
            rel = abs(rec[key] - ref) / abs(ref)
            bar = max(loss_bar, 1e-4 * factor) if key in ties else loss_bar
            assert rel <= bar, (it, key, ref, rec[key], rel, bar)
            worst["loss"] = max(worst["loss"], rel)
        assert rec["total_loss"] == pytest.approx(st["total_loss"], rel=max(loss_bar, 1e-4 * factor if ties else 0))

        for li, layer in enumerate(cap.indices[i]):  # final layer first, as the official criterion matches
            for b, (q, t) in enumerate(layer):
                ref = z[f"step{i}_match_{li}_img{b}"]
                assert np.array_equal(np.stack([np.asarray(q), np.asarray(t)]), ref), (it, li, b)
        assert len(cap.indices[i]) == len(st["match_layers"])

        for name, lr in zip(man["param_groups"], z[f"step{i}_group_lr"]):
            assert cap.lrs[i][name] == pytest.approx(lr, rel=1e-12), (it, name)
            worst["lr"] = max(worst["lr"], abs(cap.lrs[i][name] - lr) / lr)
        grad_bar = factor * max(1e-5, 4 * nz.get("group_grad_norm_rel", 0.0), 1e-3 if ties else 0.0)
        for name, ref in zip(man["param_groups"], z[f"step{i}_group_grad_norm"]):
            mine = cap.grad_norms[i][name]
            if ref == 0:
                assert mine == 0, (it, name)
                continue
            rel = abs(mine - ref) / ref
            assert rel <= grad_bar, (it, name, ref, mine, rel, grad_bar)
            worst["grad"] = max(worst["grad"], rel)

        weight_bar = factor * max(1e-5, 4 * nz.get("weight_scaled", 0.0))
        lr0 = float(z["step0_group_lr"].max())
        for name in man["trainable"]:
            w = cap.weights[i][name].flatten()[z[f"positions/{name}"]].double().numpy()
            ref, g0 = z[f"step{i}_w/{name}"], z[f"step0_g/{name}"]
            assert float(cap.weights[i][name].double().norm()) == pytest.approx(st["weights"][name]["norm"], rel=1e-4)
            small = np.abs(g0) < SMALL_GRAD * np.sqrt(np.mean(g0 ** 2))
            diff = np.abs(w - ref)
            scale = max(float(np.abs(ref).max()), 1e-12)
            if (~small).any():
                rel = float(diff[~small].max()) / scale
                assert rel <= weight_bar, (it, name, rel, weight_bar)
                worst["weight"] = max(worst["weight"], rel)
            assert float(diff.max(initial=0.0)) <= 2 * lr0 * it + 1e-7, (it, name)
    return worst


def _moved(man: dict[str, Any], z: dict[str, np.ndarray], initial: dict[str, torch.Tensor]) -> int:
    """Sampled weights that the official steps changed (so the comparison means something)."""
    return sum(int(np.sum(initial[n].flatten()[z[f"positions/{n}"]].double().numpy() != z[f"step2_w/{n}"]))
               for n in man["trainable"])


def test_fixture_seeds_are_the_engines_iteration_seeds() -> None:
    for folder, prefix in (("fc_clip_train", ""), ("maskformer_train", "zsseg_"), ("maskformer_train", "zegformer_")):
        man = json.loads((FIXTURES / folder / f"{prefix}manifest.json").read_text())
        for i, st in enumerate(man["steps"]):
            seed_iteration(0, i, 0)
            assert torch.initial_seed() == st["seed"]


# ---------------------------------------------------------------------------------------- FC-CLIP


def _fc_clip_task(z: dict[str, np.ndarray], parity: Path, root: Path):
    from ovss.training.fc_clip_train import FCCLIPOptions, FCCLIPTask, coco_panoptic_ids

    (root / "img").mkdir(parents=True)
    (root / "pan").mkdir()
    ids = coco_panoptic_ids()
    anns, imgs = [], []
    n = len(z["images"])
    for k in range(n):
        labels, masks = z[f"labels_{k}"], z[f"masks_{k}"]
        seg = np.zeros(masks.shape[1:], np.int64)
        for s in range(len(labels)):
            seg[masks[s]] = s + 1
        png = np.stack([seg % 256, seg // 256 % 256, seg // 65536], -1).astype(np.uint8)
        Image.fromarray(z["images"][k]).save(root / "img" / f"{k}.png")
        Image.fromarray(png).save(root / "pan" / f"{k}.png")
        anns.append({"image_id": k, "file_name": f"{k}.png", "segments_info": [
            {"id": s + 1, "category_id": ids[int(c)], "iscrowd": 0} for s, c in enumerate(labels)]})
        imgs.append({"id": k, "file_name": f"{k}.png", "height": 64, "width": 64})
    cats = [{"id": i, "name": f"class {i}"} for i in ids]  # the COCO ids: FC-CLIP's own class file names them
    (root / "pan.json").write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))

    class FixtureOrder(FCCLIPTask):
        def load(self, position: int, index: int) -> dict[str, Any]:
            return super().load(position, position % n)  # the fixture's images in order, not shuffled

    d = parity / "fc_clip"
    opts = FCCLIPOptions(images=str(root / "img"), panoptic_json=str(root / "pan.json"), panoptic_dir=str(root / "pan"),
                         model=str(d / "convnext_fcclip_tiny.json"), pretrained=str(d / "tiny_convnext_clip.safetensors"),
                         config=str(d / "fcclip_tiny_config.yaml"), init=str(d / "fcclip_tiny.pth"), image_size=64,
                         augment=False, point_rng="global")
    return FixtureOrder(opts, torch.device("cpu"))


def test_fc_clip_training_step_matches_official(parity_dir: Path, tmp_path: Path) -> None:
    man, z = _load("fc_clip_train", "")
    task = _fc_clip_task(z, parity_dir, tmp_path / "data")
    from ovss.training.fc_clip_train import vild_templates

    # the train text classifier: every synonym of every class in every ViLD template, in FC-CLIP's order
    prompts = [t.format(w) for q in task.vocab.queries for w in q for t in vild_templates()]
    ref = man["train_prompts"]
    assert [len(q) for q in task.vocab.queries] == man["train_num_templates"]
    assert (len(prompts), prompts[:3]) == (ref["count"], ref["first"])
    assert hashlib.sha256("\n".join(prompts).encode()).hexdigest() == ref["sha256"]
    cap = Capture(dict(task.net.named_parameters()), lambda n: n)
    initial = {n: p.detach().clone() for n, p in cap.params.items()}
    orig = cap.on_step

    def on_step(it: int, rec: dict[str, Any]) -> None:
        cap.indices.append(list(task.criterion.last_indices))
        orig(it, rec)

    cap.on_step = on_step  # type: ignore[method-assign]
    _run(task, cap, tmp_path / "out", len(man["steps"]))

    def near_ties(i: int) -> set[str]:
        out = set()
        for li, g in enumerate(man["steps"][i]["importance_topk_gaps"]):
            if g < 1e-6:  # a few float32 ulps of the |logit| values ranked there
                suffix = "" if li == 0 else f"_{li - 1}"
                out |= {"loss_mask" + suffix, "loss_dice" + suffix}
        return out

    # iteration 1 at the strict bars; later ones at the official code's own noise. One update lifts float32
    # rounding of the text classifier (~1e-7) to ~2e-5 on iteration 2's mask loss: measured 1.73e-5 with
    # ovss's prefix-shared text encoder and 1.73e-5 with a plain full-sequence encode_text as the official
    # code runs; the official code itself moves by 9e-5 there between 1 and 2 threads
    worst = _compare(man, z, cap, 2, near_ties)
    assert _moved(man, z, initial) > 1000
    print("fc_clip", worst)


# ---------------------------------------------------------------------------------- ZSSeg / ZegFormer


def _official_name(n: str) -> str:
    if n.startswith("model.backbone."):
        return n[len("model."):]
    if n.startswith("model."):
        return "sem_seg_head." + n[len("model."):]
    if n == "non_object":
        return "clip_adapter.non_object_embedding"
    return n


@pytest.mark.parametrize("method", ["zsseg", "zegformer"])
def test_maskformer_training_step_matches_official(method: str, parity_dir: Path, tmp_path: Path) -> None:
    from ovss.training.maskformer_train import ProposalTrainer, TrainConfig, read_arch

    man, z = _load("maskformer_train", f"{method}_")
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    n = len(z["images"])
    for k in range(n):
        Image.fromarray(z["images"][k]).save(root / "img" / f"{k}.png")
        Image.fromarray(z["labels"][k]).save(root / "lab" / f"{k}.png")
    if method == "zsseg":
        clip = {"clip_model": str(parity_dir / "tiny_clip_b16.json"),
                "clip_pretrained": str(parity_dir / "tiny_clip_b16.safetensors")}
        ck = parity_dir / "zsseg" / "zsseg_tiny_r101c.pth"
        extra = {"prompt_checkpoint": str(ck)}  # stage 2 with the learned prompts, as the official README runs it
    else:
        d = parity_dir / "zegformer"
        clip = {"clip_model": str(d / "tiny_clip_e512.json"), "clip_pretrained": str(d / "tiny_clip_e512.safetensors")}
        ck = d / "zegformer_tiny_r101.pth"
        extra = {}
    cfg = TrainConfig(method=method, images=str(root / "img"), labels=str(root / "lab"), out=str(tmp_path / "out"),
                      class_names=man["seen_class_names"], unseen=[],
                      arch=read_arch(parity_dir / method / f"{method}_tiny_config.json"),
                      max_iter=man["config"]["max_iter"], augment=False, seed=0, **clip, **extra)

    class FixtureOrder(ProposalTrainer):
        def load(self, position: int, index: int):
            return super().load(position, position % n)

    task = FixtureOrder(cfg)
    task.load_model_state(read_checkpoint(ck))  # {"model": official keys}
    cap = Capture(dict(task.module.named_parameters()), _official_name)
    initial = {n: p.detach().clone() for n, p in cap.params.items()}
    losses = task.losses

    def recording_losses(module, samples, num_masks=None):
        got: list[Any] = []
        out = losses(module, samples, num_masks, got)
        cap.indices.append(got)
        return out

    task.losses = recording_losses  # type: ignore[method-assign]
    _run(task, cap, tmp_path / "out", len(man["steps"]))
    worst = _compare(man, z, cap, 1)
    assert _moved(man, z, initial) > 1000
    print(method, worst)
