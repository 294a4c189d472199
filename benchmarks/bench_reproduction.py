"""Compare SFT, plain KD and KD + POCL at CPU scale on real instruction data.

    python benchmarks/bench_reproduction.py     # full run, writes docs/reproduction.md
    python benchmarks/bench_reproduction.py --quick --output /tmp/page.md

This is a scaled-down version of the comparison in the POCL paper (arXiv
2506.05695). It keeps the evaluation protocol of the MiniLLM / DistiLLM / POCL
line: ROUGE-L F1 x100 of responses sampled at temperature 1 and top-p 1, with the
mean and standard deviation over several sampling seeds. In a work directory the
script:

  1. splits dolly.jsonl of --data-dir into a training and a held-out split, and
     takes the first --sinst-samples lines of sinst_short.jsonl as a second
     held-out set;
  2. trains a byte-level BPE tokenizer on the training split and builds a teacher
     and a smaller student Llama, both from random weights;
  3. fine-tunes the teacher with plain Axolotl (`axolotl train`, no plugin);
  4. trains the student per training seed, from that seed's saved initial weights,
     with SFT (plain Axolotl), plain KD and KD + POCL. Plain KD is the plugin with
     `num_buckets: 1`, a fixed temperature and a fixed KD ratio; KD + POCL keeps
     the plugin's curriculum defaults. Both KD methods run once per divergence in
     --losses, and every run has the same steps, batch size and learning-rate
     schedule;
  5. evaluates the teacher and every student on both held-out sets in this process;
  6. writes the results page (--output) and a plot of the training curves beside it.

Difficulty scores depend only on the scoring model and the data, so
`axolotl preprocess` runs once per scoring model, and the script checks that every
KD + POCL training log reports reusing those cached scores.

The work directory, with `results.json` (every score and time), is deleted at the
end unless --keep is given or a phase failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocl_axolotl.args import DIVERGENCE_NAMES  # noqa: E402
from pocl_axolotl.quickstart import (  # noqa: E402
    PhaseError,
    alpaca_template_texts,
    axolotl_command,
    axolotl_environment,
    build_llama,
    build_tokenizer,
    cpu_training_settings,
    load_instruction_jsonl,
    read_jsonl,
    run_phase,
    split_by_length,
    tail_lines,
    timed,
    training_texts,
    write_axolotl_config,
    write_jsonl,
)

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DOLLY_FILE = "dolly.jsonl"
SINST_FILE = "sinst_short.jsonl"
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "reproduction.md"

# Dolly split: a seeded shuffle of the 500 samples, the last HELDOUT_SIZE held out.
HELDOUT_SIZE = 100
SPLIT_SEED = 0

# With 2,048 tokens trained on the training split of SPLIT_SEED 0, 271 of its 400
# samples fit in 256 tokens (prompt, response and EOS).
VOCAB_SIZE = 2048
SEQUENCE_LEN = 256
TEACHER_SIZE = {
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "intermediate_size": 352,
}
STUDENT_SIZE = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 176,
}
TEACHER_INIT_SEED = 1000
NUM_BUCKETS = 4
SCORING_BATCH_SIZE = 16
EVAL_BATCH_SIZE = 32
# Parameter counts of the models in the POCL paper's GPT-2 setting.
GPT2_XL_PARAMETERS = 1_557_611_200
GPT2_BASE_PARAMETERS = 124_439_808

# With these defaults two full runs took 23 and 26 minutes on 2 CPU cores shared
# with other jobs (Intel Xeon, torch 2.13). docs/reproduction.md lists the phases.
DEFAULTS = {
    "seeds": [1, 2, 3],
    "losses": ["forward_kl", "reverse_kl", "jsd"],
    "teacher_steps": 600,
    "student_steps": 200,
    "eval_seeds": [10, 20, 30],
    "max_new_tokens": 64,
    "sinst_samples": 200,
    "eval_samples": None,
}
# --quick: enough to run every phase once, for the end-to-end test.
QUICK_DEFAULTS = {
    "seeds": [1],
    "losses": ["forward_kl"],
    "teacher_steps": 8,
    "student_steps": 8,
    "eval_seeds": [10, 20],
    "max_new_tokens": 16,
    "sinst_samples": 16,
    "eval_samples": 16,
}

METHOD_LABELS = {"sft": "SFT", "kd": "KD", "pocl": "KD+POCL"}
SCORER_CHOICES = ("teacher", "student")
HELDOUT_NAMES = {"dolly": "Dolly held-out", "sinst": "S-NI short"}


class BenchmarkError(RuntimeError):
    """A failure that stops the benchmark, with a message for the user."""


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def sample_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    """Identify a sample by its instruction, input and output (JSON for a list)."""
    output = record["output"]
    output_text = output if isinstance(output, str) else json.dumps(output)
    return (record["instruction"], record.get("input") or "", output_text)


def split_heldout(
    records: Sequence[Mapping[str, Any]], heldout_size: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split records into a training and a held-out list by a seeded shuffle.

    Duplicate samples (same instruction, input and output) are kept once, so no
    sample can land in both lists.

    Args:
        records: Samples with ``instruction``, ``input`` and ``output``.
        heldout_size: Number of held-out samples.
        seed: Seed of the shuffle; the same seed gives the same split.

    Returns:
        The training and the held-out records, each in file order.

    Raises:
        ValueError: ``heldout_size`` is below 1 or leaves no training sample.
    """
    unique = list({sample_key(record): dict(record) for record in records}.values())
    if not 1 <= heldout_size < len(unique):
        raise ValueError(
            f"heldout_size must be in [1, {len(unique) - 1}] for {len(unique)} "
            f"distinct samples, got {heldout_size}"
        )
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    heldout_indices = set(order[len(order) - heldout_size :])
    train = [r for i, r in enumerate(unique) if i not in heldout_indices]
    heldout = [r for i, r in enumerate(unique) if i in heldout_indices]
    return train, heldout


