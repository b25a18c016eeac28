#!/usr/bin/env python3
"""The official ProxyCLIP, CLIP-DIY and PnP-OVSS code at full size on CPU, timed, beside ovss on the same weights.

Runs one official repository unchanged (``--method``), on the full-size random weights of
``benchmarks/fullsize.py`` (``WORKDIR/models.json``), with the settings of ovss's default protocol for
that method (VOC21 for all three), on one photo (default ``shared/parity/astronaut.png``), fp32, and
writes ``WORKDIR/bench/official_<method>.json`` (same keys as ``official_fcclip.json``: import,
construction and per-image times, wall and CPU seconds, peak RSS, load average) and
``WORKDIR/bench/official_<method>.npz`` (``scores``: float32 (C, H, W) at the photo's size, the
official tensor that ovss's ``SegmentationResult.scores`` reproduces; ``labels``: the official label
map at the photo's size; extra intermediates per method). ``--compare`` then reads ovss's
``WORKDIR/bench/<method>.npz`` (``bench_all.py WORKDIR --methods <method>``) and prints max |Δ| and
label agreement. Run with a venv holding what the official repositories need
(``/work/official/venv-clip``: torch 2.14.1 CPU, numpy < 2, mmengine 0.8.4 / mmcv 2.0.1 (pure Python,
``MMCV_WITH_OPS=0``) / mmsegmentation 1.1.1, timm 0.4.12, transformers 4.34.0, hydra-core 1.3.2,
albumentations 1.3.1, omegaconf, iopath, fairscale 0.4.4, pydensecrf2, scikit-image, pycocotools; for
PnP-OVSS transformers 4.25.1 + tokenizers 0.13.3 in ``TRANSFORMERS_4_25``, put first on ``sys.path``: LAVIS's
``BlipBase`` asserts transformers < 4.27 and the parity fixtures used 4.25.1)::

    /work/official/venv-clip/bin/python benchmarks/bench_official_clip.py WORKDIR --method proxyclip [--repeats 2]
    python benchmarks/bench_official_clip.py WORKDIR --method proxyclip --compare     # any venv with numpy
    python benchmarks/bench_official_clip.py WORKDIR --method pnp_ovss --rescaled-blip WORKDIR/bench/pnp_rescaled

Official code (``OFFICIAL_ROOT``, default /work/official; each folder holds a ``COMMIT`` file):

* ProxyCLIP: mc-lan/ProxyCLIP e7b767f, ``proxyclip_segmentor.py`` and its vendored ``open_clip``, built
  from ``configs/cfg_voc21.py`` (+ ``base_config.py``: ViT-B/16 OpenAI, DINO ViT-B/8, prob_thd 0.2,
  crop 336 / stride 112, logit scale 40, beta 1.2, gamma 3.0) through mmseg's ``MODELS`` registry; the
  image goes through the config's ``test_pipeline`` (mmcv ``LoadImageFromFile``, mmseg ``Resize(scale=
  (2048, 336), keep_ratio=True)``, ``LoadAnnotations`` on an all-zero label PNG, ``PackSegInputs``) and
  ``model.test_step`` (the ``SegDataPreProcessor``, then ``predict``), as mmengine's test loop does.
  ``scores`` = ``data_samples[0].seg_logits.data``: the official ``postprocess_result`` class scores
  (softmax over the 46 query words of 40 x the cosine logits, max over each class's words), (21, H, W)
  at the photo's size = ovss's ``scores``; ``labels`` = ``pred_sem_seg`` (argmax, < 0.2 -> 0).
* CLIP-DIY: wysoczanska/clip-diy f88932d, FOUND (valeoai/FOUND 1ad22ba) and DINO (facebookresearch/dino
  7c446df): per image, ``thirdparty/extract_saliency.py --drop-probs`` (run as ``__main__``) writes the
  FOUND saliency ``.npy``, then ``eval_clipconv.get_predictions`` (hydra-composed
  ``configs/cfg_clip_pascal.yaml``: ClipConv patch sizes 256/128/64, stride divisor 2, 256x256 input)
  loads the VOC-layout dataset with that saliency, builds ``ClipConv`` and runs the loop. ``scores`` =
  the official ``out_`` of ``get_predictions`` (softmax over classes of the saliency-gated multi-scale
  cosines, (1, 21, 256, 256), read from the function's frame at its return) resized to the photo's size
  with OpenCV ``INTER_NEAREST`` per channel, the resize the official ``combine_predictions`` applies to
  the label map (there to the ground truth's size, short side 448; ovss's default returns the photo's
  size): ovss's ``scores``; ``scores_256`` the unresized ``out_``; ``labels`` = the official argmax
  map (``get_predictions``' return) resized the same way. Official construction = ``ClipConv.__init__``
  (three ``from_pretrained`` of the CLIP + the 21 class embeddings) + ``FoundModel.__init__`` +
  ``decoder_load_weights``, measured inside the calls; since ``get_predictions`` and the saliency
  script rebuild their models on every call, a predict is the two calls' wall / CPU time minus the
  construction inside them (``run_s`` keeps the totals).
* PnP-OVSS: letitiabanana/PnP-OVSS e439962 ``PnP_OVSS_0514_updated_segmentation.py`` ``main(rank,
  world_size, args)`` with the arguments of ``Run_seg.sh`` (``--max_att_block_num 8 --drop_iter 4
  --prune_att_head 9 --sort_threshold 0.05 --threshold 0.15 --postprocess blur+crf --img_size 336
  --del_patch_num sort_thresh005``) and ``--data_type voc --batch_size 1 --world_size 1`` (a batch of
  one: ovss's unit; padded batches change the numbers), on LAVIS ac8fc98 with the six files of "Files to
  replace for BLIP" copied over it (``blip_itm_large.yaml``: ViT-L at 336, ``model_large_retrieval_flickr``).
  The first predict is ``main`` (it builds the model inside: its ``load_model_and_preprocess`` is the
  construction; ``captions_text_loc`` the image); the repeats call ``captions_text_loc`` again with the
  objects ``main`` built (read from its frame at its return). The official script computes both paths
  per image (first pass "filtered_caption" and Salience DropOut), each with blur + DenseCRF, and keeps
  only confusion matrices; ovss computes the Salience-DropOut path. ``scores`` = the CRF marginals
  ``Q`` (21, H, W) of the official ``densecrf`` on the Salience-DropOut path (its second call per
  image, read from its frame at its return: the function returns only the argmax): ovss's ``scores``
  (CRF probabilities on every VOC channel, all 20 classes being in the caption); ``blur_maps`` its
  input (the blurred maps with the background channel, before the CRF), ``seg_maps`` the thresholded
  upsampled GradCAM maps (``label_preds_withfiltered_caption_beforeargmax_alldrop``), ``first_scores``
  the CRF marginals of the first-pass path; ``labels`` = ``label_preds_withfiltered_caption_alldrop``
  (VOC ids, after the official relabelling). The caption lists all 20 VOC classes (stand-in GPT-4o
  entry below), as ovss without ``class_lists``. On ``fullsize.py``'s BLIP (transformers' std-0.02 random
  init) the GradCAM of layer 8 head 9 is exactly 0 in both codes, so every map is 0, the min-max
  threshold and the blur divide 0 by 0 and the official CRF marginals are NaN everywhere (ovss: 0,
  ``official_nan``); timing is unaffected, but the values are compared on a rescaled copy
  (``--rescaled-blip DIR``, then ``DIR`` as WORKDIR with ``--repeats 0``).

Stand-ins (only what cannot run here; no official file is edited, no computation changed):

* all: the weights are ``fullsize.py``'s files, converted where the official loader reads another
  layout (copies under ``WORKDIR/bench/``): ProxyCLIP's ViT-B/16 re-saved with ``torch.save`` as an
  OpenAI-layout ``.pt`` that the vendored ``load_openai_model`` reads for ``ViT-B/16`` instead of
  the download; CLIP-DIY's ViT-B/32 (open_clip layout) as a Hugging Face ``CLIPModel``
  folder (key map of ``shared/parity/clip_diy/README.md``; ``hidden_act`` gelu as the LAION model; CLIP
  BPE ``vocab.json``/``merges.txt`` built from the vendored ``bpe_simple_vocab_16e6.txt.gz``; the LAION
  ``preprocessor_config.json`` values) given as ``clip_model``; the FOUND decoder as FOUND's
  ``{"decoder": {"weight", "bias"}}`` ``.pt``; BLIP ITM large (transformers layout) as a LAVIS
  ``{"model": state_dict}`` ``.pth`` (key map of ``shared/parity/pnp_ovss/README.md``, reversed);
* all: the hub downloads: ProxyCLIP's ``open_clip.openai.download_pretrained_from_url`` -> that ``.pt``;
  ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')`` -> DINO's own
  ``hubconf.dino_vitb8(pretrained=False)`` from the local DINO copy + ``load_state_dict(strict=True)`` of
  ``dino_vitb8.safetensors``; FOUND's ``torch.hub.load_state_dict_from_url`` -> ``dino_vits8.safetensors``;
  LAVIS ``download_cached_file`` -> the converted ``.pth``; ``BertTokenizer.from_pretrained(
  "bert-base-uncased")`` -> the ``vocab.txt`` of the BLIP folder;
* ProxyCLIP, fp16 call sites (float32 comparison, as the parity fixtures): ``create_model(...,
  precision='fp16')`` gets ``'fp32'``, ``Module.half`` is the identity and ``Tensor.half`` a float32
  copy during the run (``proxyclip_segmentor.py`` L40, L74, L116, L172); the constructor's
  ``device=torch.device('cuda')`` default is given ``device='cpu'``;
* ProxyCLIP, mmcv's compiled ops: mmcv 2.0.1 is installed without its C++/CUDA extension
  (``MMCV_WITH_OPS=0``: no prebuilt wheel for torch 2.14 and a source build of the ops takes most of an
  hour on 2 cores); ``mmseg.models`` imports ``mmcv.ops`` for decode heads ProxyCLIP never builds, so
  ``mmcv._ext`` is a module whose every op raises if called (none is);
* CLIP-DIY / FOUND, CUDA: ``eval_clipconv.ddp_setup`` (nccl + ``cuda.set_device``) is a no-op and
  ``DistributedDataParallel`` a pass-through; ``get_predictions`` gets ``gpu="cpu"``; in the saliency
  script ``.cuda()`` / ``.to("cuda")`` map to the CPU; ``configs/paths.yaml`` (a template that is not
  valid YAML) is filled in a copy of ``configs/`` (the other files copied unchanged) and
  ``output_dir`` / ``clip_model`` / batch size 1 / 0 workers are hydra overrides; the dataset is a
  VOCdevkit layout around the photo;
* PnP-OVSS, CUDA / distributed: ``init_process_group(backend="nccl")`` -> gloo (world size 1, so the
  official ``DistributedSampler`` works), ``torch.cuda.set_device`` a no-op, ``DDP`` a pass-through
  with ``.module``, ``rank`` = ``torch.device("cpu")``; ``--home_dir`` is a folder with a VOC2012
  layout around the photo (id ``2007_000001``: the official code does ``int(img_id)``; an all-zero
  ground-truth PNG, which only sets the output size) and a GPT-4o class-list JSON whose entry lists
  the 20 VOC classes at 100 % (as the parity fixtures); LAVIS modules that ``lavis/__init__`` imports
  for other models pull packages not installable here (``STUBBED`` below, only those not installed):
  they are empty stand-in modules (nothing of them runs for BLIP ITM); pydensecrf is the ``pydensecrf2``
  build of it (the lucasb-eyer git master the authors use is not reachable here).

Timing: ``import_s`` = the official imports (+ stand-ins); ``construct_s`` = model construction (see
above); ``predict_s`` = [first, repeats...] per image; CPU seconds from ``time.process_time()`` (all
threads). The capture of a frame's locals (``sys.setprofile``) is active during the first predict only.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import importlib.abc
import importlib.util
import json
import os
import resource
import runpy
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
PARITY = HERE.parents[1] / "shared" / "parity"
OFFICIAL = Path(os.environ.get("OFFICIAL_ROOT", "/work/official"))
PROXYCLIP_ROOT = Path(os.environ.get("PROXYCLIP_ROOT", OFFICIAL / "ProxyCLIP"))
CLIPDIY_ROOT = Path(os.environ.get("CLIPDIY_ROOT", OFFICIAL / "clip-diy"))
FOUND_ROOT = Path(os.environ.get("FOUND_ROOT", OFFICIAL / "FOUND"))
DINO_ROOT = Path(os.environ.get("DINO_ROOT", OFFICIAL / "dino"))
PNP_ROOT = Path(os.environ.get("PNP_ROOT", OFFICIAL / "PnP-OVSS"))
LAVIS_ROOT = Path(os.environ.get("LAVIS_ROOT", OFFICIAL / "LAVIS"))
#: transformers 4.25.1 + tokenizers 0.13.3 (``pip install --target``): LAVIS's BLIP asserts transformers < 4.27
TRANSFORMERS_4_25 = Path(os.environ.get("TRANSFORMERS_4_25", OFFICIAL / "extra" / "transformers_4_25"))

METHODS = ("proxyclip", "clip_diy", "pnp_ovss")
VOC_IDS = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog",
           "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
#: packages that LAVIS imports for models other than BLIP ITM and that are not installable here
STUBBED = ("diffusers", "peft", "open3d", "decord", "torchaudio", "soundfile", "moviepy", "spacy", "webdataset",
           "pycocoevalcap", "opendatasets", "magic", "plotly", "streamlit", "sentencepiece", "h5py", "easydict",
           "contexttimer", "wandb", "nltk", "IPython", "einops", "basicsr", "annotator", "knn_cuda")


# --------------------------------------------------------------------------------------------- helpers

class Clock:
    """Wall and CPU seconds spent inside wrapped callables, per key (instrumentation only)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.returns: dict[str, Any] = {}

    def wrap(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            try:
                out = fn(*args, **kwargs)
            finally:
                self.wall[key] = self.wall.get(key, 0.0) + time.perf_counter() - t
                self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - c
            self.returns[key] = out
            return out

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def take(self, *keys: str) -> tuple[float, float]:
        """Sum of the keys' wall and CPU seconds since the last take, and reset them."""
        w = sum(self.wall.pop(k, 0.0) for k in keys)
        c = sum(self.cpu.pop(k, 0.0) for k in keys)
        return w, c


class Capture:
    """Copies the locals of the given functions' frames when they return (``sys.setprofile``)."""

    def __init__(self, **functions: Callable[..., Any]) -> None:
        self.codes = {getattr(f, "__wrapped__", f).__code__: name for name, f in functions.items()}
        self.got: dict[str, list[dict[str, Any]]] = {name: [] for name in functions}

    def _hook(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "return":
            name = self.codes.get(frame.f_code)
            if name is not None:
                self.got[name].append(dict(frame.f_locals))

    def __enter__(self) -> "Capture":
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.setprofile(None)


class _DDPStandIn:
    """``DistributedDataParallel`` stand-in: the module itself, also as ``.module``."""

    def __init__(self, module: Any, *args: Any, **kwargs: Any) -> None:
        self.__dict__["module"] = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class _Stub:
    """Anything taken from a stand-in package: callable, with stand-in attributes (never used for BLIP ITM)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Stub":
        return _Stub()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub()


class _StubMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (_Stub,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty stand-in modules for packages that are not installed: any attribute is a stand-in class
    (subclassable, callable), so that modules of models the benchmark never builds import."""

    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.split(".")[0] in self.roots:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        mod = types.ModuleType(spec.name)
        mod.__path__ = []  # type: ignore[attr-defined]
        name = spec.name

        def __getattr__(attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _StubMeta(attr, (_Stub,), {"__module__": name})

        mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
        return mod

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def stub_missing(roots: tuple[str, ...]) -> list[str]:
    missing = {r for r in roots if importlib.util.find_spec(r) is None}
    if missing:
        sys.meta_path.insert(0, _StubFinder(missing))
    return sorted(missing)


def stub_mmcv_ops() -> bool:
    """mmcv without its compiled extension: ``mmcv._ext`` whose ops raise when called."""
    spec = importlib.util.find_spec("mmcv")
    if spec is None or any(list(Path(p).glob("_ext*.so")) for p in spec.submodule_search_locations or []):
        return False
    mod = types.ModuleType("mmcv._ext")

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*a: Any, **k: Any) -> None:
            raise RuntimeError(f"mmcv op {name}: mmcv was built without its C++/CUDA ops")

        return op

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["mmcv._ext"] = mod
    return True


@contextlib.contextmanager
def cuda_to_cpu() -> Iterator[None]:
    """``.cuda()`` / ``.to("cuda")`` on modules and tensors stay on the CPU (FOUND's saliency script)."""
    import torch

    def cpu(x: Any) -> Any:
        if isinstance(x, str) and x.startswith("cuda") or isinstance(x, torch.device) and x.type == "cuda":
            return "cpu"
        return x

    saved = (torch.Tensor.to, torch.nn.Module.to, torch.nn.Module.cuda, torch.Tensor.cuda)
    t_to, m_to = saved[0], saved[1]
    torch.Tensor.to = lambda self, *a, **k: t_to(self, *[cpu(x) for x in a],  # type: ignore[method-assign]
                                                 **{n: cpu(v) for n, v in k.items()})
    torch.nn.Module.to = lambda self, *a, **k: m_to(self, *[cpu(x) for x in a],  # type: ignore[method-assign]
                                                    **{n: cpu(v) for n, v in k.items()})
    torch.nn.Module.cuda = lambda self, device=None: self  # type: ignore[method-assign]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.to, torch.nn.Module.to, torch.nn.Module.cuda, torch.Tensor.cuda = saved  # type: ignore


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def zero_png(path: Path, h: int, w: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w), dtype=np.uint8)).save(path)


