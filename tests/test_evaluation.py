"""Tests of ROUGE-L scoring, batched generation and the ``pocl-axolotl eval`` command.

Models are tiny random Llama models built in a temporary directory, so nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from pocl_axolotl import evaluation  # noqa: E402
from pocl_axolotl.evaluation import EvalDataError, EvalSample  # noqa: E402
from pocl_axolotl.generation import generate_token_ids  # noqa: E402
from pocl_axolotl.rouge import rouge_l_f1  # noqa: E402
from tiny_models import build_llama, build_tokenizer  # noqa: E402

SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

REFERENCES = [
    "the cat sat on the mat",
    "a dog ran to the park",
    "birds sing in the morning",
    "the sun is warm today",
    "we read a good book",
    "rain fell on the roof",
]
RECORDS = [
    {"instruction": "Describe the cat.", "input": "", "output": REFERENCES[0]},
    {"instruction": "Where did the dog go?", "input": "a dog", "output": REFERENCES[1]},
    {"instruction": "When do birds sing?", "output": [REFERENCES[2], REFERENCES[3]]},
    {"instruction": "Tell me about the sun.", "input": "sun", "output": REFERENCES[3]},
    {
        "prompt": "### Instruction:\nWhat did we read?\n\n### Response:\n",
        "output": REFERENCES[4],
    },
    {"instruction": "What fell on the roof?", "input": "", "output": [REFERENCES[5]]},
]


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _sample(*references: str) -> EvalSample:
    return EvalSample(prompt="p", references=references, line_number=1)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.jsonl"
    return _write_jsonl(path, [json.dumps(record) for record in RECORDS])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Word-level model, so sampled responses share words with the references."""
    path = tmp_path_factory.mktemp("word_model")
    corpus = [evaluation.render_alpaca_prompt("x", "y"), *REFERENCES]
    corpus += [record.get("instruction", record.get("prompt")) for record in RECORDS]
    tokenizer = build_tokenizer(path, corpus, word_level=True)
    build_llama(path, tokenizer, seed=0)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [
        tokenizer(text)["input_ids"]
        for text in ["the cat", "a dog ran to the park today", "sun", "we read"]
    ]
    return model, tokenizer, prompts


# ---------------------------------------------------------------------------
# ROUGE-L


def test_rouge_exact_copy_is_100():
    scores = evaluation.score_responses(REFERENCES, [_sample(r) for r in REFERENCES])
    assert scores == pytest.approx([100.0] * len(REFERENCES))


def test_rouge_empty_response_is_0():
    scores = evaluation.score_responses(["", "  \n"], [_sample("a b"), _sample("a b")])
    assert scores == [0.0, 0.0]


def test_rouge_best_reference():
    single = evaluation.score_responses(["dog ran"], [_sample("the cat sat")])
    best = evaluation.score_responses(["dog ran"], [_sample("the cat sat", "dog ran")])
    assert single == [0.0]
    assert best == pytest.approx([100.0])


def test_rouge_stemmer_and_case():
    assert rouge_l_f1("The Cats sat", "the cat sat") == pytest.approx(1.0)


def test_rouge_partial_overlap():
    # LCS "the cat" of 2 tokens: precision 2/2, recall 2/4, F1 2/3.
    assert rouge_l_f1("the cat", "the cat sat down") == pytest.approx(2 / 3)


def test_rouge_no_references_raises():
    with pytest.raises(ValueError, match="references is empty"):
        rouge_l_f1("a", [])


def test_score_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 responses for 1 samples"):
        evaluation.score_responses(["a", "b"], [_sample("a")])


# ---------------------------------------------------------------------------
# Reading data files


def test_alpaca_prompt_with_input():
    expected = (
        "Below is an instruction that describes a task, paired with an input that "
        "provides further context. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nDo X.\n\n### Input:\nsome text\n\n"
        "### Response:\n"
    )
    assert evaluation.render_alpaca_prompt("Do X.", "some text") == expected


