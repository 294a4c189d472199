"""ROUGE-L F1 between a generated response and one or more references.

The score uses Google's ``rouge-score`` package with the Porter stemmer. Its default
tokenizer lowercases the text and keeps only ASCII letters and digits, so text in
other scripts scores 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from rouge_score import rouge_scorer


@functools.cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f1(prediction: str, references: str | Sequence[str]) -> float:
    """Compute the ROUGE-L F1 of a prediction against its best-matching reference.

    Args:
        prediction: Generated text. An empty or whitespace-only prediction scores 0.
        references: One reference string, or several, of which the best score counts.

    Returns:
        The maximum ROUGE-L F1 over the references, in [0, 1].

    Raises:
        ValueError: If ``references`` is an empty sequence.
        TypeError: If the prediction or a reference is not a string.
    """
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str, got {type(prediction).__name__}")
    if isinstance(references, str):
        references = [references]
    if len(references) == 0:
        raise ValueError("references is empty: pass at least one reference string")
    for reference in references:
        if not isinstance(reference, str):
            raise TypeError(
                f"each reference must be a str, got {type(reference).__name__}"
            )

    if not prediction.strip():
        return 0.0
    scorer = _scorer()
    # rouge-score returns the int 0 when either side has no tokens.
    return float(
        max(
            scorer.score(reference, prediction)["rougeL"].fmeasure
            for reference in references
        )
    )
