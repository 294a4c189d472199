"""The ``pocl:`` block of an Axolotl YAML file and its validation.

Axolotl merges ``PoclArgs`` into its own pydantic schema, so ``pocl`` becomes one
more top-level key. Axolotl ignores unknown top-level keys, so every setting of
the plugin lives inside the nested ``PoclConfig``, which forbids unknown keys: a
misspelt key fails validation instead of being dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pocl_axolotl.losses import DEFAULT_CHUNK_SIZE as DEFAULT_KD_CHUNK_SIZE
from pocl_axolotl.losses import DIVERGENCES

DIVERGENCE_NAMES = DIVERGENCES
DifficultyMetric = Literal["lm_loss", "rouge_l", "teacher_kl", "length"]



class PlateauConfig(BaseModel):
    """When to end a stage early, the ``pocl.unlock_on_plateau`` block."""

    model_config = ConfigDict(extra="forbid")

    patience: int = Field(
        default=3,
        ge=1,
        description=(
            "Logging windows (logging_steps each) in a row without enough "
            "improvement of the training loss before the next bucket unlocks."
        ),
    )
    min_relative_improvement: float = Field(
        default=0.01,
        ge=0.0,
        lt=1.0,
        description=(
            "Relative decrease of the logged training loss, against the best loss "
            "of the stage, that counts as an improvement. In [0, 1)."
        ),
    )


class PoclConfig(BaseModel):
    """Settings of curriculum knowledge distillation, the ``pocl:`` block."""

    model_config = ConfigDict(extra="forbid")

    teacher_model: str = Field(
        description=(
            "Teacher model: a local directory or a Hugging Face hub id. It must use "
            "the student's tokenizer."
        ),
    )
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description=(
            "Dtype of the teacher's weights. `auto` uses the dtype of the student's "
            "weights after Axolotl has loaded it."
        ),
    )
    loss: Literal[DIVERGENCE_NAMES] = Field(  # type: ignore[valid-type]
        default="forward_kl",
        description="Divergence between the teacher's and the student's token distributions.",
    )
    jsd_beta: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Weight β of the teacher in `jsd`: β KL(p‖m) + (1-β) KL(q‖m) with "
            "m = β p + (1-β) q. In [0, 1]; both endpoints make the loss zero."
        ),
    )
    skew_alpha: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "Skew α of `skew_forward_kl` and `skew_reverse_kl`: KL(p‖α p + (1-α) q). "
            "In [0, 1); 0 gives the plain KL."
        ),
    )
    temperature_start: float = Field(
        default=1.0,
        gt=0.0,
        description="KD temperature of the first stage. Greater than 0.",
    )
    temperature_end: float = Field(
        default=2.0,
        gt=0.0,
        description="KD temperature of the last stage. Greater than 0.",
    )
    scale_by_temperature_squared: bool = Field(
        default=True,
        description="Multiply the KD term by T² (Hinton's convention), for every divergence.",
    )
    kd_ratio_start: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description=(
            "Weight r of the KD term in the first stage; cross-entropy gets 1 - r. "
            "In [0, 1]."
        ),
    )
    kd_ratio_end: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Weight r of the KD term in the last stage. In [0, 1].",
    )
    num_buckets: int = Field(
        default=4,
        ge=1,
        description=(
            "Number of difficulty buckets, which is also the number of stages. "
            "1 turns the curriculum off: plain KD over the whole shuffled dataset, "
            "with no difficulty scoring."
        ),
    )
    unlock_every: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Optimizer steps per stage. Null means max_steps // num_buckets; the "
            "last stage runs until training ends."
        ),
    )
    difficulty_metrics: list[DifficultyMetric] = Field(
        default=["lm_loss", "rouge_l"],
        min_length=1,
        description=(
            "Metrics fused by reciprocal rank fusion: `lm_loss` (mean cross-entropy "
            "of the reference response, lower is easier), `rouge_l` (ROUGE-L F1 of "
            "the greedy response, higher is easier), `teacher_kl` (mean KL from the "
            "teacher to the scoring model on the reference, lower is easier), "
            "`length` (reference tokens, fewer is easier)."
        ),
    )
    rrf_k: float = Field(
        default=60.0,
        ge=0.0,
        description="Constant k of reciprocal rank fusion, Σ 1/(k + rank). At least 0.",
    )
    scoring_model: str | None = Field(
        default=None,
        description=(
            "Model that scores difficulty. Null uses the student as loaded before "
            "training. It must use the student's tokenizer."
        ),
    )
    scoring_batch_size: int = Field(
        default=8,
        ge=1,
        description="Samples per batch while scoring difficulty.",
    )
    scoring_max_new_tokens: int = Field(
        default=128,
        ge=1,
        description="Maximum generated tokens per sample for the `rouge_l` metric.",
    )
    difficulty_file: str | None = Field(
        default=None,
        description=(
            "JSON Lines file of precomputed difficulty (`difficulty`, lower is "
            "easier), used instead of scoring. Lines are matched to training samples "
            "by `prompt` (or `instruction` and `input`), by `index` as in an earlier "
            "run's pocl_difficulty.jsonl (its `rank` is used), or by position when "
            "`shuffle_merged_datasets: false`."
        ),
    )
    references_file: str | None = Field(
        default=None,
        description=(
            "JSON Lines file with several reference responses per prompt for "
            "`rouge_l` (`output` a string or a list of strings, plus `prompt`, or "
            "`instruction` and `input`). A training sample whose prompt matches a "
            "line scores the best ROUGE-L over those references and its own."
        ),
    )
    kd_chunk_size: int = Field(
        default=DEFAULT_KD_CHUNK_SIZE,
        ge=1,
        description=(
            "Token positions per chunk of the KD loss. The loss holds a few fp32 "
            "tensors of kd_chunk_size x vocabulary size at a time."
        ),
    )

    unlock_on_plateau: PlateauConfig | None = Field(
        default=None,
        description=(
            "End a stage before its unlock_every steps when the training loss stops "
            "improving; null keeps equal stages. Not available with sample packing."
        ),
    )
    restart_lr_each_stage: bool = Field(
        default=False,
        description=(
            "Restart the learning-rate schedule at every stage: a fresh warm-up "
            "of warmup_steps steps, or of warmup_ratio of the stage's steps (0.03 "
            "when neither is set), and a decay over the stage, as separate training "
            "jobs per stage would have. Supports lr_scheduler cosine, linear and "
            "constant."
        ),
    )
    log_consumed_indices: bool = Field(
        default=False,
        description=(
            "Write the dataset indices that each process trains on, per optimizer "
            "step, to `<output_dir>/pocl_consumed/rank<N>.jsonl`, to audit the "
            "curriculum."
        ),
    )

    @field_validator("difficulty_metrics")
    @classmethod
    def check_metrics_unique(cls, metrics: list[str]) -> list[str]:
        """Reject a metric listed twice, which would count double in the fusion."""
        repeated = sorted({name for name in metrics if metrics.count(name) > 1})
        if repeated:
            raise ValueError(
                f"lists {', '.join(repeated)} more than once; list each metric once"
            )
        return metrics


class PoclArgs(BaseModel):
    """Top-level keys that the plugin adds to Axolotl's configuration schema."""

    pocl: PoclConfig | None = Field(
        default=None,
        description="Settings of curriculum knowledge distillation (pocl_axolotl).",
    )


