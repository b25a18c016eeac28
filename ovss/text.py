"""Text classifiers: prompt templates, class embeddings and their on-disk cache.

The CLIP family builds one embedding per query word: the word is filled into each prompt
template, every prompt is encoded and L2-normalised, the prompts are averaged and the mean is
L2-normalised again (SCLIP ``clip_segmentor.py::CLIPForSegmentation.__init__``; the same in
ClearCLIP, NACLIP and ProxyCLIP). Embeddings are cached on disk, keyed by the model name, a
hash of the text tower's weights, the templates and the words, so a second run with the same
classes does not encode text again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .backbones.clip import LoadedCLIP


def _openai_imagenet_templates() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


#: The 80 OpenAI ImageNet prompt templates (CLIP paper, ``notebooks/Prompt_Engineering``),
#: as used by SCLIP/ClearCLIP/NACLIP/ProxyCLIP (``prompts/imagenet_template.py``).
IMAGENET_TEMPLATES: tuple[str, ...] = _openai_imagenet_templates()


def cache_dir() -> Path:
    """Folder of the text-embedding cache: ``$OVSS_CACHE/text`` or ``~/.cache/ovss/text``."""
    root = os.environ.get("OVSS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ovss")
    return Path(root) / "text"


@torch.no_grad()
def encode_prompts(clip: LoadedCLIP, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Encode prompts with CLIP's text tower.

    Returns:
        float32 (N, D) ``encode_text`` outputs, not normalised.
    """
    model = clip.model
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = clip.tokenizer(list(prompts[i:i + batch_size])).to(device)
        out.append(model.encode_text(tokens).float())
    return torch.cat(out) if out else torch.zeros(0, model.text_projection.shape[-1])


def _key(clip: LoadedCLIP, words: Sequence[str], templates: Sequence[str]) -> str:
    payload = json.dumps({"model": clip.name, "weights": clip.fingerprint,
                          "templates": list(templates), "words": list(words)})
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _read_cache(path: Path, n: int) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        from safetensors.torch import load_file

        emb = load_file(str(path))["embeddings"]
        if emb.ndim != 2 or emb.shape[0] != n or not torch.isfinite(emb).all():
            raise ValueError("wrong shape or non-finite values")
        return emb
    except Exception as exc:
        warnings.warn(f"text-embedding cache entry {path} is corrupt ({exc}); rebuilding it", stacklevel=3)
        return None


def _write_cache(path: Path, emb: torch.Tensor) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file({"embeddings": emb.contiguous().cpu()}, tmp)
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
    except OSError as exc:
        warnings.warn(f"cannot write the text-embedding cache in {path.parent}: {exc}", stacklevel=3)


def class_embeddings(clip: LoadedCLIP, words: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES,
                     use_cache: bool = True) -> torch.Tensor:
    """Embedding of each query word, averaged over prompt templates.

    Args:
        clip: the loaded CLIP model.
        words: (Q,) query words.
        templates: prompt templates with one ``{}`` each.
        use_cache: read and write the on-disk cache (see :func:`cache_dir`).

    Returns:
        float32 (Q, D) L2-normalised embeddings, on the model's device.
    """
    device = next(clip.model.parameters()).device
    path = cache_dir() / f"{_key(clip, words, templates)}.safetensors"
    if use_cache:
        hit = _read_cache(path, len(words))
        if hit is not None:
            return hit.to(device)
    prompts = [t.format(w) for w in words for t in templates]
    feats = F.normalize(encode_prompts(clip, prompts), dim=-1)
    feats = feats.view(len(words), len(templates), -1).mean(dim=1)
    emb = F.normalize(feats, dim=-1)
    if use_cache:
        _write_cache(path, emb)
    return emb
