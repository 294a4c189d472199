"""The plugin's ``load_datasets`` hook: tokenize, score, bucket, cache and report.

``axolotl preprocess`` computes the difficulty buckets and caches them beside the
prepared dataset; ``axolotl train`` finds the cache and reuses it. The cache key
covers everything that changes the result, and a cache entry is written to a
temporary folder and renamed into place, so an interrupted run leaves none.
With several processes a file lock makes the first one score while the others
wait and then read its cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from axolotl.common.const import DEFAULT_DATASET_PREPARED_PATH
from axolotl.common.datasets import TrainDatasetMeta, load_datasets
from axolotl.utils.dict import DictDefault
from pocl_axolotl.log import get_logger

from pocl_axolotl.args import PoclConfig
from pocl_axolotl.difficulty import DifficultyRanking, fuse_and_bucket, ranking_from_difficulty
from pocl_axolotl.report import log_summary, write_plot, write_report

LOG = get_logger(__name__)

BUCKET_COLUMN = "pocl_bucket"
RANK_COLUMN = "pocl_rank"
# Bump when a change to the scoring code changes its results, to invalidate caches.
SCORING_VERSION = 1
CACHE_FILE = "difficulty.json"


def load_datasets_with_difficulty(
    cfg: DictDefault, pocl: PoclConfig, preprocess: bool
) -> TrainDatasetMeta:
    """Load Axolotl's tokenized datasets and add the difficulty bucket columns.

    Args:
        cfg: The validated Axolotl configuration.
        pocl: The validated ``pocl:`` block.
        preprocess: True under ``axolotl preprocess``.

    Returns:
        Axolotl's dataset metadata with ``pocl_bucket`` and ``pocl_rank`` columns
        added to the training dataset (unless ``num_buckets`` is 1).
    """
    check_tokenizers(cfg, pocl)
    check_schedule_fits(cfg, pocl, None)
    meta = load_datasets(cfg=cfg)
    if not preprocess:
        check_schedule_fits(cfg, pocl, meta.total_num_steps)
    if pocl.num_buckets == 1:
        LOG.info("pocl.num_buckets is 1: no curriculum, so no difficulty scoring.")
        return meta
    train_dataset = meta.train_dataset
    ranking = compute_or_load_ranking(cfg, pocl, train_dataset)
    if is_main_process():
        output_dir = Path(cfg.output_dir or "./model-out")
        write_report(output_dir / "pocl_difficulty.jsonl", ranking)
        write_plot(output_dir / "pocl_difficulty.png", ranking)
        log_summary(ranking, pocl.num_buckets)
    for column in (BUCKET_COLUMN, RANK_COLUMN):
        if column in train_dataset.column_names:
            train_dataset = train_dataset.remove_columns(column)
    digest = hashlib.sha256(ranking.bucket.astype(np.int64).tobytes()).hexdigest()[:16]
    LOG.info(
        f"Difficulty buckets of {len(train_dataset)} samples ready, fingerprint {digest}",
        main_process_only=False,
    )
    train_dataset = train_dataset.add_column(BUCKET_COLUMN, ranking.bucket.tolist())
    train_dataset = train_dataset.add_column(RANK_COLUMN, ranking.rank.tolist())
    return TrainDatasetMeta(
        train_dataset=train_dataset,
        eval_dataset=meta.eval_dataset,
        total_num_steps=meta.total_num_steps,
    )


def is_main_process() -> bool:
    """Return whether this is rank 0, read from the environment before torch.distributed starts."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def check_tokenizers(cfg: DictDefault, pocl: PoclConfig) -> None:
    """Raise before any model loads if the teacher or scoring model's vocabulary differs."""
    from transformers import AutoTokenizer

    from pocl_axolotl.teacher import check_same_tokenizer

    student_tokenizer = AutoTokenizer.from_pretrained(
        cfg.tokenizer_config or cfg.base_model,
        trust_remote_code=cfg.trust_remote_code or False,
    )
    check_same_tokenizer(student_tokenizer, pocl.teacher_model, "pocl.teacher_model")
    if pocl.scoring_model:
        check_same_tokenizer(student_tokenizer, pocl.scoring_model, "pocl.scoring_model")


def check_schedule_fits(cfg: DictDefault, pocl: PoclConfig, total_num_steps: int | None) -> None:
    """Raise before scoring or loading a model if the run is too short for the stages."""
    from pocl_axolotl.curriculum import CurriculumSchedule

    total_steps = cfg.max_steps or total_num_steps
    if total_steps and total_steps > 0:
        CurriculumSchedule.from_settings(
            num_buckets=pocl.num_buckets,
            total_steps=total_steps,
            unlock_every=pocl.unlock_every,
            temperature_start=pocl.temperature_start,
            temperature_end=pocl.temperature_end,
            kd_ratio_start=pocl.kd_ratio_start,
            kd_ratio_end=pocl.kd_ratio_end,
        )


