"""Difficulty fusion, buckets, scoring metrics and the cache."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from datasets import Dataset

from axolotl.utils.dict import DictDefault

from pocl_axolotl.args import parse_pocl_config
from pocl_axolotl.difficulty import bucket_sizes, fuse_and_bucket, rank_metric
from pocl_axolotl.difficulty_file import read_difficulty_file
from pocl_axolotl.preparation import check_schedule_fits, compute_or_load_ranking
from pocl_axolotl.scoring import (
    TokenizedSample,
    references_by_prompt,
    score_length,
    score_lm_loss,
    score_rouge_l,
    score_teacher_kl,
)
from tiny_models import build_llama, build_tokenizer


def test_rank_metric_ties_share_lowest_rank():
    ranks = rank_metric(np.array([0.5, 0.2, 0.5, 0.9]), higher_is_easier=False)
    assert ranks.tolist() == [2, 1, 2, 4]


def test_rank_metric_higher_is_easier():
    ranks = rank_metric(np.array([0.1, 0.9, 0.5]), higher_is_easier=True)
    assert ranks.tolist() == [3, 1, 2]


def test_rrf_hand_computed_three_metrics():
    # lm_loss (lower easier):  ranks 2, 1, 2, 4
    # rouge_l (higher easier): ranks 3, 1, 4, 2
    # length  (lower easier):  ranks 1, 3, 1, 3
    metrics = {
        "lm_loss": np.array([2.0, 1.0, 2.0, 3.0]),
        "rouge_l": np.array([0.2, 0.8, 0.1, 0.5]),
        "length": np.array([5.0, 9.0, 5.0, 9.0]),
    }
    k = 1.0
    expected = [
        1 / (k + 2) + 1 / (k + 3) + 1 / (k + 1),
        1 / (k + 1) + 1 / (k + 1) + 1 / (k + 3),
        1 / (k + 2) + 1 / (k + 4) + 1 / (k + 1),
        1 / (k + 4) + 1 / (k + 2) + 1 / (k + 3),
    ]
    ranking = fuse_and_bucket(metrics, rrf_k=k, num_buckets=2)
    assert ranking.fused_score == pytest.approx(expected)
    # Scores: 1.0833, 1.25, 1.0333, 0.7833, so the order is 1, 0, 2, 3.
    assert ranking.rank.tolist() == [2, 1, 3, 4]
    assert ranking.bucket.tolist() == [0, 0, 1, 1]


def test_rrf_equal_scores_keep_dataset_order():
    metrics = {"lm_loss": np.array([1.0, 1.0, 1.0, 0.5])}
    ranking = fuse_and_bucket(metrics, rrf_k=60, num_buckets=2)
    assert ranking.rank.tolist() == [2, 3, 4, 1]


@pytest.mark.parametrize(
    ("num_samples", "num_buckets", "expected"),
    [(10, 4, [2, 2, 2, 4]), (9, 3, [3, 3, 3]), (7, 1, [7]), (5, 5, [1, 1, 1, 1, 1])],
)
def test_bucket_sizes(num_samples, num_buckets, expected):
    assert bucket_sizes(num_samples, num_buckets) == expected


def test_bucket_sizes_through_fusion():
    ranking = fuse_and_bucket({"length": np.arange(10.0)}, rrf_k=60, num_buckets=4)
    assert np.bincount(ranking.bucket).tolist() == [2, 2, 2, 4]
    assert ranking.bucket.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]


def test_invalid_samples_go_last():
    metrics = {
        "lm_loss": np.array([0.1, np.nan, 0.3, 0.4, 0.5, 0.6, 0.7, 0.2]),
        "rouge_l": np.array([0.9, 0.8, 0.7, np.inf, 0.5, 0.4, 0.3, 0.95]),
    }
    ranking = fuse_and_bucket(metrics, rrf_k=60, num_buckets=3)
    assert ranking.num_invalid == 2
    assert ranking.bucket[1] == 2
    assert ranking.bucket[3] == 2
    assert sorted(ranking.rank[[1, 3]].tolist()) == [7, 8]
    assert np.isnan(ranking.fused_score[[1, 3]]).all()
    assert np.isfinite(ranking.fused_score[ranking.valid]).all()


def test_fewer_samples_than_buckets_raises():
    with pytest.raises(ValueError, match=r"3 samples .* \(4\)"):
        fuse_and_bucket({"length": np.arange(3.0)}, rrf_k=60, num_buckets=4)


def test_masked_sample_scores_nan():
    samples = [TokenizedSample([1, 2, 3], [-100, -100, -100]), TokenizedSample([1, 2, 3], [-100, 2, 3])]
    assert np.isnan(score_length(samples)[0])
    assert score_length(samples)[1] == 2


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = ["the quick brown fox jumps over the lazy dog", "Response: yes no maybe"]
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"), corpus, word_level=True)


def _overfit(model, sequences, steps=150):
    """Train ``model`` to reproduce ``sequences`` (lists of ids) exactly."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    batch = torch.tensor(sequences)
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def _sample(tokenizer, prompt: str, response: str) -> TokenizedSample:
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    return TokenizedSample(
        prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids
    )


