"""``ovss eval``: score a method or a folder of label maps on a benchmark (see ``docs/datasets.md``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import InputError, OvssError
from ..options import parse_key_values

EPILOG = """Examples:

  ovss eval -d voc21 --data-root /data/VOCdevkit/VOC2012 --method sclip --model ViT-B-16 --pretrained openai

  ovss eval -d ade20k --data-root /data/ADEChallengeData2016 --predictions preds/ -o results/

  torchrun --nproc-per-node 8 -m ovss eval -d coco_stuff --data-root /data/coco_stuff164k --method sclip

  ovss eval -d coco_panoptic --data-root /data/coco --method fc_clip --checkpoint fcclip_cocopan.pth   # mIoU + PQ + AP

Dataset layouts: docs/datasets.md
"""


def _parse_options(items: list[str], **named: Any) -> dict[str, Any]:
    """``--set KEY=VALUE`` items (JSON values) plus the named options that were given (not None).

    Raises:
        InputError: an item without ``=``, or a named option also given with ``--set``.
    """
    out = parse_key_values(items, "--set")
    for key, value in named.items():
        if value is None:
            continue
        if key in out:
            raise InputError(f"--{key.replace('_', '-')} is given twice (also as --set {key}=...): keep one")
        out[key] = str(value) if isinstance(value, Path) else value
    return out


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to ``app`` (the main ``ovss`` typer app)."""

    @app.command("eval", epilog=EPILOG)
    def eval_command(
        dataset: str = typer.Option(..., "--dataset", "-d", help="benchmark: voc21, voc20, context60, context59, "
                                    "coco_object, coco_stuff, cityscapes, ade20k, ade847, context459, "
                                    "coco_panoptic, mapillary_vistas"),
        data_root: Path = typer.Option(..., "--data-root", help="folder of the dataset (see docs/datasets.md), "
                                       "e.g. /data/VOCdevkit/VOC2012"),
        method: Optional[str] = typer.Option(None, "--method", "-m", help="method to run with its official "
                                             "protocol for this dataset"),
        model: Optional[str] = typer.Option(None, "--model", help="backbone name or open_clip config (method default "
                                            "when omitted)"),
        pretrained: Optional[str] = typer.Option(None, "--pretrained", help="weights tag or file"),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="the method's trained checkpoint "
                                                  "(FC-CLIP, ZSSeg, ZegFormer; same as --set checkpoint=...)"),
        config: Optional[Path] = typer.Option(None, "--config", help="the checkpoint's official config YAML "
                                              "(same as --set config=...)"),
        predictions: Optional[Path] = typer.Option(None, "--predictions", help="score the PNG label maps in this "
                                                   "folder (named like the images) instead of running a method"),
        panoptic_predictions: Optional[Path] = typer.Option(
            None, "--panoptic-predictions", help="with --predictions: a COCO panoptic prediction JSON (PNGs in the "
            "folder named like it) scored for PQ"),
        panoptic: Optional[bool] = typer.Option(None, "--panoptic/--no-panoptic", help="PQ besides mIoU; default: "
                                                "whenever the dataset has panoptic ground truth and the method "
                                                "panoptic output"),
        instance_predictions: Optional[Path] = typer.Option(
            None, "--instance-predictions", help="with --predictions: a COCO results JSON (RLE masks) scored for "
            "mask AP"),
        instance: Optional[bool] = typer.Option(None, "--instance/--no-instance", help="mask AP besides mIoU; "
                                                "default: whenever the dataset has instance ground truth (a COCO "
                                                "instances JSON) and the method instance output"),
        label_short_side: Optional[int] = typer.Option(
            None, "--label-short-side", help="CLIP-DIY's own protocol: score against labels nearest-resized to this "
            "short side (its official scripts use 448); default: the original label resolution"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N (torchrun: cuda:LOCAL_RANK)"),
        limit: Optional[int] = typer.Option(None, "--limit", help="score only the first N images"),
        output: Optional[Path] = typer.Option(Path("results"), "-o", "--output",
                                              help="folder for <dataset>_<method>.json/.csv and the resume state"),
        name: Optional[str] = typer.Option(None, "--name", help="report name (default: the method, or "
                                           "'predictions')"),
        layout: Optional[str] = typer.Option(None, "--layout", help="force a dataset layout (mmseg, detectron2, "
                                             "catseg); default: detected"),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="continue an interrupted run with the "
                                    "same settings"),
        save_predictions: Optional[Path] = typer.Option(None, "--save-predictions", help="also write each "
                                                        "predicted label map (PNG) here"),
        options: list[str] = typer.Option([], "--set", help="extra method option KEY=VALUE (JSON value), "
                                          "repeatable, e.g. --set prob_threshold=0.2"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
        table: bool = typer.Option(True, "--table/--no-table", help="print the per-class table"),
        max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="largest image decoded, width x height "
                                                 "in pixels, checked from the file header (default: "
                                                 "$OVSS_MAX_PIXELS or 100000000)"),
    ) -> None:
        """Score a method (official protocol) or a folder of label maps on a benchmark: mIoU, mAcc, aAcc,
        fwIoU (and seen/unseen mIoU, hIoU on VOC20, COCO-Stuff and ADE-847), PQ / SQ / RQ on panoptic
        datasets and mask AP (AP, AP50, AP75, APs, APm, APl) where instance ground truth is prepared,
        in percent."""
        from rich.console import Console

        from .runner import evaluate, print_report

        console = Console(stderr=False)
        rank = int(os.environ.get("RANK", "0"))
        try:
            from ..imageio import set_max_pixels

            set_max_pixels(max_pixels)
            result = evaluate(dataset, data_root, method=method, model=model, pretrained=pretrained,
                              predictions=predictions, device=device, limit=limit, output_dir=output, name=name,
                              layout=layout, resume=resume, progress=progress, save_predictions=save_predictions,
                              segmenter_options=_parse_options(options, checkpoint=checkpoint, config=config),
                              panoptic=panoptic, panoptic_predictions=panoptic_predictions,
                              instance=instance, instance_predictions=instance_predictions,
                              label_short_side=label_short_side)
        except OvssError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2)
        except KeyboardInterrupt:
            if rank == 0:
                typer.echo("interrupted: run the same command again to resume"
                           + ("" if output is not None else " (no -o folder: nothing was kept)"), err=True)
            raise typer.Exit(code=130)
        if rank != 0:
            return
        official = result.config.get("num_images_official")
        if official and result.config.get("num_images_split") != official:
            console.print(f"[yellow]warning: {result.config['num_images_split']} images found under {data_root}, "
                          f"the official {result.dataset.name} split has {official}: the numbers are not "
                          "comparable to published ones[/yellow]")
        if table:
            print_report(result, console)
        else:
            summary = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in result.summary().items())
            console.print(f"{result.dataset.name} / {result.name}: {summary}")
            if result.json_path:
                console.print(f"report: {result.json_path}")
        sys.stdout.flush()
