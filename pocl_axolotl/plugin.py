"""The Axolotl plugin: ``plugins: [pocl_axolotl.POCLPlugin]``.

The hooks stay thin and import the heavy modules lazily: importing
``axolotl.core.builders`` while the plugin loads would freeze Axolotl's
training-argument mixins before the plugin registers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from pocl_axolotl.log import get_logger

from pocl_axolotl.args import PoclConfig, parse_pocl_config

# Values of Axolotl's `lr_scheduler` that `pocl.restart_lr_each_stage` restarts.
STAGE_LR_SCHEDULERS = ("cosine", "linear", "constant")
# Warm-up fraction of each stage when the YAML sets neither warmup_steps nor
# warmup_ratio, the fraction Axolotl 0.19.0 uses for a whole run then.
DEFAULT_STAGE_WARMUP_RATIO = 0.03

LOG = get_logger(__name__)


class POCLPlugin(BasePlugin):
    """Curriculum knowledge distillation (POCL) from an in-process teacher."""

    def register(self, cfg: dict):
        """Validate the raw ``pocl:`` block before Axolotl validates the rest."""
        parse_pocl_config(cfg.get("pocl"))
        check_supported_setup(cfg)

    def get_input_args(self) -> str:
        return "pocl_axolotl.args.PoclArgs"

    def load_datasets(self, cfg, preprocess: bool = False):
        """Tokenize with Axolotl, then add the difficulty buckets.

        This is the first hook that receives the normalised configuration, so it also
        corrects the device map of multi-process runs without a GPU.
        """
        from pocl_axolotl.preparation import load_datasets_with_difficulty

        prepare_multi_process_cpu_run(cfg)
        return load_datasets_with_difficulty(cfg, parse_pocl_config(cfg.pocl), preprocess)

    def get_trainer_cls(self, cfg):
        from pocl_axolotl.trainer import PoclTrainer

        return PoclTrainer

    def post_trainer_create(self, cfg, trainer):
        """Load the frozen teacher on the student's device and attach the curriculum."""
        from pocl_axolotl.teacher import load_teacher, resolve_dtype

        pocl = parse_pocl_config(cfg.pocl)
        student = trainer.accelerator.unwrap_model(trainer.model)
        teacher = load_teacher(
            pocl.teacher_model,
            dtype=resolve_dtype(pocl.teacher_dtype, student.dtype),
            device=trainer.args.device,
            trust_remote_code=bool(cfg.trust_remote_code),
        )
        trainer.setup_pocl(pocl, teacher)

    def create_lr_scheduler(self, cfg, trainer, optimizer, num_training_steps):
        """Restart the learning-rate schedule at every stage when asked to."""
        if not parse_pocl_config(cfg.pocl).restart_lr_each_stage:
            return None
        from pocl_axolotl.lr_schedule import build_stage_lr_scheduler

        # Axolotl turns warmup_ratio into a step count of the whole run; each
        # stage warms up for that fraction of its own steps instead.
        if cfg.warmup_steps is not None:
            warmup = cfg.warmup_steps
        elif cfg.warmup_ratio is not None:
            warmup = cfg.warmup_ratio
        else:
            warmup = DEFAULT_STAGE_WARMUP_RATIO
        return build_stage_lr_scheduler(trainer, optimizer, warmup=warmup)


def prepare_multi_process_cpu_run(cfg) -> None:
    """Make a multi-process run without a GPU train data-parallel on the CPU.

    With a world size above 1, Axolotl 0.19.0 sets ``device_map`` to
    ``{"": LOCAL_RANK}``, which Transformers reads as a GPU index, so loading
    fails with "Cannot access accelerator device". The map is set to the CPU.
    Accelerate 1.13 also sets up gloo data parallelism on the CPU only when
    ``ACCELERATE_USE_CPU`` is set. Otherwise AxolotlTrainer's fresh
    accelerator state makes each process train alone on all the data. Runs
    whose device is a GPU are left as they are.
    """
    if not is_multi_process_cpu_run(cfg):
        return
    os.environ["ACCELERATE_USE_CPU"] = "true"
    device_map = cfg.device_map
    if isinstance(device_map, dict) and all(isinstance(v, int) for v in device_map.values()):
        LOG.info(f"No GPU found: loading the model on the CPU instead of {device_map}")
        cfg.device_map = {"": "cpu"}


def is_multi_process_cpu_run(cfg) -> bool:
    """Return whether several processes train and Axolotl chose the CPU as their device."""
    return (cfg.world_size or 1) > 1 and str(cfg.device or "cpu").startswith("cpu")


def check_supported_setup(cfg: dict) -> None:
    """Reject combinations the plugin does not support, before any model loads.

    Raises:
        ValueError: DeepSpeed ZeRO-3 is enabled, `unlock_on_plateau` is combined
            with sample packing, `rouge_l` with `train_on_inputs`, or
            `restart_lr_each_stage` with a scheduler it has no per-stage form of.
    """
    pocl = parse_pocl_config(cfg.get("pocl"))
    if cfg.get("sample_packing") and pocl.unlock_on_plateau:
        raise ValueError(
            "`pocl.unlock_on_plateau` does not work with `sample_packing: true`, "
            "because packed batches are fixed before training starts. Turn one off."
        )
    if cfg.get("train_on_inputs") and "rouge_l" in pocl.difficulty_metrics:
        raise ValueError(
            "`pocl.difficulty_metrics` has rouge_l, which compares the response to "
            "each sample's prompt with its reference, but `train_on_inputs: true` "
            "supervises every token, so no sample has a prompt. Set train_on_inputs: "
            "false or leave rouge_l out of difficulty_metrics."
        )
    scheduler = cfg.get("lr_scheduler") or "cosine"
    if pocl.restart_lr_each_stage and scheduler not in STAGE_LR_SCHEDULERS:
        raise ValueError(
            "`pocl.restart_lr_each_stage` supports lr_scheduler "
            f"{', '.join(STAGE_LR_SCHEDULERS)}, got `lr_scheduler: {scheduler}`."
        )
    stage = deepspeed_zero_stage(cfg.get("deepspeed"))
    if stage == 3:
        raise ValueError(
            f"`deepspeed: {cfg.get('deepspeed')}` uses ZeRO stage 3, which "
            "pocl_axolotl does not support: the in-process teacher would need its own "
            "DeepSpeed engine. Use ZeRO stage 1 or 2, or DDP."
        )


def deepspeed_zero_stage(deepspeed) -> int | None:
    """Return the ZeRO stage of a DeepSpeed config given as a path or a mapping."""
    if not deepspeed:
        return None
    config = deepspeed
    if isinstance(deepspeed, (str, Path)):
        path = Path(deepspeed)
        if not path.is_file():
            return None
        config = json.loads(path.read_text(encoding="utf-8"))
    return (config.get("zero_optimization") or {}).get("stage")


__all__ = ["POCLPlugin", "PoclConfig"]
