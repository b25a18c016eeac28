"""The ``ovss`` command line: a thin layer over the Python API.

    ovss segment street.jpg --classes "car, road, tree" --method sclip -o out/
    ovss methods
    ovss eval ...      (ovss.evaluation.cli)
    ovss demo ...      (ovss.demo)

Errors from bad input are printed as one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import InputError, OvssError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Open-vocabulary semantic segmentation: label every pixel with the class names you type.")
console = Console(stderr=True)

EXTRA_HELP = ("Method-specific options pass through as --name value (e.g. --proxy-model "
              "vit_base_patch8_224.dino, --residual false, --gaussian-std 5).")


def run_cli(fn: Callable[[], Any]) -> Any:
    """Run ``fn``, turning ovss errors into one red line and exit status 2."""
    try:
        return fn()
    except OvssError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None


def _takes_value(flag: str, nxt: str, flags: set[str]) -> bool:
    """Whether ``nxt`` is the value of option ``flag``: not when it is another option, nor when
    ``flag`` is boolean and ``nxt`` is no boolean word (``--panoptic photo.jpg``)."""
    if nxt.startswith("--"):
        return False
    return flag[2:].replace("-", "_") not in flags or nxt.lower() in _BOOL_WORDS


_TRUE_WORDS, _FALSE_WORDS = ("true", "yes", "on"), ("false", "no", "off")
_BOOL_WORDS = _TRUE_WORDS + _FALSE_WORDS


def split_extra(tokens: list[str], flags: set[str] = frozenset()) -> tuple[list[str], dict[str, Any]]:
    """Separate positional tokens from unknown ``--name value`` options (method options).

    click hands unknown options to the variadic IMAGES argument; each ``--name`` takes the next
    token as its value unless that token is another option, or ``name`` is one of the boolean
    ``flags`` and the token is not a boolean word.
    """
    positional: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("--"):
            if "=" not in t and i + 1 < len(tokens) and _takes_value(t, tokens[i + 1], flags):
                options.append(f"{t}={tokens[i + 1]}")
                i += 1
            else:
                options.append(t)
        else:
            positional.append(t)
        i += 1
    return positional, parse_extra(options)


def parse_extra(args: list[str]) -> dict[str, Any]:
    """``["--proxy-model", "x", "--residual", "false"]`` -> ``{"proxy_model": "x", "residual": False}``.

    Raises:
        InputError: an item that is not ``--name value`` / ``--name=value`` / ``--flag``.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) < 3:
            raise InputError(f"unexpected argument {a!r}; method options go as --name value")
        if "=" in a:
            key, value = a[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = a[2:], args[i + 1]
            i += 2
        else:
            key, value = a[2:], "true"
            i += 1
        out[key.replace("-", "_")] = _convert(value)
    return out


def _convert(v: str) -> Any:
    low = v.lower()
    if low in _TRUE_WORDS:
        return True
    if low in _FALSE_WORDS:
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    if "," in v and all(p.strip().lstrip("-").isdigit() for p in v.split(",")):
        return [int(p) for p in v.split(",")]
    return v


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}_{n}")
    return out


def write_outputs(out_dir: Path, stem: str, rgb: Any, res: Any, extra: dict[str, Any]) -> None:
    """Write ``<stem>_labels.png``, ``<stem>_overlay.png`` and ``<stem>.json`` for one result."""
    from .visualize import label_image, overlay, palette

    labels = res.labels_numpy()
    colors = palette(len(res.classes), res.background)
    label_image(labels, colors).save(out_dir / f"{stem}_labels.png")
    panoptic = res.extras.get("panoptic")
    if isinstance(panoptic, dict) and "panoptic_seg" in panoptic:
        write_panoptic(out_dir / f"{stem}_panoptic.png", rgb, panoptic, res.classes)
        write_panoptic_ids(out_dir / f"{stem}_panoptic_ids.png", panoptic["panoptic_seg"])
    overlay(rgb, labels, res.classes, colors, background=res.background).save(out_dir / f"{stem}_overlay.png")
    share = res.pixel_share()
    report = {
        **extra,
        "classes": res.classes,
        "background": res.background,
        "pixel_share": share,
        "palette": {name: [int(c) for c in col] for name, col in zip(res.classes, colors)},
        "settings": res.settings,
        "extras": {k: _to_json(v) for k, v in res.extras.items() if _jsonable(_to_json(v))},
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))


