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


@pytest.mark.distributed
@pytest.mark.full  # four launches; CI covers the pairing and the arithmetic in tests/unit/test_versus.py
def test_bench_vs_trl_runs_both_scripts_alternating_on_the_cli(tmp_path, monkeypatch):
    from disttune.cli import main

    monkeypatch.setenv("DISTTUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "vs"
    # One process: on a CPU, plain TRL under a multi-process config trains unsynchronised copies (the accelerate
    # gap our script closes, README "On a machine without GPUs"), so there is no fair pair of two.
    args = ["bench", "--vs_trl", "2", "--strategies", "ddp", "--num_processes", "1", "--max_steps", "10"]
    args += ["--output_dir", str(out)]
    assert main(args) == 0
    data = json.loads((out / "vs_trl.json").read_text())["strategies"]["ddp"]
    assert [p["order"] for p in data["pairs"]] == ["ours plain", "plain ours"]
    for pair in data["pairs"]:
        assert pair["ours"]["tokens"] == pair["plain"]["tokens"] > 0  # the same data and steps on both sides
        assert pair["ratio_runtime"] > 0 and pair["ratio_steady"] > 0
