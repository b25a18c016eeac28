"""Reading detectron2-style configs without detectron2: YAML with ``_BASE_`` chains, or JSON.

The result is a plain nested dict; :func:`cfg_get` reads a dotted key with a default, so an
importer can fall back to the paper's released configuration for anything the file omits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def nest_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested dicts: ``{"A.B": 1}`` -> ``{"A": {"B": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a detectron2 YAML (resolving ``_BASE_`` relative to each file) or a JSON file.

    A JSON file may be nested or hold dotted keys (``{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 171}``).

    Raises:
        InputError: the file or one of its bases is missing, unreadable, not UTF-8 text, a base
            chain that comes back to a file (``_BASE_`` naming itself), or a negative size.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    if path.resolve() in _chain:
        raise InputError(f"config {path}: its _BASE_ chain comes back to {path.name} "
                         f"({' -> '.join(p.name for p in (*_chain, path.resolve()))}): fix the _BASE_ entries")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot parse config {path}: {exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"config {path} is not UTF-8 text (a binary file?): give the YAML or JSON config") from None
    if not isinstance(data, dict):
        raise InputError(f"config {path} is not a mapping")
    if any("." in k for k in data):
        data = _merge(nest_keys({k: v for k, v in data.items() if "." in k}),
                      {k: v for k, v in data.items() if "." not in k})
    check_sizes(path, data)
    base = data.pop("_BASE_", None)
    if base:
        data = _merge(load_config(path.parent / base, (*_chain, path.resolve())), data)
    return data


#: keys that hold an architecture size (a negative one builds no network)
SIZE_KEYS = ("DIM", "CHANNELS", "LAYERS", "NHEADS", "NUM_HEADS", "QUERIES", "NUM_CLASSES", "WIDTH_PER_GROUP",
             "DEPTH", "NUM_GROUPS")


def check_sizes(path: Path, data: Any, prefix: str = "") -> None:
    """Refuse a negative architecture size (a key ending in one of :data:`SIZE_KEYS`) in a config.

    Raises:
        InputError: naming the dotted key and its value.
    """
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            check_sizes(path, value, name)
        elif (isinstance(value, int) and not isinstance(value, bool) and value < 0
              and str(key).upper().endswith(SIZE_KEYS)):
            raise InputError(f"config {path}: {name} is {value}; an architecture size must be >= 0")


def cfg_get(cfg: dict[str, Any], key: str, default: Any = None) -> Any:
    """``cfg_get(cfg, "MODEL.MASK_FORMER.HIDDEN_DIM", 256)``: a dotted lookup with a default."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
