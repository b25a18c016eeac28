"""The web demo (``ovss demo``): the page driven in a real headless Chromium, the same endpoint
through ``gradio_client``, and the request checks behind them.

The app runs on a free loopback port in a background thread with the tiny random CLIP of the
parity fixtures (its masks mean nothing; the tests check the plumbing, not the segmentation).
Set ``OVSS_UPDATE_SCREENSHOT=1`` to refresh ``docs/demo.png`` from the browser test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the demo needs gradio (pip install gradio gradio_client)")

from ovss.demo.app import (  # noqa: E402
    NO_DATASET, DemoBackend, DemoConfig, ModelCache, _backbone_for, _datasets_for, _display, build_demo, check_classes,
    check_photo, custom_settings, launch, method_defaults, method_kwargs,
)
from ovss.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("OVSS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = ["person", "flag", "sky"]
SCREENSHOT_MAX_BYTES = 300_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's astronaut (512x512 RGB) as a PNG upload."""
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def server(tiny_clip_files: tuple[str, str]) -> Iterator[tuple[Any, str]]:
    """(gr.Blocks, URL) of the demo with the tiny CLIP as default backbone, on loopback."""
    model, pretrained = tiny_clip_files
    demo = build_demo(model=model, pretrained=pretrained, device="cpu", method="sclip")
    url, share_url = launch(demo, host="127.0.0.1", port=_free_port())
    assert share_url is None and url.startswith("http://127.0.0.1:")
    try:
        yield demo, url
    finally:
        demo.close()


def _request(photo: Path | Any, classes: str, tiny: tuple[str, str], **over: Any) -> list[Any]:
    """Positional inputs of /segment in page order."""
    values = dict(photo=photo, classes=classes, background="", prob_threshold=0.0, method="sclip",
                  model=tiny[0], pretrained=tiny[1], device="cpu", dataset=NO_DATASET,
                  short_side="", crop="", stride="", options="")
    values.update(over)
    return list(values.values())


# --------------------------------------------------------------------------- the browser
def test_page_in_headless_chromium(server: tuple[Any, str], photo: Path, tmp_path: Path) -> None:
    required = bool(os.environ.get("OVSS_REQUIRE_BROWSER"))  # .ci/run with chromium: run, never skip
    try:
        from playwright import sync_api
    except ImportError:
        (pytest.fail if required else pytest.skip)("needs playwright (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        (pytest.fail if required else pytest.skip)(f"needs Chromium at {CHROMIUM} (apt-get install -y chromium)")
    demo, url = server
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 980})
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            page.locator("#ovss-run").wait_for()
            page.locator("#ovss-image input[type=file]").set_input_files(str(photo))
            page.locator("#ovss-image img").first.wait_for()
            page.locator("#ovss-classes textarea").fill(", ".join(CLASSES))
            page.locator("#ovss-run").click()

            legend = page.locator("#ovss-result .legend-item")
            legend.first.wait_for()
            assert legend.all_inner_texts() == CLASSES
            base = page.locator("#ovss-result img.base-image")
            assert base.count() == 1 and "/gradio_api/file=" in (base.get_attribute("src") or "")
            assert page.locator("#ovss-result img.mask").count() == len(CLASSES)
            page.wait_for_function("() => [...document.querySelectorAll('#ovss-result img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            share = page.locator("#ovss-share").inner_text()
            assert all(name in share for name in CLASSES)
            assert "sclip" in page.locator("#ovss-status").inner_text()
            # hovering a legend entry highlights that class's mask
            legend.nth(1).hover()
            assert page.locator("#ovss-result img.mask.active").count() == 1
            assert page.locator("#ovss-result img.mask.inactive").count() == len(CLASSES) - 1
            page.mouse.move(5, 5)
            page.evaluate("window.scrollTo(0, 0)")
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot))
            _save_small_png(shot, shot)
            assert shot.stat().st_size < SCREENSHOT_MAX_BYTES
            if os.environ.get("OVSS_UPDATE_SCREENSHOT") == "1":
                (ROOT / "docs").mkdir(exist_ok=True)
                shutil.copyfile(shot, ROOT / "docs" / "demo.png")

            # bad input: a readable message in the page, no traceback
            page.locator("#ovss-classes textarea").fill("cat, dog, cat")
            page.locator("#ovss-run").click()
            toast = page.locator(".toast-body").first
            toast.wait_for()
            text = toast.inner_text()
            assert "duplicate class name 'cat'" in text and "Traceback" not in text

            # the compare tab: the same photo and classes through a second method
            page.locator("#ovss-classes textarea").fill(", ".join(CLASSES))
            page.get_by_role("tab", name="Compare").click()
            page.locator("#ovss-compare").click()
            for side in ("a", "b"):
                page.locator(f"#ovss-result-{side} .legend-item").first.wait_for()
                assert page.locator(f"#ovss-result-{side} .legend-item").all_inner_texts() == CLASSES
            assert "clearclip" in page.locator("#ovss-compare-status").inner_text()

            # an example photo fills the photo and the classes
            page.get_by_text("cat, wall, floor").click()
            page.wait_for_function("() => document.querySelector('#ovss-classes textarea').value"
                                   " === 'cat, wall, floor' && (document.querySelector('#ovss-image img')"
                                   "?.getAttribute('src') || '').includes('chelsea')")
        finally:
            ctx.close()
    assert demo.ovss_backend.cache.loads >= 1


