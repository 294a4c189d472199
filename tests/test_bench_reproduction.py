"""Tests of benchmarks/bench_reproduction.py and of the GPT-2 recipe configs.

The helpers are tested directly; one end-to-end test runs the whole script with
--quick, which calls the real `axolotl` command five times.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from axolotl_runs import SHARED_DATA, subprocess_env
from pocl_axolotl.args import parse_pocl_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "bench_reproduction.py"
TEACHER_RECIPE = REPO_ROOT / "example_configs" / "gpt2-xl-teacher-sft-dolly.yml"
STUDENT_RECIPE = REPO_ROOT / "example_configs" / "gpt2-base-pocl-from-gpt2-xl-dolly.yml"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_reproduction", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the class is created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def _record(index: int, output: str | None = None) -> dict:
    return {
        "instruction": f"instruction {index}",
        "input": "" if index % 2 else f"context {index}",
        "output": output or f"response {index}",
    }


# --------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------


def test_split_never_overlaps():
    records = [_record(index) for index in range(50)]
    for seed in range(5):
        train, heldout = bench.split_heldout(records, 10, seed)
        train_keys = {bench.sample_key(record) for record in train}
        heldout_keys = {bench.sample_key(record) for record in heldout}
        assert not train_keys & heldout_keys
        assert len(heldout) == 10
        assert len(train) == 40
        bench.check_disjoint(train, heldout)


def test_split_drops_duplicates_across_splits():
    records = [_record(index) for index in range(20)]
    records += [dict(record) for record in records[:10]]
    train, heldout = bench.split_heldout(records, 5, seed=0)
    assert len(train) + len(heldout) == 20
    bench.check_disjoint(train, heldout)


def test_split_is_deterministic():
    records = [_record(index) for index in range(30)]
    first = bench.split_heldout(records, 6, seed=3)
    second = bench.split_heldout(records, 6, seed=3)
    other = bench.split_heldout(records, 6, seed=4)
    assert first == second
    assert first[1] != other[1]


def test_split_keeps_file_order():
    records = [_record(index) for index in range(30)]
    train, heldout = bench.split_heldout(records, 6, seed=1)
    positions = {bench.sample_key(record): i for i, record in enumerate(records)}
    for split in (train, heldout):
        indices = [positions[bench.sample_key(record)] for record in split]
        assert indices == sorted(indices)


def test_split_rejects_bad_size():
    records = [_record(index) for index in range(5)]
    with pytest.raises(ValueError, match="heldout_size"):
        bench.split_heldout(records, 5, seed=0)
    with pytest.raises(ValueError, match="heldout_size"):
        bench.split_heldout(records, 0, seed=0)


def test_check_disjoint_rejects_overlap():
    records = [_record(index) for index in range(4)]
    with pytest.raises(ValueError, match="share 1 sample"):
        bench.check_disjoint(records[:3], records[2:])


def test_sample_key_tells_outputs_apart():
    same_prompt = [_record(1, "first answer"), _record(1, "second answer")]
    assert bench.sample_key(same_prompt[0]) != bench.sample_key(same_prompt[1])
    listed = {"instruction": "a", "input": "", "output": ["x", "y"]}
    assert bench.sample_key(listed) == ("a", "", '["x", "y"]')


def test_dolly_split_is_disjoint():
    dolly = SHARED_DATA / bench.DOLLY_FILE
    if not dolly.is_file():
        pytest.skip(f"{dolly} is missing; this test needs the shared instruction data")
    from pocl_axolotl.quickstart import load_instruction_jsonl

    records = load_instruction_jsonl(dolly)
    train, heldout = bench.split_heldout(records, bench.HELDOUT_SIZE, bench.SPLIT_SEED)
    assert len(heldout) == bench.HELDOUT_SIZE
    assert len(train) + len(heldout) == len(records)
    bench.check_disjoint(train, heldout)


# --------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------


def test_mean_std_uses_sample_std():
    mean, std = bench.mean_std([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(1.0)


def test_mean_std_single_value():
    mean, std = bench.mean_std([4.5])
    assert mean == pytest.approx(4.5)
    assert std is None


def test_mean_std_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        bench.mean_std([])


def test_format_mean_std():
    assert bench.format_mean_std(12.345, 0.5) == "12.35 ± 0.50"
    assert bench.format_mean_std(3.0, None) == "3.00 ± n/a"
    assert bench.format_mean_std(0.25, 0.1, signed=True) == "+0.25 ± 0.10"
    assert bench.format_mean_std(-0.25, 0.1, signed=True) == "-0.25 ± 0.10"


HELDOUT = ["dolly", "sinst"]


def _entry(mean: float, std: float = 0.0) -> dict:
    return {
        "rouge_l_mean": mean,
        "rouge_l_std": std,
        "samples": 10,
        "truncated_prompts": 0,
    }


def _fake_results(seeds, losses) -> dict:
    """Scores where KD + POCL beats KD by seed / 10 on Dolly and by 1 on S-NI."""
    results = {"teacher": {"dolly": _entry(20.0, 0.3), "sinst": _entry(18.0, 0.2)}}
    for seed in seeds:
        results[bench.StudentRun("sft", None, seed).name] = {
            "dolly": _entry(10.0 + seed), "sinst": _entry(8.0)
        }
        for loss in losses:
            results[bench.StudentRun("kd", loss, seed).name] = {
                "dolly": _entry(12.0 + seed), "sinst": _entry(9.0)
            }
            results[bench.StudentRun("pocl", loss, seed).name] = {
                "dolly": _entry(12.0 + seed + seed / 10), "sinst": _entry(10.0)
            }
    return results


def test_seed_scores_average_of_sets():
    results = _fake_results([1, 2], ["forward_kl"])
    runs = [bench.StudentRun("sft", None, seed) for seed in (1, 2)]
    assert bench.seed_scores(results, runs, "dolly") == [11.0, 12.0]
    assert bench.seed_scores(results, runs, "average") == [9.5, 10.0]


def test_paired_differences_per_seed():
    results = _fake_results([1, 2, 3], ["jsd"])
    dolly = bench.paired_differences(results, [1, 2, 3], "jsd", "dolly")
    sinst = bench.paired_differences(results, [1, 2, 3], "jsd", "sinst")
    assert dolly == pytest.approx([0.1, 0.2, 0.3])
    assert sinst == pytest.approx([1.0, 1.0, 1.0])


def test_results_table_rows():
    seeds, losses = [1, 2, 3], ["forward_kl", "reverse_kl"]
    lines = bench.results_table(_fake_results(seeds, losses), seeds, losses, HELDOUT)
    assert lines[0] == "| Model | Divergence | Dolly held-out | S-NI short | Average |"
    assert lines[2] == "| Teacher | - | 20.00 ± 0.30 | 18.00 ± 0.20 | 19.00 |"
    # SFT on Dolly: 11, 12, 13 over the seeds; S-NI: 8 each time.
    assert lines[3] == "| SFT | - | 12.00 ± 1.00 | 8.00 ± 0.00 | 10.00 ± 0.50 |"
    assert lines[4].startswith("| KD | forward_kl | 14.00 ± 1.00 |")
    assert lines[5].startswith("| KD+POCL | forward_kl | 14.20 ± 1.10 | 10.00 ± 0.00")
    assert len(lines) == 2 + 2 + 2 * len(losses)


def test_difference_table_counts_wins():
    seeds, losses = [1, 2, 3], ["forward_kl"]
    results = _fake_results(seeds, losses)
    lines = bench.difference_table(results, seeds, losses, HELDOUT)
    expected = "| forward_kl | +0.20 ± 0.10 | +1.00 ± 0.00 | +0.60 ± 0.05 | 3 of 3 |"
    assert lines[2] == expected


def test_difference_sentences_name_clear_gain():
    seeds = [1, 2, 3]
    results = _fake_results(seeds, ["forward_kl"])
    first, second = bench.difference_sentences(results, seeds, ["forward_kl"])
    assert "+0.60 ± 0.05 for forward_kl (POCL higher in 3 of 3 seeds)" in first
    assert "for forward_kl (higher with POCL)" in second


def test_difference_sentences_one_seed():
    results = _fake_results([1], ["jsd"])
    sentences = bench.difference_sentences(results, [1], ["jsd"])
    assert "+0.55 ± n/a for jsd" in sentences[0]
    assert sentences[1] == "With one training seed there is no spread to compare with."


def test_stage_boundaries_from_log_history():
    history = [
        {"step": 1, "loss": 2.0, "pocl/stage": 0},
        {"step": 2, "loss": 1.9, "pocl/stage": 0},
        {"step": 2, "train_runtime": 3.0},
        {"step": 3, "loss": 1.8, "pocl/stage": 1},
        {"step": 5, "loss": 1.7, "pocl/stage": 2},
        {"step": 6, "loss": 1.6, "pocl/stage": 2},
    ]
    assert bench.stage_boundaries(history) == [3, 5]
    assert bench.stage_boundaries([{"step": 1, "pocl/stage": 0}]) == []


def test_training_curve_skips_other_entries():
    history = [
        {"step": 1, "pocl/kd_loss": 0.5},
        {"step": 1, "train_runtime": 2.0},
        {"step": 2, "pocl/kd_loss": 0.4},
    ]
    assert bench.training_curve(history, "pocl/kd_loss") == ([1, 2], [0.5, 0.4])


def test_plan_has_every_method():
    runs = bench.plan_student_runs([1, 2], ["forward_kl", "jsd"])
    assert len(runs) == 2 * (1 + 2 * 2)
    assert [run.name for run in runs[:5]] == [
        "seed1_sft",
        "seed1_forward_kl_kd",
        "seed1_forward_kl_pocl",
        "seed1_jsd_kd",
        "seed1_jsd_pocl",
    ]


def _student_config(work, run, *, scorer="teacher", kd_ratio=1.0) -> dict:
    return bench.student_config(
        work,
        run,
        steps=40,
        scorer=scorer,
        kd_ratio=kd_ratio,
        kd_temperature=1.0,
        max_new_tokens=32,
    )


def test_plain_kd_config_fixes_schedule(tmp_path):
    run = bench.StudentRun("kd", "reverse_kl", 2)
    config = _student_config(tmp_path, run, kd_ratio=0.5)
    pocl = parse_pocl_config(config["pocl"])
    assert pocl.num_buckets == 1
    assert pocl.temperature_start == pocl.temperature_end == 1.0
    assert pocl.kd_ratio_start == pocl.kd_ratio_end == 0.5
    assert pocl.loss == "reverse_kl"
    assert config["max_steps"] == 40
    assert config["base_model"] == str(tmp_path / "student_init_seed2")


def test_pocl_config_uses_defaults_and_scorer(tmp_path):
    run = bench.StudentRun("pocl", "jsd", 1)
    for scorer, expected in (("teacher", "teacher"), ("student", "student_init_seed1")):
        config = _student_config(tmp_path, run, scorer=scorer)
        pocl = parse_pocl_config(config["pocl"])
        assert pocl.num_buckets == 4
        assert (pocl.temperature_start, pocl.temperature_end) == (1.0, 2.0)
        assert (pocl.kd_ratio_start, pocl.kd_ratio_end) == (0.7, 1.0)
        assert pocl.difficulty_metrics == ["lm_loss", "rouge_l"]
        assert pocl.scoring_model == str(tmp_path / expected)


def test_sft_config_has_no_plugin(tmp_path):
    config = _student_config(tmp_path, bench.StudentRun("sft", None, 1))
    assert "plugins" not in config
    assert "pocl" not in config


@pytest.mark.parametrize(
    "options, message",
    [
        (["--student-steps", "10"], "multiple of 4"),
        (["--kd-ratio", "1.5"], "--kd-ratio"),
        (["--seeds", "1", "1"], "twice"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
    ],
)
def test_check_arguments_rejects(options, message):
    args = bench.parse_arguments(options)
    with pytest.raises(ValueError, match=message):
        bench.check_arguments(args)


def test_quick_lowers_defaults_only():
    args = bench.parse_arguments(["--quick", "--seeds", "4", "5"])
    assert args.seeds == [4, 5]
    assert args.student_steps == bench.QUICK_DEFAULTS["student_steps"]
    full = bench.parse_arguments([])
    assert full.losses == bench.DEFAULTS["losses"]


# --------------------------------------------------------------------------
# GPT-2 recipe configs
# --------------------------------------------------------------------------


def _validate_with_axolotl(raw: dict):
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    return validate_config(cfg)


def _read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", [TEACHER_RECIPE, STUDENT_RECIPE], ids=lambda p: p.stem)
def test_gpt2_recipe_passes_schema(path):
    cfg = _validate_with_axolotl(_read_yaml(path))
    assert cfg.special_tokens["pad_token"] == "<|endoftext|>"
    assert cfg.sequence_len == 512


def test_gpt2_teacher_recipe_is_plain_sft():
    cfg = _validate_with_axolotl(_read_yaml(TEACHER_RECIPE))
    assert cfg.base_model == "gpt2-xl"
    assert not cfg.plugins


def test_gpt2_student_recipe_distils_teacher():
    teacher = _read_yaml(TEACHER_RECIPE)
    cfg = _validate_with_axolotl(_read_yaml(STUDENT_RECIPE))
    pocl = parse_pocl_config(cfg.pocl)
    assert cfg.base_model == "gpt2"
    assert pocl.teacher_model == teacher["output_dir"]
    assert pocl.num_buckets == 4
    assert pocl.loss == "forward_kl"
    assert cfg.datasets[0]["path"] == teacher["datasets"][0]["path"]


# --------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------


@pytest.mark.e2e
def test_quick_run_writes_page(tmp_path):
    for name in (bench.DOLLY_FILE, bench.SINST_FILE):
        if not (SHARED_DATA / name).is_file():
            pytest.skip(f"{SHARED_DATA / name} is missing; the benchmark needs it")
    output = tmp_path / "page.md"
    work = tmp_path / "work"
    log_path = tmp_path / "bench.log"
    command = [sys.executable, str(SCRIPT), "--quick"]
    command += ["--output", str(output), "--work-dir", str(work)]
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    log_text = log_path.read_text(encoding="utf-8", errors="replace")
    assert process.returncode == 0, log_text[-6000:]

    page = output.read_text(encoding="utf-8")
    assert "| Model | Divergence | Dolly held-out | S-NI short | Average |" in page
    assert "| SFT | - |" in page
    assert "| KD | forward_kl |" in page
    assert "| KD+POCL | forward_kl |" in page
    assert "| teacher SFT |" in page
    plot = tmp_path / "page_curves.png"
    assert plot.is_file()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not work.exists(), "without --keep the work directory is deleted"
