"""The curriculum schedule and its index stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pocl_axolotl.curriculum import (
    CurriculumSampler,
    CurriculumSchedule,
    LazyCurriculumSampler,
    PlateauStages,
    build_index_stream,
)
from pocl_axolotl.lr_schedule import stage_lr_factor


def make_schedule(total_steps=8, num_buckets=4, unlock_every=None) -> CurriculumSchedule:
    return CurriculumSchedule.from_settings(
        num_buckets=num_buckets,
        total_steps=total_steps,
        unlock_every=unlock_every,
        temperature_start=1.0,
        temperature_end=2.0,
        kd_ratio_start=0.7,
        kd_ratio_end=1.0,
    )


def test_reference_stage_values():
    schedule = make_schedule()
    temperatures = [schedule.temperature_at(schedule.stage_start(s)) for s in range(4)]
    ratios = [schedule.kd_ratio_at(schedule.stage_start(s)) for s in range(4)]
    assert temperatures == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    assert ratios == pytest.approx([0.7, 0.8, 0.9, 1.0])


def test_stage_boundaries_equal():
    schedule = make_schedule(total_steps=8)
    assert [schedule.stage_at(step) for step in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_last_stage_takes_remainder():
    schedule = make_schedule(total_steps=10)
    assert [schedule.stage_at(step) for step in range(10)] == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert schedule.stage_end(3) == 10


def test_unlock_every_sets_stage_length():
    schedule = make_schedule(total_steps=20, unlock_every=3)
    assert [schedule.stage_start(s) for s in range(4)] == [0, 3, 6, 9]
    assert schedule.stage_at(19) == 3


def test_single_bucket_keeps_start_values():
    schedule = make_schedule(total_steps=5, num_buckets=1)
    assert schedule.temperature_at(4) == 1.0
    assert schedule.kd_ratio_at(4) == 0.7


def test_too_few_steps_rejected():
    with pytest.raises(ValueError, match=r"fewer than `pocl.num_buckets` \(4\)"):
        make_schedule(total_steps=3)


def test_unlock_every_too_large_rejected():
    with pytest.raises(ValueError, match="`pocl.unlock_every: 5`"):
        make_schedule(total_steps=12, unlock_every=5)


def _buckets(num_samples=40, num_buckets=4):
    return [i * num_buckets // num_samples for i in range(num_samples)]


def test_stream_never_draws_locked_bucket():
    buckets = np.array(_buckets())
    schedule = make_schedule(total_steps=12)
    stream = build_index_stream(buckets, schedule, samples_per_step=6, seed=3)
    assert stream.size == 12 * 6
    for step in range(12):
        drawn = stream[step * 6 : (step + 1) * 6]
        assert buckets[drawn].max() <= schedule.stage_at(step)


def test_stream_reaches_every_unlocked_bucket():
    buckets = np.array(_buckets())
    schedule = make_schedule(total_steps=12)
    stream = build_index_stream(buckets, schedule, samples_per_step=10, seed=3)
    last_stage = stream[schedule.stage_start(3) * 10 :]
    assert set(buckets[last_stage]) == {0, 1, 2, 3}


def test_stream_covers_pool_before_repeating():
    buckets = np.array(_buckets())
    schedule = make_schedule(total_steps=8)
    stream = build_index_stream(buckets, schedule, samples_per_step=5, seed=0)
    first_stage = stream[: schedule.stage_end(0) * 5]
    assert sorted(first_stage.tolist()) == list(range(10))


def test_stream_deterministic_for_seed():
    buckets = _buckets()
    schedule = make_schedule()
    first = build_index_stream(buckets, schedule, 4, seed=7)
    second = build_index_stream(buckets, schedule, 4, seed=7)
    other = build_index_stream(buckets, schedule, 4, seed=8)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_stream_rejects_unknown_bucket():
    with pytest.raises(ValueError, match="Bucket ids must lie in"):
        build_index_stream([0, 1, 5], make_schedule(), 2, seed=0)


def test_sampler_yields_stream_twice():
    buckets = _buckets()
    schedule = make_schedule()
    sampler = CurriculumSampler(buckets, schedule, samples_per_step=3, seed=5)
    expected = build_index_stream(buckets, schedule, 3, seed=5).tolist()
    assert list(sampler) == expected
    assert list(sampler) == expected
    assert len(sampler) == len(expected)


def make_plateau(total_steps=40, patience=2, min_relative_improvement=0.1, delay_steps=2):
    return PlateauStages(
        make_schedule(total_steps=total_steps),
        patience=patience,
        min_relative_improvement=min_relative_improvement,
        delay_steps=delay_steps,
    )


# Loss logged after each optimizer step 1..12. It improves by at least 10 % up
# to step 4 and then stalls twice, so after step 6 stage 1 is set to start at
# step 6 + 2 = 8 instead of 10.
PLATEAU_LOSSES = [1.0, 0.8, 0.6, 0.5, 0.49, 0.48, 0.9, 0.7, 0.5, 0.49, 0.495, 0.47]


def feed(stages, losses, first_step=1):
    decisions = []
    for offset, loss in enumerate(losses):
        decision = stages.observe(first_step + offset, loss)
        if decision is not None:
            decisions.append(decision)
    return decisions


def test_plateau_moves_stage_early():
    stages = make_plateau()
    decisions = feed(stages, PLATEAU_LOSSES[:6])
    assert decisions == [8]
    assert stages.stage_at(7) == 0
    assert stages.stage_at(8) == 1
    # The next stage keeps its full length unless it plateaus too.
    assert stages.stage_start(2) == 18


def test_plateau_second_stage_resets_best():
    stages = make_plateau()
    decisions = feed(stages, PLATEAU_LOSSES)
    # Stage 1 starts at 8; its own best loss is 0.5 after step 9, then 0.49 and
    # 0.495 do not improve by 10 %, so stage 2 starts at 11 + 2 = 13.
    assert decisions == [8, 13]
    assert [stages.stage_start(stage) for stage in range(4)] == [0, 8, 13, 23]


def test_plateau_never_passes_last_stage():
    stages = make_plateau(total_steps=8, patience=1)
    feed(stages, [1.0] * 8)
    assert stages.stage_at(7) == 3
    assert stages.stage_end(3) == 8


def test_plateau_resume_matches_uninterrupted():
    uninterrupted = make_plateau()
    feed(uninterrupted, PLATEAU_LOSSES)

    first = make_plateau()
    feed(first, PLATEAU_LOSSES[:7])
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = make_plateau()
    resumed.load_state_dict(saved)
    feed(resumed, PLATEAU_LOSSES[7:], first_step=8)
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_lazy_sampler_follows_decisions():
    buckets = np.array(_buckets())
    stages = make_plateau(total_steps=40)
    sampler = LazyCurriculumSampler(buckets, stages, samples_per_step=2, seed=0)
    iterator = iter(sampler)
    drawn = [next(iterator) for _ in range(2 * 3)]
    assert sampler.last_step_drawn == 2
    assert buckets[drawn].max() == 0
    feed(stages, PLATEAU_LOSSES[:6])
    rest = list(iterator)
    per_step = np.array(drawn + rest).reshape(40, 2)
    for step in range(40):
        assert buckets[per_step[step]].max() <= stages.stage_at(step)
    assert buckets[per_step[8:10]].max() == 1


def test_stage_lr_restarts_each_stage():
    bounds = lambda step: ((step // 4) * 4, (step // 4) * 4 + 4)  # noqa: E731
    factors = [stage_lr_factor(s, stage_bounds=bounds, warmup=1, kind="linear") for s in range(8)]
    assert factors == pytest.approx([0.5, 1.0, 2 / 3, 1 / 3, 0.5, 1.0, 2 / 3, 1 / 3])


def test_stage_lr_warmup_fraction():
    bounds = lambda step: (0, 10)  # noqa: E731
    factors = [stage_lr_factor(s, stage_bounds=bounds, warmup=0.2, kind="constant") for s in range(4)]
    assert factors == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
