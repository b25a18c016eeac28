"""BLIP image-text matching (ITM) models through Hugging Face transformers, with the cross-attention
capture that PnP-OVSS needs.

``load_blip_itm("Salesforce/blip-itm-large-coco")`` loads ``BlipForImageTextRetrieval`` and its
WordPiece tokenizer from the hub (cached as usual under ``HF_HOME``); a local directory in the same
layout (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``vocab.txt``) works the same way
(a ``pytorch_model.bin`` is read by :mod:`ovss.checkpoints`, which never executes code). When the hub
cannot be reached and nothing is cached the loader fails within about a second with one message.

Two details make the transformers model compute what the official LAVIS ``BlipITM`` computes
(checked bitwise on the parity fixture, ``shared/parity/pnp_ovss``):

* LAVIS replaces text token 0 (``[CLS]``) by ``[ENC]`` before the ITM forward
  (``lavis/models/blip_models/blip_image_text_matching.py::BlipITM.forward``); transformers'
  ``BlipForImageTextRetrieval.forward`` does not, so :func:`itm_forward` does it.
* The tokenizer gets ``[DEC]`` (bos) and ``[ENC]`` added in that order, as LAVIS
  ``BlipBase.init_tokenizer`` does, when the checkpoint's tokenizer lacks them.
* The ViT LayerNorms use epsilon 1e-6 as in LAVIS ``vit.py`` (transformers defaults to 1e-5).
* At an input size other than the checkpoint's, the ViT position embedding is resized once at load
  time by the formula of LAVIS ``lavis/models/vit.py::interpolate_pos_embed`` (bicubic,
  ``align_corners=False`` on the patch grid; the CLS position kept).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..checkpoints import load_state_dict
from ..errors import ModelLoadError
from .clip import hub_file_cached, hub_offline, hub_reachable

#: The transformers BLIP ITM checkpoints PnP-OVSS can use (the official code runs the LAVIS
#: ``blip_image_text_matching`` "large" model, i.e. the COCO / Flickr retrieval fine-tunes).
KNOWN_BLIP_ITM = ("Salesforce/blip-itm-large-coco", "Salesforce/blip-itm-large-flickr",
                  "Salesforce/blip-itm-base-coco", "Salesforce/blip-itm-base-flickr")

#: LayerNorm epsilon of the LAVIS ViT (``partial(nn.LayerNorm, eps=1e-6)``).
LAVIS_VIT_LN_EPS = 1e-6


@dataclass
class LoadedBLIP:
    """A BLIP ITM model (eval mode, float32, parameters frozen) with its tokenizer.

    Attributes:
        model: ``transformers.BlipForImageTextRetrieval``.
        tokenizer: the WordPiece (bert-base-uncased rules) tokenizer with ``[DEC]`` and ``[ENC]``.
        enc_token_id: id of ``[ENC]``, which replaces token 0 before the ITM forward.
        image_size: the input size S the ViT position embedding is set for (S x S pixels).
        patch_size: ViT patch size in pixels (16 for BLIP).
        name: the hub name or the local directory.
        fingerprint: short hash of the weights (for caches and reports).
    """

    model: nn.Module
    tokenizer: Any
    enc_token_id: int
    image_size: int
    patch_size: int
    name: str
    fingerprint: str = ""

    @property
    def grid(self) -> int:
        """Patches per side, ``image_size // patch_size``."""
        return self.image_size // self.patch_size

    @property
    def num_text_layers(self) -> int:
        return len(self.model.text_encoder.encoder.layer)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.text_config.num_attention_heads)

    @property
    def max_text_tokens(self) -> int:
        """Longest caption (with [CLS]/[SEP]) the model accepts: LAVIS ``BlipITM.max_txt_len`` (500),
        capped by the text position embeddings."""
        return min(500, int(self.model.config.text_config.max_position_embeddings))


def _offline_message(name: str) -> str:
    return (f"cannot download the BLIP model {name!r} from the Hugging Face hub (no network?). "
            "Download it on a machine with network access (e.g. `huggingface-cli download "
            f"{name}`) and copy the hub cache to HF_HOME, or pass the local directory with "
            "model=/path/to/blip-itm-dir (config.json, model.safetensors, vocab.txt)")