def test_rouge_l_exact_reproduction_is_one(tokenizer, tmp_path):
    sample = _sample(tokenizer, "the quick brown fox", "jumps over the lazy dog")
    model = _overfit(build_llama(tmp_path / "model", tokenizer, seed=1), [sample.input_ids])
    values = score_rouge_l(model, tokenizer, [sample], max_new_tokens=10, batch_size=1)
    assert values[0] == pytest.approx(1.0)


def test_rouge_l_empty_output_is_zero(tokenizer, tmp_path):
    sample = _sample(tokenizer, "the quick brown fox", "jumps over the lazy dog")
    prompt = sample.prompt_ids
    # A model trained to end every response at once outputs nothing.
    model = _overfit(
        build_llama(tmp_path / "model", tokenizer, seed=2), [prompt + [tokenizer.eos_token_id]]
    )
    values = score_rouge_l(model, tokenizer, [sample], max_new_tokens=10, batch_size=1)
    assert values[0] == 0.0


def test_lm_loss_matches_model_loss(tokenizer, tmp_path):
    model = build_llama(tmp_path / "model", tokenizer, seed=3)
    samples = [
        _sample(tokenizer, "the quick", "brown fox jumps"),
        _sample(tokenizer, "the lazy dog", "yes"),
    ]
    values = score_lm_loss(model, samples, pad_token_id=tokenizer.pad_token_id, batch_size=2)
    for sample, value in zip(samples, values):
        expected = model(
            input_ids=torch.tensor([sample.input_ids]), labels=torch.tensor([sample.labels])
        ).loss
        assert value == pytest.approx(float(expected), rel=1e-5)


def _tiny_run(tmp_path, tokenizer, **pocl):
    student = tmp_path / "student"
    if not student.exists():
        build_llama(student, tokenizer, seed=4)
    samples = [
        _sample(tokenizer, "the quick brown", "fox"),
        _sample(tokenizer, "the lazy", "dog jumps over"),
        _sample(tokenizer, "Response:", "yes no"),
        _sample(tokenizer, "the fox", "maybe the lazy dog"),
    ]
    dataset = Dataset.from_dict(
        {"input_ids": [s.input_ids for s in samples], "labels": [s.labels for s in samples]}
    )
    cfg = DictDefault(
        {
            "base_model": str(student),
            "tokenizer_config": str(student),
            "dataset_prepared_path": str(tmp_path / "prepared"),
            "is_preprocess": True,
        }
    )
    settings = {"teacher_model": str(student), "num_buckets": 2, "scoring_batch_size": 2,
                "scoring_max_new_tokens": 4, **pocl}
    return cfg, parse_pocl_config(settings), dataset


def _cache_entries(tmp_path):
    root = tmp_path / "prepared" / "pocl_difficulty"
    return sorted(path.name for path in root.iterdir() if path.is_dir())


def test_cache_reused_when_unchanged(tmp_path, tokenizer, caplog):
    caplog.set_level(logging.INFO)
    cfg, pocl, dataset = _tiny_run(tmp_path, tokenizer)
    first = compute_or_load_ranking(cfg, pocl, dataset)
    entries = _cache_entries(tmp_path)
    assert len(entries) == 1

    caplog.clear()
    again = compute_or_load_ranking(cfg, pocl, dataset)
    assert "Reusing cached difficulty scores" in caplog.text
    assert np.array_equal(first.rank, again.rank)
    assert _cache_entries(tmp_path) == entries