def check_disjoint(
    train: Sequence[Mapping[str, Any]], heldout: Sequence[Mapping[str, Any]]
) -> None:
    """Raise ValueError if a held-out sample is also a training sample."""
    train_keys = {sample_key(record) for record in train}
    shared = train_keys & {sample_key(record) for record in heldout}
    if shared:
        example = next(iter(shared))[0][:60]
        raise ValueError(
            f"the training and held-out splits share {len(shared)} sample(s), "
            f"e.g. the one with the instruction {example!r}"
        )


def eval_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the fields that evaluation reads; it renders the prompt from them."""
    return {
        "instruction": raw["instruction"],
        "input": raw.get("input") or "",
        "output": raw["output"],
    }


def prepare_data(work: Path, data_dir: Path, sinst_samples: int) -> dict[str, Any]:
    """Split Dolly, take the S-NI subset and write the two evaluation files.

    Returns:
        ``train`` (records), ``dolly_heldout`` and ``sinst`` (paths), and the counts
        ``dolly_total``, ``heldout_count`` and ``sinst_count``.

    Raises:
        BenchmarkError: A data file is missing.
        ValueError: The split overlaps or a line is malformed.
    """
    paths = {name: data_dir / name for name in (DOLLY_FILE, SINST_FILE)}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise BenchmarkError(
            f"data file not found: {', '.join(missing)}; the benchmark reads the "
            f"shared instruction data from {data_dir}"
        )
    dolly = load_instruction_jsonl(paths[DOLLY_FILE])
    train, heldout = split_heldout(dolly, HELDOUT_SIZE, SPLIT_SEED)
    check_disjoint(train, heldout)
    sinst = read_jsonl(paths[SINST_FILE])[:sinst_samples]

    data = work / "data"
    heldout_file = write_jsonl(data / "dolly_heldout.jsonl", map(eval_record, heldout))
    sinst_file = write_jsonl(data / "sinst_subset.jsonl", map(eval_record, sinst))
    return {
        "train": train,
        "dolly_total": len(dolly),
        "dolly_heldout": heldout_file,
        "sinst": sinst_file,
        "heldout_count": len(heldout),
        "sinst_count": len(sinst),
    }


# --------------------------------------------------------------------------
# Models and Axolotl configs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentRun:
    """One student training: the method, the divergence (None for SFT) and the seed."""

    method: str
    loss: str | None
    seed: int

    @property
    def name(self) -> str:
        parts = [f"seed{self.seed}", self.loss, self.method]
        return "_".join(part for part in parts if part)


def plan_student_runs(seeds: Sequence[int], losses: Sequence[str]) -> list[StudentRun]:
    """List the student runs: per seed SFT, then KD and KD + POCL per divergence."""
    runs = []
    for seed in seeds:
        runs.append(StudentRun("sft", None, seed))
        for loss in losses:
            runs.append(StudentRun("kd", loss, seed))
            runs.append(StudentRun("pocl", loss, seed))
    return runs


def build_models(work: Path, train: list[dict[str, Any]], seeds: Sequence[int]) -> int:
    """Write the tokenizer, the training file, the teacher and one student per seed.

    Returns:
        The number of training samples that fit in ``SEQUENCE_LEN`` tokens.

    Raises:
        BenchmarkError: No training sample fits.
    """
    texts = training_texts(train) + alpaca_template_texts()
    tokenizer = build_tokenizer(texts, work / "tokenizer", VOCAB_SIZE)
    fitting, left_out = split_by_length(tokenizer, train, SEQUENCE_LEN)
    if not fitting:
        raise BenchmarkError(f"no training sample fits in {SEQUENCE_LEN} tokens")
    write_jsonl(work / "data" / "train.jsonl", fitting)
    print(
        f"[build] tokenizer of {len(tokenizer)} tokens; {len(fitting)} training "
        f"samples fit in {SEQUENCE_LEN} tokens, {left_out} longer ones left out",
        flush=True,
    )

    teacher_dir = work / "teacher_init"
    build_llama(teacher_dir, tokenizer, seed=TEACHER_INIT_SEED, **TEACHER_SIZE)
    for seed in seeds:
        build_llama(student_init_dir(work, seed), tokenizer, seed=seed, **STUDENT_SIZE)
    return len(fitting)


def student_init_dir(work: Path, seed: int) -> Path:
    return work / f"student_init_seed{seed}"


def scoring_model_dir(work: Path, seed: int, scorer: str) -> Path:
    """Return the fine-tuned teacher, or the untrained student of ``seed``."""
    return work / "teacher" if scorer == "teacher" else student_init_dir(work, seed)


def base_settings(work: Path, steps: int, seed: int) -> dict[str, Any]:
    """Return the keys that every run shares: data, cache folder and optimizer."""
    train_file = work / "data" / "train.jsonl"
    return {
        "datasets": [{"path": str(train_file), "ds_type": "json", "type": "alpaca"}],
        # Every run tokenizes the same file, so all share one prepared dataset and
        # one difficulty cache. File order is kept for the difficulty report.
        "shuffle_merged_datasets": False,
        "dataset_prepared_path": str(work / "prepared"),
        "max_steps": steps,
        **cpu_training_settings(seed),
    }


def teacher_config(work: Path, steps: int) -> dict[str, Any]:
    """Return the plain Axolotl config that fine-tunes ``teacher_init``."""
    return {
        "base_model": str(work / "teacher_init"),
        "output_dir": str(work / "teacher"),
        **base_settings(work, steps, TEACHER_INIT_SEED),
    }


def student_config(
    work: Path,
    run: StudentRun,
    *,
    steps: int,
    scorer: str,
    kd_ratio: float,
    kd_temperature: float,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Return the Axolotl config of one student run.

    SFT has no plugin. Plain KD uses ``num_buckets: 1`` with a fixed temperature and
    KD ratio. KD + POCL keeps the plugin's curriculum defaults (4 buckets, the
    temperature from 1 to 2, the KD ratio from 0.7 to 1, lm_loss and rouge_l) and
    sets only the scoring model and the scoring batch and generation length.
    """
    config: dict[str, Any] = {
        "base_model": str(student_init_dir(work, run.seed)),
        "output_dir": str(work / "students" / run.name),
    }
    if run.method != "sft":
        pocl: dict[str, Any] = {
            "teacher_model": str(work / "teacher"),
            "loss": run.loss,
        }
        if run.method == "kd":
            pocl.update(
                num_buckets=1,
                temperature_start=kd_temperature,
                temperature_end=kd_temperature,
                kd_ratio_start=kd_ratio,
                kd_ratio_end=kd_ratio,
            )
        else:
            pocl.update(
                scoring_model=str(scoring_model_dir(work, run.seed, scorer)),
                scoring_batch_size=SCORING_BATCH_SIZE,
                scoring_max_new_tokens=max_new_tokens,
            )
        config.update(plugins=["pocl_axolotl.POCLPlugin"], pocl=pocl)
    config.update(base_settings(work, steps, run.seed))
    return config


