"""Downloading checkpoint files: resumable, verified, atomic, with bounded waits.

:func:`download_url` fetches one HTTP(S) URL into a file: it writes ``<dest>.part`` and resumes it
with an HTTP ``Range`` request after a cut connection, shows a tqdm progress bar on stderr, checks the
size and SHA-256 when they are known, and only then renames the file into place (``os.replace``), so
``dest`` is either absent or complete. :func:`download_gdrive` does the same for Google Drive files
through gdown (an optional dependency: ``pip install gdown``), whose own resume handles Drive's
confirmation pages. :func:`url_reachable` answers within its timeout (the name lookup included), so
an offline machine gets its error in about a second instead of after retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from .errors import ModelLoadError

#: seconds to wait for a connection / for the next bytes of a response.
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 30.0
_CHUNK = 1 << 20


def _resolve(host: str, port: int) -> list[Any]:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []


def url_reachable(url: str, timeout: float = CONNECT_TIMEOUT) -> bool:
    """True when the host of ``url`` accepts a TCP connection within ``timeout`` seconds in all.

    The name lookup has no timeout of its own (a dead DNS server blocks for many seconds), so it
    runs in a daemon thread that is abandoned at the deadline; the connection gets what is left.
    """
    parts = urlparse(url)
    if not parts.hostname:
        return False
    deadline = time.monotonic() + timeout
    port = parts.port or (443 if parts.scheme == "https" else 80)
    found: list[Any] = []
    lookup = threading.Thread(target=lambda: found.append(_resolve(parts.hostname, port)), daemon=True)
    lookup.start()
    lookup.join(timeout)
    left = deadline - time.monotonic()
    if not found or not found[0] or left <= 0:
        return False
    family, kind, proto, _, address = found[0][0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(left)
            sock.connect(address)
            return True
    except OSError:
        return False


def first_reachable(urls: list[str], timeout: float = CONNECT_TIMEOUT) -> str | None:
    """The first of ``urls`` (in order) whose host answers, probing all at once (~``timeout`` in all)."""
    if not urls:
        return None
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        ok = list(pool.map(lambda u: url_reachable(u, timeout), urls))
    return next((u for u, good in zip(urls, ok) if good), None)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file (4 MiB reads; ~1 GB/s with the CPU's SHA extensions)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """One downloader per destination (two processes would interleave bytes in the same .part)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent downloads of one file are the user's risk
        yield
        return
    lock = dest.parent / ".locks" / (dest.name + ".lock")  # kept: unlinking a flock file races
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _progress(total: int | None, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=True)


def verify_file(path: Path, *, sha256: str | None, size: int | None, what: str) -> str:
    """Check ``path`` against the expected size / SHA-256 and return its SHA-256.

    Raises:
        ModelLoadError: a size or checksum mismatch (the message gives both values).
    """
    if size is not None and path.stat().st_size != size:
        raise ModelLoadError(f"{what}: size mismatch: got {path.stat().st_size} bytes, expected {size}; "
                             "the download is corrupt or the file changed upstream")
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256.lower():
        raise ModelLoadError(f"{what}: SHA-256 mismatch: got {digest}, expected {sha256.lower()}; "
                             "the download is corrupt or the file changed upstream (nothing was kept)")
    return digest


