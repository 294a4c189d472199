"""Tests of pocl_axolotl.losses against a naive full-softmax implementation."""

import logging
import math

import pytest
import torch

from pocl_axolotl.losses import (
    DIVERGENCES,
    IGNORE_INDEX,
    check_vocab_sizes,
    count_supervised_positions,
    kd_loss,
)

LOGGER_NAME = "axolotl.integrations.pocl_axolotl.losses"


# --- Naive reference ------------------------------------------------------------------


def naive_divergence(log_q, log_p, loss, jsd_beta=0.5, skew_alpha=0.1):
    """Compute the per-position divergence from (B, T, V) fp32 log-probs as defined."""
    q = log_q.exp() if loss != "forward_kl" else None
    p = log_p.exp() if loss != "reverse_kl" else None
    if loss == "forward_kl":
        return (p * (log_p - log_q)).sum(-1)
    if loss == "reverse_kl":
        return (q * (log_q - log_p)).sum(-1)
    if loss == "jsd":
        m = jsd_beta * p + (1 - jsd_beta) * q
        log_m = m.log()
        kl_p_m = (p * (log_p - log_m)).sum(-1)
        kl_q_m = (q * (log_q - log_m)).sum(-1)
        return jsd_beta * kl_p_m + (1 - jsd_beta) * kl_q_m
    if loss == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if loss == "skew_forward_kl":
        log_r = (skew_alpha * p + (1 - skew_alpha) * q).log()
        return (p * (log_p - log_r)).sum(-1)
    if loss == "skew_reverse_kl":
        log_r = (skew_alpha * q + (1 - skew_alpha) * p).log()
        return (q * (log_q - log_r)).sum(-1)
    raise AssertionError(loss)


def naive_kd_loss(
    student_logits,
    teacher_logits,
    labels,
    *,
    loss="forward_kl",
    temperature=1.0,
    jsd_beta=0.5,
    skew_alpha=0.1,
    scale_by_temperature_squared=True,
    num_items_in_batch=None,
):
    """Compute the loss with a full fp32 softmax over (B, T, V) and a label mask.

    Shifts the labels, sums over supervised positions, normalises and multiplies by
    temperature**2 as kd_loss is specified to.
    """
    vocab_size = min(student_logits.shape[-1], teacher_logits.shape[-1])
    student = student_logits[:, :-1, :vocab_size].float() / temperature
    teacher = teacher_logits[:, :-1, :vocab_size].detach().float() / temperature
    log_q = torch.log_softmax(student, dim=-1)
    log_p = torch.log_softmax(teacher, dim=-1)
    values = naive_divergence(log_q, log_p, loss, jsd_beta, skew_alpha)
    mask = labels[:, 1:] != IGNORE_INDEX
    total = (values * mask).sum()
    count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
    scale = temperature**2 if scale_by_temperature_squared else 1.0
    return total / count * scale


# --- Helpers --------------------------------------------------------------------------


