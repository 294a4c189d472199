"""Generate a response to every prompt of JSON Lines files and report ROUGE-L.

Each line of a data file is one JSON object in the Alpaca / Dolly layout:

  output       the reference: a string, or a list of reference strings
  prompt       the full prompt text, used as is when present
  instruction  the task, used with the optional `input` when `prompt` is absent

Without `prompt`, the prompt is rendered from `instruction` and `input` with the
template of Axolotl's `type: alpaca` (AlpacaPrompter, "instruct" style), as in
training.

Blank lines are skipped. A malformed line stops the command before any generation,
with the file name and the 1-based line number.

The score of a sample is ROUGE-L F1 x100 (rouge-score with the Porter stemmer) of
the response, decoded without special tokens and stripped, against its best
reference. The score of a file is the mean over its samples.

By default each seed samples one response per prompt at temperature 1 with top-p 1
(the protocol of the MiniLLM, DistiLLM and POCL papers) and top-k off. The report
gives the mean and the population standard deviation (ddof=0) of the file scores
over the seeds. With --greedy there is one greedy pass and the standard deviation
is 0.

Prompts longer than --max-prompt-tokens are cut from the left, keeping BOS, so the
end of the prompt with its "### Response:" header stays. The count of cut prompts
is logged as a warning and stored in the JSON.

--model takes a full model directory or a LoRA adapter directory (one with
adapter_config.json). For an adapter, the base model named in adapter_config.json
is loaded and the adapter applied with peft. The tokenizer comes from the adapter
directory when it contains one, otherwise from the base model.

Example:
  pocl-axolotl eval --model outputs/student --data dolly.jsonl sinst_short.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocl_axolotl.log import get_logger
from pocl_axolotl.generation import generate_token_ids
from pocl_axolotl.rouge import rouge_l_f1

LOG = get_logger(__name__)

DEFAULT_SEEDS = (10, 20, 30, 40, 50)
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_BATCH_SIZE = 16
RESULTS_FILE_NAME = "pocl_eval.json"
STD_KIND = "population standard deviation over seeds (ddof=0)"
SAMPLING_TEMPERATURE = 1.0
SAMPLING_TOP_P = 1.0
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class EvalDataError(ValueError):
    """Invalid evaluation data file: a malformed line, or no samples at all."""


@dataclass(frozen=True)
class EvalSample:
    """One prompt and its references, read from a JSON Lines file.

    Attributes:
        prompt: Full prompt text given to the model.
        references: Reference responses, at least one.
        line_number: 1-based line of the sample in its file.
    """

    prompt: str
    references: tuple[str, ...]
    line_number: int


# ---------------------------------------------------------------------------
# Data files


def render_alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """Render a prompt exactly as Axolotl's ``type: alpaca`` dataset type does.

    This calls Axolotl's own ``AlpacaPrompter`` in the default "instruct" style, so
    the prompt matches training. An empty ``input_text`` selects the template
    without the "### Input:" section.

    Args:
        instruction: Task instruction.
        input_text: Optional context for the instruction.

    Returns:
        The prompt, ending with "### Response:" and a newline.
    """
    from axolotl.prompters import AlpacaPrompter

    return next(iter(AlpacaPrompter().build_prompt(instruction, input_text)))


def read_eval_file(path: str | Path) -> list[EvalSample]:
    """Read and validate every line of a JSON Lines evaluation file.

    Blank lines are skipped. Every other line must hold a JSON object with
    ``output`` (a string or a non-empty list of strings) and either a non-empty
    ``prompt`` string or an ``instruction`` string with an optional ``input``
    string.

    Args:
        path: JSON Lines file.

    Returns:
        One sample per non-blank line, in file order.

    Raises:
        FileNotFoundError: If the file does not exist.
        EvalDataError: On the first malformed line, naming the file and the 1-based
            line number, or if the file has no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation data file not found: {path}")

    samples = []
    with path.open("rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise EvalDataError(f"{where}: invalid UTF-8 ({error})") from error
            if not line.strip():
                continue
            samples.append(_parse_line(line, line_number, where))

    if not samples:
        raise EvalDataError(f"{path}: the file contains no samples")
    return samples


def _parse_line(line: str, line_number: int, where: str) -> EvalSample:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise EvalDataError(
            f"{where}: invalid JSON: {error.msg} at column {error.colno}"
        ) from error
    if not isinstance(record, dict):
        raise EvalDataError(
            f"{where}: expected a JSON object, got {type(record).__name__}"
        )
    references = _parse_references(record, where)
    prompt = _parse_prompt(record, where)
    return EvalSample(prompt=prompt, references=references, line_number=line_number)


def _parse_references(record: dict[str, Any], where: str) -> tuple[str, ...]:
    if "output" not in record:
        raise EvalDataError(f"{where}: missing `output` (the reference response)")
    output = record["output"]
    if isinstance(output, str):
        return (output,)
    if not isinstance(output, list):
        raise EvalDataError(
            f"{where}: `output` must be a string or a list of strings, "
            f"got {type(output).__name__}"
        )
    if not output:
        raise EvalDataError(f"{where}: `output` is an empty list")
    for index, reference in enumerate(output):
        if not isinstance(reference, str):
            raise EvalDataError(
                f"{where}: `output[{index}]` must be a string, "
                f"got {type(reference).__name__}"
            )
    return tuple(output)


def _parse_prompt(record: dict[str, Any], where: str) -> str:
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise EvalDataError(f"{where}: `prompt` must be a non-empty string")
        return prompt
    if "instruction" not in record:
        raise EvalDataError(f"{where}: neither `prompt` nor `instruction` is present")

    instruction = record["instruction"]
    input_text = record.get("input")
    if input_text is None:
        input_text = ""
    if not isinstance(instruction, str):
        raise EvalDataError(
            f"{where}: `instruction` must be a string, "
            f"got {type(instruction).__name__}"
        )
    if not isinstance(input_text, str):
        raise EvalDataError(
            f"{where}: `input` must be a string, got {type(input_text).__name__}"
        )
    return render_alpaca_prompt(instruction, input_text)


# ---------------------------------------------------------------------------
# Scoring


def score_responses(
    responses: Sequence[str], samples: Sequence[EvalSample]
) -> list[float]:
    """Score each response against the references of its sample.

    Args:
        responses: Decoded responses, one per sample.
        samples: Samples in the same order.

    Returns:
        ROUGE-L F1 x100 of each response against its best reference, in [0, 100].

    Raises:
        ValueError: If the two sequences differ in length.
    """
    if len(responses) != len(samples):
        raise ValueError(
            f"got {len(responses)} responses for {len(samples)} samples: "
            "pass one response per sample"
        )
    return [
        100.0 * rouge_l_f1(response, sample.references)
        for response, sample in zip(responses, samples)
    ]


# ---------------------------------------------------------------------------
# Model loading


def load_model_and_tokenizer(
    model_dir: str | Path, *, dtype: str = "auto", device: str = "auto"
) -> tuple[torch.nn.Module, Any]:
    """Load a causal language model, or a base model with a LoRA adapter.

    Args:
        model_dir: Model directory, or adapter directory with
            ``adapter_config.json``.
        dtype: "auto" keeps the checkpoint's dtype on CUDA and uses float32 on
            CPU, or one of "float32", "bfloat16", "float16".
        device: "auto" picks CUDA when available, or "cpu" or "cuda".

    Returns:
        The model in eval mode on the device, and its tokenizer with a pad token
        (EOS when the tokenizer has none).

    Raises:
        FileNotFoundError: If ``model_dir`` is not a directory or has neither a
            model nor an adapter config.
        ValueError: If ``adapter_config.json`` names no base model, or the
            tokenizer has neither a pad nor an EOS token.
    """
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    load_kwargs = {"dtype": torch_dtype, "device_map": {"": str(torch_device)}}

    adapter_config_path = model_dir / "adapter_config.json"
    if adapter_config_path.is_file():
        from peft import PeftModel

        base_name = _adapter_base_model(adapter_config_path)
        LOG.info(f"Loading base model {base_name} for the adapter in {model_dir}")
        model = AutoModelForCausalLM.from_pretrained(base_name, **load_kwargs)
        model = PeftModel.from_pretrained(model, str(model_dir))
        has_own_tokenizer = any((model_dir / f).is_file() for f in _TOKENIZER_FILES)
        tokenizer_source = str(model_dir) if has_own_tokenizer else base_name
    else:
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir} has neither config.json nor adapter_config.json, so it "
                "holds no saved model or LoRA adapter"
            )
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **load_kwargs)
        tokenizer_source = str(model_dir)

    model.eval()
    tokenizer = _load_tokenizer(tokenizer_source)
    return model, tokenizer


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but CUDA is not available: use 'cpu'")
    return torch.device(device)


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | str:
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    if dtype == "auto":
        # Half-precision kernels on CPU are often slower than float32, or missing.
        return "auto" if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def _adapter_base_model(adapter_config_path: Path) -> str:
    adapter_config = json.loads(adapter_config_path.read_text(encoding="utf-8"))
    base_name = adapter_config.get("base_model_name_or_path")
    if not base_name:
        raise ValueError(
            f"{adapter_config_path} has no `base_model_name_or_path`: set it to "
            "the base model's directory"
        )
    return str(base_name)


