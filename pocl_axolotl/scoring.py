"""Per-sample difficulty metrics computed with a scoring model.

Every metric reads a sample as Axolotl tokenized it, so scoring uses the same
tokens as training. ``lm_loss``, ``teacher_kl`` and ``length`` use every supervised
token (``labels != -100``). ``rouge_l`` generates from the prompt, ``input_ids``
up to the first supervised token, and compares with the reference, the first
contiguous run of supervised tokens.
Shapes: ``B`` batch, ``T`` sequence length, ``V`` vocabulary size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pocl_axolotl.generation import generate_token_ids
from pocl_axolotl.rouge import rouge_l_f1

IGNORE_INDEX = -100

# Whether a higher value of each metric means an easier sample.
HIGHER_IS_EASIER = {"lm_loss": False, "rouge_l": True, "teacher_kl": False, "length": False}


@dataclass(frozen=True)
class TokenizedSample:
    """One training sample split into its prompt and its reference response."""

    input_ids: list[int]
    labels: list[int]

    @property
    def first_target(self) -> int | None:
        """Return the position of the first supervised token, or None if there is none."""
        for position, label in enumerate(self.labels):
            if label != IGNORE_INDEX:
                return position
        return None

    @property
    def prompt_ids(self) -> list[int]:
        """Return the tokens before the first supervised token."""
        first = self.first_target
        return self.input_ids if first is None else self.input_ids[:first]

    @property
    def reference_ids(self) -> list[int]:
        """Return the first contiguous run of supervised tokens."""
        first = self.first_target
        if first is None:
            return []
        end = first
        while end < len(self.labels) and self.labels[end] != IGNORE_INDEX:
            end += 1
        return self.labels[first:end]

    @property
    def num_targets(self) -> int:
        """Return the number of supervised tokens after the one-token shift."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    # Without a terminal, as in a log file, redraw once a minute instead of ten
    # times a second.
    interval = 0.1 if sys.stderr.isatty() else 60.0
    return tqdm(
        total=total, desc=desc, unit="sample", disable=not enabled,
        dynamic_ncols=True, mininterval=interval,
    )


def _length_batches(samples: Sequence[TokenizedSample], batch_size: int) -> list[list[int]]:
    """Group sample positions into batches of similar length, to pad little."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _padded_batch(samples, positions, pad_token_id, device):
    """Right-pad a batch; returns input_ids, attention_mask and labels of shape (B, T)."""
    width = max(len(samples[i].input_ids) for i in positions)
    input_ids = torch.full((len(positions), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(positions), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(positions), width), dtype=torch.long)
    for row, i in enumerate(positions):
        length = len(samples[i].input_ids)
        input_ids[row, :length] = torch.tensor(samples[i].input_ids)
        labels[row, :length] = torch.tensor(samples[i].labels)
        attention_mask[row, :length] = 1
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def supervised_logits(model, input_ids, attention_mask, mask) -> torch.Tensor:
    """Return fp32 logits at the supervised positions only, shape ``(N, V)``.

    Prompt positions need no logits, so the decoder's hidden states go through
    the output layer only where ``mask`` is set. That skips most of the output
    layer's work and memory on instruction data, whose prompts are long. Models
    that rescale their logits after the output layer take the full forward.

    Args:
        model: A causal language model.
        input_ids: Token ids, ``(B, T)``.
        attention_mask: ``(B, T)``.
        mask: Which positions' logits to return, ``(B, T)`` bool.
    """
    config = getattr(model, "config", None)
    rescales = any(
        getattr(config, name, None) not in (None, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    output_layer = model.get_output_embeddings()
    if rescales or decoder is None or output_layer is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[mask].float()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return output_layer(hidden[mask]).float()


@torch.inference_mode()
def _run_forward_metric(
    model: torch.nn.Module,
    samples: Sequence[TokenizedSample],
    *,
    pad_token_id: int,
    batch_size: int,
    desc: str,
    show_progress: bool,
    per_token: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor],
) -> np.ndarray:
    """Average ``per_token`` over each sample's supervised positions.

    ``per_token`` maps the ``(N, V)`` logits that predict the supervised tokens,
    the ``(N,)`` target ids and the batch to ``(N,)`` values.
    """
    device = next(model.parameters()).device
    values = np.full(len(samples), np.nan, dtype=np.float64)
    was_training = model.training
    model.eval()
    with _progress(len(samples), desc, show_progress) as bar:
        for positions in _length_batches(samples, batch_size):
            input_ids, attention_mask, labels = _padded_batch(
                samples, positions, pad_token_id, device
            )
            # Position t predicts labels[t + 1]; the last position predicts nothing.
            mask = torch.zeros_like(labels, dtype=torch.bool)
            mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, "mask": mask}
            token_values = per_token(
                supervised_logits(model, input_ids, attention_mask, mask),
                labels[:, 1:][mask[:, :-1]],
                batch,
            )
            rows = mask.nonzero(as_tuple=True)[0]
            sums = torch.zeros(len(positions), dtype=torch.float64, device=device)
            sums.index_add_(0, rows, token_values.double())
            counts = mask.sum(dim=1)
            means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan)
            values[positions] = means.cpu().numpy()
            bar.update(len(positions))
    model.train(was_training)
    return values


def score_lm_loss(model, samples, *, pad_token_id, batch_size, show_progress=True) -> np.ndarray:
    """Mean cross-entropy of each sample's supervised tokens; NaN without any."""

    def cross_entropy(logits, targets, _batch):
        return F.cross_entropy(logits, targets, reduction="none")

    return _run_forward_metric(
        model, samples, pad_token_id=pad_token_id, batch_size=batch_size,
        desc="Scoring lm_loss", show_progress=show_progress, per_token=cross_entropy,
    )


