"""No loading path executes code from a file: a crafted pickle whose ``__reduce__`` would create a
marker file goes through every loader ovss has (CLIP ``.pt/.pth/.bin``, the ConvNeXt CLIP of FC-CLIP,
detectron2 ``.pth``/``.pkl`` through each importer and each method, DINO, FOUND, BLIP, both trainers'
resume, ZSSeg prompt checkpoints, ``ovss convert``) and must leave no marker and give the one-line
refusal. The real layouts (the fixtures' ``.pth`` files, numpy arrays as detectron2 writes them, a
TorchScript archive, FOUND's released decoder) still load."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from ovss.checkpoints import convert_to_safetensors, load_checkpoint, load_state_dict, read_checkpoint
from ovss.errors import ModelLoadError

REFUSAL = r"refusing to load .*it asks to import '(posix|nt)\.system', which is code"


class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def marker(tmp_path: Path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a loader executed code from a checkpoint file"


def _evil_obj(marker: Path) -> dict:
    return {"model": OrderedDict(w=_Payload(marker)), "__author__": "x"}


@pytest.fixture()
def evil(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """The payload in every container format ovss reads: torch zip, torch legacy, plain pickle,
    TorchScript archive (its data.pkl replaced)."""
    d = tmp_path / "evil"
    d.mkdir()
    out = {"zip": d / "model.pth", "legacy": d / "legacy.pth", "pkl": d / "model.pkl", "script": d / "script.pt"}
    torch.save(_evil_obj(marker), out["zip"])
    torch.save(_evil_obj(marker), out["legacy"], _use_new_zipfile_serialization=False)
    out["pkl"].write_bytes(pickle.dumps(_evil_obj(marker), protocol=2))
    with zipfile.ZipFile(out["script"], "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("archive/version", "3\n")
    return out


def test_payload_is_live(tmp_path: Path) -> None:
    """The marker payload does run when unpickled unsafely (otherwise the tests below prove nothing)."""
    marker = tmp_path / "live"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pkl", "script"])
def test_reader_refuses_every_format(evil: dict[str, Path], fmt: str) -> None:
    with pytest.raises(ModelLoadError, match=REFUSAL) as info:
        read_checkpoint(evil[fmt])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_clip_paths(evil: dict[str, Path], tmp_path: Path, suffix: str, tiny_clip_files) -> None:
    from ovss.backbones.clip import load_clip

    for fmt in ("zip", "script"):
        f = tmp_path / f"clip_{fmt}{suffix}"
        shutil.copy(evil[fmt], f)
        with pytest.raises(ModelLoadError, match=REFUSAL):
            load_clip(tiny_clip_files[0], str(f))


def test_convnext_clip_and_fc_clip(evil: dict[str, Path], parity_dir: Path) -> None:
    import ovss
    from ovss.backbones.convnext_clip import load_conv_clip
    from ovss.importers.fc_clip import read_checkpoint as read_fcclip

    fc = parity_dir / "fc_clip"
    with pytest.raises(ModelLoadError, match=REFUSAL):
        load_conv_clip(str(fc / "convnext_fcclip_tiny.json"), str(evil["zip"]))
    for fmt in ("zip", "legacy", "pkl"):
        with pytest.raises(ModelLoadError, match=REFUSAL):
            read_fcclip(evil[fmt])
    with pytest.raises(ModelLoadError, match=REFUSAL):
        ovss.create_segmenter("fc_clip", model=str(fc / "convnext_fcclip_tiny.json"),
                              pretrained=str(fc / "tiny_convnext_clip.safetensors"), checkpoint=str(evil["zip"]))


@pytest.mark.parametrize("method", ["zsseg", "zegformer"])
def test_two_stage_importers_and_methods(evil: dict[str, Path], method: str, tiny_clip_files) -> None:
    import ovss
    from ovss.importers.zegformer import load_zegformer_checkpoint
    from ovss.importers.zsseg import load_zsseg_checkpoint

    load = load_zsseg_checkpoint if method == "zsseg" else load_zegformer_checkpoint
    for fmt in ("zip", "legacy", "pkl"):
        with pytest.raises(ModelLoadError, match=REFUSAL):
            load(evil[fmt])
    with pytest.raises(ModelLoadError, match=REFUSAL):
        ovss.create_segmenter(method, model=tiny_clip_files[0], pretrained=tiny_clip_files[1],
                              checkpoint=str(evil["pkl"]))


def test_dino_found_blip(evil: dict[str, Path], tmp_path: Path, parity_dir: Path) -> None:
    from ovss.backbones.blip import load_blip_itm
    from ovss.backbones.dino import load_vit
    from ovss.methods.clip_diy import load_found_decoder

    with pytest.raises(ModelLoadError, match=REFUSAL):
        load_vit(str(parity_dir / "proxyclip" / "tiny_dino_b8.json"), str(evil["zip"]))
    with pytest.raises(ModelLoadError, match=REFUSAL):
        load_vit(str(parity_dir / "clip_diy" / "tiny_dino_s8.json"), str(evil["legacy"]))
    for fmt in ("zip", "legacy"):
        with pytest.raises(ModelLoadError, match=REFUSAL):
            load_found_decoder(evil[fmt], 384)
    blip = tmp_path / "blip"
    shutil.copytree(parity_dir / "pnp_ovss" / "hf_tiny_blip_itm", blip)
    (blip / "model.safetensors").unlink()
    shutil.copy(evil["zip"], blip / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=REFUSAL):
        load_blip_itm(str(blip))


def test_blip_bin_directory_loads(tmp_path: Path, parity_dir: Path) -> None:
    """A BLIP directory with a pickled ``pytorch_model.bin`` instead of safetensors loads the same weights."""
    from safetensors.torch import load_file

    from ovss.backbones.blip import load_blip_itm

    blip = tmp_path / "blip"
    shutil.copytree(parity_dir / "pnp_ovss" / "hf_tiny_blip_itm", blip)
    sd = load_file(str(blip / "model.safetensors"))
    (blip / "model.safetensors").unlink()
    torch.save(sd, blip / "pytorch_model.bin")
    net = load_blip_itm(str(blip)).model
    own = net.state_dict()
    same = [k for k in sd if k in own and torch.equal(own[k], sd[k].float())]
    assert len(same) >= len(sd) - 2  # all but the resized / re-tied entries


def test_trainer_resume(evil: dict[str, Path], tmp_path: Path, tiny_clip_files, tiny_clip) -> None:
    from ovss.training.engine import last_checkpoint, read_checkpoint
    from ovss.training.fc_clip_train import main as fcclip_main
    from ovss.training.maskformer_train import ProposalTrainer, TrainConfig

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(evil["zip"], out / "model_0000001.pth")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    with pytest.raises(ModelLoadError, match=REFUSAL):  # what every trainer's --resume reads
        read_checkpoint(last_checkpoint(out))
    with pytest.raises(ModelLoadError, match=REFUSAL):
        ProposalTrainer(TrainConfig(method="zsseg", out=str(tmp_path / "o2"), class_names=["a", "b"], unseen=["b"],
                                    prompt="learnable", prompt_checkpoint=str(evil["pkl"]),
                                    arch={"MODEL.MASK_FORMER.DEC_LAYERS": 1, "MODEL.RESNETS.DEPTH": 50,
                                          "MODEL.RESNETS.WIDTH_PER_GROUP": 2, "MODEL.RESNETS.STEM_OUT_CHANNELS": 8,
                                          "MODEL.RESNETS.RES2_OUT_CHANNELS": 8}),
                        clip=tiny_clip)
    code = fcclip_main(["--images", str(tmp_path), "--panoptic-json", str(tmp_path / "x.json"), "--panoptic-dir",
                        str(tmp_path), "--output", str(out), "--resume", "--model", tiny_clip_files[0],
                        "--pretrained", tiny_clip_files[1], "--device", "cpu"])
    assert code == 2


def test_convert_and_cli_refuse(evil: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ovss.cli import app

    with pytest.raises(ModelLoadError, match=REFUSAL):
        convert_to_safetensors(evil["zip"], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    r = CliRunner().invoke(app, ["convert", str(evil["legacy"]), str(tmp_path / "o.safetensors")])
    assert r.exit_code == 2 and "refusing to load" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["segment", str(tmp_path / "none.jpg"), "--method", "zsseg",
                                 "--checkpoint", str(evil["pkl"]), "-c", "cat", "-o", str(tmp_path / "seg")])
    assert r.exit_code == 2 and "Traceback" not in r.output


# ------------------------------------------------------------------ the real layouts still load

@pytest.mark.parametrize("name", ["fc_clip/fcclip_tiny.pth", "zsseg/zsseg_tiny_r101c.pth",
                                  "zegformer/zegformer_tiny_r101.pth", "cat_seg/catseg_tiny.pth"])
def test_fixture_pth_load_and_convert(parity_dir: Path, tmp_path: Path, name: str) -> None:
    """Every fixture ``.pth`` (detectron2 layout) loads, and its safetensors conversion holds the same
    tensors and the detectron2 module versions."""
    src = parity_dir / name
    ck = load_checkpoint(src)
    assert ck.format == "torch" and ck.tensors
    out = tmp_path / "c.safetensors"
    meta = convert_to_safetensors(src, out)
    assert meta["tensors"] == len(ck.tensors) and meta["ovss_source"] == src.name
    back = load_checkpoint(out)
    assert back.format == "safetensors" and back.versions == ck.versions
    assert back.tensors.keys() == ck.tensors.keys()
    assert all(torch.equal(back.tensors[k], ck.tensors[k]) for k in ck.tensors)


def test_converted_zsseg_checkpoint_gives_same_model(parity_dir: Path, tmp_path: Path) -> None:
    from ovss.importers.zsseg import load_zsseg_checkpoint

    src = parity_dir / "zsseg" / "zsseg_tiny_r101c.pth"
    cfg = parity_dir / "zsseg" / "zsseg_tiny_config.json"
    out = tmp_path / "z.safetensors"
    convert_to_safetensors(src, out)
    a, b = load_zsseg_checkpoint(src, cfg), load_zsseg_checkpoint(out, cfg)
    assert a.maskformer.keys() == b.maskformer.keys() and a.prompts.keys() == b.prompts.keys()
    assert all(torch.equal(a.maskformer[k], b.maskformer[k]) for k in a.maskformer)
    assert torch.equal(a.non_object_embedding, b.non_object_embedding)


def test_detectron2_numpy_layouts(tmp_path: Path) -> None:
    """detectron2 writes numpy arrays (model-zoo ``.pkl``; ``.pth`` converted from them) and numpy
    scalars (iteration counters): both load, as tensors, with the same values."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(3, dtype=np.int64)
    obj = {"model": {"backbone.w": w, "backbone.b": b, "h": np.float16(2.0) * np.ones(2, np.float16)},
           "__author__": "Detectron2 Model Zoo", "iteration": np.int64(7), "matching_heuristics": True}
    torch.save(obj, tmp_path / "d2.pth")
    (tmp_path / "d2.pkl").write_bytes(pickle.dumps(obj, protocol=2))
    (tmp_path / "d2_p4.pkl").write_bytes(pickle.dumps(obj, protocol=4))
    for f in ("d2.pth", "d2.pkl", "d2_p4.pkl"):
        ck = load_checkpoint(tmp_path / f)
        assert torch.equal(ck.tensors["backbone.w"], torch.from_numpy(w)), f
        assert ck.tensors["backbone.b"].dtype == torch.int64 and ck.tensors["h"].dtype == torch.float16
        assert int(ck.extra["iteration"]) == 7 and ck.extra["__author__"] == "Detectron2 Model Zoo"
    meta = convert_to_safetensors(tmp_path / "d2.pkl", tmp_path / "d2.safetensors")
    assert '"iteration": 7' in meta["ovss_extra"]
    assert load_checkpoint(tmp_path / "d2.safetensors").extra["iteration"] == 7


