"""`axolotl preprocess` then `axolotl train` with the plugin, on the Dolly data."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from axolotl_runs import (
    CPU_SETTINGS,
    axolotl,
    log_history,
    read_jsonl,
    shared_data_file,
    write_config,
)
from tiny_models import build_llama, build_tokenizer

pytestmark = pytest.mark.e2e

MAX_STEPS = 8


@pytest.fixture(scope="module")
def distilled_run(tmp_path_factory):
    """Preprocess and train once; return the work folder and both logs."""
    dolly = shared_data_file("dolly.jsonl")
    work = tmp_path_factory.mktemp("e2e")
    rows = [json.loads(line) for line in dolly.read_text(encoding="utf-8").splitlines()]
    tokenizer = build_tokenizer(work / "tokenizer", [row["prompt"] + row["output"] for row in rows])
    build_llama(work / "teacher", tokenizer, hidden_size=64, num_layers=2, seed=1)
    build_llama(work / "student", tokenizer, hidden_size=32, num_layers=2, seed=2)
    config = {
        "base_model": str(work / "student"),
        "plugins": ["pocl_axolotl.POCLPlugin"],
        "pocl": {
            "teacher_model": str(work / "teacher"),
            "num_buckets": 4,
            "scoring_batch_size": 32,
            "scoring_max_new_tokens": 8,
        },
        "datasets": [{"path": str(dolly), "ds_type": "json", "type": "alpaca"}],
        "dataset_prepared_path": str(work / "prepared"),
        "output_dir": str(work / "out"),
        "sequence_len": 512,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": MAX_STEPS,
        **CPU_SETTINGS,
    }
    path = write_config(work / "pocl.yml", config)
    axolotl("preprocess", path, work / "preprocess.log")
    axolotl("train", path, work / "train.log")
    return work


def test_train_saves_student(distilled_run):
    assert (distilled_run / "out" / "model.safetensors").is_file()


def test_train_reuses_cache(distilled_run):
    log = (distilled_run / "train.log").read_text(encoding="utf-8")
    assert "Reusing cached difficulty scores" in log
    assert "computed now" not in log


def test_report_line_per_sample(distilled_run):
    prepared = [path for path in (distilled_run / "prepared").iterdir() if path.is_dir()
                and (path / "dataset_info.json").exists()]
    assert len(prepared) == 1
    num_samples = len(load_from_disk(str(prepared[0])))
    report = read_jsonl(distilled_run / "out" / "pocl_difficulty.jsonl")
    assert len(report) == num_samples
    assert [record["index"] for record in report] == list(range(num_samples))
    assert sorted(record["rank"] for record in report) == list(range(1, num_samples + 1))
    assert {record["bucket"] for record in report} == {0, 1, 2, 3}
    assert (distilled_run / "out" / "pocl_difficulty.png").is_file()


def test_temperature_follows_stages(distilled_run):
    records = [r for r in log_history(distilled_run / "out") if "pocl/temperature" in r]
    steps = [record["step"] for record in records]
    temperatures = [record["pocl/temperature"] for record in records]
    stages = [record["pocl/stage"] for record in records]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert temperatures == pytest.approx([1.0, 1.0, 4 / 3, 4 / 3, 5 / 3, 5 / 3, 2.0, 2.0], abs=1e-5)
    assert stages == [0, 0, 1, 1, 2, 2, 3, 3]


def test_loss_parts_logged(distilled_run):
    records = [r for r in log_history(distilled_run / "out") if "loss" in r]
    for record in records:
        ratio = record["pocl/kd_ratio"]
        combined = ratio * record["pocl/kd_loss"] + (1 - ratio) * record["pocl/ce_loss"]
        assert record["loss"] == pytest.approx(combined, rel=1e-3)
