"""Atomic file writes (a reader, or a resumed run, sees the old file or the new one, never half of
one) and the root of ovss's on-disk caches."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """Root of ovss's caches: ``$OVSS_CACHE``, else ``$XDG_CACHE_HOME/ovss`` (``~/.cache/ovss``)."""
    root = os.environ.get("OVSS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ovss")
    return Path(root)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``
    (atomic on POSIX and Windows): a kill mid-write leaves the previous file intact."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def ensure_output_dir(path: str | Path, flag: str = "-o") -> Path:
    """Create the output folder ``path`` if needed and check that files can be written in it,
    before any model loads or image is processed.

    Args:
        path: the folder.
        flag: the option that named it, for the message ("-o", "--save-predictions").

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: ``path`` or one of its parents is a file, or the folder cannot be created
            or written in (read-only, no permission).
    """
    from .errors import InputError

    path = Path(path).expanduser()
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "names a file" if parent == path else f"is inside {parent}, which is a file"
                raise InputError(f"{flag} {path} {where}, not a folder: give a folder for the outputs")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ovss-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write in {flag} folder {path} ({exc.strerror or exc.__class__.__name__}): "
                         "give a folder you can write to") from None
    return path
