"""``ovss train METHOD``: the trainers on the ``ovss`` command line (one process, or many under torchrun).

    ovss train fc_clip --images DIR --panoptic-json FILE --panoptic-dir DIR --output DIR ...
    ovss train zsseg --images DIR --labels DIR --classes FILE --unseen FILE --output DIR ...
    ovss train zegformer ...
    ovss train zsseg-prompts ...          (ZSSeg's prompt learning, before `ovss train zsseg`)
    ovss train cat_seg --images DIR --labels DIR --output DIR ...
    torchrun --nproc-per-node 8 -m ovss train fc_clip ...

The flags of the former ``python -m ovss.training.*`` programs keep working (``--out``, ``--arch``,
``--clip-model``, ``--clip-pretrained``, ``--class-file``). See docs/training.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

train_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Train FC-CLIP, ZSSeg, ZegFormer or CAT-Seg as their papers did (torchrun for many GPUs).")


def register(app: typer.Typer) -> None:
    """Add the ``train`` command group to the ``ovss`` app."""
    app.add_typer(train_app, name="train")


# -------------------------------------------------------------------- options shared by every trainer

def _engine_opts(output: Path, max_iter: int, batch_size: int, accumulation: int, amp: str, clip_grad: float,
                 checkpoint_period: int, log_period: int, seed: int, resume: bool, workers: int,
                 eval_period: int, progress: bool) -> Any:
    from .engine import EngineConfig

    return EngineConfig(output=str(output), max_iter=max_iter, batch_size=batch_size, accumulation=accumulation,
                        amp=amp, clip_grad=clip_grad, checkpoint_period=checkpoint_period, log_period=log_period,
                        seed=seed, resume=resume, workers=workers, eval_period=eval_period, progress=progress)


def _evaluator(method: str, model: str, pretrained: str, dataset: Optional[str], root: Optional[Path],
               limit: Optional[int], device: Any, output: Path, options: dict[str, Any]
               ) -> Optional[Callable[[Path, int], dict[str, float]]]:
    """Periodic evaluation through ``ovss.evaluation.runner.evaluate`` (the code of ``ovss eval``), on
    every rank (the runner splits the images over the process group)."""
    if dataset is None:
        return None

    def run(checkpoint: Path, iteration: int) -> dict[str, float]:
        from ..evaluation.runner import evaluate
        from ..registry import create_segmenter

        seg = create_segmenter(method, model=model, pretrained=pretrained, checkpoint=str(checkpoint),
                               dataset=dataset, device=str(device), **options)
        res = evaluate(dataset, root, segmenter=seg, device=str(device), limit=limit,
                       output_dir=output / "eval" / f"iter_{iteration:07d}", resume=False, progress=False)
        m = res.metrics
        return {k: float(v) for k, v in vars(m).items() if isinstance(v, (int, float))}

    return run


def _eval_options(items: List[str]) -> dict[str, Any]:
    """``--eval-set KEY=VALUE`` items, read as ``ovss eval --set`` reads its items."""
    from ..options import parse_key_values

    return parse_key_values(items, "--eval-set")


EVAL_SET_HELP = "Extra method option of the evaluation, KEY=VALUE (JSON value), repeatable (as `ovss eval --set`)."


def _run(build: Callable[[Any], Any], engine_cfg: Any, device: str,
         evaluator: Callable[[Any, Any], Optional[Callable[[Path, int], dict[str, float]]]] | None = None) -> None:
    from .engine import setup_distributed, teardown_distributed, train

    info = setup_distributed(device)
    try:
        task = build(info)
        evaluate = evaluator(task, info) if evaluator is not None else None
        path = train(task, engine_cfg, info, evaluate=evaluate)
        if info.is_main:
            typer.echo(f"wrote {path}")
    finally:
        teardown_distributed(info)


def _run_cli(fn: Callable[[], None]) -> None:
    from ..cli import run_cli

    run_cli(fn)


OUTPUT = typer.Option(..., "--output", "--out", "-o", help="Folder for checkpoints (*.pth), last_checkpoint, metrics.jsonl.")
BATCH_HELP = "Global batch (all GPUs and accumulation steps together), as the recipe states it."


# ---------------------------------------------------------------------------------------- fc_clip

@train_app.command("fc_clip")
def fc_clip(
    images: Path = typer.Option(..., help="Image folder (e.g. coco/train2017)."),
    panoptic_json: Path = typer.Option(..., help="Panoptic JSON (e.g. annotations/panoptic_train2017.json)."),
    panoptic_dir: Path = typer.Option(..., help="Panoptic PNG folder (e.g. panoptic_train2017)."),
    output: Path = OUTPUT,
    model: str = typer.Option("convnext_large_d_320", help="open_clip CLIP name or model-config JSON."),
    pretrained: str = typer.Option("laion2b_s29b_b131k_ft_soup", help="open_clip tag or local weights."),
    init_backbone: Optional[Path] = typer.Option(None, help="CLIP weights file to start from (replaces --pretrained)."),
    config: Optional[Path] = typer.Option(None, help="Official detectron2 YAML or dotted-key JSON of the head sizes."),
    classes: Optional[Path] = typer.Option(None, "--classes", "--class-file",
                                           help="Class file for a non-COCO dataset: one class per line in category "
                                                "order, synonyms after commas."),
    init: Optional[Path] = typer.Option(None, help="Initialise the head from an FC-CLIP checkpoint."),
    max_iter: int = typer.Option(368750, help="Optimiser steps (the paper: 368,750 = 50 COCO epochs)."),
    steps: Optional[List[int]] = typer.Option(None, help="LR decay iterations (default 327778 355092, scaled with --max-iter)."),
    batch_size: int = typer.Option(16, help=BATCH_HELP),
    accumulation: int = typer.Option(1, help="Micro-batches per GPU and step (per-GPU batch = batch / GPUs / this)."),
    lr: float = typer.Option(1e-4), weight_decay: float = typer.Option(0.05),
    clip_grad: float = typer.Option(0.01, help="Full-model gradient-norm clip (0: off)."),
    image_size: int = typer.Option(1024, help="LSJ crop size."),
    num_points: int = typer.Option(12544, help="Points per mask for matching and the mask losses."),
    amp: str = typer.Option("off", help="Mixed precision: off, bf16 or fp16 (the paper: AMP on GPU)."),
    checkpoint_period: int = typer.Option(5000), log_period: int = typer.Option(20),
    workers: int = typer.Option(4, help="Data-loader processes per GPU."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (cuda:LOCAL_RANK under torchrun)."),
    seed: int = typer.Option(0), resume: bool = typer.Option(False, help="Continue from last_checkpoint in --output."),
    eval_dataset: Optional[str] = typer.Option(None, help="Evaluate on this benchmark (as `ovss eval`) while training."),
    eval_root: Optional[Path] = typer.Option(None, help="--data-root of --eval-dataset."),
    eval_period: int = typer.Option(0, help="Evaluate every this many iterations (and at the end)."),
    eval_limit: Optional[int] = typer.Option(None, help="Evaluate on the first N images only."),
    eval_set: List[str] = typer.Option([], "--eval-set", help=EVAL_SET_HELP),
    progress: bool = typer.Option(True, help="Progress bar (rank 0)."),
) -> None:
    """Train FC-CLIP's head on COCO panoptic (or your COCO-panoptic-format data)."""

    def work() -> None:
        from .fc_clip_train import FCCLIPOptions, FCCLIPTask

        opts = FCCLIPOptions(images=str(images), panoptic_json=str(panoptic_json), panoptic_dir=str(panoptic_dir),
                             model=model, pretrained=pretrained,
                             init_backbone=str(init_backbone) if init_backbone else None,
                             config=str(config) if config else None, classes=str(classes) if classes else None,
                             init=str(init) if init else None, image_size=image_size, num_points=num_points, lr=lr,
                             weight_decay=weight_decay, steps=tuple(steps) if steps else None, max_iter=max_iter,
                             seed=seed, device=device)
        cfg = _engine_opts(output, max_iter, batch_size, accumulation, amp, clip_grad, checkpoint_period,
                           log_period, seed, resume, workers, eval_period, progress)

        def build(info: Any) -> Any:
            from .engine import last_checkpoint, read_checkpoint

            saved = None
            ck = last_checkpoint(output) if resume else None
            if ck is not None:
                saved = read_checkpoint(ck).get("fcclip_config")
            return FCCLIPTask(opts, info.device, resume_config=saved)

        def evaluator(task: Any, info: Any) -> Any:
            return _evaluator("fc_clip", model, str(init_backbone or pretrained), eval_dataset, eval_root, eval_limit,
                              info.device, output, _eval_options(eval_set))

        _run(build, cfg, device, evaluator)

    _run_cli(work)