def write_student_configs(
    work: Path, runs: Sequence[StudentRun], args: argparse.Namespace
) -> dict[StudentRun, Path]:
    """Write one YAML file per student run and return them in run order."""
    configs = {}
    for run in runs:
        config = student_config(
            work,
            run,
            steps=args.student_steps,
            scorer=args.scorer,
            kd_ratio=args.kd_ratio,
            kd_temperature=args.kd_temperature,
            max_new_tokens=args.max_new_tokens,
        )
        path = work / "configs" / f"{run.name}.yml"
        configs[run] = write_axolotl_config(path, config)
    return configs


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def train_command(config: Path) -> list[str]:
    return ["train", str(config), "--launcher", "python"]


def train_teacher(
    work: Path, steps: int, env: Mapping[str, str], timings: dict[str, float]
) -> None:
    """Fine-tune the teacher with plain Axolotl."""
    path = work / "configs" / "teacher.yml"
    config = write_axolotl_config(path, teacher_config(work, steps))
    with timed(timings, "teacher SFT"):
        run_phase("teacher", train_command(config), work / "logs", env)


def preprocess_scores(
    work: Path,
    configs: Mapping[StudentRun, Path],
    scorer: str,
    env: Mapping[str, str],
    timings: dict[str, float],
) -> int:
    """Run ``axolotl preprocess`` once per scoring model of the KD + POCL runs.

    Returns:
        The number of ``axolotl preprocess`` runs.
    """
    done: set[Path] = set()
    for run, config in configs.items():
        scorer_dir = scoring_model_dir(work, run.seed, scorer)
        if run.method != "pocl" or scorer_dir in done:
            continue
        done.add(scorer_dir)
        with timed(timings, "preprocess (scoring)"):
            args = ["preprocess", str(config)]
            run_phase(f"preprocess_{run.name}", args, work / "logs", env)
    return len(done)


