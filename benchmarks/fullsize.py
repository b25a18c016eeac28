#!/usr/bin/env python3
"""Full-size random networks for every method, at the official sizes, for the speed benchmarks.

Speed does not depend on the weight values, but it does depend on the sizes: tiny test models say
nothing about it. This writes, into WORKDIR, random weights with the architecture of each method's
released model, in the file formats ovss (and the official code) read:

=========================  ======================================================================
file                        what (official sizes)
=========================  ======================================================================
vitb16.json/.safetensors    CLIP ViT-B/16, QuickGELU (OpenAI): SCLIP, ClearCLIP, NACLIP, MaskCLIP,
                            vanilla, ProxyCLIP, ZSSeg, ZegFormer
vitb32.json/.safetensors    CLIP ViT-B/32 (LAION-2B layout, GELU): CLIP-DIY
convnext_large_d_320.*      CLIP ConvNeXt-L (open_clip ``convnext_large_d_320``): FC-CLIP
dino_vitb8.safetensors      DINO ViT-B/8 (timm ``vit_base_patch8_224.dino`` keys): ProxyCLIP
dino_vits8.safetensors      DINO ViT-S/8 + ``found_decoder.safetensors`` (384 -> 1 1x1 conv): CLIP-DIY
blip_itm_large/             BLIP ITM large (ViT-L/16 at 384, BERT-base with cross-attention),
                            transformers layout: PnP-OVSS
fcclip_convnext_large.pth   FC-CLIP head (Mask2Former: 6 deformable encoder layers, 9 decoder
                            layers, 250 queries) in the released key layout
zsseg_r101c.pth             ZSSeg (MaskFormer R101c, learned prompts) in the released key layout
zegformer_r101.pth          ZegFormer (MaskFormer R101, 512-d segment embeddings), released layout
catseg_vitb.safetensors     CAT-Seg ViT-B/16 (``configs/vitb_384.yaml`` sizes), official key layout
                            (``benchmarks/bench_cat_seg.py::write_vitb_checkpoint``)
=========================  ======================================================================

``models.json`` maps each method to its ``create_segmenter`` keyword arguments (weights + the
default protocol's dataset). With ``--clip FILE`` (the ViT-B/16 written by
``shared/bench/official_sclip.py``) that file is used for ViT-B/16 instead, so the CLIP methods
run on the very weights the official SCLIP code ran on.

Values: each builder's own random initialisation under ``torch.manual_seed(0)``, rounded to
float16 and stored as float32 (the layout of the official bench weights); the CLIP text
projection has its common direction removed so that a random text tower does not map every class
to the same vector (masks and crops then vary as with real weights).

Usage::

    python benchmarks/fullsize.py WORKDIR [--clip DIR/vitb16_random.safetensors] [--only fc_clip,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

VITB16 = {"embed_dim": 512, "quick_gelu": True,
          "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}
VITB32 = {"embed_dim": 512,
          "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}

#: each method's default protocol for the benchmark
DATASETS = {"vanilla": "voc21", "maskclip": "voc21", "sclip": "voc21", "clearclip": "voc21", "naclip": "voc21",
            "proxyclip": "voc21", "clip_diy": "voc21", "pnp_ovss": "voc21", "fc_clip": "ade20k",
            "zsseg": "coco_stuff", "zegformer": "coco_stuff", "cat_seg": "ade20k"}


def rounded(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half().float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def spread_text_projection(sd: dict[str, torch.Tensor]) -> None:
    """Remove the common direction of a random text tower's outputs from its projection."""
    proj = sd.get("text_projection")
    if proj is None:
        return
    u = proj.mean(dim=0)
    u = u / u.norm()
    sd["text_projection"] = proj - proj @ u[:, None] * u[None, :]


