"""Helpers for tests that run the training script through the real ``accelerate launch`` on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from disttune.bench import free_port, launch_command  # noqa: F401 - free_port is re-exported to test_multinode
from disttune.train.metrics import read_metrics  # noqa: F401 - re-exported to the tests

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "07_distributed_training.py"
CONFIGS = REPO / "accelerate_configs"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
# The short run most launch tests use: 3 steps of 4 sequences of <= 64 tokens per process, a loss every step.
SHORT_RUN = (
    "--max_steps",
    "3",
    "--logging_steps",
    "1",
    "--per_device_train_batch_size",
    "4",
    "--max_length",
    "64",
)


def short_run(max_steps: int, *extra: str) -> tuple[str, ...]:
    """``SHORT_RUN`` with another ``--max_steps``, then ``extra``."""
    args = list(SHORT_RUN)
    args[args.index("--max_steps") + 1] = str(max_steps)
    return (*args, *extra)


def launch(
    config: str,
    output_dir: Path,
    *script_args: str,
    num_processes: int = 2,
    mixed_precision: str | None = "no",
    cache_dir: Path | None = None,
    timeout: float = 300,
    extra_env: dict | None = None,
) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file accelerate_configs/<config>.yaml ... 07_distributed_training.py``.

    ``config`` is a shipped config's name, or a path ending in .yaml. ``mixed_precision=None`` launches in
    the config's own precision (no ``--mixed_precision`` on the launch line).
    """
    config_file = config if config.endswith(".yaml") else CONFIGS / f"{config}.yaml"
    cmd = launch_command(config_file, SCRIPT, output_dir, num_processes, mixed_precision, list(script_args))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    if cache_dir is not None:
        env["DISTTUNE_CACHE"] = str(cache_dir)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


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
    return '07_distributed_training.py", line' not in output and "src/disttune/" not in output