def train_students(
    work: Path,
    configs: Mapping[StudentRun, Path],
    env: Mapping[str, str],
    timings: dict[str, float],
) -> None:
    """Train every student run in order, checking that POCL reuses cached scores.

    Raises:
        BenchmarkError: A KD + POCL run scored the difficulty again.
    """
    for index, (run, config) in enumerate(configs.items(), start=1):
        print(f"[train] {index}/{len(configs)} {run.name}", flush=True)
        with timed(timings, f"train {run.name}"):
            log = run_phase(run.name, train_command(config), work / "logs", env)
        if run.method != "pocl":
            continue
        text = log.read_text(encoding="utf-8", errors="replace")
        if "Reusing cached difficulty scores" not in text:
            raise BenchmarkError(
                f"{run.name} computed its difficulty scores again instead of "
                f"reusing the cache of `axolotl preprocess`; see {log}"
            )


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def evaluate_all(
    model_dirs: Mapping[str, Path],
    eval_files: Mapping[str, Path],
    args: argparse.Namespace,
    timings: dict[str, float],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Evaluate every model on every held-out set in this process.

    Returns:
        The results: per model name and held-out name, the ``evaluate_model`` entry
        with ``rouge_l_mean`` and ``rouge_l_std`` over the sampling seeds,
        ``per_seed``, ``samples`` and ``truncated_prompts``. Then the settings that
        ``evaluate_model`` resolved, which are the same for every model here.
    """
    from pocl_axolotl.evaluation import (
        evaluate_model,
        load_model_and_tokenizer,
        read_eval_file,
    )

    datasets = {}
    for name, path in eval_files.items():
        samples = read_eval_file(path)
        datasets[name] = samples[: args.eval_samples] if args.eval_samples else samples

    results = {}
    settings: dict[str, Any] = {}
    for index, (model_name, model_dir) in enumerate(model_dirs.items(), start=1):
        started = time.perf_counter()
        with timed(timings, "evaluation"):
            model, tokenizer = load_model_and_tokenizer(model_dir, device="cpu")
            # The tokenizer's limit is the training sequence_len. Evaluation cuts
            # prompts to the model's positions instead, so the length warning is moot.
            tokenizer.model_max_length = model.config.max_position_embeddings
            result = evaluate_model(
                model,
                tokenizer,
                datasets,
                seeds=args.eval_seeds,
                max_new_tokens=args.max_new_tokens,
                batch_size=EVAL_BATCH_SIZE,
                progress=False,
            )
        results[model_name] = {entry["file"]: entry for entry in result["files"]}
        settings = result["settings"]

        scores = ", ".join(
            f"{HELDOUT_NAMES[name]} {entry['rouge_l_mean']:.2f}"
            for name, entry in results[model_name].items()
        )
        seconds = time.perf_counter() - started
        position = f"{index}/{len(model_dirs)}"
        print(f"[eval] {position} {model_name}: {scores} ({seconds:.0f} s)", flush=True)
    return results, settings


# --------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Return the mean and the sample standard deviation (ddof=1) of ``values``.

    The standard deviation is None for a single value.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("values is empty: pass at least one value")
    array = np.asarray(values, dtype=np.float64)
    std = float(np.std(array, ddof=1)) if array.size > 1 else None
    return float(np.mean(array)), std


def format_mean_std(mean: float, std: float | None, signed: bool = False) -> str:
    """Format ``mean ± std`` with two decimals; a missing std prints as ``± n/a``."""
    mean_text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    std_text = "n/a" if std is None else f"{std:.2f}"
    return f"{mean_text} ± {std_text}"


def seed_scores(
    results: Mapping[str, Mapping[str, Any]], runs: Sequence[StudentRun], heldout: str
) -> list[float]:
    """Return the score of each run on ``heldout``: its mean over sampling seeds.

    ``heldout`` is a held-out name, or ``average`` for the mean of all held-out sets.
    """
    scores = []
    for run in runs:
        entries = results[run.name]
        names = list(entries) if heldout == "average" else [heldout]
        scores.append(float(np.mean([entries[name]["rouge_l_mean"] for name in names])))
    return scores


def paired_differences(
    results: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int],
    loss: str,
    heldout: str,
) -> list[float]:
    """Return KD + POCL minus KD per training seed, for one divergence."""
    pocl_runs = [StudentRun("pocl", loss, seed) for seed in seeds]
    kd_runs = [StudentRun("kd", loss, seed) for seed in seeds]
    pocl = seed_scores(results, pocl_runs, heldout)
    kd = seed_scores(results, kd_runs, heldout)
    return [with_pocl - without for with_pocl, without in zip(pocl, kd)]


def stage_boundaries(log_history: Sequence[Mapping[str, Any]]) -> list[int]:
    """Return the logged steps whose ``pocl/stage`` differs from the entry before."""
    boundaries = []
    previous = None
    for entry in log_history:
        if "pocl/stage" not in entry:
            continue
        stage = entry["pocl/stage"]
        if previous is not None and stage != previous:
            boundaries.append(int(entry["step"]))
        previous = stage
    return boundaries


def training_curve(
    log_history: Sequence[Mapping[str, Any]], key: str
) -> tuple[list[int], list[float]]:
    """Return the steps and values of ``key`` in a trainer log history."""
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
    return [step for step, _ in points], [value for _, value in points]


def read_log_history(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "trainer_state.json"
    return json.loads(path.read_text(encoding="utf-8"))["log_history"]


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def plot_curves(path: Path, work: Path, seed: int, loss: str) -> None:
    """Plot CE and KD loss per step of KD and KD + POCL, with stage boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {}
    for method in ("kd", "pocl"):
        run_dir = work / "students" / StudentRun(method, loss, seed).name
        histories[method] = read_log_history(run_dir)
    boundaries = stage_boundaries(histories["pocl"])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    panels = (
        ("pocl/ce_loss", "cross-entropy on the reference (pocl/ce_loss)"),
        ("pocl/kd_loss", "KD term at the stage temperature (pocl/kd_loss)"),
    )
    for axis, (key, title) in zip(axes, panels):
        for method, history in histories.items():
            steps, values = training_curve(history, key)
            axis.plot(steps, values, label=METHOD_LABELS[method], linewidth=1)
        for number, step in enumerate(boundaries):
            # Between the last logged step of one stage and the first of the next.
            axis.axvline(
                step - 0.5,
                color="grey",
                linestyle="--",
                linewidth=0.8,
                label="POCL stage boundary" if number == 0 else None,
            )
        axis.set_xlabel("optimizer step")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    figure.suptitle(f"Student training, {loss}, seed {seed}", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------
# Results page
# --------------------------------------------------------------------------


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def column_title(name: str) -> str:
    return "Average" if name == "average" else HELDOUT_NAMES[name]


def results_table(
    results: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int],
    losses: Sequence[str],
    heldout_names: Sequence[str],
) -> list[str]:
    """Return the Markdown table of mean ± std over training seeds per method."""
    columns = [*heldout_names, "average"]
    header = ["Model", "Divergence", *(column_title(name) for name in columns)]
    alignment = ["---", "---"] + ["---:"] * len(columns)
    lines = [markdown_row(header), markdown_row(alignment)]

    teacher = results["teacher"]
    cells = [
        format_mean_std(teacher[name]["rouge_l_mean"], teacher[name]["rouge_l_std"])
        for name in heldout_names
    ]
    average = float(np.mean([teacher[name]["rouge_l_mean"] for name in heldout_names]))
    lines.append(markdown_row(["Teacher", "-", *cells, f"{average:.2f}"]))

    groups = [("sft", None)]
    groups += [(method, loss) for loss in losses for method in ("kd", "pocl")]
    for method, loss in groups:
        runs = [StudentRun(method, loss, seed) for seed in seeds]
        cells = [
            format_mean_std(*mean_std(seed_scores(results, runs, name)))
            for name in columns
        ]
        lines.append(markdown_row([METHOD_LABELS[method], loss or "-", *cells]))
    return lines


def difference_table(
    results: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int],
    losses: Sequence[str],
    heldout_names: Sequence[str],
) -> list[str]:
    """Return the Markdown table of KD + POCL minus KD, paired by training seed."""
    columns = [*heldout_names, "average"]
    header = ["Divergence", *(column_title(name) for name in columns)]
    header.append("seeds where POCL is higher")
    alignment = ["---"] + ["---:"] * (len(columns) + 1)
    lines = [markdown_row(header), markdown_row(alignment)]
    for loss in losses:
        cells = []
        for name in columns:
            differences = paired_differences(results, seeds, loss, name)
            cells.append(format_mean_std(*mean_std(differences), signed=True))
        average = paired_differences(results, seeds, loss, "average")
        wins = sum(value > 0 for value in average)
        lines.append(markdown_row([loss, *cells, f"{wins} of {len(seeds)}"]))
    return lines