def _save_small_png(src: Path, dst: Path) -> None:
    """Quantise a screenshot to 256 colours so the README image stays small."""
    with Image.open(src) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    small.save(dst, optimize=True)


# --------------------------------------------------------------------------- gradio_client
@pytest.fixture(scope="module")
def client(server: tuple[Any, str]) -> Any:
    gc = pytest.importorskip("gradio_client", reason="needs gradio_client")
    return gc.Client(server[1], verbose=False, download_files=True)


def test_client_segment_returns_label_map(client: Any, server: tuple[Any, str], photo: Path,
                                          tiny_clip_files: tuple[str, str]) -> None:
    from gradio_client import handle_file

    loads = server[0].ovss_backend.cache.loads
    ann, files, table, report, status = client.predict(*_request(handle_file(str(photo)), ", ".join(CLASSES),
                                                                 tiny_clip_files), api_name="/segment")
    labels_png = next(f for f in files if f.endswith("_labels.png"))
    with Image.open(labels_png) as im:
        assert im.mode == "P"  # pixel value = class index
        labels = np.asarray(im)
    assert labels.shape == (512, 512)
    assert labels.max() < len(CLASSES)
    report_json = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert report_json["classes"] == report["classes"] == CLASSES
    assert report["background"] is None
    assert report["size"] == [512, 512]
    counts = np.bincount(labels.reshape(-1), minlength=len(CLASSES))
    assert [round(report["pixel_share"][c], 6) for c in CLASSES] == [round(n / labels.size, 6) for n in counts]
    assert [a["label"] for a in ann["value"]["annotations"]] == CLASSES
    assert set(ann["color_map"]) == set(CLASSES)
    assert sorted(r[0] for r in table["data"]) == sorted(CLASSES)
    assert sum(r[2] for r in table["data"]) == labels.size
    assert "sclip" in status
    # the same model again: served from the cache
    client.predict(*_request(handle_file(str(photo)), "sky, tree", tiny_clip_files), api_name="/segment")
    assert server[0].ovss_backend.cache.loads <= loads + 1


