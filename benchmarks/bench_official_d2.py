#!/usr/bin/env python3
"""The official ZSSeg, ZegFormer and CAT-Seg code at full size on CPU, timed, beside ovss on the same weights.

Runs one official repository (``--method``) unchanged through detectron2 (facebookresearch/detectron2
@ 02b5c4e on CPU; none of the three models calls its compiled ``_C`` ops -- deformable convolution, rotated
boxes -- and ZegFormer's ``roi_align`` is torchvision's, so the source tree on ``sys.path`` and a CPU build
run the same code), in float32 with ``--threads`` torch threads, on the full-size random weights of
``benchmarks/fullsize.py`` (``WORKDIR/models.json``), with the official eval config of the method's ovss
default protocol, on ``shared/parity/astronaut.png``:

=========  ===========================================  =====================================================
method     repository (``OFFICIAL_ROOT``/...)             eval config (+ overrides)
=========  ===========================================  =====================================================
zsseg      MendelXu/zsseg.baseline @ d77c3af             ``configs/coco-stuff-164k-156/
           (``zsseg.baseline``)                          zero_shot_maskformer_R101c_bs32_60k.yaml`` (the
                                                         README's zero-shot eval command): COCO-Stuff 171,
                                                         learned prompts, lambda 0.8, MASK_THR 0.5, 640/2560
zegformer  dingjiansw101/ZegFormer @ 8cb9e8f             ``configs/coco-stuff/zegformer_R101_bs32_60k_vit16_
           (``ZegFormer``)                               coco-stuff_gzss_eval.yaml``: 156 -> 171 GZSS, single
                                                         prompt, ensemble, gamma 0.1, 640/2560
cat_seg    cvlab-kaist/CAT-Seg @ 6d3a188 (``CAT-Seg``)   ``configs/vitb_384.yaml`` + the ADE-150 block of
                                                         ``eval.sh`` (``TEST_CLASS_JSON datasets/ade150.json``,
                                                         ``DATASETS.TEST ade20k_150_test_sem_seg``,
                                                         ``TEST.SLIDING_WINDOW True``, ``POOLING_SIZES [1,1]``)
=========  ===========================================  =====================================================

What runs is what ``train_net.py --eval-only`` runs per image: ``detectron2.modeling.build_model(cfg)`` (the
repository's registered meta-architecture; ``Trainer.build_model`` adds only a log line),
``DetectionCheckpointer(model).load(MODEL.WEIGHTS)``, then per image ``DatasetMapper(cfg, is_train=False)`` (PIL
read, ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``) and ``model([inputs])[0]["sem_seg"]`` under
``torch.no_grad``. ZSSeg's test loader (``mask_former.data.build``) adds ``meta = {"dataset_name": ...}`` to each
input, so the input here carries it too.

Stand-ins (only what cannot run here; each counted in the JSON's ``stand_ins``):

* **ZegFormer, CAT-Seg: the CLIP download.** Both vendored ``clip.load("ViT-B/16")`` download OpenAI's
  TorchScript archive (``clip._download``); it returns a local TorchScript archive instead: ZegFormer's holds the
  benchmark's ViT-B/16 (``models.json`` ``pretrained``, written with
  ``tests/fixtures/maskformer_train/make_fixture.py::write_jit_clip``), CAT-Seg's the CLIP tensors of the
  CAT-Seg checkpoint with q/k/v packed (``tests/fixtures/cat_seg_train/make_fixture.py::scratch_clip_archive``;
  the checkpoint load overwrites every CLIP tensor afterwards anyway). ZSSeg needs no stand-in: its
  ``CLIP_MODEL_NAME`` takes the path of a state dict, here the ViT-B/16 re-saved with ``torch.save``.
* **ZegFormer, CAT-Seg: ``torch.Tensor.cuda`` returns the tensor itself** (``.cuda()`` is hard-coded in
  ZegFormer's ``zeroshot_classifier`` and CAT-Seg's ``class_embeddings`` / ``get_text_embeds``).
* **ZegFormer, CAT-Seg: ``torch.Tensor.half`` returns the tensor itself**, so their vendored CLIPs stay float32.
  The releases run CLIP in fp16 on a GPU: ZegFormer at construction and inference (``convert_weights``;
  ``logit_scale.half() * ... @ text.half()``), CAT-Seg at construction only (``convert_weights`` before
  ``load_state_dict``: the construction-time text features, never used at inference, then ``.float()``; the
  checkpoint load overwrites every CLIP tensor afterwards). fp16 is not what ovss (float32) computes, and this
  CPU has no fp16 arithmetic: a 77 x 512 x 2048 fp16 matmul runs at 0.6 GFLOP/s per thread against 75 for
  fp32, so CAT-Seg's fp16 construction (321 prompts of 77 tokens through the ViT-B/16 text tower, ~1.9 TFLOP)
  alone would take ~25 min here. ZegFormer's CLIP stays float32 as in ``shared/parity/zegformer``; CAT-Seg's
  scores do not depend on it.
* **ZSSeg: ``wandb``** (imported by ``mask_former/utils/events.py`` for its training logger) is an empty module
  when the package is not installed (``stand_ins.wandb``); nothing of it runs at eval.
* **ZegFormer: the class-name JSONs** (``TRAIN_CLASS_JSON`` / ``TEST_CLASS_JSON``) are produced by the
  repository's own ``datasets/coco-stuff/create_cocostuff_class_names_json.py``, run in a scratch copy of its
  ``datasets/coco/coco_stuff/split`` under ``WORKDIR/bench`` (the checkout stays untouched); the two config
  keys point there.

Weights (converted copies under ``WORKDIR/bench``, written once, outside the timers):

* ``fullsize.py`` writes the ZSSeg / ZegFormer checkpoints as plain dicts. The released checkpoints were written
  by detectron2's ``Checkpointer`` from ``model.state_dict()``, which carries the state-dict ``_metadata``; both
  heads (``ZeroShotMaskFormerHead``, ``ZegFormerHead``) rename every ``sem_seg_head.*`` key outside
  ``predictor`` to ``sem_seg_head.pixel_decoder.*`` when ``_metadata["sem_seg_head"]["version"]`` is missing,
  which would leave the whole pixel decoder at its random init (silently: the load is non-strict; quirk 1 of
  ``shared/parity/zsseg/README.md``). The copies (``official_zsseg_r101c.pth``, ``official_zegformer_r101.pth``)
  carry ``_metadata = {"sem_seg_head": {"version": 2}}`` (the head's ``_version``), the tensors unchanged.
* CAT-Seg's ``catseg_vitb.safetensors`` is re-saved as ``{"model": state_dict}`` (``official_catseg_vitb.pth``).
* After loading, every tensor of the official model is compared with its source (``load_check``: the
  checkpoint, else the ViT-B/16 file for ZSSeg / ZegFormer's frozen CLIP; ZSSeg's ``clip.load`` rounds the
  CLIP to fp16 and back, exact for ``fullsize.py``'s fp16-representable weights).

Outputs (``WORKDIR/bench``): ``official_<method>.json`` (``import_s``, ``construct_s``, ``predict_s`` [first, then
``--repeats``], ``cold_s``, ``cpu_s`` {import, construct, predict, cold} = ``time.process_time()`` of the process,
``peak_rss_mib``, ``load`` (1/5/15-min load average at the end) and ``load_start``, ``threads``, ``config``,
``stand_ins``, ``load_check``) and ``official_<method>.npz``:

* ``scores`` float32 (C, H, W) at the photo's size: the official ``model([...])[0]["sem_seg"]`` of the last
  predict, its class channels put into ovss's class order (the protocol's class file in ``ovss/classnames``,
  matched by name): ZSSeg's ``semantic_inference`` (sum over queries of ensembled class probabilities x sigmoid
  masks, ``sem_seg_postprocess``-ed; same order as ovss), ZegFormer's ``semantic_inference2`` output minus
  ``GZERO_CALIBRATE`` on the seen classes (official order: 156 seen then 15 unseen, ``all_classnames.json``;
  ovss: COCO-Stuff id order), CAT-Seg's ``inference_sliding_window`` sigmoid probabilities (``ade150.json``
  order = ovss's). These are exactly what ovss's ``SegmentationResult.scores`` hold for the three methods
  (``ovss/methods/{zsseg,zegformer,cat_seg}.py``: ``Segmentation(out["sem_seg"])`` /
  ``class_scores(res["sem_seg"])``, identity for ADE-150);
* ``labels`` int64 (H, W) = ``scores.argmax(0)``; ``classes`` (ovss order), ``official_classes`` (the model's
  order), ``official_index`` (ovss class c = official channel ``official_index[c]``).

Usage (the official venv: torch 2.14.1 CPU, detectron2 CPU build, fvcore, iopath, pycocotools, timm, ftfy,
regex, einops, open_clip_torch, scipy)::

    /work/official/venv/bin/python benchmarks/bench_official_d2.py WORKDIR --method zsseg [--repeats 2]
    python benchmarks/bench_all.py WORKDIR --methods zsseg --json rows.jsonl     # ovss, saves bench/zsseg.npz
    python benchmarks/bench_official_d2.py WORKDIR --method zsseg --compare       # max |d|, label agreement

(``--compare`` needs only numpy; it writes ``official_<method>_compare.json``.)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PARITY = REPO.parent / "shared" / "parity"
OFFICIAL = Path(os.environ.get("OFFICIAL_ROOT", "/work/official"))

SPECS: dict[str, dict[str, Any]] = {
    "zsseg": {"root": "zsseg.baseline", "commit": "d77c3af72cc706125698d2538f3b14ba3d9b58aa",
              "config": "configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_bs32_60k.yaml",
              "protocol": "coco_stuff", "classes": "zsseg/coco_stuff_171.txt",
              "clip_prefix": "clip_adapter.clip_model."},
    "zegformer": {"root": "ZegFormer", "commit": "8cb9e8fbddfbee80b21168726d4f76f571def761",
                  "config": "configs/coco-stuff/zegformer_R101_bs32_60k_vit16_coco-stuff_gzss_eval.yaml",
                  "protocol": "coco_stuff", "classes": "zsseg/coco_stuff_171.txt",
                  "clip_prefix": "sem_seg_head.predictor.clip_model."},
    "cat_seg": {"root": "CAT-Seg", "commit": "6d3a188af95165147fe2f34a8237fa7d2633e784",
                "config": "configs/vitb_384.yaml", "protocol": "ade20k", "classes": "cat_seg/ade150.json",
                # eval.sh, ADE20k-150 block
                "overrides": ["MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", "datasets/ade150.json",
                              "DATASETS.TEST", ("ade20k_150_test_sem_seg",), "TEST.SLIDING_WINDOW", True,
                              "MODEL.SEM_SEG_HEAD.POOLING_SIZES", [1, 1]]},
}


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def newer(target: Path, *sources: Path) -> bool:
    """True when ``target`` exists and is at least as new as every source."""
    return target.is_file() and all(target.stat().st_mtime >= s.stat().st_mtime for s in sources)


def ovss_class_names(spec: str) -> list[str]:
    """The protocol's class list as ovss reads it (whole lines / JSON entries, stripped)."""
    path = REPO / "ovss" / "classnames" / spec
    if path.suffix == ".json":
        return [n.strip() for n in json.loads(path.read_text(encoding="utf-8"))]
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def class_index(ours: list[str], official: list[str]) -> np.ndarray:
    """``idx`` with ``ours[c] == official[idx[c]]`` (names stripped)."""
    off = [n.strip() for n in official]
    if sorted(ours) != sorted(off) or len(set(off)) != len(off):
        raise SystemExit(f"class lists differ: ovss {len(ours)} vs official {len(off)} "
                         f"(only ovss: {sorted(set(ours) - set(off))[:5]}, only official: {sorted(set(off) - set(ours))[:5]})")
    return np.array([off.index(n) for n in ours], dtype=np.int64)


