#!/usr/bin/env python3
"""Every method at full size: cold run, warm-cache construction, warm predict, folder rate, peak RSS.

The networks are the full-size random ones written by ``benchmarks/fullsize.py WORKDIR`` (official
sizes, random values: speed depends on sizes, not values). Each method runs in its own fresh process
with an empty text-embedding cache (``OVSS_CACHE``), on its default protocol (``models.json``):

* import: ``import torch, ovss`` in the fresh process;
* cold run: import + construction with an empty cache (weights read, the protocol's text classifier
  encoded) + the first image -- what ``ovss segment photo.jpg`` pays;
* construction with a warm cache: a second segmenter in the same process (weights read again, the
  classifier from the cache; imports excluded);
* warm predict: median of ``--repeats`` ``predict(image)`` on the 512x512 astronaut photo;
* folder: ``--photos`` JPEGs of VOC-like sizes, first one by one (``predict(path)``, decoding
  included), then through ``predict_batch(paths)`` (decoding in a thread while the network runs);
  the ratio of the two rates is the "folder vs single image" figure;
* peak RSS of the process (``ru_maxrss``).

The scores of the warm predict are saved (``WORKDIR/bench/<method>.npz``) for
``benchmarks/bench_official.py`` to compare with the official code's.

Usage::

    python benchmarks/fullsize.py WORKDIR [--clip OFFICIAL_DIR/vitb16_random.safetensors]
    python benchmarks/bench_all.py WORKDIR [--methods sclip,fc_clip,...] [--repeats 3] [--photos 8]
        [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PARITY = HERE.parents[1] / "shared" / "parity"

#: methods whose single image takes tens of seconds at full size on 2 cores: fewer folder photos
SLOW = {"pnp_ovss": 2, "fc_clip": 3, "cat_seg": 3, "clip_diy": 4, "proxyclip": 4, "naclip": 4}


#: methods whose ``text_embeddings`` takes another argument than a Vocabulary (CAT-Seg encodes at predict)
OWN_TEXT = {"cat_seg"}


def load() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One method in this fresh process; returns the measurements."""
    t = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(cfg["threads"])
    import ovss

    out: dict[str, Any] = {"method": cfg["method"], "import_s": time.perf_counter() - t, "load_start": load(),
                           "import_cpu_s": time.process_time()}
    kw = dict(cfg["kwargs"])

    cpu: dict[str, Any] = {}  # CPU seconds of this process (all threads): the work, whatever the load

    def construct(key: str) -> tuple[Any, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        seg = ovss.create_segmenter(cfg["method"], **kw)
        if hasattr(seg, "text_embeddings") and cfg["method"] not in OWN_TEXT:  # the protocol's classifier, as the official constructors build it
            seg.text_embeddings(seg.vocabulary())
        cpu[key] = time.process_time() - c0
        return seg, time.perf_counter() - t0

    def predict(seg: Any, image: Any, key: str = "") -> tuple[Any, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        res = seg.predict(image)
        if key:
            cpu.setdefault(key, []).append(time.process_time() - c0)
        return res, time.perf_counter() - t0

    seg, out["construct_cold_s"] = construct("construct_cold")
    _, out["first_predict_s"] = predict(seg, cfg["image"], "first")
    out["cold_s"] = out["import_s"] + out["construct_cold_s"] + out["first_predict_s"]
    del seg
    import gc

    gc.collect()
    seg, out["construct_warm_s"] = construct("construct_warm")
    times = []
    res = None
    for _ in range(cfg["repeats"]):
        res, dt = predict(seg, cfg["image"], "predict")
        times.append(dt)
    out["predict_s"] = times
    out["predict_median_s"] = statistics.median(times)
    out["cpu_s"] = {"import": out["import_cpu_s"], "construct_cold": cpu["construct_cold"], "first": cpu["first"][0],
                    "construct_warm": cpu["construct_warm"], "predict_median": statistics.median(cpu["predict"])}
    out["cpu_s"]["cold"] = out["cpu_s"]["import"] + out["cpu_s"]["construct_cold"] + out["cpu_s"]["first"]
    np.savez(cfg["save"], scores=res.scores.numpy(),
             labels=(res.labels.numpy() if res.labels is not None else np.zeros(0)),
             classes=np.array([str(c) for c in res.classes]))
    photos = cfg["photos"]
    try:
        t0 = time.perf_counter()
        for p in photos:
            seg.predict(p)
        out["single_images_per_s"] = len(photos) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        seg.predict_batch(photos)
        out["batch_images_per_s"] = len(photos) / (time.perf_counter() - t0)
    except ovss.errors.InputError as e:  # random weights can refuse a photo (ProxyCLIP: similarity above 1/beta)
        out["single_images_per_s"] = out["batch_images_per_s"] = float("nan")
        out["folder_error"] = str(e)
    out["photos"] = len(photos)
    import resource

    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["load_end"] = load()
    return out


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, OVSS_CACHE=cfg["cache"], OMP_NUM_THREADS=str(cfg["threads"]),
               PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"method": cfg["method"], "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                f"exit {proc.returncode}", "stderr": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="?", help="folder written by benchmarks/fullsize.py (models.json)")
    ap.add_argument("--methods", help="comma-separated (default: every method in models.json)")
    ap.add_argument("--image", default=str(PARITY / "astronaut.png"))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--json", type=Path, help="append every row here (JSON lines)")
    ap.add_argument("--official-sclip", type=Path, help="output folder of shared/bench/official_sclip.py")
    ap.add_argument("--report", action="store_true", help="only print the tables of --json's rows (the last row "
                    "of each method) beside the official results found")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.report:
        rows = {}
        for line in args.json.read_text().splitlines():
            r = json.loads(line)
            rows[r["method"]] = r
        print(table(list(rows.values())))
        print()
        print(official_table(rows, args.work, args.official_sclip))
        return
    from bench_clip import machine_info, make_folder

    models = json.loads((args.work / "models.json").read_text())
    methods = args.methods.split(",") if args.methods else list(models)
    bench = args.work / "bench"
    bench.mkdir(exist_ok=True)
    folder = bench / "photos"
    folder.mkdir(exist_ok=True)
    photos = [str(p) for p in make_folder(folder, args.photos)]
    info = machine_info()
    rows = []
    for method in methods:
        cfg = dict(method=method, kwargs=models[method], image=args.image, threads=args.threads,
                   repeats=args.repeats, photos=photos[:SLOW.get(method, args.photos)],
                   cache=str(bench / f"cache-{method}-{time.time_ns()}"), save=str(bench / f"{method}.npz"))
        r = run_child(cfg)
        r["dataset"] = models[method].get("dataset")
        r["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        r["threads"] = args.threads
        r["machine"] = info
        rows.append(r)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
        if "error" in r:
            print(f"# {method} failed: {r['error']}", file=sys.stderr, flush=True)
        else:
            print(f"# {method}: cold {r['cold_s']:.1f} s, warm construction {r['construct_warm_s']:.2f} s, "
                  f"predict {r['predict_median_s']:.2f} s, load {r['load_start']} -> {r['load_end']}",
                  file=sys.stderr, flush=True)
    print(table(rows))
    print()
    print(official_table({r["method"]: r for r in rows}, args.work, args.official_sclip))


def official_runs(work: Path, official_sclip: Path | None) -> dict[str, dict[str, Any]]:
    """Official results on the same weights: {method: {cold_s, construct_s, predict_s (warm median),
    max_abs_diff, label_agreement, note}}."""
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    bench = work / "bench"
    if official_sclip is not None and (official_sclip / "official.json").is_file() and (bench / "sclip.npz").is_file():
        off = json.loads((official_sclip / "official.json").read_text())
        ref = np.load(official_sclip / "official_out.npz")
        mine = np.load(bench / "sclip.npz")
        r, c = ref["coords"][:, 0], ref["coords"][:, 1]
        warm = off["predict_s"][1:] or off["predict_s"]
        out["sclip"] = {"construct_s": off["construct_s"], "first_s": off["predict_s"][0],
                        "predict_s": statistics.median(warm), "import_s": off.get("import_s"),
                        "max_abs_diff": float(np.abs(mine["scores"][:, r, c] - ref["seg_logits"]).max()),
                        "label_agreement": float((mine["labels"] == ref["pred"].astype(np.int64)).mean()),
                        "where": "4096 sampled pixels", "load": off.get("load"), "threads": off.get("threads")}
    # the other official harnesses (bench_official_fcclip.py, bench_official_d2.py, bench_official_clip.py)
    # write official_<name>.json + .npz (``scores``, FC-CLIP's ``sem_seg``) at the photo's size
    for method, name in [("fc_clip", "fcclip"), ("zsseg", "zsseg"), ("zegformer", "zegformer"), ("cat_seg", "cat_seg"),
                         ("proxyclip", "proxyclip"), ("clip_diy", "clip_diy"), ("pnp_ovss", "pnp_ovss")]:
        if not ((bench / f"official_{name}.json").is_file() and (bench / f"{method}.npz").is_file()):
            continue
        off = json.loads((bench / f"official_{name}.json").read_text())
        npz = np.load(bench / f"official_{name}.npz")
        ref = npz["sem_seg"] if "sem_seg" in npz else npz["scores"]
        mine = np.load(bench / f"{method}.npz")
        same = mine["scores"].shape == ref.shape
        labels = npz["labels"] if "labels" in npz else ref.argmax(0)
        out[method] = {"construct_s": off["construct_s"], "first_s": off["predict_s"][0],
                       "predict_s": statistics.median(off["predict_s"][1:] or off["predict_s"]),
                       "import_s": off.get("import_s"),
                       "max_abs_diff": float(np.nanmax(np.abs(mine["scores"] - ref))) if same else float("nan"),
                       "label_agreement": float((mine["labels"] == labels).mean())
                       if mine["labels"].shape == labels.shape else float("nan"),
                       "where": "every pixel", "load": off.get("load"), "threads": off.get("threads")}
    return out


def official_table(rows: dict[str, dict[str, Any]], work: Path, official_sclip: Path | None) -> str:
    lines = ["| method | official cold (s) | ovss cold (s) | cold ratio | official construction (s) "
             "| ovss construction, warm cache (s) | official warm predict (s) | ovss warm predict (s) | warm ratio "
             "| max abs Δ of the scores | label agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, off in official_runs(work, official_sclip).items():
        r = rows.get(method)
        if r is None or "error" in r:
            continue
        cold = off["construct_s"] + off["first_s"] + (off["import_s"] or 0.0)
        lines.append(
            f"| {method} | {cold:.1f}{'' if off['import_s'] is not None else ' (no imports)'} | {r['cold_s']:.1f} "
            f"| {cold / r['cold_s']:.1f}x | {off['construct_s']:.1f} | {r['construct_warm_s']:.2f} "
            f"| {off['predict_s']:.2f} | {r['predict_median_s']:.2f} | {off['predict_s'] / r['predict_median_s']:.2f}x "
            f"| {off['max_abs_diff']:.2e} ({off['where']}) | {100 * off['label_agreement']:.3f}% |")
    return "\n".join(lines)


def cpu_cells(r: dict[str, Any]) -> str:
    c = r.get("cpu_s")
    if not c:
        return "–"
    return f"{c['cold']:.1f} / {c['construct_warm']:.2f} / {c['predict_median']:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | protocol | import (s) | cold run (s) | construction, warm cache (s) | first predict (s) "
             "| warm predict (s) | images/s one by one | images/s predict_batch | batch / single "
             "| peak RSS (MiB) | CPU s: cold / warm construction / warm predict | load (1-min avg, start -> end) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r.get('dataset')} | failed: {r['error'][:80]} |" + " |" * 10)
            continue
        lines.append(
            f"| {r['method']} | {r['dataset']} | {r['import_s']:.1f} | {r['cold_s']:.1f} | {r['construct_warm_s']:.2f} "
            f"| {r['first_predict_s']:.2f} | {r['predict_median_s']:.2f} | {r['single_images_per_s']:.3f} "
            f"| {r['batch_images_per_s']:.3f} | {r['batch_images_per_s'] / r['single_images_per_s']:.2f} "
            f"| {r['peak_rss_mib']:.0f} | {cpu_cells(r)} | {r['load_start'].split()[0]} -> {r['load_end'].split()[0]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
