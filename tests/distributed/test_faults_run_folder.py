"""Refusals before training: another run's results, an incomplete checkpoint, a secret in the output."""

from __future__ import annotations

import pytest
from faults_helpers import launch, tail

pytestmark = pytest.mark.distributed


def test_refuses_to_overwrite_another_run_and_touches_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (out / "checkpoint-4").mkdir()  # a save that never completed
    done = launch("ddp", out, tmp_path / "cache", "--resume_from_checkpoint", str(out / "checkpoint-4"))
    assert done.returncode != 0
    assert "incomplete checkpoint" in done.stdout and "disttune/train" not in done.stdout, tail(done.stdout)
    done = launch("ddp", out, tmp_path / "cache")
    assert done.returncode != 0
    assert "already holds a run (metrics.jsonl); refusing to overwrite it" in done.stdout, tail(done.stdout)
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4", "metrics.jsonl"]


def test_hub_token_never_reaches_files_or_logs(tmp_path):
    out, secret = tmp_path / "run", "hf_disttuneSECRETtoken123"
    done = launch(
        "ddp", out, tmp_path / "cache", "--max_steps", "2", "--save_steps", "2", "--hub_token", secret
    )
    assert done.returncode == 0, tail(done.stdout)
    assert secret not in done.stdout
    leaks = [p for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks, leaks
