"""Tests of ``pocl-axolotl quickstart``: data, tokenizer, models, configs and run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from pocl_axolotl import quickstart
from pocl_axolotl.args import parse_pocl_config
from pocl_axolotl.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# Built-in dataset
# --------------------------------------------------------------------------


def _item_count(record: dict) -> int:
    return len(record["input"].split())


def test_builtin_dataset_is_deterministic():
    first = quickstart.generate_builtin_dataset(100, seed=3)
    second = quickstart.generate_builtin_dataset(100, seed=3)
    assert first == second


def test_builtin_dataset_seeds_differ():
    first = quickstart.generate_builtin_dataset(100, seed=3)
    second = quickstart.generate_builtin_dataset(100, seed=4)
    assert first != second


def test_builtin_dataset_fields_and_types():
    records = quickstart.generate_builtin_dataset(37, seed=0)
    assert len(records) == 37
    for record in records:
        assert set(record) == {"instruction", "input", "output", "level"}
        assert isinstance(record["instruction"], str)
        assert isinstance(record["input"], str)
        assert isinstance(record["output"], str)
        assert record["output"].strip()
        assert isinstance(record["level"], int)
        assert 0 <= record["level"] < len(quickstart.LEVEL_ITEM_RANGES)


def test_builtin_levels_and_tasks_balanced():
    records = quickstart.generate_builtin_dataset(160, seed=0)
    levels = [record["level"] for record in records]
    for level in range(4):
        assert levels.count(level) == 40

    instructions = [record["instruction"] for record in records]
    for instruction in quickstart.BUILTIN_TASKS.values():
        assert instructions.count(instruction) == 40


def test_builtin_responses_solve_tasks():
    tasks = {text: name for name, text in quickstart.BUILTIN_TASKS.items()}
    for record in quickstart.generate_builtin_dataset(200, seed=1):
        items = record["input"].split()
        task = tasks[record["instruction"]]
        if task == "repeat":
            assert record["output"] == record["input"]
        elif task == "reverse":
            assert record["output"].split() == items[::-1]
        elif task == "sort":
            assert record["output"].split() == [str(n) for n in sorted(map(int, items))]
        else:
            assert record["output"] == str(len(items))


def test_builtin_item_counts_follow_level():
    for record in quickstart.generate_builtin_dataset(200, seed=2):
        low, high = quickstart.LEVEL_ITEM_RANGES[record["level"]]
        assert low <= _item_count(record) <= high


def test_builtin_levels_grow_longer():
    records = quickstart.generate_builtin_dataset(400, seed=0)
    count_instruction = quickstart.BUILTIN_TASKS["count"]
    mean_input = []
    mean_output = []
    for level in range(4):
        at_level = [record for record in records if record["level"] == level]
        mean_input.append(sum(map(_item_count, at_level)) / len(at_level))
        long_responses = [
            len(record["output"].split())
            for record in at_level
            if record["instruction"] != count_instruction
        ]
        mean_output.append(sum(long_responses) / len(long_responses))
    assert mean_input == sorted(mean_input)
    assert len(set(mean_input)) == 4
    assert mean_output == sorted(mean_output)
    assert len(set(mean_output)) == 4


def test_builtin_file_not_ordered_by_level():
    levels = [record["level"] for record in quickstart.generate_builtin_dataset(80, 0)]
    assert levels != sorted(levels)
    assert levels != [index % 4 for index in range(80)]


def test_builtin_rejects_zero_samples():
    with pytest.raises(ValueError, match="at least 1"):
        quickstart.generate_builtin_dataset(0, seed=0)


# --------------------------------------------------------------------------
# JSON Lines input
# --------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_round_trip(tmp_path):
    records = [{"instruction": "Translate", "input": "café", "output": "Kaffee"}]
    path = quickstart.write_jsonl(tmp_path / "nested" / "data.jsonl", records)
    assert path.is_file()
    assert quickstart.read_jsonl(path) == records
    assert "café" in path.read_text(encoding="utf-8")


def test_load_alpaca_missing_and_null_input(tmp_path):
    path = _write_lines(
        tmp_path / "alpaca.jsonl",
        [
            json.dumps({"instruction": "Say hi.", "output": "hi"}),
            json.dumps({"instruction": "Say hi.", "input": None, "output": "hi"}),
            json.dumps({"instruction": "Say hi.", "input": "", "output": "hi"}),
        ],
    )
    records = quickstart.load_instruction_jsonl(path)
    assert len(records) == 3
    for record in records:
        assert record == {"instruction": "Say hi.", "input": "", "output": "hi"}


def test_load_output_list_uses_first(tmp_path):
    line = {"instruction": "Name a colour.", "input": "x", "output": ["red", "blue"]}
    path = _write_lines(tmp_path / "refs.jsonl", [json.dumps(line)])
    (record,) = quickstart.load_instruction_jsonl(path)
    assert record["output"] == "red"


def test_load_dolly_context_response(tmp_path):
    line = {
        "instruction": "Summarise.",
        "context": "A long text.",
        "response": "Short.",
        "category": "summarization",
    }
    path = _write_lines(tmp_path / "dolly.jsonl", [json.dumps(line)])
    (record,) = quickstart.load_instruction_jsonl(path)
    assert record == {
        "instruction": "Summarise.",
        "input": "A long text.",
        "output": "Short.",
    }


def test_load_keeps_int_level_only(tmp_path):
    path = _write_lines(
        tmp_path / "levels.jsonl",
        [
            json.dumps({"instruction": "a", "output": "b", "level": 2}),
            json.dumps({"instruction": "a", "output": "b", "level": "hard"}),
            json.dumps({"instruction": "a", "output": "b", "level": True}),
        ],
    )
    first, second, third = quickstart.load_instruction_jsonl(path)
    assert first["level"] == 2
    assert "level" not in second
    assert "level" not in third


def test_load_skips_blank_lines(tmp_path):
    good = json.dumps({"instruction": "a", "output": "b"})
    path = _write_lines(tmp_path / "blank.jsonl", [good, "", "   ", good, "[1]"])
    with pytest.raises(quickstart.DataFormatError) as error:
        quickstart.load_instruction_jsonl(path)
    assert str(error.value).startswith(f"{path}:5:")

    path = _write_lines(tmp_path / "blank_ok.jsonl", [good, "", good])
    assert len(quickstart.load_instruction_jsonl(path)) == 2


MALFORMED_LINES = [
    ("{not json", "invalid JSON"),
    ('["a", "b"]', "expected a JSON object, got list"),
    ('{"output": "b"}', "`instruction` is missing"),
    ('{"instruction": "  ", "output": "b"}', "`instruction` is missing"),
    ('{"instruction": "a"}', "`output` is missing"),
    ('{"instruction": "a", "output": 3}', "`output` must be a string"),
    ('{"instruction": "a", "output": []}', "`output` is an empty list"),
    ('{"instruction": "a", "output": ["x", 1]}', "`output` must be a string"),
    ('{"instruction": "a", "output": " "}', "`output` is empty"),
    ('{"instruction": "a", "input": 5, "output": "b"}', "`input` must be a string"),
]


@pytest.mark.parametrize(("line", "problem"), MALFORMED_LINES)
def test_load_rejects_malformed_line(tmp_path, line, problem):
    good = json.dumps({"instruction": "a", "output": "b"})
    path = _write_lines(tmp_path / "bad.jsonl", [good, good, line])
    with pytest.raises(quickstart.DataFormatError) as error:
        quickstart.load_instruction_jsonl(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: ")
    assert problem in message


def test_load_rejects_empty_file(tmp_path):
    path = _write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(quickstart.DataFormatError, match="no samples"):
        quickstart.load_instruction_jsonl(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        quickstart.load_instruction_jsonl(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin_records():
    return quickstart.generate_builtin_dataset(64, seed=0)


@pytest.fixture(scope="module")
def tokenizer_texts(builtin_records):
    texts = quickstart.training_texts(builtin_records)
    return texts + quickstart.alpaca_template_texts()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tokenizer_texts):
    path = tmp_path_factory.mktemp("tokenizer")
    quickstart.build_tokenizer(tokenizer_texts, path, vocab_size=400)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_tokenizer_special_tokens(tokenizer):
    assert tokenizer.bos_token == "<s>"
    assert tokenizer.eos_token == "</s>"
    assert tokenizer.pad_token == "<pad>"
    assert tokenizer.unk_token == "<unk>"
    ids = {
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
    }
    assert None not in ids
    assert len(ids) == 4


def test_tokenizer_adds_bos_not_eos(tokenizer):
    ids = tokenizer("Repeat the following words.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.eos_token_id not in ids


def test_tokenizer_reload_encodes_same(tmp_path, tokenizer_texts):
    built = quickstart.build_tokenizer(tokenizer_texts, tmp_path, vocab_size=400)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in tokenizer_texts[:10]:
        assert built(text)["input_ids"] == reloaded(text)["input_ids"]


def test_tokenizer_decodes_any_text(tokenizer):
    text = "Sort 3 1 2, then say ünïcode — 😀"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_respects_vocab_size(tokenizer):
    assert len(tokenizer) <= 400


def test_tokenizer_rejects_tiny_vocab(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must exceed 260"):
        quickstart.build_tokenizer(["a b c"], tmp_path, vocab_size=260)


def test_alpaca_tokenization_matches_axolotl(tokenizer, builtin_records):
    from axolotl.prompt_tokenizers import AlpacaPromptTokenizingStrategy
    from axolotl.prompters import AlpacaPrompter

    strategy = AlpacaPromptTokenizingStrategy(
        AlpacaPrompter(), tokenizer, train_on_inputs=False, sequence_len=512
    )
    for record in builtin_records[:16]:
        tokenized = strategy.tokenize_prompt(record)
        input_ids = tokenized["input_ids"]
        assert input_ids[0] == tokenizer.bos_token_id
        assert input_ids.count(tokenizer.bos_token_id) == 1
        assert input_ids[-1] == tokenizer.eos_token_id
        assert input_ids.count(tokenizer.eos_token_id) == 1
        assert quickstart.count_alpaca_tokens(tokenizer, record) == len(input_ids)

        response_labels = [label for label in tokenized["labels"] if label != -100]
        response = tokenizer.decode(response_labels, skip_special_tokens=True)
        assert response == record["output"]


def test_builtin_samples_fit_sequence_len(tokenizer):
    records = quickstart.generate_builtin_dataset(400, seed=5)
    lengths = [quickstart.count_alpaca_tokens(tokenizer, record) for record in records]
    assert max(lengths) <= quickstart.SEQUENCE_LEN


def test_split_by_length_drops_long(tokenizer):
    short = {"instruction": "Repeat the words.", "input": "cat", "output": "cat"}
    long = dict(short, output="cat " * 400)
    fitting, left_out = quickstart.split_by_length(tokenizer, [short, long, short], 256)
    assert fitting == [short, short]
    assert left_out == 1


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def _build_small_llama(path: Path, tokenizer, seed: int) -> Path:
    return quickstart.build_llama(
        path,
        tokenizer,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        seed=seed,
    )


def test_build_llama_saves_model_and_tokenizer(tmp_path, tokenizer):
    path = _build_small_llama(tmp_path / "model", tokenizer, seed=0)
    assert (path / "model.safetensors").is_file()
    assert (path / "config.json").is_file()
    assert (path / "tokenizer.json").is_file()

    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size == 16
    assert model.config.num_hidden_layers == 1
    assert model.config.max_position_embeddings >= quickstart.SEQUENCE_LEN
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id

    reloaded = AutoTokenizer.from_pretrained(str(path))
    assert reloaded("cat dog")["input_ids"] == tokenizer("cat dog")["input_ids"]


def test_build_llama_seed_sets_weights(tmp_path, tokenizer):
    first = AutoModelForCausalLM.from_pretrained(
        str(_build_small_llama(tmp_path / "a", tokenizer, seed=1))
    )
    same = AutoModelForCausalLM.from_pretrained(
        str(_build_small_llama(tmp_path / "b", tokenizer, seed=1))
    )
    other = AutoModelForCausalLM.from_pretrained(
        str(_build_small_llama(tmp_path / "c", tokenizer, seed=2))
    )
    first_weights = first.state_dict()
    for name, weight in same.state_dict().items():
        assert torch.equal(weight, first_weights[name]), name
    embeddings = "model.embed_tokens.weight"
    assert not torch.equal(other.state_dict()[embeddings], first_weights[embeddings])


def test_build_llama_rejects_bad_heads(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="divisible by num_heads"):
        quickstart.build_llama(
            tmp_path / "bad",
            tokenizer,
            hidden_size=30,
            num_layers=1,
            num_heads=4,
            intermediate_size=32,
            seed=0,
        )


def test_default_student_smaller_than_teacher(tmp_path, tokenizer):
    sizes = {}
    for name, size in (
        ("teacher", quickstart.TEACHER_SIZE),
        ("student", quickstart.STUDENT_SIZE),
    ):
        path = quickstart.build_llama(tmp_path / name, tokenizer, seed=0, **size)
        model = AutoModelForCausalLM.from_pretrained(str(path))
        sizes[name] = sum(parameter.numel() for parameter in model.parameters())
    assert sizes["student"] < sizes["teacher"]


# --------------------------------------------------------------------------
# Axolotl configs
# --------------------------------------------------------------------------


CPU_KEYS = {
    "bf16": False,
    "fp16": False,
    "tf32": False,
    "optimizer": "adamw_torch",
    "save_strategy": "no",
    "val_set_size": 0,
    "gradient_accumulation_steps": 1,
    "logging_steps": 1,
}


def test_teacher_config_is_plain_axolotl(tmp_path):
    config = quickstart.teacher_sft_config(tmp_path, steps=30, seed=5)
    workdir = tmp_path.resolve()
    assert "plugins" not in config
    assert "pocl" not in config
    assert config["base_model"] == str(workdir / "teacher_init")
    assert config["output_dir"] == str(workdir / "teacher")
    assert config["max_steps"] == 30
    assert config["seed"] == 5
    train_file = str(workdir / "data" / "train.jsonl")
    assert config["datasets"] == [
        {"path": train_file, "ds_type": "json", "type": "alpaca"}
    ]
    for key, value in CPU_KEYS.items():
        assert config[key] == value, key


def test_student_config_enables_plugin(tmp_path):
    config = quickstart.student_pocl_config(tmp_path, steps=40, seed=1, loss="jsd")
    workdir = tmp_path.resolve()
    assert config["plugins"] == ["pocl_axolotl.POCLPlugin"]
    assert config["base_model"] == str(workdir / "student_init")
    assert config["output_dir"] == str(workdir / "student_pocl")
    assert config["dataset_prepared_path"] == str(workdir / "prepared")
    assert config["shuffle_merged_datasets"] is False
    assert config["max_steps"] == 40
    for key, value in CPU_KEYS.items():
        assert config[key] == value, key

    pocl = parse_pocl_config(config["pocl"])
    assert pocl.teacher_model == str(workdir / "teacher")
    assert pocl.loss == "jsd"
    assert pocl.num_buckets == quickstart.NUM_BUCKETS
    assert pocl.temperature_start == 1.0
    assert pocl.temperature_end == 2.0
    assert pocl.kd_ratio_start == 0.7
    assert pocl.kd_ratio_end == 1.0
    assert pocl.difficulty_metrics == ["lm_loss", "rouge_l"]


@pytest.mark.parametrize("loss", quickstart.DIVERGENCE_NAMES)
def test_student_config_accepts_each_loss(tmp_path, loss):
    config = quickstart.student_pocl_config(tmp_path, steps=8, seed=0, loss=loss)
    assert parse_pocl_config(config["pocl"]).loss == loss


def test_student_config_scoring_model(tmp_path):
    teacher = quickstart.student_pocl_config(
        tmp_path, steps=8, seed=0, score_with="teacher"
    )
    student = quickstart.student_pocl_config(
        tmp_path, steps=8, seed=0, score_with="student"
    )
    assert teacher["pocl"]["scoring_model"] == str(tmp_path.resolve() / "teacher")
    assert "scoring_model" not in student["pocl"]
    with pytest.raises(ValueError, match="score_with must be one of"):
        quickstart.student_pocl_config(tmp_path, steps=8, seed=0, score_with="oracle")


def test_write_config_round_trip_with_comments(tmp_path):
    config = quickstart.student_pocl_config(tmp_path, steps=8, seed=0)
    path = quickstart.write_axolotl_config(
        tmp_path / "configs" / "student.yml",
        config,
        comments={"shuffle_merged_datasets": "first line\nsecond line"},
    )
    text = path.read_text(encoding="utf-8")
    assert yaml.safe_load(text) == config
    assert list(yaml.safe_load(text)) == list(config)
    assert "# first line\n# second line\nshuffle_merged_datasets: false\n" in text


def test_merge_keeps_order_without_shuffle():
    from axolotl.utils.data.shared import merge_datasets
    from axolotl.utils.dict import DictDefault
    from datasets import Dataset

    dataset = Dataset.from_dict({"position": list(range(50))})
    config = quickstart.student_pocl_config(Path("work"), steps=8, seed=0)
    merged = merge_datasets([dataset], DictDefault(config))
    assert merged["position"] == list(range(50))

    config["shuffle_merged_datasets"] = True
    shuffled = merge_datasets([dataset], DictDefault(config))
    assert shuffled["position"] != list(range(50))


# --------------------------------------------------------------------------
# Running axolotl
# --------------------------------------------------------------------------


def test_environment_offline_and_pythonpath():
    env = quickstart.axolotl_environment({"PYTHONPATH": "/elsewhere"})
    assert env["AXOLOTL_DO_NOT_TRACK"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PYTHONPATH"].split(":") == [str(REPO_ROOT), "/elsewhere"]
    assert "OMP_NUM_THREADS" not in env


def test_environment_keeps_thread_setting():
    assert quickstart.axolotl_environment({}, cpu_threads=1)["OMP_NUM_THREADS"] == "1"
    env = quickstart.axolotl_environment({"OMP_NUM_THREADS": "8"}, cpu_threads=1)
    assert env["OMP_NUM_THREADS"] == "8"


def test_axolotl_command_prefers_venv_script():
    command = quickstart.axolotl_command()
    beside = Path(sys.executable).parent / "axolotl"
    if beside.is_file():
        assert command == [str(beside)]
    else:
        assert Path(command[0]).name in {"axolotl", Path(sys.executable).name}


@pytest.fixture
def fake_axolotl(monkeypatch):
    """Replace the axolotl command with Python code that echoes and exits."""
    script = (
        "import sys; print('args', *sys.argv[1:]); "
        "print('to stderr', file=sys.stderr); sys.exit(int(sys.argv[-1]))"
    )
    command = [sys.executable, "-c", script]
    monkeypatch.setattr(quickstart, "axolotl_command", lambda: command)


def test_run_axolotl_logs_output_and_status(tmp_path, fake_axolotl):
    log_path = tmp_path / "logs" / "fake.log"
    assert quickstart.run_axolotl(["train", "cfg.yml", "0"], log_path) == 0
    log = log_path.read_text(encoding="utf-8")
    assert log.startswith("$ ")
    assert "args train cfg.yml 0" in log
    assert "to stderr" in log

    assert quickstart.run_axolotl(["train", "3"], log_path) == 3


def test_run_phase_raises_on_failure(tmp_path, fake_axolotl, capsys):
    with pytest.raises(quickstart.PhaseError) as error:
        quickstart.run_phase("distill", ["train", "7"], tmp_path)
    assert error.value.phase == "distill"
    assert error.value.log_path == tmp_path / "distill.log"
    assert "exited with status 7" in str(error.value)
    assert "args train 7" in quickstart.tail_lines(tmp_path / "distill.log")
    assert "[distill] $ " in capsys.readouterr().out


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------


def test_stage_schedule_from_trainer_state(tmp_path):
    first_stage = {"pocl/stage": 0, "pocl/temperature": 1.0, "pocl/kd_ratio": 0.7}
    history = [
        {"step": 1, "loss": 3.0, **first_stage},
        {"step": 2, "loss": 2.9, **first_stage},
        {"step": 3, "loss": 2.8, "pocl/stage": 1, "pocl/temperature": 2.0},
        {"step": 4, "loss": 2.7, "pocl/stage": 1, "pocl/temperature": 2.5},
        {"step": 4, "train_runtime": 1.0},
    ]
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"log_history": history}), encoding="utf-8")
    first, second = quickstart.read_stage_schedule(path)
    assert first == {
        "stage": 0,
        "first_step": 1,
        "last_step": 2,
        "temperature_min": 1.0,
        "temperature_max": 1.0,
        "kd_ratio_min": 0.7,
        "kd_ratio_max": 0.7,
    }
    assert second["first_step"] == 3
    assert second["temperature_min"] == 2.0
    assert second["temperature_max"] == 2.5
    assert second["kd_ratio_min"] is None


def test_stage_schedule_without_pocl_entries(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"log_history": [{"step": 1}]}), encoding="utf-8")
    assert quickstart.read_stage_schedule(path) == []


def _write_report(
    path: Path, ranks: dict[int, int], invalid: tuple[int, ...] = ()
) -> Path:
    entries = [
        {"index": index, "rank": rank, "bucket": 0, "valid": index not in invalid}
        for index, rank in ranks.items()
    ]
    return quickstart.write_jsonl(path, entries)


def test_level_rank_correlation_perfect(tmp_path):
    records = [{"level": level} for level in (2, 0, 3, 1)]
    report = _write_report(tmp_path / "r", {0: 30, 1: 10, 2: 40, 3: 20})
    result = quickstart.level_rank_correlation(records, report)
    assert result["spearman"] == pytest.approx(1.0)
    assert result["num_samples"] == 4


def test_level_rank_correlation_mean_ranks(tmp_path):
    records = [{"level": level} for level in (0, 1, 2, 3, 0, 1, 2, 3)]
    ranks = {index: 10 * row["level"] + index for index, row in enumerate(records)}
    report = _write_report(tmp_path / "r", ranks)
    result = quickstart.level_rank_correlation(records, report)
    # Tied levels keep the coefficient below 1 even though the ranks grow with level.
    assert 0.9 < result["spearman"] < 1.0
    assert result["num_samples"] == 8
    assert result["mean_rank_per_level"] == {0: 2.0, 1: 13.0, 2: 24.0, 3: 35.0}


def test_level_rank_correlation_reversed(tmp_path):
    records = [{"level": level} for level in (0, 1, 2, 3)]
    report = _write_report(tmp_path / "r", {0: 4, 1: 3, 2: 2, 3: 1})
    result = quickstart.level_rank_correlation(records, report)
    assert result["spearman"] == pytest.approx(-1.0)


def test_level_rank_correlation_skips_unmatched(tmp_path):
    # Record 2 has no level, report entry 3 is invalid, record 5 has no entry.
    records = [{"level": 0}, {"level": 1}, {}, {"level": 3}, {"level": 2}, {"level": 9}]
    ranks = {0: 1, 1: 2, 2: 99, 3: 0, 4: 3}
    report = _write_report(tmp_path / "r", ranks, invalid=(3,))
    result = quickstart.level_rank_correlation(records, report)
    assert result["num_samples"] == 3
    assert result["spearman"] == pytest.approx(1.0)


def test_level_rank_correlation_none_without_levels(tmp_path):
    report = _write_report(tmp_path / "r", {0: 1, 1: 2})
    assert quickstart.level_rank_correlation([{}, {}], report) is None


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["quickstart", *argv])


def test_cli_quickstart_defaults():
    args = _parse()
    assert args.run is quickstart.run_quickstart
    assert args.workdir == Path("./pocl_quickstart")
    assert args.data is None
    assert args.num_samples is None
    assert args.loss == "forward_kl"
    assert args.score_with == "teacher"
    assert args.overwrite is False
    assert args.student_steps % quickstart.NUM_BUCKETS == 0


def test_cli_quickstart_options(tmp_path):
    args = _parse(
        "--workdir", str(tmp_path), "--data", "d.jsonl", "--num-samples", "10",
        "--seed", "3", "--teacher-steps", "5", "--student-steps", "8",
        "--loss", "skew_reverse_kl", "--score-with", "student", "--overwrite",
    )  # fmt: skip
    assert args.workdir == tmp_path
    assert args.data == Path("d.jsonl")
    assert args.num_samples == 10
    assert args.seed == 3
    assert args.teacher_steps == 5
    assert args.student_steps == 8
    assert args.loss == "skew_reverse_kl"
    assert args.score_with == "student"
    assert args.overwrite is True


def test_cli_rejects_unknown_loss():
    with pytest.raises(SystemExit):
        _parse("--loss", "kl")


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--student-steps", "10"], "--student-steps must be a positive multiple of 4"),
        (["--student-steps", "0"], "--student-steps must be a positive multiple of 4"),
        (["--teacher-steps", "0"], "--teacher-steps must be at least 1"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
    ],
)
def test_quickstart_rejects_bad_option(tmp_path, capsys, argv, problem):
    args = _parse("--workdir", str(tmp_path / "work"), *argv)
    assert quickstart.run_quickstart(args) == 2
    assert problem in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_quickstart_rejects_nonempty_workdir(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    assert quickstart.run_quickstart(_parse("--workdir", str(tmp_path))) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err


def test_quickstart_rejects_malformed_data(tmp_path, capsys):
    good = json.dumps({"instruction": "a", "output": "b"})
    data = _write_lines(tmp_path / "data.jsonl", [good, "{"])
    args = _parse("--workdir", str(tmp_path / "work"), "--data", str(data))
    assert quickstart.run_quickstart(args) == 2
    assert f"{data}:2: invalid JSON" in capsys.readouterr().err


def test_quickstart_reports_failed_phase(tmp_path, fake_axolotl, capsys):
    # The first command ends in `--launcher python`, so the fake axolotl fails
    # on int("python") with a ValueError traceback and exit status 1.
    args = _parse("--workdir", str(tmp_path), "--num-samples", "16")
    assert quickstart.run_quickstart(args) == 1

    error = capsys.readouterr().err
    log_path = tmp_path / "logs" / "teacher_sft.log"
    assert "phase `teacher_sft` failed" in error
    assert f"Log: {log_path}" in error
    assert "Last lines of the log:" in error
    assert "ValueError" in error
    assert (tmp_path / "configs" / "teacher_sft.yml").is_file()
    assert (tmp_path / "student_init" / "model.safetensors").is_file()
    assert not (tmp_path / "logs" / "preprocess.log").exists()


def test_clear_workdir_keeps_other_files(tmp_path):
    for name in ("data", "teacher", "logs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x", encoding="utf-8")
    (tmp_path / "configs").write_text("a file where a folder goes", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    (tmp_path / "mine").mkdir()

    quickstart.clear_workdir(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine", "notes.txt"]


# --------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------


@pytest.mark.e2e
def test_quickstart_end_to_end(tmp_path):
    workdir = tmp_path / "work"
    command = [
        sys.executable, "-m", "pocl_axolotl.cli", "quickstart",
        "--workdir", str(workdir), "--num-samples", "96",
        "--teacher-steps", "40", "--student-steps", "16",
    ]  # fmt: skip
    env = quickstart.axolotl_environment(cpu_threads=1)
    completed = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]

    for config in ("teacher_sft.yml", "student_pocl.yml"):
        assert (workdir / "configs" / config).is_file(), config
    for model_dir in ("teacher", "student_pocl"):
        for name in ("model.safetensors", "config.json", "tokenizer.json"):
            assert (workdir / model_dir / name).is_file(), f"{model_dir}/{name}"
    for phase in ("teacher_sft", "preprocess", "distill"):
        assert (workdir / "logs" / f"{phase}.log").is_file(), phase

    training_lines = quickstart.read_jsonl(workdir / "data" / "train.jsonl")
    report = quickstart.read_jsonl(workdir / "student_pocl" / "pocl_difficulty.jsonl")
    assert len(report) == len(training_lines)
    indices = sorted(entry["index"] for entry in report)
    assert indices == list(range(len(training_lines)))
    for entry in report:
        assert {"index", "rank", "bucket", "lm_loss", "rouge_l"} <= set(entry)

    trainer_state = workdir / "student_pocl" / "trainer_state.json"
    stages = quickstart.read_stage_schedule(trainer_state)
    assert [row["stage"] for row in stages] == [0, 1, 2, 3]
    assert stages[0]["temperature_min"] == pytest.approx(1.0)
    assert stages[-1]["temperature_max"] == pytest.approx(2.0)

    assert "Phase times" in completed.stdout
    assert "Spearman correlation" in completed.stdout
    # The measured difficulty follows the built-in data's known levels.
    correlation = quickstart.level_rank_correlation(
        training_lines, workdir / "student_pocl" / "pocl_difficulty.jsonl"
    )
    assert correlation["num_samples"] == len(training_lines)
    assert correlation["spearman"] > 0.3
