"""Text classifiers: prompt templates, class embeddings and their on-disk cache.

The CLIP family builds one embedding per query word: the word is filled into each prompt
template, every prompt is encoded and L2-normalised, the prompts are averaged and the mean is
L2-normalised again (SCLIP ``clip_segmentor.py::CLIPForSegmentation.__init__``; the same in
ClearCLIP, NACLIP and ProxyCLIP). Embeddings are cached on disk, keyed by the model name, a
hash of the text tower's weights, the templates and the words, so a second run with the same
classes does not encode text again.

Speed without changing the numbers. CLIP's text transformer is causal (Radford et al., ICML
2021, Sec. 2.4: "masked self-attention"; open_clip ``CLIP.encode_text`` runs
``transformer(x, attn_mask=causal)`` and reads the output at the end-of-text token,
``text_global_pool(..., 'argmax')``). Token t therefore only ever sees tokens 0..t, which gives
two exact shortcuts (exact up to float summation order, ~1e-6):

* **trimming**: tokens after the end-of-text (EOT) position cannot change the EOT output, so a
  batch is encoded up to its longest EOT position instead of the full 77-token context;
* **prefix KV cache**: the prompts of one template share a token prefix (``<sot> a photo of
  a``); its keys and values at every layer are the same for every class, so they are computed
  once per template and each prompt encodes only its own suffix (class tokens, the rest of the
  template, EOT), attending to the cached prefix keys/values and causally to itself. In the
  last layer only the EOT row is computed (the only one that is read).

Towers that are not causal (or pool another position) are encoded at full context with
``encode_text`` unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.clip import LoadedCLIP
from .backbones.vit_dense import mlp
from .fileio import cache_root
from .kernels import linear, linear_module


def _openai_imagenet_templates() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


#: The 80 OpenAI ImageNet prompt templates (CLIP paper, ``notebooks/Prompt_Engineering``),
#: as used by SCLIP/ClearCLIP/NACLIP/ProxyCLIP (``prompts/imagenet_template.py``).
IMAGENET_TEMPLATES: tuple[str, ...] = _openai_imagenet_templates()

#: Suffix tokens per forward chunk (bounds memory: ~150 MB of activations at width 512).
TOKENS_PER_CHUNK = 4096


def cache_dir() -> Path:
    """Folder of the text-embedding cache: ``$OVSS_CACHE/text`` or ``~/.cache/ovss/text``."""
    return cache_root() / "text"


# --------------------------------------------------------------------------- the causal tower
@dataclass
class _CausalTower:
    """The pieces of an open_clip ``CLIP`` text tower that the fast paths run by hand."""

    model: nn.Module
    blocks: Sequence[nn.Module]
    pool_type: str
    eos_id: int | None

    def pool_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N,) position read by ``text_global_pool`` (EOT)."""
        if self.pool_type == "argmax":  # EOT has the largest id in CLIP's BPE vocabulary
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_id).int().argmax(dim=-1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """ln_final + text projection of pooled rows (N, width) -> (N, D)."""
        x = self.model.ln_final(x)
        proj = self.model.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Module) else x @ proj


def _causal_tower(model: nn.Module) -> _CausalTower | None:
    """The model's text tower when it is an open_clip CLIP tower with a causal mask, EOT pooling
    and standard blocks (OpenAI, LAION, DataComp, MetaCLIP ...); None otherwise."""
    from open_clip.transformer import ResidualAttentionBlock

    needed = ("transformer", "token_embedding", "positional_embedding", "ln_final", "attn_mask")
    if not all(getattr(model, n, None) is not None for n in needed):
        return None
    pool = getattr(model, "text_pool_type", None)
    eos = getattr(model, "text_eos_id", None)
    if pool not in ("argmax", "eos") or (pool == "eos" and eos is None):
        return None
    mask = model.attn_mask
    n = model.positional_embedding.shape[0]
    if mask.shape != (n, n):
        return None
    causal = torch.full((n, n), float("-inf")).triu_(1)
    if not torch.equal(mask.detach().float().cpu(), causal):
        return None
    blocks = list(getattr(model.transformer, "resblocks", []))
    if not blocks or getattr(model.transformer, "grad_checkpointing", False):
        return None
    for b in blocks:
        if type(b) is not ResidualAttentionBlock or hasattr(b, "ln_1_kv") \
                or not isinstance(b.attn, nn.MultiheadAttention) or b.attn.in_proj_weight is None:
            return None
    if model.transformer.get_cast_dtype() != torch.float32:
        return None
    return _CausalTower(model, blocks, pool, eos)


