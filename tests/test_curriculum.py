"""The curriculum schedule and its index stream."""

from __future__ import annotations

import numpy as np
import pytest

from pocl_axolotl.curriculum import CurriculumSampler, CurriculumSchedule, build_index_stream


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


def test_sampler_yields_stream():
    stream = np.array([3, 1, 2])
    sampler = CurriculumSampler(stream)
    assert list(sampler) == [3, 1, 2]
    assert len(sampler) == 3
