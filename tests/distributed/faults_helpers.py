"""Shared by the fault tests: launch the training script on 2 CPU processes, read what it wrote."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from launching import REPO, SCRIPT, read_metrics  # noqa: F401 - read_metrics is re-exported to the tests

from disttune import bench

# The smallest run that shows each point: 8 steps of 4 x 2 examples, a checkpoint every 4 steps
# (`--save_steps 4` alone, as the README shows: it turns step checkpoints on).
SMALL_RUN = [
    "--max_steps",
    "8",
    "--logging_steps",
    "1",
    "--save_steps",
    "4",
    "--per_device_train_batch_size",
    "4",
    "--max_length",
    "64",
]


def launch_command(strategy: str, output_dir: Path, *extra: str) -> list[str]:
    """``accelerate launch`` of the training script on 2 CPU processes in fp32 (``strategy``: a bench name)."""
    return bench.launch_command(strategy, SCRIPT, output_dir, 2, "no", [*SMALL_RUN, *extra])


def run_env(cache: Path, fault: str | None = None) -> dict:
    """The environment of a test launch: private model cache, optional injected fault, no colours."""
    env = {**os.environ, "DISTTUNE_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DISTTUNE_TEST_FAULT", None)
    if fault:
        env["DISTTUNE_TEST_FAULT"] = fault
    return env


def launch(
    strategy: str, output_dir: Path, cache: Path, *extra: str, fault: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """Run a 2-process launch to the end; returns the completed process (stdout and stderr merged)."""
    return subprocess.run(
        launch_command(strategy, output_dir, *extra),
        cwd=REPO,
        env=run_env(cache, fault),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def timed_launch(
    strategy: str, output_dir: Path, cache: Path, *extra: str, fault: str, timeout: float = 240
) -> tuple[int, str, float]:
    """Like ``launch``, but also returns the seconds from the first ``step 2`` log line to the launcher's exit."""
    proc = subprocess.Popen(
        launch_command(strategy, output_dir, *extra),
        cwd=REPO,
        env=run_env(cache, fault),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    metrics = output_dir / "metrics.jsonl"
    started = None
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if started is None and metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                started = time.monotonic()
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        out = proc.communicate()[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    ended = time.monotonic()
    return proc.returncode, out, ended - (started or ended)


def tail(text: str, lines: int = 40) -> str:
    """The end of a launch's output, for assertion messages."""
    return "\n".join(text.splitlines()[-lines:])
