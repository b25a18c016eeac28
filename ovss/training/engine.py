"""The training loop shared by every trainer: torch.distributed, gradient accumulation, AMP, exact
resume, checkpoints, logs and progress.

Design (what makes runs reproducible across world sizes and interruptions):

* **One sample stream.** The training order is an endless concatenation of permutations of the
  dataset, epoch ``e`` shuffled by ``torch.randperm(n, generator=manual_seed(seed + e))`` (detectron2's
  ``TrainingSampler`` is an endless shuffled stream too, ``data/samplers/distributed_sampler.py``).
  Iteration ``i`` consumes stream positions ``[i G, (i + 1) G)`` with ``G`` the global batch; the
  micro-batch ``a`` of rank ``r`` takes the ``b`` positions starting at ``i G + (a W + r) b``
  (``b`` per-rank batch, ``W`` world size, ``G = b W A`` with ``A`` accumulation steps). So 2 ranks
  x batch 2, 1 rank x batch 4 and 1 rank x batch 2 x 2 accumulation steps see the same images, and
  the sampler position after a resume is a function of the iteration alone.
* **Per-sample randomness.** Augmentations (and FC-CLIP's point sampling) draw from generators
  seeded by ``(seed, stream position)`` (:func:`ovss.training.augment.sample_random`), not from
  per-worker global state. The global torch/numpy/Python RNGs are reseeded from
  ``(seed, iteration, rank)`` before every iteration (dropout); their states are also saved.
* **Losses as the official criteria normalise them.** Mask losses are divided by the number of
  target masks of the whole global batch over ``W A`` (Mask2Former/MaskFormer ``SetCriterion``:
  ``all_reduce(num_masks) / world_size``; accumulation steps count as ranks), each micro-batch loss
  is scaled by ``1 / A`` and DDP averages gradients over ranks.
* **Checkpoints** (rank 0 only, atomic: temporary file + ``os.replace``) hold the model in the
  official key layout plus optimizer, scheduler, grad scaler, iteration, RNG states and the sampler
  position; they are read back with :func:`ovss.checkpoints.read_checkpoint` (no code runs from a file).

Run under ``torchrun --nproc-per-node N`` (Gloo on CPU, NCCL on GPU); a plain process is world 1.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import DatasetError, InputError, ModelLoadError

# ---------------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    """This process's place in the job (world 1 without torchrun).

    Attributes:
        rank, world_size, local_rank: torch.distributed coordinates.
        device: this rank's device (``cuda:LOCAL_RANK`` for CUDA).
        backend: "gloo", "nccl" or None (one process).
        owns_group: whether :func:`setup_distributed` created the process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun job described by ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (NCCL for CUDA,
    Gloo for CPU), or return world 1.

    Args:
        device: "auto" (CUDA when available), "cpu", "cuda" (= ``cuda:LOCAL_RANK``) or "cuda:K".

    Raises:
        InputError: CUDA asked for but absent, or the process group cannot start.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    d = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        dev = torch.device(f"cuda:{local}") if d == "cuda" else torch.device(d)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(d)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, dist.get_backend(), False)
    if world <= 1:
        return DistInfo(0, 1, local, dev, None, False)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend=backend)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"cannot start torch.distributed ({backend}) with WORLD_SIZE={world}: {exc}; "
                         "launch with torchrun") from None
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, backend, True)


def teardown_distributed(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sum float values over ranks (float64 on CPU for Gloo, on the GPU for NCCL)."""
    if info.world_size == 1:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64,
                     device=info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        all_reduce_sum([0.0], info)


# -------------------------------------------------------------------------------- sample stream


class SampleStream:
    """The endless training order: permutation ``e`` of ``range(size)`` for epoch ``e``.

    Args:
        size: dataset size (> 0).
        seed: base seed; epoch ``e`` uses ``torch.Generator().manual_seed(seed + e)``.
        shuffle: False gives ``0, 1, ..., size - 1`` every epoch.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        if size <= 0:
            raise DatasetError("the training set is empty")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self._perm: dict[int, list[int]] = {}

    def index(self, position: int) -> int:
        """Dataset index at stream ``position`` (>= 0)."""
        epoch, k = divmod(position, self.size)
        if not self.shuffle:
            return k
        perm = self._perm.get(epoch)
        if perm is None:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.size, generator=g).tolist()
            self._perm = {epoch: perm}  # one epoch cached: positions are read in order
        return perm[k]


