"""What a user sees: one log for a two-process job, and a failure that ends with its cause.

Through the real ``accelerate launch`` and through ``disttune launch`` (which condenses torch elastic's
exit report to one line). The crash is injected with ``DISTTUNE_TEST_FAULT=crash@STEP:RANK``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from launching import REPO, SCRIPT, SHORT_RUN, explain, free_port, launch

from disttune.launch import ReportFilter

pytestmark = pytest.mark.distributed
MISSING = "/nonexistent-disttune-test.jsonl"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def visible_lines(text: str) -> list[str]:
    """The lines a terminal shows: what is left of each after its last carriage return, blanks dropped."""
    lines = (line.rstrip("\r").split("\r")[-1].rstrip() for line in text.split("\n"))
    return [line for line in lines if line.strip()]


def ending(stderr: str) -> list[str]:
    """The last lines of a failed job with the launcher's own exit report condensed to its one line."""
    report = ReportFilter()
    return visible_lines(report.feed(stderr) + report.finish())


def disttune_launch(
    tmp_path, *script_args: str, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "disttune",
        "launch",
        "accelerate_configs/multi_gpu_ddp.yaml",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        "--",
        str(SCRIPT),
        "--output_dir",
        str(tmp_path / "out"),
        *script_args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    env["DISTTUNE_CACHE"] = str(tmp_path / "cache")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_two_process_run_prints_one_log(tmp_path, cache):
    out = tmp_path / "out"
    result = launch("multi_gpu_ddp", out, *SHORT_RUN, cache_dir=cache)
    assert result.returncode == 0, explain(result)
    output = result.stdout + result.stderr
    steps = [line for line in visible_lines(result.stdout) if line.startswith("step ")]
    assert [line.split("  ")[0] for line in steps] == ["step 1/3", "step 2/3", "step 3/3"], result.stdout
    assert all(" loss " in f" {line} " and " tok/s" in line and "GiB" in line for line in steps), steps
    assert "{'loss'" not in output  # transformers' dicts: in trainer_log.jsonl, not on the console
    logged = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]
    assert output.count("Setting accelerator to CPU") <= 1  # DeepSpeed's, once per job
    assert "pin_memory" not in output  # says nothing a user can act on (console.QUIET_WARNINGS)
    # The main process loads the model, then reloads the saved one to check it; the other loads silently.
    assert output.count("Loading weights: 100%") <= 2, result.stderr[-3000:]


def test_a_crashing_rank_ends_the_output_with_its_cause(tmp_path, cache):
    """Through plain ``accelerate launch``: the cause is the last thing before the launcher's report."""
    result = launch(
        "multi_gpu_ddp",
        tmp_path / "out",
        *SHORT_RUN,
        cache_dir=cache,
        extra_env={"DISTTUNE_TEST_FAULT": "crash@2:1"},
    )
    assert result.returncode != 0, explain(result)
    last = ending(result.stderr)
    assert last[-1].startswith("disttune launch: rank 1 failed first (exit code 1)"), explain(result)
    assert last[-3] == (
        "disttune: rank 1 failed at step 2: RuntimeError: injected crash at step 2 on rank 1 (DISTTUNE_TEST_FAULT)"
    ), explain(result)
    assert last[-2].startswith("  fix: the traceback above (rank 1) shows where"), explain(result)
    assert "ChildFailedError" in result.stderr  # plain accelerate launch: torch elastic's report follows


def test_a_wrong_dataset_path_ends_disttune_launch_with_the_error_once(tmp_path):
    result = disttune_launch(tmp_path, *SHORT_RUN, "--dataset_name", MISSING)
    assert result.returncode == 1, explain(result)
    last = visible_lines(result.stderr)[-3:]
    assert last[0] == f"07_distributed_training.py: error: --dataset_name {MISSING}: file not found.", last
    assert last[1].startswith("  fix: check the path"), last
    assert last[2].startswith("disttune launch: rank ") and "failed first (exit code 1)" in last[2], last
    assert result.stderr.count("file not found") == 1  # both ranks hit it; said once
    assert "ChildFailedError" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.full
def test_a_crashing_rank_ends_disttune_launch_with_its_cause(tmp_path):
    result = disttune_launch(tmp_path, *SHORT_RUN, extra_env={"DISTTUNE_TEST_FAULT": "crash@2:0"})
    assert result.returncode == 1, explain(result)
    cause = "RuntimeError: injected crash at step 2 on rank 0 (DISTTUNE_TEST_FAULT)"
    last = visible_lines(result.stderr)[-4:]
    assert last[0] == f"disttune: rank 0 failed at step 2: {cause}", explain(result)
    assert last[1].startswith("  fix: "), last
    assert last[2].startswith("disttune launch: rank 0 failed first (exit code 1)"), last
    assert last[3] == f"disttune launch: rank 0 failed in step 2: {cause}", last  # restarts.py's record
    assert "ChildFailedError" not in result.stderr


def test_a_wrong_dataset_path_ends_plain_accelerate_launch_with_its_cause(tmp_path, cache):
    """Under plain ``accelerate launch`` the last lines are torch elastic's report: its "Root Cause" block
    names the error (the script writes torch's error file) instead of "error_file: <N/A>". The path is
    checked before the model loads."""
    result = launch("multi_gpu_ddp", tmp_path / "out", *SHORT_RUN, "--dataset_name", MISSING, cache_dir=cache)
    assert result.returncode != 0, explain(result)
    raw = visible_lines(result.stderr)
    root = raw[raw.index("Root Cause (first observed failure):") :]
    assert any(f"--dataset_name {MISSING}: file not found." in line for line in root), raw[-30:]
    assert "error_file: <N/A>" not in "\n".join(root) and "Loading weights" not in result.stderr
    last = ending(result.stderr)  # disttune launch's condensed view of the same output
    assert last[-3] == f"07_distributed_training.py: error: --dataset_name {MISSING}: file not found.", last
    assert last[-2].startswith("  fix: check the path"), last
    assert result.stderr.count("file not found") == 3  # printed once; and in the launcher's two entries


@pytest.mark.full
def test_verbose_shows_every_process_and_the_dicts(tmp_path, cache):
    result = launch("multi_gpu_ddp", tmp_path / "out", *SHORT_RUN, "--verbose", cache_dir=cache)
    assert result.returncode == 0, explain(result)
    assert "{'loss'" in result.stdout and "step 3/3  loss" in result.stdout
    assert result.stderr.count("Loading weights: 100%") == 3  # both processes, then the main's check