def save_st(path: Path, sd: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(rounded(sd), str(path))


def open_clip_model(work: Path, name: str, cfg: dict[str, Any] | None) -> tuple[str, str]:
    """Random open_clip CLIP: (config JSON or model name, safetensors)."""
    import open_clip

    target = work / f"{name}.safetensors"
    model = name
    if cfg is not None:
        (work / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(work / f"{name}.json")
        model = str(work / f"{name}.json")
    if not target.is_file():
        torch.manual_seed(0)
        net = open_clip.create_model(name, pretrained=None)
        sd = net.state_dict()
        spread_text_projection(sd)
        save_st(target, sd)
    return model, str(target)


def dino(work: Path, timm_name: str, file: str) -> str:
    import timm

    target = work / file
    if not target.is_file():
        torch.manual_seed(0)
        save_st(target, timm.create_model(timm_name, pretrained=False, num_classes=0).state_dict())
    return str(target)


def found_decoder(work: Path) -> str:
    target = work / "found_decoder.safetensors"
    if not target.is_file():
        g = torch.Generator().manual_seed(2)
        save_st(target, {"decoder.weight": torch.randn(1, 384, 1, 1, generator=g) / 384 ** 0.5,
                         "decoder.bias": torch.tensor([-0.5])})
    return str(target)


def blip_itm_large(work: Path, parity: Path) -> str:
    """Random BLIP ITM large (``Salesforce/blip-itm-large-flickr`` sizes) as a transformers folder, with
    a WordPiece vocabulary of BERT's size (the tiny fixture's words, then filler pieces)."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    target = work / "blip_itm_large"
    if (target / "config.json").is_file():
        return str(target)
    tiny = parity / "pnp_ovss" / "hf_tiny_blip_itm"
    target.mkdir(parents=True, exist_ok=True)
    for f in tiny.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt") and f.name != "config.json":
            shutil.copy(f, target / f.name)
    vocab = (tiny / "vocab.txt").read_text().splitlines()
    size = 30524
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    (target / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tiny_cfg = json.loads((tiny / "config.json").read_text())
    text = {**tiny_cfg["text_config"], "vocab_size": size, "hidden_size": 768, "encoder_hidden_size": 1024,
            "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
    vision = {**tiny_cfg["vision_config"], "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
              "num_attention_heads": 16, "image_size": 384, "patch_size": 16}
    cfg = BlipConfig(text_config=text, vision_config=vision, projection_dim=256,
                     image_text_hidden_size=256)
    torch.manual_seed(0)
    net = BlipForImageTextRetrieval(cfg).eval()
    for p in net.parameters():
        p.data = p.data.half().float()
    net.save_pretrained(str(target), safe_serialization=True)
    return str(target)


def fcclip(work: Path, clip: tuple[str, str]) -> str:
    from ovss.models.mask2former import FCCLIPConfig
    from ovss.training.fc_clip_train import build_net

    target = work / "fcclip_convnext_large.pth"
    if not target.is_file():
        torch.manual_seed(0)
        net = build_net(clip[0], clip[1], FCCLIPConfig(), "cpu")
        model = rounded({k: v.detach() for k, v in net.head_state_dict().items()})
        model["criterion.empty_weight"] = torch.ones(134)
        model["criterion.empty_weight"][-1] = 0.1
        torch.save({"model": model}, str(target))
    return str(target)


def maskformer(work: Path, method: str, clip: tuple[str, str]) -> str:
    from ovss.training.maskformer_train import ProposalTrainer, TrainConfig

    target = work / ("zsseg_r101c.pth" if method == "zsseg" else "zegformer_r101.pth")
    if not target.is_file():
        prompts = ""
        if method == "zsseg":  # the released ZSSeg holds learned prompts: random ones of the official shape
            from ovss.backbones.clip import load_clip
            from ovss.methods.two_stage import LearnablePrompts

            torch.manual_seed(0)
            learner = LearnablePrompts(load_clip(clip[0], clip[1], "cpu"), 16, 0)
            prompts = str(work / "zsseg_prompts_random.pth")
            state = rounded({k: v.detach() for k, v in learner.state_dict().items()})
            torch.save({"model": {"clip_adapter.prompt_learner." + k: v for k, v in state.items()}}, prompts)
        cfg = TrainConfig(method=method, clip_model=clip[0], clip_pretrained=clip[1],
                          prompt="learnable" if method == "zsseg" else "", prompt_checkpoint=prompts, seed=0)
        state = ProposalTrainer(cfg).model_state()
        state["model"] = rounded(state["model"])
        state.pop("ovss_train", None)
        torch.save(state, str(target))
    return str(target)


def cat_seg(work: Path) -> str:
    from bench_cat_seg import write_vitb_checkpoint

    target = work / "catseg_vitb.safetensors"
    if not target.is_file():
        write_vitb_checkpoint(target)
    return str(target)


def build(work: Path, parity: Path, clip_file: str | None, only: set[str] | None) -> dict[str, dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    if clip_file:
        (work / "vitb16.json").write_text(json.dumps(VITB16))
        vitb16 = (str(work / "vitb16.json"), clip_file)
    else:
        vitb16 = open_clip_model(work, "vitb16", VITB16)
    want = lambda m: only is None or m in only  # noqa: E731
    models: dict[str, dict[str, Any]] = {}
    base = {"model": vitb16[0], "pretrained": vitb16[1]}
    for m in ("vanilla", "maskclip", "sclip", "clearclip", "naclip"):
        models[m] = dict(base)
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "proxyclip": lambda: {**base, "proxy_model": "vit_base_patch8_224.dino",
                              "proxy_pretrained": dino(work, "vit_base_patch8_224.dino", "dino_vitb8.safetensors")},
        "clip_diy": lambda: {**dict(zip(("model", "pretrained"), open_clip_model(work, "vitb32", VITB32))),
                             "saliency_model": "vit_small_patch8_224.dino",
                             "saliency_pretrained": dino(work, "vit_small_patch8_224.dino", "dino_vits8.safetensors"),
                             "saliency_head": found_decoder(work)},
        "pnp_ovss": lambda: {"model": blip_itm_large(work, parity)},
        "fc_clip": lambda: (lambda c: {"model": c[0], "pretrained": c[1], "checkpoint": fcclip(work, c)})(
            open_clip_model(work, "convnext_large_d_320", None)),
        "zsseg": lambda: {**base, "checkpoint": maskformer(work, "zsseg", vitb16)},
        "zegformer": lambda: {**base, "checkpoint": maskformer(work, "zegformer", vitb16)},
        "cat_seg": lambda: {"model": "ViT-B-16", "checkpoint": cat_seg(work)},
    }
    for m, step in steps.items():
        if want(m):
            print(f"# {m}", file=sys.stderr, flush=True)
            models[m] = step()
    for m in models:
        models[m]["dataset"] = DATASETS[m]
    path = work / "models.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(models)
    path.write_text(json.dumps(old, indent=1))
    return old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--clip", help="ViT-B/16 weights to use instead of a new random one (open_clip layout)")
    ap.add_argument("--only", help="comma-separated methods")
    ap.add_argument("--parity", type=Path, default=HERE.parents[1] / "shared" / "parity")
    args = ap.parse_args()
    models = build(args.work, args.parity, args.clip, set(args.only.split(",")) if args.only else None)
    print(json.dumps(models, indent=1))


if __name__ == "__main__":
    main()