def write_panoptic(path: Path, rgb: Any, panoptic: dict[str, Any], classes: list[str]) -> None:
    """Overlay of a panoptic result: one colour per segment (instance colours), legend by segment."""
    import numpy as np

    from .visualize import overlay, palette

    ids = np.asarray(panoptic["panoptic_seg"])
    segments = list(panoptic.get("segments", []))
    seg_ids = [int(s["id"]) for s in segments]
    index = np.zeros(ids.shape, np.int64)  # 0: no segment
    for k, sid in enumerate(seg_ids, start=1):
        index[ids == sid] = k
    names = ["void"] + [f"{classes[int(s['category_id'])]}" + (f" #{k}" if s.get("isthing") else "")
                        for k, s in enumerate(segments, start=1)]
    overlay(rgb, index, names, palette(len(names), 0), background=0).save(path)


def write_panoptic_ids(path: Path, ids: Any) -> None:
    """The panoptic id map in the COCO panoptic PNG encoding (``id = R + 256 G + 256^2 B``; 0: no
    segment), the ids of the JSON report's ``extras.panoptic.segments``."""
    from PIL import Image

    from .data.datasets import id2rgb

    Image.fromarray(id2rgb(ids)).save(path)


def _to_json(v: Any) -> Any:
    """Drop tensors from nested extras (label maps go to PNGs), keep the rest."""
    import torch

    if isinstance(v, dict):
        return {k: _to_json(x) for k, x in v.items() if not isinstance(x, torch.Tensor)}
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    return v


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog=EXTRA_HELP)
def segment(
    ctx: typer.Context,
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    classes: Optional[str] = typer.Option(None, "--classes", "-c",
                                          help="Comma-separated class names, or a file with one class per line "
                                               "(a line may list synonyms separated by commas)."),
    method: str = typer.Option("sclip", "--method", "-m", help="Method name (see `ovss methods`)."),
    model: Optional[str] = typer.Option(None, help="Backbone: open_clip model name or model-config JSON "
                                                   "(default: the method's, e.g. ViT-B-16)."),
    pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or local checkpoint file "
                                                        "(default: the method's, e.g. openai)."),
    dataset: Optional[str] = typer.Option(None, help="Use this benchmark's official protocol (voc21, context59, ...)."),
    background: Optional[str] = typer.Option(None, help="Comma-separated words that score the background class."),
    prob_threshold: Optional[float] = typer.Option(None, help="Pixels whose top score is below this become background."),
    output: Path = typer.Option(Path("out"), "--output", "-o", help="Output folder."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    short_side: Optional[int] = typer.Option(None, help="Resize the short side to this many pixels."),
    crop: Optional[int] = typer.Option(None, help="Sliding-window crop in pixels (0: whole image)."),
    stride: Optional[int] = typer.Option(None, help="Sliding-window stride in pixels."),
    precision: Optional[str] = typer.Option(None, help="fp32 (exact, default), bf16 or fp16."),
    batch_size: Optional[int] = typer.Option(None, help="Sliding windows per forward pass."),
) -> None:
    """Segment images with any class names; writes label maps, overlays and JSON reports."""

    def work() -> None:
        from tqdm import tqdm

        from .imageio import list_images, load_image
        from .registry import create_segmenter, flag_options, method_info
        from .segmenter import image_id_kwargs

        method_info(method)
        paths, opts = split_extra([str(p) for p in images] + list(ctx.args), flag_options(method))
        if not paths:
            raise InputError("give at least one image file or folder")
        files = list_images(paths)
        for name, value in (("short_side", short_side), ("crop", crop), ("stride", stride),
                            ("precision", precision), ("batch_size", batch_size)):
            if value is not None:
                opts[name] = value
        if background is not None:
            opts["background"] = background
        vocab = None
        if classes is not None:
            from .vocabulary import parse_classes

            vocab = parse_classes(classes)
        elif dataset is None:
            raise InputError("give the classes to look for with --classes \"cat, sofa, window\" "
                             "(or a class file), or --dataset for a benchmark's class names")
        output.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for name, value in (("model", model), ("pretrained", pretrained)):
            if value is not None:
                opts[name] = value
        with console.status(f"loading {method}"):
            seg = create_segmenter(method, dataset=dataset, device=device, **opts)
        load_s = time.perf_counter() - t0
        stems = _unique_stems(files)
        # decode the next image and write the last results while the model runs
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = pool.submit(load_image, files[0])
            writes = []
            for i, path in enumerate(tqdm(files, desc="segmenting", unit="img", file=sys.stderr,
                                          disable=len(files) < 2)):
                rgb = pending.result()
                if i + 1 < len(files):
                    pending = pool.submit(load_image, files[i + 1])
                t1 = time.perf_counter()
                res = seg.predict(rgb, vocab, prob_threshold=prob_threshold,
                                  **image_id_kwargs(seg, path.stem))
                info = {"image": str(path), "size": [int(rgb.shape[0]), int(rgb.shape[1])],
                        "seconds": round(time.perf_counter() - t1, 3), "load_seconds": round(load_s, 3)}
                writes.append(pool.submit(write_outputs, output, stems[i], rgb, res, info))
            for w in writes:
                w.result()
        console.print(f"wrote {len(files)} result(s) to {output}/ "
                      f"({stems[0]}_labels.png, {stems[0]}_overlay.png, {stems[0]}.json)")

    run_cli(work)