def per_run_table(
    results: Mapping[str, Mapping[str, Any]],
    runs: Sequence[StudentRun],
    heldout_names: Sequence[str],
) -> list[str]:
    """Return the Markdown table of every run's score and its sampling std."""
    header = ["Run"]
    header += [f"{column_title(name)} (mean ± sampling std)" for name in heldout_names]
    alignment = ["---"] + ["---:"] * len(heldout_names)
    lines = [markdown_row(header), markdown_row(alignment)]
    for name in ["teacher", *(run.name for run in runs)]:
        entries = [results[name][heldout] for heldout in heldout_names]
        cells = [
            format_mean_std(entry["rouge_l_mean"], entry["rouge_l_std"])
            for entry in entries
        ]
        lines.append(markdown_row([f"`{name}`", *cells]))
    return lines


def timing_table(timings: Mapping[str, float], runs: Sequence[StudentRun]) -> list[str]:
    """Return the phase wall times: shared phases, then student training per run."""
    lines = ["| Phase | Wall time (s) |", "| --- | ---: |"]
    student_total = sum(
        seconds for phase, seconds in timings.items() if phase.startswith("train ")
    )
    for phase, seconds in timings.items():
        if phase == "evaluation":
            label = f"student training, all {len(runs)} runs"
            lines.append(f"| {label} | {student_total:.0f} |")
        if not phase.startswith("train "):
            lines.append(f"| {phase} | {seconds:.0f} |")
    lines.append(f"| total | {sum(timings.values()):.0f} |")

    lines += ["", "Student training per run:", ""]
    lines += ["| Run | Wall time (s) |", "| --- | ---: |"]
    for run in runs:
        lines.append(f"| `{run.name}` | {timings[f'train {run.name}']:.0f} |")
    return lines


def method_average(
    results: Mapping[str, Mapping[str, Any]],
    method: str,
    loss: str | None,
    seeds: Sequence[int],
) -> float:
    """Return a method's score averaged over held-out sets and training seeds."""
    runs = [StudentRun(method, loss, seed) for seed in seeds]
    return mean_std(seed_scores(results, runs, "average"))[0]


def difference_sentences(
    results: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int],
    losses: Sequence[str],
) -> list[str]:
    """State KD + POCL minus KD per divergence and which differences are clear."""
    parts = []
    clear = []
    for loss in losses:
        differences = paired_differences(results, seeds, loss, "average")
        mean, std = mean_std(differences)
        wins = sum(value > 0 for value in differences)
        parts.append(
            f"{format_mean_std(mean, std, signed=True)} for {loss} (POCL higher in "
            f"{wins} of {len(seeds)} seeds)"
        )
        # Twice the standard error of the paired mean: a rough two-sided 95% bound.
        if std is not None and abs(mean) > 2 * std / np.sqrt(len(seeds)):
            clear.append(f"{loss} ({'higher' if mean > 0 else 'lower'} with POCL)")

    sentences = [
        "KD + POCL minus plain KD, paired by seed and in ROUGE-L points averaged "
        f"over the held-out sets, is {'; '.join(parts)}."
    ]
    if len(seeds) < 2:
        sentences.append("With one training seed there is no spread to compare with.")
    else:
        which = ", ".join(clear) if clear else "none of the divergences"
        sentences.append(
            f"The difference exceeds twice its standard error over {len(seeds)} "
            f"training seeds for {which}, which is a weak test with so few seeds."
        )
    return sentences


def first_stage_sentence(context: Mapping[str, Any]) -> str:
    """State how often the first stage repeats each sample of the easiest bucket."""
    args = context["args"]
    micro_batch_size = cpu_training_settings(0)["micro_batch_size"]
    drawn = args.student_steps // NUM_BUCKETS * micro_batch_size
    pool = context["first_bucket_size"]
    return (
        f"With {context['train_count']} training samples, the first stage draws "
        f"{drawn} samples from the {pool} of the easiest bucket, so it shows each "
        f"of them about {drawn / pool:.0f} times before the next bucket unlocks."
    )


