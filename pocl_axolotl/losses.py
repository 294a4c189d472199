"""Knowledge-distillation losses between student and teacher logits.

Shapes: ``B`` batch size, ``T`` sequence length, ``V`` vocabulary size, ``N`` number
of supervised positions flattened over batch and sequence.

Usage::

    loss = kd_loss(student_logits, teacher_logits, labels, loss="jsd", temperature=2.0)
    loss.backward()

At one position, with the KD temperature ``T``, the student distribution is
``q = softmax(z_s / T)`` and the teacher distribution is ``p = softmax(z_t / T)``.
``kd_loss`` sums one of the divergences in ``DIVERGENCES`` over the supervised
positions, divides the sum by ``num_items_in_batch`` (or by the local count of
supervised positions) and multiplies it by ``T**2`` (Hinton's convention, applied to
every divergence alike).

Memory: the loss never materialises fp32 ``(B, T, V)`` tensors. It gathers the
supervised positions in chunks of ``chunk_size`` rows, computes the divergence and
its analytical gradient with respect to the student logits per chunk, and writes the
gradient into a buffer of the student logits' shape and dtype. Backward multiplies
that buffer by the incoming gradient in place. Extra memory beyond the two logits
tensors and that buffer is a few fp32 ``(chunk_size, V)`` tensors.
"""

import functools
import math
from typing import Callable

import torch

try:
    from pocl_axolotl.log import get_logger
except ImportError:  # the divergences are usable without Axolotl installed
    import logging

    get_logger = logging.getLogger

LOG = get_logger(__name__)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DIVERGENCES",
    "IGNORE_INDEX",
    "check_vocab_sizes",
    "count_supervised_positions",
    "kd_loss",
]

IGNORE_INDEX = -100
DIVERGENCES = (
    "forward_kl",
    "reverse_kl",
    "jsd",
    "tvd",
    "skew_forward_kl",
    "skew_reverse_kl",
)

# Supervised positions per chunk. Extra memory grows linearly with it. Measured with
# benchmarks/bench_kd_loss.py on a 2-core CPU with one torch thread, 32 positions took
# 35-73 MiB at V=32000 and 240-350 MiB at V=152064, at most 1/6 of a naive loss. They
# ran at most 1.3 times slower than 8 positions, while 64 to 512 positions ran up to
# 2.1 times slower than 32. 32 positions need 4 times fewer chunks, and kernel
# launches, than 8.
# NOTE: not measured on a GPU, where a larger chunk_size may cut launch overhead.
DEFAULT_CHUNK_SIZE = 32

# Log-probability written into columns that are -inf in either model. It is finite,
# so the difference of two masked log-probs is exactly 0 and a zero probability times
# it is 0, not NaN. Its exp() underflows to exactly 0.
_MASKED_LOG_PROB = -1e30

# A divergence function maps (N, V) student and teacher log-probs and ``with_grad``
# to (N,) values and, if requested, their (N, V) gradient with respect to z_s / T.
_Divergence = Callable[
    [torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]
]

_no_supervised_batches = 0


# --- Divergences ----------------------------------------------------------------------
#
# Each takes fp32 (N, V) log-probs of the student (log q) and the teacher (log p) and
# returns the (N,) per-position values. With ``with_grad`` it also returns the (N, V)
# gradient of those values with respect to the student's tempered logits z_s / T,
# derived by hand: it shares intermediates with the values and is exactly 0 for
# identical inputs. Every difference of log-probs is exactly 0 for identical inputs,
# so the values are too.