def load_blip_itm(model: str, image_size: int | None = None,
                  device: str | torch.device = "cpu") -> LoadedBLIP:
    """Load a BLIP ITM model and its tokenizer.

    Args:
        model: a hub name (``"Salesforce/blip-itm-large-coco"``) or a local directory in the
            transformers layout.
        image_size: input size S (square); None keeps the checkpoint's. Must be a multiple of the
            patch size. The position embedding is resized once (LAVIS ``interpolate_pos_embed``).
        device: where to put the model.

    Returns:
        The model in float32, eval mode, every parameter with ``requires_grad=False``.

    Raises:
        ModelLoadError: the hub is unreachable and nothing is cached, the directory is not a
            BLIP ITM checkpoint, or the size is not a multiple of the patch size.
    """
    from transformers import AutoConfig, AutoTokenizer, BlipForImageTextRetrieval

    local = Path(model).expanduser()
    weights: dict[str, torch.Tensor] | None = None
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ModelLoadError(f"{model} is not a transformers model directory (it needs "
                                 "config.json, model.safetensors and vocab.txt)")
        source, ctx = str(local), contextlib.nullcontext()
        if not (local / "model.safetensors").is_file() and (local / "pytorch_model.bin").is_file():
            # a pickled state dict goes through ovss's reader (never executes code from the file)
            weights = load_state_dict(local / "pytorch_model.bin")
    else:
        if "/" not in model:
            raise ModelLoadError(f"BLIP model {model!r} is neither a local directory nor a hub name "
                                 f"like 'Salesforce/blip-itm-large-coco' (known: {', '.join(KNOWN_BLIP_ITM)})")
        cached = hub_file_cached(model, ["model.safetensors", "pytorch_model.bin"])
        if not cached and not hub_reachable():
            raise ModelLoadError(_offline_message(model))
        source, ctx = model, (hub_offline() if cached else contextlib.nullcontext())
    try:
        with ctx:
            if weights is None:
                net = BlipForImageTextRetrieval.from_pretrained(source, dtype=torch.float32)
            else:  # transformers takes a state dict only without a model path
                config = AutoConfig.from_pretrained(source)
                net = BlipForImageTextRetrieval.from_pretrained(None, config=config, state_dict=weights,
                                                                dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # transformers raises OSError/ValueError/... for bad folders
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ModelLoadError(f"could not load the BLIP ITM model {model!r}: {first}") from None
    if net.__class__.__name__ != "BlipForImageTextRetrieval":
        raise ModelLoadError(f"{model} is not a BlipForImageTextRetrieval checkpoint")
    enc_id = _add_blip_special_tokens(tokenizer)
    vocab = int(net.config.text_config.vocab_size)
    if enc_id >= vocab:
        raise ModelLoadError(f"the tokenizer of {model} gives [ENC] id {enc_id} but the text model "
                             f"has only {vocab} embeddings: tokenizer and weights do not match")
    patch = int(net.config.vision_config.patch_size)
    size = int(image_size or net.config.vision_config.image_size)
    if size % patch or size <= 0:
        raise ModelLoadError(f"image_size {size} is not a positive multiple of the patch size {patch}")
    set_image_size(net, size)
    set_vision_layer_norm_eps(net, LAVIS_VIT_LN_EPS)
    net = net.float().eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    return LoadedBLIP(net, tokenizer, enc_id, size, patch, model, _fingerprint(net))


def _add_blip_special_tokens(tokenizer: Any) -> int:
    """Give the tokenizer ``[DEC]`` (bos) and ``[ENC]`` as LAVIS ``BlipBase.init_tokenizer`` does
    (added in that order after the bert-base-uncased vocabulary) and return the ``[ENC]`` id."""
    unk = tokenizer.unk_token_id
    if tokenizer.convert_tokens_to_ids("[DEC]") in (None, unk):
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if tokenizer.convert_tokens_to_ids("[ENC]") in (None, unk):
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return int(tokenizer.convert_tokens_to_ids("[ENC]"))


def set_image_size(model: nn.Module, image_size: int) -> None:
    """Resize the ViT position embedding of ``model`` to an ``image_size`` x ``image_size`` input.

    Arithmetic of LAVIS ``lavis/models/vit.py::interpolate_pos_embed`` (applied there when the
    checkpoint is loaded): the patch part is reshaped to its square grid, resized with
    ``F.interpolate(mode="bicubic", align_corners=False)`` and flattened back; the CLS position
    is kept. No-op when the size already matches.
    """
    emb = model.vision_model.embeddings
    patch = int(emb.patch_size)
    new = image_size // patch
    pos = emb.position_embedding.data  # (1, 1 + n*n, D)
    old = int(round((pos.shape[1] - 1) ** 0.5))
    if old != new:
        dim = pos.shape[-1]
        grid = pos[:, 1:].reshape(-1, old, old, dim).permute(0, 3, 1, 2)
        grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        pos = torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)
        emb.position_embedding = nn.Parameter(pos, requires_grad=False)
    emb.image_size = image_size
    emb.num_patches = new * new
    emb.num_positions = new * new + 1
    model.config.vision_config.image_size = image_size


