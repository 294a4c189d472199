"""Difficulty ranking: reciprocal rank fusion of per-sample metrics into buckets.

Each metric ranks the valid samples, rank 1 = easiest, and samples with equal
values share the lowest rank of their group. A sample's fused score is
Σ over metrics of 1 / (k + rank). Sorting by fused score, highest first, gives the
easy-to-hard order; equal scores keep the dataset order. A sample is invalid when
it has no supervised token or any metric is not finite: it is never dropped, and
goes after all valid samples, into the last bucket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pocl_axolotl.scoring import HIGHER_IS_EASIER


@dataclass(frozen=True)
class DifficultyRanking:
    """Fused difficulty of every training sample, indexed like the dataset.

    Attributes:
        metrics: Metric name to per-sample values, each of shape ``(N,)``.
        fused_score: RRF score, higher is easier; NaN for invalid samples, ``(N,)``.
        rank: Position in the easy-to-hard order, 1 = easiest, ``(N,)``.
        bucket: Bucket of each sample, 0 = easiest, ``(N,)``.
        valid: Whether the sample took part in the ranking, ``(N,)``.
    """

    metrics: dict[str, np.ndarray]
    fused_score: np.ndarray
    rank: np.ndarray
    bucket: np.ndarray
    valid: np.ndarray

    @property
    def num_invalid(self) -> int:
        """Return the number of samples placed last for lack of a finite score."""
        return int((~self.valid).sum())


def rank_metric(values: np.ndarray, higher_is_easier: bool) -> np.ndarray:
    """Rank values from easiest (1) to hardest; ties share the lowest rank.

    Args:
        values: Finite metric values, shape ``(N,)``.
        higher_is_easier: Whether a larger value means an easier sample.

    Returns:
        Integer ranks of shape ``(N,)``.
    """
    keys = -values if higher_is_easier else values
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    # Position of the first element of each group of equal values, plus one.
    group_start = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    first_positions = np.maximum.accumulate(np.where(group_start, np.arange(len(keys)), 0))
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[order] = first_positions + 1
    return ranks


def bucket_sizes(num_samples: int, num_buckets: int) -> list[int]:
    """Split ``num_samples`` into equal contiguous buckets; the last takes the rest.

    Raises:
        ValueError: There are fewer samples than buckets.
    """
    if num_samples < num_buckets:
        raise ValueError(
            f"The training dataset has {num_samples} samples with a finite difficulty, "
            f"fewer than `pocl.num_buckets` ({num_buckets}); lower num_buckets or add data."
        )
    size = num_samples // num_buckets
    return [size] * (num_buckets - 1) + [num_samples - size * (num_buckets - 1)]


def fuse_and_bucket(
    metrics: Mapping[str, np.ndarray],
    *,
    rrf_k: float,
    num_buckets: int,
    higher_is_easier: Mapping[str, bool] = HIGHER_IS_EASIER,
) -> DifficultyRanking:
    """Fuse metrics by reciprocal rank fusion and split the order into buckets.

    Args:
        metrics: Metric name to values of shape ``(N,)``; NaN or inf marks a sample
            that the metric could not score.
        rrf_k: The RRF constant k.
        num_buckets: Number of buckets.
        higher_is_easier: Direction of each metric.

    Raises:
        ValueError: No metric is given, their lengths differ, or fewer valid
            samples than buckets remain.
    """
    if not metrics:
        raise ValueError("At least one difficulty metric is needed.")
    arrays = {name: np.asarray(values, dtype=np.float64) for name, values in metrics.items()}
    lengths = {name: values.shape[0] for name, values in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"The metrics score different numbers of samples: {lengths}")
    num_samples = next(iter(lengths.values()))
    valid = np.ones(num_samples, dtype=bool)
    for values in arrays.values():
        valid &= np.isfinite(values)

    valid_positions = np.flatnonzero(valid)
    fused_valid = np.zeros(valid_positions.size, dtype=np.float64)
    for name, values in arrays.items():
        ranks = rank_metric(values[valid_positions], higher_is_easier[name])
        fused_valid += 1.0 / (rrf_k + ranks)

    sizes = bucket_sizes(valid_positions.size, num_buckets)
    # Highest fused score first; a stable sort keeps dataset order among ties.
    easy_to_hard = valid_positions[np.argsort(-fused_valid, kind="stable")]
    order = np.concatenate([easy_to_hard, np.flatnonzero(~valid)])

    rank = np.empty(num_samples, dtype=np.int64)
    rank[order] = np.arange(1, num_samples + 1)
    bucket = np.full(num_samples, num_buckets - 1, dtype=np.int64)
    start = 0
    for bucket_id, size in enumerate(sizes):
        bucket[easy_to_hard[start : start + size]] = bucket_id
        start += size
    fused_score = np.full(num_samples, np.nan)
    fused_score[valid_positions] = fused_valid
    return DifficultyRanking(
        metrics=arrays, fused_score=fused_score, rank=rank, bucket=bucket, valid=valid
    )


def ranking_from_difficulty(difficulty: np.ndarray, num_buckets: int) -> DifficultyRanking:
    """Bucket samples by one precomputed difficulty value, lower is easier."""
    return fuse_and_bucket(
        {"difficulty": difficulty},
        rrf_k=0.0,
        num_buckets=num_buckets,
        higher_is_easier={"difficulty": False},
    )
