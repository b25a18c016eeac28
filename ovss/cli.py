"""The ``ovss`` command line: a thin layer over the Python API.

    ovss segment street.jpg --classes "car, road, tree" --method sclip -o out/
    ovss methods
    ovss eval ...      (ovss.evaluation.cli)
    ovss demo ...      (ovss.demo)

Errors from bad input are printed as one line and exit with status 2.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import InputError, OvssError
from .fileio import ensure_output_dir
from .options import FALSE_WORDS, TRUE_WORDS, parse_option_tokens

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
    return flag[2:].replace("-", "_") not in flags or nxt.lower() in TRUE_WORDS + FALSE_WORDS


def split_extra(tokens: list[str], flags: set[str] = frozenset()) -> tuple[list[str], dict[str, str]]:
    """Separate positional tokens from unknown ``--name value`` options (method options).

    click hands unknown options to the variadic IMAGES argument; each ``--name`` takes the next
    token as its value unless that token is another option, or ``name`` is one of the boolean
    ``flags`` and the token is not a boolean word. Values stay text: the method's declared types
    parse them (:func:`ovss.registry.parse_options`).
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
    return positional, parse_option_tokens(options)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog=EXTRA_HELP)
def segment(
    ctx: typer.Context,
    images: List[str] = typer.Argument(..., help="Image files or folders."),
    classes: Optional[str] = typer.Option(None, "--classes", "-c",
                                          help="Comma-separated class names, or @FILE to read a class file (one "
                                               "class per line, synonyms after commas)."),
    classes_file: Optional[Path] = typer.Option(None, "--classes-file",
                                                help="Read the classes from this file (same as --classes @FILE)."),
    method: str = typer.Option("sclip", "--method", "-m", help="Method name (see `ovss methods`)."),
    model: Optional[str] = typer.Option(None, help="Backbone: open_clip model name or model-config JSON "
                                                   "(default: the method's, e.g. ViT-B-16)."),
    pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or local checkpoint file "
                                                        "(default: the method's, e.g. openai)."),
    dataset: Optional[str] = typer.Option(None, help="Use this benchmark's official protocol (voc21, context59, ...)."),
    background: Optional[str] = typer.Option(None, help="Comma-separated words that score the background class."),
    prob_threshold: Optional[float] = typer.Option(None, help="Pixels whose top score is below this become background."),
    output: Path = typer.Option(Path("out"), "--output", "-o",
                                help="Output folder; the input folders are mirrored under it, and it is never "
                                     "searched for input images."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    short_side: Optional[int] = typer.Option(None, help="Resize the short side to this many pixels."),
    crop: Optional[int] = typer.Option(None, help="Sliding-window crop in pixels (0: whole image)."),
    stride: Optional[int] = typer.Option(None, help="Sliding-window stride in pixels."),
    precision: Optional[str] = typer.Option(None, help="fp32 (exact, default), bf16 or fp16."),
    batch_size: Optional[int] = typer.Option(None, help="Sliding windows per forward pass."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels",
                                             help="Largest image accepted, width x height in pixels, checked from "
                                                  "the file header before decoding (default: $OVSS_MAX_PIXELS or "
                                                  "100000000)."),
    fail_fast: bool = typer.Option(False, "--fail-fast",
                                   help="Stop at the first image that cannot be segmented (default: report it, "
                                        "go on with the others and exit with status 2 at the end)."),
) -> None:
    """Segment images with any class names; writes label maps, overlays and JSON reports."""

    def work() -> int:
        from tqdm import tqdm

        from .imageio import find_images, set_max_pixels
        from .outputs import plan_outputs, write_outputs
        from .registry import create_segmenter, method_class, parse_options
        from .segmenter import check_threshold

        # every check on the arguments, the inputs and the output folder comes before the model loads
        cls = method_class(method)
        flags = {name for name, spec in cls.options().items() if spec.is_flag}
        paths, text_opts = split_extra(list(images) + list(ctx.args), flags)
        if not paths:
            raise InputError("give at least one image file or folder")
        set_max_pixels(max_pixels)
        for name, value in (("model", model), ("pretrained", pretrained), ("dataset", dataset), ("device", device),
                            ("short_side", short_side), ("crop", crop), ("stride", stride),
                            ("precision", precision), ("batch_size", batch_size)):
            if value is not None:
                text_opts[name] = str(value)
        opts = parse_options(method, text_opts, from_text=True)
        vocab = cli_classes(classes, classes_file)
        if vocab is None and dataset is None:
            raise InputError("give the classes to look for with --classes \"cat, sofa, window\" "
                             "(or --classes @FILE), or --dataset for a benchmark's class names")
        if background is not None and not cls.capabilities.background:
            raise InputError(f"{method} scores no background words (it has no background class): drop --background")
        if prob_threshold is not None:
            if not cls.capabilities.prob_threshold:
                raise InputError(f"{method} has no background class to send low scores to: drop --prob-threshold")
            check_threshold(prob_threshold, cls.capabilities)
        for p in paths:
            if os.path.abspath(output) == os.path.abspath(p) and Path(p).is_dir():
                raise InputError(f"-o {output} is the input folder: the outputs would mix with the images (and be "
                                 f"segmented next time); use a subfolder such as -o {Path(p) / 'out'}")
        found = find_images(paths, exclude=[output])
        stems = plan_outputs(found, output)
        ensure_output_dir(output, "-o")
        files = [f.path for f in found]

        t0 = time.perf_counter()
        with console.status(f"loading {method}"):
            seg = create_segmenter(method, **opts)
        load_s = time.perf_counter() - t0
        seg.vocabulary(vocab, background, prob_threshold)  # class-list errors once, not once per image
        failed: list[tuple[Path, str]] = []
        written = 0
        # decode the next image (with the method's own decoder) and write the last results while the model runs
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = pool.submit(seg.read_image, files[0])
            writes = []
            bar = tqdm(files, desc="segmenting", unit="img", file=sys.stderr, disable=len(files) < 2)
            for i, path in enumerate(bar):
                t1 = time.perf_counter()
                try:
                    try:
                        rgb = pending.result()
                    finally:
                        if i + 1 < len(files):
                            pending = pool.submit(seg.read_image, files[i + 1])
                    t1 = time.perf_counter()
                    res = seg.predict(rgb, vocab, background=background, prob_threshold=prob_threshold,
                                      image_id=path.stem)
                except OvssError as exc:
                    if len(files) == 1:
                        raise
                    if fail_fast:
                        raise InputError(f"{path}: {exc} (stopped by --fail-fast; nothing written for it)") from None
                    failed.append((path, str(exc)))
                    bar.write(f"skipped {path}: {exc}", file=sys.stderr)
                    continue
                info = {"image": str(path), "size": [int(rgb.shape[0]), int(rgb.shape[1])],
                        "seconds": round(time.perf_counter() - t1, 3), "load_seconds": round(load_s, 3)}
                writes.append((path, pool.submit(write_outputs, output, stems[i], rgb, res, info)))
            for path, w in writes:
                try:
                    w.result()
                    written += 1
                except OSError as exc:  # a full disk, a folder where a file goes: that image has no results
                    if fail_fast or len(files) == 1:
                        raise InputError(f"cannot write the results of {path} in {output}: "
                                         f"{exc.strerror or exc}") from None
                    failed.append((path, f"cannot write its results in {output}: {exc.strerror or exc}"))
        first = next((s for s, f in zip(stems, files) if f not in {p for p, _ in failed}), None)
        if written:
            console.print(f"wrote {written} result(s) to {output}/ "
                          f"({first}_labels.png, {first}_overlay.png, {first}.json)", highlight=False)
        if failed:
            order = {f: k for k, f in enumerate(files)}
            console.print(f"[bold red]error:[/] {len(failed)} of {len(files)} image(s) could not be segmented "
                          "(no results for them):", highlight=False)
            for path, msg in sorted(failed, key=lambda f: order[f[0]]):
                console.print(f"  {path}: {msg}", highlight=False, markup=False)
            return 2
        return 0

    code = run_cli(work)
    if code:
        raise typer.Exit(code)