def format_validation_error(error: ValidationError, prefix: str = "pocl") -> str:
    """Format a pydantic error as one line per problem, naming each YAML key."""
    lines = []
    for item in error.errors():
        key = ".".join([prefix, *(str(part) for part in item["loc"])])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            known = ", ".join(PoclConfig.model_fields)
            message = f"unknown key; the known keys are: {known}"
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = f"{message} (got {item.get('input')!r})"
        lines.append(f"`{key}`: {message}")
    return "Invalid `pocl:` configuration:\n  " + "\n  ".join(lines)


def parse_pocl_config(raw: Any) -> PoclConfig:
    """Validate the raw ``pocl:`` block of a YAML file.

    Args:
        raw: The value of the ``pocl`` key: a mapping, or an already parsed config.

    Returns:
        The validated settings.

    Raises:
        ValueError: The block is missing, not a mapping, or has an invalid key or
            value; the message names every offending key.
    """
    if isinstance(raw, PoclConfig):
        return raw
    if raw is None:
        raise ValueError(
            "The plugin pocl_axolotl.POCLPlugin is enabled but the YAML file has no "
            "`pocl:` block; add one with at least `teacher_model: <path or hub id>`."
        )
    if not isinstance(raw, dict):
        raise ValueError(
            f"`pocl` must be a mapping of settings, got {type(raw).__name__}: {raw!r}"
        )
    try:
        return PoclConfig.model_validate(dict(raw))
    except ValidationError as error:
        raise ValueError(format_validation_error(error)) from None
