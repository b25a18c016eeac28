"""The text-embedding cache is never stale and never serves a damaged entry.

* The weights fingerprint that keys the cache is remembered per weights file (no hashing on a warm
  start) and recomputed whenever the file changes, even in place with its size and modification
  time put back: the cache is then rebuilt, never served stale.
* Every cache entry carries its format, dtype, width and a checksum of its content: an entry with
  another dtype or width, or the right shape with other values, is reported and rebuilt.
* CLIP built without random initialisation and with the checkpoint's tensors assigned holds exactly
  the file's values; editing it in memory does not write through to the file.

All on the tiny random CLIP of ``../shared/parity``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import ovss.backbones.clip as clip_module
from ovss.backbones.clip import load_clip, no_init
from ovss.text import CACHE_FORMAT, cache_path, class_embeddings

WORDS = ["cat", "road", "potted plant"]
TEMPLATES = ["a photo of a {}.", "itap of the {}.", "art of the {}"]


@pytest.fixture()
def weights(tiny_clip_files, tmp_path) -> tuple[str, Path]:
    """A private copy of the tiny CLIP's weights (config JSON, safetensors path)."""
    config, st = tiny_clip_files
    dst = tmp_path / "clip.safetensors"
    shutil.copyfile(st, dst)
    return config, dst


def _offset_of(path: Path, name: str) -> int:
    """Byte offset in the file of the first value of tensor ``name`` (safetensors layout: 8-byte
    header length, JSON header, data)."""
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return 8 + n + header[name]["data_offsets"][0]


def _no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(model: nn.Module) -> str:
        raise AssertionError("the weights were hashed although the file did not change")

    monkeypatch.setattr(clip_module, "text_fingerprint", fail)


def test_fingerprint_is_remembered_per_file(weights, monkeypatch):
    config, path = weights
    first = load_clip(config, str(path))
    assert first.fingerprint == clip_module.text_fingerprint(first.model)
    _no_hashing(monkeypatch)
    again = load_clip(config, str(path))  # the same file: the stored fingerprint, no hashing
    assert again.fingerprint == first.fingerprint