def test_cache_fuses_again_for_rrf_k(tmp_path, tokenizer, caplog):
    caplog.set_level(logging.INFO)
    cfg, pocl, dataset = _tiny_run(tmp_path, tokenizer)
    first = compute_or_load_ranking(cfg, pocl, dataset)

    caplog.clear()
    changed = pocl.model_copy(update={"rrf_k": 0.0, "num_buckets": 4})
    ranking = compute_or_load_ranking(cfg, changed, dataset)
    assert "fusing them with rrf_k=0 into 4 buckets" in caplog.text
    expected = fuse_and_bucket(first.metrics, rrf_k=0.0, num_buckets=4)
    assert np.array_equal(ranking.fused_score, expected.fused_score, equal_nan=True)
    assert ranking.bucket.tolist() == expected.bucket.tolist()
    assert len(_cache_entries(tmp_path)) == 1


def test_cache_rescored_for_new_generation(tmp_path, tokenizer, caplog):
    caplog.set_level(logging.INFO)
    cfg, pocl, dataset = _tiny_run(tmp_path, tokenizer)
    compute_or_load_ranking(cfg, pocl, dataset)

    caplog.clear()
    changed = pocl.model_copy(update={"scoring_max_new_tokens": 2})
    compute_or_load_ranking(cfg, changed, dataset)
    assert "Reusing cached difficulty scores" not in caplog.text
    assert len(_cache_entries(tmp_path)) == 2


def test_cache_leaves_no_temporary_folder(tmp_path, tokenizer):
    cfg, pocl, dataset = _tiny_run(tmp_path, tokenizer)
    compute_or_load_ranking(cfg, pocl, dataset)
    root = tmp_path / "prepared" / "pocl_difficulty"
    assert not [path for path in root.iterdir() if path.name.startswith(".")]


