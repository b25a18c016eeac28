"""The one checkpoint reader of ovss: reading a file never executes code from it.

Every file ovss loads weights from goes through :func:`read_checkpoint` (or the helpers built on it,
:func:`load_checkpoint` / :func:`load_state_dict`): CLIP ``.pt/.pth/.bin``, detectron2 ``.pth`` and
``.pkl`` (FC-CLIP, ZSSeg, ZegFormer, CAT-Seg), DINO, FOUND, BLIP ``pytorch_model.bin`` and trainer
resume. What each format may contain:

* ``.safetensors``: tensors and string metadata only (the format cannot hold code).
* torch zip / legacy pickles (``torch.save``): ``torch.load(weights_only=True)`` under
  ``torch.serialization.safe_globals`` with :data:`ALLOWED_GLOBALS`: torch's own default allow-list
  (tensors, storages, ``collections.OrderedDict``, ``_codecs.encode``, python primitives) plus numpy
  arrays, dtypes and scalars, which detectron2 checkpoints hold beside the model (its checkpointer
  pickles numpy arrays as they come from ``.pkl`` conversions; ``np.int64`` iteration counters).
* TorchScript archives (OpenAI's released ``ViT-B-16.pt``): not ``torch.jit.load``, which compiles the
  archive's code and runs its ``__setstate__`` methods; instead the archive's ``data.pkl`` is read with
  a restricted unpickler that only rebuilds tensors and turns every ``__torch__.*`` module object into
  a plain record of its attributes.
* plain pickles (detectron2 model-zoo ``.pkl``: ``{"model": {name: numpy array}, "__author__": ...}``):
  a restricted :class:`pickle.Unpickler` that resolves only numpy's ``_reconstruct`` / ``ndarray`` /
  ``dtype`` / ``scalar``, ``collections.OrderedDict`` and ``_codecs.encode`` (bytes in protocol-2
  pickles).

Anything else (``os.system``, ``builtins.eval``, a class of some package, ...) is refused before it is
imported, with a one-line :class:`ovss.errors.ModelLoadError` naming the global.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import tempfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .download import file_sha256
from .errors import ModelLoadError

#: file suffixes that name a checkpoint (anything else is looked up as a name: a zoo entry, a hub tag).
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pkl")

# torch.save's legacy (non-zip) format starts with its MAGIC_NUMBER pickled (torch/serialization.py)
_TORCH_LEGACY_HEAD = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


def _numpy_globals() -> list[tuple[Any, str]]:
    """numpy's unpickling helpers under every name a released checkpoint may use for them: numpy >= 2
    writes ``numpy._core.multiarray``, numpy 1.x (every detectron2-era file) ``numpy.core.multiarray``."""
    try:
        from numpy._core import multiarray as ma
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    out: list[tuple[Any, str]] = []
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(ma._reconstruct, f"{mod}._reconstruct"), (ma.scalar, f"{mod}.scalar")]
    out += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    # pickled arrays BUILD their dtype, whose class (numpy.dtypes.Float32DType, ...) must be allowed
    for code in "?bBhHiIlLqQefdgFDG":
        cls = type(np.dtype(code))
        out.append((cls, f"{cls.__module__}.{cls.__qualname__}"))
    return out


#: what torch.load(weights_only=True) may import beyond torch's own default list (tensors, storages,
#: OrderedDict, _codecs.encode, primitives): numpy arrays, dtypes and scalars. Nothing that runs code.
ALLOWED_GLOBALS: list[tuple[Any, str]] = _numpy_globals()

#: the restricted unpickler's table for plain pickles: "module.name" -> object.
_PLAIN_PICKLE_GLOBALS: dict[str, Any] = {name: obj for obj, name in ALLOWED_GLOBALS}
_PLAIN_PICKLE_GLOBALS["collections.OrderedDict"] = OrderedDict
_PLAIN_PICKLE_GLOBALS["_codecs.encode"] = __import__("codecs").encode


def refusal(path: str | Path, name: str) -> ModelLoadError:
    """The one-line error for a file that asks to import ``name``."""
    return ModelLoadError(
        f"refusing to load {path}: it asks to import {name!r}, which is code, not weights (ovss reads only "
        "tensors, numpy arrays and plain containers from checkpoint files; re-save the weights as a state "
        "dict or safetensors with the software that wrote it)")


def _unreadable(path: str | Path, exc: BaseException) -> ModelLoadError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ModelLoadError(f"cannot read checkpoint {path}: {exc.__class__.__name__}"
                          + (f": {first}" if first else ""))


# ----------------------------------------------------------------------------------------- readers

class _PlainUnpickler(pickle.Unpickler):
    """Unpickler for plain (non-torch) pickles: only numpy's array / dtype / scalar reconstruction."""

    def __init__(self, fh: Any, path: str | Path) -> None:
        super().__init__(fh, encoding="latin1")  # detectron2 model-zoo files include python-2 pickles
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in _PLAIN_PICKLE_GLOBALS:
            return _PLAIN_PICKLE_GLOBALS[key]
        raise refusal(self._path, key)

    def persistent_load(self, pid: Any) -> Any:
        raise ModelLoadError(f"cannot read checkpoint {self._path}: a plain pickle with persistent ids "
                             "(not a detectron2 .pkl nor a torch.save file)")


