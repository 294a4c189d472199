"""Helpers for tests that run the real ``axolotl`` command in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BIN_DIR = Path(sys.executable).parent

# Settings that every CPU run of the tests shares.
CPU_SETTINGS = {
    "bf16": False,
    "fp16": False,
    "tf32": False,
    "optimizer": "adamw_torch",
    "lr_scheduler": "cosine",
    "learning_rate": 0.001,
    "logging_steps": 1,
    "save_strategy": "no",
    "val_set_size": 0,
    "seed": 42,
    "dataloader_num_workers": 0,
}


def shared_data_file(name: str) -> Path:
    """Return a file of the shared instruction data, or skip the test without it."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is missing; these tests need the shared instruction data")
    return path


def subprocess_env() -> dict[str, str]:
    """Environment for an axolotl subprocess: offline, this checkout importable."""
    env = dict(os.environ)
    env["AXOLOTL_DO_NOT_TRACK"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def write_config(path: Path, config: dict) -> Path:
    """Write an Axolotl YAML file."""
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_command(args: list[str], log_path: Path, *, cwd: Path, timeout: float = 900,
                env: dict | None = None, done_marker: str | None = None) -> subprocess.CompletedProcess:
    """Run a command with its output in ``log_path``; fail with the log's tail.

    With ``done_marker``, a command that timed out after writing that text to its
    log counts as finished: its process group is killed and a warning is issued.
    """
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            args, cwd=cwd, env=env or subprocess_env(), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            text = log_path.read_text(encoding="utf-8", errors="replace")
            if done_marker and done_marker in text:
                warnings.warn(f"{args[0]} finished its work but did not exit within {timeout} s")
                return subprocess.CompletedProcess(args, 0)
            pytest.fail(f"{' '.join(map(str, args))} timed out after {timeout} s:\n{text[-6000:]}")
    if returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-6000:]
        pytest.fail(f"{' '.join(map(str, args))} exited with {returncode}:\n{tail}")
    return subprocess.CompletedProcess(args, returncode)


def axolotl(command: str, config: Path, log_path: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run ``axolotl preprocess`` or ``axolotl train`` on one process."""
    extra = ["--launcher", "python"] if command == "train" else []
    return run_command(
        [str(BIN_DIR / "axolotl"), command, str(config), *extra], log_path,
        cwd=config.parent, **kwargs,
    )


def log_history(output_dir: Path) -> list[dict]:
    """Return the training log records of a finished run."""
    state = json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))
    return state["log_history"]


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSON Lines file."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
