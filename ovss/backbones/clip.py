"""Loading CLIP models through open_clip: hub names and tags, or a config JSON plus a local file.

``load_clip("ViT-B-16", "openai")`` takes the weights from the Hugging Face hub through
open_clip (cached as usual under ``HF_HOME``); ``load_clip("tiny_clip_b16.json",
"tiny_clip_b16.safetensors")`` builds the architecture of an open_clip model-config JSON and
loads a local checkpoint (``.safetensors``, ``.pt``, ``.pth``, ``.bin``; open_clip or OpenAI
state-dict layout, or an OpenAI TorchScript archive). When the hub cannot be reached the
loader fails within about a second with one message that says how to pass a local file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import torch
from torch import nn

from ..checkpoints import CHECKPOINT_SUFFIXES, load_into, load_state_dict
from ..download import download_url, url_reachable
from ..errors import ModelLoadError, UnknownNameError, did_you_mean


@dataclass
class LoadedCLIP:
    """An open_clip CLIP model (eval mode) with its tokenizer and provenance.

    Attributes:
        model: the ``open_clip.model.CLIP`` (or ``CustomTextCLIP``) module, float32, eval mode.
        tokenizer: callable mapping a list of strings to (N, context_length) int64 token ids.
        name: the open_clip model name (for a JSON config, the file's stem).
        pretrained: the pretrained tag or the checkpoint path ('' for random weights).
        fingerprint: a short hash identifying the text tower's weights (for caches).
    """

    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    name: str
    pretrained: str
    fingerprint: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual


def _is_checkpoint_path(value: str) -> bool:
    return Path(value).suffix.lower() in CHECKPOINT_SUFFIXES or Path(value).is_file()


def resolve_model_name(model: str) -> tuple[str, dict[str, Any]]:
    """Return the open_clip model name for ``model`` (a name or a config-JSON path) and its config.

    Raises:
        UnknownNameError: the name is not an open_clip model and not an existing JSON file.
    """
    import open_clip

    if model.lower().endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise UnknownNameError(f"model config file not found: {model}")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UnknownNameError(f"model config {model} is not valid JSON: {exc}") from None
        if "vision_cfg" not in cfg or "text_cfg" not in cfg:
            raise UnknownNameError(f"{model} is not an open_clip model config "
                                   "(it needs 'embed_dim', 'vision_cfg' and 'text_cfg')")
        open_clip.add_model_config(path)
        return path.stem, cfg
    name = model.replace("/", "-")  # "ViT-B/16" (OpenAI spelling) -> "ViT-B-16"
    if name not in open_clip.list_models():
        raise UnknownNameError(
            f"unknown CLIP model {model!r}.{did_you_mean(name, open_clip.list_models())} "
            "Run `python -c \"import open_clip; print(open_clip.list_models())\"` for the names, "
            "or pass an open_clip model-config JSON file")
    return name, open_clip.get_model_config(name) or {}


def hub_reachable(timeout: float = 1.0) -> bool:
    """True when the Hugging Face hub answers a TCP connection within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    return url_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


def fetch_url(url: str, flag: str) -> Path:
    """Local copy of a checkpoint URL, downloaded once into torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``, as ``torch.hub.load_state_dict_from_url`` keeps it) with
    :func:`ovss.download.download_url` (resumable, atomic, progress bar).

    Raises:
        ModelLoadError: the file is not cached and cannot be downloaded (says how to pass a
            local copy with ``flag``).
    """
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if target.is_file():
        return target
    help_ = (f"download {url} on a machine with network access and pass the file with {flag} "
             f"/path/to/{target.name} (or put it in {target.parent})")
    if not url_reachable(url):
        raise ModelLoadError(f"cannot download {url} (no network?): {help_}")
    try:
        download_url(url, target)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}; {help_}") from None
    return target


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Make huggingface_hub use its cache only (no HEAD requests and retries) for a while."""
    import huggingface_hub.constants as hc

    old = hc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = old


def hub_file_cached(repo_id: str, filenames: list[str]) -> bool:
    """True when one of ``filenames`` of the hub repository is in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    for fn in filenames:
        hit = try_to_load_from_cache(repo_id, fn)
        if isinstance(hit, str):
            return True
    return False


def offline_help(what: str, flag: str = "--pretrained") -> str:
    return (f"cannot download {what} from the Hugging Face hub (no network?). Download the "
            f"weights on a machine with network access and pass the file with {flag} "
            "/path/to/weights.safetensors (or copy the hub cache to HF_HOME)")


def text_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of every parameter and buffer outside ``model.visual``: names,
    shapes, dtypes and raw bytes.

    Two models share a fingerprint exactly when their text towers hold the same values, which
    is what the text-embedding cache needs to know. The bytes are hashed in place (no copies on
    CPU; SHA-256 runs at ~1 GB/s with the CPU's SHA extensions): ~0.25 s for ViT-B/16's 63M
    text-tower values.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name.startswith("visual."):
            continue
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype};".encode())
        t = t.detach().to("cpu")
        if not t.is_contiguous():
            t = t.contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()[:16]


def load_clip(model: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> LoadedCLIP:
    """Build an open_clip CLIP model and load its weights.

    Args:
        model: an open_clip model name ("ViT-B-16"; "ViT-B/16" is accepted) or the path of an
            open_clip model-config JSON.
        pretrained: an open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...), the path
            of a local checkpoint, or None/"" for random weights (tests only).
        device: where to put the model.

    Returns:
        The model in float32 and eval mode, with its tokenizer.

    Raises:
        UnknownNameError: unknown model name or pretrained tag.
        ModelLoadError: weights cannot be downloaded, or the checkpoint does not fit.
    """
    import open_clip

    name, cfg = resolve_model_name(model)
    pretrained = pretrained or ""
    if pretrained and not _is_checkpoint_path(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            hint = f" Its tags: {', '.join(tags)}." if tags else " It has no pretrained tags."
            raise UnknownNameError(f"unknown pretrained tag {pretrained!r} for {name}."
                                   f"{did_you_mean(pretrained, tags)}{hint} "
                                   "Or pass the path of a local checkpoint file")
        net = _create_from_hub(name, pretrained)
    else:
        with _quiet_open_clip():
            net = open_clip.create_model(name, pretrained=None)
        if pretrained:
            sd = load_state_dict(pretrained)
            if not any(k.startswith("visual.") for k in sd):
                raise ModelLoadError(f"{pretrained} does not look like a CLIP checkpoint "
                                     "(no 'visual.*' keys): is it the right file?")
            sd = {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
            load_into(net, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                      f"{pretrained} into {name}")
    net = net.float().eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedCLIP(net, tokenizer, name, pretrained or "", text_fingerprint(net), cfg)


def _create_from_hub(name: str, tag: str) -> nn.Module:
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name, tag)
    repo = pcfg.get("hf_hub", "").rstrip("/")
    cached = bool(repo) and hub_file_cached(repo, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                                                   "open_clip_pytorch_model.safetensors"])
    if not cached and not hub_reachable():
        raise ModelLoadError(offline_help(f"the weights of {name} (pretrained={tag!r})"))
    ctx = hub_offline() if cached else contextlib.nullcontext()
    try:
        with ctx, _quiet_open_clip():
            return open_clip.create_model(name, pretrained=tag)
    except Exception as exc:
        raise ModelLoadError(f"could not load {name} pretrained={tag!r}: "
                             f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}. "
                             + offline_help("them")) from None


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    import logging

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # open_clip logs "No pretrained weights loaded" at INFO/WARNING
    try:
        yield
    finally:
        logger.setLevel(level)