@dataclass(frozen=True)
class BatchLayout:
    """How one optimiser step's global batch splits over ranks and accumulation steps.

    Attributes:
        global_batch: images per optimiser step (the recipe's ``IMS_PER_BATCH``).
        world_size: ranks.
        accumulation: micro-batches per rank and step.
    """

    global_batch: int
    world_size: int = 1
    accumulation: int = 1

    def __post_init__(self) -> None:
        if self.global_batch <= 0 or self.accumulation <= 0:
            raise InputError("--batch-size and --accumulation must be positive")
        if self.global_batch % (self.world_size * self.accumulation):
            raise InputError(f"--batch-size {self.global_batch} is not divisible by world size {self.world_size} "
                             f"x --accumulation {self.accumulation}")

    @property
    def per_rank(self) -> int:
        """Images per forward pass on one rank."""
        return self.global_batch // (self.world_size * self.accumulation)

    def positions(self, iteration: int, micro: int, rank: int) -> list[int]:
        """Stream positions of micro-batch ``micro`` of ``rank`` at ``iteration``."""
        start = iteration * self.global_batch + (micro * self.world_size + rank) * self.per_rank
        return list(range(start, start + self.per_rank))


class _PositionData(torch.utils.data.Dataset):
    def __init__(self, load: Callable[[int], Any]) -> None:
        self.load = load

    def __getitem__(self, position: int) -> Any:
        return self.load(position)

    def __len__(self) -> int:  # never used for sampling
        return 1 << 62


class _PositionBatches(torch.utils.data.Sampler):
    def __init__(self, layout: BatchLayout, rank: int, start: int, stop: int) -> None:
        self.layout, self.rank, self.start, self.stop = layout, rank, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.stop):
            for a in range(self.layout.accumulation):
                yield self.layout.positions(it, a, self.rank)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.layout.accumulation


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def micro_batches(load: Callable[[int], Any], layout: BatchLayout, rank: int, start: int, stop: int,
                  workers: int = 0) -> Iterator[list[Any]]:
    """Loaded micro-batches of ``rank`` for iterations ``start .. stop - 1`` in order
    (``accumulation`` lists per iteration), through a DataLoader with ``workers`` processes."""
    loader = torch.utils.data.DataLoader(_PositionData(load), batch_sampler=_PositionBatches(layout, rank, start, stop),
                                         num_workers=workers, collate_fn=_collate, persistent_workers=False)
    return iter(loader)


def seed_iteration(seed: int, iteration: int, rank: int) -> None:
    """Reseed torch, numpy and Python from ``(seed, iteration, rank)`` (dropout etc.)."""
    s = np.random.SeedSequence([seed & 0xFFFFFFFF, iteration, rank, 7]).generate_state(1)[0]
    torch.manual_seed(int(s))
    np.random.seed(int(s))
    random.seed(int(s))