def test_alpaca_prompt_without_input():
    expected = (
        "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nDo X.\n\n"
        "### Response:\n"
    )
    assert evaluation.render_alpaca_prompt("Do X.", "") == expected


def test_read_file_fields(data_file):
    samples = evaluation.read_eval_file(data_file)
    assert len(samples) == len(RECORDS)
    assert samples[0].prompt == evaluation.render_alpaca_prompt("Describe the cat.")
    assert samples[1].prompt == evaluation.render_alpaca_prompt(
        "Where did the dog go?", "a dog"
    )
    assert samples[2].references == (REFERENCES[2], REFERENCES[3])
    assert samples[4].prompt == RECORDS[4]["prompt"]
    assert samples[5].references == (REFERENCES[5],)


def test_read_file_skips_blank_lines(tmp_path):
    record = json.dumps({"prompt": "p", "output": "o"})
    path = _write_jsonl(tmp_path / "blank.jsonl", [record, "", "   ", record])
    samples = evaluation.read_eval_file(path)
    assert [sample.line_number for sample in samples] == [1, 4]


MALFORMED_LINES = {
    "invalid_json": ('{"prompt": "p", "output": ', "invalid JSON"),
    "not_object": ('["p", "o"]', "expected a JSON object, got list"),
    "missing_output": ('{"prompt": "p"}', "missing `output`"),
    "output_number": ('{"prompt": "p", "output": 3}', "`output` must be a string"),
    "output_item_number": ('{"prompt": "p", "output": ["a", 3]}', "`output[1]`"),
    "output_empty_list": ('{"prompt": "p", "output": []}', "empty list"),
    "no_prompt_or_instruction": (
        '{"input": "i", "output": "o"}',
        "neither `prompt` nor `instruction`",
    ),
    "prompt_number": ('{"prompt": 1, "output": "o"}', "`prompt` must be"),
    "prompt_empty": ('{"prompt": "", "output": "o"}', "`prompt` must be"),
    "instruction_number": ('{"instruction": 1, "output": "o"}', "`instruction`"),
    "input_number": ('{"instruction": "i", "input": 2, "output": "o"}', "`input`"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED_LINES))
def test_malformed_line_reported(tmp_path, kind):
    bad_line, message = MALFORMED_LINES[kind]
    good_line = json.dumps({"prompt": "p", "output": "o"})
    # The bad line is line 4 because the blank line 2 still counts.
    lines = [good_line, "", good_line, bad_line, good_line]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(EvalDataError) as error:
        evaluation.read_eval_file(path)
    assert f"{path}:4:" in str(error.value)
    assert message in str(error.value)


