"""Strategies through the real `accelerate launch` (2 CPU processes, fp32, tiny model, 3 steps):
the bench files, the same losses as DDP, and measured model-state bytes within 10% of `disttune estimate`."""

from __future__ import annotations

import json

import pytest

from disttune.bench import STRATEGIES, run_bench

# CI benches DDP and ZeRO-3 (a replicated and a sharded strategy); every shipped strategy is in `make test-full`.
CI_CUT = ["ddp", "zero3"]


@pytest.mark.distributed
@pytest.mark.parametrize(
    "strategies",
    [CI_CUT, pytest.param(list(STRATEGIES), marks=pytest.mark.full)],
    ids=["ci-cut", "all"],
)
def test_bench_every_strategy_matches_the_estimate(tmp_path, monkeypatch, strategies):
    assert set(CI_CUT) <= set(STRATEGIES)
    monkeypatch.setenv("DISTTUNE_CACHE", str(tmp_path / "cache"))
    data = run_bench(
        strategies,
        tmp_path / "bench",
        num_processes=2,
        max_steps=3,
        per_device_batch=4,
        max_length=64,
        mixed_precision="no",
        timeout=300,
    )
    for name in ("bench.json", "bench.md", "bench.png"):
        assert (tmp_path / "bench" / name).stat().st_size > 0
    assert json.loads((tmp_path / "bench" / "bench.json").read_text())["runs"]
    for run in data["runs"]:
        assert "error" not in run, run
        assert run["steps"] == 3 and run["tokens_per_second"] > 0
        assert run["ran_as"] == run["strategy"]  # accelerate set up what the strategy table says the file is
        assert abs(run["estimate_rel_error"]) < 0.10, (
            run["strategy"],
            run["measured_by_category"],
            run["estimated_by_category"],
        )
        assert run["max_loss_deviation_from_ddp"] < 1e-3, run["strategy"]