def test_changing_the_weights_file_invalidates_the_text_cache(weights, monkeypatch):
    config, path = weights
    clip = load_clip(config, str(path))
    old = class_embeddings(clip, WORDS, TEMPLATES)
    assert cache_path(clip, WORDS, TEMPLATES).is_file()

    # rewrite one text-tower value in place: same size, same inode, modification time put back
    st = os.stat(path)
    at = _offset_of(path, "ln_final.bias")
    with open(path, "r+b") as f:
        f.seek(at)
        value = torch.frombuffer(bytearray(f.read(4)), dtype=torch.float32)
        f.seek(at)
        f.write((value + 1.0).numpy().tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns

    changed = load_clip(config, str(path))
    assert changed.fingerprint != clip.fingerprint
    assert changed.fingerprint == clip_module.text_fingerprint(changed.model)
    assert cache_path(changed, WORDS, TEMPLATES) != cache_path(clip, WORDS, TEMPLATES)
    new = class_embeddings(changed, WORDS, TEMPLATES)
    assert torch.equal(new, class_embeddings(changed, WORDS, TEMPLATES, use_cache=False))
    assert not torch.equal(new, old)

    # replaced by another file under the same name (a new download, a copy over it)
    other = path.with_name("other.safetensors")
    sd = load_file(str(path))
    sd["ln_final.weight"] = sd["ln_final.weight"] * 2
    save_file(sd, str(other))
    os.replace(other, path)
    replaced = load_clip(config, str(path))
    assert replaced.fingerprint not in (clip.fingerprint, changed.fingerprint)

    # and back to a file that did not change since: remembered again, no hashing
    _no_hashing(monkeypatch)
    assert load_clip(config, str(path)).fingerprint == replaced.fingerprint


def test_image_tower_changes_keep_the_text_cache(weights):
    config, path = weights
    clip = load_clip(config, str(path))
    sd = load_file(str(path))
    sd["visual.proj"] = sd["visual.proj"] + 1.0
    save_file(sd, str(path))
    assert load_clip(config, str(path)).fingerprint == clip.fingerprint


def _entry(clip, words=WORDS):
    path = cache_path(clip, words, TEMPLATES)
    with safe_open(str(path), framework="pt") as f:
        return path, f.get_tensor("embeddings"), f.metadata()


@pytest.mark.parametrize("damage", ["float64", "float16", "wider", "narrower", "values", "one value",
                                    "no checksum", "old format", "nan"])
def test_damaged_cache_entry_is_rebuilt_with_a_warning(tiny_clip, damage):
    words = WORDS + [damage]  # one entry per case
    good = class_embeddings(tiny_clip, words, TEMPLATES)
    path, emb, meta = _entry(tiny_clip, words)
    assert meta["format"] == CACHE_FORMAT and meta["dtype"] == "float32"
    assert meta["width"] == str(good.shape[1]) and meta["rows"] == str(len(words))
    if damage in ("float64", "float16"):
        emb = emb.to(getattr(torch, damage))
    elif damage == "wider":
        emb = torch.cat([emb, emb[:, :1]], dim=1)
    elif damage == "narrower":
        emb = emb[:, :-1].contiguous()
    elif damage == "values":  # the right shape and dtype, other values: the rows shuffled
        emb = emb.flip(0).contiguous()
    elif damage == "one value":
        emb = emb.clone()
        emb[1, 2] += 1e-6
    elif damage == "no checksum":
        meta = {k: v for k, v in meta.items() if k != "sha256"}
    elif damage == "old format":
        meta = {}
    elif damage == "nan":
        emb = emb.clone()
        emb[0, 0] = float("nan")
        meta = {**meta, "sha256": hashlib.sha256(emb.reshape(-1).view(torch.uint8).numpy()).hexdigest()}
    save_file({"embeddings": emb}, str(path), metadata=meta or None)
    with pytest.warns(UserWarning, match="corrupt"):
        again = class_embeddings(tiny_clip, words, TEMPLATES)
    assert torch.equal(again, good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(class_embeddings(tiny_clip, words, TEMPLATES), good)  # the rebuilt entry reads


def test_assigned_weights_equal_the_file_and_stay_private(weights):
    config, path = weights
    clip = load_clip(config, str(path))
    sd = load_file(str(path))
    own = clip.model.state_dict()
    assert set(sd) <= set(own)
    assert all(torch.equal(own[k], v.float()) for k, v in sd.items())
    before = path.read_bytes()
    with torch.no_grad():
        clip.model.token_embedding.weight.add_(1.0)  # copy-on-write: the file is not written
    assert path.read_bytes() == before
    n = clip.model.attn_mask.shape[0]
    assert torch.equal(clip.model.attn_mask, torch.full((n, n), float("-inf")).triu_(1))  # buffers as usual


def test_no_init_skips_initialisers_in_its_thread_only():
    seen: dict[str, torch.Tensor] = {}

    def other() -> None:
        seen["other"] = torch.nn.init.ones_(torch.zeros(4))

    with no_init():
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        seen["here"] = torch.nn.init.ones_(torch.zeros(4))
        seen["linear"] = nn.Linear(3, 3).weight.detach().clone()
    assert torch.equal(seen["here"], torch.zeros(4))      # skipped in this thread
    assert torch.equal(seen["other"], torch.ones(4))      # other threads initialise as usual
    assert torch.equal(torch.nn.init.ones_(torch.zeros(4)), torch.ones(4))  # and so does this one after
    torch.manual_seed(0)
    a = nn.Linear(8, 8).weight
    torch.manual_seed(0)
    assert torch.equal(nn.Linear(8, 8).weight, a)