def rng_state() -> dict[str, Any]:
    """The global RNG states as plain tensors / tuples (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                                        "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------------------- schedules


class LRFactor:
    """detectron2 learning-rate multiplier at an iteration (a picklable callable for ``LambdaLR``).

    Args:
        kind: "multistep" (``WarmupMultiStepLR``), "poly" (MaskFormer ``WarmupPolyLR``, power 0.9) or
            "cosine" (``WarmupCosineLR``).
        max_iter: ``SOLVER.MAX_ITER``.
        steps: decay iterations (multistep), gamma: decay factor.
        warmup_iters, warmup_factor, warmup_method: ``SOLVER.WARMUP_*`` ("linear" or "constant").
        power: poly exponent.

    Sources: detectron2 ``solver/lr_scheduler.py`` (``_get_warmup_factor_at_iter``,
    ``WarmupMultiStepLR``, ``WarmupCosineLR``) and MaskFormer ``mask_former/utils/solver.py``
    (``WarmupPolyLR``: ``warmup * (1 - it / max_iter) ** 0.9``).
    """

    def __init__(self, kind: str, max_iter: int, steps: Sequence[int] = (), gamma: float = 0.1,
                 warmup_iters: int = 0, warmup_factor: float = 1.0, warmup_method: str = "linear",
                 power: float = 0.9) -> None:
        if kind not in ("multistep", "poly", "cosine"):
            raise InputError(f"unknown learning-rate schedule {kind!r}")
        self.kind, self.max_iter, self.steps, self.gamma = kind, int(max_iter), [int(s) for s in steps], float(gamma)
        self.warmup_iters, self.warmup_factor, self.warmup_method = int(warmup_iters), float(warmup_factor), warmup_method
        self.power = float(power)

    def warmup(self, it: int) -> float:
        if it >= self.warmup_iters:
            return 1.0
        if self.warmup_method == "constant":
            return self.warmup_factor
        alpha = it / self.warmup_iters
        return self.warmup_factor * (1 - alpha) + alpha

    def __call__(self, it: int) -> float:
        w = self.warmup(it)
        if self.kind == "multistep":
            return w * self.gamma ** sum(1 for s in self.steps if s <= it)
        if self.kind == "poly":
            return w * (1.0 - it / self.max_iter) ** self.power
        return w * 0.5 * (1.0 + math.cos(math.pi * it / self.max_iter))


# ------------------------------------------------------------------------------------- task API


class Task(Protocol):
    """What a trainer supplies to :func:`train` (see ``fc_clip_train`` / ``maskformer_train``)."""

    method: str
    module: nn.Module  # every trainable parameter; its forward is what DDP wraps

    def dataset_size(self) -> int: ...

    def load(self, position: int, index: int) -> Any:
        """One augmented sample (CPU, picklable) of dataset ``index`` at stream ``position``."""

    def num_targets(self, samples: list[Any]) -> int:
        """Target masks in these samples (for the loss normaliser)."""

    def losses(self, module: nn.Module, samples: list[Any], num_masks: float) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one micro-batch (summed for the gradient)."""

    def optimizer(self) -> torch.optim.Optimizer: ...

    def schedule(self) -> LRFactor: ...

    def model_state(self) -> dict[str, Any]:
        """The checkpoint payload in the official layout (``{"model": ..., <config keys>}``)."""

    def load_model_state(self, obj: dict[str, Any]) -> None: ...


@dataclass
class EngineConfig:
    """Loop settings (the CLI flags of ``ovss train``).

    Attributes:
        output: folder for ``model_XXXXXXX.pth``, ``model_final.pth``, ``last_checkpoint``,
            ``metrics.jsonl`` (and TensorBoard events when installed).
        max_iter: optimiser steps.
        batch_size: the global batch (all ranks and accumulation steps together).
        accumulation: micro-batches per rank and step.
        amp: "off", "bf16" or "fp16" (fp16 with a dynamic grad scaler).
        clip_grad: full-model gradient-norm clip (detectron2 ``CLIP_TYPE full_model``); 0 = off.
        checkpoint_period, log_period: in iterations.
        seed: seed of the stream, the per-sample randomness and the per-iteration reseeding.
        resume: continue from ``last_checkpoint`` in ``output``.
        workers: data-loader processes per rank.
        eval_period: evaluate every this many iterations (0 = off) with ``evaluate`` below.
        progress: show a progress bar on rank 0.
    """

    output: str
    max_iter: int
    batch_size: int
    accumulation: int = 1
    amp: str = "off"
    clip_grad: float = 0.01
    checkpoint_period: int = 5000
    log_period: int = 20
    seed: int = 0
    resume: bool = False
    workers: int = 0
    eval_period: int = 0
    progress: bool = True


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "iteration", "trainer", "rng")


