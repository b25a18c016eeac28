"""``ovss models``, ``ovss download`` and ``ovss convert``: the model zoo on the command line.

    ovss models                      # every released checkpoint: method, size, paper numbers, downloaded?
    ovss models fcclip_cocopan       # one entry: sources, checksum, config, protocols, all numbers
    ovss download fcclip_cocopan     # into $TORCH_HOME/hub/checkpoints, resumable, verified
    ovss convert fcclip_cocopan      # a safetensors copy that the zoo uses from then on
    ovss convert model.pth model.safetensors
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import OvssError


def _run(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except OvssError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted (run the same command again to resume)")
        raise typer.Exit(130) from None


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "?"


def register(app: typer.Typer) -> None:
    """Add ``models``, ``download`` and ``convert`` to ``app`` (the main ``ovss`` typer app)."""

    @app.command("models")
    def models(name: Optional[str] = typer.Argument(None, help="A zoo name: show everything about it."),
               method: Optional[str] = typer.Option(None, "--method", "-m", help="only this method's models")) -> None:
        """List the released checkpoints ovss can download by name (--checkpoint NAME)."""
        from . import zoo

        def show() -> None:
            out = Console()
            if name is not None:
                _detail(out, zoo.get(name))
                return
            table = Table(title=f"ovss model zoo (files in {zoo.cache_dir()}; `ovss models NAME` for details)")
            table.add_column("name", style="bold", no_wrap=True)
            for col in ("method", "CLIP / backbone", "size", "paper"):
                table.add_column(col)
            table.add_column("here", no_wrap=True)
            for entry in zoo.MODELS.values():
                if method and entry.method != method:
                    continue
                st = zoo.status(entry)
                backbone = " / ".join(str(entry.fills[k]) for k in ("model", "pretrained", "saliency_model", "proxy_model")
                                      if k in entry.fills)
                size = _size(st["size"]) if st["size"] is not None else (entry.approx_size or "?")
                table.add_row(entry.name, entry.method, backbone, size, entry.headline() or "-",
                              "yes" if st["path"] is not None else "-")
            out.print(table)

        _run(show)

    @app.command("download")
    def download(names: List[str] = typer.Argument(..., help="zoo names (see `ovss models`)"),
                 convert: bool = typer.Option(False, "--convert", help="also write a safetensors copy, used from then on"),
                 verify: bool = typer.Option(False, "--verify", help="re-check the SHA-256 of files already downloaded"),
                 quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar")) -> None:
        """Download released checkpoints into the hub cache ($TORCH_HOME/hub/checkpoints): resumable,
        checked against the publisher's SHA-256 or the one recorded on the first download."""
        from . import zoo
        from .checkpoints import convert_to_safetensors
        from .download import verify_file

        def go() -> None:
            out = Console()
            for n in names:
                entry = zoo.get(n)
                cached = zoo.local_path(entry)
                if cached is not None and verify:
                    st = zoo.status(entry)
                    if cached.suffix == ".safetensors" and cached == zoo.converted_path(entry):
                        out.print(f"{n}: {cached} is the converted copy (its source's checksum was checked "
                                  "when it was downloaded)")
                    else:
                        digest = verify_file(cached, sha256=st["sha256"], size=None, what=str(cached))
                        out.print(f"{n}: {cached} OK (sha256 {digest}, {st['sha256_from']})")
                    continue
                path = zoo.fetch(n, progress=not quiet)
                st = zoo.status(entry)
                note = {"publisher": "matches the publisher's SHA-256",
                        "recorded": "SHA-256 recorded (checked on every later download)"}.get(st["sha256_from"], "")
                out.print(f"{n}: {path} ({_size(path.stat().st_size)}{'; ' + note if note else ''})")
                if convert and path != zoo.converted_path(entry):
                    meta = convert_to_safetensors(path, zoo.converted_path(entry))
                    out.print(f"{n}: safetensors copy {zoo.converted_path(entry)} ({meta['tensors']} tensors)")

        _run(go)

    @app.command("convert")
    def convert(src: str = typer.Argument(..., help="a checkpoint file (.pth/.pt/.bin/.pkl) or a zoo name"),
                dst: Optional[Path] = typer.Argument(None, help="output .safetensors (default: beside the input; "
                                                     "for a zoo name, the copy the zoo uses)")) -> None:
        """Turn a released checkpoint into safetensors once (no pickle is read again after that). The
        state dict is kept with its plain-data entries (iteration, config, detectron2 versions) as
        metadata; optimizer states are dropped."""
        from . import zoo
        from .checkpoints import convert_to_safetensors

        def go() -> None:
            if zoo.is_zoo_name(src):
                entry = zoo.get(src)
                path = zoo.fetch(src)
                out_path = dst or zoo.converted_path(entry)
            else:
                path = Path(src)
                out_path = dst or path.with_suffix(".safetensors")
            if Path(out_path).resolve() == Path(path).resolve():
                Console().print(f"{path} is already safetensors")
                return
            meta = convert_to_safetensors(path, out_path)
            Console().print(f"wrote {out_path}: {meta['tensors']} tensors from {path.name} "
                            f"(sha256 {meta['ovss_source_sha256'][:16]}...)")

        _run(go)


def _detail(out: Console, entry) -> None:  # type: ignore[no-untyped-def]
    from . import zoo

    st = zoo.status(entry)
    out.print(f"[bold]{entry.name}[/]: {entry.title}")
    out.print(f"method {entry.method}: pass it as --{entry.option.replace('_', '-')} {entry.name} "
              f"({entry.option}=\"{entry.name}\")")
    if entry.fills:
        out.print("fills (unless given): " + ", ".join(f"{k}={v!r}" for k, v in entry.fills.items()))
    if entry.official_config:
        out.print(f"official config: {entry.official_config}")
    if entry.protocols:
        out.print(f"protocols (--dataset): {', '.join(entry.protocols)}")
    for i, src in enumerate(entry.sources):
        sha = src.sha256 or "not published"
        size = _size(src.size) if src.size is not None else (entry.approx_size or "not published")
        out.print(f"source {i + 1} ({src.kind}): {src.url}\n    file {src.cache_name}, size {size}, sha256 {sha}")
    if st["path"] is not None:
        out.print(f"downloaded: {st['path']} ({_size(st['size'])}; sha256 {st['sha256'] or '?'}: {st['sha256_from']})")
    else:
        out.print(f"not downloaded (ovss download {entry.name}; goes to {zoo.cache_dir()})")
    if entry.paper:
        out.print("paper: " + ", ".join(f"{k} {v:.1f}" for k, v in entry.paper.items()))
    out.print(f"facts from: {entry.source}")
    if entry.notes:
        out.print(f"note: {entry.notes}")
