"""benchmarks/gpu_1b.py --tiny: the GPU script's whole path (build, launch, summary, estimate) on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.distributed
def test_gpu_1b_script_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_1b.py"),
            "--tiny",
            "--max_steps",
            "2",
            "--strategies",
            "ddp",
            "--cache",
            str(tmp_path / "cache"),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(out.read_text())["runs"][0]
    assert run["tokens_per_second"] > 0 and run["mfu"] is None and run["estimated_total_bytes"] > 0
    assert "tokens/s" in proc.stdout