def _log_softmax_backward(grad_log_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Map a gradient with respect to log q to one with respect to the logits.

    Args:
        grad_log_q: (N, V) gradient with respect to the student log-probs. It is
            overwritten with the result.
        q: (N, V) student probabilities.

    Returns:
        (N, V) ``grad_log_q - q * grad_log_q.sum(-1)``.
    """
    row_sums = grad_log_q.sum(-1, keepdim=True)
    return grad_log_q.addcmul_(q, row_sums, value=-1.0)


def _row_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Compute sum(x * y, -1) of two (N, V) tensors."""
    return torch.linalg.vecdot(x, y)


def _log_mixture(
    log_a: torch.Tensor, log_b: torch.Tensor, weight_b: float
) -> torch.Tensor:
    """Compute log((1 - w) a + w b) from log a and log b, with w = ``weight_b``.

    Where ``log_a == log_b`` the result is exactly ``log_a``, which makes every
    divergence exactly 0 for identical distributions.

    Args:
        log_a: (N, V) log-probs of the first distribution.
        log_b: (N, V) log-probs of the second distribution.
        weight_b: Mixture weight of the second distribution, in [0, 1].

    Returns:
        (N, V) log-probs of the mixture.
    """
    if weight_b == 0.0:
        return log_a
    if weight_b == 1.0:
        return log_b
    mixture = torch.logaddexp(
        log_a + math.log1p(-weight_b), log_b + math.log(weight_b)
    )
    return torch.where(log_a == log_b, log_a, mixture, out=mixture)


def _forward_kl(
    log_q: torch.Tensor, log_p: torch.Tensor, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute KL(p || q) = sum p (log p - log q) per position."""
    p = log_p.exp()
    values = _row_dot(p, log_p - log_q)
    if not with_grad:
        return values, None
    return values, log_q.exp().sub_(p)


def _reverse_kl(
    log_q: torch.Tensor, log_p: torch.Tensor, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute KL(q || p) = sum q (log q - log p) per position."""
    q = log_q.exp()
    log_ratio = log_q - log_p
    values = _row_dot(q, log_ratio)
    if not with_grad:
        return values, None
    # The gradient is q (log q - log p - KL(q || p)).
    return values, log_ratio.sub_(values.unsqueeze(-1)).mul_(q)


def _jsd(
    log_q: torch.Tensor, log_p: torch.Tensor, with_grad: bool, beta: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q."""
    if beta in (0.0, 1.0):
        # m equals q or p, and the KL term with the nonzero weight is KL(x || x).
        values = log_q.new_zeros(log_q.shape[0])
        return values, torch.zeros_like(log_q) if with_grad else None

    log_m = _log_mixture(log_p, log_q, 1.0 - beta)
    q = log_q.exp()
    student_log_ratio = log_q - log_m
    student_term = _row_dot(q, student_log_ratio)
    teacher_term = _row_dot(log_p.exp(), torch.sub(log_p, log_m, out=log_m))
    values = teacher_term.mul_(beta).add_(student_term, alpha=1.0 - beta)
    if not with_grad:
        return values, None

    # The derivative with respect to q_k is (1 - beta) (log q_k - log m_k), because
    # the terms that come from m cancel: beta p + (1 - beta) q = m. Through the
    # log-softmax, the gradient is (1 - beta) q (log q - log m - KL(q || m)).
    grad = student_log_ratio.sub_(student_term.unsqueeze(-1)).mul_(q)
    return values, grad.mul_(1.0 - beta)


def _tvd(
    log_q: torch.Tensor, log_p: torch.Tensor, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute the total variation distance 1/2 sum |q - p| per position."""
    q = log_q.exp()
    difference = q - log_p.exp()
    values = torch.linalg.vector_norm(difference, ord=1, dim=-1).mul_(0.5)
    if not with_grad:
        return values, None
    # sign(0) = 0 is the subgradient that autograd uses for abs at 0.
    grad_log_q = difference.sign_().mul_(q).mul_(0.5)
    return values, _log_softmax_backward(grad_log_q, q)


def _skew_forward_kl(
    log_q: torch.Tensor, log_p: torch.Tensor, with_grad: bool, alpha: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute KL(p || r) with r = alpha p + (1 - alpha) q per position."""
    log_r = _log_mixture(log_p, log_q, 1.0 - alpha)
    teacher_log_ratio = log_p - log_r
    values = _row_dot(log_p.exp(), teacher_log_ratio)
    if not with_grad:
        return values, None

    # d/d(log q) of KL(p || r) is -(1 - alpha) q p / r. Adding (1 - alpha) q, which
    # the log-softmax backward removes, makes it exactly 0 where p = r = q.
    q = log_q.exp()
    grad_log_q = teacher_log_ratio.add_(log_q).exp_().neg_().add_(q)
    return values, _log_softmax_backward(grad_log_q, q).mul_(1.0 - alpha)


def _skew_reverse_kl(
    log_q: torch.Tensor, log_p: torch.Tensor, with_grad: bool, alpha: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute KL(q || r) with r = alpha q + (1 - alpha) p per position."""
    log_r = _log_mixture(log_q, log_p, 1.0 - alpha)
    q = log_q.exp()
    student_log_ratio = log_q - log_r
    values = _row_dot(q, student_log_ratio)
    if not with_grad:
        return values, None

    # d/d(log q) of KL(q || r) is q (log q - log r) + q - alpha q^2 / r. Adding
    # (alpha - 1) q, which the log-softmax backward removes, makes it exactly 0
    # where q = r.
    squared_over_mixture = (student_log_ratio + log_q).exp_()
    grad_log_q = student_log_ratio.mul_(q)
    grad_log_q.add_(squared_over_mixture.neg_().add_(q), alpha=alpha)
    return values, _log_softmax_backward(grad_log_q, q)


_DIVERGENCE_FUNCTIONS = {
    "forward_kl": _forward_kl,
    "reverse_kl": _reverse_kl,
    "jsd": _jsd,
    "tvd": _tvd,
    "skew_forward_kl": _skew_forward_kl,
    "skew_reverse_kl": _skew_reverse_kl,
}


def _bind_divergence(loss: str, jsd_beta: float, skew_alpha: float) -> _Divergence:
    """Return the divergence function of ``loss`` with its mixture weight bound."""
    function = _DIVERGENCE_FUNCTIONS[loss]
    if loss == "jsd":
        return functools.partial(function, beta=jsd_beta)
    if loss.startswith("skew_"):
        return functools.partial(function, alpha=skew_alpha)
    return function


# --- Shared reducer -------------------------------------------------------------------


def _tempered_log_probs(
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    temperature: float,
    mask_negative_infinity: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute fp32 log-softmax of both models' tempered logits.

    Args:
        student_rows: (N, V) gathered student logits, any float dtype. Overwritten
            when it is fp32.
        teacher_rows: (N, V) gathered teacher logits, any float dtype. Overwritten
            when it is fp32.
        temperature: KD temperature, > 0.
        mask_negative_infinity: Whether to remove the columns that are -inf in
            either model from both distributions. Without it, such columns make
            the divergence NaN.

    Returns:
        (N, V) fp32 student and teacher log-probs. Removed columns contain
        ``_MASKED_LOG_PROB`` in both.
    """
    student = student_rows.float()
    teacher = teacher_rows.float()
    if temperature != 1.0:
        student.div_(temperature)
        teacher.div_(temperature)
    if not mask_negative_infinity:
        return torch.log_softmax(student, dim=-1), torch.log_softmax(teacher, dim=-1)

    masked = torch.isneginf(student).logical_or_(torch.isneginf(teacher))
    student.masked_fill_(masked, -math.inf)
    teacher.masked_fill_(masked, -math.inf)
    log_q = torch.log_softmax(student, dim=-1).masked_fill_(masked, _MASKED_LOG_PROB)
    log_p = torch.log_softmax(teacher, dim=-1).masked_fill_(masked, _MASKED_LOG_PROB)
    return log_q, log_p


def _sum_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    batch_index: torch.Tensor,
    time_index: torch.Tensor,
    divergence: _Divergence,
    temperature: float,
    chunk_size: int,
    grad_buffer: torch.Tensor | None = None,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """Sum a divergence over the given positions, chunk by chunk.

    Args:
        student_logits: (B, T, V) student logits, already cut to the shared columns.
        teacher_logits: (B, T, V) teacher logits, already cut to the shared columns.
        batch_index: (N,) batch index of each supervised position.
        time_index: (N,) sequence index of each supervised position.
        divergence: Divergence function with its mixture weight bound.
        temperature: KD temperature, > 0.
        chunk_size: Number of positions processed at once.
        grad_buffer: (B, T, V) view into which the gradient of ``grad_scale`` times
            the sum with respect to ``student_logits`` is written, at the given
            positions only. Without it, no gradient is computed.
        grad_scale: Factor applied to the gradient written into ``grad_buffer``.

    Returns:
        0-d fp32 sum of the per-position divergence.
    """
    pass_arguments = {
        "student_logits": student_logits,
        "teacher_logits": teacher_logits,
        "batch_index": batch_index,
        "time_index": time_index,
        "divergence": divergence,
        "temperature": temperature,
        "chunk_size": chunk_size,
        "grad_buffer": grad_buffer,
        "grad_scale": grad_scale,
    }
    # Logits rarely contain -inf, so the first pass skips the masking and records the
    # lowest logit instead. Checking it once at the end, rather than per chunk,
    # avoids a device synchronisation per chunk on a GPU. The second pass overwrites
    # every value and gradient of the first.
    # Autocast would run some of the fp32 operations in half precision.
    with torch.autocast(student_logits.device.type, enabled=False):
        total, lowest_logit = _sum_divergence_pass(
            **pass_arguments, mask_negative_infinity=False
        )
        if lowest_logit.item() == -math.inf:
            total, _ = _sum_divergence_pass(
                **pass_arguments, mask_negative_infinity=True
            )
    return total


def _sum_divergence_pass(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    batch_index: torch.Tensor,
    time_index: torch.Tensor,
    divergence: _Divergence,
    temperature: float,
    chunk_size: int,
    grad_buffer: torch.Tensor | None,
    grad_scale: float,
    mask_negative_infinity: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one pass of ``_sum_divergence`` and also return the lowest logit seen."""
    device = student_logits.device
    total = torch.zeros((), dtype=torch.float32, device=device)
    lowest_logit = torch.full((), math.inf, device=device)
    with_grad = grad_buffer is not None
    for start in range(0, batch_index.numel(), chunk_size):
        rows = (
            batch_index[start : start + chunk_size],
            time_index[start : start + chunk_size],
        )
        student_rows = student_logits[rows]
        teacher_rows = teacher_logits[rows]
        if not mask_negative_infinity:
            lowest_logit = torch.minimum(lowest_logit, student_rows.amin())
            lowest_logit = torch.minimum(lowest_logit, teacher_rows.amin())

        log_q, log_p = _tempered_log_probs(
            student_rows, teacher_rows, temperature, mask_negative_infinity
        )
        del student_rows, teacher_rows
        values, grad = divergence(log_q, log_p, with_grad)
        total += values.sum()
        if with_grad:
            # grad is with respect to z_s / T, so the 1/T of the chain rule is added.
            grad.mul_(grad_scale / temperature)
            grad_buffer[rows] = grad.to(grad_buffer.dtype)
    return total, lowest_logit


class _ChunkedKDLoss(torch.autograd.Function):
    """Chunked KD loss whose gradient is computed during the forward pass."""

    @staticmethod
    def forward(
        ctx,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        batch_index: torch.Tensor,
        time_index: torch.Tensor,
        divergence: _Divergence,
        temperature: float,
        scale: float,
        chunk_size: int,
    ) -> torch.Tensor:
        shared_vocab_size = teacher_logits.shape[-1]
        grad_buffer = torch.zeros_like(student_logits)
        total = _sum_divergence(
            student_logits[..., :shared_vocab_size],
            teacher_logits,
            batch_index,
            time_index,
            divergence,
            temperature,
            chunk_size,
            grad_buffer=grad_buffer[..., :shared_vocab_size],
            grad_scale=scale,
        )
        ctx.grad_buffer = grad_buffer
        return total * scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_buffer = ctx.grad_buffer
        if grad_buffer is None:
            raise RuntimeError(
                "kd_loss supports one backward pass per forward pass because backward "
                "scales its stored gradient in place. Call kd_loss again before a "
                "second backward."
            )
        # Scaling in place and releasing the buffer keeps one gradient-sized tensor.
        ctx.grad_buffer = None
        grad_buffer.mul_(grad_output.to(grad_buffer.dtype))
        return grad_buffer, None, None, None, None, None, None, None


# --- Public API -----------------------------------------------------------------------


def count_supervised_positions(labels: torch.Tensor) -> int:
    """Count the positions whose next-token label is not ``IGNORE_INDEX``.

    Args:
        labels: (B, T) unshifted labels in the Hugging Face convention.

    Returns:
        Number of positions t < T - 1 with ``labels[:, t + 1] != IGNORE_INDEX``.
    """
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def check_vocab_sizes(
    student_vocab_size: int, teacher_vocab_size: int, tokenizer_vocab_size: int
) -> int:
    """Check that the two logit widths differ only by padding columns.

    Models often pad their embedding matrix beyond the tokenizer's vocabulary, for
    example Qwen2.5 to 151936 or 152064 columns for 151665 tokens. ``kd_loss`` then
    compares the first ``min(student_vocab_size, teacher_vocab_size)`` columns.

    Args:
        student_vocab_size: Number of columns of the student logits.
        teacher_vocab_size: Number of columns of the teacher logits.
        tokenizer_vocab_size: Number of tokens of the shared tokenizer.

    Returns:
        The shared vocabulary size, ``min(student_vocab_size, teacher_vocab_size)``.

    Raises:
        ValueError: If the shared size is smaller than the tokenizer's vocabulary.
    """
    shared_vocab_size = min(student_vocab_size, teacher_vocab_size)
    if shared_vocab_size < tokenizer_vocab_size:
        raise ValueError(
            f"Student vocabulary size {student_vocab_size} and teacher vocabulary size "
            f"{teacher_vocab_size} differ by more than padding: the smaller one is "
            f"less than the tokenizer's {tokenizer_vocab_size} tokens. Use a student "
            "and a teacher that share the tokenizer."
        )
    return shared_vocab_size


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss: str = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
    scale_by_temperature_squared: bool = True,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Compute the distillation loss between student and teacher logits.

    Position t's logits predict ``labels[:, t + 1]``. Only positions whose target is
    not ``IGNORE_INDEX`` are read, so other positions contribute nothing to the loss
    or the gradient, whatever their logits. When the vocabulary sizes differ, the
    first ``min(V_s, V_t)`` columns are compared and the student's extra columns get
    zero gradient. Columns that are -inf in either model are removed from both
    distributions at that position.

    Args:
        student_logits: (B, T, V_s) student logits, any float dtype.
        teacher_logits: (B, T, V_t) teacher logits, any float dtype. No gradient
            flows into them.
        labels: (B, T) unshifted labels, ``IGNORE_INDEX`` where there is no target.
        loss: Divergence, one of ``DIVERGENCES``.
        temperature: KD temperature applied to both models' logits, > 0.
        jsd_beta: Teacher weight beta of the JSD mixture, in [0, 1].
        skew_alpha: Weight alpha of the skewed distribution in the skew KL mixture,
            in [0, 1).
        scale_by_temperature_squared: Whether to multiply the loss by
            ``temperature**2``.
        num_items_in_batch: Number of supervised tokens over the whole
            gradient-accumulation window, as Transformers passes it to
            ``compute_loss``. Defaults to the local count of supervised positions.
        chunk_size: Number of supervised positions processed at once. Extra memory
            grows linearly with it.

    Returns:
        0-d fp32 loss: the divergence summed over supervised positions, divided by
        ``num_items_in_batch`` or the local count, times ``temperature**2`` when
        ``scale_by_temperature_squared``. A batch without supervised positions
        returns 0, connected to the graph of ``student_logits`` with zero gradient.
        The loss supports one backward pass, because backward scales the gradient
        stored during the forward pass in place.

    Raises:
        ValueError: If an option is out of range, ``loss`` is unknown, or the shapes
            of the logits and labels disagree.
    """
    _validate_options(loss, temperature, jsd_beta, skew_alpha, chunk_size)
    _validate_shapes(student_logits, teacher_logits, labels)

    supervised = torch.zeros_like(labels, dtype=torch.bool)
    supervised[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    batch_index, time_index = supervised.nonzero(as_tuple=True)
    if batch_index.numel() == 0:
        return _zero_loss(student_logits)

    normaliser = batch_index.numel()
    if num_items_in_batch is not None:
        normaliser = _validate_num_items(num_items_in_batch)
    scale = (temperature**2 if scale_by_temperature_squared else 1.0) / normaliser

    divergence = _bind_divergence(loss, jsd_beta, skew_alpha)
    shared_vocab_size = min(student_logits.shape[-1], teacher_logits.shape[-1])
    teacher_logits = teacher_logits.detach()[..., :shared_vocab_size]

    if torch.is_grad_enabled() and student_logits.requires_grad:
        return _ChunkedKDLoss.apply(
            student_logits,
            teacher_logits,
            batch_index,
            time_index,
            divergence,
            temperature,
            scale,
            chunk_size,
        )
    total = _sum_divergence(
        student_logits[..., :shared_vocab_size],
        teacher_logits,
        batch_index,
        time_index,
        divergence,
        temperature,
        chunk_size,
    )
    return total * scale


# --- Validation -----------------------------------------------------------------------


def _validate_options(
    loss: str, temperature: float, jsd_beta: float, skew_alpha: float, chunk_size: int
) -> None:
    if loss not in DIVERGENCES:
        raise ValueError(
            f"Invalid loss {loss!r}: expected one of {', '.join(DIVERGENCES)}."
        )
    if not (0.0 < temperature < math.inf):
        raise ValueError(
            f"Invalid temperature {temperature!r}: expected a finite value > 0."
        )
    if not (0.0 <= jsd_beta <= 1.0):
        raise ValueError(f"Invalid jsd_beta {jsd_beta!r}: expected a value in [0, 1].")
    if not (0.0 <= skew_alpha < 1.0):
        raise ValueError(
            f"Invalid skew_alpha {skew_alpha!r}: expected a value in [0, 1)."
        )
    is_integer = isinstance(chunk_size, int) and not isinstance(chunk_size, bool)
    if not is_integer or chunk_size < 1:
        raise ValueError(
            f"Invalid chunk_size {chunk_size!r}: expected an integer >= 1."
        )


def _validate_shapes(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
) -> None:
    if student_logits.dim() != 3 or teacher_logits.dim() != 3 or labels.dim() != 2:
        raise ValueError(
            "Expected student and teacher logits of shape (B, T, V) and labels of "
            f"shape (B, T), got {tuple(student_logits.shape)}, "
            f"{tuple(teacher_logits.shape)} and {tuple(labels.shape)}."
        )
    batch_and_length = labels.shape
    if (
        student_logits.shape[:2] != batch_and_length
        or teacher_logits.shape[:2] != batch_and_length
    ):
        raise ValueError(
            "Student logits, teacher logits and labels must agree in (B, T), got "
            f"{tuple(student_logits.shape)}, {tuple(teacher_logits.shape)} and "
            f"{tuple(labels.shape)}."
        )


def _validate_num_items(num_items_in_batch: int | torch.Tensor) -> float:
    # float() of a CUDA tensor synchronises, as nonzero() in kd_loss already has.
    count = float(num_items_in_batch)
    if not (0.0 < count < math.inf):
        raise ValueError(
            f"Invalid num_items_in_batch {count!r}: expected the number of supervised "
            "tokens in the gradient-accumulation window, > 0."
        )
    return count


def _zero_loss(student_logits: torch.Tensor) -> torch.Tensor:
    """Return a 0-d fp32 zero that backpropagates a zero gradient into the logits."""
    global _no_supervised_batches
    _no_supervised_batches += 1
    LOG.warning(
        "kd_loss got a batch without supervised positions (every target label is "
        "%d) and returns 0. %d such batches so far.",
        IGNORE_INDEX,
        _no_supervised_batches,
    )
    # The sum of an empty slice is 0 and stays 0 even when the logits contain NaN.
    return student_logits[:0].float().sum()