class ScriptObject:
    """A TorchScript module or object read from an archive: its pickled attribute state, nothing else."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    requires_grad: bool = False, hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    # the arguments of torch._utils._rebuild_tensor_v2; the tensor is a view of the (1-d) storage
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


class _ScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's ``data.pkl``: tensors from the archive's storages, module
    objects as :class:`ScriptObject` records; no TorchScript is compiled or run."""

    _IDENTITY = {"restore_type_tag": lambda value, _type: value, "build_intlist": list, "build_doublelist": list,
                 "build_boollist": list, "build_tensorlist": list}

    def __init__(self, fh: Any, archive: zipfile.ZipFile, prefix: str, path: str | Path) -> None:
        super().__init__(fh)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch.jit._pickle" and name in self._IDENTITY:
            return self._IDENTITY[name]
        if module == "__torch__" or module.startswith("__torch__."):
            # a scripted class: a record of its state (a name, not code; nothing is imported)
            return self._classes.setdefault(f"{module}.{name}", type(name, (ScriptObject,), {}))
        raise refusal(self._path, f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ModelLoadError(f"cannot read TorchScript archive {self._path}: unknown storage record {pid!r:.60}")
        _, kind, key, _location, numel = pid
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            t = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            self._storages[key] = t[: int(numel)]
        return self._storages[key]


def _script_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Flatten a TorchScript module record into ``{"a.b.weight": tensor}`` (its parameters and buffers)."""
    if isinstance(obj, ScriptObject):
        _script_tensors(getattr(obj, "state", None), prefix, out)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str):
                _script_tensors(v, f"{prefix}{k}.", out)
    elif isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj


def _read_torchscript(path: Path, archive: zipfile.ZipFile, prefix: str) -> dict[str, torch.Tensor]:
    with archive.open(f"{prefix}data.pkl") as fh:
        root = _ScriptUnpickler(io.BytesIO(fh.read()), archive, prefix, path).load()
    out: dict[str, torch.Tensor] = OrderedDict()
    _script_tensors(root, "", out)
    return out


def _torch_load(path: Path, map_location: Any) -> Any:
    with torch.serialization.safe_globals(ALLOWED_GLOBALS):
        try:
            return torch.load(str(path), map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            name = _offending_global(path, str(exc))
            if name:
                raise refusal(path, name) from None
            raise _unreadable(path, exc) from None


def _offending_global(path: Path, message: str) -> str | None:
    """The global a weights-only load refused: from the checkpoint itself (zip format) or torch's message."""
    try:
        allowed = {name for _, name in ALLOWED_GLOBALS}
        bad = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if g not in allowed]
        if bad:
            return bad[0]
    except Exception:  # legacy format or an old torch: fall back to the message
        pass
    m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"Unsupported global: ([\w.]+)", message)
    if m:
        return m.group(1)
    m = re.search(r"but got <class '([\w.]+)'>", message)
    return m.group(1) if m else None


