#!/usr/bin/env python3
"""Speed, memory and exactness of the training-free CLIP engine, beside the official SCLIP code.

Each (method, precision) runs in its own fresh process with an empty text-embedding cache:

* cold run: construction with an empty cache (weights loaded, the dataset's text classifier
  encoded) + the first image;
* construction with a warm cache (a second segmenter, classifier read from the cache);
* warm per-image predict (median of ``--repeats`` after the cold one);
* images per second on a folder of 16 photos (decoding included, one model loaded);
* peak memory (peak RSS of the process);
* the image encoder: its FLOPs on the image's windows (``torch.utils.flop_counter``) over its
  time, as a share of this machine's measured matmul peak (best of square matmuls);
* for bf16/fp16: max |Δ| of the scores against fp32 and the share of pixels whose label changes.

With ``--official DIR`` (the output folder of ``shared/bench/official_sclip.py``, run on the
same machine) the weights come from DIR, and the official construction / predict times, the
ratios and the max |Δ| of our SCLIP scores against the official ones at its 4096 sampled
pixels are printed too. "Construction" excludes imports on both sides (the official
``construct_s`` times ``CLIPForSegmentation(...)`` only); our import time is printed apart.

Usage::

    python benchmarks/bench_clip.py --official WORKDIR [--methods sclip,clearclip] \
        [--precisions fp32,bf16] [--device cpu] [--threads 2] [--large]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARITY = HERE.parents[1] / "shared" / "parity"


# ----------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, torch version, GPU name."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def matmul_peak(device: str, dtype_name: str = "fp32", n: int = 2048, reps: int = 8) -> float:
    """Best GFLOP/s of an n x n x n matmul on ``device`` (``dtype_name``: fp32, bf16, fp16): the
    better of ``a @ b`` and, on the CPU, ``ovss.kernels.linear`` (oneDNN), which the engine uses."""
    import torch

    from ovss import kernels

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    if device == "cpu" and dtype_name == "fp16":
        dtype = torch.float32  # fp16 matmul on CPU is emulated; its peak is not meaningful
    if device != "cpu":
        n, reps = 8192, 20
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    products = [lambda: a @ b]
    if device == "cpu" and dtype == torch.float32:
        products.append(lambda: kernels.linear(a, b))
    best = float("inf")
    with torch.no_grad():
        for product in products:
            for _ in range(reps + 1):
                _sync(device)
                t = time.perf_counter()
                product()
                _sync(device)
                best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- photos
def make_folder(folder: Path, n: int = 16) -> list[Path]:
    """n photos (scikit-image's colour photos, flipped/cropped/resized to VOC-like sizes) as JPEG."""
    import cv2
    import numpy as np
    from skimage import data

    base = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        try:
            base.append(np.ascontiguousarray(getattr(data, name)()[..., :3]))
        except Exception:  # a photo that needs a download
            continue
    sizes = [(500, 375), (375, 500), (500, 333), (640, 480)]
    out = []
    for i in range(n):
        img = base[i % len(base)]
        if (i // len(base)) % 2:
            img = img[:, ::-1]
        img = cv2.resize(np.ascontiguousarray(img), sizes[(i // 2) % len(sizes)], interpolation=cv2.INTER_AREA)
        path = folder / f"photo_{i:02d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        out.append(path)
    return out


# ----------------------------------------------------------------------------- child
def child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One (method, precision) in this process; returns the measurements."""
    t = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(cfg["threads"])
    import ovss
    from ovss.imageio import load_image

    import_s = time.perf_counter() - t
    device = cfg["device"]
    kw = dict(model=cfg["model"], pretrained=cfg["pretrained"], dataset=cfg["dataset"], device=device,
              precision=cfg["precision"])

    def construct() -> tuple[Any, float]:
        _sync(device)
        t0 = time.perf_counter()
        seg = ovss.create_segmenter(cfg["method"], **kw)
        seg.text_embeddings(seg.vocabulary())  # the dataset's classifier, as the official __init__
        _sync(device)
        return seg, time.perf_counter() - t0

    def predict(seg: Any, image: Any) -> tuple[Any, float]:
        _sync(device)
        t0 = time.perf_counter()
        res = seg.predict(image)
        _sync(device)
        return res, time.perf_counter() - t0

    out: dict[str, Any] = {"method": cfg["method"], "precision": cfg["precision"], "import_s": import_s}
    seg, out["construct_cold_s"] = construct()
    res, out["first_predict_s"] = predict(seg, cfg["image"])
    out["cold_s"] = out["construct_cold_s"] + out["first_predict_s"]
    del seg
    seg, out["construct_warm_s"] = construct()
    times = [predict(seg, cfg["image"])[1] for _ in range(cfg["repeats"])]
    out["predict_s"] = times
    out["predict_median_s"] = statistics.median(times)
    res = seg.predict(cfg["image"])
    np.savez(cfg["save"], logits=res.logits.cpu().numpy(), labels=res.labels.cpu().numpy())

    # folder of photos
    photos = cfg["photos"]
    seg.predict(photos[0])
    _sync(device)
    t0 = time.perf_counter()
    for p in photos:
        seg.predict(p)
    _sync(device)
    out["images_per_s"] = len(photos) / (time.perf_counter() - t0)

    # the image encoder on this image's windows, batched as the engine batches them
    from torch.utils.flop_counter import FlopCounterMode

    rgb = load_image(cfg["image"])
    x = seg.preprocess(rgb)
    p = seg.protocol
    if p.crop > 0:
        from ovss.methods.clip_dense import window_boxes

        boxes = list(dict.fromkeys(window_boxes(x.shape[2], x.shape[3], p.crop, p.stride)))
        crops = torch.cat([x[:, :, a:b, c:d] for a, b, c, d in boxes])
        n = seg.window_batch(crops.shape[2], crops.shape[3], len(seg.vocabulary().query_words))
        batches = [crops[i:i + n] for i in range(0, len(crops), n)]
    else:
        batches = [x]
    from ovss import kernels

    with torch.no_grad():
        onednn, kernels.ONEDNN_LINEAR = kernels.ONEDNN_LINEAR, False  # the counter knows aten ops only
        with FlopCounterMode(display=False) as fc:
            for b in batches:
                seg.features(b)
        kernels.ONEDNN_LINEAR = onednn
        flops = fc.get_total_flops()
        best = float("inf")
        for _ in range(3):
            _sync(device)
            t0 = time.perf_counter()
            for b in batches:
                seg.features(b)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    out["encoder_gflop"] = flops / 1e9
    out["encoder_s"] = best
    out["encoder_gflops"] = flops / best / 1e9
    out["batch_size"] = seg.window_batch(p.crop, p.crop) if p.crop > 0 else 1

    out["peak_rss_mib"] = _peak_rss_mib()
    if cfg.get("large"):
        import cv2

        big = cv2.resize(rgb, (6000, 4000), interpolation=cv2.INTER_LINEAR)
        res, out["large_predict_s"] = predict(seg, big)
        out["large_output_mib"] = (res.logits.numel() * 4 + res.labels.numel() * 8) / 2 ** 20
        out["large_peak_rss_mib"] = _peak_rss_mib()
        del res, big
    if device.startswith("cuda"):
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- parent
def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, OVSS_CACHE=cfg["cache"], OMP_NUM_THREADS=str(cfg["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark of {cfg['method']} ({cfg['precision']}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_official(ours_npz: str, official_dir: Path) -> dict[str, float]:
    """max |Δ| of our scores at the official 4096 sampled pixels, and label agreement."""
    import numpy as np

    ref = np.load(official_dir / "official_out.npz")
    mine = np.load(ours_npz)
    r, c = ref["coords"][:, 0], ref["coords"][:, 1]
    d = float(np.abs(mine["logits"][:, r, c] - ref["seg_logits"]).max())
    same = float((mine["labels"] == ref["pred"].astype(np.int64)).mean())
    return {"max_abs_diff": d, "label_agreement": same}


def fmt(v: float | None, nd: int = 2) -> str:
    if v is None:
        return "–"
    return f"{v:.{nd}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, help="output folder of shared/bench/official_sclip.py")
    ap.add_argument("--model", help="open_clip model name or config JSON (default: DIR/vitb16_random.json)")
    ap.add_argument("--pretrained", help="weights (default: DIR/vitb16_random.safetensors)")
    ap.add_argument("--methods", default="sclip", help="comma-separated (sclip, clearclip, naclip, maskclip, vanilla)")
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, fp16")
    ap.add_argument("--dataset", default="voc21")
    ap.add_argument("--image", default=str(PARITY / "astronaut.png"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--large", default="", help="comma-separated methods that also segment a 6000x4000 photo "
                    "(fp32; time, peak memory)")
    ap.add_argument("--json", type=Path, help="also write all measurements here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    model = args.model or (str(args.official / "vitb16_random.json") if args.official else None)
    pretrained = args.pretrained or (str(args.official / "vitb16_random.safetensors") if args.official else None)
    if model is None:
        raise SystemExit("give --official DIR (weights written by official_sclip.py) or --model/--pretrained")
    import torch

    torch.set_num_threads(args.threads)
    info = machine_info()
    precisions = args.precisions.split(",")
    peaks = {pr: matmul_peak(args.device, pr) for pr in dict.fromkeys(["fp32"] + precisions)}
    work = Path(tempfile.mkdtemp(prefix="ovss-bench-"))
    photos = [str(p) for p in make_folder(work, args.photos)]
    rows = []
    for method in args.methods.split(","):
        for pr in precisions:
            cfg = dict(method=method, precision=pr, model=model, pretrained=pretrained, dataset=args.dataset,
                       image=args.image, device=args.device, threads=args.threads, repeats=args.repeats,
                       photos=photos, large=method in args.large.split(",") and pr == "fp32", cache=str(work / f"cache-{method}-{pr}"),
                       save=str(work / f"{method}-{pr}.npz"))
            r = run_child(cfg)
            r["save"] = cfg["save"]
            rows.append(r)
            print(f"# done {method} {pr}: cold {r['cold_s']:.2f} s, predict {r['predict_median_s']:.3f} s",
                  file=sys.stderr, flush=True)
    import numpy as np

    for r in rows:
        base = next(b for b in rows if b["method"] == r["method"] and b["precision"] == "fp32") \
            if any(b["method"] == r["method"] and b["precision"] == "fp32" for b in rows) else None
        if base is not None and r is not base:
            a, b = np.load(r["save"]), np.load(base["save"])
            r["max_abs_diff_vs_fp32"] = float(np.abs(a["logits"] - b["logits"]).max())
            r["label_change_vs_fp32"] = float((a["labels"] != b["labels"]).mean())
        peak = peaks.get(r["precision"], peaks["fp32"])
        r["encoder_share_of_peak"] = r["encoder_gflops"] / peak
    official = None
    if args.official and (args.official / "official.json").is_file():
        official = json.loads((args.official / "official.json").read_text())
        for r in rows:
            if r["method"] == "sclip" and args.dataset == "voc21":
                r["vs_official"] = compare_official(r["save"], args.official)

    # ------------------------------------------------------------------ table
    print(f"Machine: {info['cpu']}, {info['cores']} logical cores{', ' + info['gpu'] if 'gpu' in info else ''}; "
          f"torch {info['torch']}, {args.threads} threads, device {args.device}")
    print("Measured matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"Image: {args.image} ({args.dataset} protocol); folder: {len(photos)} photos")
    print()
    print("| method | precision | cold run (s) | construction, warm cache (s) | predict, warm (s) | images/s (folder) "
          "| peak RSS (MiB) | encoder GFLOP/s (share of peak) | max abs Δ vs fp32 | labels changed vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["method"], r["precision"], fmt(r["cold_s"]), fmt(r["construct_warm_s"]),
                 fmt(r["predict_median_s"], 3), fmt(r["images_per_s"]), f"{r['peak_rss_mib']:.0f}",
                 f"{r['encoder_gflops']:.0f} ({100 * r['encoder_share_of_peak']:.0f}%)",
                 f"{r['max_abs_diff_vs_fp32']:.2e}" if "max_abs_diff_vs_fp32" in r else "–",
                 f"{100 * r['label_change_vs_fp32']:.3f}%" if "label_change_vs_fp32" in r else "–"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("Import time (not in the rows above): " + ", ".join(
        f"{r['method']}/{r['precision']} {r['import_s']:.1f} s" for r in rows))
    if any("large_predict_s" in r for r in rows):
        print()
        print("| method | precision | 6000x4000 predict (s) | peak RSS before -> after (MiB) "
              "| returned scores + labels (MiB) |")
        print("|---|---|---|---|---|")
        for r in rows:
            if "large_predict_s" in r:
                print(f"| {r['method']} | {r['precision']} | {r['large_predict_s']:.1f} | {r['peak_rss_mib']:.0f} -> "
                      f"{r['large_peak_rss_mib']:.0f} | {r['large_output_mib']:.0f} |")
    if official is not None:
        off_predict = official["predict_s"]
        off_warm = statistics.median(off_predict[1:]) if len(off_predict) > 1 else off_predict[0]
        off_cold = official["construct_s"] + off_predict[0]
        print()
        print(f"Official SCLIP (same machine, {official.get('threads', '?')} threads): construction "
              f"{official['construct_s']:.1f} s, predict {', '.join(f'{t:.2f}' for t in off_predict)} s")
        print()
        print("| SCLIP voc21 | official | ovss | official / ovss |")
        print("|---|---|---|---|")
        for r in rows:
            if r["method"] != "sclip" or r["precision"] != "fp32":
                continue
            print(f"| cold run (construction + first image), s | {off_cold:.2f} | {r['cold_s']:.2f} | "
                  f"{off_cold / r['cold_s']:.1f}x |")
            print(f"| construction (official: always cold; ovss: warm cache), s | {official['construct_s']:.2f} | "
                  f"{r['construct_warm_s']:.2f} | {official['construct_s'] / r['construct_warm_s']:.1f}x |")
            print(f"| construction, both with an empty cache, s | {official['construct_s']:.2f} | "
                  f"{r['construct_cold_s']:.2f} | {official['construct_s'] / r['construct_cold_s']:.1f}x |")
            print(f"| warm predict (official: median of runs 2-3), s | {off_warm:.3f} | {r['predict_median_s']:.3f} | "
                  f"{off_warm / r['predict_median_s']:.2f}x |")
            vs = r.get("vs_official")
            if vs:
                print(f"| max abs Δ of the scores at the 4096 sampled pixels | – | {vs['max_abs_diff']:.2e} | – |")
                print(f"| label agreement with the official prediction | – | {100 * vs['label_agreement']:.4f}% | – |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "matmul_peak_gflops": peaks, "rows": rows,
                                         "official": official}, indent=1))


if __name__ == "__main__":
    main()
