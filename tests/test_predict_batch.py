"""``Segmenter.predict_batch`` gives what ``predict`` gives, image by image.

The CLIP family sends the sliding windows of several images through the encoder together (windows
of one size per forward pass, each image's windows summed in its own order); other methods loop over
:meth:`Segmenter.segment`. Images of mixed sizes (one smaller than a window, one large enough for the
tiled path), files and arrays, explicit and default ids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ovss
from ovss.errors import InputError
from ovss.imageio import load_image
from ovss.segmenter import Capabilities, Segmentation, Segmenter
from ovss.vocabulary import Vocabulary

TEMPLATES = ["a photo of a {}.", "art of the {}"]


@pytest.fixture(scope="module")
def photos(parity_dir, tmp_path_factory):
    rgb = load_image(parity_dir / "astronaut.png")
    folder = tmp_path_factory.mktemp("photos")
    arrays = [np.ascontiguousarray(rgb[40:300, 10:400]),     # 3 x 2 windows, the last ones moved back
              np.ascontiguousarray(rgb[:150, :130]),         # smaller than a window after the resize
              np.ascontiguousarray(rgb[100:300, ::-1][:, :300]),
              np.ascontiguousarray(rgb[::2, ::2])]
    path = folder / "astronaut_crop.png"
    Image.fromarray(arrays[2]).save(path)
    return [arrays[0], arrays[1], str(path), arrays[3]]


@pytest.mark.parametrize("method,kw", [("sclip", {}), ("clearclip", {}), ("naclip", {"pamr_steps": 2, "pamr_dilations": (1, 2)}),
                                       ("maskclip", {"crop": 0})])
def test_predict_batch_equals_predict(tiny_clip, photos, method, kw):
    seg = ovss.create_segmenter(method, clip=tiny_clip, dataset="voc21", templates=TEMPLATES, short_side=224, **kw)
    seg.batch_size = 3  # windows of different images share forward passes
    seg.full_res_budget = 4 * 56 * 200 * 250  # the 256 x 256 photo takes the tiled path
    batch = seg.predict_batch(photos, background="sky, wall")
    assert len(batch) == len(photos)
    for image, res in zip(photos, batch):
        one = seg.predict(image, background="sky, wall")
        assert res.classes == one.classes and res.background == one.background == 0
        assert res.scores.shape == one.scores.shape
        assert (res.scores - one.scores).abs().max() <= 1e-5
        top2 = one.scores.topk(2, dim=0).values
        assert bool(((res.labels == one.labels) | ((top2[0] - top2[1]) < 1e-5)).all())
        assert res.settings == one.settings


class Mean(Segmenter):
    """A test method: class c scores the mean of channel c % 3, and records the ids it was given."""

    method = ""  # not registered
    capabilities = Capabilities(image_id=True, score_kind="sigmoid")

    def __init__(self, **common) -> None:
        super().__init__(**common)
        self.ids: list[str | None] = []

    def segment(self, rgb, vocab: Vocabulary, *, prob_threshold=None, image_id=None, trace=False) -> Segmentation:
        self.ids.append(image_id)
        x = torch.from_numpy(rgb).float().permute(2, 0, 1) / 255
        return Segmentation(torch.stack([x[c % 3] for c in range(len(vocab))]))


def test_default_predict_batch_loops_over_segment(photos):
    seg = Mean()
    batch = seg.predict_batch(photos, ["r", "g", "b", "red again"], image_ids=["a", None, None, "d"])
    assert seg.ids == ["a", None, "astronaut_crop", "d"]  # a file's stem by default
    for image, res in zip(photos, batch):
        assert torch.equal(res.scores, seg.predict(image, ["r", "g", "b", "red again"]).scores)
    assert seg.predict_batch([], ["r"]) == []
    with pytest.raises(InputError, match="image_ids"):
        seg.predict_batch(photos, ["r"], image_ids=["a"])
    with pytest.raises(InputError, match="background"):
        seg.predict_batch(photos, ["r"], background="sky")