def interpretation(
    results: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int],
    losses: Sequence[str],
    heldout_names: Sequence[str],
    context: Mapping[str, Any],
) -> list[str]:
    """Return two generated paragraphs: the measured differences, then their limits."""
    params = context["params"]
    teacher = results["teacher"]
    teacher_scores = [teacher[name]["rouge_l_mean"] for name in heldout_names]
    teacher_score = float(np.mean(teacher_scores))
    sft = method_average(results, "sft", None, seeds)
    kd = [method_average(results, "kd", loss, seeds) for loss in losses]
    sentences = [
        f"Averaged over the held-out sets, the teacher scores {teacher_score:.2f}, "
        f"the SFT student {sft:.2f} and plain KD {min(kd):.2f} to {max(kd):.2f} "
        "depending on the divergence."
    ]
    sentences += difference_sentences(results, seeds, losses)
    measured = " ".join(sentences)

    sentences = []
    sentences.append(
        "KD + POCL differs from plain KD in three ways at once (the curriculum "
        "order, the rising temperature and the KD-ratio schedule), and this run does "
        "not separate them."
    )
    sentences.append(first_stage_sentence(context))
    sentences.append(
        f"The teacher here has {GPT2_XL_PARAMETERS / params['teacher']:,.0f} times "
        f"fewer parameters than GPT-2 XL and the student "
        f"{GPT2_BASE_PARAMETERS / params['student']:,.0f} times fewer than GPT-2 "
        "base, both train on a few hundred samples, and every score is low. So the "
        "run checks the pipeline and the protocol at this size. It does not test "
        "the gains that the POCL paper reports at GPT-2 scale (+1.5 to +2.6 ROUGE-L "
        "on average over five held-out sets)."
    )
    return [measured, "", " ".join(sentences)]


def curve_caption(seed: int, loss: str) -> str:
    return (
        f"`{loss}`, training seed {seed}: the per-step cross-entropy and KD term "
        "that the plugin logs (`pocl/ce_loss` and `pocl/kd_loss` in "
        "`trainer_state.json`). Dashed lines mark where `pocl/stage` changes. Both "
        "curves are measured on the batch being trained, and POCL draws only the "
        "easier buckets before the last stage, so its early values are on easier "
        "samples. The KD term of POCL is at the stage temperature with the T² "
        "factor, so it is not on the same scale as plain KD at a fixed temperature."
    )


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return f"{platform.machine()} CPU"


def scorer_description(scorer: str) -> str:
    if scorer == "teacher":
        return (
            "the fine-tuned teacher (`pocl.scoring_model`). The plugin's default "
            "scores with the student as loaded before training, which here is a "
            "random model whose scores would rank the samples at random"
        )
    return (
        "the untrained student of each seed, the plugin's default (`pocl."
        "scoring_model` unset). It is a random model, so its ranking is close to "
        "random"
    )


def model_shape(size: Mapping[str, int]) -> str:
    return f"hidden {size['hidden_size']}, {size['num_layers']} layers"


def setup_lines(context: Mapping[str, Any]) -> list[str]:
    """Return the setup section: command, hardware, data, models and protocol."""
    import torch

    args = context["args"]
    data = context["data"]
    params = context["params"]
    training = cpu_training_settings(0)
    load_start, load_end = context["load"]
    eval_limit = f", the first {args.eval_samples} of each" if args.eval_samples else ""
    return [
        f"Generated by `{context['command']}` on {context['date']}.",
        "",
        "## Setup",
        "",
        f"- Hardware: {cpu_model()}, {os.cpu_count()} cores shared with other jobs "
        f"(1-minute load average {load_start:.1f} at the start and {load_end:.1f} "
        "at the end), so the wall times include slowdown from those jobs. "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        f"- Data: Dolly ({data['dolly_total']} samples) split by a seeded shuffle "
        f"(seed {SPLIT_SEED}) into {len(data['train'])} training and "
        f"{data['heldout_count']} held-out samples, checked to share no sample "
        f"(instruction, input and output). The {context['train_count']} training "
        f"samples that fit in `sequence_len: {SEQUENCE_LEN}` are used. Every "
        "held-out sample is kept. The second held-out set is the first "
        f"{data['sinst_count']} lines of Super-NaturalInstructions `sinst_short`, "
        "scored by the best ROUGE-L over its references.",
        "- Models: Llama from random weights with a byte-level BPE tokenizer of "
        f"{VOCAB_SIZE} tokens trained on the training split. Teacher "
        f"{model_shape(TEACHER_SIZE)} ({params['teacher']:,} parameters), student "
        f"{model_shape(STUDENT_SIZE)} ({params['student']:,} parameters).",
        f"- Teacher: plain Axolotl SFT, {args.teacher_steps} steps.",
        f"- Students: {args.student_steps} steps for every method, micro batch "
        f"{training['micro_batch_size']}, learning rate {training['learning_rate']} "
        f"with a cosine schedule and {training['warmup_steps']} warm-up steps, "
        f"fp32. Training seeds {', '.join(map(str, args.seeds))}. Each seed also "
        "sets the student's initial weights, saved once and shared by that seed's "
        "SFT, KD and KD + POCL runs.",
        "- Plain KD: the plugin with `num_buckets: 1` (no curriculum, no scoring, "
        f"random order), temperature {args.kd_temperature} and KD ratio "
        f"{args.kd_ratio} throughout.",
        f"- KD + POCL: the plugin defaults, so {NUM_BUCKETS} buckets unlocked at "
        "equal step intervals, temperature 1 to 2, KD ratio 0.7 to 1, difficulty by "
        "reciprocal rank fusion of `lm_loss` and `rouge_l`. Scored with "
        f"{scorer_description(args.scorer)}. `rouge_l` scoring generates up to "
        f"{args.max_new_tokens} tokens greedily. `axolotl preprocess` ran "
        f"{context['preprocess_runs']} time(s), once per scoring model, and every "
        'KD + POCL training log reports "Reusing cached difficulty scores".',
        "- Evaluation: `evaluate_model` in process, sampling at temperature 1 and "
        f"top-p 1 (top-k off), sampling seeds {', '.join(map(str, args.eval_seeds))}, "
        f"at most {args.max_new_tokens} new tokens, batch {EVAL_BATCH_SIZE}. Prompts "
        f"longer than {context['max_prompt_tokens']} tokens are cut from the left "
        f"({context['truncated']}). Held-out sets: {data['heldout_count']} Dolly and "
        f"{data['sinst_count']} S-NI samples{eval_limit}.",
    ]


