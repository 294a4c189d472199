"""A learning-rate schedule that restarts at every curriculum stage."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from pocl_axolotl.log import get_logger

LOG = get_logger(__name__)



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


def build_stage_lr_scheduler(trainer, optimizer: Optimizer, *, warmup: float) -> LambdaLR:
    """Build the per-stage schedule for a PoclTrainer.

    Args:
        trainer: The PoclTrainer, whose stages set the restarts.
        optimizer: Its optimizer.
        warmup: Warm-up of each stage: steps when at least 1, otherwise a
            fraction of the stage's steps.
    """
    kind = str(getattr(trainer.args.lr_scheduler_type, "value", trainer.args.lr_scheduler_type))

    def bounds(step: int) -> tuple[int, int]:
        stage = trainer.stage_at(step)
        return trainer.stages.stage_start(stage), trainer.stages.stage_end(stage)

    shortest = min(
        trainer.schedule.stage_end(stage) - trainer.schedule.stage_start(stage)
        for stage in range(trainer.schedule.num_stages)
    )
    warmup_steps = int(warmup) if warmup >= 1 else math.ceil(warmup * shortest)
    LOG.info(f"The learning rate restarts at every stage: warm-up {warmup:g}, then {kind} decay")
    if warmup_steps >= shortest:
        LOG.warning(
            f"The warm-up of {warmup_steps} steps is as long as the shortest stage "
            f"({shortest} steps), so that stage never reaches the peak learning rate."
        )

    def factor(step: int) -> float:
        return stage_lr_factor(step, stage_bounds=bounds, warmup=warmup, kind=kind)

    return LambdaLR(optimizer, factor)
