"""``ovss prepare``: convert an official dataset release into the layout ``ovss eval`` reads."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import OvssError

EPILOG = """Examples:

  ovss prepare cityscapes --source leftImg8bit_trainvaltest.zip --source gtFine_trainvaltest.zip --out /data/cityscapes

  ovss prepare coco_object --source /data/coco/val2017.zip --source stuffthingmaps_trainval2017.zip --out /data/coco_stuff164k

  ovss prepare ade847 --source /data/ADE20K_2021_17_01 --out /data/ADE20K_2021_17_01

Interrupted runs continue where they stopped (finished files are skipped). Layouts: docs/datasets.md
"""


def register(app: typer.Typer) -> None:
    """Add the ``prepare`` command to ``app`` (the main ``ovss`` typer app)."""

    @app.command("prepare", epilog=EPILOG)
    def prepare_command(
        dataset: str = typer.Argument(..., help="coco_stuff, coco_object, cityscapes, context59, context459, ade20k, "
                                      "ade847, mapillary_vistas"),
        source: list[Path] = typer.Option([], "--source", help="a folder or zip file of the official release "
                                          "(repeatable)"),
        out: Path = typer.Option(..., "--out", help="the data root to write (then ovss eval --data-root OUT)"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
    ) -> None:
        """Convert an official dataset release (folders or zips) into the evaluation layout, resumably."""
        from .prepare import prepare

        try:
            counts = prepare(dataset, source, out, progress=progress)
        except OvssError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2)
        typer.echo(f"{dataset}: {counts['images']} images ({counts['written']} converted, {counts['skipped']} already "
                   f"there) in {out}; next: ovss eval --dataset {dataset} --data-root {out}")
