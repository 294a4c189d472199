"""The trainer: curriculum sampler, in-process teacher and the KD + CE loss.

Shapes: ``B`` batch, ``T`` sequence length, ``V`` vocabulary size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Sampler

from axolotl.core.trainers.base import AxolotlTrainer
from pocl_axolotl.log import get_logger

from pocl_axolotl.args import PoclConfig
from pocl_axolotl.curriculum import (
    CurriculumSampler,
    CurriculumSchedule,
    LazyCurriculumSampler,
    PackedCurriculumBatchSampler,
    PlateauStages,
    build_packed_batches,
)
from pocl_axolotl.losses import check_vocab_sizes, kd_loss

LOG = get_logger(__name__)

BUCKET_COLUMN = "pocl_bucket"
INDEX_COLUMN = "pocl_index"
COLUMN_PREFIX = "pocl_"
IGNORE_INDEX = -100
STATE_FILE = "pocl_state.json"


class PoclColumnCollator:
    """Wrap a collator so that the plugin's ``pocl_*`` columns never reach it.

    With sample packing Axolotl keeps every dataset column, and its packing
    collator fails on extra scalar columns. The wrapper removes them from each
    feature and, when present, returns the dataset indices as ``pocl_index``.
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features, *args, **kwargs):
        indices: list[int] = []
        packed = bool(features) and isinstance(features[0], list)
        bins = features if packed else [features]
        stripped = [[self._strip(feature, indices) for feature in group] for group in bins]
        batch = self.collator(stripped if packed else stripped[0], *args, **kwargs)
        if indices:
            batch[INDEX_COLUMN] = torch.tensor(indices, dtype=torch.long)
        return batch

    @staticmethod
    def _strip(feature: dict, indices: list[int]) -> dict:
        if INDEX_COLUMN in feature:
            indices.append(int(feature[INDEX_COLUMN]))
        return {key: value for key, value in feature.items() if not key.startswith(COLUMN_PREFIX)}


@dataclass
class LossTotals:
    """Sums over a logging window, for per-token means of the two loss terms.

    The sums stay tensors on the training device, so that accumulating them does
    not synchronise with the device at every micro-batch.
    """

    kd_sum: torch.Tensor | float = 0.0
    ce_sum: torch.Tensor | float = 0.0
    tokens: torch.Tensor | float = 0.0

    def add(self, kd_sum: torch.Tensor, ce_sum: torch.Tensor, tokens: torch.Tensor) -> None:
        self.kd_sum = self.kd_sum + kd_sum.detach().double()
        self.ce_sum = self.ce_sum + ce_sum.detach().double()
        self.tokens = self.tokens + tokens.detach().double()


