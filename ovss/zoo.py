"""The model zoo: every released checkpoint of the methods ovss implements, by name.

``create_segmenter("fc_clip", checkpoint="fcclip_cocopan")`` (``--checkpoint fcclip_cocopan``) goes
through :func:`resolve`, which downloads the file on first use, replaces the name by the file's path
and fills the matching ``model`` / ``pretrained`` / ``config`` where the caller gave none; afterwards
it works offline. ``ovss models`` lists the table, ``ovss download NAME`` fetches ahead of time.

Where files go: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), the
folder ``torch.hub.load_state_dict_from_url`` uses; Hugging Face files are fetched by their
``resolve`` URLs (``HF_ENDPOINT``, ``HF_TOKEN`` honoured) into the same folder. Beside each file,
``<file>.sha256`` (``sha256sum`` format) records its checksum: the publisher's when one is published,
else the one measured on the first download, which every later download of that file must match.

Every fact below comes from the official README (or code) at the commit named in ``source``, or from
``shared/reference/*.md``; nothing is guessed: sizes and hashes the publishers do not give are None
(recorded on first download), and numbers the README does not give are left out.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import ModelLoadError, UnknownNameError, did_you_mean


@dataclass(frozen=True)
class Source:
    """One place a file can be downloaded from.

    Attributes:
        kind: "hf" (Hugging Face hub), "url" (plain HTTP(S)), "gdrive" (Drive file id) or
            "gdrive_folder" (a file, by name, in a shared Drive folder).
        location: hub repo id ("timm/vit_base_patch8_224.dino"), URL, Drive file id or Drive folder id.
        filename: the file in the hub repo / Drive folder, and the name the file is cached under
            (for "url" / "gdrive": the cache name; defaults to the URL's last component).
        repo_type: "model" or "space" (hub only).
        revision: hub revision ("main" when None).
        sha256: SHA-256 the publisher gives for this file, or None (then recorded on first download).
        size: exact size in bytes when the publisher gives it, else None.
    """

    kind: str
    location: str
    filename: str = ""
    repo_type: str = "model"
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None

    @property
    def cache_name(self) -> str:
        """The file's name in the cache (hub files: ``<org>--<repo>--<file>``, so two repos'
        ``model.safetensors`` do not collide)."""
        if self.kind == "hf":
            return f"{self.location.replace('/', '--')}--{self.filename}"
        return self.filename or Path(self.location.split("?")[0]).name

    @property
    def url(self) -> str:
        """Where to get the file by hand (a browser link for Drive)."""
        if self.kind == "hf":
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
            prefix = "spaces/" if self.repo_type == "space" else ("datasets/" if self.repo_type == "dataset" else "")
            return f"{endpoint}/{prefix}{self.location}/resolve/{quote(self.revision or 'main')}/{self.filename}"
        if self.kind == "gdrive":
            return f"https://drive.google.com/file/d/{self.location}/view"
        if self.kind == "gdrive_folder":
            return f"https://drive.google.com/drive/folders/{self.location} (file {self.filename})"
        return self.location


@dataclass(frozen=True)
class ZooModel:
    """A released checkpoint.

    Attributes:
        name: the zoo name (``checkpoint="fcclip_cocopan"``).
        method: the ovss method that uses it (registry name).
        option: the method's keyword that takes the file (``checkpoint``, ``saliency_head``,
            ``saliency_pretrained``, ``proxy_pretrained``).
        title: one line: what it is.
        sources: where to download it, tried in order (hub mirror first, the official place after).
        fills: keyword arguments that must match the file (``model``, ``pretrained``, ``config``,
            ``proxy_model``, ...), filled where the caller gave none.
        official_config: the official config that produced / evaluates it (for reference).
        protocols: ovss ``dataset=`` protocols it was evaluated on.
        paper: published numbers, ``{"A-150 mIoU": 34.1, ...}`` (the README's; see ``source``).
        source: where the facts come from (repository and commit).
        approx_size: a size estimate ("~86 MB") when the exact size is unknown (its basis in ``notes``).
        notes: anything a user should know (unverified file names, quirks).
    """

    name: str
    method: str
    option: str
    title: str
    sources: tuple[Source, ...]
    fills: dict[str, Any] = field(default_factory=dict)
    official_config: str = ""
    protocols: tuple[str, ...] = ()
    paper: dict[str, float] = field(default_factory=dict)
    source: str = ""
    approx_size: str = ""
    notes: str = ""

    def headline(self) -> str:
        """The first published number, e.g. "A-150 mIoU 34.1"."""
        return next((f"{k} {v:.1f}" for k, v in self.paper.items()), "")


# ------------------------------------------------------------------------------------- the table

_FCCLIP = "bytedance/fc-clip README.md (Model Zoo) at 2b0bbe2"
_FCCLIP_CFG = "configs/coco/panoptic-segmentation/fcclip/"
_FCCLIP_PROTOCOLS = ("ade20k", "cityscapes", "mapillary", "ade847", "context59", "context459", "voc21", "voc20",
                     "coco_panoptic")
_FCCLIP_COLUMNS = ("A-150 PQ", "A-150 mAP", "A-150 mIoU", "Cityscapes PQ", "Cityscapes mAP", "Cityscapes mIoU",
                   "Mapillary PQ", "Mapillary mIoU", "A-847 mIoU", "PC-59 mIoU", "PC-459 mIoU", "PAS-21 mIoU",
                   "PAS-20 mIoU", "COCO PQ", "COCO mAP", "COCO mIoU")


def _fcclip(name: str, backbone: str, drive_id: str, model: str, pretrained: str, config: str,
            numbers: tuple[float, ...]) -> ZooModel:
    # the README's columns, reordered so the headline is A-150 mIoU / PQ
    paper = dict(zip(_FCCLIP_COLUMNS, numbers))
    ordered = {"A-150 mIoU": paper.pop("A-150 mIoU"), "A-150 PQ": paper.pop("A-150 PQ"), **paper}
    return ZooModel(
        name=name, method="fc_clip", option="checkpoint",
        title=f"FC-CLIP {backbone}, trained on COCO panoptic",
        sources=(Source("gdrive", drive_id, f"{name}.pth"),),
        fills={"model": model, "pretrained": pretrained}, official_config=_FCCLIP_CFG + config,
        protocols=_FCCLIP_PROTOCOLS, paper=ordered, source=_FCCLIP,
        notes="the checkpoint holds no CLIP text tower: open_clip downloads model/pretrained on first use")


_ZSSEG = "MendelXu/zsseg.baseline README.md (Trained Model) at d77c3af"
_ZEGFORMER = "dingjiansw101/ZegFormer README.md at 8cb9e8f"
_ZEGFORMER_FOLDER = "1qcIe2mE1VRU1apihsao4XvANJgU5lYgm"
_ZEGFORMER_R50 = {"MODEL": {"RESNETS": {"DEPTH": 50}}}  # R101's other sizes (basic stem, 1x1 stride off) apply
_DINO = "facebookresearch/dino README.md at 7c446df"
_CATSEG = "cvlab-kaist/CAT-Seg README.md (Pretrained Models) at 6d3a188"
_CATSEG_COLUMNS = ("A-847 mIoU", "PC-459 mIoU", "A-150 mIoU", "PC-59 mIoU", "PAS-20 mIoU", "PAS-20b mIoU")
_PWC_ZEGFORMER = "paperswithcode.com/paper/decoupling-zero-shot-semantic-segmentation (CVPR 2022 paper table)"

MODELS: dict[str, ZooModel] = {m.name: m for m in (
    _fcclip("fcclip_cocopan", "ConvNeXt-Large", "1-91PIns86vyNaL3CzMmDD39zKGnPMtvj", "convnext_large_d_320",
            "laion2b_s29b_b131k_ft_soup", "fcclip_convnext_large_eval_ade20k.yaml",
            (26.8, 16.8, 34.1, 44.0, 26.8, 56.2, 18.3, 27.8, 14.8, 58.4, 18.2, 81.8, 95.4, 54.4, 44.6, 63.7)),
    _fcclip("fcclip_r50", "ResNet-50", "1tcB-8FNON-LwckXQbUyKcBA2G7TU65Zh", "RN50", "openai",
            "fcclip_convnext_large_eval_ade20k_r50.yaml",
            (17.9, 9.5, 23.3, 40.3, 21.6, 53.2, 15.9, 24.4, 7.1, 50.5, 12.9, 75.9, 89.5, 50.7, 40.7, 58.8)),
    _fcclip("fcclip_r101", "ResNet-101", "1P0mdgftReWzVbPQ0O0CSBfW3krHhTOj0", "RN101", "openai",
            "fcclip_convnext_large_eval_ade20k_r101.yaml",
            (19.1, 10.2, 24.0, 40.9, 24.1, 53.9, 16.7, 23.2, 7.7, 48.9, 12.3, 77.6, 91.3, 51.4, 41.6, 58.9)),
    _fcclip("fcclip_r50x4", "ResNet-50x4", "1nUpUsNUE22eOV9skxv9IyIkmCbg5jrIF", "RN50x4", "openai",
            "fcclip_convnext_large_eval_ade20k_r50x4.yaml",
            (21.8, 11.7, 26.8, 42.2, 23.8, 54.6, 17.4, 24.6, 8.7, 54.0, 13.1, 79.0, 92.9, 52.1, 42.8, 60.4)),
    _fcclip("fcclip_r50x16", "ResNet-50x16", "1rJu2UwwtI0VLDl9CyB8Mkgw9qHlnX70W", "RN50x16", "openai",
            "fcclip_convnext_large_eval_ade20k_r50x16.yaml",
            (22.5, 13.6, 29.4, 42.0, 25.6, 56.0, 17.8, 26.1, 10.3, 56.4, 15.7, 80.7, 94.5, 54.4, 45.0, 63.3)),
    _fcclip("fcclip_r50x64", "ResNet-50x64", "1rvfFVp5p3PZQsHp2NGVEBeYYcqgVVaZX", "RN50x64", "openai",
            "fcclip_convnext_large_eval_ade20k_r50x64.yaml",
            (22.8, 13.6, 28.4, 42.7, 27.4, 55.1, 18.2, 27.3, 10.8, 55.7, 16.2, 80.3, 95.1, 55.6, 46.4, 65.3)),
    ZooModel(
        name="zsseg_zero_shot", method="zsseg", option="checkpoint",
        title="ZSSeg R101c, zero-shot COCO-Stuff (156 seen -> 171), learned prompts",
        sources=(Source("gdrive", "1jDmR4fL5Wm0UyMDd5LhsOl6T2RX2X9R5", "zsseg_zero_shot.pth"),),
        fills={"model": "ViT-B-16", "pretrained": "openai", "dataset": "coco_stuff"},
        official_config="configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_bs32_60k.yaml",
        protocols=("coco_stuff",), source=_ZSSEG,
        notes="the README gives no results table (see docs/two_stage.md)"),
    ZooModel(
        name="zsseg_cross_dataset", method="zsseg", option="checkpoint",
        title="ZSSeg R101c, cross-dataset (COCO-Stuff 156 classes, ViLD prompts, 120k iterations)",
        sources=(Source("gdrive", "1pb6UeXoMPy5xdEBtFcQYLOBKZt0xufKY", "zsseg_cross_dataset.pth"),),
        fills={"model": "ViT-B-16", "pretrained": "openai", "dataset": "ade20k"},
        official_config="configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_vild_prompt_bs32_60k.yaml "
                        "(+ MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE True SOLVER.MAX_ITER 120000); evaluated with "
                        "configs/<dataset>/cross_dataset_test_only.yaml",
        protocols=("ade20k", "ade847", "cityscapes", "context59"), source=_ZSSEG,
        notes="the README gives no results table (see docs/two_stage.md)"),
    ZooModel(
        name="zegformer_r101_cocostuff", method="zegformer", option="checkpoint",
        title="ZegFormer R101, GZSS COCO-Stuff (156 seen -> 171)",
        sources=(Source("gdrive_folder", _ZEGFORMER_FOLDER, "zegformer_R101_bs32_60k_vit16_coco-stuff.pth"),),
        fills={"model": "ViT-B-16", "pretrained": "openai", "dataset": "coco_stuff"},
        official_config="configs/coco-stuff/zegformer_R101_bs32_60k_vit16_coco-stuff_gzss_eval.yaml",
        protocols=("coco_stuff",), paper={"COCO-Stuff hIoU": 34.8}, source=f"{_ZEGFORMER}; numbers: {_PWC_ZEGFORMER}",
        notes="file name from the README's demo command"),
    ZooModel(
        name="zegformer_r50_cocostuff", method="zegformer", option="checkpoint",
        title="ZegFormer R50, GZSS COCO-Stuff (156 seen -> 171)",
        sources=(Source("gdrive_folder", _ZEGFORMER_FOLDER, "zegformer_R50_bs32_60k_vit16_coco-stuff.pth"),),
        fills={"model": "ViT-B-16", "pretrained": "openai", "dataset": "coco_stuff",
               "config": {**_ZEGFORMER_R50, "MODEL": {**_ZEGFORMER_R50["MODEL"],
                                                      "PROMPT_ENSEMBLE_TYPE": "imagenet_select"}}},
        official_config="configs/coco-stuff/zegformer_R50_bs32_60k_vit16_coco-stuff_gzss_eval.yaml",
        protocols=("coco_stuff",), source=_ZEGFORMER,
        notes="file name assumed from the training config's name (the README names only the R101 file)"),
    ZooModel(
        name="zegformer_r101_voc", method="zegformer", option="checkpoint",
        title="ZegFormer R101, GZSS PASCAL VOC (15 seen -> 20), 10k iterations",
        sources=(Source("gdrive_folder", _ZEGFORMER_FOLDER, "zegformer_R101_bs32_10k_vit16_voc.pth"),),
        fills={"model": "ViT-B-16", "pretrained": "openai", "dataset": "voc20"},
        official_config="configs/pascal_voc/zegformer_R101_bs32_10k_vit16_voc_gzss_eval.yaml",
        protocols=("voc20",), paper={"VOC hIoU": 73.3}, source=f"{_ZEGFORMER}; numbers: {_PWC_ZEGFORMER}",
        notes="file name assumed from the training config's name; the README warns 10k results are not stable"),
    ZooModel(
        name="zegformer_r101_voc_30k", method="zegformer", option="checkpoint",
        title="ZegFormer R101, GZSS PASCAL VOC (15 seen -> 20), 30k iterations",
        sources=(Source("gdrive_folder", _ZEGFORMER_FOLDER, "zegformer_R101_bs32_30k_vit16_voc.pth"),),
        fills={"model": "ViT-B-16", "pretrained": "openai", "dataset": "voc20"},
        official_config="configs/pascal_voc/zegformer_R101_bs32_30k_vit16_voc_gzss_eval.yaml",
        protocols=("voc20",), source=_ZEGFORMER, notes="file name assumed from the training config's name"),
    ZooModel(
        name="zegformer_r50_voc", method="zegformer", option="checkpoint",
        title="ZegFormer R50, GZSS PASCAL VOC (15 seen -> 20), 10k iterations",
        sources=(Source("gdrive_folder", _ZEGFORMER_FOLDER, "zegformer_R50_bs32_10k_vit16_voc.pth"),),
        fills={"model": "ViT-B-16", "pretrained": "openai", "dataset": "voc20",
               "config": {"MODEL": {**_ZEGFORMER_R50["MODEL"], "MASK_FORMER": {"ENSEMBLING": False}}}},
        official_config="configs/pascal_voc/zegformer_R50_bs32_10k_vit16_voc_gzss_eval.yaml",
        protocols=("voc20",), source=_ZEGFORMER,
        notes="file name assumed from the training config's name; its eval config turns the ensemble off"),
    ZooModel(
        name="zegformer_r50_ade847", method="zegformer", option="checkpoint",
        title="ZegFormer R50, GZSS ADE20K-Full frequency split (572 seen -> 847)",
        sources=(Source("gdrive_folder", _ZEGFORMER_FOLDER, "zegformer_R50_bs32_60k_vit16_ade20k-full-847-freq.pth"),),
        fills={"model": "ViT-B-16", "pretrained": "openai",
               "config": {"MODEL": {**_ZEGFORMER_R50["MODEL"], "PROMPT_ENSEMBLE_TYPE": "imagenet_select",
                                    "MASK_FORMER": {"GZERO_CALIBRATE": 0.0, "ENSEMBLING": True}}}},
        official_config="configs/ade20k-full-847-freq/zegformer_R50_bs32_60k_vit16_ade20k-full-847-freq_gzss_eval.yaml",
        protocols=(), source=_ZEGFORMER,
        notes="file name assumed from the training config's name; ovss has no protocol for the 847 frequency split"),
    ZooModel(
        name="found_decoder", method="clip_diy", option="saliency_head",
        title="FOUND saliency decoder (1x1 conv on DINO ViT-S/8 keys), CLIP-DIY's saliency",
        sources=(Source("url", "https://raw.githubusercontent.com/valeoai/FOUND/1ad22bacf1a6854faff1b5d4be300d54cad6f277/"
                               "data/weights/decoder_weights.pt", "found_decoder_weights.pt",
                        sha256="47ff2a4af3dbc6c80cb832cc81f8ed8ae81809e52576d0de5f9c754cf46ef9b5", size=2689),),
        fills={"saliency_model": "vit_small_patch8_224.dino"},
        protocols=("voc21", "coco_object"), paper={"VOC21 mIoU": 59.9, "COCO-Object mIoU": 31.0},
        source="valeoai/FOUND data/weights/decoder_weights.pt at 1ad22ba (git blob c1bd70f; SHA-256 and size "
               "of that immutable blob); CLIP-DIY numbers: shared/reference/training-free-methods.md §7",
        notes="the saliency ViT's weights are the 300-epoch DINO ViT-S/8 (zoo entry dino_vits8_300ep, "
              "CLIP-DIY's default)"),
    ZooModel(
        name="dino_vits8_300ep", method="clip_diy", option="saliency_pretrained",
        title="DINO ViT-S/8, 300-epoch release: the saliency backbone FOUND was trained on",
        sources=(Source("url", "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_300ep_pretrain/"
                               "dino_deitsmall8_300ep_pretrain.pth"),),
        fills={"saliency_model": "vit_small_patch8_224.dino"}, protocols=("voc21", "coco_object"),
        source="valeoai/FOUND model.py L208 at a557f2c (the URL); " + _DINO + " (21M parameters)",
        approx_size="~87 MB",
        notes="size estimated from the README's 21M parameters (fp32); not timm's vit_small_patch8_224.dino "
              "weights (those are the 800-epoch release)"),
    ZooModel(
        name="dino_vitb8", method="proxyclip", option="proxy_pretrained",
        title="DINO ViT-B/8: ProxyCLIP's default proxy (vision foundation model)",
        sources=(Source("hf", "timm/vit_base_patch8_224.dino", "model.safetensors"),
                 Source("url", "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth")),
        fills={"proxy_model": "vit_base_patch8_224.dino"},
        protocols=("voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade20k", "coco_stuff"),
        paper={"8-benchmark mean mIoU": 42.3, "VOC21 mIoU": 61.3, "PC60 mIoU": 35.3, "COCO-Object mIoU": 37.5,
               "VOC20 mIoU": 80.3, "Cityscapes mIoU": 38.1, "PC59 mIoU": 39.1, "ADE mIoU": 20.2,
               "COCO-Stuff mIoU": 26.5},
        source=f"{_DINO} (85M parameters; timm's hub copy of the same weights first); ProxyCLIP numbers "
               "(OpenAI ViT-B/16 + DINO ViT-B/8): shared/reference/training-free-methods.md §5",
        approx_size="~343 MB", notes="size estimated from the README's 85M parameters (fp32)"),
    ZooModel(
        name="catseg_vitb", method="cat_seg", option="checkpoint",
        title="CAT-Seg (B), CLIP ViT-B/16, trained on COCO-Stuff",
        sources=(Source("hf", "hamacojr/CAT-Seg-weights", "model_base.pth", repo_type="space"),),
        fills={"model": "ViT-B-16", "pretrained": "openai"}, official_config="configs/vitb_384.yaml",
        protocols=("ade847", "context459", "ade20k", "context59", "voc20", "voc21"),
        paper=dict(zip(_CATSEG_COLUMNS, (12.0, 19.0, 31.8, 57.5, 94.6, 77.3))), source=_CATSEG,
        notes="ovss's CAT-Seg method is not on main yet; the entry resolves once it is registered"),
    ZooModel(
        name="catseg_vitl", method="cat_seg", option="checkpoint",
        title="CAT-Seg (L), CLIP ViT-L/14@336px, trained on COCO-Stuff",
        sources=(Source("hf", "hamacojr/CAT-Seg-weights", "model_large.pth", repo_type="space"),),
        fills={"model": "ViT-L-14-336", "pretrained": "openai"}, official_config="configs/vitl_336.yaml",
        protocols=("ade847", "context459", "ade20k", "context59", "voc20", "voc21"),
        paper=dict(zip(_CATSEG_COLUMNS, (16.0, 23.8, 37.9, 63.3, 97.0, 82.5))), source=_CATSEG,
        notes="ovss's CAT-Seg method is not on main yet; the entry resolves once it is registered"),
)}

#: method keywords that take a checkpoint file (and so may take a zoo name).
FILE_OPTIONS = ("checkpoint", "saliency_head", "saliency_pretrained", "proxy_pretrained")


# ----------------------------------------------------------------------------------- the cache

def cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def get(name: str) -> ZooModel:
    """The zoo entry ``name``.

    Raises:
        UnknownNameError: no such entry (with the closest names).
    """
    if name not in MODELS:
        raise UnknownNameError(f"no model {name!r} in the zoo.{did_you_mean(name, list(MODELS))} "
                               "Run `ovss models` for the list")
    return MODELS[name]


def is_zoo_name(value: Any) -> bool:
    """True for a string that names a zoo entry (not a path: no separator, no file of that name)."""
    return isinstance(value, str) and value in MODELS and os.sep not in value and not Path(value).exists()


def recorded_sha256(path: Path) -> str | None:
    """The checksum recorded beside ``path`` (``<file>.sha256``), or None."""
    rec = path.with_name(path.name + ".sha256")
    if not rec.is_file():
        return None
    parts = rec.read_text().split()
    return parts[0].lower() if parts else None


def _record(path: Path, digest: str) -> None:
    rec = path.with_name(path.name + ".sha256")
    tmp = rec.with_name(rec.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp, rec)


def converted_path(entry: ZooModel) -> Path:
    """Where ``ovss convert NAME`` / ``ovss download NAME --convert`` put the safetensors copy."""
    return cache_dir() / f"{entry.name}.safetensors"


def local_path(entry: ZooModel) -> Path | None:
    """The cached file of ``entry`` (its safetensors copy first), or None when nothing is cached."""
    conv = converted_path(entry)
    if conv.is_file():
        return conv
    for src in entry.sources:
        p = cache_dir() / src.cache_name
        if p.is_file():
            return p
    return None


def expected_sha256(src: Source) -> tuple[str | None, str]:
    """(checksum a download of ``src`` must have, where it comes from: "publisher" / "recorded" / "none")."""
    if src.sha256:
        return src.sha256.lower(), "publisher"
    rec = recorded_sha256(cache_dir() / src.cache_name)
    return (rec, "recorded") if rec else (None, "none")


def _download_source(src: Source, progress: bool) -> Path:
    from .download import download_gdrive, download_url, gdrive_folder_file_id

    dest = cache_dir() / src.cache_name
    sha, _ = expected_sha256(src)
    if src.kind in ("url", "hf"):
        headers = {}
        if src.kind == "hf" and os.environ.get("HF_TOKEN"):
            headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
        digest = download_url(src.url, dest, sha256=sha, size=src.size, progress=progress, headers=headers)
    elif src.kind == "gdrive":
        digest = download_gdrive(src.location, dest, sha256=sha, size=src.size, progress=progress)
    elif src.kind == "gdrive_folder":
        file_id = gdrive_folder_file_id(src.location, src.filename)
        digest = download_gdrive(file_id, dest, sha256=sha, size=src.size, progress=progress)
    else:
        raise ModelLoadError(f"unknown source kind {src.kind!r}")
    _record(dest, digest)
    return dest


def where_to_put(entry: ZooModel) -> str:
    """One line: the file, its URL and where to put it by hand."""
    src = entry.sources[-1]  # the official place
    return (f"download {src.cache_name} from {src.url} on a machine with network access and put it at "
            f"{cache_dir() / src.cache_name} (or pass its path as {entry.option}=)")


def fetch(name: str, *, progress: bool = True) -> Path:
    """The local file of zoo entry ``name``, downloaded on first use (later calls need no network).

    Raises:
        UnknownNameError: not a zoo name.
        ModelLoadError: not cached and no source reachable (within ~1 s; the message names the
            file, its URL and where to put it), or a failed / mismatching download.
    """
    from .download import first_reachable

    entry = get(name)
    cached = local_path(entry)
    if cached is not None:
        return cached
    probe = {src.url.split(" ")[0] if src.kind != "gdrive" else "https://drive.google.com": src
             for src in entry.sources}
    if first_reachable(list(probe)) is None:
        raise ModelLoadError(f"{entry.name} is not downloaded and no download source answers (offline?): "
                             + where_to_put(entry))
    errors = []
    for src in entry.sources:
        try:
            return _download_source(src, progress)
        except ModelLoadError as exc:
            errors.append(str(exc))
    raise ModelLoadError(f"could not download {entry.name}: {errors[-1]}" + (
        f" (and {len(errors) - 1} other source(s) failed)" if len(errors) > 1 else "") + f"; {where_to_put(entry)}")


def resolve(method: str, kwargs: dict[str, Any], *, progress: bool = True) -> dict[str, Any]:
    """Replace zoo names in the file options of ``kwargs`` by local paths (downloading on first use)
    and fill the options that must match the file where the caller gave none.

    Args:
        method: registry name of the method being built.
        kwargs: its keyword arguments (not modified).
        progress: show a progress bar while downloading.

    Returns:
        A new dict: e.g. ``{"checkpoint": "fcclip_cocopan"}`` for ``fc_clip`` becomes
        ``{"checkpoint": ".../fcclip_cocopan.pth", "model": "convnext_large_d_320",
        "pretrained": "laion2b_s29b_b131k_ft_soup"}``.

    Raises:
        UnknownNameError: a zoo name given to another method or option (the message names the right one).
        ModelLoadError: see :func:`fetch`.
    """
    out = dict(kwargs)
    for key in FILE_OPTIONS:
        value = kwargs.get(key)
        if not is_zoo_name(value):
            continue
        entry = MODELS[value]
        if entry.method != method or entry.option != key:
            raise UnknownNameError(f"{value!r} is a {entry.method} checkpoint for {entry.option}= "
                                   f"(--{entry.option.replace('_', '-')}), not {method}'s {key}=")
        out[key] = str(fetch(value, progress=progress))
        for k, v in entry.fills.items():
            if out.get(k) is None:
                out[k] = copy.deepcopy(v)  # a config dict must not be shared with the table
    return out


def status(entry: ZooModel) -> dict[str, Any]:
    """Cache state of ``entry``: path (or None), size in bytes, checksum and where it comes from."""
    path = local_path(entry)
    src = entry.sources[0]
    out: dict[str, Any] = {"path": path, "size": None, "sha256": None, "sha256_from": "none"}
    if path is not None:
        out["size"] = path.stat().st_size
        match = next((s for s in entry.sources if s.cache_name == path.name), None)
        if match is not None:
            src = match
    sha, origin = expected_sha256(src)
    out["sha256"], out["sha256_from"] = sha, origin
    if out["size"] is None:
        out["size"] = src.size
    return out