def cli_classes(classes: str | None, classes_file: Path | None) -> Any:
    """The vocabulary of ``--classes`` (``@FILE`` reads a class file) or ``--classes-file``, or None.

    Raises:
        InputError: both given, or a bad class list or file.
    """
    from .vocabulary import classes_argument, read_classes_file

    if classes is not None and classes_file is not None:
        raise InputError("give the classes once: --classes or --classes-file")
    if classes_file is not None:
        return read_classes_file(classes_file)
    return classes_argument(classes) if classes is not None else None


@app.command()
def methods(name: Optional[str] = typer.Argument(None, help="A method: show its protocols and options.")) -> None:
    """List the available methods with their paper; with a NAME, its official protocols and options."""
    from .registry import available_methods, method_class, method_info

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
        from .segmenter import SCORE_KINDS

        info = method_info(name)
        cls = method_class(name)
        options = cls.options()
        cap = cls.capabilities
        out = Console()
        out.print(f"[bold]{name}[/]: {info.paper}\n{info.summary}\n")
        out.print(f"scores: {cap.score_kind} ({SCORE_KINDS[cap.score_kind]})")
        able = [k for k, v in (("background words", cap.background), ("prob_threshold", cap.prob_threshold),
                               ("panoptic output", cap.panoptic), ("instance output", cap.instance),
                               ("per-image ids", cap.image_id), ("tiled huge photos", cap.tiling),
                               ("ovss train", cap.trainable)) if v]
        out.print(f"capabilities: {', '.join(able) or 'none'}; decodes files with {cap.decoder}; precisions "
                  f"{', '.join(cap.precisions)}" + ("" if cap.class_order_invariant else
                                                  "; scores depend on the class order (see the class docstring; "
                                                  "order-independent: " + ", ".join(
                                                      f"--{k.replace('_', '-')} {v}"
                                                      for k, v in cap.order_invariant_options) + ")"))
        table = Table(title="official protocols (--dataset)")
        table.add_column("dataset", style="bold")
        table.add_column("settings")
        table.add_column("source")
        for ds in cls.datasets():
            row = cls.protocols.get(ds).as_dict()
            source = row.pop("source", "")
            row.pop("dataset", None)
            shown = {k: v for k, v in row.items() if not isinstance(v, (list, dict)) or len(v) <= 4}
            table.add_row(ds, ", ".join(f"{k}={v}" for k, v in shown.items()), source)
        out.print(table)
        table = Table(title="options (--name value on the command line)")
        table.add_column("option", style="bold")
        table.add_column("type")
        table.add_column("default")
        for opt, spec in options.items():
            if opt in ("clip", "classes", "background"):
                continue  # Python-only, or their own CLI flags
            default = "required" if spec.required else repr(spec.default)
            table.add_row("--" + opt.replace("_", "-"), spec.describe(), default)
        out.print(table)

    run_cli(show)