def compute_or_load_ranking(cfg: DictDefault, pocl: PoclConfig, dataset) -> DifficultyRanking:
    """Return the cached ranking of ``dataset`` or compute and cache it.

    Raises:
        ValueError: The dataset has fewer samples than buckets, or the difficulty
            file does not match it; both before any model loads.
    """
    if len(dataset) < pocl.num_buckets:
        raise ValueError(
            f"The training dataset has {len(dataset)} samples, fewer than "
            f"`pocl.num_buckets` ({pocl.num_buckets}); lower num_buckets or add data."
        )
    if pocl.difficulty_file:
        difficulty = difficulty_from_file(cfg, Path(pocl.difficulty_file), dataset)
        return ranking_from_difficulty(difficulty, pocl.num_buckets)

    cache_root = Path(cfg.dataset_prepared_path or DEFAULT_DATASET_PREPARED_PATH) / "pocl_difficulty"
    cache_root.mkdir(parents=True, exist_ok=True)
    key = cache_key(cfg, pocl, dataset)
    entry = cache_root / key
    with FileLock(str(cache_root / f"{key}.lock")):
        if (entry / CACHE_FILE).exists():
            LOG.info(
                f"Reusing cached difficulty scores from {entry}; fusing them with "
                f"rrf_k={pocl.rrf_k:g} into {pocl.num_buckets} buckets",
                main_process_only=False,
            )
            return load_cached_ranking(entry, pocl)
        if not cfg.is_preprocess:
            LOG.warning(
                "No cached difficulty scores match this configuration, so they are "
                "computed now. Run `axolotl preprocess` first to compute them once."
            )
        metrics = score_dataset(cfg, pocl, dataset)
        ranking = fuse_and_bucket(metrics, rrf_k=pocl.rrf_k, num_buckets=pocl.num_buckets)
        save_cache(entry, ranking, key)
        LOG.info(f"Saved difficulty scores to {entry}", main_process_only=False)
        return ranking


def difficulty_from_file(cfg: DictDefault, path: Path, dataset) -> np.ndarray:
    """Read `pocl.difficulty_file` and match its lines to the training samples."""
    from axolotl.loaders import load_tokenizer

    from pocl_axolotl.difficulty_file import read_difficulty_file
    from pocl_axolotl.scoring import TokenizedSample

    prompts = [
        tuple(TokenizedSample(list(input_ids), list(labels)).prompt_ids)
        for input_ids, labels in zip(dataset["input_ids"], dataset["labels"])
    ]
    tokenizer = None

    def tokenize(prompt: str) -> tuple[int, ...]:
        nonlocal tokenizer
        tokenizer = tokenizer or load_tokenizer(cfg)
        return tuple(tokenizer(prompt)["input_ids"])

    # Axolotl keeps a single dataset's order with either setting (merge_datasets).
    keeps_order = cfg.shuffle_merged_datasets is False or (
        len(cfg.datasets or []) == 1 and bool(cfg.curriculum_sampling)
    )
    return read_difficulty_file(path, prompts, tokenize, keeps_order=keeps_order)


def dataset_fingerprint(dataset) -> str:
    """Hash the tokens and labels of ``dataset`` in order."""
    digest = hashlib.sha256()
    columns = [name for name in ("input_ids", "labels") if name in dataset.column_names]
    for batch in dataset.select_columns(columns).iter(batch_size=1024):
        for name in columns:
            for row in batch[name]:
                digest.update(np.asarray(row, dtype=np.int64).tobytes())
                digest.update(b"|")
    digest.update(str(len(dataset)).encode())
    return digest.hexdigest()


def model_fingerprint(name: str) -> dict:
    """Identify a model: its name and, for a local folder, its files' sizes and times."""
    path = Path(name)
    if not path.is_dir():
        return {"name": name}
    files = sorted(
        (item.name, item.stat().st_size, int(item.stat().st_mtime))
        for item in path.iterdir()
        if item.is_file()
    )
    return {"name": str(path.resolve()), "files": files}