def download_url(url: str, dest: str | Path, *, sha256: str | None = None, size: int | None = None,
                 progress: bool = True, headers: dict[str, str] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, rename it into place.

    Args:
        url: http(s) URL.
        dest: final path; its folder is created.
        sha256, size: expected SHA-256 (hex) and byte size, or None when unknown.
        progress: show a tqdm bar on stderr.
        headers: extra request headers (e.g. ``Authorization`` for the Hugging Face hub).
        connect_timeout: seconds for the reachability probe of the host.
        read_timeout: seconds to wait for the next bytes.

    Returns:
        The file's SHA-256 (hex).

    Raises:
        ModelLoadError: host unreachable, HTTP error, cut connection (``dest.part`` is kept and the
            next call resumes it), or size / checksum mismatch (the partial file is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not url_reachable(url, connect_timeout):
        raise ModelLoadError(f"cannot reach {urlparse(url).netloc} to download {url} (no network?)")
    with _locked(dest):
        have = part.stat().st_size if part.is_file() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        req = urllib.request.Request(url, headers={"User-Agent": "ovss", **(headers or {})})
        if have and not (size is not None and have == size):
            req.add_header("Range", f"bytes={have}-")
        try:
            if size is not None and have == size:
                resp = None  # the .part is complete (a previous run stopped before verifying)
            else:
                resp = urllib.request.urlopen(req, timeout=read_timeout)  # noqa: S310 (http(s) only)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the range starts at the end: the .part is whole already
                resp = None
            else:
                raise ModelLoadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelLoadError(f"could not download {url}: {reason}") from None
        if resp is not None:
            with resp:
                if have and resp.status != 206:  # the server ignored the range: start again
                    have = 0
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else size
                bar = _progress(total, have, dest.name, progress)
                try:
                    with part.open("ab" if have else "wb") as fh:
                        while True:
                            try:
                                block = resp.read(_CHUNK)
                            except (OSError, ValueError) as exc:  # timeout, reset, incomplete read
                                raise ModelLoadError(
                                    f"download of {url} interrupted after {fh.tell()} bytes ({exc.__class__.__name__}); "
                                    f"run the same command again to resume from {part}") from None
                            if not block:
                                break
                            fh.write(block)
                            bar.update(len(block))
                finally:
                    bar.close()
                if total is not None and part.stat().st_size < total:
                    raise ModelLoadError(f"download of {url} interrupted after {part.stat().st_size} of {total} "
                                         f"bytes; run the same command again to resume from {part}")
        return _verify_into_place(part, dest, sha256=sha256, size=size, url=url)


def _verify_into_place(part: Path, dest: Path, *, sha256: str | None, size: int | None, url: str) -> str:
    """Verify a finished ``.part`` file and rename it to ``dest``; a bad file is deleted (not resumed)."""
    try:
        digest = verify_file(part, sha256=sha256, size=size, what=f"download of {url}")
    except ModelLoadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return digest


def download_gdrive(file_id: str, dest: str | Path, *, sha256: str | None = None, size: int | None = None,
                    progress: bool = True) -> str:
    """Download a Google Drive file (by id) through gdown, verify it, rename it into place.

    Raises:
        ModelLoadError: gdown is not installed, Drive refuses (quota, removed file), or a mismatch.
    """
    gdown = _gdown()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    url = f"https://drive.google.com/uc?id={file_id}"
    if not url_reachable(url):
        raise ModelLoadError(f"cannot reach drive.google.com to download {url} (no network?)")
    with _locked(dest):
        try:
            out = gdown.download(id=file_id, output=str(part), quiet=not progress, resume=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ModelLoadError(f"could not download {url} with gdown: {first}") from None
        if not out or not part.is_file():
            raise ModelLoadError(f"could not download {url} with gdown (Drive refused; quota or removed file?)")
        return _verify_into_place(part, dest, sha256=sha256, size=size, url=url)


def gdrive_folder_file_id(folder_id: str, filename: str) -> str:
    """The Drive id of ``filename`` in a shared Drive folder (listed through gdown, nothing downloaded).

    Raises:
        ModelLoadError: gdown missing, the folder cannot be listed, or it has no such file (the message
            lists what it has).
    """
    gdown = _gdown()
    url = f"https://drive.google.com/drive/folders/{folder_id}"
    if not url_reachable(url):
        raise ModelLoadError(f"cannot reach drive.google.com to list {url} (no network?)")
    try:
        files = gdown.download_folder(id=folder_id, skip_download=True, quiet=True) or []
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"could not list the Drive folder {url}: {first}") from None
    names = {Path(str(getattr(f, "path", ""))).name: str(getattr(f, "id", "")) for f in files}
    if filename not in names:
        raise ModelLoadError(f"the Drive folder {url} has no {filename} (it has: {', '.join(sorted(names)) or 'nothing'})")
    return names[filename]


def _gdown() -> Any:
    try:
        import gdown
    except ImportError:
        raise ModelLoadError("downloading from Google Drive needs gdown: pip install gdown "
                             "(or download the file in a browser and pass its path)") from None
    return gdown