def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"the tokenizer of {source} has neither a pad nor an EOS token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _eos_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Collect the EOS ids of the tokenizer and of the model's generation config."""
    eos_ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    generation_config = getattr(model, "generation_config", None)
    config_eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(config_eos, int):
        config_eos = [config_eos]
    for token_id in config_eos or []:
        if token_id not in eos_ids:
            eos_ids.append(int(token_id))
    if not eos_ids:
        raise ValueError("neither the tokenizer nor the model defines an EOS token")
    return eos_ids


# ---------------------------------------------------------------------------
# Evaluation


def evaluate(
    model_dir: str | Path,
    data_files: Sequence[str | Path],
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    greedy: bool = False,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_prompt_tokens: int | None = None,
    dtype: str = "auto",
    device: str = "auto",
    limit: int | None = None,
    save_predictions: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load a model and evaluate it on JSON Lines files.

    Every file is read and validated before the model is loaded.

    Args:
        model_dir: Model directory or LoRA adapter directory.
        data_files: JSON Lines files, each scored separately.
        seeds: Sampling seeds, one pass each; ignored when ``greedy`` is true.
        greedy: Decode greedily in one pass instead of sampling.
        max_new_tokens: Maximum response length, in tokens.
        batch_size: Number of prompts generated together.
        max_prompt_tokens: Prompts longer than this many tokens are cut from the
            left. None means the model's max positions minus ``max_new_tokens``,
            or no limit when the config has no max positions.
        dtype: Model dtype, see ``load_model_and_tokenizer``.
        device: Model device, see ``load_model_and_tokenizer``.
        limit: Evaluate only the first ``limit`` samples of each file.
        save_predictions: Store every response and its score in the result.
        progress: Show a progress bar per file and seed.

    Returns:
        The result, as described in ``evaluate_model``, with the model directory
        and the dtype and device settings added.

    Raises:
        FileNotFoundError: If the model directory or a data file is missing.
        EvalDataError: If a data file has a malformed line.
        ValueError: If a setting is invalid.
    """
    _check_settings(data_files, seeds, greedy, max_new_tokens, batch_size, limit)
    names = [str(data_file) for data_file in data_files]
    datasets = {}
    for name in names:
        samples = read_eval_file(name)
        datasets[name] = samples[:limit] if limit is not None else samples

    model, tokenizer = load_model_and_tokenizer(model_dir, dtype=dtype, device=device)
    result = evaluate_model(
        model,
        tokenizer,
        datasets,
        seeds=seeds,
        greedy=greedy,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        save_predictions=save_predictions,
        progress=progress,
    )
    parameter = next(model.parameters())
    result["settings"].update(
        dtype=str(parameter.dtype).removeprefix("torch."),
        device=str(parameter.device),
        limit=limit,
    )
    return {"model": str(model_dir), **result}


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: Any,
    datasets: Mapping[str, Sequence[EvalSample]],
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    greedy: bool = False,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_prompt_tokens: int | None = None,
    save_predictions: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a loaded model on samples grouped by data set name.

    Args:
        model: Causal language model with ``generate``.
        tokenizer: Its tokenizer; must have a pad or an EOS token.
        datasets: Samples of each data set, keyed by a name such as the file path.
        seeds: See ``evaluate``.
        greedy: See ``evaluate``.
        max_new_tokens: See ``evaluate``.
        batch_size: See ``evaluate``.
        max_prompt_tokens: See ``evaluate``.
        save_predictions: See ``evaluate``.
        progress: See ``evaluate``.

    Returns:
        A JSON-serialisable dict with ``metric``, ``settings`` and ``files``.
        ``files`` has one entry per data set with ``file``, ``samples``,
        ``rouge_l_mean``, ``rouge_l_std``, ``per_seed`` and ``truncated_prompts``.
        ``per_seed`` is a list of ``{"seed", "rouge_l"}``, with seed None for
        greedy decoding. With ``save_predictions``, ``predictions`` lists per
        sample its ``line``, and its ``responses`` and ``rouge_l`` in the order of
        ``per_seed``.

    Raises:
        ValueError: If a setting is invalid.
    """
    run_seeds = _check_seeds(seeds, greedy)
    max_prompt_tokens = _resolve_max_prompt_tokens(
        model, max_prompt_tokens, max_new_tokens
    )
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id
    eos_ids = _eos_token_ids(model, tokenizer)

    file_results = []
    for name, samples in datasets.items():
        prompts, truncated = _tokenize_prompts(tokenizer, samples, max_prompt_tokens)
        if truncated:
            LOG.warning(
                f"{name}: {truncated} of {len(samples)} prompts are longer than "
                f"{max_prompt_tokens} tokens and were cut from the left"
            )
        seed_scores = []
        seed_responses = []
        for seed in run_seeds:
            label = "greedy" if seed is None else f"seed {seed}"
            responses = _generate_responses(
                model,
                tokenizer,
                prompts,
                seed,
                pad_token_id=pad_token_id,
                eos_ids=eos_ids,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                progress_desc=f"{Path(name).name} {label}" if progress else None,
            )
            scores = score_responses(responses, samples)
            LOG.info(f"{name} {label}: ROUGE-L {float(np.mean(scores)):.2f}")
            seed_scores.append(scores)
            seed_responses.append(responses)
        file_results.append(
            _file_result(
                name,
                samples,
                run_seeds,
                seed_scores,
                seed_responses,
                truncated,
                save_predictions,
            )
        )

    settings = {
        "decoding": "greedy" if greedy else "sampling",
        "seeds": None if greedy else list(run_seeds),
        "temperature": None if greedy else SAMPLING_TEMPERATURE,
        "top_p": None if greedy else SAMPLING_TOP_P,
        # 0 is the transformers value for top-k off.
        "top_k": None if greedy else 0,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "max_prompt_tokens": max_prompt_tokens,
        "std": STD_KIND,
    }
    return {
        "metric": "ROUGE-L F1 x100, best over the references of each sample",
        "settings": settings,
        "files": file_results,
    }


def _generate_responses(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    seed: int | None,
    *,
    pad_token_id: int,
    eos_ids: list[int],
    max_new_tokens: int,
    batch_size: int,
    progress_desc: str | None,
) -> list[str]:
    """Generate and decode one response per prompt; a seed of None means greedy."""
    generated = generate_token_ids(
        model,
        prompts,
        pad_token_id=pad_token_id,
        eos_token_id=eos_ids,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=seed is not None,
        temperature=SAMPLING_TEMPERATURE,
        top_p=SAMPLING_TOP_P,
        seed=seed,
        progress_desc=progress_desc,
    )
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [text.strip() for text in texts]


def _check_settings(
    data_files: Sequence[str | Path],
    seeds: Sequence[int],
    greedy: bool,
    max_new_tokens: int,
    batch_size: int,
    limit: int | None,
) -> None:
    """Check the settings of ``evaluate`` before the slow steps, reading and loading."""
    _check_seeds(seeds, greedy)
    _check_positive("max_new_tokens", max_new_tokens)
    _check_positive("batch_size", batch_size)
    if limit is not None:
        _check_positive("limit", limit)
    names = [str(data_file) for data_file in data_files]
    if not names:
        raise ValueError("data_files is empty: pass at least one JSON Lines file")
    if len(set(names)) != len(names):
        raise ValueError(f"data_files lists a file twice: {names}")


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def _check_seeds(seeds: Sequence[int], greedy: bool) -> list[int | None]:
    if greedy:
        return [None]
    run_seeds = [int(seed) for seed in seeds]
    if not run_seeds:
        raise ValueError("seeds is empty: pass at least one seed, or use greedy")
    negative = [seed for seed in run_seeds if seed < 0]
    if negative:
        raise ValueError(f"seeds must be at least 0, got {negative}")
    if len(set(run_seeds)) != len(run_seeds):
        raise ValueError(
            f"seeds must be distinct, got {run_seeds}: a repeated seed repeats "
            "the same responses and shrinks the standard deviation"
        )
    return run_seeds


def _resolve_max_prompt_tokens(
    model: torch.nn.Module, max_prompt_tokens: int | None, max_new_tokens: int
) -> int | None:
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_prompt_tokens is None:
        if max_positions is None:
            return None
        max_prompt_tokens = max_positions - max_new_tokens
        if max_prompt_tokens < 1:
            raise ValueError(
                f"max_new_tokens ({max_new_tokens}) leaves no room for the prompt "
                f"in the model's {max_positions} positions: lower max_new_tokens"
            )
        return max_prompt_tokens
    _check_positive("max_prompt_tokens", max_prompt_tokens)
    if max_positions is not None and max_prompt_tokens + max_new_tokens > max_positions:
        LOG.warning(
            f"max_prompt_tokens ({max_prompt_tokens}) plus max_new_tokens "
            f"({max_new_tokens}) exceeds the model's {max_positions} positions"
        )
    return max_prompt_tokens


def _tokenize_prompts(
    tokenizer: Any, samples: Sequence[EvalSample], max_prompt_tokens: int | None
) -> tuple[list[list[int]], int]:
    """Tokenize the prompts as Axolotl does in training, cutting long ones.

    Returns:
        The token ids of each prompt and the count of prompts that were cut.
    """
    encoded = tokenizer([sample.prompt for sample in samples])["input_ids"]
    prompts = []
    truncated = 0
    for ids in encoded:
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            ids = _truncate_left(ids, max_prompt_tokens, tokenizer.bos_token_id)
            truncated += 1
        prompts.append(list(ids))
    return prompts, truncated


def _truncate_left(
    ids: list[int], max_tokens: int, bos_token_id: int | None
) -> list[int]:
    if bos_token_id is not None and ids[0] == bos_token_id and max_tokens >= 2:
        return [bos_token_id] + ids[len(ids) - max_tokens + 1 :]
    return ids[len(ids) - max_tokens :]


def _file_result(
    name: str,
    samples: Sequence[EvalSample],
    run_seeds: list[int | None],
    seed_scores: list[list[float]],
    seed_responses: list[list[str]],
    truncated: int,
    save_predictions: bool,
) -> dict[str, Any]:
    file_scores = [float(np.mean(scores)) for scores in seed_scores]
    result: dict[str, Any] = {
        "file": name,
        "samples": len(samples),
        "rouge_l_mean": float(np.mean(file_scores)),
        "rouge_l_std": float(np.std(file_scores, ddof=0)),
        "per_seed": [
            {"seed": seed, "rouge_l": score}
            for seed, score in zip(run_seeds, file_scores)
        ],
        "truncated_prompts": truncated,
    }
    if save_predictions:
        result["predictions"] = [
            {
                "line": sample.line_number,
                "responses": [responses[i] for responses in seed_responses],
                "rouge_l": [scores[i] for scores in seed_scores],
            }
            for i, sample in enumerate(samples)
        ]
    return result


# ---------------------------------------------------------------------------
# Command line


def format_table(result: Mapping[str, Any]) -> str:
    """Format the per-file scores of an evaluation result as a text table.

    Args:
        result: Output of ``evaluate`` or ``evaluate_model``.

    Returns:
        One header line and one line per file, without a trailing newline.
    """
    seeds = result["settings"]["seeds"]
    seeds_text = "greedy" if seeds is None else ",".join(str(s) for s in seeds)
    rows = [("file", "samples", "ROUGE-L", "std", "seeds")]
    for entry in result["files"]:
        rows.append(
            (
                entry["file"],
                str(entry["samples"]),
                f"{entry['rouge_l_mean']:.2f}",
                f"{entry['rouge_l_std']:.2f}",
                seeds_text,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:4], widths[1:4])]
        cells.append(row[4])
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _int_at_least(minimum: int):
    """Return an argparse type that accepts integers of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``pocl-axolotl eval`` and set ``run_eval`` as its action.

    Args:
        parser: The sub-parser of the ``eval`` command.
    """
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="model directory, or LoRA adapter directory with adapter_config.json",
    )
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="FILE",
        help="JSON Lines files to evaluate, each scored separately",
    )
    parser.add_argument(
        "--seeds",
        type=_non_negative_int,
        nargs="+",
        metavar="SEED",
        default=list(DEFAULT_SEEDS),
        help="sampling seeds, one pass each; the report gives the mean and the "
        "population standard deviation (ddof=0) over them (default: %(default)s)",
    )
    parser.add_argument(
        "--greedy",
        action="store_true",
        help="decode greedily in one pass instead of sampling; ignores --seeds",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help="maximum response length in tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help="prompts generated together (default: %(default)s)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="cut longer prompts from the left to N tokens (default: the model's "
        "max positions minus --max-new-tokens)",
    )
    parser.add_argument(
        "--output",
        default=None,
        metavar="FILE",
        help=f"JSON results file (default: <model dir>/{RESULTS_FILE_NAME})",
    )
    parser.add_argument(
        "--save-predictions",
        action="store_true",
        help="store every response and its score in the JSON results file",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="model dtype; auto keeps the checkpoint's dtype on CUDA and uses "
        "float32 on CPU (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="auto uses CUDA when available (default: %(default)s)",
    )
    parser.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="evaluate only the first N samples of each file; every line is "
        "still validated",
    )
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Run ``pocl-axolotl eval``: evaluate, print the table, write the JSON file.

    Args:
        args: Parsed options from ``add_arguments``.

    Returns:
        0 on success, 2 when an option is invalid or a data file is missing or
        malformed.
    """
    try:
        _check_settings(
            args.data,
            args.seeds,
            args.greedy,
            args.max_new_tokens,
            args.batch_size,
            args.limit,
        )
    except ValueError as error:
        LOG.error(f"pocl-axolotl eval: invalid option: {error}")
        return 2

    try:
        result = evaluate(
            args.model,
            args.data,
            seeds=args.seeds,
            greedy=args.greedy,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            max_prompt_tokens=args.max_prompt_tokens,
            dtype=args.dtype,
            device=args.device,
            limit=args.limit,
            save_predictions=args.save_predictions,
        )
    except (EvalDataError, FileNotFoundError) as error:
        LOG.error(f"pocl-axolotl eval failed: {error}")
        return 2

    output = Path(args.output) if args.output else Path(args.model) / RESULTS_FILE_NAME
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_table(result))
    LOG.info(f"Wrote {output}")
    return 0

