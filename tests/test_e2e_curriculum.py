"""The curriculum under several processes, packing, accumulation, resume, eval and LoRA.

Every test runs the real `axolotl train` in a subprocess on a slice of the Dolly
data with small local models, and audits the indices that each process trained
on (`pocl.log_consumed_indices`).
"""

from __future__ import annotations

import json
import re

import pytest

from axolotl_runs import (
    BIN_DIR,
    CPU_SETTINGS,
    axolotl,
    log_history,
    read_jsonl,
    run_command,
    shared_data_file,
    write_config,
)
from tiny_models import build_llama, build_tokenizer

pytestmark = pytest.mark.e2e

NUM_BUCKETS = 4
MAX_STEPS = 8


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny teacher and student, and the first 160 Dolly samples as training data."""
    dolly = shared_data_file("dolly.jsonl")
    work = tmp_path_factory.mktemp("curriculum")
    rows = [json.loads(line) for line in dolly.read_text(encoding="utf-8").splitlines()][:160]
    train = work / "train.jsonl"
    with train.open("w", encoding="utf-8") as handle:
        for row in rows:
            record = {key: row[key] for key in ("instruction", "input", "output")}
            handle.write(json.dumps(record) + "\n")
    tokenizer = build_tokenizer(work / "tokenizer", [row["prompt"] + row["output"] for row in rows])
    build_llama(work / "teacher", tokenizer, hidden_size=48, num_layers=2, seed=1)
    build_llama(work / "student", tokenizer, hidden_size=32, num_layers=2, seed=2)
    return work


def make_config(work, name: str, **overrides) -> dict:
    config = {
        "base_model": str(work / "student"),
        "plugins": ["pocl_axolotl.POCLPlugin"],
        "pocl": {
            "teacher_model": str(work / "teacher"),
            "num_buckets": NUM_BUCKETS,
            "difficulty_metrics": ["lm_loss", "length"],
            "log_consumed_indices": True,
        },
        "datasets": [{"path": str(work / "train.jsonl"), "ds_type": "json", "type": "alpaca"}],
        "dataset_prepared_path": str(work / f"prepared_{name}"),
        "output_dir": str(work / name),
        "sequence_len": 256,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": MAX_STEPS,
        **CPU_SETTINGS,
    }
    pocl_overrides = overrides.pop("pocl", {})
    config.update(overrides)
    config["pocl"].update(pocl_overrides)
    return config


def train(work, name: str, **overrides) -> dict:
    """Train with one process and return the config used."""
    config = make_config(work, name, **overrides)
    path = write_config(work / f"{name}.yml", config)
    axolotl("train", path, work / f"{name}.log")
    return config


def buckets_of(work, name: str) -> dict[int, int]:
    report = read_jsonl(work / name / "pocl_difficulty.jsonl")
    return {record["index"]: record["bucket"] for record in report}


def consumed(work, name: str, rank: int = 0) -> list[dict]:
    return read_jsonl(work / name / "pocl_consumed" / f"rank{rank}.jsonl")


def indices_per_step(records: list[dict]) -> dict[int, list[int]]:
    steps: dict[int, list[int]] = {}
    for record in records:
        steps.setdefault(record["step"], []).extend(record["indices"])
    return steps


def expected_stage(step: int) -> int:
    return min(step // (MAX_STEPS // NUM_BUCKETS), NUM_BUCKETS - 1)


def assert_no_locked_bucket(per_step: dict[int, list[int]], buckets: dict[int, int]):
    for step, indices in per_step.items():
        drawn = {buckets[index] for index in indices}
        assert max(drawn) <= expected_stage(step), f"step {step} drew buckets {drawn}"


def logged(work, name: str, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in log_history(work / name) if key in r}


def test_two_processes_share_each_step(workspace):
    config = make_config(workspace, "ddp")
    path = write_config(workspace / "ddp.yml", config)
    log_path = workspace / "ddp.log"
    run_command(
        [str(BIN_DIR / "torchrun"), "--nproc_per_node", "2", "-m", "axolotl.cli.train", str(path)],
        log_path,
        cwd=workspace,
        # NOTE: once in about five runs the two processes hung at exit after
        # saving the model; the cause is not found yet, so such a run still
        # counts and is reported as a warning.
        timeout=300,
        done_marker="Model successfully saved",
    )
    log = log_path.read_text(encoding="utf-8")
    buckets = buckets_of(workspace, "ddp")
    ranks = [indices_per_step(consumed(workspace, "ddp", rank)) for rank in (0, 1)]

    # Scored once, and both processes hold the same buckets.
    assert log.count("Saved difficulty scores") == 1
    assert log.count("Reusing cached difficulty scores") == 1
    fingerprints = re.findall(r"Difficulty buckets of \d+ samples ready, fingerprint (\w+)", log)
    assert len(fingerprints) == 2
    assert fingerprints[0] == fingerprints[1]

    assert sorted(ranks[0]) == list(range(MAX_STEPS))
    assert sorted(ranks[1]) == list(range(MAX_STEPS))
    for step in range(MAX_STEPS):
        assert len(ranks[0][step]) == config["micro_batch_size"]
        assert len(ranks[1][step]) == config["micro_batch_size"]
    for rank in ranks:
        assert_no_locked_bucket(rank, buckets)
    # Within a stage's pass over its pool, the two shares of a step are disjoint.
    first_steps = [0, 2, 4, 6]
    for step in first_steps:
        assert not set(ranks[0][step]) & set(ranks[1][step])
    stages = logged(workspace, "ddp", "pocl/stage")
    assert [stages[step] for step in sorted(stages)] == [expected_stage(s) for s in range(MAX_STEPS)]

    # One process with the whole global batch trains on the same samples and
    # must see the same per-token loss and gradient.
    train(workspace, "ddp_reference", micro_batch_size=2 * config["micro_batch_size"])
    single = indices_per_step(consumed(workspace, "ddp_reference"))
    for step in range(MAX_STEPS):
        assert sorted(single[step]) == sorted(ranks[0][step] + ranks[1][step])
    for key in ("loss", "grad_norm", "pocl/kd_loss", "pocl/ce_loss"):
        distributed = logged(workspace, "ddp", key)
        reference = logged(workspace, "ddp_reference", key)
        for step in range(1, MAX_STEPS + 1):
            assert distributed[step] == pytest.approx(reference[step], rel=1e-3), (key, step)


def test_packed_run_respects_schedule(workspace):
    train(workspace, "packed", sample_packing=True, micro_batch_size=2, eval_sample_packing=False)
    buckets = buckets_of(workspace, "packed")
    per_step = indices_per_step(consumed(workspace, "packed"))
    assert sorted(per_step) == list(range(MAX_STEPS))
    assert_no_locked_bucket(per_step, buckets)
    for step in range(MAX_STEPS):
        assert len(per_step[step]) >= 2, "a packed row of 2 x 256 tokens holds several samples"
    last_stage = [index for step in (6, 7) for index in per_step[step]]
    assert {buckets[index] for index in last_stage} >= {2, 3}
    stages = logged(workspace, "packed", "pocl/stage")
    assert [stages[step] for step in sorted(stages)] == [expected_stage(s) for s in range(MAX_STEPS)]


def test_accumulation_keeps_stage_boundaries(workspace):
    train(workspace, "ga1", micro_batch_size=4, gradient_accumulation_steps=1)
    train(workspace, "ga2", micro_batch_size=2, gradient_accumulation_steps=2)
    assert logged(workspace, "ga1", "pocl/stage") == logged(workspace, "ga2", "pocl/stage")
    assert logged(workspace, "ga1", "pocl/temperature") == logged(workspace, "ga2", "pocl/temperature")
    one = indices_per_step(consumed(workspace, "ga1"))
    two = indices_per_step(consumed(workspace, "ga2"))
    assert one == two


def test_resume_continues_exactly(workspace):
    half = MAX_STEPS // 2
    saving = {"save_strategy": "steps", "save_steps": half}
    train(workspace, "full", **saving)
    checkpoint = workspace / "full" / f"checkpoint-{half}"
    assert checkpoint.is_dir()
    train(workspace, "resumed", resume_from_checkpoint=str(checkpoint), **saving)

    for key in ("pocl/temperature", "pocl/stage", "pocl/kd_ratio"):
        full = logged(workspace, "full", key)
        resumed = logged(workspace, "resumed", key)
        # The resumed run's history starts with the checkpoint's first half.
        assert sorted(resumed) == list(range(1, MAX_STEPS + 1))
        assert all(resumed[step] == full[step] for step in resumed), key
    full_steps = indices_per_step(consumed(workspace, "full"))
    resumed_steps = indices_per_step(consumed(workspace, "resumed"))
    assert sorted(resumed_steps) == list(range(half, MAX_STEPS))
    for step in resumed_steps:
        assert resumed_steps[step] == full_steps[step]


def test_validation_split_logs_kd_loss(workspace):
    train(workspace, "eval", val_set_size=0.1, eval_strategy="steps", eval_steps=4)
    evaluations = [r for r in log_history(workspace / "eval") if "eval_loss" in r]
    # Axolotl also evaluates before the first step.
    assert [r["step"] for r in evaluations] == [0, 4, 8]
    temperatures = [r["eval_pocl/temperature"] for r in evaluations]
    assert temperatures == pytest.approx([1.0, 4 / 3, 2.0], abs=1e-5)
    for record in evaluations:
        assert record["eval_pocl/kd_loss"] > 0
        assert record["eval_pocl/ce_loss"] > 0
        ratio = record["eval_pocl/kd_ratio"]
        combined = ratio * record["eval_pocl/kd_loss"] + (1 - ratio) * record["eval_pocl/ce_loss"]
        assert record["eval_loss"] == pytest.approx(combined, rel=0.05)


def test_lora_student_optimises_kd(workspace):
    lora = {
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        # Axolotl 0.19.0 turns on its Triton LoRA kernels by default; they need a GPU.
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "pocl": {"kd_ratio_start": 1.0, "kd_ratio_end": 1.0},
    }
    train(workspace, "lora", **lora)
    assert (workspace / "lora" / "adapter_config.json").is_file()
    records = [r for r in log_history(workspace / "lora") if "loss" in r]
    assert len(records) == MAX_STEPS
    for record in records:
        assert record["loss"] == pytest.approx(record["pocl/kd_loss"], rel=1e-3)
        assert record["pocl/ce_loss"] > record["pocl/kd_loss"]


def test_stage_learning_rate_restarts(workspace):
    train(
        workspace, "restart", warmup_steps=0, lr_scheduler="cosine",
        pocl={"restart_lr_each_stage": True},
    )
    rates = logged(workspace, "restart", "learning_rate")
    peak = 0.001
    # The rate logged after step g is the one step g - 1 used. Each 2-step stage
    # starts again at the peak and decays by a cosine over its own steps, where a
    # single cosine over the run would only decrease.
    for step in (1, 3, 5, 7):
        assert rates[step] == pytest.approx(peak)
    for step in (2, 4, 6, 8):
        assert rates[step] == pytest.approx(peak / 2)


def test_plateau_unlocks_early_and_resumes(workspace):
    plateau = {
        "num_buckets": 2,
        "unlock_every": 12,
        "unlock_on_plateau": {"patience": 1, "min_relative_improvement": 0.5},
    }
    settings = {"max_steps": 16, "save_strategy": "steps", "save_steps": 8, "pocl": plateau}
    train(workspace, "plateau", **settings)
    # The first logged loss sets the stage's best, and the second does not
    # halve it. So after step 2, stage 1 is set to start 3 steps later, at step
    # 5, long before the fixed boundary at step 12.
    stages = logged(workspace, "plateau", "pocl/stage")
    assert [stages[step] for step in range(1, 17)] == [0] * 5 + [1] * 11
    saved = json.loads((workspace / "plateau" / "checkpoint-8" / "pocl_state.json").read_text())
    assert saved["starts"] == [0, 5]

    checkpoint = workspace / "plateau" / "checkpoint-8"
    train(workspace, "plateau_resumed", resume_from_checkpoint=str(checkpoint), **settings)
    assert logged(workspace, "plateau_resumed", "pocl/stage") == stages
    full = indices_per_step(consumed(workspace, "plateau"))
    resumed = indices_per_step(consumed(workspace, "plateau_resumed"))
    assert sorted(resumed) == list(range(8, 16))
    for step in resumed:
        assert resumed[step] == full[step]
