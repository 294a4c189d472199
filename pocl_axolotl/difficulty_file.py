"""Difficulty values that a user brings in a JSON Lines file (`pocl.difficulty_file`).

Axolotl drops samples longer than `sequence_len` and shuffles the tokenized
dataset unless `shuffle_merged_datasets: false`, so the position of a line in a
file of raw samples does not identify the tokenized sample it belongs to.
Lines are therefore matched to samples in one of three ways, and the whole file
must use one:

- by prompt: each line has `prompt`, or `instruction` and an optional `input`,
  rendered with Axolotl's Alpaca template, and is matched to the training sample
  whose prompt tokens are the same;
- by `index` into the tokenized dataset, as in the `pocl_difficulty.jsonl`
  report of an earlier run with the same dataset settings;
- by position, only when Axolotl keeps the file order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocl_axolotl.jsonl import iter_json_lines
from pocl_axolotl.log import get_logger

LOG = get_logger(__name__)


@dataclass(frozen=True)
class DifficultyLine:
    """One line of a difficulty file."""

    line_number: int
    value: float
    index: int | None
    prompt: str | None


def read_difficulty_file(
    path: Path,
    prompts: Sequence[tuple[int, ...]],
    tokenize: Callable[[str], tuple[int, ...]],
    *,
    keeps_order: bool,
) -> np.ndarray:
    """Return one difficulty per training sample, lower is easier.

    Args:
        path: The JSON Lines file.
        prompts: Prompt token ids of each training sample, in dataset order.
        tokenize: Maps a rendered prompt to its token ids, as the training
            tokenizer encodes it.
        keeps_order: Whether Axolotl kept the order of the raw samples, which
            positional lines need.

    Raises:
        ValueError: The file is missing or malformed, mixes matching kinds, or
            does not give every sample exactly one value; the message names the
            line or the sample and what to do.
    """
    lines = _read_lines(path)
    kinds = {_kind(line) for line in lines}
    if len(kinds) > 1:
        raise ValueError(
            f"`pocl.difficulty_file: {path}` mixes lines with a prompt, with an "
            "`index` and with neither; give every line the same kind of key."
        )
    kind = kinds.pop() if kinds else "position"
    if kind == "prompt":
        return _match_by_prompt(path, lines, prompts, tokenize)
    if len(lines) != len(prompts):
        raise ValueError(
            f"`pocl.difficulty_file: {path}` has {len(lines)} values but the training "
            f"dataset has {len(prompts)} samples. Axolotl drops samples longer than "
            "sequence_len; give each line the sample's `prompt` (or `instruction` "
            "and `input`) so that lines are matched to samples by prompt."
        )
    if kind == "index":
        return _match_by_index(path, lines, len(prompts))
    if not keeps_order:
        raise ValueError(
            f"The lines of `pocl.difficulty_file: {path}` carry neither a prompt nor "
            "an `index`, so they are matched to samples by position, but Axolotl "
            "shuffles the tokenized dataset. Set `shuffle_merged_datasets: false`, or "
            "give each line the sample's `prompt` (or `instruction` and `input`)."
        )
    return np.array([line.value for line in lines], dtype=np.float64)


def _read_lines(path: Path) -> list[DifficultyLine]:
    if not path.is_file():
        raise ValueError(f"`pocl.difficulty_file: {path}` was not found.")
    return [
        _parse_line(item, path, line_number) for line_number, item in iter_json_lines(path)
    ]


def _parse_line(item, path: Path, line_number: int) -> DifficultyLine:
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return DifficultyLine(line_number, float(item), None, None)
    if not isinstance(item, dict) or not ("difficulty" in item or "rank" in item):
        raise ValueError(
            f"{path}:{line_number}: expected a number, an object with `difficulty`, or "
            f"a pocl_difficulty.jsonl line with `index` and `rank`; got {str(item)[:80]}"
        )
    value = item["difficulty"] if "difficulty" in item else item["rank"]
    index = item.get("index")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise ValueError(f"{path}:{line_number}: `index` must be an integer, got {index!r}")
    return DifficultyLine(line_number, _as_float(value), index, _prompt_of(item))


def _prompt_of(item: dict) -> str | None:
    if isinstance(item.get("prompt"), str):
        return item["prompt"]
    if isinstance(item.get("instruction"), str):
        from pocl_axolotl.evaluation import render_alpaca_prompt

        return render_alpaca_prompt(item["instruction"], item.get("input") or "")
    return None


def _kind(line: DifficultyLine) -> str:
    if line.prompt is not None:
        return "prompt"
    return "index" if line.index is not None else "position"


def _as_float(value) -> float:
    return float("nan") if value is None else float(value)


def _match_by_index(path: Path, lines: list[DifficultyLine], num_samples: int) -> np.ndarray:
    indices = [line.index for line in lines]
    if sorted(indices) != list(range(num_samples)):
        raise ValueError(
            f"The `index` values of {path} are not a permutation of 0..{num_samples - 1}."
        )
    difficulty = np.empty(num_samples, dtype=np.float64)
    difficulty[np.array(indices)] = [line.value for line in lines]
    return difficulty


def _match_by_prompt(path, lines, prompts, tokenize) -> np.ndarray:
    # Equal prompts (duplicate samples) take their lines in file order.
    values_by_prompt: dict[tuple[int, ...], list[float]] = {}
    for line in lines:
        values_by_prompt.setdefault(tokenize(line.prompt), []).append(line.value)
    used: dict[tuple[int, ...], int] = {}
    difficulty = np.empty(len(prompts), dtype=np.float64)
    missing = []
    for sample_index, prompt in enumerate(prompts):
        values = values_by_prompt.get(prompt, [])
        position = used.get(prompt, 0)
        if position >= len(values):
            missing.append(sample_index)
            continue
        difficulty[sample_index] = values[position]
        used[prompt] = position + 1
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(prompts)} training samples have no line in "
            f"`pocl.difficulty_file: {path}` with the same prompt, for example the "
            f"samples at indices {missing[:5]} of the tokenized dataset. Add lines for "
            "them, or check that the file renders prompts as the training data does."
        )
    unused = len(lines) - sum(used.values())
    if unused:
        LOG.info(f"{unused} lines of {path} match no training sample, for example samples that Axolotl dropped as too long")
    return difficulty