def _kind(path: Path) -> str:
    """'safetensors' | 'torchscript' | 'torch' | 'pickle', read from the content (suffixes lie)."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < (1 << 28) and head[8:9] == b"{" and path.stat().st_size >= 8 + n:
            return "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            script = any(n.endswith("constants.pkl") and n.count("/") == 1 for n in archive.namelist())
        return "torchscript" if script else "torch"
    if head.startswith(_TORCH_LEGACY_HEAD):
        return "torch"
    return "pickle"


def read_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> Any:
    """Read a checkpoint file into python objects (tensors, numpy arrays, dicts, lists, numbers,
    strings) without executing code from it.

    Args:
        path: ``.safetensors``, a ``torch.save`` file (zip or legacy), a TorchScript archive, or a
            plain pickle of numpy arrays (detectron2 ``.pkl``); the format is read from the content.
        map_location: where torch.load puts tensors (``"cpu"``, a device).

    Returns:
        What the file holds: safetensors -> ``{name: tensor}``; TorchScript -> its parameters and
        buffers as ``{name: tensor}``; pickles -> the pickled object.

    Raises:
        ModelLoadError: missing or unreadable file, or a file that asks to import code (the message
            names the global, e.g. ``'posix.system'``).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file not found: {path}")
    try:
        kind = _kind(path)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
            return load_file(str(path), device=device)
        if kind == "torchscript":
            with zipfile.ZipFile(path) as archive:
                data = next(n for n in archive.namelist() if n.endswith("constants.pkl") and n.count("/") == 1)
                return _read_torchscript(path, archive, data[: -len("constants.pkl")])
        if kind == "torch":
            return _torch_load(path, map_location)
        with path.open("rb") as fh:
            return _PlainUnpickler(fh, path).load()
    except ModelLoadError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from None


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file ({} for other formats or none).

    Raises:
        ModelLoadError: unreadable file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise _unreadable(path, exc) from None


# ---------------------------------------------------------------------------------- state dicts

@dataclass
class Checkpoint:
    """A checkpoint split into its state dict and the rest.

    Attributes:
        tensors: flat state dict ``{name: tensor}`` (numpy arrays converted; ``module.`` prefixes
            dropped), from under ``state_dict`` / ``model`` / ``module`` when the file nests it there.
        extra: the other top-level entries (``iteration``, ``__author__``, ``ovss_config``, ...); for a
            safetensors file written by :func:`convert_to_safetensors`, the entries it kept.
        versions: detectron2 ``_metadata`` module versions ({} when the file has none).
        format: "safetensors", "torch", "torchscript" or "pickle" (read from the content).
    """

    tensors: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    format: str = "torch"


_NESTING_KEYS = ("state_dict", "model", "module")


def as_tensor(value: Any) -> torch.Tensor | None:
    """A tensor for a tensor or numpy array (detectron2 ``.pkl`` weights), else None."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> Checkpoint:
    """Read a checkpoint into a :class:`Checkpoint` (see :func:`read_checkpoint` for the formats).

    Raises:
        ModelLoadError: missing, unreadable or unsafe file, or no tensors inside.
    """
    path = Path(path)
    obj = read_checkpoint(path, map_location=map_location)
    kind = _kind(path)
    extra: dict[str, Any] = {}
    versions: dict[str, int] = {}
    sd: Any = obj
    if kind == "safetensors":
        extra = _safetensors_extra(read_safetensors_metadata(path))
        versions = {k: int(v) for k, v in extra.pop("_versions", {}).items()}
    elif kind != "torchscript":
        while isinstance(sd, dict):
            inner = next((k for k in _NESTING_KEYS if isinstance(sd.get(k), dict)), None)
            if inner is None:
                break
            if sd is obj:
                extra = {k: v for k, v in obj.items() if k != inner}
            sd = sd[inner]
        if not isinstance(sd, dict):
            raise ModelLoadError(f"checkpoint {path} does not hold a state dict")
        meta = getattr(sd, "_metadata", None) or {}
        versions = {k: int(v["version"]) for k, v in meta.items() if isinstance(v, dict) and "version" in v}
    tensors: dict[str, torch.Tensor] = OrderedDict()
    for k, v in sd.items():
        t = as_tensor(v)
        if t is not None and isinstance(k, str):
            tensors[k[len("module."):] if k.startswith("module.") else k] = t
    if not tensors:
        raise ModelLoadError(f"checkpoint {path} holds no tensors")
    return Checkpoint(tensors, extra, versions, kind)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict of CPU tensors (see :func:`load_checkpoint`).

    Raises:
        ModelLoadError: the file is missing, unreadable, asks to import code, or holds no tensors.
    """
    return load_checkpoint(path).tensors