def test_torchscript_archive_reads_like_jit(tmp_path: Path) -> None:
    """A TorchScript archive (OpenAI's released CLIP ``.pt`` is one) gives the parameters and buffers
    torch.jit.load would, without compiling or running its code."""
    import warnings

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, 2)
            self.inner = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
            self.register_buffer("scale", torch.tensor([4.5]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(self.proj(x).view(1, 2, 1, 1)) * self.scale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Net().eval(), torch.randn(1, 3))
        traced.save(str(tmp_path / "net.pt"))
        ref = torch.jit.load(str(tmp_path / "net.pt")).state_dict()
    ck = load_checkpoint(tmp_path / "net.pt")
    assert ck.format == "torchscript" and ck.tensors.keys() == ref.keys()
    assert all(torch.equal(ck.tensors[k], ref[k]) for k in ref)


def test_found_release_layout(tmp_path: Path) -> None:
    """FOUND's ``decoder_weights.pt`` layout ``{"decoder": {"weight", "bias"}}`` loads, also after conversion."""
    from ovss.methods.clip_diy import load_found_decoder

    sd = {"decoder": OrderedDict(weight=torch.randn(1, 384, 1, 1), bias=torch.randn(1))}
    torch.save(sd, tmp_path / "decoder_weights.pt")
    conv = load_found_decoder(tmp_path / "decoder_weights.pt", 384)
    assert torch.equal(conv.weight, sd["decoder"]["weight"])
    convert_to_safetensors(tmp_path / "decoder_weights.pt", tmp_path / "found.safetensors")
    assert set(load_state_dict(tmp_path / "found.safetensors")) == {"decoder.weight", "decoder.bias"}
    assert torch.equal(load_found_decoder(tmp_path / "found.safetensors", 384).bias, sd["decoder"]["bias"])


def test_suffix_does_not_fool_the_reader(tmp_path: Path, marker: Path) -> None:
    """A pickle named ``.safetensors`` is still read as a pickle (and refused)."""
    f = tmp_path / "x.safetensors"
    f.write_bytes(pickle.dumps(_evil_obj(marker)))
    with pytest.raises(ModelLoadError, match=REFUSAL):
        load_state_dict(f)