def render_page(context: Mapping[str, Any]) -> str:
    """Render the results page from the collected settings, scores and times."""
    args = context["args"]
    results = context["results"]
    runs = context["runs"]
    heldout_names = list(HELDOUT_NAMES)
    table_args = (results, args.seeds, args.losses, heldout_names)
    plot_seed, plot_loss = context["plot_run"]
    sections = [
        "# Reproduction of the POCL comparison at CPU scale",
        "",
        *setup_lines(context),
        "",
        "## Results",
        "",
        "ROUGE-L F1 x100. A student's score for one training seed is its mean over "
        "the sampling seeds. Each student entry is the mean of those per-seed "
        "scores ± their sample standard deviation (ddof=1) over the training seeds. "
        "The teacher is trained once, so its ± is the population standard deviation "
        "(ddof=0) over the sampling seeds. Average is the mean of the two held-out "
        "sets.",
        "",
        *results_table(*table_args),
        "",
        "KD + POCL minus plain KD, paired by training seed (mean ± sample standard "
        "deviation over the seeds):",
        "",
        *difference_table(*table_args),
        "",
        *interpretation(*table_args, context),
        "",
        "## Training curves",
        "",
        f"![training curves]({context['plot'].name})",
        "",
        curve_caption(plot_seed, plot_loss),
        "",
        "## Wall time",
        "",
        *timing_table(context["timings"], runs),
        "",
        "## Every run",
        "",
        "Mean ± population standard deviation (ddof=0) over the sampling seeds.",
        "",
        *per_run_table(results, runs, heldout_names),
        "",
    ]
    return "\n".join(sections)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="work directory, empty or missing (default: a new temporary directory)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory with its models, configs and logs",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        metavar="FILE",
        help="results page to write; the plot goes beside it as <stem>_curves.png "
        "(default: docs/reproduction.md)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=SHARED_DATA,
        metavar="DIR",
        help=f"folder with {DOLLY_FILE} and {SINST_FILE} "
        "(default: ../shared/data beside the repository)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few steps, one seed, one divergence and few evaluation samples, "
        "to test the script",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Add the options whose defaults --quick lowers; None means not given."""
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help=f"training seeds [{DEFAULTS['seeds']}]",
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        choices=DIVERGENCE_NAMES,
        metavar="LOSS",
        help=f"divergences, from {', '.join(DIVERGENCE_NAMES)} [{DEFAULTS['losses']}]",
    )
    parser.add_argument(
        "--teacher-steps",
        type=int,
        metavar="N",
        help=f"optimizer steps of the teacher SFT [{DEFAULTS['teacher_steps']}]",
    )
    parser.add_argument(
        "--student-steps",
        type=int,
        metavar="N",
        help=f"optimizer steps of every student run, a multiple of {NUM_BUCKETS} "
        f"[{DEFAULTS['student_steps']}]",
    )
    parser.add_argument(
        "--eval-seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help=f"sampling seeds of the evaluation [{DEFAULTS['eval_seeds']}]",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        help="maximum generated tokens in evaluation and in `rouge_l` scoring "
        f"[{DEFAULTS['max_new_tokens']}]",
    )
    parser.add_argument(
        "--sinst-samples",
        type=int,
        metavar="N",
        help=f"first N lines of {SINST_FILE} to evaluate on "
        f"[{DEFAULTS['sinst_samples']}]",
    )
    parser.add_argument(
        "--eval-samples",
        type=int,
        metavar="N",
        help="evaluate only the first N samples of each held-out set [all]",
    )


def add_method_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scorer",
        choices=SCORER_CHOICES,
        default="teacher",
        help="model that scores difficulty for POCL: the fine-tuned teacher, or the "
        "untrained student (default: teacher)",
    )
    parser.add_argument(
        "--kd-ratio",
        type=float,
        default=1.0,
        metavar="R",
        help="fixed KD ratio of plain KD, in [0, 1] (default: 1.0)",
    )
    parser.add_argument(
        "--kd-temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="fixed temperature of plain KD, greater than 0 (default: 1.0)",
    )


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the options; --quick changes the defaults of the options not given."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Values in brackets are the defaults of the full run; --quick "
        "lowers them.",
    )
    add_output_options(parser)
    add_run_options(parser)
    add_method_options(parser)
    args = parser.parse_args(argv)

    presets = QUICK_DEFAULTS if args.quick else DEFAULTS
    for key, value in presets.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_arguments(args: argparse.Namespace) -> None:
    """Raise ValueError for option values that the phases cannot use."""
    if args.student_steps < NUM_BUCKETS or args.student_steps % NUM_BUCKETS:
        raise ValueError(
            f"--student-steps must be a positive multiple of {NUM_BUCKETS}, one equal "
            f"share per curriculum stage, got {args.student_steps}"
        )
    for name in ("teacher_steps", "max_new_tokens", "sinst_samples", "eval_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"{option_name(name)} must be at least 1, got {value}")
    for name in ("seeds", "eval_seeds", "losses"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            raise ValueError(f"{option_name(name)} lists a value twice: {values}")
    if not 0.0 <= args.kd_ratio <= 1.0:
        raise ValueError(f"--kd-ratio must be in [0, 1], got {args.kd_ratio}")
    if args.kd_temperature <= 0:
        raise ValueError(
            f"--kd-temperature must be greater than 0, got {args.kd_temperature}"
        )
    work = args.work_dir
    if work is not None and work.exists():
        if not work.is_dir() or any(work.iterdir()):
            raise ValueError(f"--work-dir {work} must be an empty directory or missing")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def count_parameters(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    return sum(parameter.numel() for parameter in model.parameters())


def run_benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run every phase in ``work`` and return what the results page needs."""
    import torch

    timings: dict[str, float] = {}
    load_start = os.getloadavg()[0]
    # One thread per axolotl process and in this one, as in the quickstart: the
    # models are too small to gain from more, and extra threads contend with other
    # jobs on the machine.
    env = axolotl_environment(cpu_threads=1)
    torch.set_num_threads(1)

    with timed(timings, "build (data, tokenizer, models)"):
        print(f"[data] reading {args.data_dir}", flush=True)
        data = prepare_data(work, args.data_dir, args.sinst_samples)
        train_count = build_models(work, data["train"], args.seeds)
        runs = plan_student_runs(args.seeds, args.losses)
        configs = write_student_configs(work, runs, args)
    train_teacher(work, args.teacher_steps, env, timings)
    preprocess_runs = preprocess_scores(work, configs, args.scorer, env, timings)
    train_students(work, configs, env, timings)

    model_dirs = {"teacher": work / "teacher"}
    model_dirs.update({run.name: work / "students" / run.name for run in runs})
    eval_files = {"dolly": data["dolly_heldout"], "sinst": data["sinst"]}
    results, eval_settings = evaluate_all(model_dirs, eval_files, args, timings)
    pocl_run = next(run for run in runs if run.method == "pocl")
    report = read_jsonl(work / "students" / pocl_run.name / "pocl_difficulty.jsonl")
    params = {
        "teacher": count_parameters(work / "teacher"),
        "student": count_parameters(student_init_dir(work, args.seeds[0])),
    }
    return {
        "args": args,
        "data": data,
        "runs": runs,
        "results": results,
        "timings": timings,
        "train_count": train_count,
        "preprocess_runs": preprocess_runs,
        "max_prompt_tokens": eval_settings["max_prompt_tokens"],
        "load": (load_start, os.getloadavg()[0]),
        "params": params,
        "first_bucket_size": sum(entry["bucket"] == 0 for entry in report),
    }