# ------------------------------------------------------------------------------ zsseg / zegformer

def _maskformer(method: str, images: Path, labels: Path, classes: Optional[Path], unseen: Optional[Path],
                output: Path, model: str, pretrained: str, config: Optional[Path], prompt: str,
                prompt_checkpoint: Optional[Path], init_backbone: Optional[Path], max_iter: int, batch_size: int,
                accumulation: int, lr: float, weight_decay: float, backbone_multiplier: float, clip_grad: float,
                crop_size: int, min_sizes: Optional[List[int]], max_size: int, color_aug: bool,
                single_category_max_area: float, amp: str, checkpoint_period: int, log_period: int, workers: int,
                device: str, seed: int, resume: bool, eval_dataset: Optional[str], eval_root: Optional[Path],
                eval_period: int, eval_limit: Optional[int], eval_set: List[str], progress: bool) -> None:
    def work() -> None:
        from .maskformer_train import ProposalTrainer, TrainConfig, read_arch, read_names

        names = read_names(classes) if classes else []
        if unseen is not None:
            unseen_names = read_names(unseen)
        elif classes is not None:
            unseen_names = []  # own data: every class is seen unless --unseen says otherwise
        else:
            from ..methods.zsseg import COCO_STUFF_UNSEEN

            unseen_names = list(COCO_STUFF_UNSEEN)
        tc = TrainConfig(method=method, images=str(images), labels=str(labels), out=str(output), class_names=names,
                         unseen=unseen_names, arch=read_arch(config) if config else {}, clip_model=model,
                         clip_pretrained=pretrained, prompt=prompt,
                         prompt_checkpoint=str(prompt_checkpoint) if prompt_checkpoint else "",
                         init_backbone=str(init_backbone) if init_backbone else "", max_iter=max_iter,
                         batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         backbone_lr_multiplier=backbone_multiplier, clip_grad=clip_grad, crop_size=crop_size,
                         min_sizes=list(min_sizes) if min_sizes else [int(x * 0.1 * crop_size) for x in range(5, 16)],
                         max_size=max_size, color_aug_ssd=color_aug, single_category_max_area=single_category_max_area,
                         checkpoint_period=checkpoint_period, seed=seed, device=device)
        cfg = _engine_opts(output, max_iter, batch_size, accumulation, amp, clip_grad, checkpoint_period,
                           log_period, seed, resume, workers, eval_period, progress)

        def build(info: Any) -> Any:
            tc.device = str(info.device)
            return ProposalTrainer(tc)

        def evaluator(task: Any, info: Any) -> Any:
            return _evaluator(method, model, pretrained, eval_dataset, eval_root, eval_limit, info.device, output,
                              _eval_options(eval_set))

        _run(build, cfg, device, evaluator)

    _run_cli(work)


