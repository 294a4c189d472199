"""The curriculum schedule and the sampler that follows it.

With fixed stage lengths everything here is a pure function of the
configuration, the seed and the optimizer step. Stage, temperature, KD ratio and
the pool of unlocked buckets at step k never depend on wall-clock time,
dataloader prefetching or on whether the run was resumed. ``PlateauStages`` adds
one more input, the logged training losses, and saves its decisions in the
checkpoint. Stage s (0-based) trains on the union of buckets 0..s.

Steps are 0-based indices of optimizer steps: the step that Hugging Face's
``Trainer`` computes while ``state.global_step == k`` is step k.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import BatchSampler, Sampler, SequentialSampler


@dataclass(frozen=True)
class CurriculumSchedule:
    """Stage boundaries and per-stage temperature and KD ratio of one run.

    Attributes:
        num_stages: Number of stages, equal to the number of difficulty buckets.
        steps_per_stage: Optimizer steps of every stage but the last, which runs
            until ``total_steps``.
        total_steps: Optimizer steps of the whole run.
        temperature_start: KD temperature of stage 0.
        temperature_end: KD temperature of the last stage.
        kd_ratio_start: KD weight of stage 0.
        kd_ratio_end: KD weight of the last stage.
    """

    num_stages: int
    steps_per_stage: int
    total_steps: int
    temperature_start: float
    temperature_end: float
    kd_ratio_start: float
    kd_ratio_end: float

    @classmethod
    def from_settings(
        cls,
        *,
        num_buckets: int,
        total_steps: int,
        unlock_every: int | None,
        temperature_start: float,
        temperature_end: float,
        kd_ratio_start: float,
        kd_ratio_end: float,
    ) -> CurriculumSchedule:
        """Build the schedule of a run of ``total_steps`` optimizer steps.

        Raises:
            ValueError: The run is too short to give every stage at least one step.
        """
        if total_steps < num_buckets:
            raise ValueError(
                f"The run has {total_steps} optimizer steps (max_steps), fewer than "
                f"`pocl.num_buckets` ({num_buckets}), so some stage would get no "
                "step. Raise max_steps or num_epochs, or lower pocl.num_buckets."
            )
        steps_per_stage = unlock_every or total_steps // num_buckets
        if steps_per_stage * (num_buckets - 1) >= total_steps:
            raise ValueError(
                f"`pocl.unlock_every: {unlock_every}` leaves the last of "
                f"{num_buckets} stages no step of the {total_steps} optimizer steps "
                f"(max_steps). Set unlock_every to at most "
                f"{(total_steps - 1) // (num_buckets - 1)} or leave it null for equal stages."
            )
        return cls(
            num_stages=num_buckets,
            steps_per_stage=steps_per_stage,
            total_steps=total_steps,
            temperature_start=temperature_start,
            temperature_end=temperature_end,
            kd_ratio_start=kd_ratio_start,
            kd_ratio_end=kd_ratio_end,
        )

    def stage_at(self, step: int) -> int:
        """Return the 0-based stage of optimizer step ``step``."""
        return min(max(step, 0) // self.steps_per_stage, self.num_stages - 1)

    def stage_start(self, stage: int) -> int:
        """Return the first optimizer step of ``stage``."""
        return stage * self.steps_per_stage

    def stage_end(self, stage: int) -> int:
        """Return the optimizer step after the last step of ``stage``."""
        if stage == self.num_stages - 1:
            return self.total_steps
        return (stage + 1) * self.steps_per_stage

    def _interpolate(self, start: float, end: float, stage: int) -> float:
        if self.num_stages == 1:
            return start
        return start + (end - start) * stage / (self.num_stages - 1)

    def stage_temperature(self, stage: int) -> float:
        """Return the KD temperature of ``stage``."""
        return self._interpolate(self.temperature_start, self.temperature_end, stage)

    def stage_kd_ratio(self, stage: int) -> float:
        """Return the KD weight r of ``stage``; CE gets 1 - r."""
        return self._interpolate(self.kd_ratio_start, self.kd_ratio_end, stage)

    def temperature_at(self, step: int) -> float:
        """Return the KD temperature of optimizer step ``step``."""
        return self.stage_temperature(self.stage_at(step))

    def kd_ratio_at(self, step: int) -> float:
        """Return the KD weight r of optimizer step ``step``; CE gets 1 - r."""
        return self.stage_kd_ratio(self.stage_at(step))


def iter_index_stream(
    buckets: Sequence[int],
    schedule: CurriculumSchedule,
    samples_per_step: int,
    seed: int,
) -> Iterator[int]:
    """Yield the dataset indices of every optimizer step of the run, in order.

    Step k takes ``samples_per_step`` consecutive indices, all drawn from the
    buckets unlocked at step k. Each stage walks through seeded permutations of its
    pool, a new permutation each time the pool is used up. Only one permutation is
    held at a time, so memory grows with the dataset, not with the run.

    Args:
        buckets: Bucket of each sample of the training dataset, shape ``(N,)``.
        schedule: The run's schedule.
        samples_per_step: Samples of one optimizer step over all processes: micro
            batch size x gradient accumulation steps x number of processes.
        seed: The run's seed.

    Raises:
        ValueError: A bucket id is outside ``[0, num_stages)``, or a stage has an
            empty pool.
    """
    bucket_array = _check_buckets(buckets, schedule.num_stages)
    pools = [_stage_pool(bucket_array, stage) for stage in range(schedule.num_stages)]
    for stage, pool in enumerate(pools):
        needed = (schedule.stage_end(stage) - schedule.stage_start(stage)) * samples_per_step
        yield from itertools.islice(_pool_stream(pool, seed, stage), needed)


def build_index_stream(
    buckets: Sequence[int],
    schedule: CurriculumSchedule,
    samples_per_step: int,
    seed: int,
) -> np.ndarray:
    """Return ``iter_index_stream`` as an array of shape ``(total_steps * samples_per_step,)``."""
    count = schedule.total_steps * samples_per_step
    stream = iter_index_stream(buckets, schedule, samples_per_step, seed)
    return np.fromiter(stream, dtype=np.int64, count=count)


def _check_buckets(buckets: Sequence[int], num_stages: int) -> np.ndarray:
    bucket_array = np.asarray(buckets, dtype=np.int64)
    if bucket_array.size and (bucket_array.min() < 0 or bucket_array.max() >= num_stages):
        raise ValueError(
            f"Bucket ids must lie in [0, {num_stages}), got the range "
            f"[{bucket_array.min()}, {bucket_array.max()}]; the difficulty columns "
            "do not match `pocl.num_buckets`. Rerun `axolotl preprocess`."
        )
    return bucket_array


def _stage_pool(bucket_array: np.ndarray, stage: int) -> np.ndarray:
    pool = np.flatnonzero(bucket_array <= stage)
    if pool.size == 0:
        raise ValueError(f"Stage {stage} has no sample: every bucket up to it is empty.")
    return pool


def _pool_stream(pool: np.ndarray, seed: int, stage: int) -> Iterator[int]:
    """Yield seeded permutations of ``pool`` one after another, without end."""
    for epoch in itertools.count():
        generator = np.random.default_rng([seed, stage, epoch])
        yield from generator.permutation(pool).tolist()


def build_packed_batches(
    buckets: Sequence[int],
    lengths: Sequence[int],
    schedule: CurriculumSchedule,
    *,
    batches_per_step: int,
    bins_per_batch: int,
    bin_capacity: int,
    seed: int,
) -> list[list[list[int]]]:
    """Pack each stage's draws into batches of bins, in draw order.

    Stage s fills exactly ``steps_in_stage * batches_per_step`` batches, so stage
    boundaries fall on the scheduled optimizer steps and no bin mixes stages.
    Packing is greedy and keeps the draw order: a bin is closed when the next
    sample does not fit.

    Args:
        buckets: Bucket of each sample, shape ``(N,)``.
        lengths: Token count of each sample, shape ``(N,)``.
        schedule: The run's schedule.
        batches_per_step: Batches of one optimizer step over all processes:
            gradient accumulation steps x number of processes.
        bins_per_batch: Bins (packed rows) per batch.
        bin_capacity: Tokens per bin.
        seed: The run's seed.

    Returns:
        Batches, each a list of bins, each a list of dataset indices.

    Raises:
        ValueError: A sample is longer than a bin, or a bucket id is out of range.
    """
    bucket_array = _check_buckets(buckets, schedule.num_stages)
    length_array = np.asarray(lengths, dtype=np.int64)
    if length_array.size and length_array.max() > bin_capacity:
        raise ValueError(
            f"A sample of {length_array.max()} tokens does not fit a packed row of "
            f"{bin_capacity} tokens; lower sequence_len or raise micro_batch_size."
        )
    batches: list[list[list[int]]] = []
    for stage in range(schedule.num_stages):
        pool = _stage_pool(bucket_array, stage)
        steps = schedule.stage_end(stage) - schedule.stage_start(stage)
        bins = _pack_greedily(
            _pool_stream(pool, seed, stage), length_array, bin_capacity,
            steps * batches_per_step * bins_per_batch,
        )
        batches.extend(
            bins[start : start + bins_per_batch] for start in range(0, len(bins), bins_per_batch)
        )
    return batches


def _pack_greedily(
    stream: Iterator[int], lengths: np.ndarray, capacity: int, num_bins: int
) -> list[list[int]]:
    bins: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in stream:
        if current and used + lengths[index] > capacity:
            bins.append(current)
            if len(bins) == num_bins:
                return bins
            current, used = [], 0
        current.append(index)
        used += int(lengths[index])
    raise AssertionError("the pool stream is endless")


class PackedCurriculumBatchSampler(BatchSampler):
    """Batch sampler that yields precomputed packed curriculum batches."""

    def __init__(self, batches: list[list[list[int]]], bins_per_batch: int):
        super().__init__(SequentialSampler(range(len(batches))), bins_per_batch, False)
        self.batches = batches

    def __iter__(self) -> Iterator[list[list[int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class CurriculumSampler(Sampler[int]):
    """Sampler that yields the curriculum index stream of the whole run.

    The stream covers the whole run, so the Trainer runs a single epoch of
    ``total_steps`` optimizer steps. Accelerate shards its micro-batches across
    processes, which gives every rank a disjoint share of each optimizer step's
    indices. Every iteration yields the same stream.
    """

    def __init__(
        self,
        buckets: Sequence[int],
        schedule: CurriculumSchedule,
        samples_per_step: int,
        seed: int,
    ):
        self.buckets = _check_buckets(buckets, schedule.num_stages)
        self.schedule = schedule
        self.samples_per_step = samples_per_step
        self.seed = seed

    def __iter__(self) -> Iterator[int]:
        return iter_index_stream(self.buckets, self.schedule, self.samples_per_step, self.seed)

    def __len__(self) -> int:
        return self.schedule.total_steps * self.samples_per_step


class PlateauStages:
    """Stage boundaries that move earlier when the training loss stops improving.

    Every stage still lasts at most ``schedule.steps_per_stage`` steps. A stage
    also ends once ``patience`` logged losses in a row have not improved on the
    best loss of the stage by ``min_relative_improvement``. The next stage then
    starts ``delay_steps`` steps after that log, so that batches the dataloader
    has fetched already keep their stage. Decisions depend only on the logged
    losses, and ``state_dict`` contains all of their state, so a resumed run
    continues with the same boundaries.
    """

    def __init__(
        self,
        schedule: CurriculumSchedule,
        *,
        patience: int,
        min_relative_improvement: float,
        delay_steps: int,
    ):
        self.schedule = schedule
        self.patience = patience
        self.min_relative_improvement = min_relative_improvement
        self.delay_steps = delay_steps
        self.starts = [0]
        self.best_loss: float | None = None
        self.windows_without_improvement = 0
        self.tracked_stage = 0

    def stage_at(self, step: int) -> int:
        """Return the stage of optimizer step ``step`` under the decisions so far."""
        stage, start = 0, 0
        while stage < self.schedule.num_stages - 1:
            next_start = self._start_of(stage + 1, start)
            if step < next_start:
                break
            stage, start = stage + 1, next_start
        return stage

    def stage_start(self, stage: int) -> int:
        """Return the first optimizer step of ``stage`` under the decisions so far."""
        start = 0
        for index in range(1, stage + 1):
            start = self._start_of(index, start)
        return start

    def stage_end(self, stage: int) -> int:
        """Return the step after the last step of ``stage`` under the decisions so far."""
        if stage == self.schedule.num_stages - 1:
            return self.schedule.total_steps
        return self._start_of(stage + 1, self.stage_start(stage))

    def _start_of(self, stage: int, previous_start: int) -> int:
        if stage < len(self.starts):
            return self.starts[stage]
        return previous_start + self.schedule.steps_per_stage

    def observe(self, global_step: int, loss: float) -> int | None:
        """Record the loss logged after ``global_step`` optimizer steps.

        Returns:
            The first step of the next stage when this loss ends the current
            stage early, otherwise None.
        """
        stage = self.stage_at(global_step - 1)
        if stage != self.tracked_stage:
            self.tracked_stage, self.best_loss, self.windows_without_improvement = stage, None, 0
        pending = len(self.starts) > stage + 1
        if stage == self.schedule.num_stages - 1 or pending:
            return None
        if self.best_loss is None or loss < self.best_loss * (1 - self.min_relative_improvement):
            self.best_loss, self.windows_without_improvement = loss, 0
            return None
        self.windows_without_improvement += 1
        if self.windows_without_improvement < self.patience:
            return None
        next_start = global_step + self.delay_steps
        if next_start >= self.stage_end(stage):
            return None  # The fixed schedule ends the stage first.
        while len(self.starts) <= stage:
            self.starts.append(self.stage_start(len(self.starts)))
        self.starts.append(next_start)
        return next_start

    def state_dict(self) -> dict:
        """Return the decisions and the loss tracking, for a checkpoint."""
        return {
            "starts": list(self.starts),
            "best_loss": self.best_loss,
            "windows_without_improvement": self.windows_without_improvement,
            "tracked_stage": self.tracked_stage,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.starts = list(state["starts"])
        self.best_loss = state["best_loss"]
        self.windows_without_improvement = state["windows_without_improvement"]
        self.tracked_stage = state["tracked_stage"]


class LazyCurriculumSampler(Sampler[int]):
    """Sampler that draws each step's indices when the dataloader requests them.

    Used when stage boundaries are decided during training. Step k draws from the
    pool of the stage that ``stages.stage_at(k)`` gives at the moment its first
    index is produced; ``last_step_drawn`` lets the trainer check that no
    decision comes after the step it changes was drawn.
    """

    def __init__(
        self,
        buckets: Sequence[int],
        stages: PlateauStages,
        samples_per_step: int,
        seed: int,
    ):
        self.buckets = _check_buckets(buckets, stages.schedule.num_stages)
        self.stages = stages
        self.samples_per_step = samples_per_step
        self.seed = seed
        self.last_step_drawn = -1

    def __iter__(self) -> Iterator[int]:
        streams: dict[tuple[int, int], Iterator[int]] = {}
        for step in range(self.stages.schedule.total_steps):
            stage = self.stages.stage_at(step)
            start = self.stages.stage_start(stage)
            key = (stage, start)
            if key not in streams:
                pool = _stage_pool(self.buckets, stage)
                streams = {key: _pool_stream(pool, self.seed, stage)}
            self.last_step_drawn = step
            yield from itertools.islice(streams[key], self.samples_per_step)

    def __len__(self) -> int:
        return self.stages.schedule.total_steps * self.samples_per_step