def image_size(image: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(image) as im:
        return im.size[1], im.size[0]


def nearest_resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """(C, h0, w0) or (h0, w0) -> OpenCV ``INTER_NEAREST`` to (h, w), channel by channel."""
    import cv2

    if x.ndim == 2:
        return cv2.resize(x, (w, h), interpolation=cv2.INTER_NEAREST)
    return np.stack([cv2.resize(np.ascontiguousarray(c), (w, h), interpolation=cv2.INTER_NEAREST) for c in x])


# ----------------------------------------------------------------------------------- weight converters

def openai_pt(work: Path, src: str) -> Path:
    """ViT-B/16 (OpenAI / open_clip layout safetensors) -> ``.pt`` state dict for ``load_openai_model``."""
    import torch
    from safetensors.torch import load_file

    out = work / "bench" / (Path(src).stem + "_openai.pt")
    if not out.is_file():
        torch.save(load_file(src), out)
    return out


def clip_vocab_files(target: Path) -> None:
    """CLIP BPE ``vocab.json`` / ``merges.txt`` in OpenAI ``SimpleTokenizer`` order (ids = ``open_clip.tokenize``)."""
    bpe = PROXYCLIP_ROOT / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = [chr(c) for c in cs]
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (target / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}, ensure_ascii=False))
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")


