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
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import torch
from torch import nn

from ..checkpoints import CHECKPOINT_SUFFIXES, load_into, load_state_dict
from ..download import download_url, url_reachable
from ..errors import ModelLoadError, UnknownNameError, did_you_mean
from ..fileio import atomic_write_text, cache_root


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
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnknownNameError(f"model config {model} is not valid JSON: {exc}") from None
        if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
            raise UnknownNameError(f"{model} is not an open_clip model config "
                                   "(it needs 'embed_dim', 'vision_cfg' and 'text_cfg')")
        for where, part in (("", cfg), ("vision_cfg.", cfg["vision_cfg"]), ("text_cfg.", cfg["text_cfg"])):
            for key in ("embed_dim", "layers", "width", "heads", "head_width", "patch_size", "image_size",
                        "context_length", "vocab_size", "mlp_ratio"):
                vals = part.get(key) if isinstance(part, dict) else None
                vals = vals if isinstance(vals, (list, tuple)) else [vals]
                if any(isinstance(v, (int, float)) and not isinstance(v, bool) and not v > 0 for v in vals):
                    raise UnknownNameError(f"model config {model}: {where}{key} is {part[key]}; sizes must be "
                                           "positive")
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


#: ``torch.nn.init`` functions that :func:`no_init` turns off (every initialiser torch's layers
#: and open_clip's ``init_parameters`` call)
INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                "sparse_")


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Within this block, ``torch.nn.init`` initialisers called from this thread do nothing: the
    modules built here keep uninitialised parameters (``torch.empty``, whose pages are not even
    touched), for a network whose every parameter a checkpoint then replaces
    (``load_into(..., assign=True)``). Buffers are computed as usual (CLIP's causal mask).

    The technique of ``transformers``' ``no_init_weights``. A random initialisation of ViT-B/16
    CLIP costs ~1-2 s on a 2-core CPU (``uniform_`` / ``normal_`` over 150M values); other threads
    keep the real initialisers.
    """
    owner = threading.get_ident()
    saved = {name: getattr(nn.init, name) for name in INITIALISERS if hasattr(nn.init, name)}

    def skip(original: Callable[..., Any]) -> Callable[..., Any]:
        def initialiser(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == owner:
                return tensor
            return original(tensor, *args, **kwargs)
        return initialiser

    for name, fn in saved.items():
        setattr(nn.init, name, skip(fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


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


def file_identity(path: str | Path) -> dict[str, Any]:
    """What identifies a file's content without reading it: its real path, size, modification and
    status-change times (ns) and inode. Any write to the file changes the status-change time
    (``st_ctime``, which no user call can set back), so an unchanged identity means unchanged bytes.

    Raises:
        OSError: the file cannot be stat'ed.
    """
    st = os.stat(path)
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "device": st.st_dev}


def remembered_fingerprint(identity: dict[str, Any], compute: Callable[[], str], kind: str = "text") -> str:
    """The ``kind`` fingerprint of a weights file, computed once per file version and remembered.

    Computing :func:`text_fingerprint` hashes every text-tower byte (~0.25 s for ViT-B/16) on each
    start; instead its value is stored under ``$OVSS_CACHE/fingerprints`` (see
    :func:`ovss.fileio.cache_root`) with the file's :func:`file_identity`, and reused while the
    file's identity is the same. A changed file (rewritten, replaced, touched) has another identity,
    so its fingerprint is computed again: a stale value is never served.

    Args:
        identity: :func:`file_identity` of the file, taken *before* its weights were read.
        compute: returns the fingerprint of the weights as loaded.
        kind: what the fingerprint covers (one stored value per kind and file).

    Returns:
        The fingerprint (``compute()``'s value, or the one stored for this identity).
    """
    name = hashlib.sha256(f"{kind}|{identity['path']}".encode()).hexdigest()[:32]
    store = cache_root() / "fingerprints" / f"{name}.json"
    try:
        entry = json.loads(store.read_text())
        if entry.get("file") == identity and entry.get("kind") == kind and isinstance(entry.get("fingerprint"), str):
            return entry["fingerprint"]
    except (OSError, ValueError, AttributeError):
        pass
    value = compute()
    try:
        if file_identity(identity["path"]) == identity:  # not changed while it was read
            store.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(store, json.dumps({"file": identity, "kind": kind, "fingerprint": value}))
    except OSError:
        pass  # a read-only cache only costs the hash on the next start
    return value


class LazyTokenizer:
    """open_clip's tokenizer for a model, built on its first call (building it reads and parses
    the BPE vocabulary, ~0.3 s, which a run whose class embeddings come from the cache never needs).

    Calling it is ``open_clip.get_tokenizer(name)(texts)``: a list of strings to (N, context_length)
    int64 token ids.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tokenizer: Callable[..., torch.Tensor] | None = None

    @property
    def tokenizer(self) -> Callable[..., torch.Tensor]:
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.name)
        return self._tokenizer

    def __call__(self, texts: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.tokenizer(texts, *args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.tokenizer, attr)


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
        fingerprint = text_fingerprint(net)
    elif pretrained:
        try:
            identity: dict[str, Any] | None = file_identity(pretrained)  # before reading: see remembered_fingerprint
        except OSError:
            identity = None  # the reader says what is wrong with the path
        sd = load_state_dict(pretrained)  # the safe reader; safetensors memory-mapped
        if not any(k.startswith("visual.") for k in sd):
            raise ModelLoadError(f"{pretrained} does not look like a CLIP checkpoint "
                                 "(no 'visual.*' keys): is it the right file?")
        # the checkpoint replaces every parameter: build the network without random initialisation
        # and take the checkpoint's tensors as they are (assign: no copy)
        with _quiet_open_clip(), no_init():
            net = open_clip.create_model(name, pretrained=None)
        if "input_resolution" in sd and not _quick_gelu(net):
            # OpenAI's release files (the only ones with these keys) hold QuickGELU networks
            warnings.warn(f"{pretrained} is an OpenAI CLIP release, trained with QuickGELU, but model {name!r} "
                          f"uses GELU: pass model={name + '-quickgelu'!r} (or a config with "
                          '"quick_gelu": true) for its numbers', stacklevel=2)
        sd = {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
        load_into(net, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                  f"{pretrained} into {name}", assign=True)
        fingerprint = ""
    else:
        with _quiet_open_clip():
            net = open_clip.create_model(name, pretrained=None)
        fingerprint = text_fingerprint(net)
    net = net.float().eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    if not fingerprint:
        fingerprint = (remembered_fingerprint(identity, lambda: text_fingerprint(net)) if identity is not None
                       else text_fingerprint(net))
    return LoadedCLIP(net, LazyTokenizer(name), name, pretrained or "", fingerprint, cfg)


def _quick_gelu(net: nn.Module) -> bool:
    return any(type(m).__name__ == "QuickGELU" for m in net.modules())


def hub_model_kwargs(name: str, tag: str) -> dict[str, Any]:
    """Keywords ``open_clip.create_model(name, pretrained=tag)`` needs to build the network the weights
    were trained as: OpenAI's CLIPs use QuickGELU (Radford et al. 2021; ``clip/model.py::QuickGELU``), which
    open_clip's plain configs (``ViT-B-16``, ``RN50``...) no longer set, so it warns and builds GELU unless
    asked (``force_quick_gelu``, from the tag's own ``quick_gelu``). The official SCLIP / ClearCLIP / NACLIP /
    ProxyCLIP code loads OpenAI's CLIP with QuickGELU."""
    from open_clip.pretrained import get_pretrained_cfg

    return {"force_quick_gelu": True} if get_pretrained_cfg(name, tag).get("quick_gelu") else {}


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
            return open_clip.create_model(name, pretrained=tag, **hub_model_kwargs(name, tag))
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