def test_invalid_utf8_reported(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good_line = b'{"prompt": "p", "output": "o"}\n'
    latin1_line = b'{"prompt": "caf\xe9", "output": "o"}\n'
    path.write_bytes(good_line + latin1_line)
    with pytest.raises(EvalDataError, match=r"latin1\.jsonl:2: invalid UTF-8"):
        evaluation.read_eval_file(path)


def test_empty_file_raises(tmp_path):
    path = _write_jsonl(tmp_path / "empty.jsonl", ["", " "])
    with pytest.raises(EvalDataError, match="contains no samples"):
        evaluation.read_eval_file(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluation.read_eval_file(tmp_path / "absent.jsonl")


@pytest.mark.parametrize(
    "name, samples",
    [("dolly.jsonl", 500), ("sinst_long.jsonl", 1694), ("sinst_short.jsonl", 731)],
)
def test_shared_data_prompt_field(name, samples):
    path = SHARED_DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"shared instruction data not found at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    read = evaluation.read_eval_file(path)
    rendered = [
        evaluation.render_alpaca_prompt(record["instruction"], record["input"])
        for record in records
    ]
    assert len(read) == samples
    assert [sample.prompt for sample in read] == rendered


# ---------------------------------------------------------------------------
# Generation


def _generate(loaded, **kwargs):
    model, tokenizer, prompts = loaded
    settings = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "max_new_tokens": 6,
        "batch_size": 3,
    }
    settings.update(kwargs)
    return generate_token_ids(model, prompts, **settings)


def test_greedy_batched_matches_single(loaded):
    model, tokenizer, prompts = loaded
    batched = _generate(loaded, batch_size=3)
    single = [
        generate_token_ids(
            model,
            [prompt],
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            max_new_tokens=6,
            batch_size=1,
        )[0]
        for prompt in prompts
    ]
    assert batched == single


def test_greedy_ignores_seed(loaded):
    assert _generate(loaded, seed=1) == _generate(loaded, seed=2)


def test_generation_cut_at_eos(loaded):
    # An id outside the vocabulary never ends a response, so this is the full output.
    full = _generate(loaded, eos_token_id=10_000)
    assert all(len(tokens) == 6 for tokens in full)
    stop = full[0][2]
    cut = _generate(loaded, eos_token_id=[10_000, stop])
    for tokens, uncut in zip(cut, full):
        expected = uncut[: uncut.index(stop)] if stop in uncut else uncut
        assert tokens == expected


def test_sampling_same_seed_repeats(loaded):
    first = _generate(loaded, do_sample=True, seed=7)
    second = _generate(loaded, do_sample=True, seed=7)
    assert first == second


def test_sampling_seeds_differ(loaded):
    first = _generate(loaded, do_sample=True, seed=7)
    second = _generate(loaded, do_sample=True, seed=8)
    assert first != second


def test_sampling_keeps_global_rng(loaded):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _generate(loaded, do_sample=True, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_generation_restores_train_mode(loaded):
    model = loaded[0]
    model.train()
    try:
        _generate(loaded)
        assert model.training
    finally:
        model.eval()


def test_generation_progress_bar(loaded, capsys):
    _generate(loaded, progress_desc="tiny prompts")
    progress = capsys.readouterr().err
    assert "tiny prompts" in progress
    assert "4/4" in progress


def test_generation_no_prompts(loaded):
    result = generate_token_ids(
        loaded[0], [], pad_token_id=0, eos_token_id=1, max_new_tokens=1, batch_size=1
    )
    assert result == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"do_sample": True}, "seed is required"),
        ({"do_sample": True, "seed": 1, "temperature": 0.0}, "temperature"),
        ({"do_sample": True, "seed": 1, "top_p": 1.5}, "top_p"),
    ],
)
def test_generation_invalid_settings(loaded, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _generate(loaded, **kwargs)


def test_generation_empty_prompt_raises(loaded):
    model, tokenizer, prompts = loaded
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        generate_token_ids(
            model,
            [prompts[0], []],
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            max_new_tokens=2,
            batch_size=2,
        )


# ---------------------------------------------------------------------------
# evaluate()


def _evaluate(model_path, data_path, **kwargs):
    settings = {"seeds": [1, 2], "max_new_tokens": 8, "batch_size": 4}
    settings["progress"] = False
    settings.update(kwargs)
    return evaluation.evaluate(model_path, [data_path], **settings)


def test_evaluate_same_seed_repeats(model_dir, data_file):
    first = _evaluate(model_dir, data_file)["files"][0]
    second = _evaluate(model_dir, data_file)["files"][0]
    assert first["per_seed"] == second["per_seed"]
    assert first["rouge_l_mean"] > 0


def test_evaluate_seeds_differ(model_dir, data_file):
    result = _evaluate(model_dir, data_file, seeds=[1, 2, 3], save_predictions=True)
    entry = result["files"][0]
    scores = [item["rouge_l"] for item in entry["per_seed"]]
    responses = entry["predictions"][0]["responses"]
    assert len(set(scores)) > 1
    assert len(set(responses)) > 1
    assert entry["rouge_l_std"] > 0


def test_evaluate_mean_and_std(model_dir, data_file):
    entry = _evaluate(model_dir, data_file, seeds=[1, 2, 3])["files"][0]
    scores = [item["rouge_l"] for item in entry["per_seed"]]
    scores = torch.tensor(scores, dtype=torch.float64)
    assert entry["rouge_l_mean"] == pytest.approx(scores.mean().item())
    assert entry["rouge_l_std"] == pytest.approx(scores.std(correction=0).item())


def test_evaluate_predictions_match_scores(model_dir, data_file):
    result = _evaluate(model_dir, data_file, seeds=[1], save_predictions=True)
    entry = result["files"][0]
    samples = evaluation.read_eval_file(data_file)
    responses = [item["responses"][0] for item in entry["predictions"]]
    stored = [item["rouge_l"][0] for item in entry["predictions"]]
    assert [item["line"] for item in entry["predictions"]] == [1, 2, 3, 4, 5, 6]
    assert stored == pytest.approx(evaluation.score_responses(responses, samples))
    assert entry["per_seed"][0]["rouge_l"] == pytest.approx(sum(stored) / len(stored))


def test_evaluate_greedy(model_dir, data_file):
    result = _evaluate(model_dir, data_file, greedy=True)
    entry = result["files"][0]
    assert result["settings"]["decoding"] == "greedy"
    assert result["settings"]["seeds"] is None
    assert entry["per_seed"][0]["seed"] is None
    assert len(entry["per_seed"]) == 1
    assert entry["rouge_l_std"] == 0.0


def test_evaluate_truncation_counted(model_dir, data_file, caplog):
    with caplog.at_level(logging.WARNING, logger="axolotl.integrations.pocl_axolotl.evaluation"):
        result = _evaluate(model_dir, data_file, seeds=[1], max_prompt_tokens=5)
    entry = result["files"][0]
    assert entry["truncated_prompts"] == len(RECORDS)
    assert "6 of 6 prompts are longer than 5 tokens" in caplog.text


def test_evaluate_default_prompt_limit(model_dir, data_file):
    result = _evaluate(model_dir, data_file, seeds=[1])
    assert result["settings"]["max_prompt_tokens"] == 512 - 8
    assert result["files"][0]["truncated_prompts"] == 0


def test_truncate_left_keeps_bos():
    assert evaluation._truncate_left([1, 5, 6, 7, 8], 3, bos_token_id=1) == [1, 7, 8]
    assert evaluation._truncate_left([5, 6, 7, 8], 3, bos_token_id=1) == [6, 7, 8]


def test_evaluate_limit(model_dir, data_file):
    entry = _evaluate(model_dir, data_file, seeds=[1], limit=2)["files"][0]
    assert entry["samples"] == 2


def test_evaluate_repeated_seed_raises(model_dir, data_file):
    with pytest.raises(ValueError, match="seeds must be distinct"):
        _evaluate(model_dir, data_file, seeds=[1, 1])


def test_evaluate_without_pad_token(tmp_path, data_file):
    # The byte-level tokenizer, so both kinds from tiny_models run here.
    tokenizer = build_tokenizer(tmp_path, REFERENCES, with_pad_token=False)
    build_llama(tmp_path, tokenizer)
    entry = _evaluate(tmp_path, data_file, seeds=[1])["files"][0]
    assert entry["samples"] == len(RECORDS)


def test_evaluate_lora_adapter(tmp_path, model_dir, data_file):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(0)
    lora_config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    adapter_dir = tmp_path / "adapter"
    get_peft_model(base, lora_config).save_pretrained(adapter_dir)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(model_dir)

    adapted = _evaluate(adapter_dir, data_file, greedy=True, save_predictions=True)
    plain = _evaluate(model_dir, data_file, greedy=True, save_predictions=True)
    assert adapted["files"][0]["samples"] == len(RECORDS)
    assert adapted["files"][0]["predictions"] != plain["files"][0]["predictions"]


# ---------------------------------------------------------------------------
# Command line


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval")
    evaluation.add_arguments(parser)
    return parser


def test_cli_writes_json_and_table(tmp_path, model_dir, data_file, capsys):
    output = tmp_path / "results.json"
    argv = ["--model", str(model_dir), "--data", str(data_file), "--seeds", "3", "4"]
    argv += ["--max-new-tokens", "4", "--output", str(output), "--save-predictions"]
    args = _eval_parser().parse_args(argv)
    assert args.run(args) == 0

    result = json.loads(output.read_text())
    table = capsys.readouterr().out
    assert result["settings"]["seeds"] == [3, 4]
    assert result["settings"]["std"] == evaluation.STD_KIND
    assert result["files"][0]["file"] == str(data_file)
    assert len(result["files"][0]["predictions"]) == len(RECORDS)
    header = ["file", "samples", "ROUGE-L", "std", "seeds"]
    assert table.splitlines()[0].split() == header
    assert str(data_file) in table.splitlines()[1]
    assert "3,4" in table


def test_cli_default_output_path(tmp_path, data_file):
    model_copy = tmp_path / "model"
    tokenizer = build_tokenizer(model_copy, REFERENCES, word_level=True)
    build_llama(model_copy, tokenizer)
    args = _eval_parser().parse_args(
        ["--model", str(model_copy), "--data", str(data_file), "--greedy"]
        + ["--max-new-tokens", "2"]
    )
    assert args.run(args) == 0
    assert (model_copy / evaluation.RESULTS_FILE_NAME).is_file()


def test_cli_malformed_file_fails(tmp_path, model_dir, caplog):
    lines = ['{"prompt": "p", "output": "o"}', "{oops"]
    bad = _write_jsonl(tmp_path / "bad.jsonl", lines)
    output = tmp_path / "results.json"
    args = _eval_parser().parse_args(
        ["--model", str(model_dir), "--data", str(bad), "--output", str(output)]
    )
    assert args.run(args) == 2
    assert f"{bad}:2:" in caplog.text
    assert not output.exists()


@pytest.mark.skipif(
    importlib.util.find_spec("pocl_axolotl.quickstart") is None,
    reason="pocl_axolotl.cli imports pocl_axolotl.quickstart, which does not exist yet",
)
def test_cli_main_eval(tmp_path, model_dir, data_file, capsys):
    from pocl_axolotl.cli import main

    output = tmp_path / "results.json"
    argv = ["eval", "--model", str(model_dir), "--data", str(data_file), "--greedy"]
    argv += ["--max-new-tokens", "2", "--output", str(output)]
    assert main(argv) == 0
    assert json.loads(output.read_text())["settings"]["decoding"] == "greedy"
    assert "ROUGE-L" in capsys.readouterr().out


def test_evaluate_duplicate_file_raises(model_dir, data_file):
    with pytest.raises(ValueError, match="lists a file twice"):
        evaluation.evaluate(model_dir, [data_file, data_file], greedy=True)


@pytest.mark.parametrize(
    "option",
    [
        ["--batch-size", "0"],
        ["--max-new-tokens", "0"],
        ["--limit", "0"],
        ["--seeds", "-1"],
    ],
)
def test_cli_rejects_invalid_numbers(option, capsys):
    argv = ["--model", "m", "--data", "d.jsonl", *option]
    with pytest.raises(SystemExit) as exit_info:
        _eval_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert "must be at least" in capsys.readouterr().err


def test_cli_repeated_seed_fails(tmp_path, model_dir, data_file, caplog):
    output = tmp_path / "results.json"
    args = _eval_parser().parse_args(
        ["--model", str(model_dir), "--data", str(data_file), "--seeds", "5", "5"]
        + ["--output", str(output)]
    )
    assert args.run(args) == 2
    assert "seeds must be distinct" in caplog.text
    assert not output.exists()


def test_cli_folder_without_model_fails(tmp_path, data_file, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    parser = argparse.ArgumentParser()
    evaluation.add_arguments(parser)
    args = parser.parse_args(["--model", str(empty), "--data", str(data_file), "--greedy"])
    assert args.run(args) == 2
    assert f"{empty} has neither config.json nor adapter_config.json" in caplog.text