def _maskformer_command(method: str, paper: str) -> None:
    @train_app.command(method, help=f"Train {paper}'s proposal network (MaskFormer) on the seen classes.")
    def command(
        images: Path = typer.Option(..., help="Image folder."),
        labels: Path = typer.Option(..., help="Label PNG folder (class ids in --classes order, 255 = ignore)."),
        classes: Optional[Path] = typer.Option(None, help="Class file, one per line in label-id order "
                                                          "(default: COCO-Stuff-171)."),
        unseen: Optional[Path] = typer.Option(None, help="Classes left out of training, one per line (default: the "
                                                         "15 COCO-Stuff unseen classes when --classes is not given)."),
        output: Path = OUTPUT,
        model: str = typer.Option("ViT-B-16", "--model", "--clip-model", help="open_clip CLIP name or config JSON."),
        pretrained: str = typer.Option("openai", "--pretrained", "--clip-pretrained", help="open_clip tag or weights."),
        config: Optional[Path] = typer.Option(None, "--config", "--arch",
                                              help="Architecture: dotted-key JSON (e.g. *_tiny_config.json) or the "
                                                   "official YAML."),
        prompt: str = typer.Option("", help="ZSSeg: learnable / vild / single; ZegFormer: imagenet_select / single."),
        prompt_checkpoint: Optional[Path] = typer.Option(None, help="ZSSeg: learned prompts (ovss train zsseg-prompts)."),
        init_backbone: Optional[Path] = typer.Option(None, help="ResNet weights (.pth/.safetensors, detectron2 names)."),
        max_iter: int = typer.Option(60000), batch_size: int = typer.Option(32, help=BATCH_HELP),
        accumulation: int = typer.Option(1, help="Micro-batches per GPU and step."),
        lr: float = typer.Option(1e-4), weight_decay: float = typer.Option(1e-4),
        backbone_multiplier: float = typer.Option(0.1, help="Backbone lr factor."),
        clip_grad: float = typer.Option(0.01, help="Full-model gradient-norm clip (0: off)."),
        crop_size: int = typer.Option(640, help="Training crop (and padding) size."),
        min_sizes: Optional[List[int]] = typer.Option(None, help="Short sides to choose from (default 0.5..1.5 x crop)."),
        max_size: int = typer.Option(2560),
        color_aug: bool = typer.Option(True, help="SSD colour augmentation."),
        single_category_max_area: float = typer.Option(1.0, help="Crop rule: max area share of one class (1: off)."),
        amp: str = typer.Option("off", help="off, bf16 or fp16."),
        checkpoint_period: int = typer.Option(5000), log_period: int = typer.Option(20),
        workers: int = typer.Option(4, help="Data-loader processes per GPU."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        seed: int = typer.Option(0), resume: bool = typer.Option(False, help="Continue from last_checkpoint."),
        eval_dataset: Optional[str] = typer.Option(None, help="Evaluate on this benchmark while training."),
        eval_root: Optional[Path] = typer.Option(None), eval_period: int = typer.Option(0),
        eval_limit: Optional[int] = typer.Option(None),
        eval_set: List[str] = typer.Option([], "--eval-set", help=EVAL_SET_HELP), progress: bool = typer.Option(True),
    ) -> None:
        _maskformer(method, images, labels, classes, unseen, output, model, pretrained, config, prompt,
                    prompt_checkpoint, init_backbone, max_iter, batch_size, accumulation, lr, weight_decay,
                    backbone_multiplier, clip_grad, crop_size, min_sizes, max_size, color_aug,
                    single_category_max_area, amp, checkpoint_period, log_period, workers, device, seed, resume,
                    eval_dataset, eval_root, eval_period, eval_limit, eval_set, progress)


_maskformer_command("zsseg", "ZSSeg")
_maskformer_command("zegformer", "ZegFormer")


@train_app.command("zsseg-prompts")
def zsseg_prompts(
    images: Path = typer.Option(..., help="Image folder."),
    labels: Path = typer.Option(..., help="Label PNG folder (class ids in --classes order, 255 = ignore)."),
    classes: Optional[Path] = typer.Option(None, help="Class file (default: COCO-Stuff-171)."),
    unseen: Optional[Path] = typer.Option(None, help="Classes left out (default: COCO-Stuff's 15 without --classes)."),
    output: Path = OUTPUT,
    model: str = typer.Option("ViT-B-16", "--model", "--clip-model"),
    pretrained: str = typer.Option("openai", "--pretrained", "--clip-pretrained"),
    prompt_length: int = typer.Option(16, help="Learned prefix tokens (PROMPT_SHAPE[0])."),
    sample_per_class: int = typer.Option(32, help="(image, class) samples per class (COCO 32, VOC 128)."),
    max_iter: int = typer.Option(16000), batch_size: int = typer.Option(32, help=BATCH_HELP),
    accumulation: int = typer.Option(1), lr: float = typer.Option(0.02),
    amp: str = typer.Option("off"), checkpoint_period: int = typer.Option(1000), log_period: int = typer.Option(20),
    workers: int = typer.Option(4), device: str = typer.Option("auto"), seed: int = typer.Option(0),
    resume: bool = typer.Option(False), progress: bool = typer.Option(True),
) -> None:
    """ZSSeg prompt learning (stage 1): learn the prompt prefix on ground-truth masks of the seen classes."""

    def work() -> None:
        from .maskformer_train import PromptConfig, PromptTrainer, read_names

        names = read_names(classes) if classes else []
        if unseen is not None:
            unseen_names = read_names(unseen)
        elif classes is not None:
            unseen_names = []
        else:
            from ..methods.zsseg import COCO_STUFF_UNSEEN

            unseen_names = list(COCO_STUFF_UNSEEN)
        pc = PromptConfig(images=str(images), labels=str(labels), class_names=names, unseen=unseen_names,
                          clip_model=model, clip_pretrained=pretrained, prompt_shape=(prompt_length, 0),
                          sample_per_class=sample_per_class, lr=lr, max_iter=max_iter, seed=seed, device=device)
        cfg = _engine_opts(output, max_iter, batch_size, accumulation, amp, 0.0, checkpoint_period, log_period, seed,
                           resume, workers, 0, progress)

        def build(info: Any) -> Any:
            pc.device = str(info.device)
            return PromptTrainer(pc)

        _run(build, cfg, device)

    _run_cli(work)


# ---------------------------------------------------------------------------------------- cat_seg

@train_app.command("cat_seg")
def cat_seg(
    images: Path = typer.Option(..., help="Image folder (COCO-Stuff: coco-stuff/images/train2017)."),
    labels: Path = typer.Option(..., help="Label PNG folder (COCO-Stuff: coco-stuff/annotations_detectron2/train2017 "
                                          "of CAT-Seg's prepare_coco_stuff.py; ids in class order, 255 = ignore)."),
    classes: Optional[Path] = typer.Option(None, "--classes", "--class-file",
                                           help="Class file (one per line, or an official .json list); default "
                                                "COCO-Stuff-171 (datasets/coco.json)."),
    output: Path = OUTPUT,
    model: Optional[str] = typer.Option(None, "--model", "--clip-model",
                                        help="CLIP architecture (open_clip name or config JSON); default: the "
                                             "config's CLIP_PRETRAINED (ViT-B/16)."),
    pretrained: str = typer.Option("openai", "--pretrained", "--clip-pretrained",
                                   help="CLIP weights to start from (open_clip tag or file)."),
    config: Optional[Path] = typer.Option(None, help="Official YAML (configs/vitb_384.yaml, vitl_336.yaml) or JSON."),
    init: Optional[Path] = typer.Option(None, help="Start from a CAT-Seg checkpoint (official key layout)."),
    max_iter: int = typer.Option(80000, help="Optimiser steps (MAX_ITER; the cosine schedule's length)."),
    batch_size: int = typer.Option(4, help=BATCH_HELP),
    accumulation: int = typer.Option(1, help="Micro-batches per GPU and step."),
    lr: float = typer.Option(2e-4, help="BASE_LR."), weight_decay: float = typer.Option(1e-4),
    clip_multiplier: float = typer.Option(0.01, help="lr factor of the CLIP parameters (CLIP_MULTIPLIER)."),
    clip_finetune: str = typer.Option("attention", help="CLIP weights that train: attention (q/v projections), "
                                                        "full or none."),
    pooling_size: Optional[List[int]] = typer.Option(None, help="Class-aggregation pooling (default: the config's, 2 2)."),
    warmup_iters: int = typer.Option(0), warmup_factor: float = typer.Option(1.0),
    clip_grad: float = typer.Option(0.01, help="Full-model gradient-norm clip (0: off)."),
    crop_size: int = typer.Option(384, help="Training crop and padding size."),
    min_sizes: Optional[List[int]] = typer.Option(None, help="Short sides to choose from (default 384)."),
    max_size: int = typer.Option(1333),
    color_aug: bool = typer.Option(True, help="SSD colour augmentation."),
    single_category_max_area: float = typer.Option(1.0, help="Crop rule: max area share of one class (1: off)."),
    amp: str = typer.Option("off", help="off, bf16 or fp16 (the paper: float32 with TF32 matmuls)."),
    checkpoint_period: int = typer.Option(5000), log_period: int = typer.Option(20),
    workers: int = typer.Option(4, help="Data-loader processes per GPU."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0), resume: bool = typer.Option(False, help="Continue from last_checkpoint."),
    eval_dataset: Optional[str] = typer.Option(None, help="Evaluate on this benchmark while training (e.g. ade20k)."),
    eval_root: Optional[Path] = typer.Option(None), eval_period: int = typer.Option(0),
    eval_limit: Optional[int] = typer.Option(None),
    eval_set: List[str] = typer.Option([], "--eval-set", help=EVAL_SET_HELP), progress: bool = typer.Option(True),
) -> None:
    """Train CAT-Seg on COCO-Stuff-171 (or your data) as the official code does (docs/cat_seg.md)."""

    def work() -> None:
        from .cat_seg_train import CATSegTask, CATSegTrainOptions

        opts = CATSegTrainOptions(images=str(images), labels=str(labels), classes=str(classes) if classes else None,
                                  model=model, pretrained=pretrained, config=str(config) if config else None,
                                  init=str(init) if init else None,
                                  pooling_size=tuple(pooling_size) if pooling_size else None,  # type: ignore[arg-type]
                                  clip_finetune=clip_finetune, lr=lr, weight_decay=weight_decay,
                                  clip_multiplier=clip_multiplier, warmup_iters=warmup_iters,
                                  warmup_factor=warmup_factor, max_iter=max_iter,
                                  min_sizes=tuple(min_sizes) if min_sizes else (crop_size,), max_size=max_size,
                                  crop_size=crop_size, color_aug_ssd=color_aug,
                                  single_category_max_area=single_category_max_area, seed=seed)
        cfg = _engine_opts(output, max_iter, batch_size, accumulation, amp, clip_grad, checkpoint_period,
                           log_period, seed, resume, workers, eval_period, progress)

        def build(info: Any) -> Any:
            opts.device = str(info.device)
            return CATSegTask(opts, info.device)

        def evaluator(task: Any, info: Any) -> Any:
            extra = {**({"config": str(config)} if config else {}), **_eval_options(eval_set)}
            return _evaluator("cat_seg", task.opts.model or task.settings.clip_pretrained, "", eval_dataset,
                              eval_root, eval_limit, info.device, output, extra)

        _run(build, cfg, device, evaluator)

    _run_cli(work)


def run_subcommand(name: str, argv: Optional[list[str]]) -> int:
    """Run ``ovss train NAME ARGV`` in this process and return its exit status (the old module entry points)."""
    import sys

    from typer.main import get_command

    args = list(sys.argv[1:]) if argv is None else list(argv)
    # the old programs' "--steps 1 2" form: typer takes one value per --steps
    fixed: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--steps":
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                fixed += ["--steps", args[i]]
                i += 1
            continue
        fixed.append(args[i])
        i += 1
    cmd = get_command(train_app)
    try:
        code = cmd.main([name, *fixed], prog_name="ovss train", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except SystemExit as exc:
        return int(exc.code or 0)
    return int(code) if isinstance(code, int) else 0
