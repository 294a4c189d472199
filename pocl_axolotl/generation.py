"""Batched generation from token ids, shared by evaluation and difficulty measuring.

Prompts are sorted by length, left-padded into batches and passed to
``model.generate`` with the key-value cache. Each call returns only the new tokens of
each prompt, cut at the first EOS, in the input order.

Shapes: ``B`` is the batch size, ``T`` the padded prompt length.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from pocl_axolotl.log import get_logger

LOG = get_logger(__name__)

# transformers fills every generation setting left unset from the checkpoint's
# generation_config.json and then from its own defaults (top_k=50 in transformers
# 5.16). These values switch off every logits processor, so the sampling distribution
# depends only on temperature and top_p, whatever the checkpoint ships.
_NEUTRAL_GENERATION_KWARGS: dict[str, Any] = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "min_length": 0,
    "min_new_tokens": None,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "guidance_scale": None,
}
_SAMPLING_OFF_KWARGS: dict[str, Any] = {
    "top_k": None,
    "min_p": None,
    "top_h": None,
    "typical_p": None,
    "epsilon_cutoff": None,
    "eta_cutoff": None,
}

# Without a terminal, tqdm would redraw into a log file at every update, so the bar
# then writes one line per this many seconds.
_NON_TTY_PROGRESS_INTERVAL_S = 60.0


def generate_token_ids(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_id: int | Sequence[int],
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    progress_desc: str | None = None,
) -> list[list[int]]:
    """Generate a continuation of each prompt in batches.

    The model runs in eval mode under ``torch.inference_mode()`` and gets its
    previous training mode back afterwards. When sampling, batch ``i`` is seeded
    from ``(seed, i)``, so for a given model and settings the output depends only
    on the seed, the prompts and the batch size, never on the global random state,
    which is left unchanged. Greedy decoding ignores the seed.

    Args:
        model: A causal language model with ``generate``, such as a transformers
            ``PreTrainedModel`` or a peft ``PeftModel``.
        prompts: Token ids of each prompt, BOS included when the model expects it.
        pad_token_id: Token id used to left-pad the prompts of a batch.
        eos_token_id: Token id, or ids, that end a response.
        max_new_tokens: Maximum number of tokens generated per prompt.
        batch_size: Number of prompts generated together.
        do_sample: Sample from the distribution instead of decoding greedily.
        temperature: Sampling temperature; used only when ``do_sample`` is true.
        top_p: Nucleus sampling mass in (0, 1], where 1 keeps the whole
            distribution; used only when ``do_sample`` is true.
        seed: Seed of the sampling; required when ``do_sample`` is true.
        progress_desc: Label of a tqdm progress bar over the prompts. No bar is
            shown when it is None.

    Returns:
        The generated token ids of each prompt, in the order of ``prompts``, with
        the first EOS and everything after it removed.

    Raises:
        ValueError: If a prompt is empty, ``max_new_tokens`` or ``batch_size`` is
            below 1, ``eos_token_id`` is an empty sequence, or a sampling setting
            (temperature, top_p, seed) is invalid.
    """
    prompt_lists = [[int(token) for token in prompt] for prompt in prompts]
    eos_ids = _eos_id_list(eos_token_id)
    _check_generation_args(
        prompt_lists, max_new_tokens, batch_size, do_sample, temperature, top_p, seed
    )
    if not prompt_lists:
        return []

    generate_kwargs = _generate_kwargs(
        pad_token_id, eos_ids, max_new_tokens, do_sample, temperature, top_p
    )
    # Longest prompts first, so an out-of-memory error shows up in the first batch.
    order = sorted(
        range(len(prompt_lists)), key=lambda i: len(prompt_lists[i]), reverse=True
    )
    results: list[list[int] | None] = [None] * len(prompt_lists)
    eos_set = frozenset(eos_ids)
    device = _model_device(model)

    with _eval_mode(model), torch.inference_mode(), _progress_bar(
        progress_desc, len(prompt_lists)
    ) as progress:
        for batch_index, start in enumerate(range(0, len(order), batch_size)):
            indices = order[start : start + batch_size]
            batch_prompts = [prompt_lists[i] for i in indices]
            batch_seed = _batch_seed(seed, batch_index) if do_sample else None
            new_tokens = _generate_batch(
                model, batch_prompts, device, generate_kwargs, batch_seed
            )
            for i, tokens in zip(indices, new_tokens):
                results[i] = _cut_at_eos(tokens, eos_set)
            if progress is not None:
                progress.update(len(indices))

    return [tokens if tokens is not None else [] for tokens in results]


def _eos_id_list(eos_token_id: int | Sequence[int]) -> list[int]:
    if isinstance(eos_token_id, int):
        return [eos_token_id]
    eos_ids = [int(token) for token in eos_token_id]
    if not eos_ids:
        raise ValueError("eos_token_id is an empty sequence: pass at least one id")
    return eos_ids


def _check_generation_args(
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    seed: int | None,
) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(
                f"prompt {index} has no tokens: every prompt needs at least one "
                "token, such as BOS"
            )
    if do_sample:
        if temperature <= 0:
            raise ValueError(f"temperature must be above 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if seed is None:
            raise ValueError("seed is required when do_sample is true")
        if seed < 0:
            raise ValueError(f"seed must be at least 0, got {seed}")


def _generate_kwargs(
    pad_token_id: int,
    eos_ids: list[int],
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
) -> dict[str, Any]:
    kwargs = dict(_NEUTRAL_GENERATION_KWARGS)
    kwargs.update(_SAMPLING_OFF_KWARGS)
    # generate() rejects a setting that this transformers version lacks as an
    # unused model input.
    known_settings = GenerationConfig().to_dict()
    kwargs = {key: value for key, value in kwargs.items() if key in known_settings}
    kwargs.update(
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
        eos_token_id=eos_ids,
        use_cache=True,
        do_sample=do_sample,
    )
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        # None instead of the unused values keeps transformers from warning that
        # sampling settings are set in greedy mode.
        kwargs.update(temperature=None, top_p=None)
    return kwargs


def _generate_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    device: torch.device,
    generate_kwargs: dict[str, Any],
    seed: int | None,
) -> list[list[int]]:
    max_len = max(len(prompt) for prompt in prompts)
    input_ids = torch.full(
        (len(prompts), max_len), generate_kwargs["pad_token_id"], dtype=torch.long
    )  # (B, T)
    attention_mask = torch.zeros((len(prompts), max_len), dtype=torch.long)  # (B, T)
    for row, prompt in enumerate(prompts):
        input_ids[row, max_len - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, max_len - len(prompt) :] = 1

    with _seeded(seed, device):
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            **generate_kwargs,
        )
    return output[:, max_len:].tolist()


def _cut_at_eos(tokens: list[int], eos_set: frozenset[int]) -> list[int]:
    for position, token in enumerate(tokens):
        if token in eos_set:
            return tokens[:position]
    return tokens


def _batch_seed(seed: int | None, batch_index: int) -> int:
    # SeedSequence mixes the pair, so nearby seeds and batches get unrelated streams.
    state = np.random.SeedSequence([int(seed), batch_index]).generate_state(1)
    return int(state[0])


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch for one batch and restore the caller's random state afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _progress_bar(desc: str | None, total: int) -> Iterator[tqdm | None]:
    if desc is None:
        yield None
        return
    is_tty = sys.stderr.isatty()
    with tqdm(
        total=total,
        desc=desc,
        unit="sample",
        mininterval=0.1 if is_tty else _NON_TTY_PROGRESS_INTERVAL_S,
        dynamic_ncols=is_tty,
    ) as progress:
        yield progress
