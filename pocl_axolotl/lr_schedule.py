"""A learning-rate schedule that restarts at every curriculum stage."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from pocl_axolotl.log import get_logger

LOG = get_logger(__name__)

SUPPORTED_SCHEDULERS = ("cosine", "linear", "constant")


def stage_lr_factor(
    step: int,
    *,
    stage_bounds: Callable[[int], tuple[int, int]],
    warmup: float,
    kind: str,
) -> float:
    """Return the learning-rate factor of ``step``, restarting at its stage's start.

    Args:
        step: 0-based optimizer step.
        stage_bounds: Maps a step to ``(first step, step after the last)`` of its stage.
        warmup: Warm-up per stage, as Transformers reads `warmup_steps`: steps when
            at least 1, otherwise a fraction of the stage's steps.
        kind: ``cosine``, ``linear`` or ``constant`` decay after the warm-up.
    """
    start, end = stage_bounds(step)
    length = max(end - start, 1)
    local = step - start
    warmup = int(warmup) if warmup >= 1 else math.ceil(warmup * length)
    if local < warmup:
        return (local + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (local - warmup) / max(length - warmup, 1)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_stage_lr_scheduler(trainer, optimizer: Optimizer) -> LambdaLR:
    """Build the per-stage schedule for a PoclTrainer from its training arguments.

    Raises:
        ValueError: The configured `lr_scheduler` has no per-stage version.
    """
    kind = str(getattr(trainer.args.lr_scheduler_type, "value", trainer.args.lr_scheduler_type))
    if kind not in SUPPORTED_SCHEDULERS:
        raise ValueError(
            f"`pocl.restart_lr_each_stage` supports lr_scheduler {', '.join(SUPPORTED_SCHEDULERS)}, "
            f"got `lr_scheduler: {kind}`."
        )

    LOG.info(
        f"The learning rate restarts at every stage: {kind} decay after "
        f"warmup_steps={trainer.args.warmup_steps} per stage"
    )

    def bounds(step: int) -> tuple[int, int]:
        stage = trainer.stage_at(step)
        return trainer.stages.stage_start(stage), trainer.stages.stage_end(stage)

    def factor(step: int) -> float:
        return stage_lr_factor(
            step,
            stage_bounds=bounds,
            warmup=trainer.args.warmup_steps or 0,
            kind=kind,
        )

    return LambdaLR(optimizer, factor)
