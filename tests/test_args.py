"""The `pocl:` block: defaults, rejected values and Axolotl's own validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pocl_axolotl.args import PoclConfig, parse_pocl_config
from pocl_axolotl.plugin import POCLPlugin, deepspeed_zero_stage

REPO_ROOT = Path(__file__).resolve().parents[1]

EXPECTED_DEFAULTS = {
    "teacher_dtype": "auto",
    "loss": "forward_kl",
    "jsd_beta": 0.5,
    "skew_alpha": 0.1,
    "temperature_start": 1.0,
    "temperature_end": 2.0,
    "scale_by_temperature_squared": True,
    "kd_ratio_start": 0.7,
    "kd_ratio_end": 1.0,
    "num_buckets": 4,
    "unlock_every": None,
    "difficulty_metrics": ["lm_loss", "rouge_l"],
    "rrf_k": 60,
    "scoring_batch_size": 8,
    "scoring_max_new_tokens": 128,
}


@pytest.mark.parametrize(("key", "expected"), EXPECTED_DEFAULTS.items())
def test_config_default(key, expected):
    config = parse_pocl_config({"teacher_model": "teacher"})
    assert getattr(config, key) == expected


def test_every_field_has_description():
    missing = [name for name, field in PoclConfig.model_fields.items() if not field.description]
    assert missing == []


INVALID_VALUES = [
    ("temperature_start", -1.0),
    ("temperature_start", 0.0),
    ("temperature_end", -0.5),
    ("kd_ratio_start", 1.5),
    ("kd_ratio_end", -0.1),
    ("num_buckets", 0),
    ("loss", "kl"),
    ("jsd_beta", 1.5),
    ("skew_alpha", 1.0),
    ("skew_alpha", -0.1),
    ("unlock_every", 0),
    ("rrf_k", -1),
    ("difficulty_metrics", []),
    ("difficulty_metrics", ["bleu"]),
    ("difficulty_metrics", ["lm_loss", "lm_loss"]),
    ("scoring_batch_size", 0),
    ("scoring_max_new_tokens", 0),
    ("teacher_dtype", "int8"),
    ("kd_chunk_size", 0),
]


@pytest.mark.parametrize(("key", "value"), INVALID_VALUES)
def test_invalid_value_names_key(key, value):
    with pytest.raises(ValueError) as error:
        parse_pocl_config({"teacher_model": "teacher", key: value})
    assert f"`pocl.{key}" in str(error.value)


def test_invalid_value_shows_value():
    with pytest.raises(ValueError, match=r"got 1\.5"):
        parse_pocl_config({"teacher_model": "teacher", "kd_ratio_start": 1.5})


def test_unknown_key_rejected():
    with pytest.raises(ValueError) as error:
        parse_pocl_config({"teacher_model": "teacher", "num_bucket": 4})
    message = str(error.value)
    assert "`pocl.num_bucket`" in message
    assert "unknown key" in message
    assert "num_buckets" in message


def test_missing_teacher_rejected():
    with pytest.raises(ValueError, match=r"`pocl.teacher_model`: required"):
        parse_pocl_config({"num_buckets": 4})


def test_missing_block_rejected():
    with pytest.raises(ValueError, match="no `pocl:` block"):
        POCLPlugin().register({"plugins": ["pocl_axolotl.POCLPlugin"]})


def test_zero3_rejected_at_register(tmp_path):
    deepspeed = tmp_path / "zero3.json"
    deepspeed.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    config = {"pocl": {"teacher_model": "teacher"}, "deepspeed": str(deepspeed)}
    with pytest.raises(ValueError, match="ZeRO stage 3"):
        POCLPlugin().register(config)


def _validate_with_axolotl(raw: dict):
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    return validate_config(cfg)


def _minimal_axolotl_config(**pocl) -> dict:
    return {
        "base_model": "student",
        "plugins": ["pocl_axolotl.POCLPlugin"],
        "pocl": {"teacher_model": "teacher", **pocl},
        "datasets": [{"path": "train.jsonl", "ds_type": "json", "type": "alpaca"}],
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-4,
        "output_dir": "out",
    }


def test_axolotl_keeps_pocl_block():
    cfg = _validate_with_axolotl(_minimal_axolotl_config(num_buckets=3, loss="tvd"))
    assert cfg.pocl["num_buckets"] == 3
    assert cfg.pocl["loss"] == "tvd"
    assert parse_pocl_config(cfg.pocl).num_buckets == 3


def test_axolotl_rejects_misspelt_key():
    with pytest.raises(ValueError, match="`pocl.temprature_end`"):
        _validate_with_axolotl(_minimal_axolotl_config(temprature_end=2.0))


def test_gpu_recipe_passes_schema():
    raw = yaml.safe_load(
        (REPO_ROOT / "example_configs" / "qwen2.5-0.5b-from-7b-dolly.yml").read_text()
    )
    cfg = _validate_with_axolotl(raw)
    pocl = parse_pocl_config(cfg.pocl)
    assert pocl.teacher_model == "Qwen/Qwen2.5-7B-Instruct"
    assert pocl.num_buckets == 4
    assert cfg.base_model == "Qwen/Qwen2.5-0.5B"


def test_zero2_recipe_accepted(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    raw = yaml.safe_load(
        (REPO_ROOT / "example_configs" / "qwen2.5-0.5b-from-7b-dolly-zero2.yml").read_text()
    )
    assert deepspeed_zero_stage(raw["deepspeed"]) == 2
    cfg = _validate_with_axolotl(raw)
    assert cfg.deepspeed.endswith("zero2.json")


def test_readme_lists_every_key():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in PoclConfig.model_fields if f"| `{name}` |" not in readme]
    assert missing == []


def test_rouge_with_train_on_inputs_rejected():
    config = {"pocl": {"teacher_model": "teacher"}, "train_on_inputs": True}
    with pytest.raises(ValueError, match="train_on_inputs"):
        POCLPlugin().register(config)
    config["pocl"]["difficulty_metrics"] = ["lm_loss"]
    POCLPlugin().register(config)


def test_stage_lr_needs_known_scheduler():
    config = {
        "pocl": {"teacher_model": "teacher", "restart_lr_each_stage": True},
        "lr_scheduler": "one_cycle",
    }
    with pytest.raises(ValueError, match="`lr_scheduler: one_cycle`"):
        POCLPlugin().register(config)


def test_missing_teacher_directory_named(tmp_path):
    from pocl_axolotl.teacher import check_same_tokenizer

    missing = str(tmp_path / "no-teacher")
    with pytest.raises(ValueError, match=r"`pocl.teacher_model: .*no-teacher` was not found"):
        check_same_tokenizer(None, missing, "pocl.teacher_model")
