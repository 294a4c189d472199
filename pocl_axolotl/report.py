"""The difficulty report: a per-sample JSON Lines file, a plot and a log summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pocl_axolotl.log import get_logger

from pocl_axolotl.difficulty import DifficultyRanking

LOG = get_logger(__name__)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def write_report(path: Path, ranking: DifficultyRanking) -> None:
    """Write one line per sample: index, each metric, fused score, rank and bucket.

    Values that are not finite are written as null.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(ranking.rank.shape[0]):
            record = {"index": index}
            for name, values in ranking.metrics.items():
                record[name] = _finite_or_none(values[index])
            record["rrf_score"] = _finite_or_none(ranking.fused_score[index])
            record["rank"] = int(ranking.rank[index])
            record["bucket"] = int(ranking.bucket[index])
            record["valid"] = bool(ranking.valid[index])
            handle.write(json.dumps(record) + "\n")
    LOG.info(f"Wrote the difficulty report {path}")


def write_plot(path: Path, ranking: DifficultyRanking) -> None:
    """Draw each metric's distribution per bucket as box plots into a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ranking.metrics)
    num_buckets = int(ranking.bucket.max()) + 1
    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for axis, name in zip(axes[0], names):
        values = ranking.metrics[name]
        groups = []
        for bucket in range(num_buckets):
            selected = values[(ranking.bucket == bucket) & np.isfinite(values)]
            groups.append(selected if selected.size else np.array([np.nan]))
        axis.boxplot(groups, showfliers=False)
        axis.set_xticks(range(1, num_buckets + 1), [str(bucket) for bucket in range(num_buckets)])
        axis.set_xlabel("bucket (0 = easiest)")
        axis.set_title(name)
    figure.suptitle("Difficulty metrics per bucket")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    LOG.info(f"Wrote the difficulty plot {path}")


def log_summary(ranking: DifficultyRanking, num_buckets: int) -> None:
    """Log each bucket's size and metric means, and the metrics' rank correlations."""
    from scipy.stats import spearmanr

    for bucket in range(num_buckets):
        members = ranking.bucket == bucket
        means = ", ".join(
            f"{name} mean {np.nanmean(values[members]):.4g}"
            for name, values in ranking.metrics.items()
            if np.isfinite(values[members]).any()
        )
        LOG.info(f"Difficulty bucket {bucket}: {int(members.sum())} samples; {means}")
    if ranking.num_invalid:
        LOG.warning(
            f"{ranking.num_invalid} samples have no supervised token or a non-finite "
            "metric; they are placed in the last bucket."
        )
    valid = ranking.valid
    names = []
    for name, values in ranking.metrics.items():
        values = values[valid]
        if values.size and np.all(values == values[0]):
            LOG.warning(
                f"Difficulty metric {name} is {values[0]:g} for every sample, so it does "
                "not change the ranking; the scoring model may be too weak for it."
            )
        else:
            names.append(name)
    for first in range(len(names)):
        for second in range(first + 1, len(names)):
            correlation = spearmanr(
                ranking.metrics[names[first]][valid], ranking.metrics[names[second]][valid]
            ).statistic
            LOG.info(f"Spearman correlation of {names[first]} and {names[second]}: {correlation:.3f}")
