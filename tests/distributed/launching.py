"""Helpers for tests that run the training script through the real ``accelerate launch`` on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from disttune.bench import free_port  # the project's one free-port helper (also imported by other tests)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "07_distributed_training.py"
CONFIGS = REPO / "accelerate_configs"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def launch(
    config: str,
    output_dir: Path,
    *script_args: str,
    num_processes: int | None = 2,
    mixed_precision: str | None = "no",
    cache_dir: Path | None = None,
    timeout: float = 300,
    extra_env: dict | None = None,
) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file accelerate_configs/<config>.yaml ... 07_distributed_training.py``.

    ``config`` is a shipped config's name, or a path ending in .yaml.
    """
    config_file = config if config.endswith(".yaml") else str(CONFIGS / f"{config}.yaml")
    cmd = [*ACCELERATE, "--config_file", config_file]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    if mixed_precision is not None:
        cmd += ["--mixed_precision", mixed_precision]
    cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    cmd += [str(SCRIPT), "--output_dir", str(output_dir), *script_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    if cache_dir is not None:
        env["DISTTUNE_CACHE"] = str(cache_dir)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(output_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl``."""
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines() if line]


def read_summary(output_dir: Path) -> dict:
    """``run_summary.json``."""
    return json.loads((Path(output_dir) / "run_summary.json").read_text())


def explain(result: subprocess.CompletedProcess) -> str:
    """The tail of a failed run's output, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-6000:]}"


def no_traceback_from_our_code(result: subprocess.CompletedProcess) -> bool:
    """True when no Python traceback passes through the training script or disttune.

    accelerate's own launcher prints its ``CalledProcessError``/``ChildFailedError`` traceback whenever
    a child exits non-zero; that one is not ours to silence (``disttune launch`` forwards the code).
    """
    output = result.stdout + result.stderr
    return "07_distributed_training.py\", line" not in output and "src/disttune/" not in output