# ------------------------------------------------------------------------------------------------------------
# stand-ins and converted weights
# ------------------------------------------------------------------------------------------------------------
class Counter:
    def __init__(self) -> None:
        self.calls: dict[str, Any] = {}

    def hit(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1


def stand_ins_before_import(method: str, root: Path, counter: Counter) -> None:
    """What has to be in place before the official package is imported."""
    sys.path.insert(0, str(root))
    if method == "zsseg":
        sys.path.insert(0, str(root / "third_party" / "CLIP"))  # the vendored `clip` its README pip-installs
        try:
            import wandb  # noqa: F401
            counter.calls["wandb"] = "installed package"
        except ImportError:
            sys.modules["wandb"] = types.ModuleType("wandb")
            counter.calls["wandb"] = "empty module (training logger only)"
    else:
        import torch

        def no_cuda(self: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            counter.hit("torch.Tensor.cuda")
            return self

        def no_half(self: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            counter.hit("torch.Tensor.half")
            return self

        torch.Tensor.cuda = no_cuda  # type: ignore[method-assign]
        torch.Tensor.half = no_half  # type: ignore[method-assign]


def with_head_version(src: Path, dst: Path) -> Path:
    """``{"model": state_dict}`` with the ``_metadata`` detectron2's Checkpointer would have saved for the head."""
    import torch

    if newer(dst, src):
        return dst
    obj = torch.load(str(src), map_location="cpu", weights_only=True)
    sd = collections.OrderedDict(obj["model"])
    sd._metadata = collections.OrderedDict({"sem_seg_head": {"version": 2}})  # type: ignore[attr-defined]
    torch.save({"model": sd}, str(dst) + ".tmp")
    os.replace(str(dst) + ".tmp", dst)
    return dst


def read_tensors(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    return obj["model"] if isinstance(obj, dict) and "model" in obj else obj


def prepare(method: str, work: Path, models: dict[str, Any], root: Path) -> dict[str, Any]:
    """Converted weights / class files under WORKDIR/bench (cached); returns paths and config overrides."""
    import torch

    out = work / "bench"
    entry = models[method]
    prep: dict[str, Any] = {"sources": {k: v for k, v in entry.items() if k != "dataset"}}
    if method in ("zsseg", "zegformer"):
        clip_src = Path(entry["pretrained"])
        prep["clip_source"] = clip_src
        name = "official_zsseg_r101c.pth" if method == "zsseg" else "official_zegformer_r101.pth"
        prep["weights"] = with_head_version(Path(entry["checkpoint"]), out / name)
        if method == "zsseg":
            state = out / "official_vitb16_state.pt"
            if not newer(state, clip_src):
                torch.save(read_tensors(clip_src), str(state))
            prep["overrides"] = ["MODEL.CLIP_ADAPTER.CLIP_MODEL_NAME", str(state)]
        else:
            archive = out / "official_vitb16_jit.pt"
            if not newer(archive, clip_src):
                sys.path.insert(0, str(REPO / "tests" / "fixtures" / "maskformer_train"))
                from make_fixture import write_jit_clip  # type: ignore[import-not-found]

                write_jit_clip(read_tensors(clip_src), archive)
            prep["archive"] = archive
            split = out / "official_zegformer_classes" / "datasets" / "coco" / "coco_stuff" / "split"
            if not (split / "all_classnames.json").is_file():
                import runpy
                import shutil

                split.mkdir(parents=True, exist_ok=True)
                for f in (root / "datasets" / "coco" / "coco_stuff" / "split").iterdir():
                    shutil.copy(f, split / f.name)
                here = os.getcwd()
                os.chdir(split.parents[3])
                try:
                    runpy.run_path(str(root / "datasets" / "coco-stuff" / "create_cocostuff_class_names_json.py"),
                                   run_name="__main__")
                finally:
                    os.chdir(here)
            prep["overrides"] = ["MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(split / "seen_classnames.json"),
                                 "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", str(split / "all_classnames.json")]
    else:
        src = Path(entry["checkpoint"])
        pth = out / "official_catseg_vitb.pth"
        archive = out / "official_catseg_clip_jit.pt"
        if not newer(pth, src) or not newer(archive, src):
            sd = read_tensors(src)
            torch.save({"model": sd}, str(pth))
            sys.path.insert(0, str(REPO / "tests" / "fixtures" / "cat_seg_train"))
            from make_fixture import scratch_clip_archive  # type: ignore[import-not-found]

            scratch_clip_archive(sd, archive)
        prep["weights"] = pth
        prep["archive"] = archive
        prep["overrides"] = list(SPECS["cat_seg"]["overrides"])
    return prep


def stand_ins_after_import(method: str, prep: dict[str, Any], counter: Counter) -> None:
    """The CLIP download of ZegFormer / CAT-Seg returns the local archive."""
    if method == "zsseg":
        return
    if method == "zegformer":
        from mask_former.third_party import clip as vendored  # type: ignore[import-not-found]
    else:
        from cat_seg.third_party import clip as vendored  # type: ignore[import-not-found]

    def local_archive(url: str, root: str = "") -> str:
        counter.hit("clip._download")
        return str(prep["archive"])

    vendored._download = local_archive


def load_check(model: Any, prep: dict[str, Any], method: str) -> dict[str, Any]:
    """Every tensor of the official model against its source file."""
    import torch

    ck = read_tensors(Path(prep["weights"]))
    clip = read_tensors(Path(prep["clip_source"])) if "clip_source" in prep else {}
    prefix = SPECS[method].get("clip_prefix", "")
    res: dict[str, Any] = {"from_checkpoint_equal": 0, "from_checkpoint_differ": [], "from_clip_file_equal": 0,
                           "from_clip_file_differ": [], "not_in_any_file": [], "checkpoint_keys_unused": []}
    msd = model.state_dict()
    for k, v in msd.items():
        if k in ck:
            src, key = ck[k], "from_checkpoint"
        elif prefix and k.startswith(prefix) and k[len(prefix):] in clip:
            src, key = clip[k[len(prefix):]], "from_clip_file"
        else:
            res["not_in_any_file"].append(k)
            continue
        same = tuple(src.shape) == tuple(v.shape) and bool(torch.equal(src.to(v.dtype), v))
        if same:
            res[key + "_equal"] += 1
        else:
            d = float((src.float() - v.float()).abs().max()) if tuple(src.shape) == tuple(v.shape) else "shape"
            res[key + "_differ"].append([k, d])
    res["checkpoint_keys_unused"] = sorted(set(ck) - set(msd))
    return res


# ------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> None:
    method = args.method
    spec = SPECS[method]
    root = (OFFICIAL / spec["root"]).resolve()
    counter = Counter()
    models = json.loads((args.work / "models.json").read_text())
    if models[method].get("dataset") != spec["protocol"]:
        raise SystemExit(f"models.json runs {method} on {models[method].get('dataset')!r}; this script times the "
                         f"official eval config of {spec['protocol']!r}")
    load_start = load_avg()
    os.chdir(root)  # the configs name class files / datasets relative to the checkout
    t = time.perf_counter()
    stand_ins_before_import(method, root, counter)
    import torch

    torch.set_num_threads(args.threads)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper, MetadataCatalog
    from detectron2.modeling import build_model
    from detectron2.projects.deeplab import add_deeplab_config

    if method == "cat_seg":
        from cat_seg import add_cat_seg_config as add_config  # type: ignore[import-not-found]
    else:
        from mask_former import add_mask_former_config as add_config  # type: ignore[import-not-found]
    import_s = time.perf_counter() - t
    import_cpu = time.process_time()

    prep = prepare(method, args.work, models, root)
    stand_ins_after_import(method, prep, counter)
    t, c = time.perf_counter(), time.process_time()
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_config(cfg)
    cfg.merge_from_file(spec["config"])
    cfg.merge_from_list(list(prep["overrides"]) + ["MODEL.WEIGHTS", str(prep["weights"]), "MODEL.DEVICE", "cpu"])
    cfg.freeze()
    model = build_model(cfg)
    model.eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    torch.set_grad_enabled(False)
    construct_s = time.perf_counter() - t
    construct_cpu = time.process_time() - c
    print(f"# official {method}: imports {import_s:.1f} s, construction {construct_s:.1f} s", file=sys.stderr,
          flush=True)

    c_check = time.process_time()
    check = load_check(model, prep, method)
    check_cpu = time.process_time() - c_check
    print(f"# load check: {json.dumps({k: v if isinstance(v, int) else len(v) for k, v in check.items()})}",
          file=sys.stderr, flush=True)

    dataset = cfg.DATASETS.TEST[0]
    if method == "zsseg":
        official_classes = [c.strip() for c in MetadataCatalog.get(dataset).stuff_classes]
    else:
        official_classes = [str(c) for c in model.sem_seg_head.predictor.test_class_texts]
    idx = class_index(ovss_class_names(spec["classes"]), official_classes)
    mapper = DatasetMapper(cfg, is_train=False)
    cpu: list[float] = []

    def predict() -> tuple[np.ndarray, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        inputs = mapper({"file_name": args.image})
        if method == "zsseg":
            inputs["meta"] = {"dataset_name": dataset}  # mask_former.data.build.wrap_metas (its test loader)
        sem = model([inputs])[0]["sem_seg"]
        cpu.append(time.process_time() - c0)
        return sem.numpy(), time.perf_counter() - t0

    times = []
    sem = None
    for _ in range(1 + args.repeats):
        sem, dt = predict()
        times.append(dt)
        print(f"# official {method} predict {dt:.1f} s ({cpu[-1]:.1f} CPU-s), load {load_avg()}", file=sys.stderr,
              flush=True)
    assert sem is not None
    scores = np.ascontiguousarray(sem[idx].astype(np.float32))
    res = {"method": method, "import_s": import_s, "construct_s": construct_s, "predict_s": times,
           "cold_s": import_s + construct_s + times[0],
           "cpu_s": {"import": import_cpu, "construct": construct_cpu, "predict": cpu,
                     "cold": import_cpu + construct_cpu + cpu[0], "load_check (not timed)": check_cpu},
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "load": load_avg(), "load_start": load_start, "threads": args.threads,
           "config": spec["config"], "overrides": [str(x) for x in prep["overrides"]],
           "repository": spec["root"], "commit": git_head(root) or f"{spec['commit']} (expected; not a git checkout)",
           "weights": str(prep["weights"]), "sources": prep["sources"], "stand_ins": counter.calls,
           "load_check": check, "image": args.image, "scores_shape": list(scores.shape),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out_dir = args.work / "bench"
    np.savez(out_dir / f"official_{method}.npz", scores=scores, labels=scores.argmax(0).astype(np.int64),
             classes=np.array(ovss_class_names(spec["classes"])), official_classes=np.array(official_classes),
             official_index=idx)
    (out_dir / f"official_{method}.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, default=str))


def git_head(root: Path) -> str | None:
    """HEAD of ``root`` when it is a git checkout of its own (else None: the expected commit is recorded)."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return None
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """ovss's saved scores (``bench_all.py``: ``WORKDIR/bench/<method>.npz``) against the official ones."""
    bench = args.work / "bench"
    ref = np.load(bench / f"official_{args.method}.npz")
    mine = np.load(bench / f"{args.method}.npz")
    res: dict[str, Any] = {"method": args.method}
    names_ok = ([str(x).strip() for x in mine["classes"]] == [str(x).strip() for x in ref["classes"]]
                if "classes" in mine else None)  # ovss keeps the file's spelling ("bed " in ade150.json)
    res["class_names_equal"] = names_ok
    a, b = mine["scores"].astype(np.float64), ref["scores"].astype(np.float64)
    if a.shape != b.shape:
        res["error"] = f"shapes differ: ovss {a.shape}, official {b.shape}"
        return res
    d = np.abs(a - b)
    where = np.unravel_index(int(d.argmax()), d.shape)
    res.update(max_abs_diff=float(d.max()), mean_abs_diff=float(d.mean()),
               where=[int(x) for x in where], at_values={"ovss": float(a[where]), "official": float(b[where])},
               scores_range=[float(b.min()), float(b.max())], shape=list(a.shape))
    per_class = d.reshape(d.shape[0], -1).max(1)
    res["worst_classes"] = [[str(ref["classes"][i]), float(per_class[i])] for i in np.argsort(-per_class)[:5]]
    off_labels = ref["scores"].argmax(0)
    labels = mine["labels"] if mine["labels"].shape == off_labels.shape else a.argmax(0)
    agree = labels == off_labels
    res["label_agreement"] = float(agree.mean())
    res["label_mismatches"] = int((~agree).sum())
    if (~agree).any():
        top2 = np.sort(ref["scores"], axis=0)[-2:]
        gap = (top2[1] - top2[0])[~agree]
        res["mismatch_official_top2_gap_max"] = float(gap.max())
    res["near_ties_official_top2_gap_lt_1e-5"] = int((np.diff(np.sort(ref["scores"], axis=0)[-2:], axis=0) < 1e-5).sum())
    (bench / f"official_{args.method}_compare.json").write_text(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path, help="the folder of benchmarks/fullsize.py (models.json)")
    ap.add_argument("--method", required=True, choices=sorted(SPECS))
    ap.add_argument("--image", default=str(PARITY / "astronaut.png"))
    ap.add_argument("--repeats", type=int, default=2, help="predicts after the first")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--compare", action="store_true", help="only compare the saved official and ovss scores")
    args = ap.parse_args()
    args.work = args.work.resolve()
    args.image = str(Path(args.image).resolve())
    if args.compare:
        print(json.dumps(compare(args), indent=1))
        return
    (args.work / "bench").mkdir(parents=True, exist_ok=True)
    run(args)


if __name__ == "__main__":
    main()