def test_client_background_and_custom_settings(client: Any, photo: Path, tiny_clip_files: tuple[str, str]) -> None:
    from gradio_client import handle_file

    _, files, _, report, _ = client.predict(
        *_request(handle_file(str(photo)), "person\nflag, banner\nsky", tiny_clip_files, background="wall, floor",
                  prob_threshold=0.5, short_side="224", crop="0"), api_name="/segment")
    assert report["classes"] == ["background"] + CLASSES and report["background"] == 0
    s = report["settings"]
    assert s["queries"] == [["wall", "floor"], ["person"], ["flag", "banner"], ["sky"]]
    assert s["prob_threshold"] == 0.5
    assert (s["protocol"]["short_side"], s["protocol"]["crop"]) == (224, 0)
    with Image.open(next(f for f in files if f.endswith("_labels.png"))) as im:
        assert np.asarray(im).shape == (512, 512)


def test_client_readable_errors(client: Any, photo: Path, tiny_clip_files: tuple[str, str], tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    not_image = tmp_path / "notes.txt"
    not_image.write_text("not a photo")
    cases = [
        (_request(handle_file(str(not_image)), "cat", tiny_clip_files), "notes.txt is not an image"),
        (_request(handle_file(str(photo)), "cat,,dog", tiny_clip_files), "class 1 has an empty name"),
        (_request(handle_file(str(photo)), "", tiny_clip_files), "the class list is empty"),
        (_request(handle_file(str(photo)), "cat, Cat", tiny_clip_files), "duplicate class name"),
        (_request(handle_file(str(photo)), "cat", tiny_clip_files, pretrained=str(tmp_path / "missing.safetensors")),
         ("loads no files from the server", "--models-dir")),
        (_request(handle_file(str(photo)), "cat", tiny_clip_files, crop="-3"), "crop must be a whole number"),
        (_request(handle_file(str(photo)), "cat", tiny_clip_files, options="--gaussian-std 5"),
         "sclip has no option 'gaussian_std'"),
        (_request(handle_file(str(photo)), "cat", tiny_clip_files, method="nosuch"), "not in the list of choices"),
    ]
    for args, expected in cases:
        with pytest.raises(AppError) as err:
            client.predict(*args, api_name="/segment")
        msg = str(err.value)
        for part in (expected,) if isinstance(expected, str) else expected:
            assert part in msg, (part, msg)
        assert "Traceback" not in msg


def test_client_compare(client: Any, photo: Path, tiny_clip_files: tuple[str, str]) -> None:
    from gradio_client import handle_file

    a, b, table, status = client.predict(*_request(handle_file(str(photo)), ", ".join(CLASSES), tiny_clip_files),
                                         "clearclip", "", api_name="/compare")
    for ann in (a, b):
        assert [x["label"] for x in ann["value"]["annotations"]] == CLASSES
    assert table["headers"] == ["class", "sclip (%)", "clearclip (%)"]
    for col in (1, 2):
        assert sum(r[col] for r in table["data"]) == pytest.approx(100.0, abs=0.05)
    assert "sclip" in status and "clearclip" in status


# --------------------------------------------------------------------------- checks, cache, CLI
def test_request_checks(photo: Path, tmp_path: Path) -> None:
    assert check_photo(str(photo), 40) == (512, 512)
    with pytest.raises(InputError, match="0.3 megapixels, over the limit of 0.2"):
        check_photo(str(photo), 0.2)
    with pytest.raises(InputError, match="no photo"):
        check_photo(None, 40)
    junk = tmp_path / "x.png"
    junk.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="x.png is not an image"):
        check_photo(str(junk), 40)
    assert check_classes("", "voc21") is None  # the protocol's classes
    vocab = check_classes("person, man\nsky\n", None)
    assert vocab is not None and vocab.names == ("person", "sky") and vocab.queries[0] == ("person", "man")
    assert custom_settings("336", "", None) == {"short_side": 336, "crop": None, "stride": None}
    with pytest.raises(InputError, match="stride must be a whole number"):
        custom_settings(None, None, "1.5")
    # big photos are shown shrunk (labels by nearest neighbour); the downloads keep the full size
    rgb = np.zeros((700, 1500, 3), np.uint8)
    labels = np.zeros((700, 1500), np.uint8)
    labels[:, 750:] = 2
    small, lab = _display(rgb, labels)
    assert small.shape == (478, 1024, 3) and lab.shape == (478, 1024)
    assert set(np.unique(lab[:, :510])) == {0} and set(np.unique(lab[:, 514:])) == {2}
    kw = method_kwargs("naclip", "ViT-B-16", "none", "cpu", "voc21", {"crop": 0, "stride": None},
                       "--gaussian-std 3.5")
    assert kw == {"model": "ViT-B-16", "pretrained": None, "device": "cpu", "dataset": "voc21", "crop": 0,
                  "gaussian_std": 3.5}


