"""Loading the frozen teacher and checking that it shares the student's tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from pocl_axolotl.log import get_logger

LOG = get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, fallback: torch.dtype) -> torch.dtype:
    """Map a `teacher_dtype` value to a torch dtype; `auto` gives ``fallback``."""
    return fallback if name == "auto" else DTYPES[name]


def load_teacher(
    name: str,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load the teacher once, frozen: eval mode and no parameter requires a gradient.

    Args:
        name: Local directory or hub id of the teacher.
        dtype: Dtype of its weights.
        device: Device of the student, where the teacher runs too.
        trust_remote_code: Passed to ``from_pretrained``, as Axolotl's own
            `trust_remote_code` key does for the student.

    Raises:
        OSError: The model cannot be found; the message names `pocl.teacher_model`.
    """
    LOG.info(f"Loading the teacher {name} ({dtype}) on {device}")
    try:
        teacher = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise OSError(
            f"Could not load `pocl.teacher_model: {name}`: {error}. Give a local "
            "directory with a saved model or a hub id that is reachable."
        ) from error
    teacher.to(device)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def check_model_reference(name: str, key: str) -> None:
    """Raise a plain "not found" for a path-like model name that does not exist.

    Names that start with "/", "." or "~" can only be local directories; other
    names may be hub ids and are left to ``from_pretrained``.
    """
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().is_dir():
        raise ValueError(f"`{key}: {name}` was not found: no such directory.")


def check_same_tokenizer(student_tokenizer, other_name: str, key: str) -> None:
    """Raise unless the model ``other_name`` uses the student's vocabulary.

    Two tokenizers match when they map the same tokens to the same ids. Models
    whose embedding matrices are padded differently still match.

    Args:
        student_tokenizer: The tokenizer Axolotl loaded for the student.
        other_name: Directory or hub id of the teacher or scoring model.
        key: The YAML key that named it, for the message.

    Raises:
        ValueError: The vocabularies differ; the message names both models and sizes.
    """
    check_model_reference(other_name, key)
    try:
        other = AutoTokenizer.from_pretrained(other_name)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"Could not load the tokenizer of `{key}: {other_name}` to check that it "
            f"matches the student's: {reason}. A local directory must contain the "
            "model's tokenizer files; a hub id must be reachable or in the local "
            "cache."
        ) from None
    student_vocab = student_tokenizer.get_vocab()
    other_vocab = other.get_vocab()
    if student_vocab == other_vocab:
        return
    differing = sorted(
        token
        for token in student_vocab.keys() | other_vocab.keys()
        if student_vocab.get(token) != other_vocab.get(token)
    )
    student_name = getattr(student_tokenizer, "name_or_path", "the student")
    raise ValueError(
        f"The tokenizer of `{key}: {other_name}` ({len(other_vocab)} tokens) does not "
        f"match the student's tokenizer {student_name} ({len(student_vocab)} tokens): "
        f"{len(differing)} tokens differ, for example {differing[:5]}. Logit "
        "distillation needs one shared vocabulary; choose a teacher of the same "
        "model family."
    )