def hf_clip_folder(work: Path, model_json: str, src: str) -> Path:
    """open_clip CLIP (safetensors + config JSON) -> Hugging Face ``CLIPModel`` folder (CLIP-DIY's loader)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = work / "bench" / (Path(src).stem + "_hf")
    if (out / "merges.txt").is_file():  # written last
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(Path(model_json).read_text())
    vc, tc = cfg["vision_cfg"], cfg["text_cfg"]
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    sd = load_file(src)
    new: dict[str, torch.Tensor] = {}
    used = set()

    def put(dst: str, key: str, t: torch.Tensor | None = None) -> None:
        new[dst] = (sd[key] if t is None else t).contiguous()
        used.add(key)

    def tower(src_prefix: str, dst_prefix: str, layers: int) -> None:
        for i in range(layers):
            s, d = f"{src_prefix}.resblocks.{i}", f"{dst_prefix}.encoder.layers.{i}"
            for kind in ("weight", "bias"):
                q, k, v = sd[f"{s}.attn.in_proj_{kind}"].chunk(3, dim=0)
                used.add(f"{s}.attn.in_proj_{kind}")
                new[f"{d}.self_attn.q_proj.{kind}"] = q.contiguous()
                new[f"{d}.self_attn.k_proj.{kind}"] = k.contiguous()
                new[f"{d}.self_attn.v_proj.{kind}"] = v.contiguous()
                put(f"{d}.self_attn.out_proj.{kind}", f"{s}.attn.out_proj.{kind}")
                put(f"{d}.layer_norm1.{kind}", f"{s}.ln_1.{kind}")
                put(f"{d}.layer_norm2.{kind}", f"{s}.ln_2.{kind}")
                put(f"{d}.mlp.fc1.{kind}", f"{s}.mlp.c_fc.{kind}")
                put(f"{d}.mlp.fc2.{kind}", f"{s}.mlp.c_proj.{kind}")

    put("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight")
    put("vision_model.embeddings.class_embedding", "visual.class_embedding")
    put("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding")
    for kind in ("weight", "bias"):
        put(f"vision_model.pre_layrnorm.{kind}", f"visual.ln_pre.{kind}")
        put(f"vision_model.post_layernorm.{kind}", f"visual.ln_post.{kind}")
        put(f"text_model.final_layer_norm.{kind}", f"ln_final.{kind}")
    tower("visual.transformer", "vision_model", vc["layers"])
    tower("transformer", "text_model", tc["layers"])
    put("visual_projection.weight", "visual.proj", sd["visual.proj"].t())
    put("text_projection.weight", "text_projection", sd["text_projection"].t())
    put("text_model.embeddings.token_embedding.weight", "token_embedding.weight")
    put("text_model.embeddings.position_embedding.weight", "positional_embedding")
    put("logit_scale", "logit_scale")
    left = set(sd) - used
    if left:
        raise SystemExit(f"{src}: keys not converted to the Hugging Face layout: {sorted(left)[:8]}")
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    vw = vc["width"]
    hf = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg["embed_dim"],
        "logit_scale_init_value": 2.6592, "torch_dtype": "float32",
        "text_config": {"vocab_size": tc["vocab_size"], "hidden_size": tc["width"],
                        "intermediate_size": tc["width"] * 4,
                        "num_hidden_layers": tc["layers"], "num_attention_heads": tc["heads"],
                        "max_position_embeddings": tc["context_length"], "hidden_act": act, "layer_norm_eps": 1e-5,
                        "projection_dim": cfg["embed_dim"], "bos_token_id": 49406, "eos_token_id": 49407,
                        "pad_token_id": 1},
        "vision_config": {"hidden_size": vw, "intermediate_size": vw * 4, "num_hidden_layers": vc["layers"],
                          "num_attention_heads": vw // 64, "image_size": vc["image_size"],
                          "patch_size": vc["patch_size"], "num_channels": 3, "hidden_act": act,
                          "layer_norm_eps": 1e-5, "projection_dim": cfg["embed_dim"]},
    }
    (out / "config.json").write_text(json.dumps(hf, indent=1))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}, indent=1))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "bos_token": "<|startoftext|>", "do_lower_case": True,
        "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77, "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>"}, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}, indent=1))
    clip_vocab_files(out)
    return out


def found_decoder_pt(work: Path, src: str) -> Path:
    """``found_decoder.safetensors`` (``decoder.weight`` / ``decoder.bias``) -> FOUND's ``{"decoder": {...}}`` .pt."""
    import torch
    from safetensors.torch import load_file

    out = work / "bench" / "found_decoder_weights.pt"
    if not out.is_file():
        sd = load_file(src)
        torch.save({"decoder": {"weight": sd["decoder.weight"], "bias": sd["decoder.bias"]}}, out)
    return out


