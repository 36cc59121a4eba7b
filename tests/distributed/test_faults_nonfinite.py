"""Non-finite steps: a NaN loss injected on rank 1 at step 3 (DISTTUNE_TEST_FAULT=nan@3:1)."""

from __future__ import annotations

import json
import math

import pytest
from faults_helpers import launch, read_metrics, tail

pytestmark = pytest.mark.distributed


def test_nan_loss_stops_with_step_rank_and_cause(tmp_path):
    out = tmp_path / "run"
    done = launch("ddp", out, tmp_path / "cache", "--max_steps", "6", fault="nan@3:1")
    assert done.returncode != 0, tail(done.stdout)
    assert "non-finite loss at step 3 on rank 1; stopped before the update" in done.stdout, tail(done.stdout)
    assert "learning rate too high" in done.stdout and "--skip_nonfinite_steps" in done.stdout
    assert "disttune/train/" not in done.stdout  # no frame of ours: the launcher adds its own report
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


def test_skip_nonfinite_steps_skips_the_update_and_finishes(tmp_path):
    out = tmp_path / "run"
    done = launch(
        "ddp",
        out,
        tmp_path / "cache",
        "--max_steps",
        "6",
        "--save_strategy",
        "no",
        "--skip_nonfinite_steps",
        fault="nan@3:1",
    )
    assert done.returncode == 0, tail(done.stdout)
    assert "non-finite loss at step 3 on rank 1: update skipped" in done.stdout
    losses = [r["loss"] for r in read_metrics(out)]
    assert len(losses) == 6 and all(x is not None and math.isfinite(x) for x in losses[3:])
    summary = json.loads((out / "run_summary.json").read_text())
    assert math.isfinite(summary["final_loss"])
