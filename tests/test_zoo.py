"""The model zoo against a local HTTP server (``http.server`` in a thread) that serves the tiny fixture
checkpoints under zoo-like entries: ``ovss models``, ``ovss download`` (progress bar, resume after a cut
connection, checksum mismatch rejected, checksum recorded and enforced), zoo names in ``checkpoint=`` /
``--checkpoint`` (cache hit without network), the offline error, ``ovss convert``; and the real table's
facts against the code (methods, options, protocols)."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ovss import zoo
from ovss.cli import app
from ovss.errors import ModelLoadError, UnknownNameError

runner = CliRunner()


class _Server:
    """Serves ``files`` (path -> bytes) with HTTP Range support; ``cut_after`` bytes makes it drop the
    connection mid-body (once per request); ``requests`` logs (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng:
                    m = re.fullmatch(r"bytes=(\d+)-", rng)
                    start = int(m.group(1)) if m else 0
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if outer.cut_after is not None and start == 0:
                    self.wfile.write(chunk[: outer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = _Server()
    yield s
    s.stop()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def tiny_entries(server: _Server, parity_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Zoo-like entries for the tiny fixtures, served by the local server."""
    fc = parity_dir / "fc_clip"
    body = (fc / "fcclip_tiny.pth").read_bytes()
    server.files["/fc/fcclip_tiny.pth"] = body
    server.files["/timm/tiny_found/resolve/main/decoder.safetensors"] = \
        (parity_dir / "clip_diy" / "tiny_found_decoder.safetensors").read_bytes()
    sha = hashlib.sha256(body).hexdigest()
    entries = [
        zoo.ZooModel("tiny_fcclip", "fc_clip", "checkpoint", "tiny FC-CLIP",
                     (zoo.Source("url", f"{server.base}/fc/fcclip_tiny.pth", sha256=sha, size=len(body)),),
                     fills={"model": str(fc / "convnext_fcclip_tiny.json"),
                            "pretrained": str(fc / "tiny_convnext_clip.safetensors")},
                     paper={"A-150 mIoU": 1.5}),
        zoo.ZooModel("tiny_unpublished", "fc_clip", "checkpoint", "no published checksum",
                     (zoo.Source("url", f"{server.base}/fc/fcclip_tiny.pth", "unpublished.pth"),)),
        zoo.ZooModel("tiny_badsum", "fc_clip", "checkpoint", "wrong checksum",
                     (zoo.Source("url", f"{server.base}/fc/fcclip_tiny.pth", "badsum.pth", sha256="0" * 64),)),
        zoo.ZooModel("tiny_found", "clip_diy", "saliency_head", "tiny FOUND decoder from a hub mirror",
                     (zoo.Source("hf", "timm/tiny_found", "decoder.safetensors"),)),
        zoo.ZooModel("tiny_offline", "fc_clip", "checkpoint", "unreachable",
                     (zoo.Source("url", f"http://127.0.0.1:{_closed_port()}/x/offline_model.pth"),)),
    ]
    for e in entries:
        monkeypatch.setitem(zoo.MODELS, e.name, e)
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    return {"fcclip": body}


def test_download_progress_record_and_models(tiny_entries, server: _Server, cache: Path) -> None:
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "tiny_fcclip" in r.output and "fcclip_cocopan" in r.output
    assert re.search(r"tiny_fcclip .*A-150 mIoU 1\.5 .*│ -", r.output)
    r = runner.invoke(app, ["download", "tiny_fcclip"])
    assert r.exit_code == 0, r.output
    path = cache / "fcclip_tiny.pth"
    assert path.read_bytes() == tiny_entries["fcclip"]
    assert "100%" in r.output and "publisher" in r.output  # the tqdm bar, and the checksum it matched
    assert zoo.recorded_sha256(path) == hashlib.sha256(tiny_entries["fcclip"]).hexdigest()
    assert not list(cache.glob("*.part"))
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert re.search(r"tiny_fcclip .*│ yes", r.output)
    r = runner.invoke(app, ["models", "tiny_fcclip"])
    assert r.exit_code == 0 and str(path) in r.output.replace("\n", "")
    # a hub-mirror source: the resolve URL under HF_ENDPOINT
    assert zoo.fetch("tiny_found", progress=False).name == "timm--tiny_found--decoder.safetensors"
    assert ("/timm/tiny_found/resolve/main/decoder.safetensors", None) in server.requests


def test_resume_after_cut_connection(tiny_entries, server: _Server, cache: Path) -> None:
    body = tiny_entries["fcclip"]
    server.cut_after = len(body) // 3
    with pytest.raises(ModelLoadError, match=r"interrupted .*run the same command again to resume"):
        zoo.fetch("tiny_fcclip", progress=False)
    part = cache / "fcclip_tiny.pth.part"
    assert part.is_file() and part.stat().st_size == len(body) // 3
    assert not (cache / "fcclip_tiny.pth").exists()  # never a half file under the final name
    server.cut_after = None
    path = zoo.fetch("tiny_fcclip", progress=False)
    assert path.read_bytes() == body and not part.exists()
    assert server.requests[-1] == ("/fc/fcclip_tiny.pth", f"bytes={len(body) // 3}-")


def test_checksum_mismatch_is_rejected(tiny_entries, cache: Path) -> None:
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):
        zoo.fetch("tiny_badsum", progress=False)
    assert not list(cache.glob("badsum*"))


def test_recorded_checksum_guards_later_downloads(tiny_entries, server: _Server, cache: Path) -> None:
    """Without a published checksum the first download's is recorded; a later download of a changed
    file is refused."""
    first = zoo.fetch("tiny_unpublished", progress=False)
    assert zoo.status(zoo.get("tiny_unpublished"))["sha256_from"] == "recorded"
    first.unlink()
    server.files["/fc/fcclip_tiny.pth"] = b"something else entirely"
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):
        zoo.fetch("tiny_unpublished", progress=False)
    assert not first.exists()


def test_offline_error_names_file_url_and_place(tiny_entries, cache: Path) -> None:
    t = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        zoo.fetch("tiny_offline", progress=False)
    elapsed = time.perf_counter() - t
    msg = str(info.value)
    assert "\n" not in msg and "offline_model.pth" in msg and "/x/offline_model.pth" in msg
    assert str(cache / "offline_model.pth") in msg and "checkpoint=" in msg
    assert elapsed < 10  # bounded probe, no retries (typically well under a second)
    r = runner.invoke(app, ["download", "tiny_offline"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_zoo_name_in_create_segmenter_works_offline_after_download(tiny_entries, server: _Server,
                                                                   cache: Path, parity_dir: Path) -> None:
    import ovss

    seg = ovss.create_segmenter("fc_clip", checkpoint="tiny_fcclip", dataset=None)
    assert seg.checkpoint == str(cache / "fcclip_tiny.pth")
    assert seg.model_name.endswith("convnext_fcclip_tiny.json")  # filled from the entry
    server.stop()  # from now on: no network
    again = ovss.create_segmenter("fc_clip", checkpoint="tiny_fcclip", dataset=None)
    assert again.checkpoint == seg.checkpoint
    own, ref = again.net.state_dict(), seg.net.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in ref)
    r = runner.invoke(app, ["segment", str(parity_dir / "astronaut.png"), "--method", "fc_clip",
                            "--checkpoint", "tiny_fcclip", "-c", "person, sky", "-o", str(cache.parent / "out"),
                            "--short-side", "64"])
    assert r.exit_code == 0, r.output


def test_convert_zoo_entry_is_used_from_then_on(tiny_entries, cache: Path) -> None:
    import ovss

    zoo.fetch("tiny_fcclip", progress=False)
    r = runner.invoke(app, ["convert", "tiny_fcclip"])
    assert r.exit_code == 0, r.output
    conv = cache / "tiny_fcclip.safetensors"
    assert conv.is_file() and zoo.local_path(zoo.get("tiny_fcclip")) == conv
    seg = ovss.create_segmenter("fc_clip", checkpoint="tiny_fcclip", dataset=None)
    assert seg.checkpoint == str(conv)
    from ovss.importers.fc_clip import read_checkpoint

    a, b = read_checkpoint(conv), read_checkpoint(cache / "fcclip_tiny.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zoo_name_for_the_wrong_method_or_option(tiny_entries, cache: Path) -> None:
    with pytest.raises(UnknownNameError, match=r"'tiny_found' is a clip_diy checkpoint for saliency_head="):
        zoo.resolve("fc_clip", {"checkpoint": "tiny_found"})
    with pytest.raises(UnknownNameError, match="no model 'fcclip_cocopn' in the zoo. Did you mean 'fcclip_cocopan'"):
        zoo.get("fcclip_cocopn")
    # an existing file named like an entry is a path, not a zoo name
    assert zoo.resolve("fc_clip", {"checkpoint": "/nonexistent/tiny_fcclip"}) == {"checkpoint": "/nonexistent/tiny_fcclip"}
    assert not list(cache.glob("*"))  # nothing was downloaded


# ------------------------------------------------------------------------- the real table's facts

def test_table_matches_the_code() -> None:
    """Every entry names a registered method, one of its real file options, options it takes, and
    protocols it has; checksums are well-formed; every entry can be downloaded from somewhere."""
    from ovss.registry import available_methods, method_class, method_options

    assert len(zoo.MODELS) >= 19
    for entry in zoo.MODELS.values():
        assert entry.sources and entry.source, entry.name
        for src in entry.sources:
            assert src.kind in ("hf", "url", "gdrive", "gdrive_folder") and src.cache_name
            assert src.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", src.sha256)
        if entry.method not in available_methods():
            assert entry.method == "cat_seg", entry.name  # the CAT-Seg method is being ported separately
            continue
        options = method_options(entry.method) or {}
        assert entry.option in options and entry.option in zoo.FILE_OPTIONS, entry.name
        assert set(entry.fills) <= set(options), (entry.name, set(entry.fills) - set(options))
        known = set(method_class(entry.method).datasets())
        assert set(entry.protocols) <= known, (entry.name, set(entry.protocols) - known)


def test_docs_table_lists_every_entry() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    missing = [name for name in zoo.MODELS if f"`{name}`" not in doc]
    assert not missing, f"docs/models.md lacks {missing}"