def score_teacher_kl(
    model, teacher, samples, *, pad_token_id, batch_size, show_progress=True
) -> np.ndarray:
    """Mean forward KL(teacher ‖ model) at temperature 1 over each sample's targets."""
    teacher_device = next(teacher.parameters()).device

    def forward_kl(logits, _targets, batch):
        with torch.inference_mode():
            teacher_logits = supervised_logits(
                teacher,
                batch["input_ids"].to(teacher_device),
                batch["attention_mask"].to(teacher_device),
                batch["mask"].to(teacher_device),
            ).to(logits.device)
        shared = min(logits.shape[-1], teacher_logits.shape[-1])
        log_q = torch.log_softmax(logits[:, :shared], dim=-1)
        log_p = torch.log_softmax(teacher_logits[:, :shared], dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1)

    return _run_forward_metric(
        model, samples, pad_token_id=pad_token_id, batch_size=batch_size,
        desc="Scoring teacher_kl", show_progress=show_progress, per_token=forward_kl,
    )


def score_length(samples: Sequence[TokenizedSample]) -> np.ndarray:
    """Number of supervised tokens of each sample; NaN without any."""
    counts = np.array([sample.num_targets for sample in samples], dtype=np.float64)
    counts[counts == 0] = np.nan
    return counts


def score_rouge_l(
    model,
    tokenizer,
    samples: Sequence[TokenizedSample],
    *,
    max_new_tokens: int,
    batch_size: int,
    show_progress: bool = True,
    extra_references: Mapping[tuple[int, ...], Sequence[str]] | None = None,
) -> np.ndarray:
    """ROUGE-L F1 of the model's greedy response against each sample's reference.

    A sample without a supervised token or without a prompt token scores NaN.

    Args:
        extra_references: More reference responses per prompt, keyed by the
            prompt's token ids. A sample whose prompt is a key scores the best
            ROUGE-L over those references and its own.
    """
    values = np.full(len(samples), np.nan, dtype=np.float64)
    # A sample needs a prompt token to generate from and a reference to compare with.
    usable = [
        i for i, sample in enumerate(samples) if (sample.first_target or 0) > 0
    ]
    if not usable:
        return values
    responses = generate_token_ids(
        model,
        [samples[i].prompt_ids for i in usable],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress_desc="Scoring rouge_l" if show_progress else None,
    )
    extra_references = extra_references or {}
    for i, response in zip(usable, responses):
        prediction = tokenizer.decode(response, skip_special_tokens=True).strip()
        reference = tokenizer.decode(samples[i].reference_ids, skip_special_tokens=True).strip()
        references = [reference, *extra_references.get(tuple(samples[i].prompt_ids), ())]
        references = [text for text in references if text.strip()]
        values[i] = rouge_l_f1(prediction, references) if references else np.nan
    return values


def references_by_prompt(path, tokenizer) -> dict[tuple[int, ...], list[str]]:
    """Read the reference responses of a JSON Lines file, keyed by prompt tokens.

    Each line has `output` (a string or a list of strings) and either `prompt` or
    `instruction` with an optional `input`, rendered with Axolotl's Alpaca
    template as `type: alpaca` does. The key is the prompt's token ids as the
    tokenizer encodes them, with its special tokens.

    Raises:
        pocl_axolotl.evaluation.EvalDataError: A line is malformed; the message
            names the file and the line number.
    """
    from pocl_axolotl.evaluation import read_eval_file

    table: dict[tuple[int, ...], list[str]] = {}
    for sample in read_eval_file(path):
        key = tuple(tokenizer(sample.prompt)["input_ids"])
        table.setdefault(key, []).extend(sample.references)
    return table
