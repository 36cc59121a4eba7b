"""Unattended runs: `disttune launch --max_restarts N` heals a killed rank; a finished run can be extended.

torchrun's elastic agent (through `accelerate launch --max_restarts`) restarts the workers; the training
script resumes them from the newest complete checkpoint by itself and records each restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from launching import CONFIGS, REPO, SCRIPT, explain, launch, read_metrics, read_summary, short_run

from disttune.train.failure import KILLED

pytestmark = pytest.mark.distributed

CHECKPOINTED = ("--save_steps", "4", "--lr_scheduler_type", "constant")
RUN = short_run(12, *CHECKPOINTED)


def disttune_launch(output_dir, *script_args, max_restarts: int, fault: str, timeout: float = 600):
    """`disttune launch multi_gpu_ddp.yaml --num_processes 2 --mixed_precision no --max_restarts N -- ...`."""
    cmd = [
        sys.executable,
        "-m",
        "disttune",
        "launch",
        str(CONFIGS / "multi_gpu_ddp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--max_restarts",
        str(max_restarts),
        "--",
        str(SCRIPT),
        *script_args,
        "--output_dir",
        str(output_dir),
    ]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DISTTUNE_TEST_FAULT": fault,
    }
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _last_loss_per_step(output_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(output_dir)}  # a rerun step's later line wins


def test_a_rank_killed_at_step_6_heals_and_matches_the_uninterrupted_run(tmp_path):
    healed = disttune_launch(tmp_path / "healed", *RUN, max_restarts=2, fault="sigkill@6:1:0")
    assert healed.returncode == 0, explain(healed)
    summary = read_summary(tmp_path / "healed")
    assert summary["global_step"] == 12
    assert summary["restarts"] == [
        {"restart": 1, "failed_in_step": 6, "rank": 1, "cause": KILLED, "resumed_from": "checkpoint-4"}
    ]
    assert f"restart 1 of 2: rank 1 failed in step 6 ({KILLED}); resuming from checkpoint-4" in healed.stdout

    plain = launch("multi_gpu_ddp", tmp_path / "plain", *RUN, cache_dir=tmp_path / "c")
    assert plain.returncode == 0, explain(plain)
    expected, got = _last_loss_per_step(tmp_path / "plain"), _last_loss_per_step(tmp_path / "healed")
    assert sorted(got) == list(range(1, 13))
    assert got == expected, {s: (got[s], expected[s]) for s in got if got[s] != expected[s]}


@pytest.mark.full  # about a minute: two attempts of a run killed at step 6
def test_a_rank_that_dies_at_the_same_step_every_time_stops_after_n_restarts_naming_it(tmp_path):
    failed = disttune_launch(
        tmp_path / "run", *short_run(8, *CHECKPOINTED), max_restarts=1, fault="sigkill@6:1", timeout=400
    )
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last == f"disttune launch: rank 1 failed in step 6 in all 2 attempts: {KILLED}", explain(failed)
    restarts = json.loads((tmp_path / "run" / ".disttune" / "restarts.json").read_text())
    assert [(r["restart"], r["failed_in_step"], r["rank"]) for r in restarts] == [(1, 6, 1)]


@pytest.mark.full
def test_extending_a_finished_run_replaces_final_only_when_the_longer_run_finishes(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "c"
    done = launch("multi_gpu_ddp", out, *short_run(8, *CHECKPOINTED), cache_dir=cache)
    assert done.returncode == 0, explain(done)
    first_final = (out / "final" / "model.safetensors").read_bytes()

    crashed = launch(
        "multi_gpu_ddp",
        out,
        *RUN,
        "--resume_from_checkpoint",
        "latest",
        cache_dir=cache,
        extra_env={"DISTTUNE_TEST_FAULT": "sigkill@10"},
    )
    assert crashed.returncode != 0
    assert read_summary(out)["global_step"] == 8, "the summary of the finished run was replaced too early"
    assert (out / "final" / "model.safetensors").read_bytes() == first_final

    extended = launch("multi_gpu_ddp", out, *RUN, "--resume_from_checkpoint", "latest", cache_dir=cache)
    assert extended.returncode == 0, explain(extended)
    assert read_summary(out)["global_step"] == 12
    assert (out / "final" / "model.safetensors").read_bytes() != first_final
    assert not (out / "final.partial").exists()
