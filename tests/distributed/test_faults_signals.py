"""Preemption: SIGTERM reaches one rank only; every rank saves at the end of that step and stops cleanly."""

from __future__ import annotations

import json

import pytest
from faults_helpers import launch, tail

pytestmark = pytest.mark.distributed


def test_sigterm_on_one_rank_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    done = launch("ddp", out, tmp_path / "cache", fault="sigterm@3:1")
    assert done.returncode == 0, tail(done.stdout)
    assert "disttune: rank 1: SIGTERM received" in done.stdout
    assert "stopped by SIGTERM on rank 1 after step 3" in done.stdout, tail(done.stdout)
    assert "to resume: run the same command with --resume_from_checkpoint latest" in done.stdout
    marker = json.loads((out / "checkpoint-3" / "disttune_complete.json").read_text())
    assert marker["step"] == 3
    assert not (out / "final").exists() and not (out / "run_summary.json").exists()
