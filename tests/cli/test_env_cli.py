"""`disttune env` in process: text and JSON, secrets never printed."""

from __future__ import annotations

import json

from disttune.cli import main

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz012345"


def test_env_json_redacts_and_reports_default_config(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("FOO_PASSWORD", "hunter2")
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    (tmp_path / "accelerate").mkdir()
    (tmp_path / "accelerate" / "default_config.yaml").write_text("distributed_type: NO\nnum_processes: 1\n")
    assert main(["env", "--json"]) == 0
    out = capsys.readouterr().out
    assert TOKEN not in out and "hunter2" not in out
    data = json.loads(out)
    assert data["environment"]["HF_TOKEN"] == "***"
    assert data["environment"]["NCCL_DEBUG"] == "INFO"
    assert data["default_accelerate_config"]["exists"] is True
    assert data["default_accelerate_config"]["settings"]["num_processes"] == 1


def test_env_text(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "accelerate" in out and "Fingerprint" in out and "exists: no" in out
    assert TOKEN not in out