def test_model_cache_keeps_and_evicts() -> None:
    made: list[tuple[str, dict[str, Any]]] = []

    def factory(method: str, **kw: Any) -> Any:
        made.append((method, kw))
        return object()

    cache = ModelCache(max_models=2, factory=factory)
    a, load_a = cache.get("sclip", {"model": "m", "pretrained": "p", "device": "cpu"})
    assert cache.get("sclip", {"model": "m", "pretrained": "p", "device": "cpu"}) == (a, 0.0)
    cache.get("sclip", {"model": "m", "pretrained": "p", "device": "cpu", "crop": 0})  # other options: other model
    cache.get("naclip", {"model": "m", "pretrained": "p", "device": "cpu"})
    assert len(cache) == 2 and cache.loads == 3
    cache.get("sclip", {"model": "m", "pretrained": "p", "device": "cpu"})  # evicted: loads again
    assert cache.loads == 4


def test_method_change_follows_the_method_defaults(tiny_clip_files: tuple[str, str]) -> None:
    assert method_defaults("sclip") == ("ViT-B-16", "openai")
    assert method_defaults("pnp_ovss") == ("Salesforce/blip-itm-large-flickr", "")
    assert _backbone_for("pnp_ovss", "ViT-B-16", "openai") == method_defaults("pnp_ovss")  # another's default
    assert _backbone_for("clip_diy", "", "") == method_defaults("clip_diy")                  # blank
    assert _backbone_for("pnp_ovss", *tiny_clip_files) == tiny_clip_files                   # typed: kept
    # every method lists its own protocols, not the CLIP family's table
    assert _datasets_for("clip_diy") == [NO_DATASET, "voc21", "coco_object"]
    assert "coco_panoptic" in _datasets_for("fc_clip") and "context59" in _datasets_for("pnp_ovss")


def test_locked_model_ignores_page_fields() -> None:
    backend = DemoBackend(DemoConfig(model="ViT-B-16", pretrained="openai", lock_model=True))
    kw = backend._request_kwargs("sclip", "/etc/passwd", "/etc/shadow", "cuda", NO_DATASET, "", "", "", "--x 1")
    assert kw == {"model": "ViT-B-16", "pretrained": "openai", "device": "cpu"}


def test_cli_has_demo_command() -> None:
    from typer.testing import CliRunner

    from ovss.cli import app

    out = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert out.exit_code == 0, out.output
    for flag in ("--host", "--port", "--share", "--model", "--pretrained", "--device", "--method"):
        assert flag in out.output
    bad = CliRunner().invoke(app, ["demo", "--method", "nosuch"])
    assert bad.exit_code == 2 and "unknown method" in bad.output


def test_client_dataset_protocol_gives_classes(client: Any, photo: Path, tiny_clip_files: tuple[str, str]) -> None:
    from gradio_client import handle_file

    _, files, table, report, _ = client.predict(
        *_request(handle_file(str(photo)), "", tiny_clip_files, dataset="voc21"), api_name="/segment")
    assert len(report["classes"]) == 21 and report["classes"][0] == "background" and report["background"] == 0
    assert report["settings"]["protocol"]["dataset"] == "voc21"
    assert report["settings"]["protocol"]["prob_threshold"] == 0.1  # 0 in the box: the protocol's
    assert len(table["data"]) == 21