#: transformers BlipForImageTextRetrieval -> LAVIS BlipITM (shared/parity/pnp_ovss/README.md, reversed)
HF_TO_LAVIS = (("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj."),
               ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
               ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
               ("vision_model.encoder.layers.", "visual_encoder.blocks."),
               (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."),
               (".self_attn.qkv.", ".attn.qkv."), (".self_attn.projection.", ".attn.proj."),
               ("vision_model.post_layernorm.", "visual_encoder.norm."))


def lavis_checkpoint(work: Path, folder: str) -> Path:
    import torch
    from safetensors.torch import load_file

    out = work / "bench" / "blip_itm_large_lavis.pth"
    if not out.is_file():
        sd = load_file(str(Path(folder) / "model.safetensors"))
        new = {}
        for k, v in sd.items():
            if k == "text_encoder.embeddings.position_ids":
                continue
            for a, b in HF_TO_LAVIS:
                k = k.replace(a, b)
            new[k] = v
        torch.save({"model": new}, out)
    return out


def rescaled_blip(work: Path, out: Path) -> Path:
    """A copy of ``WORKDIR``'s BLIP ITM (transformers layout) with the parity fixtures' init scales, as a
    ``WORKDIR`` of its own (``out/models.json``): on ``fullsize.py``'s std-0.02 random BLIP the layer-8 head-9
    GradCAM is exactly 0 in both codes, so every map is a 0/0 (NaN officially, 0 in ovss) and the scores
    compare nothing. Recipe of ``shared/parity/pnp_ovss/manifest.json -> model.init`` (generator seed 1, in
    state-dict order): LayerNorm weight 1 + 0.1 N, bias 0.1 N; tensors of >= 2 dims named ``*embedding*``
    0.5 N, other >= 2-dim weights N / sqrt(fan_in); query/key/value/qkv biases 0.1 N, other biases 0.02 N;
    rounded to float16."""
    import torch
    from safetensors.torch import load_file, save_file

    src = Path(json.loads((work / "models.json").read_text())["pnp_ovss"]["model"])
    dst = out / "blip_itm_large_rescaled"
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(src / f, dst / f)
    g = torch.Generator().manual_seed(1)
    new = {}
    for k, v in load_file(str(src / "model.safetensors")).items():
        if not v.is_floating_point():
            new[k] = v
            continue
        n = torch.randn(v.shape, generator=g)
        if "layer_norm" in k or "LayerNorm" in k or "post_layernorm" in k:
            w = 1 + 0.1 * n if k.endswith("weight") else 0.1 * n
        elif v.dim() >= 2:
            w = 0.5 * n if "embedding" in k else n / v[0].numel() ** 0.5
        elif any(b in k for b in ("query.bias", "key.bias", "value.bias", "qkv.bias")):
            w = 0.1 * n
        else:
            w = 0.02 * n
        new[k] = w.half().float().contiguous()
    save_file(new, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (out / "bench").mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps({"pnp_ovss": {"model": str(dst), "dataset": "voc21"}}, indent=1))
    return dst


# ------------------------------------------------------------------------------------------- methods

def run_proxyclip(args: argparse.Namespace, models: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    t = time.perf_counter()
    sys.path.insert(0, str(PROXYCLIP_ROOT))
    os.chdir(PROXYCLIP_ROOT)  # the config's name_path is relative to the repository root
    import torch

    torch.set_num_threads(args.threads)
    ops_stub = stub_mmcv_ops()
    from mmengine.config import Config
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import proxyclip_segmentor  # registers ProxyCLIPSegmentation
    register_all_modules()
    init_default_scope("mmseg")
    import_s, import_cpu = time.perf_counter() - t, time.process_time()

    kw = models["proxyclip"]
    clip_pt = openai_pt(args.work, kw["pretrained"])
    dino_file = kw["proxy_pretrained"]
    calls = {"Module.half": 0, "Tensor.half": 0, "create_model precision": []}
    real_create = proxyclip_segmentor.create_model

    def create_model(*a: Any, **k: Any) -> Any:
        calls["create_model precision"].append(k.get("precision"))
        k["precision"] = "fp32"
        return real_create(*a, **k)

    proxyclip_segmentor.create_model = create_model

    def module_half(self: Any) -> Any:
        calls["Module.half"] += 1
        return self

    def tensor_half(self: Any, *a: Any, **k: Any) -> Any:
        calls["Tensor.half"] += 1
        return self.float().clone()

    torch.nn.Module.half = module_half  # type: ignore[method-assign]
    torch.Tensor.half = tensor_half  # type: ignore[method-assign]
    real_hub_load = torch.hub.load
    hub_calls = []

    def hub_load(repo: str, model: str, *a: Any, **k: Any) -> Any:
        hub_calls.append((repo, model))
        if repo != "facebookresearch/dino:main":
            raise RuntimeError(f"unexpected hub load {repo} {model}")
        from safetensors.torch import load_file

        net = real_hub_load(str(DINO_ROOT), model, source="local", pretrained=False)
        net.load_state_dict(load_file(dino_file), strict=True)
        return net

    torch.hub.load = hub_load

    import open_clip.openai as vendored_openai

    downloads = []

    def download_pretrained_from_url(url: str, *a: Any, **k: Any) -> str:
        downloads.append(url)
        return str(clip_pt)

    vendored_openai.download_pretrained_from_url = download_pretrained_from_url
    cfg = Config.fromfile("configs/cfg_voc21.py")
    model_cfg = cfg.model.copy()
    model_cfg.update(device="cpu")
    t, c = time.perf_counter(), time.process_time()
    model = MODELS.build(model_cfg)
    construct_s, construct_cpu = time.perf_counter() - t, time.process_time() - c
    pipeline = Compose(cfg.test_pipeline)
    h, w = image_size(args.image)
    gt = args.work / "bench" / "proxyclip_data" / "zero_label.png"
    zero_png(gt, h, w)

    times, cpu = [], []
    out = None
    for _ in range(1 + args.repeats):
        t, c = time.perf_counter(), time.process_time()
        data = pipeline(dict(img_path=args.image, seg_map_path=str(gt), label_map=None, reduce_zero_label=False,
                             seg_fields=[]))
        with torch.no_grad():
            out = model.test_step(pseudo_collate([data]))
        cpu.append(time.process_time() - c)
        times.append(time.perf_counter() - t)
        print(f"# official ProxyCLIP predict {times[-1]:.1f} s", file=sys.stderr, flush=True)
    scores = out[0].seg_logits.data.float().numpy()
    labels = out[0].pred_sem_seg.data[0].numpy()
    res = {"import_s": import_s, "construct_s": construct_s, "predict_s": times,
           "cpu": (import_cpu, construct_cpu, cpu),
           "config": "configs/cfg_voc21.py (+ base_config.py)",
           "stand_ins": {"mmcv._ext stub": ops_stub, "half / precision calls (made fp32)": calls, "hub": hub_calls,
                         "clip download": downloads, "clip": str(clip_pt), "dino": dino_file}}
    return res, {"scores": scores.astype(np.float32), "labels": labels.astype(np.int64)}


def run_clip_diy(args: argparse.Namespace, models: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    t = time.perf_counter()
    for p in (str(OFFICIAL), str(FOUND_ROOT), str(CLIPDIY_ROOT)):
        sys.path.insert(0, p)  # clip-diy (src.*, eval_clipconv); FOUND's modules (misc, bkg_seg); dino + FOUND packages
    import torch

    torch.set_num_threads(args.threads)
    from hydra import compose, initialize_config_dir

    os.chdir(CLIPDIY_ROOT)
    import eval_clipconv
    import FOUND.model as found_model
    from src.clip_conv import ClipConv
    from src.datasets.pascal_voc import VOC_CLASSES
    import_s, import_cpu = time.perf_counter() - t, time.process_time()

    kw = models["clip_diy"]
    hf = hf_clip_folder(args.work, kw["model"], kw["pretrained"])
    decoder = found_decoder_pt(args.work, kw["saliency_head"])
    from safetensors.torch import load_file

    dino_sd = load_file(kw["saliency_pretrained"])
    hub_calls = []

    def state_dict_from_url(url: str, *a: Any, **k: Any) -> dict[str, torch.Tensor]:
        hub_calls.append(url)
        return dict(dino_sd)

    torch.hub.load_state_dict_from_url = state_dict_from_url
    # the official dataset layout around the photo, and a filled-in copy of configs/
    data = args.work / "bench" / "clipdiy_data"
    voc = data / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    shutil.copy(args.image, voc / "JPEGImages" / "astronaut.jpg")  # OpenCV / PIL read by content
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("astronaut\n")
    h, w = image_size(args.image)
    zero_png(voc / "SegmentationClass" / "astronaut.png", h, w)
    sal_dir = voc / "pascal_saliency"  # configs/dataset/pascal.yaml: ${paths.pascal}/VOCdevkit/VOC2012/pascal_saliency
    shutil.rmtree(sal_dir, ignore_errors=True)
    cfg_dir = data / "configs"
    shutil.rmtree(cfg_dir, ignore_errors=True)
    shutil.copytree(CLIPDIY_ROOT / "configs", cfg_dir)
    (cfg_dir / "paths.yaml").write_text(
        f"paths:\n  repo: {CLIPDIY_ROOT}\n  pascal: {data}\n  coco: {data}/COCO\n  results: {data}/results\n")
    (data / "results").mkdir(exist_ok=True)
    with initialize_config_dir(config_dir=str(cfg_dir), version_base=None):
        cfg = compose(config_name="cfg_clip_pascal.yaml", overrides=[
            f"clip_model={hf}", "experiment.batch_size=1", "experiment.num_workers=0",
            "~output_dir", f"+output_dir={data / 'results'}"])

    clock = Clock()
    ClipConv.__init__ = clock.wrap("construct", ClipConv.__init__)  # type: ignore[method-assign]
    found_model.FoundModel.__init__ = clock.wrap("construct", found_model.FoundModel.__init__)  # type: ignore
    found_model.FoundModel.decoder_load_weights = clock.wrap(  # type: ignore[method-assign]
        "construct", found_model.FoundModel.decoder_load_weights)
    eval_clipconv.ddp_setup = lambda *a, **k: None
    eval_clipconv.DDP = _DDPStandIn
    saliency_argv = ["extract_saliency.py", "--img-dir", str(voc / "JPEGImages"), "--output-dir", str(sal_dir),
                     "--drop-probs", "--config", str(FOUND_ROOT / "configs" / "found_DUTS-TR.yaml"),
                     "--model-weights", str(decoder)]

    construct_s = construct_cpu = 0.0
    times, cpu, run_s = [], [], []
    got = None
    masks = None
    for i in range(1 + args.repeats):
        clock.take("construct")
        t, c = time.perf_counter(), time.process_time()
        sys.argv = saliency_argv
        with cuda_to_cpu():
            runpy.run_path(str(CLIPDIY_ROOT / "thirdparty" / "extract_saliency.py"), run_name="__main__")
        sys.argv = [sys.argv[0]]
        cap = Capture(get_predictions=eval_clipconv.get_predictions) if i == 0 else contextlib.nullcontext()
        with cap:
            masks, ids = eval_clipconv.get_predictions("cpu", cfg, 1, VOC_CLASSES)
        wall, ccpu = time.perf_counter() - t, time.process_time() - c
        cw, cc = clock.take("construct")
        if i == 0:
            construct_s, construct_cpu = cw, cc
            got = cap.got["get_predictions"][-1]  # type: ignore[union-attr]
        run_s.append(wall)
        times.append(wall - cw)
        cpu.append(ccpu - cc)
        print(f"# official CLIP-DIY image {wall:.1f} s (construction inside {cw:.1f} s)", file=sys.stderr, flush=True)
    out_ = got["out_"][0].float().numpy()
    res = {"import_s": import_s, "construct_s": construct_s, "predict_s": times, "run_s": run_s,
           "cpu": (import_cpu, construct_cpu, cpu), "config": "configs/cfg_clip_pascal.yaml (hydra)",
           "stand_ins": {"hub": hub_calls[:1], "clip_model": str(hf), "decoder": str(decoder)}}
    arrays = {"scores": nearest_resize(out_, h, w).astype(np.float32), "scores_256": out_.astype(np.float32),
              "labels": nearest_resize(masks[0].astype(np.uint8), h, w).astype(np.int64),
              "saliency_256": got["saliency_map"][0, 0].float().numpy()}
    return res, arrays


def run_pnp_ovss(args: argparse.Namespace, models: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    t = time.perf_counter()
    sys.path.insert(0, str(TRANSFORMERS_4_25))
    sys.path.insert(0, str(LAVIS_ROOT))
    sys.path.insert(0, str(PNP_ROOT))
    import torch

    torch.set_num_threads(args.threads)
    stubbed = stub_missing(STUBBED)
    import transformers

    home = args.work / "bench" / "pnp_home"
    os.makedirs(home, exist_ok=True)
    os.chdir(home)  # the official script writes its outputs relative to the working directory
    import PnP_OVSS_0514_updated_segmentation as pnp
    import lavis.models.base_model as lavis_base
    import_s, import_cpu = time.perf_counter() - t, time.process_time()

    folder = models["pnp_ovss"]["model"]
    ckpt = lavis_checkpoint(args.work, folder)
    real_bert = transformers.BertTokenizer.from_pretrained.__func__  # type: ignore[attr-defined]

    def bert_from_pretrained(cls: Any, name: str, *a: Any, **k: Any) -> Any:
        return real_bert(cls, folder if name == "bert-base-uncased" else name, *a, **k)

    transformers.BertTokenizer.from_pretrained = classmethod(bert_from_pretrained)  # type: ignore[assignment]
    downloads = []

    def download_cached_file(url: str, *a: Any, **k: Any) -> str:
        downloads.append(url)
        return str(ckpt)

    lavis_base.download_cached_file = download_cached_file
    real_init = torch.distributed.init_process_group

    def init_process_group(*a: Any, **k: Any) -> None:
        real_init(backend="gloo", rank=0, world_size=1)

    pnp.init_process_group = init_process_group
    pnp.DDP = _DDPStandIn
    torch.cuda.set_device = lambda *a, **k: None
    # the official dataset layout around the photo
    img_id = "2007_000001"
    voc = home / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    shutil.copy(args.image, voc / "JPEGImages" / f"{img_id}.jpg")  # PIL reads by content
    h, w = image_size(args.image)
    zero_png(voc / "SegmentationClass" / f"{img_id}.png", h, w)
    (voc / "val.txt").write_text(img_id + "\n")
    (home / "GPT4o_classification").mkdir(exist_ok=True)
    entry = ("[" + ", ".join(f"{i + 1}: '{n}'" for i, n in enumerate(VOC_IDS)) + "], ["
             + ", ".join(f"{i + 1}: 100%" for i in range(len(VOC_IDS))) + "]")
    (home / "GPT4o_classification" / "voc_classification_noboundary.json").write_text(json.dumps({img_id: entry}))
    argv = ["--gen_multiplecap_withpnpvqa", "label", "--world_size", "1", "--img_size", "336", "--del_patch_num",
            "sort_thresh005", "--batch_size", "1", "--max_att_block_num", "8", "--drop_iter", "4",
            "--prune_att_head", "9", "--sort_threshold", "0.05", "--threshold", "0.15", "--postprocess", "blur+crf",
            "--master_port", "29790", "--data_type", "voc", "--home_dir", str(home), "--save_path", str(home / "out")]
    pargs = pnp.get_args_parser().parse_args(argv)
    os.environ.setdefault("MASTER_ADDR", "localhost")

    clock = Clock()
    pnp.load_model_and_preprocess = clock.wrap("construct", pnp.load_model_and_preprocess)
    pnp.captions_text_loc = clock.wrap("predict", pnp.captions_text_loc)
    rank = torch.device("cpu")
    t, c = time.perf_counter(), time.process_time()
    with Capture(main=pnp.main, densecrf=pnp.densecrf, save=pnp.save_img_union_attention) as cap:
        pnp.main(rank, 1, pargs)
    total, total_cpu = time.perf_counter() - t, time.process_time() - c
    construct_s, construct_cpu = clock.take("construct")
    first, first_cpu = clock.take("predict")
    times, cpu = [first], [first_cpu]
    print(f"# official PnP-OVSS main {total:.1f} s: construction {construct_s:.1f} s, image {first:.1f} s",
          file=sys.stderr, flush=True)
    m = cap.got["main"][-1]
    for _ in range(args.repeats):
        pnp.captions_text_loc(pargs, m["nms"], m["model_textloc"], m["data_loader_test"], m["vis_processors_textloc"],
                              m["text_processors_textloc"], rank, m["cats"])
        wt, ct = clock.take("predict")
        times.append(wt)
        cpu.append(ct)
        print(f"# official PnP-OVSS image {wt:.1f} s", file=sys.stderr, flush=True)
    crf = cap.got["densecrf"]
    save = cap.got["save"][-1]
    arrays = {"scores": np.asarray(crf[-1]["Q"], dtype=np.float32),
              "blur_maps": crf[-1]["mask"].float().numpy(),
              "first_scores": np.asarray(crf[0]["Q"], dtype=np.float32),
              "seg_maps": save["label_preds_withfiltered_caption_beforeargmax_alldrop"][0].float().numpy(),
              "labels": np.asarray(save["label_preds_withfiltered_caption_alldrop"][0]).astype(np.int64),
              "first_labels": np.asarray(save["label_preds_withfiltered_caption"][0]).astype(np.int64)}
    res = {"import_s": import_s, "construct_s": construct_s, "predict_s": times, "main_s": total,
           "main_other_s": total - construct_s - first, "cpu": (import_cpu, construct_cpu, cpu),
           "config": "Run_seg.sh arguments, --data_type voc --batch_size 1: " + " ".join(argv[:-4]),
           "stand_ins": {"stubbed packages": stubbed, "downloads": downloads, "checkpoint": str(ckpt),
                         "caption": save["caption_filtered_list"]}}
    return res, arrays


# ------------------------------------------------------------------------------------------ compare

def compare(work: Path, method: str) -> dict[str, Any]:
    ref = np.load(work / "bench" / f"official_{method}.npz")
    mine = np.load(work / "bench" / f"{method}.npz")
    a, b = mine["scores"].astype(np.float64), ref["scores"].astype(np.float64)
    out: dict[str, Any] = {"method": method, "shape_ovss": list(a.shape), "shape_official": list(b.shape)}
    if a.shape != b.shape:
        return out
    d = np.abs(a - b)
    i = np.unravel_index(int(np.nanargmax(d)), d.shape)
    out.update(max_abs_diff=float(np.nanmax(d)), where=[int(x) for x in i], ovss=float(a[i]), official=float(b[i]),
               mean_abs_diff=float(np.nanmean(d)), nan_official=int(np.isnan(b).sum()), nan_ovss=int(np.isnan(a).sum()),
               pixels_over_1e4=int((d.max(axis=0) > 1e-4).sum()))
    if mine["labels"].shape == ref["labels"].shape:
        out["label_agreement"] = float((mine["labels"] == ref["labels"]).mean())
        out["label_mismatches"] = int((mine["labels"] != ref["labels"]).sum())
    top2 = np.sort(b, axis=0)[-2:]
    out["official_top2_margin_min"] = float((top2[1] - top2[0]).min())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--method", choices=METHODS, required=True)
    ap.add_argument("--image", default=str(PARITY / "astronaut.png"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--rescaled-blip", type=Path, metavar="DIR", help="write a PnP-OVSS WORKDIR with a rescaled "
                    "copy of WORKDIR's BLIP (see rescaled_blip) into DIR and exit")
    ap.add_argument("--compare", action="store_true", help="compare the saved official scores with ovss's "
                    "WORKDIR/bench/<method>.npz (bench_all.py) and print the result")
    args = ap.parse_args()
    args.work = args.work.resolve()
    args.image = str(Path(args.image).resolve())
    if args.rescaled_blip:
        print(rescaled_blip(args.work, args.rescaled_blip.resolve()))
        return
    if args.compare:
        print(json.dumps(compare(args.work, args.method), indent=1))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    models = json.loads((args.work / "models.json").read_text())
    (args.work / "bench").mkdir(exist_ok=True)
    load_start = load()
    res, arrays = {"proxyclip": run_proxyclip, "clip_diy": run_clip_diy, "pnp_ovss": run_pnp_ovss}[args.method](
        args, models)
    import_cpu, construct_cpu, cpu = res.pop("cpu")
    times = res["predict_s"]
    res.update(cold_s=res["import_s"] + res["construct_s"] + times[0],
               cpu_s={"import": import_cpu, "construct": construct_cpu, "predict": cpu,
                      "cold": import_cpu + construct_cpu + cpu[0]},
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               load=load(), load_start=load_start, threads=args.threads, image=args.image,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    out_dir = args.work / "bench"
    np.savez(out_dir / f"official_{args.method}.npz", **arrays)
    (out_dir / f"official_{args.method}.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