def describe_truncation(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Describe how many prompts of each held-out set were cut."""
    teacher = results["teacher"]
    parts = [
        f"{entry['truncated_prompts']} of {entry['samples']} {HELDOUT_NAMES[name]} "
        "prompts"
        for name, entry in teacher.items()
    ]
    return ", ".join(parts)


def save_results(context: Mapping[str, Any], path: Path) -> None:
    """Write the scores, times and settings of the run as JSON, for later analysis."""
    data = {key: value for key, value in context["data"].items() if key != "train"}
    record = {
        "options": vars(context["args"]),
        "data": data,
        "results": context["results"],
        "timings": context["timings"],
        "params": context["params"],
        "train_count": context["train_count"],
        "load": context["load"],
        "preprocess_runs": context["preprocess_runs"],
        "first_bucket_size": context["first_bucket_size"],
        "max_prompt_tokens": context["max_prompt_tokens"],
        "command": context["command"],
        "date": context["date"],
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


def write_outputs(context: dict[str, Any], work: Path) -> None:
    """Write the plot, the results page and ``results.json`` in the work directory."""
    args = context["args"]
    output = args.output.resolve()
    plot_loss = "forward_kl" if "forward_kl" in args.losses else args.losses[0]
    context["plot"] = output.with_name(f"{output.stem}_curves.png")
    context["plot_run"] = (args.seeds[0], plot_loss)
    plot_curves(context["plot"], work, args.seeds[0], plot_loss)

    context["command"] = " ".join(["python", *sys.argv])
    context["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    context["truncated"] = describe_truncation(context["results"])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_page(context), encoding="utf-8")
    save_results(context, work / "results.json")
    print(f"[done] wrote {output} and {context['plot']}", flush=True)


def report_error(message: str, work: Path) -> None:
    print(f"bench_reproduction: {message}", file=sys.stderr)
    print(f"Kept the work directory {work} for its logs.", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 on success, 1 if a phase failed, 2 on bad input."""
    args = parse_arguments(argv)
    try:
        check_arguments(args)
    except ValueError as error:
        print(f"bench_reproduction: error: {error}", file=sys.stderr)
        return 2
    if not args.data_dir.is_dir():
        print(
            f"bench_reproduction: error: data folder not found: {args.data_dir}; it "
            f"must contain {DOLLY_FILE} and {SINST_FILE}",
            file=sys.stderr,
        )
        return 2

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="pocl_reproduction_"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"[start] work directory {work}", flush=True)
    print(f"[start] axolotl command: {' '.join(axolotl_command())}", flush=True)
    try:
        context = run_benchmark(args, work)
        write_outputs(context, work)
    except PhaseError as error:
        if error.log_path is not None:
            log_tail = tail_lines(error.log_path)
            print(f"Log: {error.log_path}\n{log_tail}", file=sys.stderr)
        report_error(f"phase `{error.phase}` failed: {error}", work)
        return 1
    except (BenchmarkError, ValueError) as error:
        report_error(f"error: {error}", work)
        return 1

    if args.keep:
        print(f"[done] kept the work directory {work}", flush=True)
    else:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