@app.command()
def demo(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: Optional[int] = typer.Option(None, help="Port (default: $GRADIO_SERVER_PORT or the first free "
                                                 "port from 7860)."),
    share: bool = typer.Option(False, "--share", help="Also open a public gradio.live link (needs internet)."),
    model: str = typer.Option("ViT-B-16", help="Default backbone: open_clip model name or model-config JSON."),
    pretrained: Optional[str] = typer.Option("openai", help="Default pretrained tag or local checkpoint file."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    method: str = typer.Option("sclip", "--method", "-m", help="Method selected when the page opens."),
    concurrency: int = typer.Option(1, help="Requests that run at the same time (others wait in the queue)."),
    max_queue: int = typer.Option(16, help="Requests that may wait in the queue; more are turned away."),
    max_models: int = typer.Option(2, help="Models kept loaded between requests (least recently used go)."),
    max_megapixels: float = typer.Option(40.0, help="Largest photo accepted, in megapixels."),
    lock_model: bool = typer.Option(False, "--lock-model",
                                    help="Visitors cannot change model, weights, device or method "
                                         "options (advisable with --share or a public --host)."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir",
                                              help="Folder whose files visitors may name as model, weights or "
                                                   "config (by file name); without it the page loads no file of "
                                                   "this machine, only model names and the defaults given here."),
    max_short_side: int = typer.Option(1024, help="Largest short side (px) visitors may ask for."),
) -> None:
    """Start the web demo: drop a photo, type class names, see the segmentation."""
    def work() -> None:
        from .errors import InputError
        from .registry import method_info

        method_info(method)
        for name, value in (("concurrency", concurrency), ("max-queue", max_queue), ("max-models", max_models)):
            if value < 1:
                raise InputError(f"--{name} must be at least 1, got {value}")
        if not 0 < max_megapixels < float("inf"):
            raise InputError(f"--max-megapixels must be a positive number, got {max_megapixels}")
        if max_short_side < 1:
            raise InputError(f"--max-short-side must be at least 1, got {max_short_side}")
        if importlib.util.find_spec("gradio") is None:
            raise InputError("the demo needs gradio: pip install gradio==6.31.0 gradio_client==2.7.2")
        from .demo.app import DemoConfig, build_demo, launch

        cfg = DemoConfig(model=model, pretrained=pretrained, device=device, method=method,
                         concurrency=concurrency, max_queue=max_queue, max_models=max_models,
                         max_megapixels=max_megapixels, lock_model=lock_model,
                         models_dir=str(models_dir) if models_dir is not None else None,
                         max_short_side=max_short_side)
        page = build_demo(config=cfg)
        try:
            local_url, share_url = launch(page, host=host, port=port, share=share)
        except OSError:
            raise InputError(f"cannot listen on {host}:{port or 'the default port'} (in use, or not an "
                             "address of this machine): pick another --port or --host") from None
        console.print(f"ovss demo running at [bold]{local_url}[/] (Ctrl+C to stop)", highlight=False)
        if share_url:
            console.print(f"public link: [bold]{share_url}[/] (anyone with it can use the demo)",
                          highlight=False)
        if host not in ("127.0.0.1", "localhost", "::1"):
            console.print(f"[yellow]listening on {host}: other machines can reach the demo; "
                          "consider --lock-model[/]", highlight=False)
        try:
            page.block_thread()
        finally:
            page.close()

    run_cli(work)


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

    for module in ("ovss.evaluation.cli", "ovss.data.cli", "ovss.training.cli", "ovss.zoo_cli"):
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
