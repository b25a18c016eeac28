#!/usr/bin/env python3
"""CAT-Seg speed and memory: construction, warm predict and peak RSS.

Two models, each measured in its own fresh process (so the peak RSS is that model's):

* ``tiny``: the parity fixture (``shared/parity/cat_seg``: a 9-block width-128 CLIP, aggregator of
  width 32), loaded from its official ``.pth``;
* ``vitb``: a full-size CAT-Seg ViT-B/16 with random weights: the sizes of the official
  ``configs/vitb_384.yaml`` (CLIP ViT-B/16, hidden 128, 2 layers, 4 heads, guidance 512 -> 128,
  decoder 64 / 32 with guidance 32 / 16), written as an official-layout checkpoint (q/k/v split
  as the vendored CLIP keeps them) and loaded through the importer like ``model_base.pth``.

Per model: construction (checkpoint read + CLIP built + weights loaded; imports excluded), the
first predict (text embeddings of the vocabulary encoded), the warm predict (median of
``--repeats``), and the process's peak RSS. The vocabulary is a dataset protocol's (``--dataset``,
default ade20k: 150 classes through the official five-view sliding window) or ``--classes N``
words of it (the class aggregation always runs on at least 256 tokens per pixel; the other stages
scale with the number of classes).

Usage::

    python benchmarks/bench_cat_seg.py [--models tiny,vitb] [--dataset ade20k] [--classes N]
        [--device cpu] [--threads 2] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARITY = HERE.parents[1] / "shared" / "parity"
sys.path.insert(0, str(HERE))

from bench_clip import machine_info  # noqa: E402  (one definition of the machine line)


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_vitb_checkpoint(path: Path) -> None:
    """A random CAT-Seg ViT-B/16 in the official checkpoint layout (``configs/vitb_384.yaml`` sizes)."""
    import torch
    from safetensors.torch import save_file

    from ovss.backbones.clip import load_clip
    from ovss.importers.cat_seg import AGG_PREFIX, CLIP_PREFIX
    from ovss.models.cat_seg import Aggregator, CATSegConfig

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16-quickgelu", None).model
    sd: dict[str, torch.Tensor] = {}
    for k, v in clip.state_dict().items():
        if k.endswith("attn.in_proj_weight"):
            for name, part in zip("qkv", v.chunk(3, 0)):
                sd[CLIP_PREFIX + k.replace("in_proj_weight", f"{name}_proj_weight")] = part.clone()
        else:
            sd[CLIP_PREFIX + k] = v
    agg = Aggregator(config=CATSegConfig(text_guidance_dim=512, appearance_guidance_dim=512))
    for k, v in agg.state_dict().items():
        if v.is_floating_point() and "attn_mask" not in k:
            v = torch.randn_like(v) * (0.02 if v.ndim > 1 else 0.01)
        sd[AGG_PREFIX + k] = v
    for name, (cout, k) in {"upsample1": (256, 2), "upsample2": (128, 4)}.items():
        sd[f"{name}.weight"] = torch.randn(768, cout, k, k) * 0.02
        sd[f"{name}.bias"] = torch.zeros(cout)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


def measure(model: str, dataset: str, classes: int | None, device: str, repeats: int, workdir: Path) -> dict[str, Any]:
    """Run in a fresh process: construction, first and warm predict, peak RSS."""
    import numpy as np
    import torch
    from skimage import data

    import ovss
    from ovss.methods.cat_seg import dataset_vocabulary

    if model == "tiny":
        d = PARITY / "cat_seg"
        kw = {"model": str(d / "tiny_clip_catseg.json"), "checkpoint": str(d / "catseg_tiny.pth"),
              "config": str(d / "catseg_tiny_config.yaml")}
    else:
        ckpt = workdir / "catseg_vitb_random.safetensors"
        if not ckpt.is_file():
            write_vitb_checkpoint(ckpt)
        kw = {"model": "ViT-B-16", "checkpoint": str(ckpt)}
    rss_before = peak_rss_mib()
    t = time.perf_counter()
    seg = ovss.create_segmenter("cat_seg", dataset=dataset, device=device, use_cache=False, **kw)
    construct = time.perf_counter() - t
    vocab = dataset_vocabulary(dataset)
    chosen = None if classes is None else list(vocab.names[:classes])
    photo = np.ascontiguousarray(data.astronaut())  # 512 x 512

    def once() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        seg.predict(photo, chosen)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = once()
    warm = [once() for _ in range(repeats)]
    return {"model": model, "dataset": dataset, "classes": classes or len(vocab), "construct_s": round(construct, 2),
            "first_predict_s": round(first, 2), "warm_predict_s": round(statistics.median(warm), 2),
            "peak_rss_mib": round(peak_rss_mib()), "rss_before_construct_mib": round(rss_before),
            "params_m": round(sum(p.numel() for p in seg.net.parameters()) / 1e6, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,vitb")
    ap.add_argument("--dataset", default="ade20k")
    ap.add_argument("--classes", type=int, default=None, help="use the first N classes of the protocol")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child, args.dataset, args.classes, args.device, args.repeats, args.workdir)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            cmd = [sys.executable, __file__, "--child", model, "--dataset", args.dataset, "--device", args.device,
                   "--repeats", str(args.repeats), "--workdir", tmp]
            if args.classes:
                cmd += ["--classes", str(args.classes)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            env = dict(os.environ, OVSS_CACHE=str(Path(tmp) / "cache"))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"{model} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    info = machine_info()
    print(f"machine: {info}")
    print("| model | params (M) | classes | construction (s) | first predict (s) | warm predict (s) | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']} | {r['dataset']} {r['classes']} | {r['construct_s']} | "
              f"{r['first_predict_s']} | {r['warm_predict_s']} | {r['peak_rss_mib']} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