def state_dict_mismatch(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> tuple[
        list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """How ``sd`` fails to fit a module whose ``state_dict()`` is ``own``: the keys it lacks, the keys
    the module lacks, and ``(key, shape in sd, shape in the module)`` for tensors of another shape
    (each list in ``own``'s / ``sd``'s order; all empty when it fits)."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    return missing, unexpected, wrong


def load_into(module: nn.Module, sd: dict[str, torch.Tensor], what: str, drop: tuple[str, ...] = (),
              *, assign: bool = False) -> None:
    """Load ``sd`` strictly into ``module``, raising one readable error on any mismatch.

    With ``assign`` the module takes ``sd``'s tensors themselves instead of copying them into its own
    (``nn.Module.load_state_dict(assign=True)``): no copy, and the module's parameters may have been
    left uninitialised (``ovss.backbones.clip.no_init``).

    Raises:
        ModelLoadError: keys are missing or unexpected, or a tensor has the wrong shape.
    """
    sd = {k: v for k, v in sd.items() if k not in drop}
    missing, unexpected, reshaped = state_dict_mismatch(module.state_dict(), sd)
    wrong = [f"{k} {got} vs {want}" for k, got, want in reshaped]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {wrong[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise ModelLoadError(f"{what}: the checkpoint does not fit this architecture: "
                             + "; ".join(parts) + ". Check that the model name or config "
                             "matches the checkpoint")
    module.load_state_dict(sd, strict=True, assign=assign)


# ------------------------------------------------------------------------------------ conversion

def _json_safe(value: Any) -> Any:
    """``value`` as JSON-ready data, or raise TypeError (numpy scalars become numbers)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


def _safetensors_extra(meta: dict[str, str]) -> dict[str, Any]:
    try:
        return dict(json.loads(meta["ovss_extra"])) if "ovss_extra" in meta else {}
    except (ValueError, TypeError):
        return {}


def convert_to_safetensors(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write the state dict of a released checkpoint as safetensors, atomically.

    The tensors are the checkpoint's state dict (:func:`load_checkpoint`: detectron2's ``model``,
    DINO's flat dict, a TorchScript archive's parameters; FOUND's ``{"decoder": {...}}`` becomes
    ``decoder.weight`` / ``decoder.bias``), made contiguous. The metadata keeps what a loader needs:
    ``ovss_extra`` (JSON of the top-level entries that are plain data, e.g. ``iteration``,
    ``ovss_config``, ``__author__``; optimizer states are dropped), ``_versions`` inside it
    (detectron2 module versions), ``ovss_source`` (file name) and ``ovss_source_sha256``.

    Returns:
        The metadata written (strings), plus "tensors": the number of tensors.

    Raises:
        ModelLoadError: unreadable / unsafe source, nothing to convert, or ``dst`` not ``.safetensors``.
    """
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if dst.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"the output of a conversion must end in .safetensors, not {dst.name}")
    raw = read_checkpoint(src)
    if isinstance(raw, dict) and not any(k in raw for k in _NESTING_KEYS) and raw \
            and all(isinstance(v, dict) for v in raw.values()):
        # {"decoder": {"weight": ..., "bias": ...}} (FOUND): flatten one level
        ck = Checkpoint({f"{k}.{n}": t for k, d in raw.items() for n, v in d.items()
                         if (t := as_tensor(v)) is not None})
        if not ck.tensors:
            raise ModelLoadError(f"checkpoint {src} holds no tensors")
    else:
        ck = load_checkpoint(src)
    extra: dict[str, Any] = {}
    for k, v in ck.extra.items():
        if not isinstance(k, str) or k in ("optimizer", "scheduler", "scaler", "trainer"):
            continue
        try:
            extra[k] = _json_safe(v)
        except TypeError:
            continue
    if ck.versions:
        extra["_versions"] = ck.versions
    meta = {"format": "pt", "ovss_source": src.name, "ovss_source_sha256": file_sha256(src),
            "ovss_extra": json.dumps(extra, sort_keys=True)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in ck.tensors.items()}
    # safetensors refuses tensors that share memory (tied weights): store copies
    seen: set[int] = set()
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen:
            tensors[k] = v.clone()
        elif ptr != -1:
            seen.add(ptr)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {**meta, "tensors": len(tensors)}


__all__ = ["ALLOWED_GLOBALS", "CHECKPOINT_SUFFIXES", "Checkpoint", "ScriptObject", "as_tensor",
           "convert_to_safetensors", "file_sha256", "load_checkpoint", "load_into", "load_state_dict",
           "read_checkpoint", "read_safetensors_metadata", "refusal"]