class PoclTrainer(AxolotlTrainer):
    """AxolotlTrainer that distills from a frozen in-process teacher on a curriculum.

    The plugin calls ``setup_pocl`` right after Axolotl builds the trainer; until
    then the trainer behaves like ``AxolotlTrainer``.
    """

    pocl: PoclConfig | None = None
    teacher: torch.nn.Module | None = None
    schedule: CurriculumSchedule | None = None
    # The stage boundaries: the schedule itself, or PlateauStages on top of it.
    stages: CurriculumSchedule | PlateauStages | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # compute_loss divides both terms by num_items_in_batch itself, so the
        # Trainer must pass it and must not divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True
        # Axolotl 0.19.0 turns this off, which makes num_items_in_batch each
        # process's own token count, so DDP would average per-process means. With
        # it on, both terms are means over every process's tokens of the step, and
        # the loss does not depend on how the tokens fall on the processes.
        self.args.average_tokens_across_devices = True
        self._totals = {"train": LossTotals(), "eval": LossTotals()}
        self._consumed_log: Path | None = None

    def setup_pocl(self, pocl: PoclConfig, teacher: torch.nn.Module) -> None:
        """Attach the settings and the teacher and build the schedule of the run.

        Raises:
            ValueError: The run is too short for the stages, or the teacher's
                vocabulary does not match the student's.
        """
        self.pocl = pocl
        self.teacher = teacher
        self.schedule = CurriculumSchedule.from_settings(
            num_buckets=pocl.num_buckets,
            total_steps=self.args.max_steps,
            unlock_every=pocl.unlock_every,
            temperature_start=pocl.temperature_start,
            temperature_end=pocl.temperature_end,
            kd_ratio_start=pocl.kd_ratio_start,
            kd_ratio_end=pocl.kd_ratio_end,
        )
        student = self.accelerator.unwrap_model(self.model)
        check_vocab_sizes(
            student.get_output_embeddings().weight.shape[0],
            teacher.get_output_embeddings().weight.shape[0],
            len(self.processing_class),
        )
        self.data_collator = PoclColumnCollator(self.data_collator)
        self.stages = self.schedule
        if pocl.unlock_on_plateau is not None:
            self.stages = PlateauStages(
                self.schedule,
                patience=pocl.unlock_on_plateau.patience,
                min_relative_improvement=pocl.unlock_on_plateau.min_relative_improvement,
                delay_steps=self._plateau_delay_steps(),
            )
        self._log_schedule()

    def _plateau_delay_steps(self) -> int:
        """Steps between a plateau decision and the stage change it makes.

        When the loss of step k is logged, the dataloader has fetched the
        micro-batches of step k + 1 and, with workers, up to ``num_workers x
        prefetch_factor`` more. The next stage starts after all of those.
        """
        workers = self.args.dataloader_num_workers
        prefetched = workers * (self.args.dataloader_prefetch_factor or 2) if workers else 1
        return 2 + -(-prefetched // self.args.gradient_accumulation_steps)

    def stage_at(self, step: int) -> int:
        """Return the curriculum stage of optimizer step ``step``."""
        return self.stages.stage_at(step)

    def temperature_at(self, step: int) -> float:
        """Return the KD temperature of optimizer step ``step``."""
        return self.schedule.stage_temperature(self.stage_at(step))

    def kd_ratio_at(self, step: int) -> float:
        """Return the KD weight of optimizer step ``step``."""
        return self.schedule.stage_kd_ratio(self.stage_at(step))

    def _log_schedule(self) -> None:
        schedule = self.schedule
        stages = []
        for stage in range(schedule.num_stages):
            start = schedule.stage_start(stage)
            # Printed 1-based, as Trainer numbers the steps in its logs.
            stages.append(
                f"stage {stage}: steps {start + 1}-{schedule.stage_end(stage)}, "
                f"T={schedule.stage_temperature(stage):.3g}, "
                f"kd_ratio={schedule.stage_kd_ratio(stage):.3g}"
            )
        plateau = ", earlier on a loss plateau" if isinstance(self.stages, PlateauStages) else ""
        LOG.info(
            f"POCL curriculum: {self.pocl.loss}, {schedule.num_stages} stages of "
            f"{schedule.steps_per_stage} optimizer steps{plateau}; " + "; ".join(stages)
        )

    # Sampling --------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None) -> Sampler | None:
        if self.pocl is None:
            return super()._get_train_sampler(train_dataset)
        # The dataloader passes the dataset after removing the columns that the
        # model does not take, so the buckets are read from the original one.
        buckets = self._buckets_of(self.train_dataset)
        self._bucket_sizes = [
            sum(1 for bucket in buckets if bucket == stage)
            for stage in range(self.schedule.num_stages)
        ]
        # Every optimizer step takes this many micro-batches from the stream,
        # and accelerate deals them out to the processes in turn.
        micro_batches_per_step = self.args.gradient_accumulation_steps * self.args.world_size
        samples_per_step = self.args.per_device_train_batch_size * micro_batches_per_step
        if self.args.sample_packing:
            return self._packed_batch_sampler(buckets, micro_batches_per_step)
        if isinstance(self.stages, PlateauStages):
            self._lazy_sampler = LazyCurriculumSampler(
                buckets, self.stages, samples_per_step, self.args.seed
            )
            return self._lazy_sampler
        return CurriculumSampler(buckets, self.schedule, samples_per_step, self.args.seed)

    def _packed_batch_sampler(self, buckets, micro_batches_per_step) -> PackedCurriculumBatchSampler:
        from axolotl.utils.samplers import get_dataset_lengths

        # The same bin shapes as AxolotlTrainer._create_multipack_sampler.
        if self.args.multipack_real_batches:
            bins_per_batch = self.args.per_device_train_batch_size
            bin_capacity = self.args.max_seq_length
        else:
            bins_per_batch = 1
            bin_capacity = self.args.per_device_train_batch_size * self.args.max_seq_length
        batches = build_packed_batches(
            buckets,
            get_dataset_lengths(self.train_dataset),
            self.schedule,
            batches_per_step=micro_batches_per_step,
            bins_per_batch=bins_per_batch,
            bin_capacity=bin_capacity,
            seed=self.args.seed,
        )
        return PackedCurriculumBatchSampler(batches, bins_per_batch)

    def _buckets_of(self, dataset) -> list[int]:
        if self.pocl.num_buckets == 1:
            return [0] * len(dataset)
        if BUCKET_COLUMN not in dataset.column_names:
            raise ValueError(
                f"The training dataset has no `{BUCKET_COLUMN}` column, so the "
                "difficulty buckets were not computed. Check that "
                "`plugins: [pocl_axolotl.POCLPlugin]` is in the YAML file and that "
                "no other plugin loads the datasets."
            )
        return dataset[BUCKET_COLUMN]

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None,
                        is_training=False, dataloader_key=None):
        if is_training and self.pocl is not None and self.pocl.log_consumed_indices:
            if INDEX_COLUMN not in dataset.column_names:
                dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
        return super()._get_dataloader(
            dataset, description, batch_size, sampler_fn=sampler_fn,
            is_training=is_training, dataloader_key=dataloader_key,
        )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.pocl is not None and self.pocl.log_consumed_indices:
            if INDEX_COLUMN not in self._signature_columns:
                self._signature_columns.append(INDEX_COLUMN)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self.pocl is not None and resume_from_checkpoint:
            self._load_pocl_state(resume_from_checkpoint)
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        if self.pocl is not None and self.is_world_process_zero():
            # Hugging Face writes trainer_state.json only into checkpoints; the
            # final one keeps the pocl/* log history also when save_strategy is "no".
            self.state.save_to_json(str(Path(self.args.output_dir) / "trainer_state.json"))
        return output

    def _save_checkpoint(self, model, trial, **kwargs):
        super()._save_checkpoint(model, trial, **kwargs)
        if isinstance(self.stages, PlateauStages) and self.is_world_process_zero():
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            (folder / STATE_FILE).write_text(json.dumps(self.stages.state_dict()), encoding="utf-8")

    def _load_pocl_state(self, checkpoint) -> None:
        """Restore the plateau decisions saved with ``checkpoint``."""
        if not isinstance(self.stages, PlateauStages):
            return
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing, so the stage boundaries that `pocl.unlock_on_plateau` "
                "chose before this checkpoint are unknown; resume from a checkpoint "
                "saved by pocl_axolotl with the same settings."
            )
        self.stages.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
        LOG.info(f"Restored the curriculum stages {self.stages.starts} from {path}")

    def _observe_plateau(self, loss: float) -> None:
        next_start = self.stages.observe(self.state.global_step, loss)
        if next_start is None:
            return
        sampler = getattr(self, "_lazy_sampler", None)
        if sampler is not None and sampler.last_step_drawn >= next_start:
            raise RuntimeError(
                f"The dataloader drew step {sampler.last_step_drawn} before the plateau "
                f"decision for step {next_start}; lower dataloader_num_workers or "
                "dataloader_prefetch_factor."
            )
        LOG.info(
            f"Training loss plateaued at step {self.state.global_step}: stage "
            f"{self.stage_at(next_start)} starts at step {next_start}"
        )

    # Loss ------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.pocl is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        indices = inputs.pop(INDEX_COLUMN, None)
        labels = inputs["labels"]
        scale_across_devices = num_items_in_batch is not None
        local_tokens = (labels[:, 1:] != IGNORE_INDEX).sum()
        if num_items_in_batch is None:
            num_items_in_batch = local_tokens
        # A window without any supervised token gives 0, not 0 / 0.
        num_items_in_batch = torch.as_tensor(num_items_in_batch, device=labels.device).clamp(min=1)
        # Training computes step global_step; evaluation scores the model as the
        # last finished step left it, at that step's temperature and ratio.
        step = self.state.global_step if model.training else max(self.state.global_step - 1, 0)
        if indices is not None and model.training:
            self._record_consumed(step, indices)

        outputs = model(**inputs, num_items_in_batch=num_items_in_batch)
        ce = outputs.loss
        kd = self._kd_term(outputs.logits, inputs, labels, step, num_items_in_batch)
        ratio = self.kd_ratio_at(step)
        loss = ratio * kd + (1.0 - ratio) * ce

        # kd and ce are sums over this micro-batch divided by num_items_in_batch.
        self._totals["train" if model.training else "eval"].add(
            kd * num_items_in_batch, ce * num_items_in_batch, local_tokens
        )

        if (
            scale_across_devices
            and self.args.average_tokens_across_devices
            and self.accelerator.num_processes > 1
        ):
            # num_items_in_batch counts every process's tokens and DDP averages
            # the gradients over processes, as in Trainer.compute_loss.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _kd_term(self, student_logits, inputs, labels, step, num_items_in_batch):
        """Return the KD term of one micro-batch, summed and divided by ``num_items_in_batch``."""
        teacher_inputs = {
            key: inputs[key]
            for key in ("input_ids", "attention_mask", "position_ids")
            if key in inputs
        }
        # NOTE: the teacher's logits exist at every position, prompt included; on
        # long prompts with a large vocabulary that is most of their memory.
        with torch.no_grad():
            teacher_logits = self.teacher(**teacher_inputs).logits  # (B, T, V_teacher)
        return kd_loss(
            student_logits,
            teacher_logits,
            labels,
            loss=self.pocl.loss,
            temperature=self.temperature_at(step),
            jsd_beta=self.pocl.jsd_beta,
            skew_alpha=self.pocl.skew_alpha,
            scale_by_temperature_squared=self.pocl.scale_by_temperature_squared,
            num_items_in_batch=num_items_in_batch,
            chunk_size=self.pocl.kd_chunk_size,
        )

    def _record_consumed(self, step: int, indices: torch.Tensor) -> None:
        if self._consumed_log is None:
            folder = Path(self.args.output_dir) / "pocl_consumed"
            folder.mkdir(parents=True, exist_ok=True)
            self._consumed_log = folder / f"rank{self.args.process_index}.jsonl"
            self._consumed_log.unlink(missing_ok=True)
        record = {"step": step, "indices": indices.tolist()}
        with self._consumed_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    # Logging ---------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.pocl is not None:
            if "loss" in logs:
                logs.update(self._pocl_metrics("train", prefix="pocl/"))
                if isinstance(self.stages, PlateauStages):
                    self._observe_plateau(float(logs["loss"]))
            elif "eval_loss" in logs:
                logs.update(self._pocl_metrics("eval", prefix="eval_pocl/"))
        super().log(logs, start_time)

    def _pocl_metrics(self, split: str, prefix: str) -> dict[str, float]:
        """Return the schedule values of the last step and the window's loss terms."""
        step = max(self.state.global_step - 1, 0)
        totals = self._totals[split]
        sums = torch.stack(
            [
                torch.as_tensor(value, dtype=torch.float64, device=self.accelerator.device)
                for value in (totals.kd_sum, totals.ce_sum, totals.tokens)
            ]
        )
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        kd_sum, ce_sum, tokens = sums.tolist()
        self._totals[split] = LossTotals()
        metrics = {
            f"{prefix}stage": self.stage_at(step),
            f"{prefix}temperature": round(self.temperature_at(step), 6),
            f"{prefix}kd_ratio": round(self.kd_ratio_at(step), 6),
        }
        bucket_sizes = getattr(self, "_bucket_sizes", None)
        if bucket_sizes:
            unlocked = sum(bucket_sizes[: self.stage_at(step) + 1])
            metrics[f"{prefix}unlocked_fraction"] = round(unlocked / sum(bucket_sizes), 6)
        if tokens > 0:
            metrics[f"{prefix}kd_loss"] = kd_sum / tokens
            metrics[f"{prefix}ce_loss"] = ce_sum / tokens
        return metrics