@app.command()
def methods(name: Optional[str] = typer.Argument(None, help="A method: show its protocols and options.")) -> None:
    """List the available methods with their paper; with a NAME, its official protocols and options."""
    from .registry import available_methods, method_class, method_info, method_options

    if name is None:
        table = Table(title="ovss methods (ovss methods NAME: its protocols and options)")
        table.add_column("method", style="bold")
        table.add_column("paper")
        table.add_column("what it does")
        for m in available_methods():
            info = method_info(m)
            table.add_row(m, info.paper, info.summary)
        Console().print(table)
        return

    def show() -> None:
        info = method_info(name)
        datasets = method_class(name).datasets()
        options = method_options(name) or {}
        out = Console()
        out.print(f"[bold]{name}[/]: {info.paper}\n{info.summary}\n")
        out.print(f"official protocols (--dataset): {', '.join(datasets) or 'none'}\n")
        table = Table(title="options (--name value on the command line)")
        table.add_column("option", style="bold")
        table.add_column("default")
        for opt, p in options.items():
            if opt in ("clip", "classes"):
                continue  # Python-only
            default = "required" if p.default is p.empty else repr(p.default)
            table.add_row("--" + opt.replace("_", "-"), default)
        out.print(table)

    run_cli(show)


@app.command("pnp-tune", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                            "help_option_names": []}, add_help_option=False)
def pnp_tune(ctx: typer.Context) -> None:
    """PnP-OVSS label-free tuning: sweep layer, head and mask threshold on unlabelled images with
    the paper's CLIP reward (``ovss pnp-tune --help`` for its options)."""
    from .methods import pnp_ovss_tune

    code = run_cli(lambda: pnp_ovss_tune.main(list(ctx.args)))
    raise typer.Exit(int(code or 0))


def _register_subcommands() -> None:
    import importlib

    for module in ("ovss.evaluation.cli", "ovss.demo", "ovss.zoo_cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
                continue  # that part is not installed in this checkout
            raise
        mod.register(app)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