def write_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, read by :func:`ovss.checkpoints.read_checkpoint` (never runs code from the file).

    Raises:
        ModelLoadError: missing or unreadable file, or one that asks to import code.
    """
    from ..checkpoints import read_checkpoint as read_safely

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"checkpoint not found: {p}")
    return read_safely(p)


def last_checkpoint(output: str | Path) -> Path | None:
    """The checkpoint named in ``<output>/last_checkpoint`` (detectron2's marker file), if any."""
    marker = Path(output) / "last_checkpoint"
    if not marker.is_file():
        return None
    path = Path(output) / marker.read_text().strip()
    return path if path.is_file() else None


def _grad_norm(params: Sequence[torch.Tensor]) -> float:
    grads = [p.grad.detach().float().norm(2) for p in params if p.grad is not None]
    return float(torch.stack(grads).norm(2)) if grads else 0.0


class _Metrics:
    """Rank 0's log: ``metrics.jsonl`` (+ TensorBoard when installed)."""

    def __init__(self, output: Path, start: int, enabled: bool) -> None:
        self.path = output / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.is_file():  # drop what a killed run logged after its last checkpoint
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("iteration", 0) <= start]
            _write_text_atomic(self.path, "".join(ln + "\n" for ln in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output / "tensorboard"), purge_step=start + 1)
        except ImportError:
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["iteration"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(task: Task, cfg: EngineConfig, info: DistInfo | None = None,
          evaluate: Callable[[Path, int], dict[str, float]] | None = None,
          on_step: Callable[[int, dict[str, Any]], None] | None = None,
          on_grads: Callable[[int, torch.optim.Optimizer], None] | None = None) -> Path:
    """Run ``task`` to ``cfg.max_iter`` and return the final checkpoint's path.

    Args:
        task: the trainer (model, data, losses, optimizer, schedule, checkpoint layout).
        cfg: loop settings.
        info: distributed coordinates (default: :func:`setup_distributed` of the task's device).
        evaluate: called on every rank with (checkpoint path, iteration) every ``cfg.eval_period``
            iterations and at the end; returns metrics to log.
        on_step: called on every rank after each step with (iteration, record) (tests, fixtures).
        on_grads: called on every rank with (iteration, optimizer) once the gradients of a step are
            complete (all-reduced, unscaled), before clipping and the update (parity tests).

    Raises:
        InputError: a batch layout that does not divide; FloatingPointError: a non-finite loss.
    """
    info = info or setup_distributed(str(next(task.module.parameters()).device))
    out = Path(cfg.output)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    layout = BatchLayout(cfg.batch_size, info.world_size, cfg.accumulation)
    stream = SampleStream(task.dataset_size(), cfg.seed)
    module = task.module
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = task.optimizer()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, task.schedule())
    amp = cfg.amp.lower()
    if amp not in ("off", "bf16", "fp16"):
        raise InputError(f"--amp {cfg.amp}: choose off, bf16 or fp16")
    device = info.device
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    start = 0
    resume_from = last_checkpoint(out) if cfg.resume else None
    if resume_from is not None:
        ck = read_checkpoint(resume_from)
        trainer = ck.get("trainer", {})
        if trainer.get("global_batch") not in (None, cfg.batch_size) or trainer.get("seed") not in (None, cfg.seed):
            raise InputError(f"{resume_from} was written with batch {trainer.get('global_batch')} and seed "
                             f"{trainer.get('seed')}; resume with the same --batch-size and --seed")
        task.load_model_state(ck)
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start = int(ck["iteration"])
        states = ck.get("rng") or []
        if info.rank < len(states):
            set_rng_state(states[info.rank])
    if info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp = module
    metrics = _Metrics(out, start, info.is_main)
    if info.is_main and start:
        print(f"resumed from {resume_from} at iteration {start}", flush=True)
    bar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_iter, initial=start, desc=f"train {task.method}", unit="it", dynamic_ncols=True)
    batches = micro_batches(lambda p: task.load(p, stream.index(p)), layout, info.rank, start, cfg.max_iter, cfg.workers)
    crash_at = int(os.environ.get("OVSS_TRAIN_KILL_AT", "0"))  # tests: SIGKILL after this iteration
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    t_last, path = time.perf_counter(), None
    for it in range(start, cfg.max_iter):
        seed_iteration(cfg.seed, it, info.rank)
        micro = [next(batches) for _ in range(layout.accumulation)]
        count = sum(task.num_targets(m) for m in micro)
        total_masks = all_reduce_sum([count], info)[0]
        num_masks = max(total_masks / (info.world_size * layout.accumulation), 1.0)
        module.train()
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for a, samples in enumerate(micro):
            sync = a == layout.accumulation - 1 or ddp is module
            with (contextlib.nullcontext() if sync else ddp.no_sync()):
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    losses = task.losses(ddp, samples, num_masks)
                loss = sum(losses.values()) / layout.accumulation
                (scaler.scale(loss) if scaler is not None else loss).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / layout.accumulation
        if scaler is not None:
            scaler.unscale_(optimizer)
        if on_grads is not None:
            on_grads(it + 1, optimizer)
        grad_norm = _grad_norm(params)
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        lr = optimizer.param_groups[0]["lr"]
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        keys = sorted(sums)
        reduced = all_reduce_sum([sums[k] for k in keys], info)
        record = {k: v / info.world_size for k, v in zip(keys, reduced)}
        record["total_loss"] = sum(record.values())
        if not math.isfinite(record["total_loss"]):
            raise FloatingPointError(f"the loss became {record['total_loss']} at iteration {it + 1}")
        done = it + 1
        record.update({"iteration": done, "lr": lr, "grad_norm": grad_norm, "num_masks": num_masks})
        if on_step is not None:
            on_step(done, record)
        now = time.perf_counter()
        record["images_per_s"] = round(cfg.batch_size / max(now - t_last, 1e-9), 3)
        t_last = now
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['total_loss']:.4f}", lr=f"{lr:.2e}", img_s=record["images_per_s"])
        if cfg.log_period and (done % cfg.log_period == 0 or done == cfg.max_iter):
            metrics.write(record)
        final = done == cfg.max_iter
        if final or (cfg.checkpoint_period and done % cfg.checkpoint_period == 0):
            path = _save(task, out, "model_final.pth" if final else f"model_{done - 1:07d}.pth", optimizer,
                         scheduler, scaler, done, cfg, layout, info)
            if evaluate is not None and (final or (cfg.eval_period and done % cfg.eval_period == 0)):
                scores = evaluate(path, done)
                if scores:
                    metrics.write({"iteration": done, **{f"eval/{k}": v for k, v in scores.items()}})
        elif evaluate is not None and cfg.eval_period and done % cfg.eval_period == 0:
            tmp = _save(task, out, f"model_{done - 1:07d}.pth", optimizer, scheduler, scaler, done, cfg, layout, info)
            scores = evaluate(tmp, done)
            if scores:
                metrics.write({"iteration": done, **{f"eval/{k}": v for k, v in scores.items()}})
        if crash_at and done == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
    if bar is not None:
        bar.close()
    metrics.close()
    if path is None:  # resumed at max_iter: nothing left to do
        path = last_checkpoint(out) or out / "model_final.pth"
    return path


def _save(task: Task, out: Path, name: str, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
          iteration: int, cfg: EngineConfig, layout: BatchLayout, info: DistInfo) -> Path:
    """Gather every rank's RNG state; rank 0 writes the checkpoint and ``last_checkpoint`` atomically."""
    states: list[Any] = [rng_state()]
    if info.world_size > 1:
        import torch.distributed as dist

        states = [None] * info.world_size
        dist.all_gather_object(states, rng_state())
    path = out / name
    if info.is_main:
        obj = task.model_state()
        obj.update({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None, "iteration": iteration,
                    "trainer": {"method": task.method, "seed": cfg.seed, "global_batch": layout.global_batch,
                                "world_size": layout.world_size, "accumulation": layout.accumulation,
                                "stream_position": iteration * layout.global_batch, "amp": cfg.amp},
                    "rng": states})
        write_atomic(obj, path)
        _write_text_atomic(out / "last_checkpoint", name)
    barrier(info)
    return path


def engine_config_dict(cfg: EngineConfig) -> dict[str, Any]:
    return asdict(cfg)
