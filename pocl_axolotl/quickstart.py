"""Run a complete POCL distillation on CPU with small models built locally.

The command needs no GPU, no network and no model hub. In a work directory it:

  1. writes the training data: a built-in instruction dataset whose samples carry
     a known difficulty `level`, or a normalised copy of --data;
  2. trains a small byte-level BPE tokenizer on that data and the Alpaca prompt,
     and builds a teacher and a smaller student Llama from scratch;
  3. fine-tunes the teacher with plain Axolotl (`axolotl train teacher_sft.yml`);
  4. distils the teacher into the student with the plugin enabled
     (`axolotl preprocess student_pocl.yml`, then `axolotl train student_pocl.yml`);
     by default the fine-tuned teacher scores the difficulty of each sample;
  5. prints the time of each phase, the KD temperature of each curriculum stage and,
     when the data has levels, the Spearman correlation between each sample's level
     and the difficulty rank that the plugin measured.

With the defaults a run took 80 to 100 s on 2 shared CPU cores.

Work directory layout:

  data/train.jsonl       training file (`instruction`, `input`, `output`, `level`)
  tokenizer/             the BPE tokenizer (also saved in every model directory)
  teacher_init/          untrained teacher       teacher/       fine-tuned teacher
  student_init/          untrained student       student_pocl/  distilled student,
                                                 with pocl_difficulty.jsonl
  configs/               teacher_sft.yml and student_pocl.yml
  logs/                  one log per axolotl command

Example:

  pocl-axolotl quickstart --workdir ./pocl_quickstart --loss jsd --overwrite
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pocl_axolotl.args import DIVERGENCE_NAMES

DEFAULT_WORKDIR = "./pocl_quickstart"
DEFAULT_NUM_SAMPLES = 400
DEFAULT_SEED = 42
DEFAULT_TEACHER_STEPS = 300
DEFAULT_STUDENT_STEPS = 200
DEFAULT_VOCAB_SIZE = 512
NUM_BUCKETS = 4
SCORING_CHOICES = ("student", "teacher")
DEFAULT_SCORE_WITH = "teacher"

# Maximum tokens per training sample, prompt and response together. Built-in
# samples take at most 119 (2,000 samples, seeds 0, 7 and 42). Longer samples of
# --data are left out of the training file, so Axolotl drops none and report
# index i stays training line i.
SEQUENCE_LEN = 256
MICRO_BATCH_SIZE = 8
LEARNING_RATE = 3e-3

TEACHER_SIZE = {
    "hidden_size": 64,
    "num_layers": 4,
    "num_heads": 4,
    "intermediate_size": 176,
}
STUDENT_SIZE = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 88,
}

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

# Entries of the work directory that the quickstart creates; --overwrite deletes
# only these.
WORKDIR_ENTRIES = (
    "data",
    "tokenizer",
    "teacher_init",
    "teacher",
    "student_init",
    "student_pocl",
    "prepared_teacher",
    "prepared",
    "configs",
    "logs",
)

# --------------------------------------------------------------------------
# Built-in dataset
# --------------------------------------------------------------------------

# Per level 0..3: the range of items per sample, the number of distinct words
# an item is drawn from, and the bound (exclusive) of the numbers to sort. Each
# level roughly doubles the input and, except for counting, the response, and
# widens the choice of each item, so the response is also harder to predict.
# The ranges of item counts vary the `count` responses within a level.
LEVEL_ITEM_RANGES = ((2, 3), (4, 6), (7, 11), (12, 16))
LEVEL_WORD_POOL_SIZES = (5, 10, 20, 40)
LEVEL_NUMBER_BOUNDS = (10, 25, 50, 100)

BUILTIN_TASKS = {
    "repeat": "Repeat the following words.",
    "reverse": "Reverse the order of the following words.",
    "sort": "Sort the following numbers in ascending order.",
    "count": "Count the words in the input.",
}

WORDS = (
    "apple", "bird", "blue", "boat", "bread", "cat", "cloud", "cold", "dog", "door",
    "fish", "green", "hat", "hill", "horse", "house", "lamp", "leaf", "moon", "milk",
    "night", "pen", "rain", "red", "river", "road", "rock", "salt", "sand", "ship",
    "snow", "star", "stone", "sun", "table", "tea", "tree", "warm", "water", "wind",
)  # fmt: skip


def _builtin_response(task: str, items: list[str]) -> str:
    if task == "repeat":
        return " ".join(items)
    if task == "reverse":
        return " ".join(reversed(items))
    if task == "sort":
        return " ".join(str(number) for number in sorted(int(item) for item in items))
    if task == "count":
        return str(len(items))
    known = ", ".join(BUILTIN_TASKS)
    raise ValueError(f"unknown built-in task {task!r}; known tasks: {known}")


def _builtin_items(task: str, level: int, rng: random.Random) -> list[str]:
    count = rng.randint(*LEVEL_ITEM_RANGES[level])
    if task == "sort":
        return [str(rng.randrange(LEVEL_NUMBER_BOUNDS[level])) for _ in range(count)]
    pool = WORDS[: LEVEL_WORD_POOL_SIZES[level]]
    return [rng.choice(pool) for _ in range(count)]


def generate_builtin_dataset(num_samples: int, seed: int) -> list[dict[str, Any]]:
    """Generate instruction samples whose difficulty level is known.

    Levels (0 to 3) and tasks are balanced: sample i gets level ``i % 4`` and task
    ``(i // 4) % 4`` before the list is shuffled, so the file is not ordered by
    level. Higher levels have longer inputs, longer responses (except for
    counting) and items drawn from more words or a wider range of numbers.

    Args:
        num_samples: Number of samples, at least 1.
        seed: Seed of the generator; the same seed gives the same samples.

    Returns:
        Records with string fields ``instruction``, ``input``, ``output`` and the
        int field ``level``.

    Raises:
        ValueError: ``num_samples`` is below 1.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    rng = random.Random(seed)
    tasks = list(BUILTIN_TASKS)
    num_levels = len(LEVEL_ITEM_RANGES)
    plan = [
        (index % num_levels, tasks[(index // num_levels) % len(tasks)])
        for index in range(num_samples)
    ]
    rng.shuffle(plan)

    records = []
    for level, task in plan:
        items = _builtin_items(task, level, rng)
        records.append(
            {
                "instruction": BUILTIN_TASKS[task],
                "input": " ".join(items),
                "output": _builtin_response(task, items),
                "level": level,
            }
        )
    return records


# --------------------------------------------------------------------------
# JSON Lines input and output
# --------------------------------------------------------------------------


class DataFormatError(ValueError):
    """A line of an instruction data file that cannot be used for training."""


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line (UTF-8), creating parent directories.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON Lines file of objects, skipping blank lines.

    Raises:
        DataFormatError: A line is not valid JSON or not an object; the message
            names the file and the 1-based line number.
    """
    return [record for _, record in _iter_jsonl_objects(Path(path))]


def _iter_jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    from pocl_axolotl.jsonl import iter_json_lines

    for line_number, value in iter_json_lines(path, DataFormatError):
        if not isinstance(value, dict):
            kind = type(value).__name__
            message = f"{path}:{line_number}: expected a JSON object, got {kind}"
            raise DataFormatError(message)
        yield line_number, value


def normalize_instruction_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Convert an Alpaca- or Dolly-style record to the Alpaca training fields.

    ``instruction`` must be a non-empty string. ``input`` may be missing, null or
    empty; Dolly's ``context`` is used when ``input`` is missing. ``output`` (or
    Dolly's ``response``) is a non-empty string or a list of reference strings, of
    which the first is the training target. An int ``level`` is kept; other fields
    are dropped.

    Returns:
        A record with string fields ``instruction``, ``input`` and ``output``, plus
        ``level`` when the raw record has an int one.

    Raises:
        DataFormatError: A field is missing or has the wrong type; the message
            names the field but not the line.
    """
    instruction = raw.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataFormatError("`instruction` is missing or not a non-empty string")

    input_text = raw["input"] if "input" in raw else raw.get("context")
    if input_text is None:
        input_text = ""
    if not isinstance(input_text, str):
        kind = type(input_text).__name__
        raise DataFormatError(f"`input` must be a string, got {kind}")

    output = raw["output"] if "output" in raw else raw.get("response")
    record: dict[str, Any] = {
        "instruction": instruction,
        "input": input_text,
        "output": _first_reference(output),
    }
    level = raw.get("level")
    if isinstance(level, int) and not isinstance(level, bool):
        record["level"] = level
    return record


def _first_reference(output: Any) -> str:
    if isinstance(output, list):
        if not output:
            raise DataFormatError("`output` is an empty list; give at least one string")
        if not all(isinstance(item, str) for item in output):
            raise DataFormatError("`output` must be a string or a list of strings")
        output = output[0]
    if output is None:
        raise DataFormatError("`output` is missing")
    if not isinstance(output, str):
        kind = type(output).__name__
        message = f"`output` must be a string or a list of strings, got {kind}"
        raise DataFormatError(message)
    if not output.strip():
        raise DataFormatError("`output` is empty; a sample needs a response")
    return output


def load_instruction_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and normalise an Alpaca- or Dolly-style JSON Lines file.

    Each non-blank line goes through :func:`normalize_instruction_record`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFormatError: A line is malformed; the message starts with
            ``<path>:<line>:`` (1-based) and names the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")

    records = []
    for line_number, raw in _iter_jsonl_objects(path):
        try:
            records.append(normalize_instruction_record(raw))
        except DataFormatError as error:
            raise DataFormatError(f"{path}:{line_number}: {error}") from None
    if not records:
        raise DataFormatError(f"{path}: the file contains no samples")
    return records


# --------------------------------------------------------------------------
# Tokenizer and models
# --------------------------------------------------------------------------


def format_alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """Build the prompt that Axolotl's ``type: alpaca`` puts before the response."""
    from axolotl.prompters import AlpacaPrompter

    return next(AlpacaPrompter().build_prompt(instruction, input_text))


def alpaca_template_texts() -> list[str]:
    """Return the fixed text of the Alpaca prompt, with and without an input."""
    from axolotl.prompters import AlpacaPrompter

    prompter = AlpacaPrompter()
    return [
        prompter.system_prompt,
        prompter.system_no_input_prompt,
        prompter.turn_format,
        prompter.turn_no_input_format,
    ]


def training_texts(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Return the Alpaca prompt + response of each record, for tokenizer training."""
    texts = []
    for record in records:
        prompt = format_alpaca_prompt(record["instruction"], record.get("input", ""))
        texts.append(prompt + record["output"])
    return texts


def build_tokenizer(
    texts: Iterable[str], path: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB_SIZE
):
    """Train a byte-level BPE tokenizer and save it with ``save_pretrained``.

    Encoding prepends ``<s>`` and never appends ``</s>``, as Axolotl's alpaca
    strategy expects: it tokenizes the prompt with special tokens, strips that BOS
    from the separately tokenized response and appends EOS itself. The BOS comes
    from the post-processor stored in ``tokenizer.json``. Transformers 5.16 reads
    ``add_bos_token`` back as False from the saved files, but encoding still adds
    the BOS.

    Args:
        texts: Training texts; include the prompt template so that it gets merges.
        path: Directory to save into, created if missing.
        vocab_size: Maximum vocabulary, special tokens and the 256 byte symbols
            included. Small corpora give fewer tokens.

    Returns:
        The tokenizer, a ``transformers.PreTrainedTokenizerFast``.

    Raises:
        ValueError: ``vocab_size`` leaves no room for merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special_tokens = [UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(alphabet) + len(special_tokens)
    if vocab_size <= minimum:
        raise ValueError(
            f"vocab_size must exceed {minimum} (the 256 byte symbols and "
            f"{len(special_tokens)} special tokens), got {vocab_size}"
        )

    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = wrap_with_bos(
        backend, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN, model_max_length=SEQUENCE_LEN
    )
    tokenizer.save_pretrained(str(path))
    return tokenizer


def wrap_with_bos(backend, *, pad_token, unk_token, model_max_length=None):
    """Make a trained ``tokenizers.Tokenizer`` prepend ``<s>`` and wrap it for Transformers.

    Args:
        backend: The trained tokenizer; its post-processor is replaced.
        pad_token: Pad token, or None for a tokenizer without one.
        unk_token: Unknown token, or None.
        model_max_length: Maximum sequence length in tokens, or None.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with ``<s>`` and ``</s>`` as BOS
        and EOS.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, backend.token_to_id(BOS_TOKEN))],
    )
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        unk_token=unk_token,
        **extra,
    )


def build_llama(
    path: str | os.PathLike,
    tokenizer,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    seed: int,
    max_position_embeddings: int = 2 * SEQUENCE_LEN,
) -> Path:
    """Build a randomly initialised ``LlamaForCausalLM`` and save it with the tokenizer.

    The embeddings are tied to the output layer, and the vocabulary is the
    tokenizer's full length, so every model built with one tokenizer shares it.

    Args:
        path: Directory to save the safetensors weights, config and tokenizer.
        tokenizer: Tokenizer whose vocabulary and special tokens the model uses.
        hidden_size: Width of the residual stream; divisible by ``num_heads``.
        num_layers: Number of decoder layers.
        num_heads: Attention heads (also key/value heads, so no grouped attention).
        intermediate_size: Width of the MLP.
        seed: Seed of ``torch.manual_seed`` before the weights are created.
        max_position_embeddings: Maximum sequence length of the model, in tokens.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``hidden_size`` is not divisible by ``num_heads``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)

    path = Path(path)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def count_alpaca_tokens(tokenizer, record: Mapping[str, Any]) -> int:
    """Count the tokens of a record as Axolotl's ``type: alpaca`` builds it.

    That is the prompt with its BOS, the response without a BOS and one EOS.
    """
    prompt = format_alpaca_prompt(record["instruction"], record.get("input", ""))
    # verbose=False: no warning for samples longer than model_max_length, since
    # counting them is the point.
    prompt_ids = tokenizer(prompt, verbose=False)["input_ids"]
    response_ids = tokenizer(record["output"], verbose=False)["input_ids"]
    if response_ids and response_ids[0] == tokenizer.bos_token_id:
        response_ids = response_ids[1:]
    return len(prompt_ids) + len(response_ids) + 1


def split_by_length(
    tokenizer, records: Sequence[Mapping[str, Any]], sequence_len: int = SEQUENCE_LEN
) -> tuple[list[dict[str, Any]], int]:
    """Keep the records that fit in ``sequence_len`` tokens.

    Returns:
        The records that fit, in their original order, and how many were left out.
    """
    fitting = [
        dict(record)
        for record in records
        if count_alpaca_tokens(tokenizer, record) <= sequence_len
    ]
    return fitting, len(records) - len(fitting)


# --------------------------------------------------------------------------
# Axolotl configs
# --------------------------------------------------------------------------

SCORING_COMMENT = (
    "scoring_model is the fine-tuned teacher because the untrained student ranks\n"
    "the built-in data backwards (Spearman -0.32 of level and rank in one run)."
)
SHUFFLE_COMMENT = (
    "Axolotl shuffles a single dataset after tokenization unless this is false.\n"
    "Keeping the file order makes `index` in pocl_difficulty.jsonl the line\n"
    "number (from 0) in the training file."
)


def cpu_training_settings(seed: int) -> dict[str, Any]:
    """Return the Axolotl keys shared by both runs: fp32 on CPU, no checkpoints."""
    return {
        "sequence_len": SEQUENCE_LEN,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "optimizer": "adamw_torch",
        "lr_scheduler": "cosine",
        "learning_rate": LEARNING_RATE,
        "warmup_steps": 5,
        "micro_batch_size": MICRO_BATCH_SIZE,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "val_set_size": 0,
        # Worker processes and pinned memory only help with an accelerator.
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "dataset_num_proc": 1,
        "seed": seed,
    }


def _alpaca_dataset(train_file: Path) -> list[dict[str, str]]:
    return [{"path": str(train_file), "ds_type": "json", "type": "alpaca"}]


def teacher_sft_config(workdir: Path, *, steps: int, seed: int) -> dict[str, Any]:
    """Return the plain Axolotl config that fine-tunes ``teacher_init``."""
    workdir = Path(workdir).resolve()
    return {
        "base_model": str(workdir / "teacher_init"),
        "datasets": _alpaca_dataset(workdir / "data" / "train.jsonl"),
        "dataset_prepared_path": str(workdir / "prepared_teacher"),
        "output_dir": str(workdir / "teacher"),
        "max_steps": steps,
        **cpu_training_settings(seed),
    }


def student_pocl_config(
    workdir: Path,
    *,
    steps: int,
    seed: int,
    loss: str = "forward_kl",
    score_with: str = DEFAULT_SCORE_WITH,
) -> dict[str, Any]:
    """Return the Axolotl config that distils ``teacher`` into ``student_init``.

    Args:
        workdir: Work directory that contains the models and the training file.
        steps: ``max_steps`` of the distillation.
        seed: ``seed`` of the run.
        loss: ``pocl.loss``, one of the divergence names.
        score_with: ``student`` leaves ``pocl.scoring_model`` unset, so the plugin
            scores difficulty with the student before training; ``teacher`` scores
            with the fine-tuned teacher.

    Raises:
        ValueError: ``score_with`` is neither ``student`` nor ``teacher``.
    """
    if score_with not in SCORING_CHOICES:
        choices = ", ".join(SCORING_CHOICES)
        raise ValueError(f"score_with must be one of {choices}, got {score_with!r}")
    workdir = Path(workdir).resolve()
    pocl = {
        "teacher_model": str(workdir / "teacher"),
        "loss": loss,
        "temperature_start": 1.0,
        "temperature_end": 2.0,
        "kd_ratio_start": 0.7,
        "kd_ratio_end": 1.0,
        "num_buckets": NUM_BUCKETS,
        "difficulty_metrics": ["lm_loss", "rouge_l"],
        "scoring_batch_size": 16,
        "scoring_max_new_tokens": 32,
    }
    if score_with == "teacher":
        pocl["scoring_model"] = str(workdir / "teacher")
    return {
        "base_model": str(workdir / "student_init"),
        "plugins": ["pocl_axolotl.POCLPlugin"],
        "pocl": pocl,
        "datasets": _alpaca_dataset(workdir / "data" / "train.jsonl"),
        "shuffle_merged_datasets": False,
        "dataset_prepared_path": str(workdir / "prepared"),
        "output_dir": str(workdir / "student_pocl"),
        "max_steps": steps,
        **cpu_training_settings(seed),
    }


def write_axolotl_config(
    path: str | os.PathLike,
    config: Mapping[str, Any],
    comments: Mapping[str, str] | None = None,
) -> Path:
    """Write an Axolotl YAML file, keeping the key order of ``config``.

    Args:
        path: File to write; parent directories are created.
        config: Top-level keys and values.
        comments: Optional comment per top-level key, written as ``#`` lines
            above that key.

    Returns:
        The path written.
    """
    comments = comments or {}
    blocks = []
    for key, value in config.items():
        lines = [f"# {line}".rstrip() for line in comments.get(key, "").splitlines()]
        block = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True)
        lines.append(block.rstrip())
        blocks.append("\n".join(lines))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(blocks) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# Running axolotl
# --------------------------------------------------------------------------


class PhaseError(RuntimeError):
    """A quickstart phase that failed, with the log of its command if it has one."""

    def __init__(self, phase: str, message: str, log_path: Path | None = None):
        super().__init__(message)
        self.phase = phase
        self.log_path = log_path


def axolotl_command() -> list[str]:
    """Return the command that starts the ``axolotl`` CLI of this interpreter.

    Prefers the ``axolotl`` script beside ``sys.executable`` (the active virtual
    environment), then one on ``PATH``, then ``python -m axolotl.cli.main``.
    """
    beside = Path(sys.executable).parent / "axolotl"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("axolotl")
    if found:
        return [found]
    return [sys.executable, "-m", "axolotl.cli.main"]


def axolotl_environment(
    base: Mapping[str, str] | None = None, *, cpu_threads: int | None = None
) -> dict[str, str]:
    """Return the environment for an axolotl subprocess.

    It turns off telemetry and hub access (offline telemetry retries can hang the
    process at exit) and puts this package's parent directory first on
    ``PYTHONPATH``, so the plugin imports without being installed.

    Args:
        base: Environment to start from; None uses ``os.environ``.
        cpu_threads: If given, the ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``
            of torch's CPU kernels, unless ``base`` already sets them.
    """
    env = dict(os.environ if base is None else base)
    env["AXOLOTL_DO_NOT_TRACK"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    if cpu_threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(cpu_threads))
        env.setdefault("MKL_NUM_THREADS", str(cpu_threads))
    package_root = str(Path(__file__).resolve().parent.parent)
    paths = [package_root, *env.get("PYTHONPATH", "").split(os.pathsep)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path for path in paths if path))
    return env


def run_axolotl(
    args: Sequence[str],
    log_path: str | os.PathLike,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``axolotl ARGS``, writing its stdout and stderr to ``log_path``.

    Args:
        args: Arguments after ``axolotl``, e.g. ``["train", "cfg.yml"]``.
        log_path: Log file; parent directories are created, and the first line
            is the command.
        env: Environment of the process; None uses :func:`axolotl_environment`.

    Returns:
        The exit status of the command.
    """
    command = axolotl_command() + [str(arg) for arg in args]
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        completed = subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(axolotl_environment() if env is None else env),
            check=False,
        )
    return completed.returncode


def tail_lines(path: Path, count: int = 40) -> str:
    """Return the last ``count`` lines of a text file, or '' if it is missing."""
    if not path.is_file():
        return ""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-count:])


def run_phase(
    phase: str,
    args: Sequence[str],
    logs_dir: Path,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Run one axolotl command as a named phase, logging to ``logs/<phase>.log``.

    Args:
        phase: Name of the phase, used in messages and as the log file name.
        args: Arguments after ``axolotl``.
        logs_dir: Directory of the log file.
        env: Environment of the process; None uses :func:`axolotl_environment`.

    Returns:
        The log file.

    Raises:
        PhaseError: The command exited with a non-zero status.
    """
    log_path = Path(logs_dir) / f"{phase}.log"
    command = " ".join(axolotl_command() + [str(arg) for arg in args])
    print(f"[{phase}] $ {command}", flush=True)
    print(f"[{phase}] log: {log_path}", flush=True)
    status = run_axolotl(args, log_path, env)
    if status != 0:
        raise PhaseError(phase, f"`{command}` exited with status {status}", log_path)
    return log_path


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------


def read_stage_schedule(trainer_state_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Summarise the ``pocl/*`` values of a ``trainer_state.json`` per stage.

    Returns:
        One dict per stage in stage order, with ``stage``, ``first_step``,
        ``last_step``, and ``temperature_min``/``temperature_max`` and
        ``kd_ratio_min``/``kd_ratio_max`` over the stage's logged steps (None
        where never logged). Empty if no entry of ``log_history`` has
        ``pocl/stage``.
    """
    state = json.loads(Path(trainer_state_path).read_text(encoding="utf-8"))
    stages: dict[int, dict[str, Any]] = {}
    for entry in state.get("log_history", []):
        if "pocl/stage" not in entry:
            continue
        stage = int(entry["pocl/stage"])
        step = entry.get("step")
        summary = stages.setdefault(
            stage, {"stage": stage, "steps": [], "temperature": [], "kd_ratio": []}
        )
        if step is not None:
            summary["steps"].append(step)
        for key in ("temperature", "kd_ratio"):
            if f"pocl/{key}" in entry:
                summary[key].append(float(entry[f"pocl/{key}"]))

    return [_stage_row(stages[stage]) for stage in sorted(stages)]


def _stage_row(summary: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "stage": summary["stage"],
        "first_step": min(summary["steps"], default=None),
        "last_step": max(summary["steps"], default=None),
    }
    for key in ("temperature", "kd_ratio"):
        row[f"{key}_min"] = min(summary[key], default=None)
        row[f"{key}_max"] = max(summary[key], default=None)
    return row


def level_rank_correlation(
    records: Sequence[Mapping[str, Any]], report_path: str | os.PathLike
) -> dict[str, Any] | None:
    """Compare the known ``level`` of each training record with its difficulty rank.

    Report entry ``index`` i is matched with training record i, which holds when
    Axolotl keeps the file order (``shuffle_merged_datasets: false``). Entries
    with ``"valid": false`` are left out.

    Args:
        records: Training records in file order; only those with ``level`` count.
        report_path: ``pocl_difficulty.jsonl`` with ``index`` and ``rank`` fields.

    Returns:
        ``spearman`` and ``p_value`` of scipy's ``spearmanr``, ``num_samples``, and
        ``mean_rank_per_level`` (level to mean rank); None if fewer than two
        records have both a level and a report entry.
    """
    from scipy.stats import spearmanr

    ranks = {
        int(entry["index"]): float(entry["rank"])
        for entry in read_jsonl(report_path)
        if entry.get("valid", True)
    }
    pairs = [
        (record["level"], ranks[index])
        for index, record in enumerate(records)
        if "level" in record and index in ranks
    ]
    if len(pairs) < 2:
        return None

    levels = [level for level, _ in pairs]
    sample_ranks = [rank for _, rank in pairs]
    result = spearmanr(levels, sample_ranks)
    per_level: dict[int, list[float]] = {}
    for level, rank in pairs:
        per_level.setdefault(level, []).append(rank)
    mean_rank_per_level = {
        level: sum(values) / len(values) for level, values in sorted(per_level.items())
    }
    return {
        "spearman": float(result.statistic),
        "p_value": float(result.pvalue),
        "num_samples": len(pairs),
        "mean_rank_per_level": mean_rank_per_level,
    }


def _format_range(low: float | None, high: float | None) -> str:
    if low is None:
        return "not logged"
    if high is None or abs(high - low) < 5e-4:
        return f"{low:.3f}"
    return f"{low:.3f}-{high:.3f}"


def print_summary(
    workdir: Path, timings: Mapping[str, float], records: Sequence[Mapping[str, Any]]
) -> None:
    """Print the phase times, the output paths and what the distillation logged."""
    output_dir = workdir / "student_pocl"
    print("\nPhase times (wall clock):")
    for phase, seconds in timings.items():
        print(f"  {phase:<14} {seconds:7.1f} s")
    print(f"  {'total':<14} {sum(timings.values()):7.1f} s")

    print("\nOutputs:")
    print(f"  configs:           {workdir / 'configs'}")
    print(f"  teacher:           {workdir / 'teacher'}")
    print(f"  distilled student: {output_dir}")
    print(f"  difficulty report: {output_dir / 'pocl_difficulty.jsonl'}")
    print(f"  logs:              {workdir / 'logs'}")

    _print_stage_schedule(output_dir / "trainer_state.json")
    _print_level_correlation(records, output_dir / "pocl_difficulty.jsonl")


def _print_stage_schedule(trainer_state_path: Path) -> None:
    if not trainer_state_path.is_file():
        print(f"\nNot found: {trainer_state_path}; no per-stage temperatures to show.")
        return
    rows = read_stage_schedule(trainer_state_path)
    if not rows:
        print(f"\nNo `pocl/stage` entries in the log_history of {trainer_state_path}.")
        return
    print("\nCurriculum stages (from trainer_state.json):")
    for row in rows:
        steps = f"{row['first_step']}-{row['last_step']}"
        temperature = _format_range(row["temperature_min"], row["temperature_max"])
        kd_ratio = _format_range(row["kd_ratio_min"], row["kd_ratio_max"])
        print(
            f"  stage {row['stage']}: steps {steps}, "
            f"temperature {temperature}, kd_ratio {kd_ratio}"
        )


def _print_level_correlation(
    records: Sequence[Mapping[str, Any]], report_path: Path
) -> None:
    if not any("level" in record for record in records):
        return
    if not report_path.is_file():
        print(f"\nNot found: {report_path}; no ranks to compare with the levels.")
        return
    result = level_rank_correlation(records, report_path)
    if result is None:
        print(f"\n{report_path} matches fewer than two samples with a level.")
        return
    count = result["num_samples"]
    print(f"\nKnown level vs measured difficulty rank ({count} samples):")
    spearman, p_value = result["spearman"], result["p_value"]
    print(f"  Spearman correlation {spearman:.3f} (p = {p_value:.2g})")
    for level, mean_rank in result["mean_rank_per_level"].items():
        print(f"  level {level}: mean rank {mean_rank:.1f}")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the quickstart options to ``parser`` and set it to run the quickstart."""
    parser.add_argument(
        "--workdir", type=Path, metavar="DIR", default=Path(DEFAULT_WORKDIR),
        help=(
            "Directory for the data, models, configs and logs "
            f"(default: {DEFAULT_WORKDIR})."
        ),
    )  # fmt: skip
    parser.add_argument(
        "--data", type=Path, metavar="PATH",
        help=(
            "Alpaca- or Dolly-style JSON Lines file to train on instead of the "
            "built-in data."
        ),
    )  # fmt: skip
    parser.add_argument(
        "--num-samples", type=int, metavar="N",
        help=(
            f"Number of built-in samples (default: {DEFAULT_NUM_SAMPLES}); with "
            "--data, use only the first N samples of the file (default: all)."
        ),
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED,
        help=(
            "Seed of the data, the model weights and training "
            f"(default: {DEFAULT_SEED})."
        ),
    )  # fmt: skip
    parser.add_argument(
        "--teacher-steps", type=int, default=DEFAULT_TEACHER_STEPS,
        help=(
            "Optimizer steps of the teacher fine-tuning "
            f"(default: {DEFAULT_TEACHER_STEPS})."
        ),
    )  # fmt: skip
    parser.add_argument(
        "--student-steps", type=int, default=DEFAULT_STUDENT_STEPS,
        help=(
            "Optimizer steps of the distillation, a multiple of the "
            f"{NUM_BUCKETS} curriculum stages (default: {DEFAULT_STUDENT_STEPS})."
        ),
    )  # fmt: skip
    parser.add_argument(
        "--loss", choices=DIVERGENCE_NAMES, default="forward_kl",
        help="Divergence between teacher and student (default: forward_kl).",
    )  # fmt: skip
    parser.add_argument(
        "--score-with", choices=SCORING_CHOICES, default=DEFAULT_SCORE_WITH,
        help=(
            "Model that scores difficulty (pocl.scoring_model): the fine-tuned "
            "teacher, or the untrained student, which ranks the built-in data "
            f"backwards, harder levels as easier (default: {DEFAULT_SCORE_WITH})."
        ),
    )  # fmt: skip
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=(
            "Delete the quickstart's previous outputs in --workdir first; other "
            "files in it are kept. Without it a non-empty --workdir is rejected."
        ),
    )
    parser.set_defaults(run=run_quickstart)


def check_arguments(args: argparse.Namespace) -> None:
    """Reject option values that the phases cannot use.

    Raises:
        ValueError: A value is out of range or the work directory is not empty.
    """
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.teacher_steps < 1:
        raise ValueError(
            f"--teacher-steps must be at least 1, got {args.teacher_steps}"
        )
    if args.student_steps < NUM_BUCKETS or args.student_steps % NUM_BUCKETS:
        raise ValueError(
            f"--student-steps must be a positive multiple of {NUM_BUCKETS} (one equal "
            f"share per curriculum stage), got {args.student_steps}"
        )
    workdir = Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} exists and is not a directory")
    if workdir.is_dir() and any(workdir.iterdir()) and not args.overwrite:
        raise ValueError(
            f"work directory {workdir} is not empty; pass --overwrite to replace the "
            "quickstart's outputs in it, or choose another --workdir"
        )


def clear_workdir(workdir: Path) -> None:
    """Delete the entries that the quickstart creates in ``workdir``, nothing else."""
    for name in WORKDIR_ENTRIES:
        entry = workdir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``timings[phase]``, in seconds."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


def prepare_data(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Return the raw training records of --data, or the built-in dataset."""
    if args.data is None:
        num_samples = args.num_samples or DEFAULT_NUM_SAMPLES
        print(f"[data] generating {num_samples} built-in samples", flush=True)
        return generate_builtin_dataset(num_samples, args.seed)

    records = load_instruction_jsonl(args.data)
    if args.num_samples is not None:
        records = records[: args.num_samples]
    print(f"[data] read {len(records)} samples from {args.data}", flush=True)
    return records


def build_models(
    workdir: Path, records: list[dict[str, Any]], seed: int
) -> list[dict[str, Any]]:
    """Write the tokenizer, the training file and the untrained teacher and student.

    Returns:
        The records written to ``data/train.jsonl``: those that fit in
        ``SEQUENCE_LEN`` tokens.

    Raises:
        PhaseError: No record fits in ``SEQUENCE_LEN`` tokens.
    """
    texts = training_texts(records) + alpaca_template_texts()
    tokenizer_dir = workdir / "tokenizer"
    tokenizer = build_tokenizer(texts, tokenizer_dir, DEFAULT_VOCAB_SIZE)
    print(f"[build] tokenizer of {len(tokenizer)} tokens: {tokenizer_dir}", flush=True)

    fitting, left_out = split_by_length(tokenizer, records)
    if not fitting:
        message = f"no sample fits in sequence_len={SEQUENCE_LEN} tokens"
        raise PhaseError("build", message)
    if left_out:
        message = f"left out {left_out} samples longer than {SEQUENCE_LEN} tokens"
        print(f"[build] {message}", flush=True)
    train_file = write_jsonl(workdir / "data" / "train.jsonl", fitting)
    print(f"[build] training file of {len(fitting)} samples: {train_file}", flush=True)

    for name, size, model_seed in (
        ("teacher_init", TEACHER_SIZE, seed),
        ("student_init", STUDENT_SIZE, seed + 1),
    ):
        path = build_llama(workdir / name, tokenizer, seed=model_seed, **size)
        shape = f"hidden size {size['hidden_size']}, {size['num_layers']} layers"
        print(f"[build] {name}: Llama with {shape}: {path}", flush=True)
    return fitting


def write_configs(workdir: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """Write ``configs/teacher_sft.yml`` and ``configs/student_pocl.yml``."""
    teacher_config = write_axolotl_config(
        workdir / "configs" / "teacher_sft.yml",
        teacher_sft_config(workdir, steps=args.teacher_steps, seed=args.seed),
    )
    student_config = write_axolotl_config(
        workdir / "configs" / "student_pocl.yml",
        student_pocl_config(
            workdir,
            steps=args.student_steps,
            seed=args.seed,
            loss=args.loss,
            score_with=args.score_with,
        ),
        comments={
            "pocl": SCORING_COMMENT if args.score_with == "teacher" else "",
            "shuffle_merged_datasets": SHUFFLE_COMMENT,
        },
    )
    print(f"[configs] {teacher_config}\n[configs] {student_config}", flush=True)
    return teacher_config, student_config


def run_quickstart(args: argparse.Namespace) -> int:
    """Run every phase of the quickstart and print the summary.

    Returns:
        0 on success, 1 if a phase failed, 2 if an option or the data is invalid.
    """
    timings: dict[str, float] = {}
    try:
        check_arguments(args)
        with timed(timings, "data"):
            records = prepare_data(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"pocl-axolotl quickstart: error: {error}", file=sys.stderr)
        return 2

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.overwrite:
        clear_workdir(workdir)
    logs_dir = workdir / "logs"
    try:
        with timed(timings, "build"):
            records = build_models(workdir, records, args.seed)
            teacher_config, student_config = write_configs(workdir, args)
        # One CPU thread per process, because the models are too small to gain from
        # more. On 2 cores shared with other jobs, a teacher training step took
        # 0.05 s with one thread and 0.5 to 1.1 s with two (torch 2.13).
        env = axolotl_environment(cpu_threads=1)
        with timed(timings, "teacher_sft"):
            train_args = ["train", teacher_config, "--launcher", "python"]
            run_phase("teacher_sft", train_args, logs_dir, env)
        with timed(timings, "preprocess"):
            run_phase("preprocess", ["preprocess", student_config], logs_dir, env)
        with timed(timings, "distill"):
            train_args = ["train", student_config, "--launcher", "python"]
            run_phase("distill", train_args, logs_dir, env)
    except PhaseError as error:
        _report_failure(error)
        return 1

    print_summary(workdir, timings, records)
    return 0


def _report_failure(error: PhaseError) -> None:
    message = f"pocl-axolotl quickstart: phase `{error.phase}` failed: {error}"
    print(f"\n{message}", file=sys.stderr)
    if error.log_path is not None:
        print(f"Log: {error.log_path}\nLast lines of the log:", file=sys.stderr)
        print(tail_lines(error.log_path), file=sys.stderr)