def _device(clip: LoadedCLIP) -> torch.device:
    return next(clip.model.parameters()).device


# --------------------------------------------------------------------------- trimmed encoding
@torch.no_grad()
def encode_prompts(clip: LoadedCLIP, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Encode prompts with CLIP's text tower, each batch trimmed after its longest EOT.

    Equal to ``clip.model.encode_text(tokenizer(prompts))`` up to float summation order
    (~1e-6): the tower is causal, so context positions after a prompt's EOT token cannot change
    its EOT output (open_clip ``CLIP.encode_text``). Towers without a causal mask or EOT pooling
    are encoded at full context.

    Args:
        clip: the loaded CLIP model.
        prompts: N prompt strings.
        batch_size: prompts per forward pass.

    Returns:
        float32 (N, D) ``encode_text`` outputs, not normalised, on the model's device.
    """
    model = clip.model
    device = _device(clip)
    tower = _causal_tower(model)
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = clip.tokenizer(list(prompts[i:i + batch_size])).to(device)
        if tower is None:
            out.append(model.encode_text(tokens).float())
            continue
        pos = tower.pool_positions(tokens)
        n = int(pos.max()) + 1
        x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]
        x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
        out.append(tower.project(x[torch.arange(len(x), device=device), pos]).float())
    if not out:
        return torch.zeros(0, _embed_dim(model), device=device)
    return torch.cat(out)


def _embed_dim(model: nn.Module) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return proj.out_features
    return int(proj.shape[-1]) if proj is not None else int(model.transformer.width)


# --------------------------------------------------------------------------- prefix KV cache
def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, width) -> (B, heads, T, width / heads)."""
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(1, 2)


def _finish(block: nn.Module, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Residual + out_proj of the attention output, then the FFN residual (open_clip
    ``ResidualAttentionBlock.forward``). x, attn_out: (..., width) with heads merged."""
    x = x + block.ls_1(linear_module(block.attn.out_proj, attn_out))
    return x + block.ls_2(mlp(block.mlp, block.ln_2(x)))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor,
            prefix_bias: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention of suffix queries over their template's prefix keys and their own suffix keys:
    ``softmax([q kp^T, q k^T] / sqrt(d) + [prefix_bias, bias]) [vp; v]``, without copying the
    prefix keys/values to every prompt (the prefix part is one matmul per template).

    Args:
        q: (G, heads, W, S', d) queries of W prompts per template (S' = S, or 1 for the EOT rows).
        k, v: (G, heads, W, S, d) suffix keys and values.
        kp, vp: (G, heads, P, d) prefix keys and values of each template.
        prefix_bias: (G, 1, 1, 1, P) additive mask of the prefix positions (-inf past a template's prefix).
        bias: additive mask of the suffix keys, broadcastable to (G, heads, W, S', S).

    Returns:
        (G, heads, W, S', d). Plain matmuls: for these short rows (a few query tokens, < 30 keys)
        faster on CPU than ``scaled_dot_product_attention`` with a mask.
    """
    g, h, w, sq, d = q.shape
    p = kp.shape[-2]
    q = q * d ** -0.5
    prefix = (q.reshape(g, h, w * sq, d) @ kp.transpose(-2, -1)).view(g, h, w, sq, p)
    probs = torch.softmax(torch.cat([prefix + prefix_bias, q @ k.transpose(-2, -1) + bias], dim=-1), dim=-1)
    out = probs[..., p:] @ v
    out += (probs[..., :p].reshape(g, h, w * sq, p) @ vp).view(g, h, w, sq, d)
    return out


@torch.no_grad()
def _prefix_kv(tower: _CausalTower, prefix: torch.Tensor) -> list[torch.Tensor]:
    """Keys and values of every layer for G token prefixes (G, P), zero-padded at the end
    (padding never reaches a real position: causal mask).

    Returns:
        per layer (G, P, 2*width): keys then values, heads not split.
    """
    model = tower.model
    p = prefix.shape[1]
    x = model.token_embedding(prefix) + model.positional_embedding[:p]
    kv = []
    for i, blk in enumerate(tower.blocks):
        heads = blk.attn.num_heads
        qkv = linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)
        width = x.shape[-1]
        kv.append(qkv[..., width:])
        if i == len(tower.blocks) - 1:
            break  # the last layer's prefix outputs are never read
        q, k, v = (_heads(z, heads) for z in qkv.chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = _finish(blk, x, a.transpose(1, 2).reshape(x.shape))
    return kv


@torch.no_grad()
def _encode_suffixes(tower: _CausalTower, kv: list[torch.Tensor], plen: torch.Tensor,
                     suffix: torch.Tensor, slen: torch.Tensor) -> torch.Tensor:
    """Encode the prompts of G templates from their cached prefix keys/values.

    Args:
        kv: per layer (G, P, 2*width) prefix keys and values of the G templates (:func:`_prefix_kv`).
        plen: (G,) prefix length of each template (<= P).
        suffix: (G, W, S) suffix token ids, zero-padded; the suffix of a prompt starts at
            absolute position ``plen[g]`` and its last token (index ``slen - 1``) is its EOT.
        slen: (G, W) suffix lengths (>= 1).

    Returns:
        (G, W, D) ``encode_text`` outputs.
    """
    model = tower.model
    device = suffix.device
    g, nw, s = suffix.shape
    b = g * nw
    p = kv[0].shape[1]
    width = model.positional_embedding.shape[-1]
    heads = tower.blocks[0].attn.num_heads
    hd = width // heads
    ar = torch.arange(s, device=device)
    pos = (plen[:, None, None] + ar).clamp_(max=model.positional_embedding.shape[0] - 1)
    valid = (ar < slen[..., None]).reshape(b, s)                         # real suffix tokens
    flat = valid.reshape(-1).nonzero().squeeze(1)                        # packed -> padded row
    x = (model.token_embedding(suffix) + model.positional_embedding[pos]).reshape(b * s, width)[flat]
    # keys a prompt may see: its template's real prefix positions, then its own suffix causally
    prefix_bias = torch.zeros(g, 1, 1, 1, p, device=device).masked_fill_(
        ~(torch.arange(p, device=device) < plen[:, None]).view(g, 1, 1, 1, p), float("-inf"))
    causal = torch.zeros(s, s, device=device).masked_fill_(ar[None, :] > ar[:, None], float("-inf"))
    eot = slen - 1                                                       # (G, W)
    eot_bias = torch.zeros(g, 1, nw, 1, s, device=device).masked_fill_(
        (ar > eot[..., None]).view(g, 1, nw, 1, s), float("-inf"))
    # packed index of each prompt's EOT token
    packed = torch.full((b * s,), -1, dtype=torch.long, device=device)
    packed[flat] = torch.arange(len(flat), device=device)
    eot_rows = packed.view(b, s)[torch.arange(b, device=device), eot.reshape(b)]
    rows = x.new_zeros(b * s, 3 * width)
    last = len(tower.blocks) - 1
    for i, blk in enumerate(tower.blocks):
        qkv = linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)   # packed (T, 3w)
        rows.index_copy_(0, flat, qkv)
        q, k, v = rows.view(g, nw, s, 3, heads, hd).permute(3, 0, 4, 1, 2, 5).contiguous().unbind(0)
        kp, vp = kv[i].view(g, p, 2, heads, hd).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        if i < last:
            a = _attend(q, k, v, kp, vp, prefix_bias, causal)                        # (G, heads, W, S, d)
            x = _finish(blk, x, a.permute(0, 2, 3, 1, 4).reshape(b * s, width)[flat])
        else:  # only the EOT rows are read after the last layer
            qe = q.gather(3, eot.view(g, 1, nw, 1, 1).expand(g, heads, nw, 1, hd))
            a = _attend(qe, k, v, kp, vp, prefix_bias, eot_bias)                     # (G, heads, W, 1, d)
            x = _finish(blk, x[eot_rows], a.permute(0, 2, 3, 1, 4).reshape(b, width))
    return tower.project(x).view(g, nw, -1)


def _chunks(slen: torch.Tensor, tokens_per_chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Split the (T, W) prompt grid into blocks (template indices, word indices) of about
    ``tokens_per_chunk`` suffix tokens, grouping words, then templates, of similar suffix
    length so that little padding is computed."""
    nt, nw = slen.shape
    words = torch.argsort(slen.amax(dim=0), stable=True)
    wmax = slen.amax(dim=0)[words].tolist()
    groups, first = [], 0
    for i in range(1, nw + 1):  # a new word group where the longest suffix grows by > 1 token
        if i == nw or wmax[i] > wmax[first] + 1:
            groups.append(words[first:i])
            first = i
    for widx in groups:
        sub = slen[:, widx]
        order = torch.argsort(sub.amax(dim=1), stable=True)
        cost = sub.sum(dim=1)[order].tolist()
        start = 0
        while start < nt:
            stop, n = start, 0
            while stop < nt and (stop == start or n + cost[stop] <= tokens_per_chunk):
                n += cost[stop]
                stop += 1
            yield order[start:stop], widx
            start = stop


@torch.no_grad()
def encode_template_prompts(clip: LoadedCLIP, words: Sequence[str], templates: Sequence[str],
                            tokens_per_chunk: int = TOKENS_PER_CHUNK) -> torch.Tensor:
    """``encode_text`` of every prompt ``template.format(word)``, with a per-template prefix KV cache.

    The prompts of one template share their leading tokens; under the causal mask those
    tokens' keys and values are the same for every word, so they are computed once per
    template (:func:`_prefix_kv`) and each prompt encodes only its suffix up to its EOT
    (:func:`_encode_suffixes`). Exact up to float summation order (~1e-6). Falls back to
    :func:`encode_prompts` for towers without a causal mask.

    Args:
        words: W words.
        templates: T templates with one ``{}`` each.
        tokens_per_chunk: suffix tokens per forward chunk (memory bound; whole templates
            per chunk, at least one).

    Returns:
        float32 (W, T, D) ``encode_text`` outputs (not normalised) on the model's device.
    """
    model = clip.model
    device = _device(clip)
    tower = _causal_tower(model)
    nw, nt = len(words), len(templates)
    if tower is None or nw == 0 or nt == 0:
        prompts = [t.format(w) for w in words for t in templates]
        return encode_prompts(clip, prompts).reshape(nw, nt, -1)
    tokens = clip.tokenizer([t.format(w) for t in templates for w in words]).to(device)  # template-major
    tokens = tokens.view(nt, nw, -1)
    ctx = tokens.shape[-1]
    eot = tower.pool_positions(tokens.reshape(nt * nw, -1)).view(nt, nw)
    # per template: the longest token prefix shared by all its prompts, ending before any EOT
    same = (tokens == tokens[:, :1]).all(dim=1)                       # (T, L)
    lcp = torch.where(same.all(dim=1), ctx, (~same).int().argmax(dim=1))
    plen = torch.minimum(lcp, eot.min(dim=1).values)                  # (T,)
    p = int(plen.max())
    prefix = tokens[:, 0, :p] * (torch.arange(p, device=device)[None, :] < plen[:, None])
    width = model.positional_embedding.shape[-1]
    kv = _prefix_kv(tower, prefix) if p > 0 else [torch.zeros(nt, 0, 2 * width, device=device)] * len(tower.blocks)
    slen = eot + 1 - plen[:, None]                                    # (T, W) >= 1
    out = torch.empty(nt, nw, _embed_dim(model), device=device)
    for tidx, widx in _chunks(slen.cpu(), tokens_per_chunk):
        tidx, widx = tidx.to(device), widx.to(device)
        sl = slen[tidx][:, widx]
        s, pc = int(sl.max()), int(plen[tidx].max())
        ar = torch.arange(s, device=device)
        cols = (plen[tidx, None, None] + ar).clamp(max=ctx - 1).expand(-1, len(widx), -1)
        suffix = torch.gather(tokens[tidx][:, widx], 2, cols) * (ar < sl[..., None])
        enc = _encode_suffixes(tower, [t[tidx, :pc] for t in kv], plen[tidx], suffix, sl).float()
        out[tidx[:, None], widx[None, :]] = enc
    return out.transpose(0, 1)


# --------------------------------------------------------------------------- cache
#: format tag written with every cache entry (entries of other formats are rebuilt)
CACHE_FORMAT = "ovss-text-embeddings/2"


def _key(clip: LoadedCLIP, words: Sequence[str], templates: Sequence[str], **extra: Any) -> str:
    payload = json.dumps({"model": clip.name, "weights": clip.fingerprint,
                          "templates": list(templates), "words": list(words), **extra})
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _checksum(emb: torch.Tensor) -> str:
    """SHA-256 of the raw bytes of a contiguous CPU tensor."""
    return hashlib.sha256(emb.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def read_cache_entry(path: Path, rows: int, width: int) -> torch.Tensor | None:
    """A cache entry's (rows, width) float32 embeddings, or None when there is none or it is unsound.

    An entry is used only when all of these hold: it is a safetensors file of this cache format,
    its tensor is float32 of shape (rows, width) (the caller's query count and the model's embedding
    width), finite, and the SHA-256 of its bytes equals the checksum written with it. Anything else
    (a truncated or foreign file, another dtype or width, values changed after writing) is reported
    with a warning and None is returned, so the caller rebuilds and rewrites the entry.
    """
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            emb = f.get_tensor("embeddings")
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        if emb.dtype != torch.float32:
            raise ValueError(f"dtype {emb.dtype}, expected float32")
        if tuple(emb.shape) != (rows, width):
            raise ValueError(f"shape {tuple(emb.shape)}, expected {(rows, width)}")
        if meta.get("sha256") != _checksum(emb):
            raise ValueError("content does not match its checksum")
        if not bool(torch.isfinite(emb).all()):
            raise ValueError("non-finite values")
        return emb.clone()  # not a view of the file: the entry may be replaced while we run
    except Exception as exc:
        warnings.warn(f"text-embedding cache entry {path} is corrupt ({exc}); rebuilding it", stacklevel=3)
        return None


def write_cache_entry(path: Path, emb: torch.Tensor) -> None:
    """Write (rows, width) float32 embeddings with their format, dtype, shape and SHA-256 checksum,
    atomically (a temporary file, then ``os.replace``: readers see the old entry or the new one).
    A cache folder that cannot be written is reported with a warning (the result is still used)."""
    from safetensors.torch import save_file

    emb = emb.detach().to("cpu", torch.float32).contiguous()
    meta = {"format": CACHE_FORMAT, "dtype": "float32", "rows": str(emb.shape[0]), "width": str(emb.shape[1]),
            "sha256": _checksum(emb)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embeddings": emb}, tmp, metadata=meta)
            os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        warnings.warn(f"cannot write the text-embedding cache in {path.parent}: {exc}", stacklevel=3)


def cache_path(clip: LoadedCLIP, words: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES) -> Path:
    """File of the cache entry for these words and templates (it may not exist)."""
    return cache_dir() / f"{_key(clip, words, templates)}.safetensors"


def class_embeddings(clip: LoadedCLIP, words: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES,
                     use_cache: bool = True) -> torch.Tensor:
    """Embedding of each query word, averaged over prompt templates.

    Every prompt ``template.format(word)`` is encoded (:func:`encode_template_prompts`: all
    prompts batched, trimmed at EOT, prefix KV cache per template) and L2-normalised; the mean
    over templates is L2-normalised again (SCLIP ``clip_segmentor.py``). The result is cached
    on disk under :func:`cache_dir`, keyed by model name, text-weight fingerprint, templates
    and words; an unsound entry (unreadable, another dtype or width, content that does not match
    the checksum written with it: :func:`read_cache_entry`) is reported with a warning and rebuilt.

    Args:
        clip: the loaded CLIP model.
        words: (Q,) query words.
        templates: prompt templates with one ``{}`` each.
        use_cache: read and write the on-disk cache (see :func:`cache_dir`).

    Returns:
        float32 (Q, D) L2-normalised embeddings, on the model's device.
    """
    def compute() -> torch.Tensor:
        feats = F.normalize(encode_template_prompts(clip, words, templates), dim=-1)   # (Q, T, D)
        return F.normalize(feats.mean(dim=1), dim=-1)

    return _cached(cache_path(clip, words, templates), len(words), _embed_dim(clip.model), compute,
                   use_cache).to(_device(clip))


def group_embeddings(clip: LoadedCLIP, groups: Sequence[Sequence[str]], templates: Sequence[str],
                     use_cache: bool = True) -> torch.Tensor:
    """Embedding of each group of synonyms: every prompt ``template.format(word)`` of the group
    (all templates x all its words) L2-normalised, averaged together, L2-normalised again
    (ZegFormer ``zeroshot_classifier``: a class name "a, b" is the group ["a", "b"]).

    Args:
        groups: (C,) lists of words, at least one each.
        templates: prompt templates with one ``{}`` each.
        use_cache: read and write the on-disk cache (see :func:`cache_dir`).

    Returns:
        float32 (C, D) L2-normalised embeddings, on the model's device.
    """
    groups = [list(g) for g in groups]
    words = [w for g in groups for w in g]

    def compute() -> torch.Tensor:
        feats = F.normalize(encode_template_prompts(clip, words, templates), dim=-1)   # (W, T, D)
        means = [part.reshape(-1, part.shape[-1]).mean(dim=0) for part in torch.split(feats, [len(g) for g in groups])]
        return F.normalize(torch.stack(means), dim=-1)

    path = cache_dir() / f"{_key(clip, words, templates, groups=groups)}.safetensors"
    return _cached(path, len(groups), _embed_dim(clip.model), compute, use_cache).to(_device(clip))


def _cached(path: Path, n: int, width: int, compute: Callable[[], torch.Tensor], use_cache: bool) -> torch.Tensor:
    """(n, width) embeddings from the cache entry ``path`` when it is there and sound
    (:func:`read_cache_entry`), else ``compute()`` (written to ``path`` atomically)."""
    if use_cache:
        hit = read_cache_entry(path, n, width)
        if hit is not None:
            return hit
    emb = compute()
    if use_cache:
        write_cache_entry(path, emb)
    return emb
