"""GPU tier: runs only where CUDA is visible (skipped in CI). The shipped configs on real GPUs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from launching import explain, launch, read_summary  # noqa: E402

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("config", ["single_gpu", "deepspeed_zero3"])
def test_bf16_run_on_one_gpu_reports_cuda_memory_and_mfu(tmp_path, config):
    out = tmp_path / config
    result = launch(
        config,
        out,
        "--max_steps",
        "5",
        "--logging_steps",
        "1",
        num_processes=1,
        mixed_precision="bf16",
        cache_dir=tmp_path / "cache",
    )
    assert result.returncode == 0, explain(result)
    summary = read_summary(out)
    assert summary["mixed_precision"] == "bf16"
    assert summary["peak_memory_kind"] == "cuda_max_memory_allocated"
    assert all(p > 0 for p in summary["peak_memory_bytes"])