def file_digest(path: Path) -> str:
    """Hash a file's bytes."""
    if not path.is_file():
        raise ValueError(f"`pocl.references_file: {path}` does not exist.")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(cfg: DictDefault, pocl: PoclConfig, dataset) -> str:
    """Hash everything that changes the metric values into the name of a cache entry.

    `rrf_k` and `num_buckets` only change how the cached values are fused, which
    runs again on every load, so changing them reuses the scores.
    """
    scoring_model = pocl.scoring_model or cfg.base_model
    payload = {
        "version": SCORING_VERSION,
        "dataset": dataset_fingerprint(dataset),
        "scoring_model": model_fingerprint(scoring_model),
        "metrics": list(pocl.difficulty_metrics),
        "max_new_tokens": pocl.scoring_max_new_tokens,
        "batch_size": pocl.scoring_batch_size,
        "dtype": scoring_dtype_name(cfg),
    }
    if "teacher_kl" in pocl.difficulty_metrics:
        payload["teacher"] = model_fingerprint(pocl.teacher_model)
        payload["teacher_dtype"] = pocl.teacher_dtype
    if pocl.references_file and "rouge_l" in pocl.difficulty_metrics:
        payload["references"] = file_digest(Path(pocl.references_file))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def scoring_dtype_name(cfg: DictDefault) -> str:
    """Scoring runs in bf16 or fp16 when training does and a GPU is present, else fp32."""
    if torch.cuda.is_available():
        if cfg.bf16 in (True, "auto") and torch.cuda.is_bf16_supported():
            return "bfloat16"
        if cfg.fp16:
            return "float16"
    return "float32"


def save_cache(entry: Path, ranking: DifficultyRanking, key: str) -> None:
    """Write the metric values atomically: into a temporary folder, then rename."""
    payload = {
        "key": key,
        "metrics": {name: _json_floats(values) for name, values in ranking.metrics.items()},
    }
    temporary = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        (temporary / CACHE_FILE).write_text(json.dumps(payload), encoding="utf-8")
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(temporary, entry)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def load_cached_ranking(entry: Path, pocl: PoclConfig) -> DifficultyRanking:
    """Rebuild the ranking from cached metric values."""
    payload = json.loads((entry / CACHE_FILE).read_text(encoding="utf-8"))
    metrics = {
        name: np.array([np.nan if value is None else value for value in values], dtype=np.float64)
        for name, values in payload["metrics"].items()
    }
    return fuse_and_bucket(metrics, rrf_k=pocl.rrf_k, num_buckets=pocl.num_buckets)


def _json_floats(values: np.ndarray) -> list[float | None]:
    return [float(value) if math.isfinite(value) else None for value in values]


def score_dataset(cfg: DictDefault, pocl: PoclConfig, dataset) -> dict[str, np.ndarray]:
    """Score every sample of ``dataset`` with each configured metric."""
    from transformers import AutoModelForCausalLM

    from axolotl.loaders import load_tokenizer

    from pocl_axolotl import scoring

    tokenizer = load_tokenizer(cfg)
    samples = [
        scoring.TokenizedSample(list(input_ids), list(labels))
        for input_ids, labels in zip(dataset["input_ids"], dataset["labels"])
    ]
    device = scoring_device()
    dtype = getattr(torch, scoring_dtype_name(cfg))
    name = pocl.scoring_model or cfg.base_model
    LOG.info(f"Scoring {len(samples)} samples with {name} on {device} ({dtype})")
    model = AutoModelForCausalLM.from_pretrained(
        name, dtype=dtype, trust_remote_code=cfg.trust_remote_code or False
    ).to(device)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch_size = pocl.scoring_batch_size
    metrics: dict[str, np.ndarray] = {}
    for metric in pocl.difficulty_metrics:
        started = time.perf_counter()
        if metric == "lm_loss":
            metrics[metric] = scoring.score_lm_loss(
                model, samples, pad_token_id=pad_token_id, batch_size=batch_size
            )
        elif metric == "rouge_l":
            extra = None
            if pocl.references_file:
                extra = scoring.references_by_prompt(pocl.references_file, tokenizer)
                matched = sum(tuple(sample.prompt_ids) in extra for sample in samples)
                LOG.info(
                    f"{matched} of {len(samples)} samples have more references in "
                    f"{pocl.references_file}"
                )
            metrics[metric] = scoring.score_rouge_l(
                model, tokenizer, samples,
                max_new_tokens=pocl.scoring_max_new_tokens, batch_size=batch_size,
                extra_references=extra,
            )
        elif metric == "teacher_kl":
            from pocl_axolotl.teacher import load_teacher, resolve_dtype

            teacher = load_teacher(
                pocl.teacher_model, dtype=resolve_dtype(pocl.teacher_dtype, dtype),
                device=device, trust_remote_code=cfg.trust_remote_code or False,
            )
            metrics[metric] = scoring.score_teacher_kl(
                model, teacher, samples, pad_token_id=pad_token_id, batch_size=batch_size
            )
            del teacher
        else:
            metrics[metric] = scoring.score_length(samples)
        elapsed = time.perf_counter() - started
        LOG.info(f"Scored {metric} in {elapsed:.1f} s ({len(samples) / max(elapsed, 1e-9):.1f} samples/s)")
    del model
    return metrics


def scoring_device() -> torch.device:
    """Return the GPU of this process when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