def set_vision_layer_norm_eps(model: nn.Module, eps: float) -> None:
    """Set the epsilon of every LayerNorm of the vision tower (LAVIS ``lavis/models/vit.py``
    builds its ViT with ``partial(nn.LayerNorm, eps=1e-6)``; transformers' ``BlipVisionConfig``
    defaults to 1e-5, so a hub config without the value would not compute what LAVIS computes)."""
    for module in model.vision_model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = eps
    model.config.vision_config.layer_norm_eps = eps


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=8)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 4096)].float().numpy().tobytes())  # a sample is enough
    return h.hexdigest()


class CrossAttentionCapture:
    """Keeps the cross-attention probabilities of text layers and, after ``backward``, their
    gradients: what the patched LAVIS ``med.py`` saves with ``save_attention=True``.

    ``probs[layer]`` (B, heads, T, 1 + N) are the softmax output (before dropout, which is the
    identity in eval mode). To get their gradient without computing gradients of any weight, a leaf
    that requires grad is made of the hidden states (detached, values unchanged): with one layer at
    the input of that layer's cross-attention, with several at the output of the text embeddings,
    so autograd reaches every captured ``probs`` and stops there. The gradient of ``probs`` depends
    only on what follows it, so it is the same in both cases.

    Use as a context manager around the forward and the backward.
    """

    def __init__(self, model: nn.Module, layers: int | Sequence[int]) -> None:
        blocks = model.text_encoder.encoder.layer
        self.layers = [layers] if isinstance(layers, int) else list(layers)
        for layer in self.layers:
            if not 0 <= layer < len(blocks):
                raise ValueError(f"text layer index {layer} out of range 0..{len(blocks) - 1}")
        self.model = model
        self.modules = {layer: blocks[layer].crossattention.self for layer in self.layers}
        self.probs: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "CrossAttentionCapture":
        def leaf(t: torch.Tensor) -> torch.Tensor:
            return t.detach().requires_grad_(True)

        def pre_hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                args = (leaf(args[0]),) + tuple(args[1:])
            else:
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = leaf(kwargs["hidden_states"])
            return args, kwargs

        def make_hook(layer: int) -> Any:
            def hook(_m: nn.Module, _args: tuple, output: tuple) -> None:
                probs = output[1]
                probs.retain_grad()
                self.probs[layer] = probs
            return hook

        if len(self.layers) == 1:
            self._handles.append(self.modules[self.layers[0]].register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:
            self._handles.append(self.model.text_encoder.embeddings.register_forward_hook(
                lambda _m, _a, out: leaf(out)))
        for layer, module in self.modules.items():
            self._handles.append(module.register_forward_hook(make_hook(layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def grad(self, layer: int | None = None) -> torch.Tensor:
        """Gradient of ``probs[layer]`` (the only layer when None)."""
        layer = self.layers[0] if layer is None else layer
        probs = self.probs.get(layer)
        if probs is None or probs.grad is None:
            raise RuntimeError("no gradient captured: run the forward and backward inside the capture")
        return probs.grad


def itm_forward(loaded: LoadedBLIP, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """ITM head logits (B, 2) of images and captions, as LAVIS ``BlipITM.forward(match_head="itm")``.

    Args:
        pixel_values: (B, 3, S, S) normalised images.
        input_ids: (B, L) caption ids starting with ``[CLS]`` (token 0 is replaced by ``[ENC]``
            here), no padding (a batch of one: padding changes the official numbers).
    """
    ids = input_ids.clone()
    ids[:, 0] = loaded.enc_token_id
    out = loaded.model(input_ids=ids, pixel_values=pixel_values, attention_mask=torch.ones_like(ids),
                       use_itm_head=True)
    return out.itm_score


@contextlib.contextmanager
def inference_with_grad() -> Iterator[None]:
    """Autograd on (GradCAM needs a backward even at inference)."""
    with torch.enable_grad(), torch.inference_mode(False):
        yield
