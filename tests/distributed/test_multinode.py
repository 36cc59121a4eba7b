"""Two "machines" on 127.0.0.1: a config from ``disttune config new``, launched once per machine rank."""

from __future__ import annotations

import os
import subprocess

import pytest
from launching import ACCELERATE, REPO, SCRIPT, SHORT_RUN, free_port, read_metrics, read_summary

from disttune.cli import main as disttune
from disttune.config import check_config

pytestmark = pytest.mark.distributed


def test_two_machine_config_on_loopback_trains_with_world_size_2(tmp_path, capsys):
    config = tmp_path / "two_machines.yaml"
    port = free_port()
    code = disttune(
        [
            "config",
            "new",
            "--strategy",
            "ddp",
            "--num_processes",
            "2",
            "--num_machines",
            "2",
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--mixed_precision",
            "no",
            "--output",
            str(config),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "--machine_rank 0" in printed and "--machine_rank 1" in printed
    assert check_config(config) == []

    env = {**os.environ, "DISTTUNE_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    procs = []
    for rank in (0, 1):
        cmd = [
            *ACCELERATE,
            "--config_file",
            str(config),
            "--machine_rank",
            str(rank),
            str(SCRIPT),
            "--output_dir",
            str(tmp_path / f"machine{rank}"),
            *SHORT_RUN,
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
    summary = read_summary(tmp_path / "machine0")  # global rank 0 lives on machine 0
    assert summary["world_size"] == 2
    assert summary["distributed_type"] == "MULTI_CPU"
    assert summary["global_batch_size"] == 8
    assert len(read_metrics(tmp_path / "machine0")) == 3