def _write_lines(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _no_tokenizer(prompt):
    raise AssertionError("positional and indexed lines need no tokenizer")


def test_difficulty_file_wrong_length_rejected(tmp_path):
    path = _write_lines(tmp_path / "scores.jsonl", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="has 3 values but the training dataset has 4"):
        read_difficulty_file(path, [(1,)] * 4, _no_tokenizer, keeps_order=True)


def test_difficulty_file_positional_needs_order(tmp_path):
    path = _write_lines(tmp_path / "scores.jsonl", [1.0, 2.0])
    with pytest.raises(ValueError, match="shuffle_merged_datasets: false"):
        read_difficulty_file(path, [(1,), (2,)], _no_tokenizer, keeps_order=False)
    kept = read_difficulty_file(path, [(1,), (2,)], _no_tokenizer, keeps_order=True)
    assert kept.tolist() == [1.0, 2.0]


def test_difficulty_file_from_report(tmp_path):
    records = [{"index": 1, "rank": 2}, {"index": 0, "rank": 1}, {"index": 2, "rank": 3}]
    path = _write_lines(tmp_path / "pocl_difficulty.jsonl", records)
    values = read_difficulty_file(path, [(1,)] * 3, _no_tokenizer, keeps_order=False)
    assert values.tolist() == [1.0, 2.0, 3.0]


def test_difficulty_file_malformed_line(tmp_path):
    path = _write_lines(tmp_path / "scores.jsonl", [{"difficulty": 1}, {"score": 2}])
    with pytest.raises(ValueError, match=r"scores.jsonl:2"):
        read_difficulty_file(path, [(1,), (2,)], _no_tokenizer, keeps_order=True)


def test_difficulty_file_mixed_keys_rejected(tmp_path):
    path = _write_lines(tmp_path / "scores.jsonl", [{"difficulty": 1, "index": 0}, 2.0])
    with pytest.raises(ValueError, match="mixes lines"):
        read_difficulty_file(path, [(1,), (2,)], _no_tokenizer, keeps_order=True)


def test_difficulty_file_matched_by_prompt(tmp_path):
    records = [
        {"prompt": "b", "difficulty": 2.0},
        {"prompt": "unused", "difficulty": 9.0},
        {"prompt": "a", "difficulty": 1.0},
        {"prompt": "a", "difficulty": 3.0},
    ]
    path = _write_lines(tmp_path / "scores.jsonl", records)
    values = read_difficulty_file(
        path, [("a",), ("b",), ("a",)], lambda prompt: (prompt,), keeps_order=False
    )
    # Duplicate prompts take their lines in file order.
    assert values.tolist() == [1.0, 2.0, 3.0]


def test_difficulty_file_unmatched_sample_rejected(tmp_path):
    path = _write_lines(tmp_path / "scores.jsonl", [{"prompt": "a", "difficulty": 1.0}])
    with pytest.raises(ValueError, match=r"1 of 2 training samples have no line .* \[1\]"):
        read_difficulty_file(path, [("a",), ("b",)], lambda prompt: (prompt,), keeps_order=True)


def test_difficulty_file_sets_buckets(tmp_path, tokenizer):
    cfg, pocl, dataset = _tiny_run(tmp_path, tokenizer)
    prompts = ["the quick brown", "the lazy", "Response:", "the fox"]
    records = [
        {"prompt": prompt, "difficulty": value} for prompt, value in zip(prompts, [4, 1, 3, 2])
    ]
    path = _write_lines(tmp_path / "scores.jsonl", list(reversed(records)))
    settings = pocl.model_copy(update={"difficulty_file": str(path)})
    ranking = compute_or_load_ranking(cfg, settings, dataset)
    assert ranking.rank.tolist() == [4, 1, 3, 2]
    assert ranking.bucket.tolist() == [1, 0, 1, 0]


def test_teacher_kl_zero_for_same_model(tokenizer, tmp_path):
    model = build_llama(tmp_path / "model", tokenizer, seed=5)
    other = build_llama(tmp_path / "other", tokenizer, seed=6)
    samples = [_sample(tokenizer, "the quick", "brown fox"), _sample(tokenizer, "the", "lazy dog")]
    same = score_teacher_kl(model, model, samples, pad_token_id=tokenizer.pad_token_id, batch_size=2)
    different = score_teacher_kl(
        model, other, samples, pad_token_id=tokenizer.pad_token_id, batch_size=2
    )
    assert same == pytest.approx([0.0, 0.0], abs=1e-6)
    assert (different > 0).all()


def test_length_counts_targets(tokenizer):
    samples = [_sample(tokenizer, "the quick", "brown fox"), _sample(tokenizer, "the", "dog")]
    # Two words and EOS, then one word and EOS.
    assert score_length(samples).tolist() == [3.0, 2.0]


def test_rouge_l_takes_best_reference(tokenizer, tmp_path):
    target = _sample(tokenizer, "the quick brown fox", "jumps over the lazy dog")
    model = _overfit(build_llama(tmp_path / "model", tokenizer, seed=1), [target.input_ids])
    other = _sample(tokenizer, "the quick brown fox", "yes no maybe")
    alone = score_rouge_l(model, tokenizer, [other], max_new_tokens=10, batch_size=1)
    extra = {tuple(other.prompt_ids): ["maybe yes", "jumps over the lazy dog"]}
    best = score_rouge_l(
        model, tokenizer, [other], max_new_tokens=10, batch_size=1, extra_references=extra
    )
    assert alone[0] < 0.5
    assert best[0] == pytest.approx(1.0)


def test_references_keyed_by_prompt(tokenizer, tmp_path):
    path = tmp_path / "references.jsonl"
    records = [
        {"prompt": "the quick brown fox", "output": ["jumps", "sleeps"]},
        {"prompt": "the lazy dog", "output": "yes"},
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    table = references_by_prompt(path, tokenizer)
    assert table[tuple(tokenizer("the quick brown fox")["input_ids"])] == ["jumps", "sleeps"]
    assert table[tuple(tokenizer("the lazy dog")["input_ids"])] == ["yes"]


def test_tiny_dataset_rejected_before_scoring(tmp_path, tokenizer):
    cfg, pocl, dataset = _tiny_run(tmp_path, tokenizer, num_buckets=5)
    with pytest.raises(ValueError, match=r"4 samples, fewer than `pocl.num_buckets` \(5\)"):
        compute_or_load_ranking(cfg, pocl, dataset)
    assert not list((tmp_path / "prepared" / "pocl_difficulty").glob("*/difficulty.json"))


def test_short_run_rejected_before_scoring():
    pocl = parse_pocl_config({"teacher_model": "teacher", "num_buckets": 4})
    with pytest.raises(ValueError, match=r"3 optimizer steps"):
        check_schedule_fits(DictDefault({"max_steps": 3}), pocl, None)
    check_schedule_fits(DictDefault({}), pocl, 40)
