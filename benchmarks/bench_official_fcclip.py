#!/usr/bin/env python3
"""The official FC-CLIP code at full size on CPU, timed, beside ovss on the same weights.

Runs bytedance/fc-clip (``FCCLIP_ROOT``, default /work/official/fc-clip) unchanged through a CPU
build of detectron2, with the official eval config ``fcclip_convnext_large_eval_ade20k.yaml``
(ConvNeXt-L CLIP, 250 queries, ADE20K-150, semantic + instance + panoptic on as in the release), on
the full-size random weights of ``benchmarks/fullsize.py`` (``fcclip_convnext_large.pth`` over
``convnext_large_d_320.safetensors``). The image goes through what the official evaluation does to it
(detectron2 ``ResizeShortestEdge(640, 2560)``, then ``model([{"image", "height", "width"}])``).

Stand-ins (only what cannot run here), as in ``tests/fixtures/fc_clip_instance/make_fixture.py``:

* ``MultiScaleDeformableAttention``: the compiled CUDA op; a module whose forward raises stands in, so
  ``MSDeformAttn.forward`` takes its own pure-PyTorch ``except`` branch (the official CPU path).
* the open_clip "pretrained" weights: the random CLIP re-saved with ``torch.save`` to a ``.pt`` file
  (open_clip 2.23 reads a local path with ``torch.load``) instead of the hub download;
* open_clip 2.23.0 (``OPEN_CLIP_2_23``): the official ``encode_text`` needs open_clip < 2.26.

Writes ``OUT/official_fcclip.json`` (construction, per-image times) and ``OUT/official_fcclip.npz``
(``sem_seg``: (150, H, W) float32 at the photo's size). Run with the official venv::

    /work/official/venv/bin/python benchmarks/bench_official_fcclip.py WORKDIR [--repeats 3]

(WORKDIR: the folder of ``fullsize.py``; results go to ``WORKDIR/bench``.) ``bench_all.py`` then
compares its saved FC-CLIP scores with these (``--compare``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FCCLIP_ROOT = Path(os.environ.get("FCCLIP_ROOT", "/work/official/fc-clip"))
OPEN_CLIP = Path(os.environ.get("OPEN_CLIP_2_23", "/work/official/extra/open_clip_2.23.0"))
PARITY = HERE.parents[1] / "shared" / "parity"


def stand_ins() -> None:
    sys.path.insert(0, str(OPEN_CLIP))
    sys.path.insert(0, str(FCCLIP_ROOT))
    msda = types.ModuleType("MultiScaleDeformableAttention")

    def ms_deform_attn_forward(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA op not built: MSDeformAttn takes its CPU branch")

    msda.ms_deform_attn_forward = ms_deform_attn_forward  # type: ignore[attr-defined]
    sys.modules["MultiScaleDeformableAttention"] = msda


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--image", default=str(PARITY / "astronaut.png"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    args = ap.parse_args()
    args.work = args.work.resolve()
    args.image = str(Path(args.image).resolve())
    os.chdir(FCCLIP_ROOT)  # the official class files are opened (at import) relative to the working directory
    t = time.perf_counter()
    stand_ins()
    import torch

    torch.set_num_threads(args.threads)
    import detectron2.data.transforms as T
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.data.detection_utils import read_image
    from detectron2.modeling import build_model
    from detectron2.projects.deeplab import add_deeplab_config
    from safetensors.torch import load_file

    from fcclip import add_fcclip_config, add_maskformer2_config
    import_s = time.perf_counter() - t
    import_cpu = time.process_time()

    out_dir = args.work / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    clip_pt = out_dir / "convnext_large_d_320.pt"
    if not clip_pt.is_file():
        torch.save(load_file(str(args.work / "convnext_large_d_320.safetensors")), clip_pt)
    t, c = time.perf_counter(), time.process_time()
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_fcclip_config(cfg)
    cfg.merge_from_file("configs/coco/panoptic-segmentation/fcclip/fcclip_convnext_large_eval_ade20k.yaml")
    cfg.MODEL.WEIGHTS = str(args.work / "fcclip_convnext_large.pth")
    cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS = str(clip_pt)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg)
    model.eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    torch.set_grad_enabled(False)
    construct_s = time.perf_counter() - t
    construct_cpu = time.process_time() - c
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)

    cpu: list[float] = []

    def predict() -> tuple[np.ndarray, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        img = read_image(args.image, format=cfg.INPUT.FORMAT)
        h, w = img.shape[:2]
        x = aug.get_transform(img).apply_image(img)
        x = torch.as_tensor(np.ascontiguousarray(x.transpose(2, 0, 1)))
        sem = model([{"image": x, "height": h, "width": w}])[0]["sem_seg"]
        cpu.append(time.process_time() - c0)
        return sem.numpy(), time.perf_counter() - t0

    times = []
    sem = None
    for _ in range(1 + args.repeats):
        sem, dt = predict()
        times.append(dt)
        print(f"# official FC-CLIP predict {dt:.1f} s", file=sys.stderr, flush=True)
    res = {"import_s": import_s, "construct_s": construct_s, "predict_s": times,
           "cold_s": import_s + construct_s + times[0],
           "cpu_s": {"import": import_cpu, "construct": construct_cpu, "predict": cpu,
                     "cold": import_cpu + construct_cpu + cpu[0]},
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "threads": args.threads,
           "config": "configs/coco/panoptic-segmentation/fcclip/fcclip_convnext_large_eval_ade20k.yaml"}
    np.savez(out_dir / "official_fcclip.npz", sem_seg=sem.astype(np.float32))
    (out_dir / "official_fcclip.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
