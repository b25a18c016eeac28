"""``ovss demo``: a web page over the Python API (gradio), for people who do not write code.

    ovss demo                      # http://127.0.0.1:7860
    ovss demo --port 8080 --model ViT-B-16 --pretrained /path/to/open_clip_vit_b16.safetensors
    ovss demo --host 0.0.0.0       # listen on every interface (anyone on the network can use it)

The page itself lives in :mod:`ovss.demo.app` (imported only when the command runs, since
gradio takes seconds to import); this module only adds the command to the CLI.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import typer

__all__ = ["register"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the ``ovss`` typer app (called by :mod:`ovss.cli`)."""

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
    ) -> None:
        """Start the web demo: drop a photo, type class names, see the segmentation."""
        from ..cli import console, run_cli

        def work() -> None:
            from ..errors import InputError
            from ..registry import method_info

            method_info(method)
            for name, value in (("concurrency", concurrency), ("max-queue", max_queue), ("max-models", max_models)):
                if value < 1:
                    raise InputError(f"--{name} must be at least 1, got {value}")
            if max_megapixels <= 0:
                raise InputError(f"--max-megapixels must be positive, got {max_megapixels}")
            if importlib.util.find_spec("gradio") is None:
                raise InputError("the demo needs gradio: pip install gradio==6.31.0 gradio_client==2.7.2")
            from .app import DemoConfig, build_demo, launch

            cfg = DemoConfig(model=model, pretrained=pretrained, device=device, method=method,
                             concurrency=concurrency, max_queue=max_queue, max_models=max_models,
                             max_megapixels=max_megapixels, lock_model=lock_model)
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
            if host not in LOOPBACK:
                console.print(f"[yellow]listening on {host}: other machines can reach the demo; "
                              "consider --lock-model[/]", highlight=False)
            try:
                page.block_thread()
            finally:
                page.close()

        run_cli(work)