def make_inputs(batch=2, length=7, vocab=11, dtype=torch.float32, seed=0, spread=3.0):
    """Return random student and teacher logits and labels with a few -100 targets."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=generator) * spread
    teacher = torch.randn(batch, length, vocab, generator=generator) * spread
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[0, 0] = IGNORE_INDEX
    labels[0, 3] = IGNORE_INDEX
    labels[-1, -2] = IGNORE_INDEX
    return student.to(dtype), teacher.to(dtype), labels


def loss_and_grad(function, student, teacher, labels, **options):
    """Return the loss and the gradient with respect to the student logits."""
    student = student.detach().clone().requires_grad_(True)
    value = function(student, teacher, labels, **options)
    value.backward()
    return value.detach(), student.grad


def extra_options(loss):
    """Return the options under which ``loss`` differs from a plain KL."""
    return {"jsd_beta": 0.3} if loss == "jsd" else {"skew_alpha": 0.2}


# --- Properties of each divergence ----------------------------------------------------


@pytest.mark.parametrize("loss", DIVERGENCES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_identical_inputs_give_zero(loss, temperature):
    student, _, labels = make_inputs()
    value, grad = loss_and_grad(
        kd_loss, student, student.clone(), labels, loss=loss, temperature=temperature
    )
    assert abs(value.item()) <= 1e-6
    assert grad.abs().max().item() <= 1e-6


@pytest.mark.parametrize("loss", DIVERGENCES)
@pytest.mark.parametrize("options", [{"jsd_beta": 0.3, "skew_alpha": 0.7}, {}])
def test_identical_inputs_exactly_zero(loss, options):
    # Every divergence is computed from log-prob differences that vanish exactly for
    # identical inputs, so no rounding residue may remain, not even a negative one.
    student, _, labels = make_inputs(vocab=50, spread=8.0)
    value, grad = loss_and_grad(
        kd_loss, student, student.clone(), labels, loss=loss, **options
    )
    assert value.item() == 0.0
    assert torch.count_nonzero(grad).item() == 0


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_random_inputs_never_negative(loss):
    for seed in range(20):
        student, teacher, labels = make_inputs(seed=seed, spread=0.1 + seed * 0.3)
        value = kd_loss(student, teacher, labels, loss=loss, temperature=2.0)
        assert value.item() > 0.0, f"seed {seed}: {value.item()}"


@pytest.mark.parametrize("loss", DIVERGENCES)
@pytest.mark.parametrize("options", [{}, {"jsd_beta": 0.3, "skew_alpha": 0.25}])
def test_matches_naive_value_and_grad(loss, options):
    student, teacher, labels = make_inputs(batch=3, length=9, vocab=37)
    ours, ours_grad = loss_and_grad(
        kd_loss, student, teacher, labels, loss=loss, temperature=2.0, **options
    )
    naive, naive_grad = loss_and_grad(
        naive_kd_loss, student, teacher, labels, loss=loss, temperature=2.0, **options
    )
    assert ours.dtype == torch.float32
    assert ours.dim() == 0
    torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad, naive_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_matches_naive_without_temperature_scaling(loss):
    student, teacher, labels = make_inputs()
    options = {"loss": loss, "temperature": 3.0, "scale_by_temperature_squared": False}
    ours, ours_grad = loss_and_grad(kd_loss, student, teacher, labels, **options)
    naive, naive_grad = loss_and_grad(
        naive_kd_loss, student, teacher, labels, **options
    )
    torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad, naive_grad, rtol=1e-5, atol=1e-7)


def test_temperature_squared_scales_every_divergence():
    student, teacher, labels = make_inputs()
    for loss in DIVERGENCES:
        scaled = kd_loss(student, teacher, labels, loss=loss, temperature=3.0)
        plain = kd_loss(
            student,
            teacher,
            labels,
            loss=loss,
            temperature=3.0,
            scale_by_temperature_squared=False,
        )
        torch.testing.assert_close(scaled, plain * 9.0, msg=loss)


def opposite_one_hot_inputs(vocab=5, length=4):
    """Return logits whose softmaxes put almost all mass on different tokens."""
    student = torch.full((1, length, vocab), -30.0)
    teacher = torch.full((1, length, vocab), -30.0)
    student[..., 0] = 30.0
    teacher[..., 1] = 30.0
    labels = torch.zeros(1, length, dtype=torch.long)
    return student, teacher, labels


def test_jsd_bounded_by_ln2():
    student, teacher, labels = make_inputs(spread=10.0)
    random_value = kd_loss(student, teacher, labels, loss="jsd").item()
    student, teacher, labels = opposite_one_hot_inputs()
    extreme_value = kd_loss(student, teacher, labels, loss="jsd").item()
    assert random_value <= math.log(2)
    assert extreme_value <= math.log(2) + 1e-6
    assert extreme_value == pytest.approx(math.log(2), abs=1e-5)


def test_tvd_bounded_by_one():
    student, teacher, labels = make_inputs(spread=10.0)
    random_value = kd_loss(student, teacher, labels, loss="tvd").item()
    student, teacher, labels = opposite_one_hot_inputs()
    extreme_value = kd_loss(student, teacher, labels, loss="tvd").item()
    assert random_value <= 1.0
    assert extreme_value <= 1.0 + 1e-6
    assert extreme_value == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_endpoints_are_zero(beta):
    student, teacher, labels = make_inputs()
    value, grad = loss_and_grad(
        kd_loss, student, teacher, labels, loss="jsd", jsd_beta=beta
    )
    assert value.item() == 0.0
    assert torch.count_nonzero(grad).item() == 0


def test_jsd_near_endpoints_matches_naive():
    student, teacher, labels = make_inputs()
    for beta in (1e-4, 0.5, 1 - 1e-4):
        ours = kd_loss(student, teacher, labels, loss="jsd", jsd_beta=beta)
        naive = naive_kd_loss(student, teacher, labels, loss="jsd", jsd_beta=beta)
        torch.testing.assert_close(ours, naive, rtol=1e-4, atol=1e-7, msg=str(beta))


@pytest.mark.parametrize(
    ("skew_loss", "plain_loss"),
    [("skew_forward_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")],
)
def test_skew_alpha_zero_is_plain_kl(skew_loss, plain_loss):
    student, teacher, labels = make_inputs()
    skew, skew_grad = loss_and_grad(
        kd_loss, student, teacher, labels, loss=skew_loss, skew_alpha=0.0
    )
    plain, plain_grad = loss_and_grad(
        kd_loss, student, teacher, labels, loss=plain_loss
    )
    torch.testing.assert_close(skew, plain, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(skew_grad, plain_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", ["skew_forward_kl", "skew_reverse_kl"])
def test_skew_alpha_near_one_approaches_zero(loss):
    student, teacher, labels = make_inputs(spread=5.0)
    half = kd_loss(student, teacher, labels, loss=loss, skew_alpha=0.5).item()
    near_one = kd_loss(student, teacher, labels, loss=loss, skew_alpha=0.9999).item()
    naive = naive_kd_loss(student, teacher, labels, loss=loss, skew_alpha=0.9999).item()
    assert near_one < half
    assert near_one < 1e-3
    assert near_one == pytest.approx(naive, rel=1e-3)


# --- Input validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("temperature", math.inf),
        ("temperature", math.nan),
        ("jsd_beta", -0.1),
        ("jsd_beta", 1.1),
        ("jsd_beta", math.nan),
        ("skew_alpha", -0.1),
        ("skew_alpha", 1.0),
        ("chunk_size", 0),
        ("chunk_size", 2.5),
        ("num_items_in_batch", 0),
        ("num_items_in_batch", torch.tensor(-3)),
    ],
)
def test_out_of_range_option_rejected(option, value):
    student, teacher, labels = make_inputs()
    with pytest.raises(ValueError, match=option) as raised:
        kd_loss(student, teacher, labels, **{option: value})
    assert str(float(value) if option == "num_items_in_batch" else value) in str(
        raised.value
    )


def test_unknown_loss_rejected():
    student, teacher, labels = make_inputs()
    with pytest.raises(ValueError, match="loss") as raised:
        kd_loss(student, teacher, labels, loss="kl")
    assert "'kl'" in str(raised.value)
    for name in DIVERGENCES:
        assert name in str(raised.value)


def test_mismatched_shapes_rejected():
    student, teacher, labels = make_inputs(length=7)
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        kd_loss(student, teacher, labels[:, :6])
    with pytest.raises(ValueError, match=r"\(2, 6, 11\)"):
        kd_loss(student, teacher[:, :6], labels)


# --- Masking --------------------------------------------------------------------------


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_ignored_positions_change_nothing(loss):
    student, teacher, labels = make_inputs(**{"length": 8})
    value, grad = loss_and_grad(kd_loss, student, teacher, labels, loss=loss)

    # Position t is unsupervised when labels[:, t + 1] is -100, and so is t = T - 1.
    unsupervised = torch.ones_like(labels, dtype=torch.bool)
    unsupervised[:, :-1] = labels[:, 1:] == IGNORE_INDEX
    garbage_student = student.clone()
    garbage_teacher = teacher.clone()
    garbage_student[unsupervised] = torch.randn(int(unsupervised.sum()), 11) * 100
    garbage_teacher[unsupervised] = math.nan
    garbage_student[0, -1, 0] = math.inf
    garbage_value, garbage_grad = loss_and_grad(
        kd_loss, garbage_student, garbage_teacher, labels, loss=loss
    )

    assert torch.equal(garbage_value, value)
    assert torch.equal(garbage_grad, grad)
    assert torch.count_nonzero(grad[unsupervised]).item() == 0


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_all_masked_batch_gives_zero(loss, caplog):
    student, teacher, labels = make_inputs()
    labels.fill_(IGNORE_INDEX)
    labels[:, 0] = 3  # position 0 is never a target, so nothing is supervised
    student = student.requires_grad_(True)

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        value = kd_loss(student, teacher, labels, loss=loss)
    value.backward()

    warnings = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert value.item() == 0.0
    assert value.dtype == torch.float32
    assert value.requires_grad
    assert torch.count_nonzero(student.grad).item() == 0
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


def test_count_supervised_positions():
    _, _, labels = make_inputs(batch=2, length=7)
    # Targets at indices 1..6 of two rows, minus labels[0, 3] and labels[1, 5].
    assert count_supervised_positions(labels) == 10


@pytest.mark.parametrize("loss", DIVERGENCES)
@pytest.mark.parametrize(
    ("student_columns", "teacher_columns"), [([4], [7]), ([], [2, 7]), ([4, 9], [])]
)
def test_negative_infinity_columns_removed(loss, student_columns, teacher_columns):
    student, teacher, labels = make_inputs(vocab=12)
    student[..., student_columns] = -math.inf
    teacher[..., teacher_columns] = -math.inf
    removed = student_columns + teacher_columns
    keep = [c for c in range(12) if c not in removed]

    value, grad = loss_and_grad(kd_loss, student, teacher, labels, loss=loss)
    naive, naive_grad = loss_and_grad(
        naive_kd_loss, student[..., keep], teacher[..., keep], labels, loss=loss
    )

    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(value, naive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad[..., keep], naive_grad, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(grad[..., removed]).item() == 0


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_negative_infinity_per_position_finite(loss):
    student, teacher, labels = make_inputs(vocab=12)
    generator = torch.Generator().manual_seed(1)
    student[torch.rand(student.shape, generator=generator) < 0.3] = -math.inf
    teacher[torch.rand(teacher.shape, generator=generator) < 0.3] = -math.inf
    student[..., 0] = 1.0  # at least one column stays finite in both
    teacher[..., 0] = 1.0
    masked = torch.isneginf(student) | torch.isneginf(teacher)

    value, grad = loss_and_grad(kd_loss, student, teacher, labels, loss=loss)
    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()
    assert torch.count_nonzero(grad[masked]).item() == 0


# --- Dtypes and extreme temperatures --------------------------------------------------


@pytest.mark.parametrize("loss", DIVERGENCES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(loss, dtype):
    student, teacher, labels = make_inputs(batch=2, length=9, vocab=64, dtype=dtype)
    value, grad = loss_and_grad(
        kd_loss, student, teacher, labels, loss=loss, temperature=2.0
    )
    naive, naive_grad = loss_and_grad(
        naive_kd_loss, student, teacher, labels, loss=loss, temperature=2.0
    )
    assert value.dtype == torch.float32
    assert grad.dtype == dtype
    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()
    # Both upcast the same half-precision values, so only the gradient is rounded.
    torch.testing.assert_close(value, naive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, naive_grad, rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_autocast_keeps_fp32_inside(loss):
    student, teacher, labels = make_inputs(vocab=64)
    value, grad = loss_and_grad(kd_loss, student, teacher, labels, loss=loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value, autocast_grad = loss_and_grad(
            kd_loss, student, teacher, labels, loss=loss
        )
    torch.testing.assert_close(autocast_value, value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(autocast_grad, grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("loss", DIVERGENCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_temperature_finite(loss, dtype):
    student, teacher, labels = make_inputs(vocab=50, dtype=dtype, spread=10.0)
    value, grad = loss_and_grad(
        kd_loss, student, teacher, labels, loss=loss, temperature=0.05
    )
    assert torch.isfinite(value)
    assert value.item() >= 0.0
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "tvd"])
def test_low_temperature_matches_naive(loss):
    student, teacher, labels = make_inputs(vocab=50, spread=10.0)
    options = {"loss": loss, "temperature": 0.05}
    value, grad = loss_and_grad(kd_loss, student, teacher, labels, **options)
    naive, naive_grad = loss_and_grad(
        naive_kd_loss, student, teacher, labels, **options
    )
    torch.testing.assert_close(value, naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, naive_grad, rtol=1e-4, atol=1e-4)


# --- Chunking, padding and accumulation -----------------------------------------------


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_chunked_equals_unchunked(loss):
    student, teacher, labels = make_inputs(batch=3, length=10, vocab=23)
    supervised = count_supervised_positions(labels)
    reference, reference_grad = loss_and_grad(
        kd_loss, student, teacher, labels, loss=loss, chunk_size=10_000
    )
    for chunk_size in (1, 2, 5, supervised - 1, supervised, supervised + 1):
        value, grad = loss_and_grad(
            kd_loss, student, teacher, labels, loss=loss, chunk_size=chunk_size
        )
        torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, reference_grad, rtol=1e-6, atol=1e-8)


def test_non_contiguous_logits_match_contiguous():
    student, teacher, labels = make_inputs()
    value, grad = loss_and_grad(kd_loss, student, teacher, labels, loss="jsd")
    # (B, V, T) storage seen as (B, T, V), as a transposed matmul output would be.
    strided = student.transpose(1, 2).contiguous().transpose(1, 2)
    strided_teacher = teacher.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided.is_contiguous()
    strided = strided.detach().requires_grad_(True)
    strided_value = kd_loss(strided, strided_teacher, labels, loss="jsd")
    strided_value.backward()
    torch.testing.assert_close(strided_value.detach(), value)
    torch.testing.assert_close(strided.grad, grad)


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_no_grad_matches_grad_path(loss):
    student, teacher, labels = make_inputs()
    with_grad, _ = loss_and_grad(kd_loss, student, teacher, labels, loss=loss)
    with torch.no_grad():
        without_grad = kd_loss(student, teacher, labels, loss=loss)
    assert not without_grad.requires_grad
    torch.testing.assert_close(without_grad, with_grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_padding_changes_nothing(loss):
    student, teacher, labels = make_inputs(batch=2, length=6, vocab=13)
    value, grad = loss_and_grad(kd_loss, student, teacher, labels, loss=loss)

    # Two extra -100 positions at the end of each row and one extra pad row.
    padded_student = torch.randn(3, 8, 13) * 5
    padded_teacher = torch.randn(3, 8, 13) * 5
    padded_labels = torch.full((3, 8), IGNORE_INDEX)
    padded_student[:2, :6] = student
    padded_teacher[:2, :6] = teacher
    padded_labels[:2, :6] = labels
    padded_value, padded_grad = loss_and_grad(
        kd_loss, padded_student, padded_teacher, padded_labels, loss=loss
    )

    torch.testing.assert_close(padded_value, value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(padded_grad[:2, :6], grad, rtol=1e-6, atol=1e-8)
    assert torch.count_nonzero(padded_grad[:, 6:]).item() == 0
    assert torch.count_nonzero(padded_grad[2]).item() == 0


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_accumulation_matches_full_batch(loss):
    student, teacher, labels = make_inputs(batch=4, length=6, vocab=13)
    num_items = count_supervised_positions(labels)

    full_batch = student.clone().requires_grad_(True)
    full_loss = kd_loss(
        full_batch, teacher, labels, loss=loss, num_items_in_batch=num_items
    )
    full_loss.backward()

    micro_batches = student.clone().requires_grad_(True)
    accumulated_loss = 0.0
    for row in range(4):
        micro_loss = kd_loss(
            micro_batches[row : row + 1],
            teacher[row : row + 1],
            labels[row : row + 1],
            loss=loss,
            num_items_in_batch=torch.tensor(num_items),
        )
        micro_loss.backward()
        accumulated_loss += micro_loss.item()

    assert accumulated_loss == pytest.approx(full_loss.item(), rel=1e-6)
    torch.testing.assert_close(
        micro_batches.grad, full_batch.grad, rtol=1e-6, atol=1e-8
    )


def test_num_items_in_batch_divides_sum():
    student, teacher, labels = make_inputs()
    local = kd_loss(student, teacher, labels)
    count = count_supervised_positions(labels)
    global_count = kd_loss(student, teacher, labels, num_items_in_batch=4 * count)
    torch.testing.assert_close(global_count * 4, local)


def test_backward_scales_by_incoming_gradient():
    student, teacher, labels = make_inputs()
    _, grad = loss_and_grad(kd_loss, student, teacher, labels)
    leaf = student.clone().requires_grad_(True)
    (kd_loss(leaf, teacher, labels) * 0.25).backward()
    torch.testing.assert_close(leaf.grad, grad * 0.25)


def test_second_backward_raises():
    student, teacher, labels = make_inputs()
    student.requires_grad_(True)
    value = kd_loss(student, teacher, labels)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        value.backward()


def test_teacher_gets_no_gradient():
    student, teacher, labels = make_inputs()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    kd_loss(student, teacher, labels).backward()
    assert teacher.grad is None
    assert student.grad is not None


# --- Vocabulary sizes -----------------------------------------------------------------


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_padded_teacher_vocabulary_gives_zero(loss):
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(1, 3, 152064, generator=generator)
    student = teacher[..., :151936].clone()
    teacher[..., 151936:] = 50.0  # padding columns that must not be compared
    labels = torch.tensor([[0, 5, 7]])
    value, grad = loss_and_grad(kd_loss, student, teacher, labels, loss=loss)
    assert abs(value.item()) <= 1e-6
    assert grad.shape == student.shape
    assert grad.abs().max().item() <= 1e-6


def test_padded_student_columns_get_zero_gradient():
    student, teacher, labels = make_inputs(vocab=20)
    padded_student = torch.cat([student, torch.randn(2, 7, 4)], dim=-1)
    value, grad = loss_and_grad(kd_loss, padded_student, teacher, labels, loss="jsd")
    reference, reference_grad = loss_and_grad(
        kd_loss, student, teacher, labels, loss="jsd"
    )
    torch.testing.assert_close(value, reference)
    torch.testing.assert_close(grad[..., :20], reference_grad)
    assert torch.count_nonzero(grad[..., 20:]).item() == 0


def test_check_vocab_sizes_accepts_padding():
    assert check_vocab_sizes(151936, 152064, 151665) == 151936
    assert check_vocab_sizes(32000, 32000, 32000) == 32000


def test_check_vocab_sizes_rejects_mismatch():
    with pytest.raises(ValueError) as raised:
        check_vocab_sizes(32000, 152064, 151665)
    message = str(raised.value)
    assert "32000" in message
    assert "152064" in message
    assert "151665" in message
